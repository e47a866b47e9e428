#!/usr/bin/env bash
# The README's second command: runs every test. Exits non-zero if any fails.
#   1. cargo fmt --check, clippy -D warnings, cargo test (the core, plain Rust)
#   2. SQL logic tests (test/sql) against DuckDB 1.5.6 and 2.0.0 (Python), again with every store in
#      S3 (a local moto_server) and in Azure (a local Azurite), and the DuckDB CLI 1.5.6
#   3. pytest (test/python) with duckdb 1.5.6 and 2.0.0, S3 tests against moto_server, Azure tests
#      against Azurite, GCS read tests against fake-gcs-server (all on loopback); the real-data
#      end-to-end test and the Dask cluster tests (test_dask.py: the Python package, whatever the
#      DuckDB) with 1.5.6;
#      a 20 s soak of 8 reader threads on an S3 store while other processes write, consolidate and
#      optimize it (scripts/soak_s3_readers.py, duckdb 1.5.6)
#   4. cargo fuzz on the segment and part readers, 60 s per target
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
export POCADUCK_EXTENSION="$PWD/build/pocaduck.duckdb_extension"

echo "== cargo fmt / clippy / test"
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release

echo "== SQL logic tests: duckdb 1.5.6 (Python)"
.venv/py15/bin/python scripts/sqllogictest.py test/sql
echo "== SQL logic tests: duckdb 2.0.0 (Python)"
.venv/py20/bin/python scripts/sqllogictest.py test/sql
echo "== SQL logic tests with every store in S3 (moto_server on loopback), duckdb 1.5.6"
.venv/py15/bin/python scripts/with_s3.py .venv/py15/bin/python scripts/sqllogictest.py --store-root s3://pocaduck-test/slt test/sql
echo "== SQL logic tests with every store in Azure (Azurite on loopback), duckdb 1.5.6"
.venv/py15/bin/python scripts/with_azure.py .venv/py15/bin/python scripts/sqllogictest.py --store-root az://pocaduck-test/slt test/sql
echo "== LOAD pocaduck by name in the DuckDB CLI 1.5.6: the same functions as the built file"
# (test/sql/extension/load.test lists the functions by name; no count is written down here)
functions="SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_name LIKE 'pocaduck_%' ORDER BY 1"
out=$(.venv/py15/bin/duckdb -unsigned -noheader -list -c "LOAD pocaduck; $functions;")
echo "$out"
want=$(.venv/py15/bin/python -c '
import sys, duckdb
con = duckdb.connect(config={"allow_unsigned_extensions": True})
con.execute("LOAD \x27%s\x27" % sys.argv[1].replace("\x27", "\x27\x27"))
print("\n".join(r[0] for r in con.execute(sys.argv[2]).fetchall()))
' "$POCADUCK_EXTENSION" "$functions")
[ -n "$want" ] && [ "$out" = "$want" ] || { echo "CLI did not load pocaduck by name (want: $want)"; exit 1; }

# test/python/test_s3.py starts its own S3 server, test_azure.py its own Azurite and test_gcs.py its
# own fake-gcs-server (all installed by scripts/setup.sh); this enables them.
export POCADUCK_TEST_S3=1 POCADUCK_TEST_AZURE=1 POCADUCK_TEST_GCS=1
echo "== pytest: duckdb 1.5.6"
.venv/py15/bin/python -m pytest -q -rs test/python
echo "== soak: 8 reader threads of one process on an S3 store while other processes write, consolidate and optimize (20 s, duckdb 1.5.6)"
.venv/py15/bin/python scripts/soak_s3_readers.py --seconds 20
echo "== pytest: duckdb 2.0.0 (the real-data, re-scan, large-strings, Azure, GCS and Dask tests run once, above; the README test runs its Azure example here too)"
.venv/py20/bin/python -m pytest -q -rs test/python --ignore=test/python/test_real_data.py --ignore=test/python/test_large_strings.py \
  --ignore=test/python/test_azure.py --ignore=test/python/test_gcs.py --ignore=test/python/test_dask.py --ignore=test/python/test_rescan.py
echo "== fuzzing: cargo fuzz, 60 s per target"
bash scripts/fuzz.sh 60
echo "== all tests passed"
