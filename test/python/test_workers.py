"""Two worker processes write one store at the same time; consolidate sees both, nothing lost."""
import multiprocessing as mp

import numpy as np


def worker(store: str, wid: int, extension: str, q) -> None:
    import duckdb

    try:
        con = duckdb.connect(config={"allow_unsigned_extensions": True})
        con.execute(f"LOAD '{extension}'")
        # One COPY per block, committed at the end: a real worker's loop.
        for b in range(wid, 40, 2):
            con.execute(
                f"COPY (SELECT ((i * 7 + {b}) % 23)::UBIGINT, {b}, i, {b}, 0 FROM range(500) t(i)) "
                f"TO '{store}' (FORMAT pocaduck, WORKER 'w{wid}', COMMIT false)"
            )
        con.execute(f"FROM pocaduck_commit('{store}', worker := 'w{wid}')")
        q.put(None)
    except Exception as e:  # report to the parent
        q.put(repr(e))


def test_two_processes_one_store(con, store):
    from conftest import EXTENSION

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(store, w, EXTENSION, q)) for w in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=120)
    assert results == [None, None]
    s = con.execute(f"SELECT workers, new_commits, new_files, new_points FROM pocaduck_consolidate('{store}')").fetchone()
    assert s == (2, 2, 2, 40 * 500)
    # Label counts agree with a direct computation.
    i = np.arange(500)
    want = {}
    for b in range(40):
        for lbl in (i * 7 + b) % 23:
            want[int(lbl)] = want.get(int(lbl), 0) + 1
    got = dict(con.execute(f"SELECT label, point_count FROM pocaduck_labels('{store}')").fetchall())
    assert got == want
    assert con.execute(f"SELECT count(DISTINCT block) FROM pocaduck_points('{store}', 5)").fetchone() == (40,)
