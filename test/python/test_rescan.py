"""Re-scans of edited blocks on the real segmentation (../shared/data), a 256^3 crop in 64^3 blocks.

Proofreading edits the volume: two labels are merged (every voxel of B becomes A) and one is split
(the voxels of C with x >= its median x become a new label D). Only the blocks those labels touch
are scanned again, by two workers, with COPY … (REPLACE_BLOCKS true); after consolidate every
label's point and block counts, and the points of the edited labels and of others, must equal a
fresh full scan of the edited volume (computed by pocaduck into a second store and checked against
numpy). Then optimize must keep that, pocaduck_check must be clean, a vacuum must leave no
unreferenced file, and a delete of a label must hide exactly it.
"""
import numpy as np
import pyarrow as pa
import pytest

segdata = pytest.importorskip("segdata")
if not segdata.data_path().exists():
    pytest.skip(f"real data not found at {segdata.data_path()}", allow_module_level=True)

from conftest import connect  # noqa: E402

BLOCK = 64
CROP = 256


def scan(con, store: str, vol: np.ndarray, worker: str, only=None, replace=False) -> None:
    tables = [segdata.block_table(*b) for b in segdata.iter_blocks(vol, BLOCK)
              if only is None or b[0] in only]
    con.register("rows", pa.concat_tables(tables))
    opt = ", REPLACE_BLOCKS true" if replace else ""
    con.execute(f"COPY (FROM rows) TO '{store}' (FORMAT pocaduck, WORKER '{worker}'{opt})")
    con.unregister("rows")


def blocks_of(vol: np.ndarray, label: int) -> set:
    nb = CROP // BLOCK
    x, y, z = np.nonzero(vol == label)
    return set((x // BLOCK + (y // BLOCK) * nb + (z // BLOCK) * nb * nb).tolist())


def labels_table(con, store):
    return con.execute(f"SELECT label, point_count, block_count FROM pocaduck_labels('{store}') ORDER BY label").fetchall()


def points(con, store, label):
    r = con.execute(f"SELECT x, y, z, block FROM pocaduck_points('{store}', {label})").fetchnumpy()
    keys = segdata.point_keys(r["x"], r["y"], r["z"])
    order = np.argsort(keys)
    return keys[order], np.asarray(r["block"])[order]


def expected_labels(vol):
    """(label, points, blocks) of every label of `vol`, from numpy."""
    nb = CROP // BLOCK
    x, y, z = np.nonzero(vol)
    lab = vol[x, y, z].astype(np.uint64)
    blk = (x // BLOCK + (y // BLOCK) * nb + (z // BLOCK) * nb * nb).astype(np.uint64)
    labels, counts = np.unique(lab, return_counts=True)
    pairs = np.unique(lab * np.uint64(nb ** 3) + blk)
    nblocks = np.bincount(np.searchsorted(labels, pairs // np.uint64(nb ** 3)), minlength=labels.size)
    return [(int(l), int(c), int(b)) for l, c, b in zip(labels, counts, nblocks)]


def test_rescan_of_edited_blocks_matches_a_fresh_scan(tmp_path):
    vol = np.ascontiguousarray(segdata.load_volume()[:CROP, :CROP, :CROP])
    con = connect()
    store, fresh = str(tmp_path / "store"), str(tmp_path / "fresh")
    # The original scan, by two workers (alternate blocks).
    nb = (CROP // BLOCK) ** 3
    scan(con, store, vol, "w0", only=set(range(0, nb, 2)))
    scan(con, store, vol, "w1", only=set(range(1, nb, 2)))
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    assert labels_table(con, store) == expected_labels(vol)

    # Edits: merge B into A, split C (x >= median) into a new label D.
    ids, counts = np.unique(vol[vol != 0], return_counts=True)
    by_size = ids[np.argsort(-counts)]
    a, c, b = (int(v) for v in by_size[:3])
    d = int(ids.max()) + 1
    edited = vol.copy()
    edited[edited == b] = a
    cx = np.nonzero(edited == c)[0]
    split = (edited == c) & (np.arange(CROP)[:, None, None] >= int(np.median(cx)))
    edited[split] = d
    touched = blocks_of(vol, b) | blocks_of(vol, c)
    assert 0 < len(touched) < nb, "the edit touches some blocks, not all"

    # Re-scan only the touched blocks, split between two new workers.
    t = sorted(touched)
    scan(con, store, edited, "r0", only=set(t[0::2]), replace=True)
    scan(con, store, edited, "r1", only=set(t[1::2]), replace=True)
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()

    # A fresh full scan of the edited volume, and numpy, agree with the re-scanned store.
    scan(con, fresh, edited, "f")
    con.execute(f"FROM pocaduck_consolidate('{fresh}')").fetchall()
    want = expected_labels(edited)
    assert labels_table(con, fresh) == want
    assert labels_table(con, store) == want
    assert b not in [r[0] for r in want] and d in [r[0] for r in want]
    others = [int(v) for v in by_size[3:6]] + [int(by_size[len(by_size) // 2])]
    for label in [a, c, d] + others:
        got, got_blocks = points(con, store, label)
        ref, ref_blocks = points(con, fresh, label)
        assert np.array_equal(got, ref), label
        assert np.array_equal(got_blocks, ref_blocks), label
        x, y, z = np.nonzero(edited == label)
        assert np.array_equal(got, np.sort(segdata.point_keys(x, y, z))), label
    blocks = con.execute(f"SELECT block, point_count FROM pocaduck_blocks('{store}', {a}) ORDER BY block").fetchall()
    assert blocks == con.execute(f"SELECT block, point_count FROM pocaduck_blocks('{fresh}', {a}) ORDER BY block").fetchall()
    assert con.execute(f"SELECT count(*) FROM pocaduck_points('{store}', {b})").fetchone()[0] == 0

    # Optimize keeps it; the store checks clean.
    con.execute(f"FROM pocaduck_optimize('{store}')").fetchall()
    assert labels_table(con, store) == want
    got, _ = points(con, store, a)
    x, y, z = np.nonzero(edited == a)
    assert np.array_equal(got, np.sort(segdata.point_keys(x, y, z)))
    assert con.execute(f"SELECT ok FROM pocaduck_check('{store}')").fetchone()[0]
    # Vacuum (no retention) then deletes the parts only hidden or rewritten points used.
    con.execute(f"FROM pocaduck_vacuum('{store}', retain := INTERVAL 0 SECONDS, force := true)").fetchall()
    assert con.execute(f"SELECT unreferenced_files FROM pocaduck_stats('{store}')").fetchone()[0] == 0
    assert labels_table(con, store) == want
    assert con.execute(f"SELECT ok FROM pocaduck_check('{store}')").fetchone()[0]

    # Deleting label D (the split-off part) hides exactly it.
    con.execute(f"FROM pocaduck_delete('{store}', labels := [{d}])").fetchall()
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    assert labels_table(con, store) == [r for r in want if r[0] != d]
