"""The README's examples work exactly as written.

Every ```sql block runs, in order, in one connection (cwd: a fresh directory). A ```sql block
followed directly by a ```text block must fail with that text as its error message. Every
```python block runs too, in one shared namespace (the first makes its own connection).
"""
import re

import pytest

from conftest import REPO, connect

BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks():
    text = (REPO / "README.md").read_text()
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def test_readme_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    con = connect()
    bs = blocks()
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
    assert ran >= 20 and errors >= 9, (ran, errors)
