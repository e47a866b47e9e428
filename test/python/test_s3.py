"""Stores in S3, against a real S3-compatible server (moto_server) on loopback.

Gated by POCADUCK_TEST_S3=1 (scripts/test.sh sets it). The same workload runs against a local
directory and an s3:// store; every answer must be identical. Plus: K = 4 worker processes
writing one S3 store at once, consolidate races, optimize, check, settings instead of the
environment, and prompt, clear errors for a missing bucket or a dead endpoint.
"""
import os
import subprocess
import sys
import textwrap
import time
import uuid

import duckdb
import numpy as np
import pytest

from conftest import EXTENSION, connect
from s3server import S3Server, enabled

pytestmark = pytest.mark.skipif(not enabled(), reason="set POCADUCK_TEST_S3=1 to run against a local S3 server (scripts/test.sh does)")


@pytest.fixture(scope="module")
def s3():
    srv = S3Server()
    saved = {k: os.environ.get(k) for k in srv.env}
    os.environ.update(srv.env)
    srv.bucket("pocaduck-test")
    yield srv
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    srv.stop()


def url():
    # Capital scheme: DuckDB 2.0 routes lower-case s3:// COPY targets through httpfs (see README).
    return f"S3://pocaduck-test/{uuid.uuid4().hex}/store"


WORKLOAD = [
    "COPY (SELECT (i % 50)::UBIGINT, 10 * {w} + i % 7, i::INT, (2 * i)::INT, {w}::INT, (i % 3)::INT FROM range(40000) t(i)) TO '{s}' (FORMAT pocaduck, WORKER 'w{w}', ATTRIBUTES 'sv', TARGET_FILE_SIZE '64KB')",
]
QUERIES = [
    "SELECT * FROM pocaduck_consolidate('{s}')",
    "SELECT label, point_count, block_count FROM pocaduck_labels('{s}') ORDER BY label",
    "SELECT block, point_count FROM pocaduck_blocks('{s}', 7) ORDER BY block",
    "SELECT x, y, z, sv, block FROM pocaduck_points('{s}', 7) ORDER BY ALL",
    "SELECT label, count(*), sum(x), sum(sv) FROM pocaduck_points('{s}', [0, 13, 49, 999]) GROUP BY label ORDER BY label",
    "SELECT count(*), sum(x) FROM pocaduck_points('{s}', 3, bbox := [0, 0, 0, 999, 100000, 1])",
    "SELECT label, count(*) FROM pocaduck_points_in_box('{s}', [100, 0, 0, 300, 100000, 2]) GROUP BY label ORDER BY label",
    "SELECT generation, labels, labels_rewritten, points_rewritten FROM pocaduck_optimize('{s}')",
    "SELECT x, y, z, sv, block FROM pocaduck_points('{s}', 7) ORDER BY ALL",
    "SELECT generation, workers, commits, pending_commits, labels, points, entries, fragmented_labels FROM pocaduck_stats('{s}')",
    "SELECT ok, regexp_extract(message, '\\d+ entries, \\d+ points checked; \\d+ problem') FROM pocaduck_check('{s}')",
]


def run_all(con, store):
    for w in range(3):
        con.execute(WORKLOAD[0].format(w=w, s=store))
    con.execute(f"FROM pocaduck_write('{store}', worker := 'w9', label := 7, block := 99, points := [[1, 2, 3, 4], [5, 6, 7, 8]], attributes := ['sv'], commit := true)").fetchall()
    return [con.execute(q.format(s=store)).fetchall() for q in QUERIES]


def test_same_answers_local_and_s3(s3, tmp_path):
    con = connect()
    local = run_all(con, str(tmp_path / "local"))
    remote_url = url()
    remote = run_all(con, remote_url)
    for q, a, b in zip(QUERIES, local, remote):
        assert a == b, f"{q}: local {a[:5]} != s3 {b[:5]}"
    # Independent check of one answer: label 7 has 800 points per worker, plus 2 written.
    assert len(local[3]) == 3 * 800 + 2
    # The store really is in the bucket: parts, commits, index generations.
    prefix = remote_url.split("pocaduck-test/")[1] + "/"
    keys = s3.keys("pocaduck-test", prefix)
    assert any("/index/0000000002.json" in k for k in keys), keys[:10]
    assert any("/segments/" in k for k in keys), keys[:10]
    assert any("/optimized/" in k for k in keys)
    assert sum("/commits/" in k for k in keys) == 4


