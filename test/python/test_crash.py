"""The durability rules under kill -9 and concurrency (README "Durability and the worker lifecycle",
ARCHITECTURE "Durability rules").

- Worker crash (COPY): a worker process runs one committing COPY per statement and is SIGKILLed at
  a random moment. Every statement it reported is present; the statement in flight is entirely
  present or entirely absent; nothing else, nothing twice. Rerunning the worker id with the full
  input gives exactly the full input.
- Worker crash (pocaduck_write, commit := false, then pocaduck_commit): a session is visible
  entirely after its commit, and not at all before it (nor ever, if never committed).
- Consolidate crash: the previous generation stays current and intact (or the new one is complete);
  rerunning consolidate yields the new content.
- Readers while consolidating see one generation's content per query, never an error or a mixture;
  two consolidates at once: one publishes, the other has nothing to do or fails with the conflict
  error; four worker processes writing one store at once lose and duplicate nothing.

Expected content is always computed here with numpy from the same formulas the SQL uses, never
taken from the extension. Randomness is seeded (`POCADUCK_CRASH_SEED` to replay one; printed).
A summary line (`crashes injected: N`, …) is printed at the end of the module.
"""
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import EXTENSION, connect

SEED = int(os.environ.get("POCADUCK_CRASH_SEED") or random.SystemRandom().randrange(2**31))
STATS = {
    "crashes injected": 0,
    "worker crashes (COPY)": 0,
    "worker crashes (pocaduck_write)": 0,
    "consolidate crashes": 0,
    "optimize crashes": 0,
    "vacuum crashes": 0,
    "vacuum kills mid-deletion": 0,
    "vacuums racing writes": 0,
    "kills leaving orphan parts": 0,
    "kills leaving a schema but no commit": 0,
    "kills between a commit and its report": 0,
    "consolidate kills before publishing": 0,
    "consolidate temp dirs left by kills": 0,
    "reader queries": 0,
    "reader queries overlapping a consolidate": 0,
    "consolidate conflicts": 0,
}

# --- the data ------------------------------------------------------------------------------------
# A "statement" s of worker number w writes blocks s*BPS .. s*BPS+BPS-1, ROWS points per block:
#   label = (i*7 + b*3 + w*5) % L + 1, x = i, y = b, z = (i*13 + w*17 + v*29) % 101 + w*1000 + v*100000
# (v: a variant, for rewrites with different points). Each statement owns its blocks, so the
# blocks present tell which statements are; (block, x) is unique within a worker, so duplicates show.
L = 61
BPS = 3
ROWS = 12000
COPY_OPTS = "BUFFER_SIZE '1MiB', TARGET_FILE_SIZE '64KiB'"
ALL_LABELS = list(range(1, L + 1)) + [L + 1000]  # plus one that never exists


def copy_sql(store, worker, s, w=0, v=0, commit=True):
    b0 = s * BPS
    return (
        f"COPY (SELECT ((i * 7 + b * 3 + {w} * 5) % {L} + 1)::UBIGINT AS label, b AS block, "
        f"i::INTEGER AS x, b::INTEGER AS y, "
        f"((i * 13 + {w} * 17 + {v} * 29) % 101 + {w} * 1000 + {v} * 100000)::INTEGER AS z "
        f"FROM range({b0}, {b0 + BPS}) bb(b), range({ROWS}) t(i)) "
        f"TO '{store}' (FORMAT pocaduck, WORKER '{worker}', {COPY_OPTS}"
        + ("" if commit else ", COMMIT false")
        + ")"
    )


def copy_rows(s, w=0, v=0):
    """Rows (label, block, x, y, z) of statement s, computed with numpy."""
    b = np.repeat(np.arange(s * BPS, s * BPS + BPS, dtype=np.int64), ROWS)
    i = np.tile(np.arange(ROWS, dtype=np.int64), BPS)
    label = (i * 7 + b * 3 + w * 5) % L + 1
    z = (i * 13 + w * 17 + v * 29) % 101 + w * 1000 + v * 100000
    return np.stack([label, b, i, b, z], axis=1)


# pocaduck_write sessions: session k writes NW (label, block)s, block = 1000*(k+1) + j,
# label = (j*11 + k) % L + 1, P points: x = i, y = block, z = (i*13 + block) % 101.
NW = 12
P = 8000


def write_sql(store, worker, k, j, commit=False):
    """Sessions 0 and 2 buffer 1 MiB (parts are written before the commit), session 1 the default
    256 MiB (its commit encodes everything)."""
    block = 1000 * (k + 1) + j
    label = (j * 11 + k) % L + 1
    opts = "" if k == 1 else ", buffer_size := '1MiB', target_file_size := '64KiB'"
    return (
        f"FROM pocaduck_write('{store}', worker := '{worker}', label := {label}, block := {block}, "
        f"points := list_transform(range({P}), lambda i: [i, {block}, (i * 13 + {block}) % 101]), "
        f"commit := {'true' if commit else 'false'}{opts})"
    )


def write_rows(k):
    out = []
    for j in range(NW):
        block = 1000 * (k + 1) + j
        i = np.arange(P, dtype=np.int64)
        out.append(np.stack([np.full(P, (j * 11 + k) % L + 1), np.full(P, block), i, np.full(P, block),
                             (i * 13 + block) % 101], axis=1))
    return np.concatenate(out)


