"""End to end on the real segmentation (../shared/data): 64^3 blocks, two worker processes.

Points are every voxel of a label inside a block. Checks, against numpy on the decoded volume:
- pocaduck_points returns exactly the voxels of several labels (the largest, a median one, the
  smallest, one in a single block), as a multiset, with their blocks;
- pocaduck_labels (points and blocks per label) for every label;
- pocaduck_blocks for the largest label.
"""
import multiprocessing as mp

import numpy as np
import pytest

segdata = pytest.importorskip("segdata")
if not segdata.data_path().exists():
    pytest.skip(f"real data not found at {segdata.data_path()}", allow_module_level=True)

BLOCK = 64


def ingest(store: str, wid: int, n: int, extension: str, q) -> None:
    import duckdb
    import pyarrow as pa

    try:
        vol = segdata.load_volume()
        tables = [segdata.block_table(*b) for b in segdata.iter_blocks(vol, BLOCK, wid, n)]
        del vol
        con = duckdb.connect(config={"allow_unsigned_extensions": True})
        con.execute(f"LOAD '{extension}'")
        con.register("rows", pa.concat_tables(tables))
        con.execute(f"COPY (FROM rows) TO '{store}' (FORMAT pocaduck, WORKER 'w{wid}')")
        q.put(None)
    except Exception as e:
        q.put(repr(e))


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    from conftest import EXTENSION, connect

    store = str(tmp_path_factory.mktemp("real") / "store")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=ingest, args=(store, w, 2, EXTENSION, q)) for w in range(2)]
    for p in procs:
        p.start()
    errors = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert errors == [None, None]
    con = connect()
    summary = con.execute(f"SELECT workers, new_points FROM pocaduck_consolidate('{store}')").fetchone()
    vol = segdata.load_volume()
    return store, con, vol, summary


def test_every_label_count_and_block_count(real_store):
    store, con, vol, summary = real_store
    fg = vol[vol != 0]
    labels, counts = np.unique(fg, return_counts=True)
    assert summary == (2, int(counts.sum()))
    # Blocks per label: unique labels of each 64^3 block.
    nb = vol.shape[0] // BLOCK
    blocks = vol.reshape(nb, BLOCK, nb, BLOCK, nb, BLOCK).transpose(0, 2, 4, 1, 3, 5).reshape(nb**3, -1)
    per_label_blocks = {}
    for blk in blocks:
        for lbl in np.unique(blk[blk != 0]):
            per_label_blocks[int(lbl)] = per_label_blocks.get(int(lbl), 0) + 1
    got = con.execute(f"SELECT label, point_count, block_count FROM pocaduck_labels('{store}') ORDER BY label").fetchnumpy()
    assert np.array_equal(got["label"], labels.astype(np.uint64))
    assert np.array_equal(got["point_count"], counts)
    assert [per_label_blocks[int(x)] for x in labels] == list(got["block_count"])


def test_points_are_exactly_the_voxels(real_store):
    store, con, vol, _ = real_store
    labels, counts = np.unique(vol[vol != 0], return_counts=True)
    order = np.argsort(counts)
    chosen = {int(labels[order[-1]]), int(labels[order[len(order) // 2]]), int(labels[order[0]])}
    # A label that lies in a single block.
    single = con.execute(f"SELECT label FROM pocaduck_labels('{store}') WHERE block_count = 1 ORDER BY point_count DESC LIMIT 1").fetchone()
    chosen.add(int(single[0]))
    for lbl in sorted(chosen):
        out = con.execute(f"SELECT x, y, z, block FROM pocaduck_points('{store}', {lbl})").fetchnumpy()
        ix, iy, iz = np.nonzero(vol == lbl)
        want = np.sort(segdata.point_keys(ix, iy, iz))
        got = np.sort(segdata.point_keys(out["x"], out["y"], out["z"]))
        assert got.size == want.size, lbl
        assert np.array_equal(got, want), lbl
        nb = vol.shape[0] // BLOCK
        want_block = (out["x"] // BLOCK) + (out["y"] // BLOCK) * nb + (out["z"] // BLOCK) * nb * nb
        assert np.array_equal(out["block"], want_block), lbl


def test_blocks_of_largest_label(real_store):
    store, con, vol, _ = real_store
    labels, counts = np.unique(vol[vol != 0], return_counts=True)
    big = int(labels[np.argmax(counts)])
    ix, iy, iz = np.nonzero(vol == big)
    nb = vol.shape[0] // BLOCK
    bid = ix // BLOCK + (iy // BLOCK) * nb + (iz // BLOCK) * nb * nb
    ub, uc = np.unique(bid, return_counts=True)
    got = con.execute(f"SELECT block, point_count FROM pocaduck_blocks('{store}', {big}) ORDER BY block").fetchnumpy()
    assert np.array_equal(got["block"], ub) and np.array_equal(got["point_count"], uc)
