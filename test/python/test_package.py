"""The Python package in python/ (import name pocaduckdb): connect, Ingestor, Query and
ingest_volume, against the real extension. Expected values come from numpy, never from pocaduck."""
import numpy as np
import pytest

from conftest import EXTENSION

pocaduckdb = pytest.importorskip("pocaduckdb", reason="pip install ./python (scripts/setup.sh does)")


@pytest.fixture
def pc():
    con = pocaduckdb.connect(extension=EXTENSION)
    yield con
    con.close()


def test_ingestor_and_query_round_trip(tmp_path, pc):
    store = tmp_path / "s"
    rng = np.random.default_rng(7)
    want = {}
    # Small buffer: several flushes, each a commit.
    with pocaduckdb.Ingestor(store, "w0", attributes=["sv"], connection=pc, buffer_points=500) as ing:
        for block in range(4):
            for label in (1, 2, 2**40 + 3):
                pts = rng.integers(0, 1000, size=(200 + 10 * block, 4), dtype=np.int32)
                ing.write(label, block, pts)
                want.setdefault(label, []).append(pts)
    assert ing.points_written == sum(len(p) for v in want.values() for p in v)
    q = pocaduckdb.Query(store, connection=pc)
    assert q.consolidate()["generation"] == 1
    assert q.get_labels().tolist() == [1, 2, 2**40 + 3]
    assert q.get_labels().dtype == np.uint64
    assert q.get_blocks(2) == [0, 1, 2, 3]
    for label, parts in want.items():
        got = q.get_points(label)
        exp = np.concatenate(parts)
        assert got.shape == exp.shape and got.dtype == np.int32
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, exp.tolist()))
    both = q.get_points([1, 2])
    assert len(both) == sum(len(p) for p in want[1] + want[2])
    box = [0, 0, 0, 499, 999, 999]
    inside = np.concatenate(want[1])
    inside = inside[inside[:, 0] <= 499]
    assert len(q.get_points(1, bbox=box)) == len(inside)
    assert q.get_label_counts() == {k: sum(len(p) for p in v) for k, v in want.items()}


def test_bad_input_is_refused_naming_the_argument(tmp_path, pc):
    store = tmp_path / "s"
    ing = pocaduckdb.Ingestor(store, "w0", connection=pc)
    with pytest.raises(ValueError, match=r"Ingestor.write: argument 'points' must be an array of shape \(N, 3\)"):
        ing.write(1, 0, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="argument 'labels' must not be negative"):
        ing.write(-1, 0, np.zeros((5, 3)))
    with pytest.raises(TypeError, match="argument 'block' must be an integer or a string"):
        ing.write(1, 1.5, np.zeros((5, 3)))
    ing.write(1, 0, np.zeros((5, 3), dtype=np.int32))
    with pytest.raises(TypeError, match=r"one type per ingestor \(int\)"):
        ing.write(1, "b", np.zeros((5, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="one label per point"):
        ing.write_block(0, [1, 2], np.zeros((3, 3), dtype=np.int32))
    assert ing.close() == 5
    with pytest.raises(RuntimeError, match="is closed"):
        ing.write(1, 0, np.zeros((5, 3), dtype=np.int32))
    with pytest.raises(FileNotFoundError, match="pocaduckdb.connect: extension '/nonexistent' is not a file"):
        pocaduckdb.connect(extension="/nonexistent")


def test_an_exception_in_the_block_commits_nothing_more(tmp_path, pc):
    store = tmp_path / "s"
    with pocaduckdb.Ingestor(store, "w0", connection=pc) as ing:
        ing.write(1, 0, np.ones((3, 3), dtype=np.int32))
    with pytest.raises(KeyError):
        with pocaduckdb.Ingestor(store, "w1", connection=pc) as ing:
            ing.write(2, 0, np.ones((3, 3), dtype=np.int32))
            raise KeyError("boom")
    q = pocaduckdb.Query(store, connection=pc)
    q.consolidate()
    assert q.get_labels().tolist() == [1]


def volume(shape, seed):
    """A label volume of blobs: labels 0 (background) .. 40."""
    rng = np.random.default_rng(seed)
    v = np.zeros(shape, dtype=np.uint32)
    for label in range(1, 41):
        c = rng.integers(0, shape, size=3)
        r = rng.integers(2, 9, size=3)
        sl = tuple(slice(max(0, ci - ri), ci + ri) for ci, ri in zip(c, r))
        v[sl] = label
    return v


def check_volume(q, vol, labels):
    """Every label's count, and the points of `labels`, as numpy says."""
    ids, counts = np.unique(vol[vol != 0], return_counts=True)
    assert q.get_label_counts() == dict(zip(ids.tolist(), counts.tolist()))
    for label in labels:
        got = q.get_points(int(label))
        want = np.argwhere(vol == label)
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist())), label


