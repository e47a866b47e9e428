"""The real segmentation in ../shared/data, cut into blocks the way a worker scans it.

Points: every voxel of a label inside a block (global voxel coordinates x, y, z as int32).
Blocks: 64^3 by default, id = bx + by * nb + bz * nb * nb (nb blocks per axis), as BIGINT.
Worker w of n owns the blocks whose id % n == w.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FILE = "pinky40_512.npy.ckl.gz"
# ../shared/data beside the checkout, or the workplace's shared folder for clones made elsewhere.
CANDIDATES = [REPO.parent / "shared" / "data" / FILE, Path("/work/shared/data") / FILE]


def data_path() -> Path:
    """Path of the segmentation (env POCADUCK_SEGMENTATION overrides)."""
    if "POCADUCK_SEGMENTATION" in os.environ:
        return Path(os.environ["POCADUCK_SEGMENTATION"])
    return next((p for p in CANDIDATES if p.exists()), CANDIDATES[0])


def load_volume(path: Path | None = None) -> np.ndarray:
    """Decodes the crackle-encoded segmentation: uint32, shape (512, 512, 512), axes x, y, z."""
    import crackle

    p = path or data_path()
    if not p.exists():
        raise SystemExit(f"segmentation not found at {p} (set POCADUCK_SEGMENTATION)")
    return crackle.load(str(p))


def iter_blocks(vol: np.ndarray, size: int = 64, worker: int = 0, n_workers: int = 1):
    """Yields (block_id, labels uint64, x, y, z int32) for each non-empty block of `worker`."""
    nb = [s // size for s in vol.shape]
    for bz in range(nb[2]):
        for by in range(nb[1]):
            for bx in range(nb[0]):
                bid = bx + by * nb[0] + bz * nb[0] * nb[1]
                if bid % n_workers != worker:
                    continue
                sub = vol[bx * size:(bx + 1) * size, by * size:(by + 1) * size, bz * size:(bz + 1) * size]
                ix, iy, iz = np.nonzero(sub)
                if ix.size == 0:
                    continue
                labels = sub[ix, iy, iz].astype(np.uint64)
                yield (
                    bid,
                    labels,
                    (ix + bx * size).astype(np.int32),
                    (iy + by * size).astype(np.int32),
                    (iz + bz * size).astype(np.int32),
                )


def block_table(bid, labels, x, y, z):
    """One block's rows as a pyarrow Table with columns label, block, x, y, z."""
    import pyarrow as pa

    return pa.table(
        {
            "label": labels,
            "block": np.full(labels.size, bid, dtype=np.int64),
            "x": x,
            "y": y,
            "z": z,
        }
    )


def point_keys(x, y, z) -> np.ndarray:
    """Packs coordinates < 2^21 into one int64 per point, for multiset comparisons."""
    return (np.asarray(x, np.int64) << 42) | (np.asarray(y, np.int64) << 21) | np.asarray(z, np.int64)
