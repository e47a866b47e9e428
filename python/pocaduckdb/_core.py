"""Connections and the ingestion and query objects (blockwise volume ingestion is `_volume`).
Everything goes through pocaduck's SQL (COPY … (FORMAT pocaduck), pocaduck_labels,
pocaduck_consolidate, pocaduck_points, …); data crosses as Arrow (writes) and numpy (reads)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import duckdb
import numpy as np
import pyarrow as pa

Store = Union[str, os.PathLike]


def _q(s: str) -> str:
    """A SQL string literal."""
    return "'" + str(s).replace("'", "''") + "'"


def find_extension(path: Optional[Store] = None) -> Optional[Path]:
    """The extension file to load: `path`, else `$POCADUCK_EXTENSION`; None means "LOAD pocaduck"
    by name (scripts/build.sh installs it into DuckDB's extension directory)."""
    for p, what in ((path, "extension"), (os.environ.get("POCADUCK_EXTENSION"), "$POCADUCK_EXTENSION")):
        if p:
            p = Path(p)
            if not p.is_file():
                raise FileNotFoundError(f"pocaduckdb.connect: {what} '{p}' is not a file")
            return p
    return None


def connect(database: str = ":memory:", extension: Optional[Store] = None, *, read_only: bool = False,
            config: Optional[dict] = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with pocaduck loaded (unsigned extensions allowed)."""
    cfg = {"allow_unsigned_extensions": True, **(config or {})}
    con = duckdb.connect(database, read_only=read_only, config=cfg)
    ext = find_extension(extension)
    con.execute(f"LOAD {_q(ext)}" if ext else "LOAD pocaduck")
    return con


def _label_array(labels, n: int, fn: str) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim == 0:
        a = np.full(n, a)
    if a.shape != (n,):
        raise ValueError(f"{fn}: argument 'labels' must have one label per point ({n}), got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"{fn}: argument 'labels' must be integers, got {a.dtype}")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError(f"{fn}: argument 'labels' must not be negative, got {int(a.min())}")
    return a.astype(np.uint64, copy=False)


class Ingestor:
    """Writes points as one worker of a store. Rows are buffered (`buffer_points`) and handed to
    `COPY … (FORMAT pocaduck, WORKER …)` as an Arrow table; each such flush is a commit (durable,
    visible after the next consolidate), so a buffer's worth of rows is the most an interruption
    loses. Writing the same (label, block)s again as the same worker replaces them (reruns are
    idempotent). With `replace_blocks=True` every commit is written with the COPY option
    `REPLACE_BLOCKS true`: it replaces every earlier point of the blocks it writes, whatever their
    label or worker (so a rerun under another worker id does not duplicate either); write all of a
    block before a commit then (the ingestor never splits one `write_block` call over two
    commits). As a context manager it commits what is buffered when the block ends normally, and
    drops it if the block raises (earlier flushes stay committed, as after a crash)."""

    def __init__(self, store: Store, worker_id: str, *, attributes: Sequence[str] = (),
                 connection: Optional[duckdb.DuckDBPyConnection] = None, buffer_points: int = 1 << 22,
                 target_file_size: Optional[Union[int, str]] = None, replace_blocks: bool = False):
        if not isinstance(worker_id, str) or not worker_id:
            raise ValueError(f"Ingestor: argument 'worker_id' must be a non-empty string, got {worker_id!r}")
        if buffer_points < 1:
            raise ValueError(f"Ingestor: argument 'buffer_points' must be at least 1, got {buffer_points}")
        self.store, self.worker = os.fspath(store), worker_id
        self.attributes = list(attributes)
        self.buffer_points = int(buffer_points)
        self._con = connection if connection is not None else connect()
        self._own = connection is None
        self._opts = [f"WORKER {_q(worker_id)}"]
        if self.attributes:
            self._opts.append(f"ATTRIBUTES {_q(','.join(self.attributes))}")
        if target_file_size is not None:
            self._opts.append(f"TARGET_FILE_SIZE {_q(target_file_size)}")
        if replace_blocks:
            self._opts.append("REPLACE_BLOCKS true")
        self._chunks: list = []
        self._n = 0
        self._block_kind: Optional[str] = None
        self._closed = False
        self.points_written = 0

    def _points(self, points, fn: str) -> np.ndarray:
        a = np.asarray(points)
        k = 3 + len(self.attributes)
        if a.ndim != 2 or a.shape[1] != k:
            names = ", ".join(["x", "y", "z", *self.attributes])
            raise ValueError(f"{fn}: argument 'points' must be an array of shape (N, {k}) ({names}), got shape {a.shape}")
        if a.dtype.kind not in "iuf":
            raise TypeError(f"{fn}: argument 'points' must be numeric, got {a.dtype}")
        return a

    def _block(self, block, n: int, fn: str) -> np.ndarray:
        if isinstance(block, (bool, np.bool_)) or not isinstance(block, (int, np.integer, str)):
            raise TypeError(f"{fn}: argument 'block' must be an integer or a string, got {block!r}")
        kind = "str" if isinstance(block, str) else "int"
        if self._block_kind not in (None, kind):
            raise TypeError(f"{fn}: argument 'block' must be of one type per ingestor ({self._block_kind}), got {block!r}")
        self._block_kind = kind
        return np.full(n, block, dtype=object if kind == "str" else np.int64)

    def write(self, label: int, block: Union[int, str], points) -> None:
        """Adds the points (N × (3 + attributes): x, y, z, attributes…) of one label in one block."""
        pts = self._points(points, "Ingestor.write")
        n = len(pts)
        self._add(_label_array(label, n, "Ingestor.write"), self._block(block, n, "Ingestor.write"), pts)

    def write_block(self, block: Union[int, str], labels, points) -> None:
        """Adds the points of many labels in one block: `labels[i]` is the label of `points[i]`."""
        pts = self._points(points, "Ingestor.write_block")
        n = len(pts)
        self._add(_label_array(labels, n, "Ingestor.write_block"), self._block(block, n, "Ingestor.write_block"), pts)

    def _add(self, labels: np.ndarray, blocks: np.ndarray, pts: np.ndarray) -> None:
        if self._closed:
            raise RuntimeError(f"Ingestor({self.store!r}, {self.worker!r}) is closed")
        if len(pts) == 0:
            return
        self._chunks.append((labels, blocks, pts))
        self._n += len(pts)
        if self._n >= self.buffer_points:
            self.flush()

    def flush(self) -> None:
        """Writes and commits the buffered rows."""
        if not self._chunks:
            return
        labels = np.concatenate([c[0] for c in self._chunks])
        blocks = np.concatenate([c[1] for c in self._chunks])
        pts = np.concatenate([c[2] for c in self._chunks])
        cols = {"label": pa.array(labels, pa.uint64()),
                "block": pa.array(blocks, pa.string() if self._block_kind == "str" else pa.int64())}
        for i, name in enumerate(["x", "y", "z", *self.attributes]):
            cols[name] = pa.array(np.ascontiguousarray(pts[:, i]))
        rows = pa.table(cols)  # noqa: F841 - scanned by name below
        view = f"__pocaduckdb_rows_{uuid.uuid4().hex}"
        self._con.register(view, rows)
        try:
            self._con.execute(f"COPY (FROM {view}) TO {_q(self.store)} (FORMAT pocaduck, {', '.join(self._opts)})")
        finally:
            self._con.unregister(view)
        self.points_written += len(pts)
        self._chunks.clear()
        self._n = 0

    def commit(self) -> int:
        """Writes and commits what is buffered; returns the points committed by this ingestor so far."""
        self.flush()
        return self.points_written

    def close(self) -> int:
        """Commits and closes (a closed ingestor refuses writes); returns the points committed."""
        if self._closed:
            return self.points_written
        try:
            return self.commit()
        finally:
            self._closed = True
            if self._own:
                self._con.close()

    def __enter__(self) -> "Ingestor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._chunks.clear()
            self._closed = True
            if self._own:
                self._con.close()


class Query:
    """Reads a store: every point of a label (as numpy), its labels and blocks."""

    def __init__(self, store: Store, *, connection: Optional[duckdb.DuckDBPyConnection] = None):
        self.store = os.fspath(store)
        self._con = connection if connection is not None else connect()

    def _columns(self) -> list[str]:
        d = self._con.execute(f"DESCRIBE FROM pocaduck_points({_q(self.store)}, 0::UBIGINT)").fetchall()
        return [r[0] for r in d if r[0] != "block"]

    def get_points(self, label: Union[int, Iterable[int]], bbox: Optional[Sequence[float]] = None, *,
                   generation: Optional[int] = None) -> np.ndarray:
        """Every point of `label` (or of all of `labels`, concatenated) as an (N, 3 + attributes)
        array: x, y, z, attributes (one dtype: numpy's common type of the columns). `bbox`:
        [min_x, min_y, min_z, max_x, max_y, max_z], bounds inclusive."""
        cols = self._columns()
        if isinstance(label, (int, np.integer)):
            lab = f"{int(label)}::UBIGINT"
        else:
            lab = "[" + ", ".join(str(int(v)) for v in label) + "]::UBIGINT[]"
        extra = ""
        if bbox is not None:
            b = [float(v) for v in bbox]
            if len(b) != 6:
                raise ValueError(f"Query.get_points: argument 'bbox' must have 6 numbers, got {len(b)}")
            extra += f", bbox := {b}"
        if generation is not None:
            extra += f", generation := {int(generation)}"
        sel = ", ".join(f'"{c}"' for c in cols)
        r = self._con.execute(f"SELECT {sel} FROM pocaduck_points({_q(self.store)}, {lab}{extra})").fetchnumpy()
        arrays = [np.asarray(r[c]) for c in cols]
        dtype = np.result_type(*arrays) if arrays else np.int32
        out = np.empty((len(arrays[0]) if arrays else 0, len(cols)), dtype=dtype)
        for i, a in enumerate(arrays):
            out[:, i] = a
        return out

    def get_labels(self) -> np.ndarray:
        """Every label of the store (uint64, ascending)."""
        r = self._con.execute(f"SELECT label FROM pocaduck_labels({_q(self.store)}) ORDER BY label").fetchnumpy()
        return np.asarray(r["label"], dtype=np.uint64)

    def get_label_counts(self) -> dict:
        """{label: point count} for every label."""
        return dict(self._con.execute(f"SELECT label, point_count FROM pocaduck_labels({_q(self.store)})").fetchall())

    def get_blocks(self, label: int) -> list:
        """The blocks holding `label`, ascending."""
        return [r[0] for r in self._con.execute(
            f"SELECT block FROM pocaduck_blocks({_q(self.store)}, {int(label)}::UBIGINT) ORDER BY block").fetchall()]

    def consolidate(self) -> dict:
        """Merges the workers' new commits into the unified index (pocaduck_consolidate)."""
        cur = self._con.execute(f"FROM pocaduck_consolidate({_q(self.store)})")
        return dict(zip([d[0] for d in cur.description], cur.fetchone()))
