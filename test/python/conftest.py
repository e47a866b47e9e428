"""Shared fixtures: a DuckDB connection with pocaduck loaded from the build directory."""
import os
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]
EXTENSION = os.environ.get("POCADUCK_EXTENSION", str(REPO / "build" / "pocaduck.duckdb_extension"))
sys.path.insert(0, str(REPO / "scripts"))


def connect() -> duckdb.DuckDBPyConnection:
    """A fresh in-memory connection with the extension loaded."""
    con = duckdb.connect(config={"allow_unsigned_extensions": True})
    con.execute(f"LOAD '{EXTENSION}'")
    return con


@pytest.fixture
def con():
    c = connect()
    yield c
    c.close()


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "store")
