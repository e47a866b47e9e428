#!/usr/bin/env bash
# The README's first command: set up, build and install the extension, then run the demo on the
# real segmentation through the DuckDB CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
.venv/py15/bin/python scripts/demo.py
