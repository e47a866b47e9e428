#!/usr/bin/env python3
"""Demo on the real segmentation, driven through the DuckDB CLI.

1. Cuts the 512^3 segmentation into 64^3 blocks; worker w of 2 gets the blocks with id % 2 == w,
   and its rows (label, block, x, y, z: every voxel of every label in each block) are staged as a
   Parquet file, as a worker's scan would produce them.
2. Two DuckDB CLI processes ingest at the same time, one per worker:
   COPY (FROM '<staged>') TO '<store>' (FORMAT pocaduck, WORKER 'w<k>').
3. One CLI consolidates; another queries a named label (the largest, and a small one) with
   `.timer on`, printing counts and timings.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import segdata  # noqa: E402

REPO = segdata.REPO
CLI = os.environ.get("DUCKDB_CLI", str(REPO / ".venv/py15/bin/duckdb"))
WORK = Path(os.environ.get("POCADUCK_DEMO_DIR", REPO / "build/demo"))


def cli(script: str) -> tuple[subprocess.Popen, str]:
    """Starts a DuckDB CLI process that loads pocaduck by name and reads `script` on stdin."""
    p = subprocess.Popen(
        [CLI, "-unsigned", "-bail"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return p, "LOAD pocaduck;\n" + script + "\n"


def wait(p: tuple[subprocess.Popen, str]) -> str:
    proc, script = p
    out, _ = proc.communicate(script)
    if proc.returncode != 0 or "Error" in out:
        raise SystemExit(f"duckdb CLI failed:\n{script}\n{out}")
    return out


def run(script: str) -> str:
    return wait(cli(script))


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "in").mkdir(parents=True)
    store = WORK / "store"
    t0 = time.perf_counter()
    vol = segdata.load_volume()
    labels, counts = np.unique(vol[vol != 0], return_counts=True)
    print(f"segmentation: {vol.shape}, {labels.size} labels, {counts.sum():,} labelled voxels ({time.perf_counter() - t0:.1f} s to load)")
    staged = []
    for w in range(2):
        path = WORK / "in" / f"w{w}.parquet"
        writer = None
        n = 0
        for blk in segdata.iter_blocks(vol, 64, w, 2):
            t = segdata.block_table(*blk)
            writer = writer or pq.ParquetWriter(path, t.schema, compression="none")
            writer.write_table(t)
            n += t.num_rows
        writer.close()
        staged.append((path, n))
        print(f"worker w{w}: staged {n:,} points in {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    del vol

    print("\n== ingest: two DuckDB CLI processes, one per worker ==")
    t = time.perf_counter()
    procs = [cli(f"COPY (FROM '{p}') TO '{store}' (FORMAT pocaduck, WORKER 'w{w}');") for w, (p, _) in enumerate(staged)]
    for p in procs:
        p[0].stdin.write(p[1])
        p[0].stdin.close()
    for p in procs:
        out = p[0].stdout.read()
        if p[0].wait() != 0 or "Error" in out:
            raise SystemExit(f"ingest failed:\n{out}")
    dt = time.perf_counter() - t
    total = sum(n for _, n in staged)
    print(f"ingested {total:,} points in {dt:.2f} s: {total / dt / 1e6:.2f} M points/s (2 processes, wall clock)")

    print("\n== consolidate ==")
    print(run(f".timer on\nFROM pocaduck_consolidate('{store}');"))

    big = int(labels[np.argmax(counts)])
    small = int(labels[np.argsort(counts)[len(counts) // 2]])
    print(f"== query: largest label {big} ({counts.max():,} voxels) and a median label {small} ==")
    print(
        run(
            f".timer on\n"
            f"SELECT sum(point_count) AS points, count(*) AS blocks FROM pocaduck_blocks('{store}', {big});\n"
            f"SELECT count(*) AS points, min(x), max(x), min(z), max(z) FROM pocaduck_points('{store}', {big});\n"
            f"SELECT count(*) AS points, min(x), max(x), min(z), max(z) FROM pocaduck_points('{store}', {small});\n"
            f"SELECT count(*) AS points FROM pocaduck_points('{store}', {small});"
        )
    )
    print(f"store: {store}")


if __name__ == "__main__":
    main()
