"""Corrupt stores give errors naming the file, through a real DuckDB, and never kill the process.

Each case corrupts a copy of one consolidated store (truncated part, garbled part, missing part,
garbled commit segment, garbled generation manifest, garbled index segment), then runs
pocaduck_check and the readers.
"""
import shutil
from pathlib import Path

import pytest

from conftest import connect

CASES = ["truncate_part", "garble_part", "missing_part", "garble_segment", "garble_index", "garble_index_segment"]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    d = tmp_path_factory.mktemp("healthy") / "s"
    con = connect()
    for w in range(2):
        con.execute(
            f"COPY (SELECT (i % 20)::UBIGINT, {w}, i::INT, (i % 13)::INT, {w}::INT FROM range(20000) t(i)) "
            f"TO '{d}' (FORMAT pocaduck, WORKER 'w{w}')"
        )
    con.execute(f"FROM pocaduck_consolidate('{d}')").fetchall()
    return d


def corrupt(store: Path, case: str) -> str:
    part = sorted(store.glob("workers/w1/parts/*.parquet"))[0]
    seg = store / "workers/w1/commits/0000000001.parquet"
    idx = store / "index/0000000001.json"
    idx_seg = sorted(store.glob("segments/*.parquet"))[0]
    if case == "truncate_part":
        b = part.read_bytes()
        part.write_bytes(b[: len(b) // 2])
        return str(part.relative_to(store))
    if case == "garble_part":
        b = bytearray(part.read_bytes())
        for i in range(len(b) - 40, len(b) - 8):  # the footer
            b[i] ^= 0xA5
        part.write_bytes(bytes(b))
        return str(part.relative_to(store))
    if case == "missing_part":
        part.unlink()
        return str(part.relative_to(store))
    if case == "garble_segment":
        seg.write_bytes(b"PAR1 this is not a commit segment PAR1")
        return str(seg.relative_to(store))
    if case == "garble_index":
        b = bytearray(idx.read_bytes())
        b[: len(b) // 2] = bytes(len(b) // 2)
        idx.write_bytes(bytes(b))
        return str(idx.relative_to(store))
    if case == "garble_index_segment":
        b = bytearray(idx_seg.read_bytes())
        for i in range(4, len(b) - 8):  # pages and footer
            b[i] ^= 0xA5
        idx_seg.write_bytes(bytes(b))
        return str(idx_seg.relative_to(store))
    raise AssertionError(case)


@pytest.mark.parametrize("case", CASES)
def test_corruption_is_reported_with_the_file(healthy, tmp_path, case):
    store = tmp_path / "s"
    shutil.copytree(healthy, store)
    con = connect()
    assert con.execute(f"SELECT bool_and(ok) FROM pocaduck_check('{store}')").fetchone() == (True,)
    bad = corrupt(store, case)
    con = connect()  # a fresh process-level view is not needed, but a fresh connection is cheap
    rows = con.execute(f"SELECT ok, file, message FROM pocaduck_check('{store}')").fetchall()
    problems = [r for r in rows if not r[0]]
    assert any(r[1] == bad for r in problems), (bad, rows)
    assert rows[-1][0] is False and rows[-1][1] is None
    if case in ("truncate_part", "garble_part", "missing_part"):
        # Label 1 has rows in w1's part: reading it fails, naming the part.
        with pytest.raises(Exception) as e:
            con.execute(f"FROM pocaduck_points('{store}', 1)").fetchall()
        assert bad in str(e.value), str(e.value)
    if case in ("garble_index", "garble_index_segment"):
        with pytest.raises(Exception) as e:
            con.execute(f"FROM pocaduck_points('{store}', 1)").fetchall()
        assert bad in str(e.value), str(e.value)
    if case == "garble_segment":
        # The index was built before: reads still work; consolidate of a new commit still
        # works too (it does not re-read merged segments), and check keeps reporting it.
        assert con.execute(f"SELECT count(*) FROM pocaduck_points('{store}', 1)").fetchone() == (2000,)
    # The process is alive and other work goes on.
    assert con.execute("SELECT 42").fetchone() == (42,)
