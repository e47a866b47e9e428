#!/usr/bin/env bash
# Builds build/pocaduck.duckdb_extension (release cdylib + metadata footer) and installs it into
# DuckDB's extension directory for every supported DuckDB version, so `LOAD pocaduck` works by name
# (with unsigned extensions allowed: `duckdb -unsigned`, or allow_unsigned_extensions in Python).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --lib
version="v$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)"
python3 scripts/package.py target/release/libpocaduck.so build/pocaduck.duckdb_extension "$version"
ext_root=${DUCKDB_EXTENSION_DIRECTORY:-$HOME/.duckdb/extensions}
for v in v1.5.6 v2.0.0; do
  mkdir -p "$ext_root/$v/linux_amd64"
  # Copy, then rename into place: overwriting the file in place would change the code under any
  # running process that has it loaded (and crash it).
  dst="$ext_root/$v/linux_amd64/pocaduck.duckdb_extension"
  cp build/pocaduck.duckdb_extension "$dst.tmp.$$"
  mv -f "$dst.tmp.$$" "$dst"
done
echo "installed into $ext_root/{v1.5.6,v2.0.0}/linux_amd64"
