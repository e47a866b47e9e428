#!/usr/bin/env python3
"""Minimal runner for DuckDB-style sqllogictest (``.test``) files.

Runs every record against an in-memory DuckDB connection through the Python
``duckdb`` module.  Each file gets a fresh connection and a fresh temporary
directory; execution of a file stops at its first failing record.

Usage: python scripts/sqllogictest.py [--extension PATH] [--verbose] [--store-root URL] FILE_OR_DIR...

Directories are searched recursively for ``*.test`` files (test/sql/<group>/<concern>.test).
Besides DuckDB's records (``require``, ``require-env``, ``statement``, ``query``, ``loop``,
``foreach``, ``mode skip``/``unskip``, ``halt``, ``restart``), one gate is understood:
``require local-store`` skips the file when ``--store-root`` is given (stores in an object store).
"""

import argparse
import os
import uuid
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

# Commands that occupy a single line; the next line may start a new record.
SINGLE_LINE = {"require", "require-env", "mode", "halt", "restart", "loop", "foreach", "endloop"}


class Skip(Exception):
    """Raised to skip the remainder of a file (counts as passed)."""


class Failure(Exception):
    """Raised when a record fails; the message holds the details."""


@dataclass
class Record:
    """One parsed record: command words, SQL text and optional expected text."""

    line: int
    words: list
    sql: str = ""
    expected: str | None = None

    def substitute(self, old, new):
        """Return a copy with ``old`` replaced by ``new`` in SQL and expected text."""
        exp = None if self.expected is None else self.expected.replace(old, new)
        return replace(self, sql=self.sql.replace(old, new), expected=exp)


def parse(text):
    """Split file text into a flat list of records (comments and blanks dropped)."""
    lines = text.splitlines()
    records, i = [], 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        rec = Record(i + 1, line.split())
        i += 1
        if rec.words[0] not in SINGLE_LINE:
            body = []
            while i < len(lines) and lines[i].strip():
                body.append(lines[i].rstrip("\r"))
                i += 1
            if "----" in body:
                cut = body.index("----")
                rec.expected = "\n".join(body[cut + 1:])
                body = body[:cut]
            rec.sql = "\n".join(body)
        records.append(rec)
    return records


def expand(records):
    """Unroll ``loop``/``foreach`` ... ``endloop`` blocks (nesting allowed)."""
    out, i = [], 0
    while i < len(records):
        rec = records[i]
        if rec.words[0] not in ("loop", "foreach"):
            out.append(rec)
            i += 1
            continue
        depth, j = 1, i + 1
        while j < len(records) and depth:
            kind = records[j].words[0]
            depth += kind in ("loop", "foreach")
            depth -= kind == "endloop"
            j += 1
        if depth:
            raise Failure(f"line {rec.line}: {rec.words[0]} without endloop")
        name, args = rec.words[1], rec.words[2:]
        values = range(int(args[0]), int(args[1])) if rec.words[0] == "loop" else args
        body = expand(records[i + 1:j - 1])
        out += [r.substitute("${%s}" % name, str(v)) for v in values for r in body]
        i = j
    return out


