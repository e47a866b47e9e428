#!/usr/bin/env python3
"""Runs a command with a real S3-compatible server (moto_server) on loopback.

Starts moto_server on a free port, creates the bucket `pocaduck-test`, exports AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT and AWS_ALLOW_HTTP for the command, runs it, stops
the server and exits with the command's status.

Usage: with_s3.py COMMAND [ARG…]
"""
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test" / "python"))
from s3server import S3Server  # noqa: E402


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    srv = S3Server()
    try:
        srv.bucket("pocaduck-test")
        print(f"S3 server (moto) at {srv.endpoint}, bucket pocaduck-test", flush=True)
        return subprocess.run(sys.argv[1:], env={**os.environ, **srv.env}).returncode
    finally:
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
