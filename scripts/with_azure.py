#!/usr/bin/env python3
"""Runs a command with a real Azure Blob Storage emulator (Azurite, installed into .venv/node by
scripts/setup.sh) on loopback.

Starts Azurite on a free port, creates the container `pocaduck-test`, exports
AZURE_STORAGE_USE_EMULATOR and AZURITE_BLOB_STORAGE_URL for the command, runs it, stops the
emulator and exits with the command's status.

Usage: with_azure.py COMMAND [ARG…]
"""
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test" / "python"))
from azurite import Azurite  # noqa: E402


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    srv = Azurite()
    try:
        srv.container("pocaduck-test")
        print(f"Azure emulator (Azurite) at {srv.endpoint}, container pocaduck-test", flush=True)
        return subprocess.run(sys.argv[1:], env={**os.environ, **srv.env}).returncode
    finally:
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
