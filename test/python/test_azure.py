"""Stores in Azure Blob Storage (az://), against a real emulator (Azurite, from npm) on loopback.

Gated by POCADUCK_TEST_AZURE=1 (scripts/test.sh sets it; scripts/setup.sh installs Azurite into
.venv/node). The S3 workload (test_s3.py) runs against a local directory and an az:// store and
every answer must be identical; plus worker processes writing one store at once, a second
process reading it, racing consolidates (put-if-absent is Azure's If-None-Match: *), a part large
enough for a block upload (Put Block / Put Block List), optimize, vacuum, check, explain's request
counts (Azure serves no suffix ranges: footers cost a HEAD first), and settings instead of the
environment.

gs:// has no such test: neither GCS emulator on the registries serves the XML API that
object_store's GCS client speaks (see the README's object-store section).
"""
import json
import os
import subprocess
import sys
import textwrap
import uuid

import duckdb
import numpy as np
import pytest

from azurite import ACCOUNT, KEY, Azurite, enabled
from conftest import EXTENSION, connect
from test_s3 import QUERIES, WORKLOAD, run_all

pytestmark = pytest.mark.skipif(not enabled(), reason="set POCADUCK_TEST_AZURE=1 to run against a local Azurite (scripts/test.sh does)")

CONTAINER = "pocaduck-test"


@pytest.fixture(scope="module")
def az():
    srv = Azurite()
    saved = {k: os.environ.get(k) for k in srv.env}
    os.environ.update(srv.env)
    try:
        srv.container(CONTAINER)
        yield srv
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        srv.stop()


def url():
    # Capital scheme: DuckDB 2.0 routes lower-case az:// COPY targets through its azure extension.
    return f"AZ://{CONTAINER}/{uuid.uuid4().hex}/store"


def prefix_of(store):
    return store.split(CONTAINER + "/")[1] + "/"


def test_same_answers_local_and_azure(az, tmp_path):
    con = connect()
    local = run_all(con, str(tmp_path / "local"))
    remote_url = url()
    remote = run_all(con, remote_url)
    for q, a, b in zip(QUERIES, local, remote):
        assert a == b, f"{q}: local {a[:5]} != az {b[:5]}"
    assert len(local[3]) == 3 * 800 + 2
    keys = az.keys(CONTAINER, prefix_of(remote_url))
    assert any("/index/0000000002.json" in k for k in keys), keys[:10]
    assert any("/segments/" in k for k in keys), keys[:10]
    assert any("/optimized/" in k for k in keys)
    assert sum("/commits/" in k for k in keys) == 4