def canon(rows):
    """Rows as an (n, 5) int64 array sorted by every column: comparable with array_equal."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    return np.ascontiguousarray(rows[np.lexsort(rows.T[::-1])])


def union(*parts):
    parts = [p for p in parts if len(p)]
    return canon(np.concatenate(parts) if parts else np.zeros((0, 5)))


def read_rows(con, store, labels=ALL_LABELS):
    r = con.execute("SELECT label, block, x, y, z FROM pocaduck_points(?, ?)", [store, labels]).fetchnumpy()
    return canon(np.stack([r[c].astype(np.int64) for c in ("label", "block", "x", "y", "z")], axis=1))


def digest(rows):
    return hashlib.sha1(canon(rows).tobytes()).hexdigest()


def assert_same(got, want, what):
    if got.shape == want.shape and np.array_equal(got, want):
        return
    g = {tuple(r) for r in got.tolist()}
    w = {tuple(r) for r in want.tolist()}
    raise AssertionError(
        f"{what}: got {len(got)} rows ({len(g)} distinct), want {len(want)}: "
        f"{len(w - g)} missing (e.g. {sorted(w - g)[:3]}), {len(g - w)} unexpected (e.g. {sorted(g - w)[:3]}), "
        f"{len(got) - len(g)} duplicates [seed {SEED}]"
    )


def assert_index(con, store, want, what):
    """The index agrees with the expected rows too: pocaduck_labels' counts, and single-label reads
    (a scalar label) of a few labels."""
    got = dict(con.execute("SELECT label, point_count FROM pocaduck_labels(?)", [store]).fetchall())
    lab, cnt = np.unique(want[:, 0], return_counts=True)
    assert got == dict(zip(lab.tolist(), cnt.tolist())), f"{what}: pocaduck_labels disagrees [seed {SEED}]"
    for label in (1, L // 2, L):
        r = con.execute("SELECT block, x, y, z FROM pocaduck_points(?, ?::UBIGINT)", [store, label]).fetchnumpy()
        n = len(r["x"])
        rows = np.stack([np.full(n, label)] + [r[c].astype(np.int64) for c in ("block", "x", "y", "z")], axis=1)
        assert_same(canon(rows), canon(want[want[:, 0] == label]), f"{what}: label {label} alone")


def orphan_parts(con, store):
    """Part files on disk that no commit segment references (left by a killed session). Checks that
    the newest index references only parts that exist."""
    on_disk = set()
    for root, _, files in os.walk(os.path.join(store, "workers")):
        on_disk |= {os.path.relpath(os.path.join(root, f), store) for f in files
                    if f.endswith(".parquet") and os.path.basename(root) == "parts"}
    segs = os.path.join(store, "workers", "*", "commits", "*.parquet")
    committed = {r[0] for r in con.execute(f"SELECT DISTINCT part FROM read_parquet('{segs}')").fetchall()}
    gens = generations(store)
    if gens:
        used = index_parts(con, store, gens[-1])
        assert used <= on_disk, f"the index references missing parts: {sorted(used - on_disk)[:3]}"
        assert used <= committed, f"the index references uncommitted parts: {sorted(used - committed)[:3]}"
    return len(on_disk - committed)


def index_parts(con, store, gen):
    """Parts referenced by generation `gen`, read with plain DuckDB (the README's SQL)."""
    segs = con.execute(
        "SELECT ? || '/' || s.file, s.lo, s.hi FROM (SELECT unnest(segments) AS s FROM read_json(?))",
        [store, f"{store}/index/{gen:010}.json"],
    ).fetchall()
    if not segs:
        return set()
    files = sorted({f for f, _, _ in segs})
    rows = con.execute(
        "SELECT filename, label, block, worker, commit_seq, part FROM read_parquet(?, filename = true)", [files]
    ).fetchall()
    ranges = {}
    for f, lo, hi in segs:
        ranges.setdefault(f, []).append((lo, hi))
    live = [r for r in rows if any(lo <= r[1] <= hi for lo, hi in ranges[r[0]])]
    top = {}
    for _, label, block, worker, commit, _ in live:
        k = (label, block, worker)
        top[k] = max(top.get(k, 0), commit)
    return {r[5] for r in live if top[(r[1], r[2], r[3])] == r[4]}


def generations(store):
    d = os.path.join(store, "index")
    if not os.path.isdir(d):
        return []
    return sorted(int(f[:10]) for f in os.listdir(d) if re.fullmatch(r"\d{10}\.(json|duckdb)", f))


# --- child processes ------------------------------------------------------------------------------
# One generic child: loads the extension, says "ready", optionally waits for a line on stdin, then
# runs its statements in order, saying "start i" before and "done i <rows>" after each (flushed), or
# "error i <message>" and exit 3. In "read" mode it queries labels until a stop file exists and says
# "q <sha1 of the canonical rows>" per query; in "loop" mode it runs its first statement until the
# stop file exists, saying "done i <rows>" after each run.
CHILD = r"""
import hashlib, json, os, sys
import duckdb
import numpy as np
a = json.loads(sys.argv[1])
def say(*x):
    sys.stdout.write(" ".join(str(v) for v in x) + "\n")
    sys.stdout.flush()
con = duckdb.connect(config={"allow_unsigned_extensions": True})
con.execute("LOAD '" + a["extension"] + "'")
say("ready")
if a.get("wait"):
    sys.stdin.readline()
if a.get("mode") == "read":
    while not os.path.exists(a["stop"]):
        try:
            r = con.execute("SELECT label, block, x, y, z FROM pocaduck_points(?, ?)",
                            [a["store"], a["labels"]]).fetchnumpy()
        except Exception as e:
            say("error", 0, json.dumps(str(e)))
            sys.exit(3)
        rows = np.stack([r[c].astype(np.int64) for c in ("label", "block", "x", "y", "z")], axis=1)
        rows = np.ascontiguousarray(rows[np.lexsort(rows.T[::-1])])
        say("q", hashlib.sha1(rows.tobytes()).hexdigest())
    sys.exit(0)
if a.get("mode") == "loop":
    i = 0
    while not os.path.exists(a["stop"]):
        try:
            rows = con.execute(a["sql"][0]).fetchall()
        except Exception as e:
            say("error", i, json.dumps(str(e)))
            sys.exit(3)
        say("done", i, json.dumps(rows, default=str))
        i += 1
    sys.exit(0)
for i, sql in enumerate(a["sql"]):
    say("start", i)
    try:
        rows = con.execute(sql).fetchall()
    except Exception as e:
        say("error", i, json.dumps(str(e)))
        sys.exit(3)
    say("done", i, json.dumps(rows, default=str))
say("end")
"""


class Child:
    def __init__(self, sql=(), env=None, **kw):
        args = {"extension": EXTENSION, "sql": list(sql), **kw}
        self.p = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(args)], env=env and {**os.environ, **env},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.t0 = time.monotonic()
        self.lines = []
        self.eof = False
        self.stderr = ""
        self.cv = threading.Condition()
        self._out = threading.Thread(target=self._pump, daemon=True)
        self._out.start()
        self._err = threading.Thread(target=self._pump_err, daemon=True)
        self._err.start()

    def _pump(self):
        for line in self.p.stdout:
            with self.cv:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self.cv.notify_all()
        with self.cv:
            self.eof = True
            self.cv.notify_all()

    def _pump_err(self):
        self.stderr = self.p.stderr.read()

    def wait_line(self, prefix, timeout=60):
        """Time at which a line starting with `prefix` arrived (None if the child ended first)."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for t, line in self.lines:
                    if line.startswith(prefix):
                        return t
                if self.eof:
                    return None
                left = deadline - time.monotonic()
                assert left > 0, f"child said no '{prefix}' within {timeout}s: {self.lines[-3:]}"
                self.cv.wait(left)

    def go(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def kill(self):
        """SIGKILL. True if the process was still running (a crash was injected)."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)
        self._out.join(timeout=30)
        return self.p.returncode == -signal.SIGKILL

    def finish(self, timeout=120):
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError(f"child hung for {timeout}s: {self.lines[-3:]}")
        self._out.join(timeout=30)
        self._err.join(timeout=30)
        return self.p.returncode

    def ensure_dead(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def done(self):
        return {int(line.split()[1]) for _, line in self.lines if line.startswith("done ")}

    def result(self, i):
        for _, line in self.lines:
            if line.startswith(f"done {i} "):
                return json.loads(line.split(" ", 2)[2])
            if line.startswith(f"error {i} "):
                return RuntimeError(json.loads(line.split(" ", 2)[2]))
        return None

    def check_ok(self):
        rc = self.finish()
        assert rc == 0, f"child failed (rc {rc}): {self.lines[-3:]}\n{self.stderr[-2000:]}"


def spread(rng, n, lo, hi):
    """n times from lo to hi, one drawn uniformly in each of n equal slices, shuffled."""
    ts = [lo + (hi - lo) * (k + rng.random()) / n for k in range(n)]
    rng.shuffle(ts)
    return ts


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """Prints the seed first and the figures last, past pytest's output capture."""
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def show(msg):
        if capman:
            with capman.global_and_fixture_disabled():
                print("\n" + msg, flush=True)
        else:
            print(msg)

    show(f"test_crash: seed {SEED} (POCADUCK_CRASH_SEED={SEED} replays the random choices)")
    yield
    show("test_crash: " + ", ".join(f"{k}: {v}" for k, v in STATS.items()))


def rng_for(name):
    return random.Random(f"{SEED}-{name}")


# --- 1. worker crashes ----------------------------------------------------------------------------
N_STMT = 12


def consolidate_after_crash(con, store, reported):
    """Consolidate after a crash. None if nothing was ever committed (then nothing may be reported):
    the store does not exist, has no schema, or (killed between writing the schema and the first
    commit segment) has a schema but no commit, so consolidate publishes nothing (generation 0)."""
    try:
        r = con.execute("SELECT generation, new_commits FROM pocaduck_consolidate(?)", [store]).fetchone()
    except Exception as e:
        msg = str(e)
        ok = "does not exist" in msg or "is not a pocaduck store (no _pocaduck.json)" in msg
        assert ok and not reported, f"consolidate after a crash failed: {msg} (reported: {reported})"
        return None
    if r == (0, 0):
        assert not reported, f"reported commits {sorted(reported)}, but consolidate found none"
        assert generations(store) == []
        STATS["kills leaving a schema but no commit"] += 1
        return None
    assert r[0] >= 1, r
    return r


def test_worker_crash_copy(tmp_path):
    rng = rng_for("copy")
    con = connect()
    full = {s: copy_rows(s) for s in range(N_STMT)}
    prefix = {n: union(*(full[s] for s in range(n))) for n in range(1, N_STMT + 1)}
    # Calibrate: how long does the whole input take after "ready"?
    cal = str(tmp_path / "calibrate")
    c = Child([copy_sql(cal, "w1", s) for s in range(N_STMT)])
    ready = c.wait_line("ready")
    end = c.wait_line("end")
    c.check_ok()
    span = end - ready
    print(f"worker crash (COPY): the full input takes {span:.3f}s after ready")
    iterations = 8
    delays = spread(rng, iterations, 0.0, span)
    for it, delay in enumerate(delays):
        store = str(tmp_path / f"s{it}")
        sql = [copy_sql(store, "w1", s) for s in range(N_STMT)]
        reported = set()
        orphans = 0
        runs = 2 if rng.random() < 0.3 else 1  # sometimes the rerun crashes too
        for run in range(runs):
            c = Child(sql)
            try:
                c.wait_line("ready")
                time.sleep(delay if run == 0 else rng.uniform(0, span))
                if c.kill():
                    STATS["crashes injected"] += 1
                    STATS["worker crashes (COPY)"] += 1
            finally:
                c.ensure_dead()
            reported |= c.done()
            what = f"iteration {it} run {run} (killed {delay:.3f}s after ready, reported {sorted(reported)})"
            if consolidate_after_crash(con, store, reported) is None:
                continue
            got = read_rows(con, store)
            present = set((np.unique(got[:, 1]) // BPS).tolist())
            orphans_before = orphans
            assert reported <= present, f"{what}: reported statements missing: {sorted(reported - present)}"
            # Statements run in order: all present ones form a prefix, at most one beyond the reported.
            assert present == set(range(len(present))), f"{what}: present statements {sorted(present)}"
            assert len(present) <= max(reported, default=-1) + 2, f"{what}: present {sorted(present)}"
            # All or nothing per statement, nothing twice: exactly the rows of the present ones.
            want = prefix[len(present)]
            assert_same(got, want, what)
            assert_index(con, store, want, what)
            STATS["kills between a commit and its report"] += len(present) > len(reported)
            orphans = orphan_parts(con, store)
            STATS["kills leaving orphan parts"] += orphans > orphans_before
            print(f"{what}: {len(present)} of {N_STMT} statements present, {orphans} orphan parts")
        # Rerun the worker id to completion with the full input (in this process), committing
        # each COPY or (odd iterations) once at the end: its commits replace the crashed run's.
        if it % 2:
            for s in range(N_STMT):
                con.execute(copy_sql(store, "w1", s, commit=False))
            con.execute("FROM pocaduck_commit(?, worker := 'w1')", [store]).fetchall()
        else:
            for q in sql:
                con.execute(q)
        g = con.execute("SELECT generation FROM pocaduck_consolidate(?)", [store]).fetchone()[0]
        assert g == len(generations(store)) == max(generations(store))
        want = prefix[N_STMT]
        assert_same(read_rows(con, store), want, f"iteration {it}: after the rerun")
        assert_index(con, store, want, f"iteration {it}: after the rerun")


def test_worker_crash_pocaduck_write(tmp_path):
    """Sessions A and B: NW writes with commit := false, then pocaduck_commit; session C is never
    committed. Killed anywhere (often inside a commit): each session is all or nothing, a reported
    commit is present, C never is."""
    rng = rng_for("write")
    con = connect()
    rows = {k: write_rows(k) for k in range(3)}
    want_for = {frozenset(): None, frozenset({0}): union(rows[0]), frozenset({0, 1}): union(rows[0], rows[1])}

    def script(store):
        sql = []
        commit_at = {}
        for k in range(3):
            sql += [write_sql(store, "w1", k, j) for j in range(NW)]
            if k < 2:
                commit_at[k] = len(sql)
                sql.append(f"FROM pocaduck_commit('{store}', worker := 'w1')")
        return sql, commit_at

    cal = str(tmp_path / "calibrate")
    sql, commit_at = script(cal)
    c = Child(sql)
    ready = c.wait_line("ready")
    commit_span = [c.wait_line(f"done {commit_at[k]}") - c.wait_line(f"start {commit_at[k]}") for k in (0, 1)]
    end = c.wait_line("end")
    c.check_ok()
    assert [c.result(commit_at[k])[0][1] for k in (0, 1)] == [NW * P] * 2  # points committed
    span = end - ready
    print(f"worker crash (pocaduck_write): {span:.3f}s after ready, commits take "
          f"{commit_span[0]:.3f}s and {commit_span[1]:.3f}s")
    iterations = 8
    plan = [("any", None, d) for d in spread(rng, iterations // 2, 0.0, span * 1.05)]
    for k in (0, 1):  # kills inside (or just after) each commit
        n = (iterations - len(plan)) // (2 - k)
        plan += [("commit", k, d) for d in spread(rng, n, 0.0, commit_span[k] * 1.3)]
    rng.shuffle(plan)
    for it, (kind, k, delay) in enumerate(plan):
        store = str(tmp_path / f"s{it}")
        sql, commit_at = script(store)
        c = Child(sql)
        try:
            c.wait_line("ready" if k is None else f"start {commit_at[k]}")
            time.sleep(delay)
            if c.kill():
                STATS["crashes injected"] += 1
                STATS["worker crashes (pocaduck_write)"] += 1
        finally:
            c.ensure_dead()
        done = c.done()
        reported = {k for k in (0, 1) if commit_at[k] in done}
        what = f"iteration {it} ({kind} {'' if k is None else k} +{delay:.3f}s, reported commits {sorted(reported)})"
        if consolidate_after_crash(con, store, reported) is not None:
            got = read_rows(con, store)
            present = set((np.unique(got[:, 1]) // 1000 - 1).tolist())
            assert reported <= present, f"{what}: a reported commit is missing"
            assert 2 not in present, f"{what}: the never-committed session is visible"
            assert present in ({0}, {0, 1}), f"{what}: sessions present {sorted(present)}"
            # A session is visible only once its commit started.
            assert all(c.wait_line(f"start {commit_at[k]}", timeout=0.01) for k in present), what
            want = want_for[frozenset(present)]
            assert_same(got, want, what)
            assert_index(con, store, want, what)
            STATS["kills between a commit and its report"] += len(present) > len(reported)
            orphans = orphan_parts(con, store)
            STATS["kills leaving orphan parts"] += orphans > 0
            print(f"{what}: sessions present {sorted(present)}, {orphans} orphan parts")
        # Rerun sessions A and B to completion in this process.
        for q in sql[: commit_at[1] + 1]:
            con.execute(q)
        con.execute("FROM pocaduck_consolidate(?)", [store]).fetchall()
        want = want_for[frozenset({0, 1})]
        assert_same(read_rows(con, store), want, f"iteration {it}: after the rerun")
        assert_index(con, store, want, f"iteration {it}: after the rerun")


# --- 2. consolidate crashes -----------------------------------------------------------------------
# The base store: worker wa wrote statements 0..9 (content A, generation 1); then wa rewrote
# statements 0..2 with other points (variant 1) and wb (w=1) wrote statements 10..13: consolidating
# gives content B.
A_STMTS = range(10)


def content_a():
    return union(*(copy_rows(s) for s in A_STMTS))


def content_b():
    return union(*(copy_rows(s, v=1) for s in range(3)), *(copy_rows(s) for s in range(3, 10)),
                 *(copy_rows(s, w=1) for s in range(10, 14)))


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("base") / "store")
    con = connect()
    for s in A_STMTS:
        con.execute(copy_sql(store, "wa", s))
    assert con.execute("SELECT generation FROM pocaduck_consolidate(?)", [store]).fetchone() == (1,)
    for s in range(3):
        con.execute(copy_sql(store, "wa", s, v=1))
    for s in range(10, 14):
        con.execute(copy_sql(store, "wb", s, w=1))
    con.close()
    return store


def fresh_copy(base, dst):
    shutil.copytree(base, dst)
    return str(dst)


def test_consolidate_crash(tmp_path, base_store):
    rng = rng_for("consolidate")
    con = connect()
    a, b = content_a(), content_b()
    assert not np.array_equal(a, b)
    cal = fresh_copy(base_store, tmp_path / "calibrate")
    c = Child([f"FROM pocaduck_consolidate('{cal}')"])
    ready = c.wait_line("ready")
    done = c.wait_line("done 0")
    c.check_ok()
    assert c.result(0)[0][:3] == [2, 2, 7]  # generation 2, two workers, seven new commits
    assert_same(read_rows(con, cal), b, "calibration consolidate")
    assert_index(con, cal, b, "calibration consolidate")
    span = done - ready
    print(f"consolidate crash: consolidate takes {span:.3f}s after ready")
    for it, delay in enumerate(spread(rng, 8, 0.0, span * 1.2)):
        store = fresh_copy(base_store, tmp_path / f"s{it}")
        assert_same(read_rows(con, store), a, "before")
        tmp = tmp_path / f"tmp{it}"
        tmp.mkdir()
        c = Child([f"FROM pocaduck_consolidate('{store}')"], env={"TMPDIR": str(tmp)})
        try:
            c.wait_line("ready")
            time.sleep(delay)
            if c.kill():
                STATS["crashes injected"] += 1
                STATS["consolidate crashes"] += 1
        finally:
            c.ensure_dead()
        what = f"iteration {it} (killed {delay:.3f}s after ready of {span:.3f}s)"
        STATS["consolidate temp dirs left by kills"] += len(os.listdir(tmp))
        gens = generations(store)
        STATS["consolidate kills before publishing"] += gens == [1]
        assert gens in ([1], [1, 2]), f"{what}: generations {gens}"
        if c.done():
            assert gens == [1, 2], f"{what}: consolidate reported success, generations {gens}"
        got = read_rows(con, store)
        assert_same(got, a if gens == [1] else b, f"{what}, generation {gens[-1]}")
        assert_index(con, store, a if gens == [1] else b, f"{what}, generation {gens[-1]}")
        # Rerun: completes and yields B.
        r = con.execute("SELECT generation, new_commits FROM pocaduck_consolidate(?)", [store]).fetchone()
        assert r == ((2, 7) if gens == [1] else (2, 0)), f"{what}: rerun gave {r}"
        assert generations(store) == [1, 2]
        assert_same(read_rows(con, store), b, f"{what}: after the rerun")
        assert_index(con, store, b, f"{what}: after the rerun")


def test_optimize_crash(tmp_path, base_store):
    """kill -9 during pocaduck_optimize: the previous generation stays current and complete until
    the new one is published whole; a rerun completes; the content never changes."""
    rng = rng_for("optimize")
    con = connect()
    b = content_b()

    def consolidated(dst):
        store = fresh_copy(base_store, dst)
        con.execute("FROM pocaduck_consolidate(?)", [store]).fetchall()
        assert generations(store) == [1, 2]
        return store

    cal = consolidated(tmp_path / "calibrate")
    c = Child([f"SELECT generation, labels_rewritten FROM pocaduck_optimize('{cal}')"])
    ready = c.wait_line("ready")
    done = c.wait_line("done 0")
    c.check_ok()
    gen, rewritten = c.result(0)[0][:2]
    assert gen == 3 and rewritten > 0, c.result(0)
    assert_same(read_rows(con, cal), b, "calibration optimize")
    span = done - ready
    print(f"optimize crash: optimize takes {span:.3f}s after ready")
    for it, delay in enumerate(spread(rng, 6, 0.0, span * 1.2)):
        store = consolidated(tmp_path / f"o{it}")
        tmp = tmp_path / f"otmp{it}"
        tmp.mkdir()
        c = Child([f"FROM pocaduck_optimize('{store}')"], env={"TMPDIR": str(tmp)})
        try:
            c.wait_line("ready")
            time.sleep(delay)
            if c.kill():
                STATS["crashes injected"] += 1
                STATS["optimize crashes"] += 1
        finally:
            c.ensure_dead()
        what = f"optimize iteration {it} (killed {delay:.3f}s after ready of {span:.3f}s)"
        gens = generations(store)
        assert gens in ([1, 2], [1, 2, 3]), f"{what}: generations {gens}"
        if c.done():
            assert gens == [1, 2, 3], f"{what}: optimize reported success, generations {gens}"
        assert_same(read_rows(con, store), b, f"{what}, generation {gens[-1]}")
        r = con.execute("SELECT generation, labels_rewritten > 0 FROM pocaduck_optimize(?)", [store]).fetchone()
        assert r == ((3, True) if gens == [1, 2] else (3, False)), f"{what}: rerun gave {r}"
        assert_same(read_rows(con, store), b, f"{what}: after the rerun")
        ok = con.execute("SELECT bool_and(ok) FROM pocaduck_check(?)", [store]).fetchone()
        assert ok == (True,), f"{what}: pocaduck_check found problems"


# --- vacuum ---------------------------------------------------------------------------------------
VACUUM = "SELECT kind, files FROM pocaduck_vacuum('{s}', retain := INTERVAL '1 day')"


def aged(store, days=10):
    """Sets every file of `store` to `days` days old (what vacuum's retention compares)."""
    t = time.time() - days * 86400
    for root, _, files in os.walk(store):
        for f in files:
            os.utime(os.path.join(root, f), (t, t))


def shift(store, days):
    """Moves every file of `store` `days` days back in time, keeping their order."""
    d = days * 86400
    for root, _, files in os.walk(store):
        for f in files:
            p = os.path.join(root, f)
            try:
                st = os.stat(p)
                os.utime(p, (st.st_atime - d, st.st_mtime - d))
            except FileNotFoundError:
                pass  # deleted by a vacuum meanwhile


def store_files(store):
    return sorted(os.path.relpath(os.path.join(r, f), store) for r, _, fs in os.walk(store) for f in fs)


def garbage_store(con, base, dst):
    """The base store consolidated (wa's rerun of statements 0-2 supersedes its first parts) and
    optimized (fragmented labels rewritten, their parts unreferenced), plus an orphan part of a
    session that never committed; every file 10 days old. Generation 3 holds content B."""
    store = fresh_copy(base, dst)
    con.execute("FROM pocaduck_consolidate(?)", [store]).fetchall()
    con.execute("FROM pocaduck_optimize(?)", [store]).fetchall()
    parts = os.path.join(store, "workers", "wa", "parts")
    first = os.path.join(parts, sorted(os.listdir(parts))[0])
    shutil.copy(first, os.path.join(parts, "1700000000000-dead-000000.parquet"))
    # Orphans of 2000 abandoned sessions (hard links: cheap), so a vacuum lasts long enough to
    # be killed in the middle of its deletions.
    for k in range(2000):
        os.link(first, os.path.join(parts, f"1700000000000-dead{k}-000000.parquet"))
    aged(store)
    assert generations(store) == [1, 2, 3]
    return store


def assert_vacuumed(con, store, want, what):
    """Only the newest generation is left, nothing unreferenced, the content is `want`, the store
    checks clean."""
    assert generations(store) == [3], f"{what}: generations {generations(store)}"
    unref, pending = con.execute("SELECT unreferenced_files, pending_commits FROM pocaduck_stats(?)", [store]).fetchone()
    assert (unref, pending) == (0, 0), f"{what}: {unref} unreferenced parts, {pending} pending commits"
    assert_same(read_rows(con, store), want, what)
    assert_index(con, store, want, what)
    ok = con.execute("SELECT bool_and(ok) FROM pocaduck_check(?)", [store]).fetchone()
    assert ok == (True,), f"{what}: pocaduck_check found problems"


def test_vacuum_crash(tmp_path, base_store):
    """kill -9 during pocaduck_vacuum: the store stays readable with the same content and checks
    clean at every moment; a rerun deletes what the killed vacuum left."""
    rng = rng_for("vacuum")
    con = connect()
    b = content_b()
    cal = garbage_store(con, base_store, tmp_path / "calibrate")
    before = store_files(cal)
    assert_same(read_rows(con, cal), b, "before vacuum")
    c = Child([VACUUM.format(s=cal)])
    ready = c.wait_line("ready")
    done = c.wait_line("done 0")
    c.check_ok()
    deleted = dict(c.result(0))
    # Generations 1 and 2, wa's superseded and optimized-away parts plus the orphans, every commit
    # (all merged).
    commits = sum("/commits/" in f for f in before)
    assert commits == len(A_STMTS) + 3 + 4
    assert deleted["generation"] == 2 and deleted["part"] >= 2002 and deleted["commit"] == commits, deleted
    assert sum(deleted.values()) == len(before) - len(store_files(cal)), deleted
    assert not any("dead" in f for f in store_files(cal))
    assert_vacuumed(con, cal, b, "calibration vacuum")
    left = len(store_files(cal))
    span = done - ready
    print(f"vacuum crash: vacuum takes {span:.3f}s after ready, deletes {sum(deleted.values())} files")
    for it, delay in enumerate(spread(rng, 6, 0.0, span * 1.2)):
        store = garbage_store(con, base_store, tmp_path / f"v{it}")
        c = Child([VACUUM.format(s=store)])
        try:
            c.wait_line("ready")
            time.sleep(delay)
            if c.kill():
                STATS["crashes injected"] += 1
                STATS["vacuum crashes"] += 1
        finally:
            c.ensure_dead()
        what = f"vacuum iteration {it} (killed {delay:.3f}s after ready of {span:.3f}s)"
        STATS["vacuum kills mid-deletion"] += left < len(store_files(store)) < len(before)
        # Whatever the killed vacuum deleted, the store reads and checks clean now.
        assert generations(store)[-1] == 3, f"{what}: generations {generations(store)}"
        assert_same(read_rows(con, store), b, what)
        ok = con.execute("SELECT bool_and(ok) FROM pocaduck_check(?)", [store]).fetchone()
        assert ok == (True,), f"{what}: pocaduck_check found problems"
        con.execute(VACUUM.format(s=store)).fetchall()
        assert_vacuumed(con, store, b, f"{what}: after the rerun")
        assert len(store_files(store)) == left, f"{what}: {len(store_files(store))} files left, want {left}"


def test_vacuum_racing_writers_consolidate_optimize(tmp_path, base_store):
    """A child process vacuums in a loop (retain 1 day) a store whose garbage is old while this
    process writes new statements, reruns old ones, consolidates and optimizes, and a reader thread
    queries: every answer is one published content, never an error; nothing a generation published
    during a vacuum or a session in flight needs is deleted; the old garbage goes."""
    con = connect()
    store = garbage_store(con, base_store, tmp_path / "store")
    want = content_b()
    states = {digest(want)}
    stop = threading.Event()
    seen, errors = [], []

    def reader():
        rc = connect()
        while not stop.is_set():
            try:
                seen.append(digest(read_rows(rc, store)) in states)
            except Exception as e:  # noqa: BLE001 - any error is a failure
                errors.append(str(e))

    stop_file = str(tmp_path / "stop")
    vac = Child([VACUUM.format(s=store)], mode="loop", stop=stop_file)
    vac.wait_line("ready")
    assert vac.wait_line("done 0") is not None, vac.lines[-3:]
    t = threading.Thread(target=reader)
    t.start()
    try:
        for k in range(4):
            # Everything written so far becomes 10 days older (order kept): the vacuums running
            # meanwhile find superseded parts, merged commits and generations to delete while
            # this step writes, consolidates and optimizes.
            shift(store, 10)
            # wc adds statement 20 + k; wa reruns statement 3 + k with new points.
            con.execute(copy_sql(store, "wc", 20 + k, w=2))
            con.execute(copy_sql(store, "wa", 3 + k, v=2 + k))
            old = np.arange((3 + k) * BPS, (4 + k) * BPS)
            want = union(want[~np.isin(want[:, 1], old)], copy_rows(3 + k, v=2 + k), copy_rows(20 + k, w=2))
            states.add(digest(want))
            con.execute("FROM pocaduck_consolidate(?)", [store]).fetchall()
            assert_same(read_rows(con, store), want, f"step {k}, consolidated")
            if k % 2:
                con.execute("FROM pocaduck_optimize(?)", [store]).fetchall()
                assert_same(read_rows(con, store), want, f"step {k}, optimized")
    finally:
        stop.set()
        open(stop_file, "w").close()
        t.join(timeout=120)
    vac.check_ok()
    runs = [json.loads(line.split(" ", 2)[2]) for _, line in vac.lines if line.startswith("done ")]
    STATS["vacuums racing writes"] += len(runs)
    STATS["reader queries"] += len(seen)
    print(f"vacuum race: {len(runs)} vacuums, {len(seen)} reader queries")
    assert len(runs) >= 10, f"only {len(runs)} vacuums ran during the writes"
    assert errors == [], errors[:3]
    assert seen and all(seen), f"{seen.count(False)} of {len(seen)} answers were no published content"
    # The first vacuum found the old garbage; later ones what each step's shift made old.
    assert dict(runs[0])["generation"] == 2 and dict(runs[0])["part"] >= 2002, runs[0]
    later = [dict(r) for r in runs[1:]]
    assert sum(r["generation"] for r in later) >= 3, later
    assert sum(r["part"] for r in later) >= 3, later
    assert_same(read_rows(con, store), want, "after the race")
    assert_index(con, store, want, "after the race")
    ok = con.execute("SELECT bool_and(ok) FROM pocaduck_check(?)", [store]).fetchone()
    assert ok == (True,), "pocaduck_check found problems after the race"


def test_readers_during_optimize(tmp_path, base_store):
    """Reader threads query every label in a loop while pocaduck_optimize rewrites the store and
    publishes a new generation: every answer is the full content, never an error or a mixture."""
    con = connect()
    b = content_b()
    store = fresh_copy(base_store, tmp_path / "store")
    con.execute("FROM pocaduck_consolidate(?)", [store]).fetchall()
    want = digest(b)
    stop = threading.Event()
    seen, errors = [], []

    def reader():
        rc = connect()
        while not stop.is_set():
            try:
                seen.append(digest(read_rows(rc, store)) == want)
            except Exception as e:  # noqa: BLE001 - any error is a failure
                errors.append(str(e))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        gen, rewritten = con.execute("SELECT generation, labels_rewritten FROM pocaduck_optimize(?)", [store]).fetchone()
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert (gen, rewritten > 0) == (3, True)
    assert errors == [], errors[:3]
    assert seen and all(seen), f"{seen.count(False)} of {len(seen)} answers differed"
    STATS["reader queries"] += len(seen)


# --- 3. concurrency -------------------------------------------------------------------------------
PROBE = [1, 2, 30, 61]


def probe(rows):
    return canon(rows[np.isin(rows[:, 0], PROBE)])


def test_readers_during_consolidate(tmp_path, base_store):
    """Two reader threads here and one reader process query PROBE labels in a loop while three
    consolidates (here, in a child process, here) publish generations 2, 3, 4: every answer is
    exactly one generation's content, and a reader never goes back to an older one."""
    store = fresh_copy(base_store, tmp_path / "store")
    con = connect()

    def replace(rows, stmt, new):
        """rows with statement stmt's blocks (each written by one worker only) replaced by new."""
        keep = rows[~np.isin(rows[:, 1], np.arange(stmt * BPS, stmt * BPS + BPS))]
        return union(keep, new)

    states = [content_a(), content_b()]
    # Generation 3: wc (w=2) adds statements 20, 21; wa rewrites statement 3 (variant 2).
    states.append(union(replace(states[1], 3, copy_rows(3, v=2)), copy_rows(20, w=2), copy_rows(21, w=2)))
    # Generation 4: wb rewrites statement 10 (variant 1).
    states.append(replace(states[2], 10, copy_rows(10, w=1, v=1)))
    expected = [probe(s) for s in states]
    digests = {digest(e): k for k, e in enumerate(expected)}
    assert len(digests) == 4, "the probe labels must tell the generations apart"

    stop = threading.Event()
    seen = {}  # reader -> list of states
    spans = []  # (start, end) of the reader threads' queries
    busy = []  # (start, end) of the consolidates

    def reader(name):
        cur = con.cursor()
        seen[name] = []
        while not stop.is_set():
            try:
                t = time.monotonic()
                got = read_rows(cur, store, PROBE)
                spans.append((t, time.monotonic()))
            except Exception as e:  # an error is a failure
                seen[name].append(f"error: {e}")
                return
            d = digest(got)
            seen[name].append(digests.get(d, f"mixture/unknown content ({len(got)} rows)"))

    stop_file = str(tmp_path / "stop")
    proc = Child(mode="read", store=store, labels=PROBE, stop=stop_file)
    threads = [threading.Thread(target=reader, args=(f"thread{k}",)) for k in range(2)]
    try:
        proc.wait_line("ready")
        for t in threads:
            t.start()
        time.sleep(0.3)
        t = time.monotonic()
        con.execute("FROM pocaduck_consolidate(?)", [store]).fetchall()  # -> B
        busy.append((t, time.monotonic()))
        time.sleep(0.3)
        for s in (20, 21):
            con.execute(copy_sql(store, "wc", s, w=2))
        con.execute(copy_sql(store, "wa", 3, v=2))
        c = Child([f"FROM pocaduck_consolidate('{store}')"])  # -> C, in another process
        c.wait_line("start 0")
        t = time.monotonic()
        c.check_ok()
        busy.append((t, time.monotonic()))
        time.sleep(0.3)
        con.execute(copy_sql(store, "wb", 10, w=1, v=1))
        t = time.monotonic()
        con.execute("FROM pocaduck_consolidate(?)", [store]).fetchall()  # -> D
        busy.append((t, time.monotonic()))
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        open(stop_file, "w").close()
        rc = proc.finish()
    seen["process"] = [digests.get(line.split()[1], "mixture/unknown content") if line.startswith("q ")
                       else line for _, line in proc.lines if line != "ready"]
    assert rc == 0, f"reader process failed: {seen['process'][-3:]} {proc.stderr[-2000:]}"
    assert generations(store) == [1, 2, 3, 4]
    for name, states_seen in seen.items():
        STATS["reader queries"] += len(states_seen)
        print(f"{name}: {len(states_seen)} queries, generations seen {sorted(set(states_seen), key=str)}")
        bad = [s for s in states_seen if not isinstance(s, int)]
        assert not bad, f"{name}: {bad[:3]}"
        assert states_seen == sorted(states_seen), f"{name} went back to an older generation"
        assert states_seen and states_seen[-1] == 3, f"{name} never saw the last generation"
    assert {s for v in seen.values() for s in v} == {0, 1, 2, 3}, "the readers missed a generation"
    assert_same(read_rows(con, store), states[3], "final")
    assert_index(con, store, states[3], "final")
    overlapping = sum(any(q0 < c1 and c0 < q1 for c0, c1 in busy) for q0, q1 in spans)
    STATS["reader queries overlapping a consolidate"] += overlapping


# The conflict error of a consolidate that lost the race (README: "fails with a conflict and
# changes nothing"; the text is not in README's errors section). Newer builds also name optimize.
CONFLICT = re.compile(
    r"pocaduck_consolidate: store '(.*)': another consolidate (?:or optimize )?published generation (\d+) "
    r"first; nothing was changed, run (?:consolidate|it) again"
)


def test_two_consolidates_at_once(tmp_path, base_store):
    store = fresh_copy(base_store, tmp_path / "store")
    con = connect()
    want = content_b()
    gen = 1
    outcomes = []
    for rnd in range(5):
        if rnd:
            s = 30 + rnd
            con.execute(copy_sql(store, "we", s, w=3))
            want = union(want, copy_rows(s, w=3))
        cs = [Child([f"FROM pocaduck_consolidate('{store}')"], wait=True) for _ in range(2)]
        try:
            for c in cs:
                c.wait_line("ready")
            for c in cs:
                c.go()
            for c in cs:
                c.finish()
        finally:
            for c in cs:
                c.ensure_dead()
        res = [c.result(0) for c in cs]
        assert all(r is not None for r in res), [c.stderr[-2000:] for c in cs]
        won = [r for r in res if not isinstance(r, Exception) and r[0][2] > 0]
        assert len(won) == 1, f"round {rnd}: {res}"
        assert won[0][0][0] == gen + 1
        for r in res:
            if isinstance(r, Exception):
                m = CONFLICT.search(str(r))
                assert m and m.group(1) == store and int(m.group(2)) == gen + 1, f"round {rnd}: unclear error {r}"
                STATS["consolidate conflicts"] += 1
                outcomes.append("conflict")
            elif r[0][2] == 0:
                assert r[0][0] == gen + 1, f"round {rnd}: {res}"
                outcomes.append("nothing new")
        gen += 1
        assert generations(store) == list(range(1, gen + 1))
        assert_same(read_rows(con, store), want, f"round {rnd}")
        assert_index(con, store, want, f"round {rnd}")
    print(f"two consolidates at once: {outcomes}")


# --- 4. four workers at once ----------------------------------------------------------------------
def test_four_workers_at_once(tmp_path):
    """Workers 0..3 write the same blocks (statements 0..5) with their own points at the same time,
    0 and 1 committing each COPY, 2 and 3 one commit at the end; this process consolidates meanwhile.
    Workers never replace each other: the result is the union."""
    store = str(tmp_path / "store")
    con = connect()
    children = []
    for w in range(4):
        commit = w < 2
        sql = [copy_sql(store, f"w{w}", s, w=w, commit=commit) for s in range(6)]
        if not commit:
            sql.append(f"FROM pocaduck_commit('{store}', worker := 'w{w}')")
        children.append(Child(sql))
    consolidates = 0
    try:
        while any(c.p.poll() is None for c in children):
            if os.path.exists(os.path.join(store, "_pocaduck.json")):
                con.execute("FROM pocaduck_consolidate(?)", [store]).fetchall()
                consolidates += 1
            time.sleep(0.05)
        for c in children:
            c.check_ok()
    finally:
        for c in children:
            c.ensure_dead()
    con.execute("FROM pocaduck_consolidate(?)", [store]).fetchall()
    r = con.execute("SELECT workers, points FROM pocaduck_stats(?)", [store]).fetchone()
    want = union(*(copy_rows(s, w=w) for w in range(4) for s in range(6)))
    assert r == (4, len(want))
    assert_same(read_rows(con, store), want, f"four workers ({consolidates} consolidates meanwhile)")
    assert_index(con, store, want, "four workers")
