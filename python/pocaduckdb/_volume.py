"""Blockwise ingestion of a 3-D label volume, `ingest_volume`: in this process, or as tasks on a
Dask cluster (`client=`, a `dask.distributed.Client`).

Points: every voxel of every label but `background`, global (x, y, z) as INTEGER; block id
`bx + by * nbx + bz * nbx * nby` (`block_ids`). A block's voxels are found in one vectorised pass.

What the cluster path guarantees: the store ends up exact (every voxel once) whatever task fails,
is retried, or loses its worker process, because
- a task writes whole blocks: one `Ingestor.write_block` per block, and its commits (at its end,
  and between blocks when its buffer fills) never split a block;
- a rerun of a task replaces what any earlier run of it committed, by one of two rules
  (`worker_ids=`):
  - "process" (the default): one worker id per Dask worker process
    (`<worker_id>-<host>-<pid>-<random>`, never shared by two processes), every commit written
    with the COPY option `REPLACE_BLOCKS true`: consolidate keeps, of each block, only the points
    of the newest commit that wrote it, whatever worker wrote the older ones. A rerun on another
    process, a second run of the whole ingest (with any `blocks_per_task`), even two runs of one
    task at once: each block ends up with one commit's points. Tasks of one process share its
    worker id; their commits take turns (a process-wide lock), as pocaduck allows one writing
    statement per worker id at a time.
  - "task": for an extension without REPLACE_BLOCKS. The worker id is a function of the task's
    index (`<worker_id>-t<index>`), so a rerun, on any process, writes the same (label, block)s
    again under the same worker id, and pocaduck keeps a worker's latest commit of each
    (label, block). A whole ingest run again needs the same `block_shape` and
    `blocks_per_task`; and Dask must never run two copies of one task at once (it reruns a task
    once its worker is gone or the task failed; a worker cut off from the scheduler but still
    running would break that).
- results of finished tasks are collected and their futures released at once, so Dask does not
  rerun a finished task when a worker holding its result dies later (harmless, but work).

How the volume reaches the tasks: an in-memory numpy array is cut on the client and each task's
blocks are scattered to the cluster (so the volume crosses the network once and no worker holds
all of it); if a worker dies holding a task's scattered blocks, the client scatters them again and
resubmits the task. A numpy memmap backed by a file is reopened by path in each task (the workers
must see the same file: a local cluster or a shared file system). Anything else (zarr, tensorstore,
…) is pickled into each task as it is and sliced there: a zarr array on disk or in an object store
pickles as a reference to its store, so each task reads only its blocks.
"""
from __future__ import annotations

import itertools
import mmap
import os
import re
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import CancelledError
from typing import Iterable, Optional, Sequence

import numpy as np

from ._core import Ingestor, Query, Store, connect

