"""pocaduckdb: a numpy-first Python API on top of the pocaduck DuckDB extension.

Import name `pocaduckdb` (PyPI's `pocaduck` is the original Python implementation).

- `connect()`: a DuckDB connection with the extension loaded.
- `Ingestor(store, worker_id)`: `write(label, block, points)` / `write_block(block, labels,
  points)` buffer numpy arrays and commit them through `COPY … (FORMAT pocaduck)` as Arrow, a
  buffer at a time; `commit()`, `close()`, and `with` (commits the rest on success, drops it on
  an exception).
- `Query(store)`: `get_points(label | labels, bbox=None)` → ndarray, `get_labels()`,
  `get_blocks(label)`, `consolidate()`.
- `ingest_volume(volume, store, block_shape, client=None)`: scans a 3-D label array blockwise and
  writes every label's voxels, in this process or as tasks on a Dask cluster (`client`).
"""
from ._core import Ingestor, Query, connect, find_extension
from ._volume import block_ids, block_points, ingest_volume

__all__ = ["connect", "find_extension", "Ingestor", "Query", "ingest_volume", "block_ids", "block_points"]