def explain(con, store, label):
    return con.execute(
        f"SELECT list_requests, get_requests, bytes_fetched, rows_returned, parts FROM pocaduck_explain('{store}', {label})"
    ).fetchone()


def test_requests_and_bytes_per_query(s3):
    con = connect()
    store = url()
    con.execute(WORKLOAD[0].format(w=0, s=store))
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    # Within pocaduck_max_staleness of the last check no LIST is made ('auto' is 1 s on S3; an
    # hour here, so that a slow machine cannot turn the warm query into a checking one).
    con.execute("SET pocaduck_max_staleness = '1 hour'")
    con.execute(f"FROM pocaduck_points('{store}', 1)").fetchall()  # warm the caches
    lists, gets, fetched, n, parts = explain(con, store, 7)
    print(f"\ns3 per-label query (warm): {lists} LIST, {gets} GET, {fetched} bytes for {n} points in {parts} part(s)")
    assert n == 800
    assert lists == 0
    assert 1 <= gets <= 4 * parts
    assert 0 < fetched < 200_000
    con.execute("SET pocaduck_max_staleness = '0'")
    assert explain(con, store, 7)[0] >= 1  # the index directory, for a newer generation
    # Optimized, a small label lies in one part: a warm query is one GET of the index row group
    # and one of the label's pages (all columns' pages within 1 MiB: one request).
    con.execute("SET pocaduck_max_staleness = '1 hour'")
    con.execute(f"FROM pocaduck_optimize('{store}')").fetchall()
    con.execute(f"FROM pocaduck_points('{store}', 1)").fetchall()
    lists, gets, fetched, n, parts = explain(con, store, 7)
    print(f"s3 per-label query (warm, optimized): {lists} LIST, {gets} GET, {fetched} bytes for {n} points in {parts} part(s)")
    assert (n, parts) == (800, 1)
    assert lists + gets <= 2, (lists, gets)


