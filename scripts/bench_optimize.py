"""Quick `pocaduck_optimize` benchmark on a store like `bench_scale.py`'s s1m / s10m.

    python scripts/bench_optimize.py N_LABELS [EXTENSION] [--store DIR]

Builds (once, into DIR, default /tmp/pocaduck-bench-optimize/store_<N>) a store of N labels x 5
blocks, one point per (label, block), written by 4 worker processes at once and consolidated —
exactly as bench_scale.py builds s10m (N = 2,000,000) — then optimizes a fresh copy of it in a
new process and prints seconds, process CPU seconds, the optimize row and points/s.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ap = argparse.ArgumentParser()
ap.add_argument("labels", type=int)
ap.add_argument("extension", nargs="?", default=str(REPO / "build/pocaduck.duckdb_extension"))
ap.add_argument("--store")
a = ap.parse_args()
N, EXT, PY = a.labels, a.extension, sys.executable
BASE = Path(a.store or f"/tmp/pocaduck-bench-optimize/store_{N}")
RUN = Path(str(BASE) + "_run")
PRELUDE = f"""
import duckdb, time, json
def hwm():
    return [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
con.execute("LOAD '{EXT}'")
"""


def child(code: str) -> dict:
    r = subprocess.run([PY, "-c", PRELUDE + code], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-4000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


if not (BASE / "index").exists():
    shutil.rmtree(BASE, ignore_errors=True)
    procs = []
    for w in range(4):
        sql = (f"COPY (SELECT (l * 2654435761 % 1000000007)::UBIGINT AS label, b::BIGINT AS block, "
               f"(l % 1000)::INTEGER AS x, b::INTEGER AS y, (l // 1000)::INTEGER AS z "
               f"FROM (SELECT i // 5 AS l, i % 5 AS b FROM range({N * 5}) t(i)) WHERE (l + b) % 4 = {w}) "
               f"TO '{BASE}' (FORMAT pocaduck, WORKER 'w{w}')")
        procs.append(subprocess.Popen([PY, "-c", PRELUDE + f'con.execute("SET threads = 1")\ncon.execute("{sql}")']))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("ingest failed")
    child(f"""con.execute("FROM pocaduck_consolidate('{BASE}')").fetchall()\nprint('{{}}')""")
shutil.rmtree(RUN, ignore_errors=True)
subprocess.run(["cp", "-r", str(BASE), str(RUN)], check=True)
r = child(f"""
t = time.perf_counter(); cpu = time.process_time()
o = con.execute("SELECT labels_rewritten, points_rewritten, entries_before, entries_after, files_written FROM pocaduck_optimize('{RUN}')").fetchone()
print(json.dumps({{'s': time.perf_counter() - t, 'cpu_s': time.process_time() - cpu, 'row': o, 'peak_rss_mb': hwm() / 2**20}}))
""")
shutil.rmtree(RUN, ignore_errors=True)
print(json.dumps(r), f"{r['row'][1] / r['s'] / 1e6:.2f} M points/s")
