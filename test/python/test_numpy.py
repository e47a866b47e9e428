"""Python users: numpy in (DataFrame / Arrow + COPY), numpy out (fetchnumpy), prepared writes."""
import numpy as np
import pandas as pd
import pyarrow as pa


def make_points(rng, n_labels=20, n_blocks=8, n=5000):
    labels = rng.integers(0, n_labels, n).astype(np.uint64)
    blocks = rng.integers(0, n_blocks, n).astype(np.int64)
    xyz = rng.integers(0, 1 << 16, (n, 3)).astype(np.int32)
    sv = rng.integers(0, 1000, n).astype(np.uint32)
    return labels, blocks, xyz, sv


def as_sorted(*cols):
    """Rows as a sorted structured array, for multiset equality."""
    arr = np.rec.fromarrays(cols)
    return np.sort(arr)


def test_numpy_in_through_dataframe_and_out_through_fetchnumpy(con, store):
    rng = np.random.default_rng(1)
    labels, blocks, xyz, sv = make_points(rng)
    df = pd.DataFrame({"label": labels, "block": blocks, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "sv": sv})
    con.register("df", df)
    con.execute(f"COPY (SELECT * FROM df) TO '{store}' (FORMAT pocaduck, WORKER 'py', ATTRIBUTES 'sv')")
    con.execute(f"FROM pocaduck_consolidate('{store}')")
    for lbl in [0, 7, 19]:
        out = con.execute(f"SELECT x, y, z, sv, block FROM pocaduck_points('{store}', {lbl})").fetchnumpy()
        assert out["x"].dtype == np.int32 and out["sv"].dtype == np.uint32 and out["block"].dtype == np.int64
        m = labels == lbl
        assert m.sum() > 0
        got = as_sorted(out["x"], out["y"], out["z"], out["sv"], out["block"])
        want = as_sorted(xyz[m, 0], xyz[m, 1], xyz[m, 2], sv[m], blocks[m])
        assert np.array_equal(got, want)


def test_numpy_in_through_arrow_float_coordinates(con, store):
    rng = np.random.default_rng(2)
    n = 3000
    labels = rng.integers(0, 5, n).astype(np.uint64)
    xyz = rng.normal(size=(n, 3))
    table = pa.table({"label": labels, "block": [f"b{i % 3}" for i in range(n)], "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})
    con.register("t", table)
    con.execute(f"COPY (FROM t) TO '{store}' (FORMAT pocaduck, WORKER 'arrow')")
    con.execute(f"FROM pocaduck_consolidate('{store}')")
    out = con.execute(f"SELECT x, y, z FROM pocaduck_points('{store}', 3)").fetchnumpy()
    assert out["x"].dtype == np.float64
    m = labels == 3
    assert np.array_equal(as_sorted(out["x"], out["y"], out["z"]), as_sorted(xyz[m, 0], xyz[m, 1], xyz[m, 2]))


def test_prepared_pocaduck_write_from_python(con, store):
    pts = [[1, 2, 3], [4, 5, 6]]
    sql = "SELECT points, committed FROM pocaduck_write(?, worker := ?, label := ?, block := ?, points := ?, commit := ?)"
    assert con.execute(sql, [store, "w", 42, "blk", pts, False]).fetchall() == [(2, False)]
    assert con.execute(sql, [store, "w", 2**64 - 1, "blk", [[7, 8, 9]], True]).fetchall() == [(1, True)]
    con.execute(f"FROM pocaduck_consolidate('{store}')")
    assert sorted(con.execute(f"SELECT x, y, z FROM pocaduck_points('{store}', 42)").fetchall()) == [(1, 2, 3), (4, 5, 6)]
    assert con.execute(f"SELECT x FROM pocaduck_points('{store}', 18446744073709551615)").fetchall() == [(7,)]


def test_list_of_labels_returns_label_column(con, store):
    con.execute(f"COPY (SELECT (i % 4)::UBIGINT, 0, i, i, i FROM range(100) t(i)) TO '{store}' (FORMAT pocaduck, WORKER 'w')")
    con.execute(f"FROM pocaduck_consolidate('{store}')")
    out = con.execute(f"SELECT label, count(*) FROM pocaduck_points('{store}', ?) GROUP BY label ORDER BY label", [[1, 3]]).fetchall()
    assert out == [(1, 25), (3, 25)]