def test_a_cold_reader_lists_nothing(s3):
    """A fresh process's first query of an optimized store: the head manifest (a copy of the
    newest manifest), read when the store is opened to prove the bucket and credentials, is the
    generation (no LIST), then the index segment's row group (located through the manifest's
    row-group directory, without the segment's footer), the part's footer and the label's
    pages (4 GETs in all). A missing store and a store never consolidated still get their
    errors."""
    con = connect()
    store = url()
    con.execute(WORKLOAD[0].format(w=0, s=store))
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    con.execute(f"FROM pocaduck_optimize('{store}')").fetchall()
    code = textwrap.dedent(f"""
        import duckdb
        con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
        con.execute("LOAD '{EXTENSION}'")
        print(con.execute("SELECT list_requests, get_requests, rows_returned FROM pocaduck_explain('{store}', 7)").fetchone())
        for s in ('{store}-missing', '{store}-unconsolidated'):
            if s.endswith('unconsolidated'):
                con.execute(f"COPY (SELECT 1::UBIGINT, 0, 1, 2, 3) TO '{{s}}' (FORMAT pocaduck, WORKER 'w')")
            try:
                con.execute(f"FROM pocaduck_points('{{s}}', 1)").fetchall()
            except duckdb.Error as e:
                print(str(e).splitlines()[0])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    lists, gets, n = eval(lines[0])
    print(f"\ns3 per-label query (cold, optimized): {lists} LIST, {gets} GET for {n} points")
    assert n == 800
    assert (lists, gets) == (0, 4), (lists, gets)
    assert lines[1].endswith("-missing': does not exist"), lines[1]
    assert "-unconsolidated': has no unified index yet" in lines[2], lines[2]


def test_a_manifest_without_row_group_directories_is_read_through_the_footers(s3):
    """Manifests written before row-group directories (no "dir" in their segments) still read
    the same, through each segment's footer: one GET more for a cold query."""
    import json
    store = url()
    con = connect()
    con.execute(WORKLOAD[0].format(w=0, s=store))
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    con.execute(f"FROM pocaduck_optimize('{store}')").fetchall()
    query = "SELECT label, count(*), sum(x), sum(sv) FROM pocaduck_points('{s}', [0, 7, 13, 49]) GROUP BY label ORDER BY label"
    want = con.execute(query.format(s=store)).fetchall()
    prefix = store.split("pocaduck-test/", 1)[1]
    keys = sorted(k for k in s3.keys("pocaduck-test", prefix + "/index/") if not k.endswith("/HEAD.json"))
    body = json.loads(s3.client.get_object(Bucket="pocaduck-test", Key=keys[-1])["Body"].read())
    assert all("dir" in seg for seg in body["segments"]), body["segments"]
    for seg in body["segments"]:
        del seg["dir"]
    body["generation"] += 1
    name = keys[-1].rsplit("/", 1)[0] + f"/{body['generation']:010}.json"
    s3.client.put_object(Bucket="pocaduck-test", Key=name, Body=json.dumps(body).encode())
    # Published as pocaduck publishes: the head manifest follows.
    s3.client.put_object(Bucket="pocaduck-test", Key=prefix + "/index/HEAD.json", Body=json.dumps(body).encode())
    code = textwrap.dedent(f"""
        import duckdb
        con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
        con.execute("LOAD '{EXTENSION}'")
        print(con.execute("SELECT list_requests, get_requests FROM pocaduck_explain('{store}', 7)").fetchone())
        print(con.execute("SELECT generation FROM pocaduck_stats('{store}')").fetchone()[0])
        print(con.execute("{query.format(s=store)}").fetchall())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert eval(lines[0]) == (0, 5), lines[0]
    assert int(lines[1]) == body["generation"]
    assert eval(lines[2]) == want


def cold(store, *queries, setup=""):
    """Each query's rows, run by a fresh process (nothing cached), after its explain of label 2
    (LIST and GET requests), after `setup` (a statement)."""
    code = textwrap.dedent(f"""
        import duckdb
        con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
        con.execute("LOAD '{EXTENSION}'")
        if {setup!r}:
            con.execute({setup!r}).fetchall()
        print(con.execute("SELECT list_requests, get_requests FROM pocaduck_explain('{store}', 2)").fetchone())
        for q in {list(queries)!r}:
            print(con.execute(q).fetchall())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [eval(line) for line in out.stdout.strip().splitlines()]


def test_the_head_manifest_follows_each_publication_and_is_repaired(s3):
    """Each publication on an object store replaces index/HEAD.json with a copy of its manifest;
    a cold reader reads it instead of listing index/. A head left behind (a consolidate that
    died between publishing and replacing it) serves the generation before, which
    pocaduck_check reports and the next consolidate repairs. A corrupt head and a missing head
    (a store consolidated before head manifests) are read through the listing of index/; a head
    naming a generation the store does not hold is reported; the next consolidate replaces
    each."""
    import json
    store = url()
    prefix = store.split("pocaduck-test/", 1)[1] + "/index/"
    con = connect()

    def obj(name):
        return s3.client.get_object(Bucket="pocaduck-test", Key=prefix + name)["Body"].read()

    def put_head(body):
        s3.client.put_object(Bucket="pocaduck-test", Key=prefix + "HEAD.json", Body=body)

    def problems():
        ok, file, msg = con.execute(f"SELECT ok, file, message FROM pocaduck_check('{store}')").fetchone()
        return ok, f"{file}: {msg}"

    def write(label):
        con.execute(f"COPY (SELECT {label}::UBIGINT, 0, i::INT, 1, 2 FROM range(5) t(i)) TO '{store}' (FORMAT pocaduck, WORKER 'w1')")
        return con.execute(f"SELECT generation FROM pocaduck_consolidate('{store}')").fetchone()[0]

    count = f"SELECT count(*) FROM pocaduck_points('{store}', 2)"
    assert write(1) == 1
    first = obj("HEAD.json")
    assert json.loads(first) == json.loads(obj("0000000001.json"))
    assert write(2) == 2
    assert json.loads(obj("HEAD.json")) == json.loads(obj("0000000002.json"))
    con.execute(f"FROM pocaduck_optimize('{store}')").fetchall()
    assert json.loads(obj("HEAD.json")) == json.loads(obj("0000000003.json"))
    ok, msg = problems()
    assert ok, msg
    got = cold(store, count)
    assert got[1:] == [[(5,)]], got
    # Left behind: generation 1, without label 2, until a consolidate (with nothing new) repairs it.
    put_head(first)
    # (Held for an hour: with the default 1 s a slow machine's next statement would list anew.)
    (lists, _), rows = cold(store, count, setup="SET pocaduck_max_staleness = '1 hour'")
    assert (lists, rows) == (0, [(0,)]), (lists, rows)
    ok, msg = problems()
    assert not ok and "index/HEAD.json: names generation 1, not the newest (3)" in msg, msg
    # Not when the process saw a newer generation first (the read by number opens the store,
    # reading the head, and lists index/), nor with strict freshness.
    (lists, _), rows = cold(store, count, setup=f"FROM pocaduck_points('{store}', 2, generation := 3)")
    assert (lists, rows) == (1, [(5,)]), (lists, rows)
    (lists, _), rows = cold(store, count, setup="SET pocaduck_max_staleness = '0'")
    assert (lists, rows) == (1, [(5,)]), (lists, rows)
    assert con.execute(f"SELECT generation, new_commits FROM pocaduck_consolidate('{store}')").fetchone() == (3, 0)
    assert json.loads(obj("HEAD.json"))["generation"] == 3
    assert cold(store, count)[1:] == [[(5,)]]
    # Vacuum repairs it before deleting generations (here 1 and 2, which it names).
    put_head(first)
    con.execute(f"FROM pocaduck_vacuum('{store}', retain := INTERVAL '0 seconds', force := true)").fetchall()
    assert json.loads(obj("HEAD.json")) == json.loads(obj("0000000003.json"))
    assert cold(store, count)[1:] == [[(5,)]]
    # Corrupt, naming a generation the store does not hold, missing: read through the listing.
    gone = json.loads(obj("0000000003.json"))
    gone["generation"] = 9
    # (A head naming a generation the store does not hold is trusted by cold readers: only a
    # listing could tell; its segments here are generation 3's.)
    for bad, says, listed in [(b"{garbage", "corrupt generation manifest", 1), (json.dumps(gone).encode(), "names generation 9, which the store does not hold", 0), (None, None, 1)]:
        if bad is None:
            s3.client.delete_object(Bucket="pocaduck-test", Key=prefix + "HEAD.json")
        else:
            put_head(bad)
        (lists, gets), rows = cold(store, count)
        assert (lists, rows) == (listed, [(5,)]), (bad, lists, rows)
        ok, msg = problems()
        if says is None:
            assert ok, msg
        else:
            assert not ok and says in msg, msg
        assert con.execute(f"SELECT generation, new_commits FROM pocaduck_consolidate('{store}')").fetchone() == (3, 0)
        assert json.loads(obj("HEAD.json")) == json.loads(obj("0000000003.json"))
        ok, msg = problems()
        assert ok, msg


def test_max_staleness_bounds_how_late_another_process_is_seen(s3):
    """A reader holds the generation it saw for at most pocaduck_max_staleness; another
    process's consolidate is seen once the bound has passed (or at once with '0'); its own
    process's consolidate is seen at once."""
    store = url()
    con = connect()
    con.execute(f"COPY (SELECT 1::UBIGINT, 0, 1, 2, 3) TO '{store}' (FORMAT pocaduck, WORKER 'w1')")
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    con.execute("SET pocaduck_max_staleness = '1 hour'")
    count = f"SELECT count(*) FROM pocaduck_points('{store}', 1)"
    assert con.execute(count).fetchone() == (1,)
    code = f"""
import duckdb
con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
con.execute("LOAD '{EXTENSION}'")
con.execute("COPY (SELECT 1::UBIGINT, 1, 4, 5, 6) TO '{store}' (FORMAT pocaduck, WORKER 'w2')")
print(con.execute("SELECT generation FROM pocaduck_consolidate('{store}')").fetchone()[0])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"
    assert con.execute(count).fetchone() == (1,)  # held: checked less than an hour ago
    con.execute("SET pocaduck_max_staleness = '0'")
    assert con.execute(count).fetchone() == (2,)
    con.execute("SET pocaduck_max_staleness = '1 hour'")
    con.execute(f"COPY (SELECT 1::UBIGINT, 2, 7, 8, 9) TO '{store}' (FORMAT pocaduck, WORKER 'w1')")
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    assert con.execute(count).fetchone() == (3,)  # this process's own generation, at once
    con.execute("SET pocaduck_max_staleness = 'soon'")
    with pytest.raises(duckdb.Error, match="pocaduck_points: .*pocaduck_max_staleness.*must be a duration"):
        con.execute(count).fetchall()


def test_four_worker_processes_write_one_s3_store(s3):
    store = url()
    code = textwrap.dedent(f"""
        import sys, duckdb
        w = int(sys.argv[1])
        con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
        con.execute("LOAD '{EXTENSION}'")
        for k in range(3):
            con.execute(f"COPY (SELECT (i % 97)::UBIGINT, {{w}} * 100 + {{k}}, i::INT, {{w}}::INT, {{k}}::INT FROM range(20000) t(i)) TO '{store}' (FORMAT pocaduck, WORKER 'w{{w}}')")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)], env=os.environ.copy()) for w in range(4)]
    assert [p.wait(300) for p in procs] == [0, 0, 0, 0]
    con = connect()
    gen, workers, commits = con.execute(f"SELECT generation, workers, new_commits FROM pocaduck_consolidate('{store}')").fetchone()
    assert (workers, commits) == (4, 12)
    # Expected with numpy: every worker wrote 3 x 20000 rows, label = i % 97.
    i = np.arange(20000)
    want = np.bincount(i % 97, minlength=97) * 4 * 3
    got = dict(con.execute(f"SELECT label, point_count FROM pocaduck_labels('{store}')").fetchall())
    assert [got[l] for l in range(97)] == want.tolist()
    # Nothing duplicated at the row level: (x, y, z) unique per label (y = worker, z = statement).
    dup = con.execute(f"SELECT count(*) - count(DISTINCT (x, y, z)) FROM pocaduck_points('{store}', 5)").fetchone()
    assert dup == (0,)


