"""The README's examples work exactly as written.

Every ```sql block runs, in order, in one connection (cwd: a fresh directory); the cloud recipe's
blocks run against a local S3 server when POCADUCK_TEST_S3=1, the Azure example's against Azurite
when POCADUCK_TEST_AZURE=1 (scripts/test.sh sets both). A ```sql block
followed directly by a ```text block must fail with that text as its error message. Every
```python block runs too, in one shared namespace (the first makes its own connection).
"""
import re

import pytest

import azurite
import s3server
from conftest import REPO, connect

BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks():
    text = (REPO / "README.md").read_text()
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def test_readme_examples(tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    # The cloud recipe runs against a real local S3 server: the README's 127.0.0.1:5000 becomes
    # this server's port (its env variables are the README's).
    s3 = None
    if s3server.enabled():
        s3 = s3server.S3Server()
        for k, v in s3.env.items():
            monkeypatch.setenv(k, v)
    # The Azure example likewise against Azurite (its http://127.0.0.1:10000 becomes this one's).
    az = None
    if azurite.enabled():
        az = azurite.Azurite()
        request.addfinalizer(az.stop)  # also when an example fails
        for k, v in az.env.items():
            monkeypatch.setenv(k, v)
    con = connect()
    bs = blocks()
    if s3 is not None:
        bs = [(lang, body.replace("http://127.0.0.1:5000", s3.endpoint)) for lang, body in bs]
    else:
        cloud = [i for i, (_, body) in enumerate(bs) if "s3://" in body or "boto3" in body]
        bs = [b for i, b in enumerate(bs) if i not in cloud]
    if az is not None:
        bs = [(lang, body.replace("http://127.0.0.1:10000", az.endpoint)) for lang, body in bs]
    else:
        bs = [(lang, body) for lang, body in bs if "az://" not in body.lower() and "azure.storage" not in body]
    ran = errors = 0
    namespace: dict = {}
    for i, (lang, body) in enumerate(bs):
        nxt = bs[i + 1] if i + 1 < len(bs) else (None, "")
        if lang == "sql":
            if nxt[0] == "text":
                want = nxt[1].strip()
                with pytest.raises(Exception) as e:
                    con.execute(body).fetchall()
                assert want in str(e.value), f"README example:\n{body}\nexpected: {want}\ngot: {e.value}"
                errors += 1
            else:
                con.execute(body).fetchall()
            ran += 1
        elif lang == "python":
            exec(compile(body, "README.md", "exec"), namespace)
            ran += 1
    if s3 is not None:
        # The cloud recipe really wrote to the bucket.
        assert any(k.startswith("seg1/index/") for k in s3.keys("connectome", "seg1/"))
        s3.stop()
    if az is not None:
        assert any(k.startswith("seg1/index/") for k in az.keys("connectome", "seg1/"))
        az.stop()
    assert ran >= 20 and errors >= 9, (ran, errors)
