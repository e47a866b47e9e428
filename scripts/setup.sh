#!/usr/bin/env bash
# Creates the Python environments the demo and tests use (idempotent):
#   .venv/py15  duckdb 1.5.6 + duckdb-cli 1.5.6 (the DuckDB CLI) + test/demo packages
#   .venv/py20  duckdb 2.0.0 + test packages
#   and in both, the package in python/ (pocaduckdb)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
COMMON="numpy pandas pyarrow pytest crackle-codec moto[server] boto3"
make_env() {
  local dir=$1; shift
  if [ ! -x "$dir/bin/python" ] || ! "$dir/bin/python" -c "import duckdb, numpy, pandas, pyarrow, pytest, crackle, moto, boto3" 2>/dev/null; then
    echo "setting up $dir"
    "$PY" -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@" $COMMON
  fi
}
make_env .venv/py15 duckdb==1.5.6 duckdb-cli==1.5.6
make_env .venv/py20 duckdb==2.0.0
# The package in python/ (pocaduckdb), reinstalled every time so that it matches the checkout.
for dir in .venv/py15 .venv/py20; do
  "$dir/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall ./python
done
echo "python environments ready: .venv/py15 (duckdb 1.5.6 + CLI), .venv/py20 (duckdb 2.0.0)"