def test_concurrent_consolidates_on_s3_one_wins(s3):
    store = url()
    con = connect()
    con.execute(WORKLOAD[0].format(w=0, s=store))
    code = f"""
import duckdb
con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
con.execute("LOAD '{EXTENSION}'")
try:
    print(con.execute("SELECT generation, new_commits FROM pocaduck_consolidate('{store}')").fetchone())
except Exception as e:
    print("ERR", e)
"""
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy()) for _ in range(2)]
    outs = [p.communicate(120)[0].strip() for p in procs]
    published = [o for o in outs if o == "(1, 1)"]
    assert len(published) >= 1, outs
    for o in outs:
        assert o in ("(1, 1)", "(1, 0)") or ("another consolidate or optimize published generation 1 first" in o), outs
    keys = s3.keys("pocaduck-test", store.split("pocaduck-test/")[1] + "/index/")
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["0000000001.json", "HEAD.json"], keys
    body = lambda k: s3.client.get_object(Bucket="pocaduck-test", Key=k)["Body"].read()  # noqa: E731
    assert body(sorted(keys)[0]) == body(sorted(keys)[1])


def test_settings_instead_of_environment(s3, tmp_path):
    store = url()
    code = f"""
import duckdb
con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
con.execute("LOAD '{EXTENSION}'")
con.execute("SET pocaduck_storage_options = 'aws_endpoint={s3.endpoint}, aws_allow_http=true, aws_access_key_id=testing, aws_secret_access_key=testing, aws_region=us-east-1'")
con.execute("COPY (SELECT 1::UBIGINT, 1, 2, 3, 4) TO '{store}' (FORMAT pocaduck, WORKER 'w1')")
con.execute("FROM pocaduck_consolidate('{store}')").fetchall()
print(con.execute("SELECT x, y, z FROM pocaduck_points('{store}', 1)").fetchall())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[(2, 3, 4)]"


def test_storage_options_follow_the_connection(s3, tmp_path):
    """Issue 10, finding 5: `SET pocaduck_storage_options` belongs to the connection that set it.
    Two S3 servers hold different stores under the same URL; two connections (two databases of
    one process, which share the extension) point at one each. A statement prepared on one
    connection keeps its connection's endpoint however the other connection's statements (or a
    third connection that never ran SET) interleave; before, every bind overwrote one process-wide
    value and the prepared statement read the other server's store."""
    other = S3Server()
    try:
        other.bucket("pocaduck-test")
        store = url()
        cons = []
        for srv, x in ((s3, 1), (other, 2)):
            c = connect()
            c.execute(
                f"SET pocaduck_storage_options = 'aws_endpoint={srv.endpoint}, aws_allow_http=true, "
                "aws_access_key_id=testing, aws_secret_access_key=testing, aws_region=us-east-1'"
            )
            c.execute(f"COPY (SELECT 1::UBIGINT, 0, {x}, 0, 0 FROM range({x})) TO '{store}' (FORMAT pocaduck, WORKER 'w')")
            assert c.execute(f"SELECT generation FROM pocaduck_consolidate('{store}')").fetchone() == (1,)
            cons.append(c)
        a, b = cons
        plain = connect()  # never runs SET: the environment's endpoint (the first server)
        q = f"SELECT count(*), max(x) FROM pocaduck_points('{store}', 1)"
        a.execute(f"PREPARE qa AS {q}")
        b.execute(f"PREPARE qb AS {q}")
        for _ in range(3):
            assert b.execute(q).fetchone() == (2, 2)
            assert a.execute("EXECUTE qa").fetchone() == (1, 1)
            assert plain.execute(q).fetchone() == (1, 1)
            assert b.execute("EXECUTE qb").fetchone() == (2, 2)
            assert a.execute(q).fetchone() == (1, 1)
            assert b.execute("EXECUTE qb").fetchone() == (2, 2)
        # Writes too: a COPY bound on b writes to b's server.
        b.execute(f"COPY (SELECT 2::UBIGINT, 0, 7, 0, 0) TO '{store}' (FORMAT pocaduck, WORKER 'w')")
        assert b.execute(f"SELECT generation FROM pocaduck_consolidate('{store}')").fetchone() == (2,)
        assert b.execute(f"SELECT x FROM pocaduck_points('{store}', 2)").fetchall() == [(7,)]
        assert a.execute(f"SELECT generation FROM pocaduck_stats('{store}')").fetchone() == (1,)
        prefix = store.split("pocaduck-test/")[1] + "/"
        assert sum("commits/" in k for k in other.keys("pocaduck-test", prefix)) == 2
        assert sum("commits/" in k for k in s3.keys("pocaduck-test", prefix)) == 1
        # A worker's open session belongs to the options that opened it: another connection's
        # statement for that worker is refused, not written through the session's client.
        a.execute(f"COPY (SELECT 3::UBIGINT, 0, 8, 0, 0) TO '{store}' (FORMAT pocaduck, WORKER 'x', COMMIT false)")
        for stmt in (
            f"COPY (SELECT 3::UBIGINT, 0, 9, 0, 0) TO '{store}' (FORMAT pocaduck, WORKER 'x')",
            f"FROM pocaduck_commit('{store}', worker := 'x')",
        ):
            with pytest.raises(duckdb.Error, match="worker 'x' has an open session .* opened with other storage options"):
                b.execute(stmt).fetchall()
        assert a.execute(f"SELECT points FROM pocaduck_commit('{store}', worker := 'x')").fetchone() == (1,)
        assert sum("workers/x/commits/" in k for k in s3.keys("pocaduck-test", prefix)) == 1
        assert not any("workers/x/" in k for k in other.keys("pocaduck-test", prefix))
    finally:
        other.stop()