def fmt(value, nested=False):
    """Format a Python value the way DuckDB's sqllogictest prints it."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value if value or nested else "(empty)"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v, True) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(fmt(v, True) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"'{k}': {fmt(v, True)}" for k, v in value.items()) + "}"
    if isinstance(value, bytes):
        return "".join(chr(b) if 32 <= b < 127 and chr(b) not in "\\'\"" else f"\\x{b:02X}" for b in value)
    return str(value)


def sort_rows(rows, mode):
    """Apply a sqllogictest sort mode to a list of rows (lists of strings)."""
    if mode == "rowsort":
        return sorted(rows)
    if mode == "valuesort":
        return [[v] for v in sorted(v for row in rows for v in row)]
    return rows


def show(rows):
    """Render rows as tab-separated lines for failure reports."""
    return "\n".join("\t".join(row) for row in rows) or "(no rows)"


class FileRunner:
    """Executes the records of one test file on its own connection."""

    def __init__(self, path, extension, verbose, store_root=None):
        """Remember settings; the connection is opened in :meth:`run`."""
        self.path, self.extension, self.verbose = path, extension, verbose
        self.store_root = store_root
        self.loads, self.env, self.con, self.test_dir = [], {}, None, None

    def connect(self):
        """(Re)open the connection and replay extension loads done so far."""
        if self.con is not None:
            self.con.close()
        self.con = duckdb.connect(config={"allow_unsigned_extensions": True})
        for sql in self.loads:
            self.con.execute(sql)

    def subst(self, text):
        """Replace directory placeholders and required env variables in text."""
        text = text.replace("__TEST_DIR__", self.test_dir)
        text = text.replace("__WORKING_DIRECTORY__", os.getcwd())
        for name, value in self.env.items():
            text = text.replace("${%s}" % name, value)
        if "POCADUCK_DATA_DIR" in os.environ:
            text = text.replace("{DATA_DIR}", os.environ["POCADUCK_DATA_DIR"])
        return text

    def run(self):
        """Run the whole file; raises Skip or Failure, returns None on success."""
        text = Path(self.path).read_text()
        self.test_dir = tempfile.mkdtemp(prefix="slt_")
        local_dir = self.test_dir
        if self.store_root:
            self.test_dir = f"{self.store_root.rstrip('/')}/{uuid.uuid4().hex}"
        try:
            self.connect()
            skipping = False
            for rec in expand(parse(text)):
                if rec.words == ["mode", "unskip"]:
                    skipping = False
                elif skipping:
                    continue
                elif rec.words == ["mode", "skip"]:
                    skipping = True
                elif rec.words[0] == "halt":
                    break
                else:
                    if self.verbose:
                        print(f"  {self.path}:{rec.line}: {' '.join(rec.words)}")
                    self.record(rec)
        finally:
            if self.con is not None:
                self.con.close()
            shutil.rmtree(local_dir, ignore_errors=True)

    def record(self, rec):
        """Dispatch one record to its handler."""
        cmd, args = rec.words[0], rec.words[1:]
        where = f"{self.path}:{rec.line}"
        if cmd == "require":
            self.require(args[0], where)
        elif cmd == "require-env":
            value = os.environ.get(args[0])
            if value is None or (len(args) > 1 and value != args[1]):
                raise Skip(f"require-env {' '.join(args)}")
            self.env[args[0]] = value
        elif cmd == "restart":
            self.connect()
        elif cmd == "statement" and args in (["ok"], ["error"]):
            self.statement(rec, args[0] == "error", where)
        elif cmd == "query" and args:
            self.query(rec, args[0], args[1] if len(args) > 1 else "nosort", where)
        else:
            raise Failure(f"{where}: unsupported record '{' '.join(rec.words)}'")

    def require(self, name, where):
        """Load an extension: pocaduck must load, others skip the file if absent.

        ``require local-store`` is a gate, not an extension: it skips the rest of the file when
        ``--store-root`` is given (the stores are then under that URL, e.g. in S3, rather than in
        a local temporary directory), for files that look at store files with local-only SQL
        (glob, ATTACH, read_parquet) or write local files. Put it before the first statement.
        """
        if name == "local-store":
            if self.store_root:
                raise Skip(f"require local-store (stores under {self.store_root})")
            return
        if name == "pocaduck":
            path = self.extension or os.environ.get("POCADUCK_EXTENSION")
            sql = "LOAD '%s'" % path.replace("'", "''") if path else "LOAD pocaduck"
            try:
                self.con.execute(sql)
            except duckdb.Error as exc:
                raise Failure(f"{where}: {sql} failed:\n{exc}") from exc
        else:
            sql = f"LOAD {name}"
            try:
                self.con.execute(sql)
            except duckdb.Error as exc:
                raise Skip(f"require {name}") from exc
        self.loads.append(sql)

    def statement(self, rec, expect_error, where):
        """Run a ``statement ok`` / ``statement error`` record."""
        sql = self.subst(rec.sql)
        try:
            self.con.execute(sql).fetchall()
        except duckdb.Error as exc:
            if not expect_error:
                raise Failure(f"{where}: statement failed\nSQL:\n{sql}\nError:\n{exc}") from exc
            wanted = self.subst(rec.expected or "").strip()
            if wanted not in str(exc):
                raise Failure(f"{where}: wrong error message\nSQL:\n{sql}\n"
                              f"Expected error containing:\n{wanted}\nActual error:\n{exc}") from exc
            return
        if expect_error:
            raise Failure(f"{where}: statement succeeded but an error was expected\nSQL:\n{sql}")

    def query(self, rec, types, mode, where):
        """Run a ``query`` record and compare its result with the expected rows."""
        if mode not in ("nosort", "rowsort", "valuesort"):
            raise Failure(f"{where}: unsupported sort mode '{mode}'")
        sql = self.subst(rec.sql)
        try:
            cur = self.con.execute(sql)
            rows = cur.fetchall()
        except duckdb.Error as exc:
            raise Failure(f"{where}: query failed\nSQL:\n{sql}\nError:\n{exc}") from exc
        ncols = len(cur.description or [])
        if ncols != len(types):
            raise Failure(f"{where}: query returned {ncols} column(s) but types '{types}' "
                          f"declare {len(types)}\nSQL:\n{sql}")
        actual = [[fmt(v) for v in row] for row in rows]
        expected = []
        for line in self.subst(rec.expected or "").splitlines():
            expected.append(line.split("\t") if "\t" in line or ncols == 1 else line.split(" "))
        if sort_rows(actual, mode) != sort_rows(expected, mode):
            raise Failure(f"{where}: wrong result\nSQL:\n{sql}\n"
                          f"Expected:\n{show(expected)}\nActual:\n{show(actual)}")


def collect(paths):
    """Expand arguments into a list of test files (directories recursively, sorted)."""
    files = []
    for arg in paths:
        path = Path(arg)
        files += sorted(path.rglob("*.test")) if path.is_dir() else [path]
    return files


def main():
    """Parse arguments, run every test file and report a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extension", help="path of the pocaduck extension to LOAD")
    parser.add_argument("--verbose", action="store_true", help="print every record")
    parser.add_argument("--store-root", help="put __TEST_DIR__ under this URL (e.g. s3://bucket/run) instead of a local temporary directory")
    parser.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    opts = parser.parse_args()
    files = collect(opts.paths)
    passed = failed = 0
    for path in files:
        try:
            FileRunner(str(path), opts.extension, opts.verbose, opts.store_root).run()
            print(f"PASS {path}")
            passed += 1
        except Skip as exc:
            print(f"SKIP {path} ({exc})")
            passed += 1
        except Failure as exc:
            print(f"FAIL {path}\n{exc}")
            failed += 1
        except Exception as exc:  # malformed file, unreadable path, ...
            print(f"FAIL {path}\n{type(exc).__name__}: {exc}")
            failed += 1
    if not files:
        print("no test files found", file=sys.stderr)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not files else 0


if __name__ == "__main__":
    sys.exit(main())
