#!/usr/bin/env python3
"""Soak test: concurrent writers (some killed with SIGKILL and rerun), readers and consolidates on
one store for a bounded time, then a full verification. Run by hand, not in CI:

    .venv/py15/bin/python scripts/soak.py [--seconds 60] [--writers 3] [--readers 2] [--seed N]

Jobs (worker ids j0, j1, …) each write STATEMENTS commit units of BPS blocks of ROWS points, in one
of three ways: a committing COPY per unit, COPY … COMMIT false per unit and one pocaduck_commit at
the end, or pocaduck_write per (label, block) and pocaduck_commit per unit. A share of the runs is
killed at a random moment and the job is rerun later with the same worker id and the same input.
Consolidates run periodically in their own processes (sometimes two at once, sometimes killed).
Readers query random labels all along and check every answer against the formulas: each block is
entirely present or absent, nothing twice, nothing else.

At --seconds everything still running is killed (one more crash), the store is consolidated and
checked: every commit unit is whole or absent, every unit a run reported committed (and every unit
of a job that finished) is present, and the content equals the numpy-computed rows of the units
present: per-label counts (pocaduck_labels), per (label, block) count and sums of the coordinates,
and the exact rows of a sample of labels. Prints the figures and exits non-zero if anything is
lost, duplicated, partial or wrong, or any process failed unexpectedly.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
L = 61  # labels 1..61; every block holds every label
INV7 = pow(7, -1, L)
BPS = 3  # blocks per commit unit
STATEMENTS = 6  # commit units per job
ROWS = 1000  # points per block
MODES = ("copy", "copy-batch", "write")
COPY_OPTS = "BUFFER_SIZE '1MiB', TARGET_FILE_SIZE '64KiB'"
CONFLICT = re.compile(
    r"pocaduck_consolidate: store '.*': another consolidate (?:or optimize )?published generation \d+ "
    r"first; nothing was changed"
)


# --- the data: block b (job*100 + s*BPS + k) holds i in range(ROWS) with
#     label = (i*7 + b*3) % L + 1, x = i, y = b % 1000, z = (i*13 + b) % 101.
def blocks_of(job, s):
    return [job * 100 + s * BPS + k for k in range(BPS)]


def copy_sql(store, job, s, commit=True):
    b0 = blocks_of(job, s)[0]
    return (
        f"COPY (SELECT ((i * 7 + b * 3) % {L} + 1)::UBIGINT, b, i::INTEGER, (b % 1000)::INTEGER, "
        f"((i * 13 + b) % 101)::INTEGER FROM range({b0}, {b0 + BPS}) bb(b), range({ROWS}) t(i)) "
        f"TO '{store}' (FORMAT pocaduck, WORKER 'j{job}', {COPY_OPTS}{'' if commit else ', COMMIT false'})"
    )


def first_i(label, block):
    """Smallest i with (i*7 + block*3) % L + 1 == label; the others are i + k*L."""
    return ((label - 1 - 3 * block) * INV7) % L


def write_sql(store, job, label, block):
    i0 = first_i(label, block)
    return (
        f"FROM pocaduck_write('{store}', worker := 'j{job}', label := {label}, block := {block}, "
        f"points := list_transform(range({i0}, {ROWS}, {L}), "
        f"lambda i: [i, {block % 1000}, (i * 13 + {block}) % 101]::INTEGER[]))"
    )


def job_script(store, job):
    """(sql, commit points): statements to run, and the unit each committing statement completes."""
    mode = MODES[job % len(MODES)]
    sql, commits = [], {}
    for s in range(STATEMENTS):
        if mode == "copy":
            commits[len(sql)] = [s]
            sql.append(copy_sql(store, job, s))
        elif mode == "copy-batch":
            sql.append(copy_sql(store, job, s, commit=False))
        else:
            for b in blocks_of(job, s):
                sql += [write_sql(store, job, label, b) for label in range(1, L + 1)]
            commits[len(sql)] = [s]
            sql.append(f"FROM pocaduck_commit('{store}', worker := 'j{job}')")
    if mode == "copy-batch":
        commits[len(sql)] = list(range(STATEMENTS))
        sql.append(f"FROM pocaduck_commit('{store}', worker := 'j{job}')")
    return sql, commits


def expected_rows(labels, blocks):
    """Rows (label, block, x, y, z) of the given labels in the given blocks, sorted."""
    labels = np.asarray(sorted(labels), dtype=np.int64)
    blocks = np.asarray(sorted(blocks), dtype=np.int64)
    if not len(labels) or not len(blocks):
        return np.zeros((0, 5), dtype=np.int64)
    lab, blk = np.meshgrid(labels, blocks, indexing="ij")
    lab, blk = lab.ravel(), blk.ravel()
    i0 = ((lab - 1 - 3 * blk) * INV7) % L
    k = np.arange((ROWS + L - 1) // L, dtype=np.int64)
    i = i0[:, None] + k[None, :] * L
    ok = i < ROWS
    n = ok.sum(axis=1)
    i = i[ok]
    lab, blk = np.repeat(lab, n), np.repeat(blk, n)
    return canon(np.stack([lab, blk, i, blk % 1000, (i * 13 + blk) % 101], axis=1))


def canon(rows):
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    return np.ascontiguousarray(rows[np.lexsort(rows.T[::-1])])


def connect(extension):
    import duckdb

    con = duckdb.connect(config={"allow_unsigned_extensions": True})
    con.execute(f"LOAD '{extension}'")
    return con


def has_index(store):
    d = os.path.join(store, "index")
    return os.path.isdir(d) and any(f.endswith((".json", ".duckdb")) for f in os.listdir(d))


def say(*x):
    sys.stdout.write(" ".join(str(v) for v in x) + "\n")
    sys.stdout.flush()


# --- roles run in child processes --------------------------------------------------------------------
def role_writer(a):
    con = connect(a.extension)
    sql, commits = job_script(a.store, a.job)
    say("ready")
    for n, q in enumerate(sql):
        con.execute(q).fetchall()
        if n in commits:
            say("commit", json.dumps(commits[n]))
    say("end")


def role_consolidate(a):
    con = connect(a.extension)
    say("ready")
    try:
        r = con.execute("FROM pocaduck_consolidate(?)", [a.store]).fetchone()
        say("result", json.dumps(list(r)))
    except Exception as e:
        say("error", json.dumps(str(e)))


def role_reader(a):
    con = connect(a.extension)
    rng = random.Random(a.seed)
    say("ready")
    queries = errors = bad = 0
    while not os.path.exists(a.stop):
        if not has_index(a.store):  # before the first consolidate, "no unified index yet" is right
            time.sleep(0.05)
            continue
        labels = rng.sample(range(1, L + 1), rng.randint(1, 3))
        try:
            r = con.execute("SELECT label, block, x, y, z FROM pocaduck_points(?, ?)", [a.store, labels]).fetchnumpy()
        except Exception as e:
            errors += 1
            say("error", json.dumps(str(e)))
            continue
        queries += 1
        got = canon(np.stack([r[c].astype(np.int64) for c in ("label", "block", "x", "y", "z")], axis=1))
        blocks = np.unique(got[:, 1])
        want = expected_rows(labels, blocks)
        if got.shape != want.shape or not np.array_equal(got, want):
            bad += 1
            say("bad", json.dumps(f"labels {labels}: {len(got)} rows, want {len(want)} for the "
                                  f"{len(blocks)} blocks present (partial block, duplicate or stray rows)"))
        time.sleep(0.01)
    say("stats", queries, errors, bad)


# --- the driver --------------------------------------------------------------------------------------
class Proc:
    def __init__(self, args, role, env=None, **kw):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role,
               "--store", args.store, "--extension", args.extension]
        for k, v in kw.items():
            cmd += [f"--{k}", str(v)]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env and {**os.environ, **env})
        self.t0 = time.monotonic()
        self.lines = []
        self.stderr = ""
        self.kill_at = None
        self.killed = False
        self._t = [threading.Thread(target=self._out, daemon=True), threading.Thread(target=self._err, daemon=True)]
        for t in self._t:
            t.start()

    def _out(self):
        for line in self.p.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def _err(self):
        self.stderr = self.p.stderr.read()

    def poll(self):
        if self.kill_at is not None and self.p.poll() is None and time.monotonic() >= self.kill_at:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()
            self.killed = self.p.returncode == -signal.SIGKILL
        rc = self.p.poll()
        if rc is not None:
            for t in self._t:
                t.join(timeout=30)
        return rc

    def tagged(self, tag):
        return [line.split(" ", 1)[1] if " " in line else "" for _, line in self.lines if line.split(" ")[0] == tag]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--kill-share", type=float, default=0.3, help="share of writer runs killed")
    ap.add_argument("--consolidate-every", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--store", default=None, help="store directory (default: a fresh temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--extension", default=os.environ.get(
        "POCADUCK_EXTENSION", str(REPO / "build" / "pocaduck.duckdb_extension")))
    ap.add_argument("--role", default="driver", help=argparse.SUPPRESS)
    ap.add_argument("--job", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--stop", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role != "driver":
        {"writer": role_writer, "consolidate": role_consolidate, "reader": role_reader}[a.role](a)
        return 0
    return drive(a)


def drive(a):
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="pocaduck-soak-"))
    a.store = a.store or str(tmp / "store")
    stop = str(tmp / "stop")
    cons_tmp = tmp / "consolidate-tmp"  # TMPDIR of the consolidates: what killed ones leave behind
    cons_tmp.mkdir()
    print(f"soak: {a.seconds:.0f}s, {a.writers} writers, {a.readers} readers, seed {seed}, store {a.store}", flush=True)
    t_start = time.monotonic()
    deadline = t_start + a.seconds
    problems = []
    f = {"jobs": 0, "writer runs": 0, "writer crashes": 0, "writers killed at the end": 0, "rows written": 0,
         "consolidates": 0, "consolidate conflicts": 0, "consolidate crashes": 0,
         "reader queries": 0, "reader errors": 0}
    reported = {}  # job -> units some run reported committed
    completed = set()  # jobs some run finished
    launched = set()
    todo = []  # killed jobs, rerun first
    next_job = 0
    writers = {}  # job -> Proc
    durations = {m: [] for m in MODES}
    cons = []  # running consolidators: (Proc, lower bound of points)
    cons_time = [0.3]
    last_cons = t_start
    gen_seen = 0
    readers = [Proc(a, "reader", seed=rng.randrange(2**31), stop=stop) for _ in range(a.readers)]

    def committed_blocks():
        return {b for j, units in reported.items() for s in units for b in blocks_of(j, s)}

    def finish_writer(job, p):
        rc = p.poll()
        units = [u for c in p.tagged("commit") for u in json.loads(c)]
        reported.setdefault(job, set()).update(units)
        f["rows written"] += len(units) * BPS * ROWS
        if rc == 0:
            completed.add(job)
            durations[MODES[job % len(MODES)]].append(time.monotonic() - p.t0)
        elif p.killed:
            f["writer crashes"] += 1
            todo.append(job)
        else:
            problems.append(f"writer j{job} failed (rc {rc}): {p.stderr[-1500:]}")

    def finish_consolidate(p, lower):
        nonlocal gen_seen
        upper = len(launched) * STATEMENTS * BPS * ROWS
        p.poll()
        if p.killed:
            f["consolidate crashes"] += 1
            return
        res, err = p.tagged("result"), p.tagged("error")
        if res:
            g, _workers, _new, _files, _labels, points = json.loads(res[0])
            f["consolidates"] += 1
            if points % ROWS:
                problems.append(f"consolidate: {points} points is not whole blocks of {ROWS}: partial data")
            if not lower <= points <= upper:
                problems.append(f"consolidate: {points} points, expected between {lower} and {upper}")
            if g < gen_seen:
                problems.append(f"consolidate: generation went back from {gen_seen} to {g}")
            gen_seen = max(gen_seen, g)
        elif err and CONFLICT.search(json.loads(err[0])):
            f["consolidate conflicts"] += 1
        else:
            problems.append(f"consolidate failed: {err or p.stderr[-1500:]}")

    def launch_writer(job):
        p = Proc(a, "writer", job=job)
        f["writer runs"] += 1
        launched.add(job)
        if rng.random() < a.kill_share:
            d = durations[MODES[job % len(MODES)]]
            est = (sum(d) / len(d)) if d else 1.0
            p.kill_at = p.t0 + rng.uniform(0, est * 1.1)
        writers[job] = p

    try:
        while time.monotonic() < deadline:
            for job, p in list(writers.items()):
                if p.poll() is not None:
                    del writers[job]
                    finish_writer(job, p)
            while len(writers) < a.writers:
                if todo:
                    job = todo.pop(0)
                else:
                    job, next_job = next_job, next_job + 1
                    f["jobs"] += 1
                launch_writer(job)
            for item in list(cons):
                if item[0].poll() is not None:
                    cons.remove(item)
                    finish_consolidate(*item)
                    if not item[0].killed:
                        cons_time.append(time.monotonic() - item[0].t0)
            now = time.monotonic()
            started = os.path.exists(os.path.join(a.store, "_pocaduck.json"))
            if not cons and started and now - last_cons >= a.consolidate_every:
                last_cons = now
                lower = len(committed_blocks()) * ROWS
                for _ in range(2 if rng.random() < 0.25 else 1):
                    p = Proc(a, "consolidate", env={"TMPDIR": str(cons_tmp)})
                    if rng.random() < 0.25:
                        p.kill_at = p.t0 + rng.uniform(0, max(cons_time[-5:]) * 1.2)
                    cons.append((p, lower))
            time.sleep(0.01)
    finally:
        # The end is a crash too: whatever still runs is killed.
        Path(stop).touch()
        for job, p in list(writers.items()):
            p.kill_at = 0
            p.poll()
            f["writers killed at the end"] += p.killed
            finish_writer(job, p)
            f["writer crashes"] -= p.killed  # counted above, not a random crash
        for item in cons:
            item[0].kill_at = 0
            finish_consolidate(*item)
        for r in readers:
            try:
                r.p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                r.p.kill()
                problems.append("a reader hung")
            r.poll()
    for r in readers:
        st = r.tagged("stats")
        if not st:
            problems.append(f"a reader failed: {r.stderr[-1500:]}")
            continue
        q, e, _bad = map(int, st[0].split())
        f["reader queries"] += q
        f["reader errors"] += e
        for line in r.tagged("bad"):
            problems.append(f"reader: {json.loads(line)}")
        for line in r.tagged("error"):
            problems.append(f"reader error: {json.loads(line)}")
    f["consolidate temp dirs left behind"] = len(os.listdir(cons_tmp))
    problems += verify(a, f, rng, reported, completed, launched)
    f["seconds"] = round(time.monotonic() - t_start, 1)
    print("soak: " + ", ".join(f"{k}: {v}" for k, v in f.items()))
    for p in problems[:20]:
        print("PROBLEM:", p)
    if problems:
        print(f"soak: FAILED ({len(problems)} problems; store kept at {a.store}, seed {seed})")
        return 1
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    print("soak: OK")
    return 0


def verify(a, f, rng, reported, completed, launched):
    """Consolidates and checks the whole store against the formulas. Which commit units are present
    is read from the store; each must be whole, every reported or completed one must be there, and
    the rows must be exactly the formulas' for the units present."""
    problems = []
    t0 = time.monotonic()
    con = connect(a.extension)
    summary = con.execute("FROM pocaduck_consolidate(?)", [a.store]).fetchone()
    got = {(int(l_), int(b)): t for l_, b, *t in con.execute(
        "SELECT label, block, count(*), sum(x::BIGINT), sum(x::BIGINT * x), sum(y::BIGINT), sum(z::BIGINT) "
        "FROM pocaduck_points(?, ?) GROUP BY ALL", [a.store, list(range(1, L + 1))]).fetchall()}
    present_blocks = {b for _, b in got}
    present = {}  # job -> units present
    lost_blocks = set()
    for job in sorted(launched):
        units = set()
        for s in range(STATEMENTS):
            have = [b in present_blocks for b in blocks_of(job, s)]
            if all(have):
                units.add(s)
            elif any(have):
                problems.append(f"j{job} unit {s}: only some of its blocks are present (a partial commit)")
        if MODES[job % len(MODES)] == "copy-batch" and units and len(units) != STATEMENTS:
            problems.append(f"j{job} (one commit): units {sorted(units)} present, not all or none")
        must = set(reported.get(job, ())) | (set(range(STATEMENTS)) if job in completed else set())
        if must - units:
            problems.append(f"j{job}: committed units {sorted(must - units)} are missing")
            lost_blocks |= {b for s in must - units for b in blocks_of(job, s)}
        present[job] = units
    blocks = [b for j, units in present.items() for s in units for b in blocks_of(j, s)]
    stray = present_blocks - set(blocks) - {b for j in launched for s in range(STATEMENTS) for b in blocks_of(j, s)}
    if stray:
        problems.append(f"blocks no job wrote: {sorted(stray)[:5]}")
    want = expected_rows(range(1, L + 1), blocks)
    # per (label, block): count and sums of x, x^2, y, z, from the formulas.
    keys = want[:, 0] * 10**9 + want[:, 1]
    uk, inv = np.unique(keys, return_inverse=True)

    def sums(v):
        out = np.zeros(len(uk), dtype=np.int64)
        np.add.at(out, inv, v)
        return out

    cols = [np.bincount(inv, minlength=len(uk)), sums(want[:, 2]), sums(want[:, 2] ** 2), sums(want[:, 3]),
            sums(want[:, 4])]
    exp = {(int(k // 10**9), int(k % 10**9)): list(t) for k, t in zip(uk.tolist(), zip(*(c.tolist() for c in cols)))}
    lost = len(lost_blocks) * ROWS + sum(max(0, e[0] - got.get(k, [0])[0]) for k, e in exp.items())
    dup = sum(max(0, g[0] - exp.get(k, [0])[0]) for k, g in got.items())
    wrong = sum(1 for k, e in exp.items() if k in got and got[k][0] == e[0] and list(got[k]) != e)
    f["jobs completed"] = len(completed)
    f["commit units present"] = sum(len(u) for u in present.values())
    f["rows in store"] = int(summary[5])
    f["rows expected"] = len(want)
    f["rows lost"], f["rows duplicated"], f["(label, block)s with wrong points"] = lost, dup, wrong
    if summary[5] != len(want):
        problems.append(f"consolidate reports {summary[5]} points, expected {len(want)}")
    if lost or dup or wrong:
        problems.append(f"{lost} rows lost, {dup} duplicated, {wrong} (label, block)s with wrong points")
    lab = dict(con.execute("SELECT label, point_count FROM pocaduck_labels(?)", [a.store]).fetchall())
    ul, cnt = np.unique(want[:, 0], return_counts=True)
    if lab != dict(zip(ul.tolist(), cnt.tolist())):
        problems.append("pocaduck_labels disagrees with the expected counts")
    for label in rng.sample(range(1, L + 1), 5):  # exact rows of a few labels, read alone
        rr = con.execute("SELECT block, x, y, z FROM pocaduck_points(?, ?::UBIGINT)", [a.store, label]).fetchnumpy()
        n = len(rr["x"])
        rows = canon(np.stack([np.full(n, label)] + [rr[c].astype(np.int64) for c in ("block", "x", "y", "z")], axis=1))
        if not np.array_equal(rows, want[want[:, 0] == label]):
            problems.append(f"label {label}: {n} rows differ from the expected {int((want[:, 0] == label).sum())}")
    f["seconds verifying"] = round(time.monotonic() - t0, 1)
    return problems


if __name__ == "__main__":
    sys.exit(main())