def test_missing_bucket_and_dead_endpoint_fail_fast_naming_the_store(s3):
    con = connect()
    t = time.time()
    with pytest.raises(Exception) as e:
        con.execute("FROM pocaduck_points('s3://no-such-bucket/x', 1)").fetchall()
    assert "pocaduck_points: store 's3://no-such-bucket/x': cannot be listed" in str(e.value)
    assert "NoSuchBucket" in str(e.value)
    assert time.time() - t < 10
    con.execute("SET pocaduck_storage_options = 'aws_endpoint=http://127.0.0.1:9, aws_allow_http=true'")
    t = time.time()
    with pytest.raises(Exception) as e:
        con.execute("COPY (SELECT 1::UBIGINT, 1, 2, 3, 4) TO 'S3://pocaduck-test/dead' (FORMAT pocaduck, WORKER 'w1')")
    assert "store 'S3://pocaduck-test/dead': cannot be listed" in str(e.value)
    assert time.time() - t < 60, time.time() - t
    con.execute("SET pocaduck_storage_options = ''")


def test_store_rewritten_under_the_same_url_is_not_read_from_stale_caches(s3):
    """Delete a store and write another one at the same URL, within the same second: readers (in
    this process and the on-disk index cache) must see the new content."""
    store = url()
    prefix = store.split("pocaduck-test/")[1] + "/"
    con = connect()
    for round_, n in enumerate([5, 7]):
        for k in s3.keys("pocaduck-test", prefix):
            s3.client.delete_object(Bucket="pocaduck-test", Key=k)
        con.execute(f"COPY (SELECT 1::UBIGINT, 0, i::INT, {round_}, 0 FROM range({n}) t(i)) TO '{store}' (FORMAT pocaduck, WORKER 'w1')")
        assert con.execute(f"SELECT generation FROM pocaduck_consolidate('{store}')").fetchone() == (1,)
        assert con.execute(f"SELECT count(*), max(y) FROM pocaduck_points('{store}', 1)").fetchone() == (n, round_)


