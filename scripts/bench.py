#!/usr/bin/env python3
"""Benchmark: pocaduck against plain DuckDB on the same rows, in one run.

Workloads: real (the 512^3 segmentation, every voxel, 64^3 blocks), synth (>= 20 M points,
>= 100 k labels, heavy tail), synth_small (10x fewer points); s3 (synth_small's rows in a local
S3 server, moto, against the same on the local disk: ingest, latency, requests and bytes per
query). For each of the first three:
- ingest: pocaduck with 1 and 2 worker processes (COPY from staged Parquet), plain DuckDB
  `COPY (… ORDER BY label) TO (FORMAT parquet, zstd)` as one file and as 256 files; points/s and
  peak RSS of each ingest process;
- queries: N random small labels and the N largest: pocaduck_points vs read_parquet … WHERE label =
  (one file, 256 files) vs DuckDB's floor (SELECT * FROM range(n), same client, same fetch):
  median / p95 latency; then pocaduck_optimize (timed) and the same pocaduck queries again.
Prints a table with ratios and pass/fail against the targets of issue 3 and writes JSON.

dask (issue 13): the real segmentation, written to a zarr array on disk, through the Python
package's ingest_volume: in one process, and on a Dask LocalCluster of 1 and 2 worker processes
(points/s including the voxel extraction), against the CLI demo's route (every voxel staged as
Parquet, then 2 COPY processes; with and without the staging), and the time to consolidate.

scale (issue 9): stores of 1 M and 10 M index entries, a label over 3,000 parts, a 30 M-point
label, the real data's largest label, the 10 M-entry store in S3; see scripts/bench_scale.py.
The default runs real, synth, synth_small, s3 and ingest; `--workloads scale` runs scale alone (~25 minutes), `--workloads dask` dask.

ingest (issue 11): 9 M synthetic points from a DuckDB temp table, pocaduck's COPY against plain
DuckDB's sorted COPY in the same process, BIGINT and VARCHAR block ids, 5 runs each: throughput
ratio, peak RSS against DuckDB's COPY into a trivial sink, bytes per point; long sessions (9, 90
and 180 M generated rows: is memory flat?); see scripts/bench_ingest.py (~4 minutes).

Usage: bench.py [--quick] [--out build/bench.json] [--workloads real,synth,synth_small,s3,scale,dask,ingest]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import segdata  # noqa: E402

REPO = segdata.REPO
EXT = os.environ.get("POCADUCK_EXTENSION", str(REPO / "build/pocaduck.duckdb_extension"))
PY = sys.executable
WORK = Path(os.environ.get("POCADUCK_BENCH_DIR", REPO / "build/bench"))
BUFFER = 256 << 20


def synth(n_points: int, n_labels: int, seed: int = 0) -> pa.Table:
    """Connectomics-like: a few long neurons over many blocks plus many one- or two-block fragments."""
    rng = np.random.default_rng(seed)
    n_big = max(n_labels // 500, 5)
    big_share = 0.6
    nb = int(n_points * big_share)
    big_labels = rng.integers(1, 2**40, n_big, dtype=np.uint64)
    lab_big = big_labels[rng.integers(0, n_big, nb)]
    blk_big = rng.integers(0, 4096, nb)
    frag = rng.integers(2**41, 2**62, n_labels - n_big, dtype=np.uint64)
    nf = n_points - nb
    idx = rng.integers(0, frag.size, nf)
    lab_f = frag[idx]
    home = (frag.astype(np.int64) % 4096)[idx]
    blk_f = home + (rng.random(nf) < 0.2)
    labels = np.concatenate([lab_big, lab_f])
    blocks = np.concatenate([blk_big, blk_f]).astype(np.int64)
    base = np.stack([(blocks % 16) * 64, (blocks // 16 % 16) * 64, (blocks // 256) * 64], axis=1)
    xyz = (base + rng.integers(0, 64, (labels.size, 3))).astype(np.int32)
    # Rows arrive block by block, as a scan produces them.
    order = np.argsort(blocks, kind="stable")
    return pa.table({"label": labels[order], "block": blocks[order], "x": xyz[order, 0], "y": xyz[order, 1], "z": xyz[order, 2]})


def real() -> pa.Table:
    vol = segdata.load_volume()
    return pa.concat_tables([segdata.block_table(*b) for b in segdata.iter_blocks(vol, 64)])


def child(code: str) -> tuple[float, int]:
    """Runs `code` in a fresh Python process; returns (seconds, peak RSS bytes)."""
    t = time.perf_counter()
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{code}\n{r.stderr}")
    return dt, int(r.stdout.strip().splitlines()[-1])


PRELUDE = f"""
import duckdb
con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
con.execute("LOAD '{EXT}'")
con.execute("SET threads = 2")
"""
# Peak RSS of this process image: VmHWM (ru_maxrss would include the forking parent's peak).
RSS = "\nprint([int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"


def ingest_pocaduck(inputs: list[Path], store: Path) -> tuple[float, int]:
    """One process per input file (worker), all at once; wall time and max peak RSS."""
    procs = []
    t = time.perf_counter()
    for w, f in enumerate(inputs):
        code = PRELUDE + f"con.execute(\"COPY (FROM read_parquet('{f}')) TO '{store}' (FORMAT pocaduck, WORKER 'w{w}', BUFFER_SIZE {BUFFER})\")" + RSS
        procs.append(subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    rss = 0
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"pocaduck ingest failed: {err}")
        rss = max(rss, int(out.strip().splitlines()[-1]))
    return time.perf_counter() - t, rss


def timed(con, sql: str, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        con.execute(sql).fetchnumpy()
        out.append(time.perf_counter() - t)
    return out


def p95(v):
    return float(np.percentile(v, 95))


def run_workload(name: str, table: pa.Table, n_queries: int, reps: int) -> dict:
    import duckdb

    wd = WORK / name
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    n = table.num_rows
    labels, counts = np.unique(table.column("label").to_numpy(), return_counts=True)
    res = {"points": n, "labels": int(labels.size)}
    print(f"\n== {name}: {n:,} points, {labels.size:,} labels", flush=True)
    # Stage the rows as workers would hand them over: one Parquet file per worker (by block).
    blocks = table.column("block").to_numpy()
    staged1 = wd / "in_all.parquet"
    pq.write_table(table, staged1, compression="none")
    staged2 = []
    for w in range(2):
        p = wd / f"in_w{w}.parquet"
        pq.write_table(table.filter(pa.array(blocks % 2 == w)), p, compression="none")
        staged2.append(p)

    dt1, rss1 = ingest_pocaduck([staged1], wd / "store1")
    dt2, rss2 = ingest_pocaduck(staged2, wd / "store2")
    plain_one = PRELUDE + f"con.execute(\"COPY (FROM read_parquet('{staged1}') ORDER BY label) TO '{wd}/plain.parquet' (FORMAT parquet, COMPRESSION zstd)\")" + RSS
    dtp, rssp = child(plain_one)
    plain_many = PRELUDE + (
        f"con.execute(\"COPY (SELECT *, hash(block) % 256 AS part FROM read_parquet('{staged1}') ORDER BY label) "
        f"TO '{wd}/plain256' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (part))\")"
    ) + RSS
    dtm, rssm = child(plain_many)
    # The same rows with VARCHAR block ids (as a segmentation's blocks named by their corner):
    # pocaduck (1 worker) against plain DuckDB's sorted COPY.
    staged_v = wd / "in_all_varchar.parquet"
    pq.write_table(table.set_column(1, "block", pc.cast(table.column("block"), pa.string())), staged_v, compression="none")
    dt1v, _ = ingest_pocaduck([staged_v], wd / "store1v")
    dtpv, _ = child(PRELUDE + f"con.execute(\"COPY (FROM read_parquet('{staged_v}') ORDER BY label) TO '{wd}/plain_v.parquet' (FORMAT parquet, COMPRESSION zstd)\")" + RSS)
    staged_v.unlink()
    # DuckDB's own footprint for the same COPY pipeline into a trivial sink (CSV to /dev/null):
    # what ingest costs before pocaduck (COPY preserves insertion order, which buffers).
    _, rss_scan = child(PRELUDE + f"con.execute(\"COPY (FROM read_parquet('{staged1}')) TO '/dev/null' (FORMAT csv)\")" + RSS)
    res["ingest"] = {
        "pocaduck_1w_pts_s": n / dt1, "pocaduck_2w_pts_s": n / dt2,
        "plain_sorted_1file_pts_s": n / dtp, "plain_sorted_256files_pts_s": n / dtm,
        "pocaduck_1w_peak_rss": rss1, "pocaduck_2w_peak_rss": rss2, "plain_1file_peak_rss": rssp,
        "duckdb_copy_null_peak_rss": rss_scan,
        "pocaduck_1w_varchar_pts_s": n / dt1v, "plain_sorted_1file_varchar_pts_s": n / dtpv,
    }
    for k, v in res["ingest"].items():
        print(f"  ingest {k:32s} {v / 1e6 if 'pts' in k else v / 2**20:10.2f} {'M pts/s' if 'pts' in k else 'MiB'}")

    con = duckdb.connect(config={"allow_unsigned_extensions": True})
    con.execute(f"LOAD '{EXT}'")
    con.execute("SET threads = 2")
    store = wd / "store2"
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    rng = np.random.default_rng(1)
    small_pool = labels[counts <= np.percentile(counts, 50)]
    small = rng.choice(small_pool, min(n_queries, small_pool.size), replace=False)
    large = labels[np.argsort(counts)[-n_queries:]]
    cnt = dict(zip(labels.tolist(), counts.tolist()))
    # Warm: the index and part metadata are cached per process after the first query.
    con.execute(f"SELECT x, y, z FROM pocaduck_points('{store}', {int(small[0])})").fetchnumpy()
    con.execute(f"SELECT x, y, z FROM read_parquet('{wd}/plain.parquet') WHERE label = {int(small[0])}").fetchnumpy()
    res["queries"] = {}
    for kind, ls in (("small", small), ("large", large)):
        stats = {k: [] for k in ("pocaduck", "plain_1file", "plain_256files", "floor")}
        pts = 0
        for lbl in ls:
            lbl = int(lbl)
            pts += cnt[lbl]
            stats["pocaduck"] += timed(con, f"SELECT x, y, z FROM pocaduck_points('{store}', {lbl})", reps)
            stats["plain_1file"] += timed(con, f"SELECT x, y, z FROM read_parquet('{wd}/plain.parquet') WHERE label = {lbl}", reps)
            stats["plain_256files"] += timed(con, f"SELECT x, y, z FROM read_parquet('{wd}/plain256/*/*.parquet') WHERE label = {lbl}", max(1, reps // 3))
            stats["floor"] += timed(con, f"SELECT (range % 7)::INTEGER AS x, (range % 5)::INTEGER AS y, (range % 3)::INTEGER AS z FROM range({cnt[lbl]})", reps)
        res["queries"][kind] = (ls, stats, pts)
    # pocaduck_optimize, then the same queries again.
    t = time.perf_counter()
    opt = con.execute(f"SELECT labels_rewritten, points_rewritten FROM pocaduck_optimize('{store}')").fetchone()
    dt_opt = time.perf_counter() - t
    res["optimize"] = {"seconds": dt_opt, "labels_rewritten": opt[0], "points_rewritten": opt[1], "pts_s": opt[1] / dt_opt}
    print(f"  optimize: {opt[0]:,} labels, {opt[1]:,} points rewritten in {dt_opt:.2f} s", flush=True)
    con.execute(f"SELECT x, y, z FROM pocaduck_points('{store}', {int(small[0])})").fetchnumpy()
    for kind in ("small", "large"):
        ls, stats, pts = res["queries"][kind]
        stats["pocaduck_optimized"] = []
        pages = []
        for lbl in ls:
            lbl = int(lbl)
            stats["pocaduck_optimized"] += timed(con, f"SELECT x, y, z FROM pocaduck_points('{store}', {lbl})", reps)
            pages.append(con.execute(f"SELECT parts, page_bytes FROM pocaduck_explain('{store}', {lbl})").fetchone())
        q = {k: {"median_ms": statistics.median(v) * 1e3, "p95_ms": p95(v) * 1e3} for k, v in stats.items()}
        q["mean_points"] = pts / len(ls)
        q["pocaduck_pts_s"] = q["mean_points"] / (q["pocaduck"]["median_ms"] / 1e3)
        q["optimized_mean_parts"] = float(np.mean([p[0] for p in pages]))
        q["optimized_mean_page_bytes"] = float(np.mean([p[1] for p in pages]))
        res["queries"][kind] = q
        print(f"  {kind:5s} labels (mean {q['mean_points']:,.0f} points): " + ", ".join(f"{k} {v['median_ms']:.2f} ms (p95 {v['p95_ms']:.2f})" for k, v in q.items() if isinstance(v, dict)), flush=True)
        print(f"        after optimize: {q['optimized_mean_parts']:.2f} parts, {q['optimized_mean_page_bytes'] / 1024:,.1f} KiB of pages per query (mean)", flush=True)
    return res


def run_s3(table: pa.Table, n_queries: int, reps: int) -> dict:
    """Ingest and per-label queries against a local S3 server (moto_server): latency, requests
    and bytes per query (from pocaduck_explain), next to the same store on the local disk."""
    import duckdb

    sys.path.insert(0, str(REPO / "test" / "python"))
    from s3server import S3Server

    srv = S3Server()
    os.environ.update(srv.env)
    srv.bucket("pocaduck-bench")
    wd = WORK / "s3"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    staged = wd / "in.parquet"
    pq.write_table(table, staged, compression="none")
    n = table.num_rows
    labels, counts = np.unique(table.column("label").to_numpy(), return_counts=True)
    res = {"points": n}
    try:
        stores = {"local": str(wd / "store"), "s3": "s3://pocaduck-bench/store"}
        for kind, store in stores.items():
            dt, rss = ingest_pocaduck([staged], store)
            res[f"ingest_{kind}_pts_s"] = n / dt
            print(f"  {kind:5s} ingest: {n / dt / 1e6:.2f} M pts/s", flush=True)
        con = duckdb.connect(config={"allow_unsigned_extensions": True})
        con.execute(f"LOAD '{EXT}'")
        rng = np.random.default_rng(2)
        small = rng.choice(labels[counts <= np.percentile(counts, 50)], n_queries, replace=False)
        large = labels[np.argsort(counts)[-n_queries:]]
        for kind, store in stores.items():
            con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
            con.execute(f"SELECT x, y, z FROM pocaduck_points('{store}', {int(small[0])})").fetchnumpy()
            for size, ls in (("small", small), ("large", large)):
                lat, ex = [], []
                for lbl in ls:
                    lat += timed(con, f"SELECT x, y, z FROM pocaduck_points('{store}', {int(lbl)})", reps)
                    ex.append(con.execute(f"SELECT list_requests, get_requests, bytes_fetched, rows_returned FROM pocaduck_explain('{store}', {int(lbl)})").fetchone())
                ex = np.array(ex, dtype=float)
                q = {"median_ms": statistics.median(lat) * 1e3, "p95_ms": p95(lat) * 1e3,
                     "lists_per_query": ex[:, 0].mean(), "gets_per_query": ex[:, 1].mean(),
                     "bytes_per_query": ex[:, 2].mean(), "points_per_query": ex[:, 3].mean()}
                res[f"{kind}_{size}"] = q
                print(f"  {kind:5s} {size:5s} labels (mean {q['points_per_query']:,.0f} points): median {q['median_ms']:.2f} ms, p95 {q['p95_ms']:.2f} ms, "
                      f"{q['lists_per_query']:.1f} LIST + {q['gets_per_query']:.1f} GET, {q['bytes_per_query'] / 1024:,.1f} KiB per query", flush=True)
    finally:
        srv.stop()
    return res


def consolidate_seconds(store) -> float:
    import pocaduckdb

    con = pocaduckdb.connect(extension=EXT)
    t = time.perf_counter()
    pocaduckdb.Query(store, connection=con).consolidate()
    dt = time.perf_counter() - t
    con.close()
    return dt


def run_dask() -> dict:
    """The real segmentation through pocaduckdb.ingest_volume (every voxel of every label a point,
    64^3 blocks, from a zarr array on the local disk): in this process, and on LocalClusters of 1
    and 2 worker processes (1 thread each); the CLI demo's route beside it. Cluster start-up and
    consolidate are timed apart from ingest."""
    import pocaduckdb
    import pyarrow.parquet as pq
    import zarr
    from distributed import Client, LocalCluster

    wd = WORK / "dask"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    vol = segdata.load_volume()
    n = int(np.count_nonzero(vol))
    t = time.perf_counter()
    z = zarr.create_array(store=str(wd / "seg.zarr"), shape=vol.shape, chunks=(64, 64, 64), dtype=vol.dtype)
    z[:] = vol
    res = {"points": n, "zarr_write_s": time.perf_counter() - t}
    print(f"\n== dask: {n:,} points (every labelled voxel of the 512^3 segmentation), 64^3 blocks; "
          f"zarr written in {res['zarr_write_s']:.1f} s", flush=True)
    # The CLI demo's route: extract every block's voxels and stage them as Parquet, one file per
    # worker (blocks by id % 2), then one COPY process per file.
    t = time.perf_counter()
    staged = []
    for w in range(2):
        path = wd / f"in_w{w}.parquet"
        writer = None
        for blk in segdata.iter_blocks(vol, 64, w, 2):
            tb = segdata.block_table(*blk)
            writer = writer or pq.ParquetWriter(path, tb.schema, compression="none")
            writer.write_table(tb)
        writer.close()
        staged.append(path)
    stage_s = time.perf_counter() - t
    copy_s, _ = ingest_pocaduck(staged, wd / "demo_store")
    res["demo"] = {"stage_s": stage_s, "copy_s": copy_s, "consolidate_s": consolidate_seconds(wd / "demo_store"),
                   "copy_pts_s": n / copy_s, "pts_s_incl_extraction": n / (stage_s + copy_s)}
    del vol
    src = zarr.open_array(str(wd / "seg.zarr"), mode="r")
    t = time.perf_counter()
    r = pocaduckdb.ingest_volume(src, wd / "local_store", (64, 64, 64), extension=EXT, consolidate=False)
    dt = time.perf_counter() - t
    assert r["points"] == n, r
    res["local"] = {"ingest_s": dt, "pts_s": n / dt, "consolidate_s": consolidate_seconds(wd / "local_store")}
    for k in (1, 2):
        t = time.perf_counter()
        with LocalCluster(n_workers=k, processes=True, threads_per_worker=1, dashboard_address=None) as cl, Client(cl) as c:
            start_s = time.perf_counter() - t
            t = time.perf_counter()
            r = pocaduckdb.ingest_volume(src, wd / f"dask{k}_store", (64, 64, 64), c, extension=EXT,
                                         consolidate=False, progress=False)
            dt = time.perf_counter() - t
        assert r["points"] == n, r
        res[f"dask_{k}w"] = {"cluster_start_s": start_s, "ingest_s": dt, "pts_s": n / dt, "tasks": r["tasks"],
                             "consolidate_s": consolidate_seconds(wd / f"dask{k}_store")}
    for name, label in (("demo", "CLI demo route: COPY only (the demo's figure)"),
                        ("demo", "CLI demo route: incl. extraction + Parquet staging"),
                        ("local", "ingest_volume, no Dask (1 process)"),
                        ("dask_1w", "ingest_volume, Dask, 1 worker process"),
                        ("dask_2w", "ingest_volume, Dask, 2 worker processes")):
        v = res[name]
        rate = v["copy_pts_s"] if "COPY only" in label else v.get("pts_s", v.get("pts_s_incl_extraction"))
        print(f"  {label:52s} {rate / 1e6:6.2f} M pts/s   consolidate {v['consolidate_s']:.2f} s", flush=True)
    d1, d2 = res["dask_1w"]["pts_s"], res["dask_2w"]["pts_s"]
    res["ratios"] = {
        "dask_2w_over_1w": d2 / d1,
        "dask_2w_over_demo_incl_extraction": d2 / res["demo"]["pts_s_incl_extraction"],
        "dask_2w_over_demo_copy_only": d2 / res["demo"]["copy_pts_s"],
        "dask_1w_over_local": d1 / res["local"]["pts_s"],
    }
    for k, v in res["ratios"].items():
        print(f"  ratio {k:44s} {v:6.2f}")
    print(f"  (demo staging {stage_s:.1f} s + COPY {copy_s:.1f} s; cluster start {res['dask_1w']['cluster_start_s']:.1f} s "
          f"/ {res['dask_2w']['cluster_start_s']:.1f} s, not counted)", flush=True)
    return res


def targets(results: dict) -> list[tuple[str, float, str, bool]]:
    rows = []
    for name, r in results.items():
        if name in ("s3", "scale", "dask", "ingest"):
            continue
        ing = r["ingest"]
        ratio = ing["pocaduck_1w_pts_s"] / ing["plain_sorted_1file_pts_s"]
        rows.append((f"{name}: ingest 1 worker / plain sorted COPY", ratio, ">= 1.5 (stretch 2)", ratio >= 1.5))
        if "pocaduck_1w_varchar_pts_s" in ing:
            ratio = ing["pocaduck_1w_varchar_pts_s"] / ing["plain_sorted_1file_varchar_pts_s"]
            rows.append((f"{name}: ingest 1 worker / plain sorted COPY, VARCHAR block ids", ratio, ">= 1.5 (stretch 2)", ratio >= 1.5))
        rows.append((f"{name}: ingest 2 workers (M pts/s)", ing["pocaduck_2w_pts_s"] / 1e6, ">= 8", ing["pocaduck_2w_pts_s"] >= 8e6))
        rows.append((f"{name}: ingest peak RSS - buffer (MiB)", (ing["pocaduck_1w_peak_rss"] - BUFFER) / 2**20, "<= 64", ing["pocaduck_1w_peak_rss"] <= BUFFER + (64 << 20)))
        extra = ing["pocaduck_1w_peak_rss"] - ing["duckdb_copy_null_peak_rss"]
        rows.append((f"{name}: ingest peak RSS - DuckDB COPY-to-null RSS - buffer (MiB)", (extra - BUFFER) / 2**20, "<= 64", extra <= BUFFER + (64 << 20)))
        for kind, lim in (("small", 1.5), ("large", 2.0)):
            q = r["queries"][kind]
            for variant, tag in (("pocaduck", ""), ("pocaduck_optimized", " (optimized)")):
                f = q[variant]["median_ms"] / q["floor"]["median_ms"]
                rows.append((f"{name}: {kind} median / floor{tag}", f, f"<= {lim}", f <= lim))
                tail = q[variant]["p95_ms"] / q[variant]["median_ms"]
                rows.append((f"{name}: {kind} p95 / median{tag}", tail, "<= 2", tail <= 2))
                s1 = q["plain_1file"]["median_ms"] / q[variant]["median_ms"]
                rows.append((f"{name}: {kind} speedup vs plain 1 file{tag}", s1, ">= 3", s1 >= 3))
                s256 = q["plain_256files"]["median_ms"] / q[variant]["median_ms"]
                rows.append((f"{name}: {kind} speedup vs plain 256 files{tag}", s256, ">= 20", s256 >= 20))
    if "synth" in results and "synth_small" in results:
        for kind in ("small", "large"):
            for variant, tag in (("pocaduck", ""), ("pocaduck_optimized", " (optimized)")):
                g = results["synth"]["queries"][kind][variant]["median_ms"] / results["synth_small"]["queries"][kind][variant]["median_ms"]
                rows.append((f"growth 10x store: {kind} latency ratio{tag}", g, "<= 1.2", g <= 1.2))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller synthetic stores and fewer queries")
    ap.add_argument("--out", default=str(REPO / "build/bench.json"))
    ap.add_argument("--workloads", default="real,synth,synth_small,s3,ingest")
    a = ap.parse_args()
    scale = 10 if a.quick else 1
    nq, reps = (10, 3) if a.quick else (30, 5)
    results = {}
    for w in a.workloads.split(","):
        if w == "real":
            table = real()
        elif w == "synth":
            table = synth(20_000_000 // scale, 100_000 // scale)
        elif w == "synth_small":
            table = synth(2_000_000 // scale, 10_000 // scale)
        elif w == "scale":
            import bench_scale

            sys.path.insert(0, str(REPO / "test" / "python"))
            print("\n== scale: the index and the read path at 10^7 entries (issue 9)", flush=True)
            results[w] = bench_scale.run(quick=a.quick)
            continue
        elif w == "dask":
            results[w] = run_dask()
            continue
        elif w == "ingest":
            import bench_ingest

            results[w] = bench_ingest.run(synth, EXT, WORK / "ingest", 900_000 if a.quick else 9_000_000)
            continue
        elif w == "s3":
            print("\n== s3: synthetic 2 M points in a local S3 server (moto) vs the local disk", flush=True)
            results[w] = run_s3(synth(2_000_000 // scale, 10_000 // scale), nq, reps)
            continue
        else:
            raise SystemExit(f"unknown workload {w}")
        results[w] = run_workload(w, table, nq, reps)
        del table
    rows = targets(results)
    if "ingest" in results:
        import bench_ingest

        rows += bench_ingest.targets(results["ingest"], 256 << 20)
    if "scale" in results:
        import bench_scale

        rows += bench_scale.targets(results["scale"])
    print("\n| check | value | target | result |\n|---|---|---|---|")
    for name, v, t, ok in rows:
        print(f"| {name} | {v:.2f} | {t} | {'PASS' if ok else 'FAIL'} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"results": results, "checks": [{"check": n, "value": v, "target": t, "pass": ok} for n, v, t, ok in rows]}, indent=2))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