def test_worker_processes_write_and_another_process_reads(az):
    """Three processes write one store at once; the consolidated store is exact against numpy,
    and a fresh process (its own client, no caches) reads the same answers."""
    store = url()
    code = textwrap.dedent(f"""
        import sys, duckdb
        w = int(sys.argv[1])
        con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
        con.execute("LOAD '{EXTENSION}'")
        for k in range(2):
            con.execute(f"COPY (SELECT (i % 97)::UBIGINT, {{w}} * 100 + {{k}}, i::INT, {{w}}::INT, {{k}}::INT FROM range(20000) t(i)) TO '{store}' (FORMAT pocaduck, WORKER 'w{{w}}')")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)], env=os.environ.copy()) for w in range(3)]
    assert [p.wait(300) for p in procs] == [0, 0, 0]
    con = connect()
    workers, commits = con.execute(f"SELECT workers, new_commits FROM pocaduck_consolidate('{store}')").fetchone()
    assert (workers, commits) == (3, 6)
    i = np.arange(20000)
    want = np.bincount(i % 97, minlength=97) * 3 * 2
    got = dict(con.execute(f"SELECT label, point_count FROM pocaduck_labels('{store}')").fetchall())
    assert [got[l] for l in range(97)] == want.tolist()
    # Label 5's points exactly: x = i for i % 97 == 5, y = worker, z = statement.
    xs = i[i % 97 == 5]
    want5 = sorted((int(x), w, k) for x in xs for w in range(3) for k in range(2))
    points = f"SELECT x, y, z FROM pocaduck_points('{store}', 5) ORDER BY ALL"
    assert con.execute(points).fetchall() == want5
    blocks = f"SELECT block, point_count FROM pocaduck_blocks('{store}', 5) ORDER BY block"
    assert con.execute(blocks).fetchall() == [(w * 100 + k, len(xs)) for w in range(3) for k in range(2)]
    assert con.execute(f"SELECT bool_and(ok) FROM pocaduck_check('{store}')").fetchone() == (True,)
    reader = textwrap.dedent(f"""
        import duckdb
        con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
        con.execute("LOAD '{EXTENSION}'")
        print(con.execute("{points}").fetchall())
        print(con.execute("{blocks}").fetchall())
    """)
    r = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(want5), str(con.execute(blocks).fetchall())]


def test_concurrent_consolidates_one_wins(az):
    """Generations are numbered by put-if-absent (Put Blob with If-None-Match: *, which Azurite
    honours): of three processes consolidating at once, exactly one publishes generation 1."""
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
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy()) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert len([o for o in outs if o == "(1, 1)"]) == 1, outs
    for o in outs:
        assert o in ("(1, 1)", "(1, 0)") or ("another consolidate or optimize published generation 1 first" in o), outs
    keys = az.keys(CONTAINER, prefix_of(store) + "index/")
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["0000000001.json", "HEAD.json"], keys


def test_large_part_is_a_block_upload(az):
    """A part over object_store's 10 MB buffer goes up as blocks (Put Block, Put Block List);
    it reads back exact against the input."""
    store = url()
    con = connect()
    # Hashed coordinates do not compress: 3M points make two parts (one per encoder) of well
    # over 10 MB each.
    src = "SELECT (i % 3)::UBIGINT AS label, 0 AS block, (hash(i) % 2000000000)::INT AS x, (hash(i + 7) % 2000000000)::INT AS y, i::INT AS z FROM range(3000000) t(i)"
    con.execute(f"COPY ({src}) TO '{store}' (FORMAT pocaduck, WORKER 'w1')")
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    sizes = [b.size for b in az.client.get_container_client(CONTAINER).list_blobs(name_starts_with=prefix_of(store) + "workers/")
             if b.name.endswith(".parquet")]
    assert max(sizes) > 10 << 20, sizes
    agg = "SELECT label, count(*), sum(x), sum(y), sum(z), sum(hash(x, y, z)::HUGEINT) FROM {} GROUP BY label ORDER BY label"
    got = con.execute(agg.format(f"pocaduck_points('{store}', [0, 1, 2])")).fetchall()
    assert got == con.execute(agg.format(f"({src})")).fetchall()
    assert got[0][1] == 1000000


def test_requests_optimize_vacuum(az):
    """explain's counts on Azure (a footer costs a HEAD and a ranged GET: no suffix ranges), then
    rerun + optimize + vacuum(retain 0, forced): only the newest generation and what it
    references remain, and every label reads as numpy says."""
    store = url()
    prefix = prefix_of(store)
    con = connect()
    copy = "COPY (SELECT (i % 50)::UBIGINT, {b} + i % 7, (i + {dx})::INT, 0, 0 FROM range(40000) t(i)) TO '{s}' (FORMAT pocaduck, WORKER '{w}', TARGET_FILE_SIZE '64KB')"
    con.execute(copy.format(b=0, dx=0, s=store, w="w0"))
    con.execute(copy.format(b=10, dx=0, s=store, w="w1"))
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    con.execute("SET pocaduck_max_staleness = '1 hour'")
    con.execute(f"FROM pocaduck_points('{store}', 1)").fetchall()  # warm the caches
    lists, gets, fetched, n, parts = con.execute(
        f"SELECT list_requests, get_requests, bytes_fetched, rows_returned, parts FROM pocaduck_explain('{store}', 7)"
    ).fetchone()
    print(f"\naz per-label query (warm): {lists} LIST, {gets} GET, {fetched} bytes for {n} points in {parts} part(s)")
    assert (n, lists) == (1600, 0)
    assert 1 <= gets <= 4 * parts and 0 < fetched < 400_000
    con.execute("SET pocaduck_max_staleness = '0'")
    # w0 again with other points: its first parts are superseded.
    con.execute(copy.format(b=0, dx=10**6, s=store, w="w0"))
    con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
    assert con.execute(f"SELECT generation FROM pocaduck_optimize('{store}')").fetchone() == (3,)
    unref = con.execute(f"SELECT unreferenced_files FROM pocaduck_stats('{store}')").fetchone()[0]
    assert unref > 0
    assert con.execute(f"SELECT min(x) FROM pocaduck_points('{store}', 0, generation := 1) WHERE block < 10").fetchone() == (0,)
    before = set(az.keys(CONTAINER, prefix))
    r = {k: (f, b) for k, f, b in con.execute(f"SELECT kind, files, bytes FROM pocaduck_vacuum('{store}', retain := INTERVAL '0 seconds', force := true)").fetchall()}
    after = set(az.keys(CONTAINER, prefix))
    assert sum(f for f, _ in r.values()) == len(before - after), r
    assert r["generation"][0] == 2 and r["part"][0] == unref and r["commit"][0] == 3, r
    # The newest generation, and the head manifest (its copy), which vacuum never deletes: each
    # publication (1, 2, 3) replaced it through Azure's If-Match.
    assert sorted(k for k in after if "/index/" in k) == [prefix + "index/0000000003.json", prefix + "index/HEAD.json"]
    blob = lambda k: az.client.get_blob_client(CONTAINER, prefix + k).download_blob().readall()
    assert json.loads(blob("index/HEAD.json")) == json.loads(blob("index/0000000003.json"))
    i = np.arange(40000)
    want = {l: (2 * int((i % 50 == l).sum()), int(((i + 10**6) * (i % 50 == l)).sum() + (i * (i % 50 == l)).sum())) for l in range(50)}
    got = {l: (n, int(sx)) for l, n, sx in con.execute(f"SELECT label, count(*), sum(x) FROM pocaduck_points('{store}', range(50)::UBIGINT[]) GROUP BY label").fetchall()}
    assert got == want
    assert con.execute(f"SELECT unreferenced_files, pending_commits FROM pocaduck_stats('{store}')").fetchone() == (0, 0)
    assert con.execute(f"SELECT bool_and(ok) FROM pocaduck_check('{store}')").fetchone() == (True,)


def test_settings_instead_of_environment(az):
    """The README's az:// settings: account, key and endpoint through SET, nothing from the
    environment; and a missing container fails promptly, naming the store."""
    store = url()
    opts = f"azure_storage_account_name={ACCOUNT}, azure_storage_account_key={KEY}, azure_endpoint={az.endpoint}/{ACCOUNT}, azure_allow_http=true"
    code = f"""
import duckdb
con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
con.execute("LOAD '{EXTENSION}'")
con.execute("SET pocaduck_storage_options = '{opts}'")
con.execute("COPY (SELECT 1::UBIGINT, 1, 2, 3, 4) TO '{store}' (FORMAT pocaduck, WORKER 'w1')")
con.execute("FROM pocaduck_consolidate('{store}')").fetchall()
print(con.execute("SELECT x, y, z FROM pocaduck_points('{store}', 1)").fetchall())
try:
    con.execute("FROM pocaduck_points('az://no-such-container/x', 1)").fetchall()
except Exception as e:
    print(e)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "AZURITE_"))}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "[(2, 3, 4)]"
    assert "pocaduck_points: store 'az://no-such-container/x': cannot be listed" in out[1], out
    assert "ContainerNotFound" in r.stdout, out
