#!/usr/bin/env bash
# Fuzzes the commit-segment, part and index-segment readers (whole files, and row groups read
# through a row-group directory) with cargo fuzz (libFuzzer), each for a bounded time.
#   bash scripts/fuzz.sh [seconds per target, default 60]
# Needs the extension's Python env (scripts/setup.sh) to make seed files. The fuzz targets need
# nightly features; on the stable toolchain RUSTC_BOOTSTRAP=1 enables them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
corpus=build/fuzz-corpus
rm -rf "$corpus" && mkdir -p "$corpus/segment" "$corpus/part" "$corpus/index_segment" "$corpus/index_row_group"
# Seeds: a real commit segment and part file, written by the extension through DuckDB.
.venv/py15/bin/python - "$corpus" <<'PY'
import sys, pathlib, shutil, duckdb
out = pathlib.Path(sys.argv[1]); store = out / "store"
con = duckdb.connect(config={"allow_unsigned_extensions": True})
con.execute("LOAD 'build/pocaduck.duckdb_extension'")
con.execute(f"COPY (SELECT (i % 3)::UBIGINT, 0::BIGINT, i::BIGINT, (2 * i)::BIGINT, 3::BIGINT FROM range(300) t(i)) TO '{store}' (FORMAT pocaduck, WORKER 'w')")
shutil.copy(store / "workers/w/commits/0000000001.parquet", out / "segment/seed.parquet")
part = next((store / "workers/w/parts").glob("*.parquet"))
(out / "part/seed").write_bytes(bytes([14]) + part.read_bytes())  # 14 * 7 = 98 rows claimed
con.execute(f"FROM pocaduck_consolidate('{store}')").fetchall()
seg = next((store / "segments").glob("*.parquet"))
shutil.copy(seg, out / "index_segment/seed.parquet")
# The same segment's first row group as index_row_group takes it: its entry count (u16 LE), its
# lookup and total bytes (u32 LE), the block type (0: BIGINT), then the file from byte 4.
import pyarrow.parquet as pq
rg = pq.ParquetFile(seg).metadata.row_group(0)
start = lambda c: c.dictionary_page_offset or c.data_page_offset
lookup = start(rg.column(7)) - start(rg.column(0))
total = sum(rg.column(i).total_compressed_size for i in range(rg.num_columns))
head = rg.num_rows.to_bytes(2, "little") + lookup.to_bytes(4, "little") + total.to_bytes(4, "little") + bytes([0])
(out / "index_row_group/seed").write_bytes(head + seg.read_bytes()[4:])
shutil.rmtree(store)
PY
# Inputs that once crashed a target are replayed first.
for t in segment part index_segment index_row_group; do [ -d "fuzz/regressions/$t" ] && cp fuzz/regressions/$t/* "$corpus/$t/"; done
for t in segment part index_segment index_row_group; do
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run -O --fuzz-dir fuzz "$t" "$corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=4096 2>&1 \
    | tee "build/fuzz-$t.log" | grep -E "^(#[0-9]+ +(INITED|DONE)|Done|==|SUMMARY|thread)" || true
  grep -q "^Done " "build/fuzz-$t.log" || { echo "fuzz target $t failed"; tail -30 "build/fuzz-$t.log"; exit 1; }
done
echo "== fuzzing found nothing"