def test_ingest_volume_numpy(tmp_path, pc):
    vol = volume((70, 50, 33), seed=3)
    r = pocaduckdb.ingest_volume(vol, tmp_path / "s", (16, 16, 16), connection=pc)
    assert r["points"] == int((vol != 0).sum()) and r["generation"] == 1
    q = pocaduckdb.Query(tmp_path / "s", connection=pc)
    check_volume(q, vol, np.unique(vol[vol != 0])[:5])
    # Blocks are numbered bx + by * nbx + bz * nbx * nby (5 x 4 x 3 blocks here).
    label = int(vol[0:16, 0:16, 0:16].max() or vol.max())
    x, y, z = np.nonzero(vol == label)
    want = sorted({int(a // 16 + (b // 16) * 5 + (c // 16) * 20) for a, b, c in zip(x, y, z)})
    assert q.get_blocks(label) == want
    # Ingesting again (a rerun) replaces, it does not duplicate.
    pocaduckdb.ingest_volume(vol, tmp_path / "s", (16, 16, 16), connection=pc)
    check_volume(q, vol, [label])


def test_ingest_volume_real_segmentation_crop(tmp_path, pc):
    segdata = pytest.importorskip("segdata")
    if not segdata.data_path().exists():
        pytest.skip("the real segmentation is not in ../shared/data")
    vol = np.ascontiguousarray(segdata.load_volume()[:128, :128, :96])
    mm = np.lib.format.open_memmap(tmp_path / "crop.npy", mode="w+", dtype=vol.dtype, shape=vol.shape)
    mm[:] = vol
    mm.flush()
    ro = np.load(tmp_path / "crop.npy", mmap_mode="r")
    r = pocaduckdb.ingest_volume(ro, tmp_path / "s", (64, 64, 64), connection=pc)
    assert r["points"] == int((vol != 0).sum())
    q = pocaduckdb.Query(tmp_path / "s", connection=pc)
    ids, counts = np.unique(vol[vol != 0], return_counts=True)
    check_volume(q, vol, [ids[np.argmax(counts)], ids[0], ids[-1]])


def test_ingest_volume_refuses_bad_arguments_before_any_work(tmp_path, pc):
    vol = np.zeros((8, 8, 8), dtype=np.uint32)
    with pytest.raises(ValueError, match=r"argument 'worker_ids' must be one of \('process', 'task'\), got 'bogus'"):
        pocaduckdb.ingest_volume(vol, tmp_path / "s", (4, 4, 4), connection=pc, worker_ids="bogus")
    # Per-process worker ids without REPLACE_BLOCKS would duplicate a rerun task's blocks.
    with pytest.raises(ValueError, match="worker_ids='process' needs replace_blocks=True"):
        pocaduckdb.ingest_volume(vol, tmp_path / "s", (4, 4, 4), object(), connection=pc, worker_ids="process",
                                 replace_blocks=False)
    with pytest.raises(ValueError, match=r"argument 'worker_id' must be 1-128 characters"):
        pocaduckdb.ingest_volume(vol, tmp_path / "s", (4, 4, 4), connection=pc, worker_id="a/b")
    with pytest.raises(ValueError, match=r"argument 'volume' must be 3-D, got shape \(8, 8\)"):
        pocaduckdb.ingest_volume(vol[0], tmp_path / "s", (4, 4, 4), connection=pc)
    assert not (tmp_path / "s").exists()
