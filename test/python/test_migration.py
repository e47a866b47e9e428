"""Stores written by the previous release (index format 1: each generation a DuckDB database
`index/<g>.duckdb`) keep working: pocaduck reads them as they are, and the next
pocaduck_consolidate upgrades them to format 2 (manifests and index segments).

The format-1 generation is written here with plain DuckDB exactly as the previous release's
`sql::index_db` wrote it (same tables, same storage compatibility version), from the store's
commit segments.
"""
import json
import os
import time

import duckdb
import numpy as np
import pytest

from conftest import connect

LEGACY_SQL = """
CREATE TABLE store_info(key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE workers(worker VARCHAR, last_commit UBIGINT);
CREATE TABLE entries(label UBIGINT, block BIGINT, worker VARCHAR, commit_seq UBIGINT,
    part VARCHAR, row_start UBIGINT, row_count UBIGINT,
    min_x DOUBLE, min_y DOUBLE, min_z DOUBLE, max_x DOUBLE, max_y DOUBLE, max_z DOUBLE);
CREATE VIEW labels AS SELECT label, sum(row_count)::UBIGINT AS point_count,
    count(DISTINCT block)::UBIGINT AS block_count FROM entries GROUP BY label;
"""


def write_legacy_generation(store, gen=1):
    """Builds index/<gen>.duckdb from every commit segment on disk (one commit per worker)."""
    (store / "index").mkdir(exist_ok=True)
    db = duckdb.connect(str(store / f"index/{gen:010}.duckdb"), config={"storage_compatibility_version": "v1.0.0"})
    db.execute(LEGACY_SQL)
    schema = (store / "_pocaduck.json").read_text()
    db.execute("INSERT INTO store_info VALUES ('format', '1'), ('generation', ?), ('schema', ?)", [str(gen), schema])
    seg = f"{store}/workers/*/commits/*.parquet"
    db.execute(
        f"""INSERT INTO entries SELECT label, block,
              regexp_extract(filename, 'workers/([^/]+)/commits', 1),
              regexp_extract(filename, '(\\d+)\\.parquet$', 1)::UBIGINT,
              part, row_start, row_count, min_x, min_y, min_z, max_x, max_y, max_z
            FROM read_parquet('{seg}', filename = true) ORDER BY label"""
    )
    db.execute("INSERT INTO workers SELECT worker, max(commit_seq) FROM entries GROUP BY worker")
    db.execute("CHECKPOINT")
    db.close()


def points(con, store, label):
    r = con.execute(f"SELECT block, x, y, z FROM pocaduck_points('{store}', {label}) ORDER BY ALL").fetchall()
    return [tuple(x) for x in r]


def expected(rows, label):
    return sorted(tuple(int(v) for v in r[1:]) for r in rows if r[0] == label)


