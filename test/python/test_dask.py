"""ingest_volume on a Dask cluster: a LocalCluster of 2 worker processes ingests the whole real
segmentation (512^3, from a zarr array on disk) into a local store, and crops of it (from zarr, an
in-memory numpy array, a memmap) into local and S3 stores; tasks fail and are retried, a worker process is killed mid-ingest. Every expected value
comes from numpy on the same voxels, never from pocaduck.

Points are every voxel of every label but 0, global (x, y, z); blocks 64^3.
"""
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import s3server
from conftest import EXTENSION

pocaduckdb = pytest.importorskip("pocaduckdb", reason="pip install ./python (scripts/setup.sh does)")
distributed = pytest.importorskip("distributed", reason="scripts/setup.sh installs dask[distributed]")
zarr = pytest.importorskip("zarr", reason="scripts/setup.sh installs zarr")
segdata = pytest.importorskip("segdata")

BLOCK = (64, 64, 64)


@pytest.fixture(scope="module")
def seg():
    if not segdata.data_path().exists():
        pytest.skip("the real segmentation is not in ../shared/data")
    return segdata.load_volume()


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server when POCADUCK_TEST_S3=1 (started before the cluster, whose worker
    processes take the AWS_* variables from this environment)."""
    if not s3server.enabled():
        yield None
        return
    srv = s3server.S3Server()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in srv.env.items():
            mp.setenv(k, v)
        yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(s3):
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cl:
        with distributed.Client(cl) as c:
            yield c


@pytest.fixture
def pc():
    con = pocaduckdb.connect(extension=EXTENSION)
    yield con
    con.close()


def to_zarr(vol, path):
    z = zarr.create_array(store=str(path), shape=vol.shape, chunks=BLOCK, dtype=vol.dtype)
    z[:] = vol
    return zarr.open_array(str(path), mode="r")


def supports_replace_blocks(tmp_path) -> bool:
    """Whether the extension under test knows the COPY option REPLACE_BLOCKS (a COPY of no rows
    binds its options without writing anything)."""
    con = pocaduckdb.connect(extension=EXTENSION)
    try:
        con.execute("COPY (SELECT 1::UBIGINT AS label, 0 AS block, 0 AS x, 0 AS y, 0 AS z WHERE false) "
                    f"TO '{tmp_path / 'probe'}' (FORMAT pocaduck, WORKER 'probe', REPLACE_BLOCKS true)")
        return True
    except Exception as e:
        if "REPLACE_BLOCKS" in str(e):
            return False
        raise
    finally:
        con.close()


def label_counts(vol) -> dict:
    """{label: voxel count} of every label but 0, from numpy (pandas' hash count when present:
    np.unique sorts, which takes seconds on 10^7 voxels)."""
    nz = vol[vol != 0]
    try:
        import pandas as pd
    except ImportError:
        ids, counts = np.unique(nz, return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist()))
    vc = pd.Series(nz).value_counts()
    return dict(zip(vc.index.tolist(), vc.tolist()))


def check_exact(q, vol, r):
    """Every label's count, and the full point sets and blocks of the largest, the smallest and
    a median label, against numpy (points compared as C-order linear indices into `vol`)."""
    vol = np.ascontiguousarray(vol)
    want_counts = label_counts(vol)
    assert r["points"] == sum(want_counts.values())
    assert q.get_label_counts() == want_counts
    by_size = sorted(want_counts, key=lambda k: (want_counts[k], k))
    nx, ny, nz = vol.shape
    nb = [-(-s // b) for s, b in zip(vol.shape, BLOCK)]
    flat = vol.reshape(-1)
    for label in sorted({by_size[-1], by_size[0], by_size[len(by_size) // 2]}):
        got = q.get_points(label).astype(np.int64)
        want = np.flatnonzero(flat == label)  # ascending
        assert got.shape == (want.size, 3), label
        assert np.array_equal(np.sort((got[:, 0] * ny + got[:, 1]) * nz + got[:, 2]), want), label
        x, y, z = want // (ny * nz), want // nz % ny, want % nz
        blocks = np.unique(x // 64 + (y // 64) * nb[0] + (z // 64) * nb[0] * nb[1])
        assert q.get_blocks(label) == blocks.tolist(), label


def test_zarr_on_a_cluster_into_a_local_store(tmp_path, seg, client, pc):
    # The whole real segmentation (512^3, 133 M labelled voxels).
    vol = np.asarray(seg)
    z = to_zarr(vol, tmp_path / "seg.zarr")
    r = pocaduckdb.ingest_volume(z, tmp_path / "s", BLOCK, client, extension=EXTENSION, connection=pc, progress=False)
    # 8 x 8 x 8 blocks, 8 per task.
    assert r["tasks"] == 64 and r["generation"] == 1
    if pocaduckdb._volume.DEFAULT_WORKER_IDS == "process":
        # One worker id per worker process: volume-<host>-<pid>-<random>.
        pids = set(client.run(os.getpid).values())
        assert 1 <= len(r["workers"]) <= 2 and {int(w.split("-")[-2]) for w in r["workers"]} <= pids
    else:
        assert r["workers"] == [f"volume-t{i:02d}" for i in range(64)]
    check_exact(pocaduckdb.Query(tmp_path / "s", connection=pc), vol, r)


@pytest.mark.skipif(not s3server.enabled(), reason="set POCADUCK_TEST_S3=1 (scripts/test.sh does)")
def test_zarr_on_a_cluster_into_s3(tmp_path, seg, s3, client, pc):
    vol = np.asarray(seg[128:384, 128:384, 256:384])
    z = to_zarr(vol, tmp_path / "seg.zarr")
    bucket = s3.bucket(f"dask-{uuid.uuid4().hex[:8]}")
    store = f"s3://{bucket}/seg"
    r = pocaduckdb.ingest_volume(z, store, BLOCK, client, extension=EXTENSION, connection=pc, progress=False,
                                 blocks_per_task=4)
    assert r["tasks"] == 8
    # Coordinates are global to the crop: check against the crop.
    check_exact(pocaduckdb.Query(store, connection=pc), vol, r)
    assert any(k.startswith("seg/index/") for k in s3.keys(bucket, "seg/"))


class Flaky:
    """A volume whose read of one block fails: once (a marker file remembers it, across worker
    processes), or always."""

    def __init__(self, vol, origin, marker, always=False):
        self.vol, self.origin, self.marker, self.always = vol, tuple(origin), str(marker), always
        self.shape, self.dtype = vol.shape, vol.dtype

    def __getitem__(self, sl):
        if tuple(s.start for s in sl) == self.origin:
            if self.always:
                raise OSError("injected read failure (always)")
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                raise OSError("injected read failure (once)")
        return self.vol[sl]


def test_a_failed_task_is_retried_and_the_store_stays_exact(tmp_path, seg, client, pc, capsys):
    vol = np.asarray(seg[256:384, 256:384, :128])
    z = to_zarr(vol, tmp_path / "seg.zarr")
    # Block (0, 64, 64) is the 7th of its task (blocks 0..7): the task has committed blocks
    # (buffer_points is small) before its read fails, and the rerun writes them all again.
    flaky = Flaky(z, (0, 64, 64), tmp_path / "failed-once")
    r = pocaduckdb.ingest_volume(flaky, tmp_path / "s", BLOCK, client, extension=EXTENSION, connection=pc,
                                 buffer_points=50_000, progress=True)
    assert (tmp_path / "failed-once").exists()
    assert "ingest_volume" in capsys.readouterr().err  # the progress bar
    check_exact(pocaduckdb.Query(tmp_path / "s", connection=pc), vol, r)
    # A task that fails every time: ingest_volume fails naming it, after its retries.
    always = Flaky(z, (0, 64, 64), tmp_path / "unused", always=True)
    with pytest.raises(RuntimeError, match=r"task 0 \(blocks 0\.\.7\) failed after 1 retries: OSError\('injected"):
        pocaduckdb.ingest_volume(always, tmp_path / "s2", BLOCK, client, extension=EXTENSION, connection=pc,
                                 retries=1, progress=False)


def test_memmap_on_a_cluster_is_read_by_path(tmp_path, seg, client, pc):
    vol = np.ascontiguousarray(seg[:128, 128:256, 64:160])
    np.save(tmp_path / "crop.npy", vol)
    mm = np.load(tmp_path / "crop.npy", mmap_mode="r")
    view = mm[:, 10:, :]  # a view into the file at an offset: reopened by path all the same
    r = pocaduckdb.ingest_volume(view, tmp_path / "s", BLOCK, client, extension=EXTENSION, connection=pc,
                                 blocks_per_task=2, progress=False)
    check_exact(pocaduckdb.Query(tmp_path / "s", connection=pc), np.asarray(view), r)


def commits(store: Path) -> int:
    return len(list(store.glob("workers/*/commits/*.parquet")))


@pytest.mark.parametrize("worker_ids", ["task", "process"])
def test_a_worker_process_killed_mid_ingest(tmp_path, seg, client, pc, worker_ids):
    if worker_ids == "process" and not supports_replace_blocks(tmp_path):
        pytest.skip("the extension has no COPY option REPLACE_BLOCKS yet")
    # An in-memory numpy array: each task's blocks are scattered to a worker; the killed worker
    # takes the blocks of its queued tasks with it, and the client sends them again.
    vol = np.ascontiguousarray(seg[:256, :, :128])
    store = tmp_path / "s"
    # Both worker processes up (a process killed by an earlier test may still be restarting).
    client.wait_for_workers(2, timeout=60)
    pids = set(client.run(os.getpid).values())
    killed = {}

    def killer():
        # After some commits (small buffers: tasks commit several times), kill the worker
        # process running a task at that moment.
        deadline = time.time() + 120
        while commits(store) < 6 and time.time() < deadline:
            time.sleep(0.05)
        busy = []
        while not busy and time.time() < deadline:
            busy = [a for a, keys in client.processing().items() if keys]
        pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
        killed.update(pid=pid, commits=commits(store))
        os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=killer)
    t.start()
    try:
        r = pocaduckdb.ingest_volume(vol, store, BLOCK, client, extension=EXTENSION, connection=pc,
                                     worker_ids=worker_ids, blocks_per_task=4, buffer_points=200_000, progress=False)
    finally:
        t.join()
    assert killed["pid"] in pids and killed["commits"] < commits(store)
    # The task running on the killed worker lost its scattered blocks: the client sent them again.
    assert r["resubmitted"] >= 1
    # The nanny replaced the process.
    deadline = time.time() + 30
    while killed["pid"] in set(client.run(os.getpid).values()) and time.time() < deadline:
        time.sleep(0.2)
    assert killed["pid"] not in set(client.run(os.getpid).values())
    check_exact(pocaduckdb.Query(store, connection=pc), vol, r)


def test_replace_blocks_replaces_other_workers_points(tmp_path, pc):
    if not supports_replace_blocks(tmp_path):
        pytest.skip("the extension has no COPY option REPLACE_BLOCKS yet")
    store = tmp_path / "s"
    pts = np.arange(30, dtype=np.int32).reshape(10, 3)
    with pocaduckdb.Ingestor(store, "a", connection=pc) as ing:
        ing.write_block(0, [1] * 5 + [2] * 5, pts)
        ing.write(3, 1, pts[:2])
    # The same block 0 again under another worker id, as a rerun on another process would.
    with pocaduckdb.Ingestor(store, "b", connection=pc, replace_blocks=True) as ing:
        ing.write_block(0, [1] * 6 + [4] * 4, pts)
    q = pocaduckdb.Query(store, connection=pc)
    q.consolidate()
    assert q.get_label_counts() == {1: 6, 3: 2, 4: 4}
