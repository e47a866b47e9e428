#!/usr/bin/env python3
"""Append DuckDB's extension metadata footer to the built cdylib.

Usage: package.py <libpocaduck.so> <out/pocaduck.duckdb_extension> [version]

The footer is 534 bytes: 22 bytes (00 93 04 10 'duckdb_signature' 80 04), eight 32-byte
zero-padded ASCII fields in this order — three empty, ABI type C_STRUCT, extension version,
minimum DuckDB version (the C API version, DUCKDB_C_API_VERSION in src/sql/mod.rs, today v1.5.6),
platform linux_amd64, '4' — then 256 zero bytes (no signature).
With C_STRUCT + v1.5.6 the same file loads in DuckDB 1.5.6 and 2.0.
"""
import os
import re
import shutil
import sys
from pathlib import Path

# The C API version is written once, in the Rust source that passes it to DuckDB at load time.
C_API_SOURCE = Path(__file__).resolve().parent.parent / "src" / "sql" / "mod.rs"


def c_api_version() -> str:
    """DUCKDB_C_API_VERSION from src/sql/mod.rs (e.g. 'v1.5.6')."""
    m = re.search(r'^pub const DUCKDB_C_API_VERSION: &str = "(v[0-9.]+)";$', C_API_SOURCE.read_text(), re.M)
    if not m:
        raise SystemExit(f"no DUCKDB_C_API_VERSION in {C_API_SOURCE}")
    return m.group(1)


def field(s: str) -> bytes:
    b = s.encode("ascii")
    if len(b) > 32:
        raise SystemExit(f"metadata field too long: {s!r}")
    return b + b"\0" * (32 - len(b))


def footer(version: str, platform: str = "linux_amd64") -> bytes:
    head = b"\x00\x93\x04\x10" + b"duckdb_signature" + b"\x80\x04"
    fields = ["", "", "", "C_STRUCT", version, c_api_version(), platform, "4"]
    out = head + b"".join(field(f) for f in fields) + b"\0" * 256
    assert len(out) == 534, len(out)
    return out


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    version = sys.argv[3] if len(sys.argv) > 3 else "v0.1.0"
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    with open(tmp, "ab") as f:
        f.write(footer(version))
    os.replace(tmp, dst)
    print(f"wrote {dst} ({os.path.getsize(dst)} bytes)")


if __name__ == "__main__":
    main()