def test_vacuum_on_s3(s3):
    """Rerun + consolidate + optimize + vacuum(retain 0, forced) on S3: only the newest generation
    and what it references remain, the report matches the objects gone, and every label reads as
    numpy says. With the default retention, nothing (all young) is deleted."""
    store = url()
    prefix = store.split("pocaduck-test/")[1] + "/"
    con = connect()
    copy = "COPY (SELECT (i % 50)::UBIGINT, {b} + i % 7, (i + {dx})::INT, 0, 0 FROM range(40000) t(i)) TO '{s}' (FORMAT pocaduck, WORKER '{w}', TARGET_FILE_SIZE '64KB')"
    con.execute(copy.format(b=0, dx=0, s=store, w="w0"))
    con.execute(copy.format(b=10, dx=0, s=store, w="w1"))
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    # w0 again with other points: its first parts are superseded.
    con.execute(copy.format(b=0, dx=10**6, s=store, w="w0"))
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    assert con.execute(f"SELECT generation FROM pocaduck_optimize('{store}')").fetchone() == (3,)
    unref = con.execute(f"SELECT unreferenced_files FROM pocaduck_stats('{store}')").fetchone()[0]
    assert unref > 0
    before = set(s3.keys("pocaduck-test", prefix))
    # Time travel: generation 1 has w0's first points.
    assert con.execute(f"SELECT min(x) FROM pocaduck_points('{store}', 0, generation := 1) WHERE block < 10").fetchone() == (0,)
    assert con.execute(f"SELECT min(x) FROM pocaduck_points('{store}', 0) WHERE block < 10").fetchone() == (10**6,)
    young = dict(con.execute(f"SELECT kind, files FROM pocaduck_vacuum('{store}')").fetchall())
    assert sum(young.values()) == 0, young
    assert set(s3.keys("pocaduck-test", prefix)) == before
    r = {k: (f, b) for k, f, b in con.execute(f"SELECT kind, files, bytes FROM pocaduck_vacuum('{store}', retain := INTERVAL '0 seconds', force := true)").fetchall()}
    after = set(s3.keys("pocaduck-test", prefix))
    gone = before - after
    assert sum(f for f, _ in r.values()) == len(gone), (r, sorted(gone)[:5])
    assert r["generation"][0] == 2 and r["part"][0] == unref and r["staging"] == (0, 0), r
    assert r["commit"][0] == 3 and not any("/commits/" in k for k in after)
    # The newest generation, and the head manifest (its copy), which vacuum never deletes.
    assert sorted(k for k in after if "/index/" in k) == [prefix + "index/0000000003.json", prefix + "index/HEAD.json"]
    # Every label as numpy says: w0's points moved by 10^6, w1's not.
    i = np.arange(40000)
    want = {l: (2 * int((i % 50 == l).sum()), int(((i + 10**6) * (i % 50 == l)).sum() + (i * (i % 50 == l)).sum())) for l in range(50)}
    got = {l: (n, int(sx)) for l, n, sx in con.execute(f"SELECT label, count(*), sum(x) FROM pocaduck_points('{store}', range(50)::UBIGINT[]) GROUP BY label").fetchall()}
    assert got == want
    assert con.execute(f"SELECT unreferenced_files, pending_commits FROM pocaduck_stats('{store}')").fetchone() == (0, 0)
    with pytest.raises(duckdb.Error, match="does not hold generation 1 \\(vacuumed, or never published\\); it holds generations 3..=3"):
        con.execute(f"FROM pocaduck_points('{store}', 0, generation := 1)").fetchall()
    assert con.execute(f"SELECT generation, labels, points FROM pocaduck_generations('{store}')").fetchall() == [(3, 50, 80000)]
    assert con.execute(f"SELECT bool_and(ok) FROM pocaduck_check('{store}')").fetchone() == (True,)
