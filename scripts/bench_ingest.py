"""The `ingest` workload of scripts/bench.py (issue 11): pocaduck's COPY against plain DuckDB's
sorted COPY of the same rows, from a DuckDB temp table, in one process, `SET threads = 2`.

Rows: bench.synth(9 M points, 100 k labels), with BIGINT block ids and again with VARCHAR ones.
Each repetition is a fresh process that loads the rows into a temp table, then runs, each timed
and with its peak RSS above the RSS before it (VmHWM reset through /proc/self/clear_refs):
- `COPY (FROM t) TO '<dir>/store' (FORMAT pocaduck, WORKER 'w0')`
- `COPY (FROM t ORDER BY label) TO '<dir>/plain.parquet' (FORMAT parquet, COMPRESSION zstd)`
- `COPY (FROM t) TO '/dev/null' (FORMAT csv)`: DuckDB's own pipeline into a trivial sink.
Also pocaduck's peak RSS on 10x fewer rows (is its memory flat as the input grows?), bytes per
point of pocaduck's parts and commit segment (and its index entries) and of the plain file.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

CHILD = r"""
import duckdb, json, os, sys, time
ext, kind, staged, d, what = sys.argv[1:6]
def hwm():
    return [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
def rss():
    return [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmRSS')][0]
con = duckdb.connect(config={'allow_unsigned_extensions': True})
con.execute(f"LOAD '{ext}'")
con.execute("SET threads = 2")
sel = "label, block::VARCHAR AS block, x, y, z" if kind == "varchar" else "*"
con.execute(f"CREATE TEMP TABLE t AS SELECT {sel} FROM read_parquet('{staged}')")
n = con.execute("SELECT count(*) FROM t").fetchone()[0]
sql = {
    "pocaduck": f"COPY (FROM t) TO '{d}/store' (FORMAT pocaduck, WORKER 'w0')",
    "plain": f"COPY (FROM t ORDER BY label) TO '{d}/plain.parquet' (FORMAT parquet, COMPRESSION zstd)",
    "null": "COPY (FROM t) TO '/dev/null' (FORMAT csv)",
}
out = {"points": n}
for w in what.split(","):
    open('/proc/self/clear_refs', 'w').write('5')
    before = rss()
    t = time.perf_counter()
    con.execute(sql[w])
    out[w] = {"s": time.perf_counter() - t, "rss_extra": hwm() - before}
print(json.dumps(out))
"""


def _child(ext: str, kind: str, staged: Path, d: Path, what: str) -> dict:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    r = subprocess.run([sys.executable, "-c", CHILD, ext, kind, str(staged), str(d), what], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"ingest benchmark child failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def run(synth, ext: str, work: Path, n_points: int = 9_000_000, reps: int = 3) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    staged = work / "ingest_rows.parquet"
    small = work / "ingest_rows_small.parquet"
    table = synth(n_points, 100_000)
    pq.write_table(table, staged, compression="none")
    pq.write_table(table.slice(0, n_points // 10), small, compression="none")
    del table
    res = {"points": n_points}
    print(f"\n== ingest: {n_points:,} synthetic points from a DuckDB temp table, threads = 2, {reps} runs each (issue 11)", flush=True)
    d = Path(tempfile.mkdtemp(dir=work))
    for kind in ("bigint", "varchar"):
        runs = []
        for _ in range(reps):
            r = _child(ext, kind, staged, d, "pocaduck,plain,null")
            r["part_bytes"] = _bytes(d / "store" / "workers" / "w0" / "parts")
            r["commit_bytes"] = _bytes(d / "store" / "workers" / "w0" / "commits")
            r["entries"] = pq.ParquetFile(next((d / "store" / "workers" / "w0" / "commits").iterdir())).metadata.num_rows
            r["plain_bytes"] = (d / "plain.parquet").stat().st_size
            runs.append(r)
        tenth = _child(ext, kind, small, d, "pocaduck")
        med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
        k = {
            "pocaduck_pts_s": med(lambda r: r["points"] / r["pocaduck"]["s"]),
            "plain_pts_s": med(lambda r: r["points"] / r["plain"]["s"]),
            "ratio": med(lambda r: r["plain"]["s"] / r["pocaduck"]["s"]),
            "pocaduck_rss_extra": med(lambda r: r["pocaduck"]["rss_extra"]),
            "null_rss_extra": med(lambda r: r["null"]["rss_extra"]),
            "plain_rss_extra": med(lambda r: r["plain"]["rss_extra"]),
            "pocaduck_rss_extra_tenth": tenth["pocaduck"]["rss_extra"],
            "pocaduck_bytes_per_point": runs[0]["part_bytes"] / runs[0]["points"],
            "commit_bytes_per_point": runs[0]["commit_bytes"] / runs[0]["points"],
            "entries": runs[0]["entries"],
            "plain_bytes_per_point": runs[0]["plain_bytes"] / runs[0]["points"],
            "runs": runs,
        }
        res[kind] = k
        per_run = ", ".join(f"{r['plain']['s'] / r['pocaduck']['s']:.2f}" for r in runs)
        print(f"  {kind:7s} block ids: pocaduck {k['pocaduck_pts_s'] / 1e6:.2f} M pts/s, plain sorted COPY {k['plain_pts_s'] / 1e6:.2f} "
              f"(ratio {k['ratio']:.2f}; per run: {per_run}); "
              f"peak RSS above the table: pocaduck {k['pocaduck_rss_extra'] / 2**20:.0f} MiB ({k['pocaduck_rss_extra_tenth'] / 2**20:.0f} on 10x fewer rows), "
              f"COPY to null {k['null_rss_extra'] / 2**20:.0f}, plain {k['plain_rss_extra'] / 2**20:.0f}; "
              f"bytes/point: pocaduck parts {k['pocaduck_bytes_per_point']:.2f} + commit segment {k['commit_bytes_per_point']:.2f} "
              f"({k['entries']:,} index entries), plain {k['plain_bytes_per_point']:.2f}", flush=True)
    shutil.rmtree(d, ignore_errors=True)
    return res


def targets(r: dict, buffer: int) -> list[tuple[str, float, str, bool]]:
    rows = []
    for kind in ("bigint", "varchar"):
        k = r[kind]
        rows.append((f"ingest {kind} blocks: pocaduck COPY / plain sorted COPY (throughput)", k["ratio"], ">= 1.5 (stretch 2)", k["ratio"] >= 1.5))
        extra = k["pocaduck_rss_extra"] - k["null_rss_extra"]
        rows.append((f"ingest {kind} blocks: peak RSS - COPY-to-null RSS - BUFFER_SIZE (MiB)", (extra - buffer) / 2**20, "<= 64", extra <= buffer + (64 << 20)))
        g = k["pocaduck_rss_extra"] / max(k["pocaduck_rss_extra_tenth"], 1)
        rows.append((f"ingest {kind} blocks: peak RSS growth, 10x the rows (info: bounded by BUFFER_SIZE)", g, "(info)", True))
        b = k["pocaduck_bytes_per_point"] / k["plain_bytes_per_point"]
        rows.append((f"ingest {kind} blocks: part bytes/point / plain zstd Parquet bytes/point (info)", b, "(info)", True))
    return rows
