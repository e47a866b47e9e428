#!/usr/bin/env python3
"""S3 reader soak: reader threads of one process query an S3 store while other processes write,
consolidate and optimize it. Needs moto (the script starts its own moto_server on loopback).

    .venv/py15/bin/python scripts/soak_s3_readers.py [--seconds 60] [--readers 8] [--seed N]

Processes, all on one store `S3://pocaduck-test/<random>/store`:
- writers (--writers, 2): each owns --workers-per-writer (2) worker ids and, in turn, COPYs commit
  units of BPS blocks of ROWS points (a block id encodes its worker and unit, the rows follow a
  formula); now and then (--rewrite-share) a worker writes one of its earlier units again, a
  rerun that must replace that unit's (label, block)s, never duplicate them;
- a consolidator: `pocaduck_consolidate` every --consolidate-every s;
- an optimizer: `pocaduck_optimize` (whole store, or a `labels := [lo, hi)` range) every
  --optimize-every s. Racing the consolidate it may fail with the documented conflict error
  ("another consolidate or optimize published generation N first"); so may the consolidate.
  That is counted; any other error is a failure;
- the reader process: --readers threads (8), each on its own `con.cursor()` of one connection,
  except every fourth, which opens its own `duckdb.connect()`. They query random labels with
  `pocaduck_points` (one label, or a list), `pocaduck_blocks`, `pocaduck_labels`,
  `pocaduck_explain` and `pocaduck_stats` all along, and check every answer: each (label, block)
  present holds exactly its formula rows (none missing, none twice), a worker's units are visible
  as a whole prefix (0..n-1, as it committed them), no block nobody wrote, every label in every
  visible block; per thread, the generation and the set of visible blocks never go backwards.
  Any exception is a failure (printed with the kind of query).

Before the readers start the store has one committed unit per worker and generation 1. At
--seconds the writers and maintenance processes are stopped, then the readers; the store is
consolidated and verified exactly against the units the writers reported committed (per label
counts from `pocaduck_labels`, per (label, block) count and sums of x, x^2, y, z, the exact rows of
a few labels, `pocaduck_stats`), optimized, verified again, and `pocaduck_check` must be ok.
Prints the figures and exits 1 on any problem. `--inject expectation|lose-part` makes it fail on
purpose (a wrong expectation in the readers and the final check, or a part deleted mid-run): a
test of the soak itself. CI (scripts/test.sh) runs `--seconds 20`.
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test" / "python"))

L = 50  # labels 1..50
ROWS = 1000  # points per block: every label exactly ROWS / L = 20 times in every block
PER = ROWS // L
INV7 = pow(7, -1, L)
BPS = 3  # blocks per commit unit
WSTRIDE = 100_000  # block = worker * WSTRIDE + unit * BPS + k
BUCKET = "pocaduck-test"
COPY_OPTS = "BUFFER_SIZE '1MiB', TARGET_FILE_SIZE '64KiB'"
CONFLICT = re.compile(
    r"store '[^']*': (?:another consolidate or optimize published generation \d+ first; nothing was "
    r"changed, run it again|could not publish after 16 tries)"
)


# --- the data: block b holds i in range(ROWS) with label = (7i + 3b) % L + 1, x = i,
#     y = b % 1009, z = (13i + b) % 101.
def blocks_of(w, s):
    return [w * WSTRIDE + s * BPS + k for k in range(BPS)]


def copy_sql(store, w, s):
    b0 = blocks_of(w, s)[0]
    return (
        f"COPY (SELECT ((i * 7 + b * 3) % {L} + 1)::UBIGINT, b, i::INTEGER, (b % 1009)::INTEGER, "
        f"((i * 13 + b) % 101)::INTEGER FROM range({b0}, {b0 + BPS}) bb(b), range({ROWS}) t(i)) "
        f"TO '{store}' (FORMAT pocaduck, WORKER 'w{w}', {COPY_OPTS})"
    )


def expected_rows(labels, blocks, extra=False):
    """Rows (label, block, x, y, z) of the labels in the blocks, sorted. `extra`: a wrong
    expectation (one more row per (label, block)), for --inject expectation."""
    labels = np.asarray(sorted(labels), dtype=np.int64)
    blocks = np.asarray(sorted(blocks), dtype=np.int64)
    if not len(labels) or not len(blocks):
        return np.zeros((0, 5), dtype=np.int64)
    lab, blk = np.meshgrid(labels, blocks, indexing="ij")
    lab, blk = lab.ravel(), blk.ravel()
    i0 = ((lab - 1 - 3 * blk) * INV7) % L
    i = i0[:, None] + np.arange(PER + extra, dtype=np.int64)[None, :] * L
    lab, blk, i = np.repeat(lab, PER + extra), np.repeat(blk, PER + extra), i.ravel()
    return canon(np.stack([lab, blk, i, blk % 1009, (i * 13 + blk) % 101], axis=1))


def canon(rows):
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    return np.ascontiguousarray(rows[np.lexsort(rows.T[::-1])])


def block_set_problem(blocks, workers):
    """None if `blocks` is a valid visible set: per worker, all blocks of units 0..n-1."""
    by = {}
    for b in blocks:
        w, r = divmod(int(b), WSTRIDE)
        if w >= workers or b < 0:
            return f"block {b} was never written (no worker {w})"
        by.setdefault(w, set()).add(r)
    for w, rs in by.items():
        n = max(rs) // BPS + 1
        if len(rs) != n * BPS:
            missing = sorted(set(range(n * BPS)) - rs)[:6]
            return f"worker w{w}: blocks of units 0..{n - 1} not all visible (missing block offsets {missing})"
    return None


def connect(extension):
    import duckdb

    con = duckdb.connect(config={"allow_unsigned_extensions": True})
    con.execute(f"LOAD '{extension}'")
    return con


_say_lock = threading.Lock()


def say(*x):
    with _say_lock:
        sys.stdout.write(" ".join(str(v) for v in x) + "\n")
        sys.stdout.flush()


# --- roles, each in a child process -------------------------------------------------------------
def role_writer(a):
    con = connect(a.extension)
    rng = random.Random(a.seed)
    ws = [int(w) for w in a.workers.split(",")]
    nxt = {w: 1 for w in ws}  # unit 0 of every worker was written by the driver
    say("ready")
    turn = 0
    while not os.path.exists(a.stop):
        w = ws[turn % len(ws)]
        turn += 1
        rewrite = rng.random() < a.rewrite_share
        s = rng.randrange(nxt[w]) if rewrite else nxt[w]
        sql = copy_sql(a.store, w, s)
        try:
            con.execute(sql).fetchall()
        except Exception as e:  # the unit's fate is unknown: stop this writer, the driver fails
            say("error", json.dumps(f"w{w} unit {s}: {sql}: {e}"))
            break
        if not rewrite:
            nxt[w] += 1
        say("rewrite" if rewrite else "commit", w, s)
        time.sleep(a.pause)
    say("end")


def role_maintain(a):
    con = connect(a.extension)
    rng = random.Random(a.seed)
    say("ready")
    while True:
        t_end = time.monotonic() + a.every * rng.uniform(0.5, 1.5)
        while time.monotonic() < t_end and not os.path.exists(a.stop):
            time.sleep(0.05)
        if os.path.exists(a.stop):
            break
        if a.role == "consolidate":
            sql, args = "SELECT * FROM pocaduck_consolidate(?)", [a.store]
        elif rng.random() < 0.5:
            sql, args = "SELECT * FROM pocaduck_optimize(?)", [a.store]
        else:
            lo = rng.randrange(1, L)
            hi = rng.randrange(lo + 1, L + 2)
            sql, args = f"SELECT * FROM pocaduck_optimize(?, labels := [{lo}, {hi}])", [a.store]
        t0 = time.monotonic()
        try:
            r = con.execute(sql, args).fetchone()
            say("ok", json.dumps([int(v) for v in r] + [round(time.monotonic() - t0, 3)]))
        except Exception as e:
            say("conflict" if CONFLICT.search(str(e)) else "error", json.dumps(f"{sql}: {e}"))
    say("end")


class Reader:
    """One reader thread: its queries and what it has seen."""

    KINDS = (("points", 30), ("points1", 15), ("blocks", 20), ("labels", 10), ("explain", 20), ("stats", 5))

    def __init__(self, a, n, con, own):
        self.a, self.n, self.con, self.own = a, n, con, own
        self.rng = random.Random(a.seed * 1000 + n)
        self.count = {k: 0 for k, _ in self.KINDS}
        self.gens = set()
        self.gen = 0  # highest generation seen
        self.seen = set()  # blocks seen (the visible set only grows)
        self.nseen = 0  # most blocks a count said were visible
        self.errors = self.bad = 0

    def fail(self, kind, what):
        self.bad += 1
        if self.bad <= 3:
            say("bad", json.dumps(f"thread {self.n} {kind}: {what}"))

    def blocks_seen(self, kind, blocks):
        p = block_set_problem(blocks, self.a.nworkers)
        if p:
            self.fail(kind, p)
        if not self.seen <= blocks:
            self.fail(kind, f"{len(self.seen - blocks)} blocks seen before are gone (e.g. {sorted(self.seen - blocks)[:3]})")
        if len(blocks) < self.nseen:
            self.fail(kind, f"{len(blocks)} blocks visible, fewer than the {self.nseen} seen before")
        self.seen |= blocks
        self.nseen = max(self.nseen, len(blocks))

    def count_seen(self, kind, nblocks):
        if nblocks % BPS or nblocks < self.nseen:
            self.fail(kind, f"{nblocks} blocks visible: not whole units, or fewer than the {self.nseen} seen before")
        self.nseen = max(self.nseen, nblocks)

    def gen_seen(self, kind, g):
        if g < self.gen:
            self.fail(kind, f"generation went back from {self.gen} to {g}")
        self.gen = max(self.gen, g)
        self.gens.add(g)

    def query(self, kind):
        a, con, st = self.a, self.con, self.a.store
        label = self.rng.randint(1, L)
        if kind in ("points", "points1"):
            labels = self.rng.sample(range(1, L + 1), self.rng.randint(1, 3)) if kind == "points" else [label]
            if kind == "points":
                r = con.execute("SELECT label, block, x, y, z FROM pocaduck_points(?, ?)", [st, labels]).fetchnumpy()
                cols = [r[c].astype(np.int64) for c in ("label", "block", "x", "y", "z")]
            else:
                r = con.execute("SELECT x, y, z, block FROM pocaduck_points(?, ?::UBIGINT)", [st, label]).fetchnumpy()
                cols = [np.full(len(r["x"]), label, dtype=np.int64)] + [r[c].astype(np.int64) for c in ("block", "x", "y", "z")]
            got = canon(np.stack(cols, axis=1))
            blocks = set(np.unique(got[:, 1]).tolist())
            self.blocks_seen(kind, blocks)
            want = expected_rows(labels, blocks, extra=a.inject == "expectation")
            if got.shape != want.shape or not np.array_equal(got, want):
                self.fail(kind, f"labels {labels}: {len(got)} rows in {len(blocks)} blocks, want {len(want)} "
                                "(a partial or duplicated block, or wrong rows)")
        elif kind == "blocks":
            rows = con.execute("SELECT block, point_count FROM pocaduck_blocks(?, ?::UBIGINT)", [st, label]).fetchall()
            blocks = {int(b) for b, _ in rows}
            self.blocks_seen(kind, blocks)
            if len(blocks) != len(rows) or any(c != PER for _, c in rows):
                self.fail(kind, f"label {label}: {len(rows)} rows for {len(blocks)} blocks, counts "
                                f"{sorted({c for _, c in rows})} (want {PER} each)")
        elif kind == "labels":
            rows = con.execute("SELECT label, point_count, block_count FROM pocaduck_labels(?)", [st]).fetchall()
            nb = {int(b) for _, _, b in rows}
            if [int(r[0]) for r in rows] != list(range(1, L + 1)) or len(nb) != 1:
                self.fail(kind, f"{len(rows)} labels, block counts {sorted(nb)[:5]}: want labels 1..{L}, "
                                "each in every visible block")
            else:
                b = nb.pop()
                self.count_seen(kind, b)
                if any(p != PER * b for _, p, _ in rows):
                    self.fail(kind, f"point counts {sorted({p for _, p, _ in rows})[:5]}, want {PER * b}")
        elif kind == "explain":
            g, points, blocks, returned = con.execute(
                "SELECT generation, points, blocks, rows_returned FROM pocaduck_explain(?, ?::UBIGINT)", [st, label]).fetchone()
            self.gen_seen(kind, g)
            self.count_seen(kind, blocks)
            if points != PER * blocks or returned != points:
                self.fail(kind, f"label {label}: {points} points, {returned} returned in {blocks} blocks "
                                f"(want {PER} per block)")
        else:
            g, labels, points = con.execute(
                "SELECT generation, labels, points FROM pocaduck_stats(?)", [st]).fetchone()
            self.gen_seen(kind, g)
            if labels != L or points % (BPS * ROWS):
                self.fail(kind, f"{labels} labels, {points} points: want {L} labels and whole units")
            else:
                self.count_seen(kind, points // ROWS)
        self.count[kind] += 1

    def run(self):
        kinds, weights = zip(*self.KINDS)
        while not os.path.exists(self.a.stop):
            kind = self.rng.choices(kinds, weights)[0]
            try:
                self.query(kind)
            except Exception as e:
                self.errors += 1
                if self.errors <= 3:
                    say("error", json.dumps(f"thread {self.n} {kind}: {type(e).__name__}: {e}"))
            time.sleep(self.a.pause)


def role_reader(a):
    main = connect(a.extension)
    readers = []
    for n in range(a.readers):
        own = n % 4 == 3
        readers.append(Reader(a, n, connect(a.extension) if own else main.cursor(), own))
    threads = [threading.Thread(target=r.run, name=f"reader-{r.n}") for r in readers]
    say("ready")
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in readers:
        say("stats", json.dumps({"thread": r.n, "connection": "own" if r.own else "cursor", "queries": r.count,
                                 "errors": r.errors, "bad": r.bad, "generations": sorted(r.gens),
                                 "blocks": r.nseen}))
    say("end")


# --- the driver -----------------------------------------------------------------------------------
class Proc:
    def __init__(self, a, role, env, **kw):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--store", a.store,
               "--extension", a.extension, "--nworkers", str(a.nworkers)] + (["--inject", a.inject] if a.inject else [])
        for k, v in kw.items():
            cmd += [f"--{k.replace('_', '-')}", str(v)]
        self.role = role
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []
        self.stderr = ""
        self._t = [threading.Thread(target=self._out, daemon=True), threading.Thread(target=self._err, daemon=True)]
        for t in self._t:
            t.start()

    def _out(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def _err(self):
        self.stderr = self.p.stderr.read()

    def tagged(self, tag):
        return [line.split(" ", 1)[1] if " " in line else "" for line in list(self.lines) if line.split(" ")[0] == tag]

    def wait_ready(self, timeout):
        t_end = time.monotonic() + timeout
        while not self.tagged("ready"):
            if self.p.poll() is not None or time.monotonic() > t_end:
                return False
            time.sleep(0.05)
        return True

    def finish(self, timeout):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return False
        for t in self._t:
            t.join(30)
        return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--readers", type=int, default=8, help="reader threads in the reader process")
    ap.add_argument("--writers", type=int, default=2, help="writer processes")
    ap.add_argument("--workers-per-writer", type=int, default=2, help="worker ids each writer process writes")
    ap.add_argument("--rewrite-share", type=float, default=0.15, help="share of writes that rerun an earlier unit")
    ap.add_argument("--write-pause", type=float, default=0.15, help="seconds between a writer's COPYs")
    ap.add_argument("--read-pause", type=float, default=0.02, help="seconds between a reader thread's queries")
    ap.add_argument("--consolidate-every", type=float, default=0.5)
    ap.add_argument("--optimize-every", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--inject", choices=["expectation", "lose-part"], default=None,
                    help="make the soak fail on purpose (tests the soak itself)")
    ap.add_argument("--extension", default=os.environ.get(
        "POCADUCK_EXTENSION", str(REPO / "build" / "pocaduck.duckdb_extension")))
    for hidden in ("--role", "--store", "--stop", "--workers", "--every", "--pause"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--nworkers", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role:
        a.seed = int(a.seed)
        for k in ("every", "pause"):
            if getattr(a, k) is not None:
                setattr(a, k, float(getattr(a, k)))
        {"writer": role_writer, "consolidate": role_maintain, "optimize": role_maintain,
         "reader": role_reader}[a.role](a)
        return 0
    return drive(a)


def drive(a):
    from s3server import S3Server

    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    a.nworkers = a.writers * a.workers_per_writer
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="pocaduck-s3soak-"))  # the stop files
    srv = S3Server()
    procs = []
    try:
        srv.bucket(BUCKET)
        os.environ.update(srv.env)
        env = dict(os.environ)
        a.store = f"S3://{BUCKET}/{uuid.uuid4().hex}/store"
        stop_w, stop_r = str(tmp / "stop-writers"), str(tmp / "stop-readers")
        print(f"s3 reader soak: {a.seconds:.0f}s, {a.readers} reader threads, {a.writers} writer processes x "
              f"{a.workers_per_writer} workers, seed {seed}, store {a.store} at {srv.endpoint}"
              + (f", INJECTED FAULT: {a.inject}" if a.inject else ""), flush=True)
        problems = []
        con = connect(a.extension)
        for w in range(a.nworkers):  # unit 0 of every worker, then generation 1: readers never see an empty store
            con.execute(copy_sql(a.store, w, 0))
        con.execute("FROM pocaduck_consolidate(?)", [a.store]).fetchall()

        reader = Proc(a, "reader", env, readers=a.readers, stop=stop_r, seed=rng.randrange(2**31), pause=a.read_pause)
        procs.append(reader)
        if not reader.wait_ready(120):
            raise RuntimeError(f"the reader process did not start: {reader.stderr[-2000:]}")
        writers = [Proc(a, "writer", env, seed=rng.randrange(2**31), stop=stop_w, pause=a.write_pause,
                        workers=",".join(str(p * a.workers_per_writer + k) for k in range(a.workers_per_writer)),
                        rewrite_share=a.rewrite_share)
                   for p in range(a.writers)]
        cons = Proc(a, "consolidate", env, seed=rng.randrange(2**31), stop=stop_w, every=a.consolidate_every)
        opt = Proc(a, "optimize", env, seed=rng.randrange(2**31), stop=stop_w, every=a.optimize_every)
        procs += writers + [cons, opt]
        t_run = time.monotonic()
        deadline = t_run + a.seconds
        injected = False
        while time.monotonic() < deadline:
            for p in procs:
                if p.p.poll() is not None:
                    problems.append(f"the {p.role} process ended early (rc {p.p.returncode}): {p.stderr[-1500:]}")
            if any(p.p.poll() is not None for p in procs):
                break
            if a.inject == "lose-part" and not injected and time.monotonic() > t_run + a.seconds / 2:
                parts = [k for k in srv.keys(BUCKET, a.store.split(f"{BUCKET}/")[1] + "/")
                         if "/parts/" in k or "/optimized/" in k]
                for k in parts:
                    srv.client.delete_object(Bucket=BUCKET, Key=k)
                print(f"injected: deleted the {len(parts)} part files", flush=True)
                injected = True
            time.sleep(0.2)
        Path(stop_w).touch()  # writers and maintenance first; the readers read on until they are done
        for p in writers + [cons, opt]:
            if not p.finish(120):
                problems.append(f"the {p.role} process hung after the stop")
        Path(stop_r).touch()
        if not reader.finish(120):
            problems.append("the reader process hung after the stop")
        t_stopped = time.monotonic()
        for p in procs:
            if p.p.returncode != 0:
                problems.append(f"the {p.role} process failed (rc {p.p.returncode}): {p.stderr[-1500:]}")

        # What the writers committed: per worker, units 0..n-1 (the driver wrote unit 0).
        units = {w: {0} for w in range(a.nworkers)}
        f = {"commits": 0, "reruns": 0, "consolidates": 0, "consolidate conflicts": 0, "optimizes": 0,
             "optimizes that rewrote": 0, "optimize conflicts": 0}
        for p in writers:
            for line in p.tagged("commit"):
                w, s = map(int, line.split())
                units[w].add(s)
                f["commits"] += 1
            f["reruns"] += len(p.tagged("rewrite"))
            problems += [f"writer: {json.loads(e)}" for e in p.tagged("error")]
        for w, us in units.items():
            if us != set(range(len(us))):
                problems.append(f"worker w{w}: committed units {sorted(us)} are not 0..n-1")
        for p, name in ((cons, "consolidate"), (opt, "optimize")):
            last = 0
            for line in p.tagged("ok"):
                r = json.loads(line)
                f[name + "s"] += 1
                if r[0] < last:
                    problems.append(f"{name}: generation went back from {last} to {r[0]}")
                last = max(last, r[0])
                if name == "consolidate" and r[4] % (BPS * ROWS):
                    problems.append(f"consolidate merged {r[4]} new points: not whole units of {BPS * ROWS}")
                if name == "optimize" and r[2]:
                    f["optimizes that rewrote"] += 1
            f[name + " conflicts"] = len(p.tagged("conflict"))
            ts = sorted(json.loads(line)[-1] for line in p.tagged("ok"))
            if ts:
                f[name + " s (median, max)"] = f"{ts[len(ts) // 2]:.2f}, {ts[-1]:.2f}"
            problems += [f"{name}: {json.loads(e)}" for e in p.tagged("error")]
        f["generation at the stop"] = max(int(m.group(1)) for k in srv.keys(BUCKET, a.store.split(f"{BUCKET}/")[1] + "/index/")
                                          if (m := re.search(r"/index/(\d+)\.json$", k)))

        stats = [json.loads(s) for s in reader.tagged("stats")]
        if len(stats) != a.readers:
            problems.append(f"{len(stats)} of {a.readers} reader threads reported: {reader.stderr[-1500:]}")
        problems += [f"reader error: {json.loads(e)}" for e in reader.tagged("error")]
        problems += [f"reader: {json.loads(e)}" for e in reader.tagged("bad")]
        blocks_written = sum(len(us) for us in units.values()) * BPS
        for s in stats:
            if s["blocks"] > blocks_written:
                problems.append(f"thread {s['thread']} saw {s['blocks']} blocks, more than the {blocks_written} written")
            if s["errors"] or s["bad"]:
                problems.append(f"thread {s['thread']}: {s['errors']} errors, {s['bad']} wrong answers")

        # The whole store, exactly.
        t_verify = time.monotonic()
        blocks = [b for w, us in units.items() for s in us for b in blocks_of(w, s)]
        try:
            # The store as it is now: other processes' generations of the last second included
            # (readers otherwise hold a generation up to pocaduck_max_staleness, 1 s on S3).
            con.execute("SET pocaduck_max_staleness = '0'")
            con.execute("FROM pocaduck_consolidate(?)", [a.store]).fetchall()
            problems += verify(con, a, blocks, "after the final consolidate", rng)
            con.execute("FROM pocaduck_optimize(?)", [a.store]).fetchall()
            problems += verify(con, a, blocks, "after a final optimize", rng)
            check = con.execute("SELECT ok, file, message FROM pocaduck_check(?)", [a.store]).fetchall()
            if not check or not all(ok for ok, _, _ in check):
                problems.append(f"pocaduck_check: {[r for r in check if not r[0]][:5] or check}")
        except Exception as e:
            problems.append(f"final verification: {type(e).__name__}: {e}")
        t_end = time.monotonic()
    finally:
        for p in procs:
            if p.p.poll() is None:
                p.p.kill()
                p.p.wait()
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    for s in stats:
        q = s["queries"]
        g = s["generations"]
        print(f"  reader thread {s['thread']} ({s['connection']}): {sum(q.values())} queries ("
              + ", ".join(f"{k} {v}" for k, v in q.items()) + f"), {len(g)} generations seen"
              + (f" ({g[0]}..{g[-1]})" if g else "") + f", up to {s['blocks']} blocks visible")
    f["reader queries"] = sum(sum(s["queries"].values()) for s in stats)
    f["blocks"] = len(blocks)
    f["points"] = len(blocks) * ROWS
    f["run s"] = round(t_stopped - t_run, 1)
    f["verify s"] = round(t_end - t_verify, 1)
    f["total s"] = round(t_end - t_start, 1)
    print("s3 reader soak: " + ", ".join(f"{k}: {v}" for k, v in f.items()))
    problems.sort(key=lambda p: p.startswith("reader"))  # the reader threads' own reports last
    for p in problems[:15]:
        print("PROBLEM:", p if len(p) < 800 else p[:800] + " …")
    if problems:
        print(f"s3 reader soak: FAILED ({len(problems)} problems; seed {seed})")
        return 1
    print("s3 reader soak: OK")
    return 0


def verify(con, a, blocks, when, rng):
    """The store holds exactly the rows of `blocks`: per label, per (label, block) count and sums,
    the exact rows of a few labels, pocaduck_stats."""
    problems = []
    want = expected_rows(range(1, L + 1), blocks, extra=a.inject == "expectation")
    keys = want[:, 0] * WSTRIDE * 1000 + want[:, 1]
    uk, inv = np.unique(keys, return_inverse=True)

    def sums(v):
        out = np.zeros(len(uk), dtype=np.int64)
        np.add.at(out, inv, v)
        return out

    cols = [np.bincount(inv, minlength=len(uk)), sums(want[:, 2]), sums(want[:, 2] ** 2), sums(want[:, 3]),
            sums(want[:, 4])]
    exp = {(int(k // (WSTRIDE * 1000)), int(k % (WSTRIDE * 1000))): list(t)
           for k, t in zip(uk.tolist(), zip(*(c.tolist() for c in cols)))}
    got = {(int(l_), int(b)): [int(v) for v in t] for l_, b, *t in con.execute(
        "SELECT label, block, count(*), sum(x::BIGINT), sum(x::BIGINT * x), sum(y::BIGINT), sum(z::BIGINT) "
        "FROM pocaduck_points(?, ?) GROUP BY ALL", [a.store, list(range(1, L + 1))]).fetchall()}
    if got != exp:
        missing = [k for k in exp if k not in got]
        stray = [k for k in got if k not in exp]
        wrong = [k for k in exp if k in got and got[k] != exp[k]]
        problems.append(f"{when}: (label, block)s missing {len(missing)} {missing[:3]}, never written "
                        f"{len(stray)} {stray[:3]}, with wrong rows {len(wrong)} "
                        + (f"(e.g. {wrong[0]}: count and sums {got[wrong[0]]}, want {exp[wrong[0]]})" if wrong else ""))
    ul, cnt = np.unique(want[:, 0], return_counts=True)
    want_labels = {int(u): (int(c), len(blocks)) for u, c in zip(ul, cnt)}
    labels = {int(r[0]): (int(r[1]), int(r[2])) for r in con.execute(
        "SELECT label, point_count, block_count FROM pocaduck_labels(?)", [a.store]).fetchall()}
    if labels != want_labels:
        problems.append(f"{when}: pocaduck_labels disagrees with the expected (points, blocks) per label")
    for label in rng.sample(range(1, L + 1), 4):
        r = con.execute("SELECT block, x, y, z FROM pocaduck_points(?, ?::UBIGINT)", [a.store, label]).fetchnumpy()
        n = len(r["x"])
        rows = canon(np.stack([np.full(n, label)] + [r[c].astype(np.int64) for c in ("block", "x", "y", "z")], axis=1))
        if not np.array_equal(rows, want[want[:, 0] == label]):
            problems.append(f"{when}: label {label}: {n} rows differ from the {int((want[:, 0] == label).sum())} expected")
        bl = con.execute("SELECT block, point_count FROM pocaduck_blocks(?, ?::UBIGINT)", [a.store, label]).fetchall()
        if sorted(bl) != [(b, PER) for b in sorted(blocks)]:
            problems.append(f"{when}: pocaduck_blocks({label}) disagrees: {len(bl)} blocks, want {len(blocks)}")
    pending, points, skipped = con.execute(
        "SELECT pending_commits, points, skipped_commits FROM pocaduck_stats(?)", [a.store]).fetchone()
    if (pending, points, skipped) != (0, len(want), 0):
        problems.append(f"{when}: pocaduck_stats: {pending} pending commits, {points} points, {skipped} skipped "
                        f"commits; want 0, {len(want)}, 0")
    return problems


if __name__ == "__main__":
    sys.exit(main())