def test_format_1_store_is_read_then_upgraded(tmp_path):
    store = tmp_path / "old"
    con = connect()
    rows = []
    for w in range(2):
        i = np.arange(3000)
        lab, blk, x = i % 30, 10 * w + i % 4, i + 100000 * w
        rows += list(zip(lab, blk, x, 2 * i, np.full(i.size, w)))
        con.execute(
            f"COPY (SELECT (i % 30)::UBIGINT, 10 * {w} + i % 4, (i + 100000 * {w})::INT, (2 * i)::INT, {w}::INT "
            f"FROM range(3000) t(i)) TO '{store}' (FORMAT pocaduck, WORKER 'w{w}')"
        )
    write_legacy_generation(store)
    # Read as it is: points, labels, blocks, stats, check.
    for label in (0, 7, 29):
        assert points(con, store, label) == expected(rows, label)
    labels = con.execute(f"SELECT label, point_count, block_count FROM pocaduck_labels('{store}') ORDER BY label").fetchall()
    want = sorted({(int(r[0]), sum(1 for q in rows if q[0] == r[0]), len({q[1] for q in rows if q[0] == r[0]})) for r in rows})
    assert labels == want
    assert want[0] == (0, 200, 4)  # two blocks of each worker (i % 30 and i % 4 share parity)
    assert con.execute(f"SELECT generation, labels, points FROM pocaduck_stats('{store}')").fetchone() == (1, 30, 6000)
    assert con.execute(f"SELECT bool_and(ok) FROM pocaduck_check('{store}')").fetchone() == (True,)
    with pytest.raises(duckdb.Error, match="has an index of format 1: run pocaduck_consolidate"):
        con.execute(f"FROM pocaduck_optimize('{store}')").fetchall()
    # Vacuum understands a format-1 generation: a week later, nothing it references goes, nor
    # the workers' commits (each is its worker's highest: the rerun below, numbered after it, is
    # merged by the upgrade).
    week = time.time() - 8 * 86400
    for f in store.rglob("*"):
        if f.is_file():
            os.utime(f, (week, week))
    r = {k: f for k, f in con.execute(f"SELECT kind, files FROM pocaduck_vacuum('{store}')").fetchall()}
    assert r == {"generation": 0, "commit": 0, "segment": 0, "part": 0, "staging": 0, "index_cache": 0}
    assert con.execute(f"SELECT generation, format, labels, points FROM pocaduck_generations('{store}')").fetchall() == [(1, 1, 30, 6000)]
    legacy_rows = list(rows)
    # A rerun of w0 (blocks 0-3 again, other points) is committed before the upgrade.
    con.execute(
        f"COPY (SELECT (i % 30)::UBIGINT, i % 4, (-1 - i)::INT, 0, 9 FROM range(600) t(i)) TO '{store}' (FORMAT pocaduck, WORKER 'w0')"
    )
    rows = [r for r in rows if r[4] != 0] + [(i % 30, i % 4, -1 - i, 0, 9) for i in range(600)]
    c = con.execute(f"SELECT generation, workers, new_commits FROM pocaduck_consolidate('{store}')").fetchone()
    assert c == (2, 2, 1)
    manifest = json.loads((store / "index/0000000002.json").read_text())
    assert manifest["format"] == 2 and len(manifest["segments"]) == 2
    assert (store / "index/0000000001.duckdb").exists()  # kept for readers that hold it
    for label in (0, 7, 29):
        assert points(con, store, label) == expected(rows, label)
    assert con.execute(f"SELECT generation, labels, points FROM pocaduck_stats('{store}')").fetchone() == (2, 30, 3600)
    assert con.execute(f"SELECT bool_and(ok) FROM pocaduck_check('{store}')").fetchone() == (True,)
    # Format 2 from here on: optimize works and keeps the answers.
    assert con.execute(f"SELECT generation FROM pocaduck_optimize('{store}')").fetchone() == (3,)
    for label in (0, 7, 29):
        assert points(con, store, label) == expected(rows, label)
    # Time travel back to the format-1 generation, then vacuum it away.
    gens = con.execute(f"SELECT generation, format, points FROM pocaduck_generations('{store}')").fetchall()
    assert gens == [(1, 1, 6000), (2, 2, 3600), (3, 2, 3600)]
    for label in (0, 7):
        got = [tuple(x) for x in con.execute(f"SELECT block, x, y, z FROM pocaduck_points('{store}', {label}, generation := 1) ORDER BY ALL").fetchall()]
        assert got == expected(legacy_rows, label)
    r = dict(con.execute(f"SELECT kind, files FROM pocaduck_vacuum('{store}', retain := INTERVAL 0 SECONDS, force := true)").fetchall())
    assert r["generation"] == 2 and r["part"] >= 1, r  # 1.duckdb, 2.json; w0's first part
    assert sorted(p.name for p in (store / "index").iterdir()) == ["0000000003.json"]
    for label in (0, 7, 29):
        assert points(con, store, label) == expected(rows, label)
    with pytest.raises(duckdb.Error, match="does not hold generation 1"):
        con.execute(f"FROM pocaduck_points('{store}', 0, generation := 1)").fetchall()
    assert con.execute(f"SELECT unreferenced_files FROM pocaduck_stats('{store}')").fetchone() == (0,)
    assert con.execute(f"SELECT bool_and(ok) FROM pocaduck_check('{store}')").fetchone() == (True,)


class HeldOpen:
    """Another process that ATTACHes `path` with plain DuckDB, without READ_ONLY (so it holds the
    file's write lock, and creates the file if it is missing), until the block ends."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        import subprocess
        import sys

        code = (
            "import duckdb, sys; c = duckdb.connect(); "
            f"c.execute(\"ATTACH '{self.path}' AS x\"); print('ready', flush=True); sys.stdin.read()"
        )
        self.p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc):
        self.p.stdin.close()
        self.p.wait(timeout=30)


def test_an_attached_index_file_never_blocks_reads(tmp_path):
    """Issue 10, finding 9: a plain-DuckDB ATTACH (without READ_ONLY) of a file in `index/` must not
    break pocaduck. Format 1: the generation being held open (locked) is read from a copy. Format 2:
    a `.duckdb` file that ATTACH creates in `index/` is not a generation (before, it hid the
    manifests and every read failed on its lock or on its missing tables)."""
    store = tmp_path / "old"
    con = connect()
    con.execute(
        f"COPY (SELECT (i % 5)::UBIGINT, i % 2, i::INT, 0, 0 FROM range(100) t(i)) TO '{store}' (FORMAT pocaduck, WORKER 'w')"
    )
    write_legacy_generation(store)
    want = [(b, x, 0, 0) for x in range(100) for b in [x % 2] if x % 5 == 3]
    with HeldOpen(store / "index/0000000001.duckdb"):
        assert points(con, store, 3) == sorted(want)
        assert con.execute(f"SELECT generation, new_commits FROM pocaduck_consolidate('{store}')").fetchone() == (2, 0)
    stray = store / "index/0000000009.duckdb"
    with HeldOpen(stray):
        assert stray.exists()
        fresh = connect()  # a reader that never saw the store
        assert points(fresh, store, 3) == sorted(want)
        con.execute(f"COPY (SELECT 3::UBIGINT, 7, 1000, 0, 0) TO '{store}' (FORMAT pocaduck, WORKER 'w')")
        assert con.execute(f"SELECT generation, new_commits FROM pocaduck_consolidate('{store}')").fetchone() == (3, 1)
        assert points(fresh, store, 3) == sorted(want + [(7, 1000, 0, 0)])
    # Once the other process is gone, the empty file it left is still ignored.
    assert points(connect(), store, 3) == sorted(want + [(7, 1000, 0, 0)])
    assert con.execute(f"SELECT bool_and(ok) FROM pocaduck_check('{store}')").fetchone() == (True,)
    assert con.execute(f"SELECT generation FROM pocaduck_stats('{store}')").fetchone() == (3,)