WORKER_IDS = ("process", "task")
#: The Dask path's worker ids when `worker_ids` is not given ("process" needs an extension with
#: the COPY option REPLACE_BLOCKS; "task" works with any).
DEFAULT_WORKER_IDS = "process"
_WORKER_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def block_ids(shape: Sequence[int], block_shape: Sequence[int]) -> Iterable[tuple[int, tuple[slice, ...]]]:
    """(block id, slices) of every block of a volume of `shape` cut into `block_shape` blocks (the
    last ones clipped). Block id = bx + by * nbx + bz * nbx * nby for axes (x, y, z)."""
    nb = [-(-s // b) for s, b in zip(shape, block_shape)]
    for bz, by, bx in itertools.product(range(nb[2]), range(nb[1]), range(nb[0])):
        idx = (bx, by, bz)
        sl = tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(idx, block_shape, shape))
        yield bx + by * nb[0] + bz * nb[0] * nb[1], sl


def block_points(arr: np.ndarray, origin: Sequence[int], background: int = 0, *, block: object = None):
    """(labels, xyz) of every voxel of `arr` (one block, whose first voxel is at `origin`) that is
    not `background`: labels as in `arr`, xyz (N, 3) int32 global coordinates. None if empty."""
    x, y, z = np.nonzero(arr != background)
    if x.size == 0:
        return None
    labels = arr[x, y, z]
    if labels.dtype.kind == "i" and labels.min() < 0:
        raise ValueError(f"ingest_volume: block {block} holds a negative label ({int(labels.min())})")
    xyz = np.empty((x.size, 3), dtype=np.int32)
    xyz[:, 0], xyz[:, 1], xyz[:, 2] = x + origin[0], y + origin[1], z + origin[2]
    return labels, xyz


def _write_blocks(ing: Ingestor, blocks, arrays, background: int) -> tuple[int, int]:
    """Writes each (block id, slices) with its array; returns (non-empty blocks, points)."""
    n_blocks = n_points = 0
    for (bid, sl), arr in zip(blocks, arrays):
        found = block_points(np.asarray(arr), [s.start for s in sl], background, block=bid)
        if found is None:
            continue
        ing.write_block(bid, *found)
        n_blocks += 1
        n_points += len(found[1])
    return n_blocks, n_points


# --- the task side (runs in Dask worker processes) ---------------------------------------------

_local = threading.local()
_process_ids: dict = {}
_process_lock = threading.Lock()
_commit_lock = threading.Lock()


def _task_connection(extension: Optional[str]):
    """This thread's DuckDB connection with pocaduck loaded (one per worker thread, reused)."""
    con = getattr(_local, "con", None)
    if con is None or _local.extension != extension:
        con = connect(extension=extension)
        # DuckDB would print its own progress bar for each long COPY into the worker's log.
        con.execute("SET enable_progress_bar = false")
        _local.con, _local.extension = con, extension
    return con


def _process_worker_id(prefix: str) -> str:
    """This process's worker id for `prefix`: made once per process, never shared by two."""
    key = (os.getpid(), prefix)
    with _process_lock:
        if key not in _process_ids:
            host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
            _process_ids[key] = f"{prefix}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return _process_ids[key]


class _SharedIdIngestor(Ingestor):
    """An Ingestor whose worker id other threads of this process use too: commits take turns."""

    def flush(self) -> None:
        with _commit_lock:
            super().flush()


class _MemmapRef:
    """A file-backed numpy memmap, pickled as (file, offset, dtype, shape, strides) and reopened
    read-only where it is unpickled."""

    def __init__(self, a: np.memmap):
        base = np.frombuffer(a._mmap, dtype=np.uint8).ctypes.data
        start = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY
        self.filename, self.offset = a.filename, start + (a.ctypes.data - base)
        self.dtype, self.shape, self.strides = a.dtype, a.shape, a.strides

    @classmethod
    def of(cls, a) -> Optional["_MemmapRef"]:
        """The reference, if `a` is a memmap whose file the tasks can reopen (not copy-on-write)."""
        if not isinstance(a, np.memmap) or getattr(a, "_mmap", None) is None or not a.filename or a.mode == "c":
            return None
        try:
            return cls(a)
        except (TypeError, ValueError, BufferError):
            return None

    def open(self) -> np.ndarray:
        raw = np.memmap(self.filename, dtype=np.uint8, mode="r")
        return np.ndarray(self.shape, self.dtype, buffer=raw, offset=self.offset, strides=self.strides)


def _ingest_task(spec: dict, worker: Optional[str], blocks: list, data) -> dict:
    """One Dask task: reads its blocks (`data`: the volume, a `_MemmapRef`, or the blocks' arrays
    as a list), writes them as `worker` (None: this process's worker id) and commits. Returns
    what it wrote."""
    if isinstance(data, _MemmapRef):
        data = data.open()
    arrays = data if isinstance(data, list) else (data[sl] for _, sl in blocks)
    con = _task_connection(spec["extension"])
    if worker is None:
        worker, cls = _process_worker_id(spec["prefix"]), _SharedIdIngestor
    else:
        cls = Ingestor
    with cls(spec["store"], worker, connection=con, buffer_points=spec["buffer_points"],
             replace_blocks=spec["replace_blocks"]) as ing:
        n_blocks, n_points = _write_blocks(ing, blocks, arrays, spec["background"])
    return {"blocks": n_blocks, "points": n_points, "worker": worker, "pid": os.getpid()}


# --- the driver side ----------------------------------------------------------------------------

class _TextProgress:
    """A plain progress line on stderr, for when tqdm is not installed."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.shown = total, desc, 0, -1

    def update(self, n: int) -> None:
        self.n += n
        tenth = self.n * 10 // max(self.total, 1)
        if tenth != self.shown:
            self.shown = tenth
            print(f"{self.desc}: {self.n}/{self.total} blocks", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total: int, desc: str):
    """tqdm's bar if `enabled` and tqdm is installed, else a plain line per tenth, else nothing."""
    if not enabled:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _TextProgress(total, desc)
    return tqdm(total=total, desc=desc, unit="block")


def _scatter(client, key: str, value, tries: int = 5) -> dict:
    """client.scatter({key: value}), sent again when the worker it went to died meanwhile (the
    connection to it closes); the scheduler then picks a live one."""
    for n in range(tries):
        try:
            return client.scatter({key: value})
        except OSError:  # distributed's CommClosedError
            if n == tries - 1:
                raise
            time.sleep(0.5 * (n + 1))
    raise AssertionError("unreachable")


def _ingest_dask(volume, store: Store, shape, bs, client, *, prefix: str, worker_ids: str,
                 replace_blocks: bool, background: int, extension, buffer_points: int,
                 blocks_per_task: int, retries: int, progress: bool) -> dict:
    from distributed import as_completed

    blocks = list(block_ids(shape, bs))
    batches = [blocks[i:i + blocks_per_task] for i in range(0, len(blocks), blocks_per_task)]
    width = len(str(len(batches) - 1))
    spec = {
        "store": os.fspath(store), "extension": os.fspath(extension) if extension is not None else None,
        "prefix": prefix, "replace_blocks": replace_blocks,
        "background": background, "buffer_points": buffer_points,
    }
    ref = _MemmapRef.of(volume)
    scatter = ref is None and isinstance(volume, np.ndarray)
    source = ref if ref is not None else volume
    run = uuid.uuid4().hex[:12]
    # Keep a few tasks per thread in flight: enough to keep workers busy, while the scattered
    # blocks of an in-memory volume never all sit on the cluster at once.
    window = max(4, 3 * sum(client.nthreads().values()))
    active: dict = {}
    queue = as_completed()

    def launch(i: int, attempt: int) -> None:
        data, held = source, None
        if scatter:
            arrays = [np.ascontiguousarray(volume[sl]) for _, sl in batches[i]]
            held = _scatter(client, f"pocaduckdb-blocks-{run}-{i}-{attempt}", arrays)
            data = next(iter(held.values()))
        worker = f"{prefix}-t{i:0{width}d}" if worker_ids == "task" else None
        fut = client.submit(_ingest_task, spec, worker, batches[i], data, key=f"pocaduckdb-ingest-{run}-{i}-{attempt}",
                            retries=retries, pure=False)
        active[fut.key] = (i, attempt, fut, held)
        queue.add(fut)

    todo = list(range(len(batches)))[::-1]
    done: dict = {}
    resubmitted = 0
    bar = _progress_bar(progress, len(blocks), "ingest_volume")
    try:
        while todo and len(active) < window:
            launch(todo.pop(), 0)
        for fut in queue:
            i, attempt, _, held = active.pop(fut.key)
            result = None
            if fut.status == "finished":
                try:
                    result = fut.result()
                except CancelledError:
                    # Its worker died after the task finished and before the result reached us;
                    # Dask cannot rerun it (its scattered blocks died too): handled as lost below.
                    pass
            if result is not None:
                done[i] = result
                bar.update(len(batches[i]))
            elif fut.status in ("cancelled", "finished") and attempt < retries:
                # Its scattered blocks went with a dead worker: send them again. (Its commits, if
                # it made any, are replaced by the rerun's, see the module doc.)
                resubmitted += 1
                launch(i, attempt + 1)
            else:
                first, last = batches[i][0][0], batches[i][-1][0]
                err = fut.exception() if fut.status == "error" else RuntimeError(f"task {fut.status}: its worker died")
                raise RuntimeError(
                    f"ingest_volume: task {i} (blocks {first}..{last}) failed after {retries} retries: {err!r}; "
                    "what other tasks committed stays; run ingest_volume again with the same arguments to finish") from err
            del fut, held
            while todo and len(active) < window:
                launch(todo.pop(), 0)
    finally:
        bar.close()
        if active:
            client.cancel([a[2] for a in active.values()])
    return {"blocks": sum(r["blocks"] for r in done.values()), "points": sum(r["points"] for r in done.values()),
            "tasks": len(batches), "resubmitted": resubmitted, "workers": sorted({r["worker"] for r in done.values()})}


def ingest_volume(volume, store: Store, block_shape: Sequence[int] = (64, 64, 64), client=None, *,
                  worker_id: str = "volume", background: int = 0, connection=None, extension=None,
                  consolidate: bool = True, buffer_points: int = 1 << 22, worker_ids: Optional[str] = None,
                  replace_blocks: Optional[bool] = None, blocks_per_task: int = 8, retries: int = 3,
                  progress: Optional[bool] = None) -> dict:
    """Scans a 3-D label array (axes x, y, z; anything that slices to numpy: numpy, memmap, zarr,
    tensorstore) block by block and writes every voxel of every label but `background` as a point
    (global x, y, z as INTEGER), block id as `block_ids` numbers them, then consolidates (unless
    `consolidate=False`). Returns {'blocks' (non-empty ones), 'points', 'generation', 'tasks',
    'resubmitted' (tasks sent again because their scattered blocks were lost), 'workers' (ids)}.

    Without `client`: in this process, as worker `worker_id`, committing whenever `buffer_points`
    points are buffered and at the end. With `client` (a `dask.distributed.Client`): one task per
    `blocks_per_task` blocks on the cluster, each committing its blocks; worker ids per
    `worker_ids` ("process" or "task", see the module doc; `worker_id` is their prefix); failed
    tasks are retried `retries` times; the store stays exact whatever fails. `extension`: the
    extension file every process loads (default: its $POCADUCK_EXTENSION, else LOAD pocaduck).
    Workers reach an object store with their own environment (AWS_* …). `progress`: a progress bar
    (tqdm if installed; default: on with a client). `replace_blocks`: write with the COPY option
    REPLACE_BLOCKS (default: only for worker_ids="process", which requires it)."""
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3:
        raise ValueError(f"ingest_volume: argument 'volume' must be 3-D, got shape {shape}")
    bs = tuple(int(b) for b in block_shape)
    if len(bs) != 3 or min(bs) < 1:
        raise ValueError(f"ingest_volume: argument 'block_shape' must be 3 positive sizes, got {tuple(block_shape)}")
    if not isinstance(worker_id, str) or not _WORKER_ID.fullmatch(worker_id):
        raise ValueError(f"ingest_volume: argument 'worker_id' must be 1-128 characters of [A-Za-z0-9._-] "
                         f"not starting with '.', got {worker_id!r}")
    if worker_ids is None:
        worker_ids = DEFAULT_WORKER_IDS
    if worker_ids not in WORKER_IDS:
        raise ValueError(f"ingest_volume: argument 'worker_ids' must be one of {WORKER_IDS}, got {worker_ids!r}")
    if replace_blocks is None:
        replace_blocks = client is not None and worker_ids == "process"
    if client is not None and worker_ids == "process" and not replace_blocks:
        raise ValueError("ingest_volume: worker_ids='process' needs replace_blocks=True (a task rerun under "
                         "another process's worker id would otherwise duplicate its blocks)")
    if blocks_per_task < 1 or retries < 0:
        raise ValueError(f"ingest_volume: 'blocks_per_task' must be >= 1 and 'retries' >= 0, got {blocks_per_task}, {retries}")
    if progress is None:
        progress = client is not None
    con = connection if connection is not None else connect(extension=extension)
    if connection is None:
        con.execute("SET enable_progress_bar = false")  # ours (`progress`) is enough
    try:
        if client is None:
            blocks = list(block_ids(shape, bs))
            bar = _progress_bar(progress, len(blocks), "ingest_volume")
            with Ingestor(store, worker_id, connection=con, buffer_points=buffer_points,
                          replace_blocks=replace_blocks) as ing:
                n_blocks = n_points = 0
                for b in blocks:
                    nb, npts = _write_blocks(ing, [b], [volume[b[1]]], background)
                    n_blocks, n_points = n_blocks + nb, n_points + npts
                    bar.update(1)
            bar.close()
            out = {"blocks": n_blocks, "points": n_points, "tasks": 0, "resubmitted": 0, "workers": [worker_id]}
        else:
            out = _ingest_dask(volume, store, shape, bs, client, prefix=worker_id, worker_ids=worker_ids,
                               replace_blocks=replace_blocks, background=background, extension=extension,
                               buffer_points=buffer_points, blocks_per_task=blocks_per_task, retries=retries,
                               progress=progress)
        out["generation"] = Query(store, connection=con).consolidate()["generation"] if consolidate else None
        return out
    finally:
        if connection is None:
            con.close()
