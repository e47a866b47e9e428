#!/usr/bin/env bash
# Benchmark (issue 3): pocaduck vs plain DuckDB on the same rows; prints a table, writes
# build/bench.json. Pass --quick for a smaller run. Takes ~15 minutes in full on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
bash scripts/build.sh >/dev/null
.venv/py15/bin/python scripts/bench.py "$@"
