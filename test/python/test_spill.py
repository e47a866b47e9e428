"""A long session's index entries wait for the commit in a temporary file (TMPDIR), not in memory.

An encoder keeps up to 2 MiB of encoded entries (about 100 k) in memory and spills the rest; the
commit reads them back. These tests write sessions of many entries through a real DuckDB and
check every entry arrives, and that a TMPDIR that cannot take the spill fails the COPY with an
error naming it, committing nothing.
"""
import os
import subprocess
import sys

from conftest import EXTENSION, connect

# 600 k rows, one (label, block) each: 600 k index entries, several MiB of them per encoder.
# Scattered x and y, so the entries' boxes do not compress away (the entries are delta-encoded
# and LZ4-compressed: with x = i they took under 2 MiB per encoder and never spilled).
ROWS = 600_000
COPY = (
    "COPY (SELECT (i * 7919)::UBIGINT AS label, (i // 1000)::BIGINT AS block, "
    "((i * 2654435761) % 2147483647)::INTEGER AS x, ((i * 97531) % 2147483629)::INTEGER AS y, "
    "2 AS z FROM range({n}) t(i)) TO '{store}' "
    "(FORMAT pocaduck, WORKER 'w0', BUFFER_SIZE 4194304)"
)


def x_of(i: int) -> int:
    return (i * 2654435761) % 2147483647


def test_a_session_of_many_entries_commits_them_all(con, store):
    con.execute(COPY.format(n=ROWS, store=store))
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    n, lo, hi, pts = con.execute(
        f"SELECT count(*), min(label), max(label), sum(point_count) FROM pocaduck_labels('{store}')"
    ).fetchone()
    assert (n, lo, hi, pts) == (ROWS, 0, (ROWS - 1) * 7919, ROWS)
    # Labels from the start, the middle and the end of the session: each its one point.
    for i in (0, 1, ROWS // 2, ROWS - 1):
        got = con.execute(f"SELECT x, block FROM pocaduck_points('{store}', {i * 7919})").fetchall()
        assert got == [(x_of(i), i // 1000)], i


CHILD = r"""
import sys, duckdb
ext, store, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect(config={'allow_unsigned_extensions': True})
con.execute(f"LOAD '{ext}'")
try:
    con.execute(sys.argv[4].format(n=n, store=store))
    print("ok")
except Exception as e:
    print("error:", e)
"""


def copy_with_tmpdir(tmpdir: str, store: str, n: int) -> str:
    env = dict(os.environ, TMPDIR=tmpdir)
    r = subprocess.run([sys.executable, "-c", CHILD, EXTENSION, store, str(n), COPY],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_a_tmpdir_that_cannot_take_the_spill_fails_the_copy_and_commits_nothing(tmp_path, store):
    missing = str(tmp_path / "no-such-dir")
    # A small session never spills: it needs no temporary file.
    assert copy_with_tmpdir(missing, store, 1000) == "ok"
    out = copy_with_tmpdir(missing, store, ROWS)
    assert out.startswith("error:"), out
    assert "temporary file" in out and "TMPDIR" in out and missing in out, out
    # Only the first COPY's rows are in the store.
    con = connect()
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    assert con.execute(f"SELECT count(*), sum(point_count) FROM pocaduck_labels('{store}')").fetchone() == (1000, 1000)
    # The failed COPY left no part behind: the store checks clean, with the first COPY's one part.
    assert con.execute(f"SELECT bool_and(ok), count(*) FROM pocaduck_check('{store}')").fetchone() == (True, 1)
    assert len(os.listdir(os.path.join(store, "workers", "w0", "parts"))) == 1
