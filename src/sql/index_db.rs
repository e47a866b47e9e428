//! The unified index as a DuckDB database file.
//!
//! Written and read through a separate, short-lived DuckDB instance opened on the file itself
//! (never through the user's connection). Tables:
//! - `store_info(key, value)`: `format`, `generation`, `schema` (the `_pocaduck.json` text);
//! - `workers(worker, last_commit)`;
//! - `entries(label, block, worker, commit_seq, part, row_start, row_count, min_x … max_z)`,
//!   sorted by label: rows `row_start .. row_start + row_count` of the Parquet file `part`
//!   (relative to the store root) are points of `label` in `block`;
//! - view `labels(label, point_count, block_count)`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use duckdb::{AccessMode, Config, Connection};

use crate::error::{Error, Result};
use crate::index::{
    block_array, block_ids, IndexCodec, SegmentEntry, UnifiedEntry, UnifiedIndex, WorkerState,
};
use crate::schema::StoreSchema;

/// Stores the unified index as a DuckDB database.
pub struct DuckDbCodec;

fn db_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("unified index {what}: {e}"))
}

impl IndexCodec for DuckDbCodec {
    fn write(&self, index: &UnifiedIndex, path: &std::path::Path) -> Result<()> {
        // Written in the oldest storage format that has what we need, so that every supported
        // DuckDB (1.5.6 and 2.0) can open an index built by any of them.
        let cfg = Config::default()
            .with("storage_compatibility_version", "v1.0.0")
            .map_err(|e| db_err("create", e))?;
        let con = Connection::open_with_flags(path, cfg).map_err(|e| db_err("create", e))?;
        let block_sql = index.schema.block_type().name();
        con.execute_batch(&format!(
            "CREATE TABLE store_info(key VARCHAR PRIMARY KEY, value VARCHAR);
             CREATE TABLE workers(worker VARCHAR, last_commit UBIGINT);
             CREATE TABLE entries(label UBIGINT, block {block_sql}, worker VARCHAR, commit_seq UBIGINT,
                 part VARCHAR, row_start UBIGINT, row_count UBIGINT,
                 min_x DOUBLE, min_y DOUBLE, min_z DOUBLE, max_x DOUBLE, max_y DOUBLE, max_z DOUBLE);
             CREATE VIEW labels AS SELECT label, sum(row_count)::UBIGINT AS point_count,
                 count(DISTINCT block)::UBIGINT AS block_count FROM entries GROUP BY label;"
        ))
        .map_err(|e| db_err("create", e))?;
        con.execute(
            "INSERT INTO store_info VALUES ('format', ?), ('generation', ?), ('schema', ?)",
            duckdb::params![
                crate::schema::FORMAT_VERSION.to_string(),
                index.generation.to_string(),
                index.schema.to_json()
            ],
        )
        .map_err(|e| db_err("write", e))?;
        {
            let mut app = con.appender("workers").map_err(|e| db_err("write", e))?;
            for w in &index.workers {
                app.append_row(duckdb::params![w.worker, w.last_commit])
                    .map_err(|e| db_err("write", e))?;
            }
        }
        let mut app = con.appender("entries").map_err(|e| db_err("write", e))?;
        for chunk in index.entries.chunks(1 << 16) {
            app.append_record_batch(entries_batch(chunk, index)?)
                .map_err(|e| db_err("write", e))?;
        }
        app.flush().map_err(|e| db_err("write", e))?;
        drop(app);
        con.execute_batch("CHECKPOINT")
            .map_err(|e| db_err("write", e))?;
        Ok(())
    }

    fn read(&self, path: &std::path::Path) -> Result<UnifiedIndex> {
        let cfg = Config::default()
            .access_mode(AccessMode::ReadOnly)
            .map_err(|e| db_err("open", e))?;
        let con = Connection::open_with_flags(path, cfg).map_err(|e| db_err("open", e))?;
        let info = |k: &str| -> Result<String> {
            con.query_row("SELECT value FROM store_info WHERE key = ?", [k], |r| {
                r.get::<_, String>(0)
            })
            .map_err(|e| db_err(&format!("store_info '{k}'"), e))
        };
        let schema =
            StoreSchema::from_json(info("schema")?.as_bytes()).map_err(|e| db_err("schema", e))?;
        let generation: u64 = info("generation")?
            .parse()
            .map_err(|e| db_err("generation", e))?;
        let mut workers = Vec::new();
        {
            let mut st = con
                .prepare("SELECT worker, last_commit FROM workers")
                .map_err(|e| db_err("read", e))?;
            let rows = st
                .query_map([], |r| {
                    Ok(WorkerState {
                        worker: r.get(0)?,
                        last_commit: r.get(1)?,
                    })
                })
                .map_err(|e| db_err("read", e))?;
            for r in rows {
                workers.push(r.map_err(|e| db_err("read", e))?);
            }
        }
        let mut entries = Vec::new();
        let mut st = con
            .prepare(
                "SELECT label, block, worker, commit_seq, part, row_start, row_count,
                        min_x, min_y, min_z, max_x, max_y, max_z FROM entries",
            )
            .map_err(|e| db_err("read", e))?;
        for b in st.query_arrow([]).map_err(|e| db_err("read", e))? {
            read_entries(&b, &workers, &mut entries)?;
        }
        let mut u = UnifiedIndex {
            generation,
            schema,
            workers,
            entries,
        };
        u.sort();
        Ok(u)
    }
}

fn entries_batch(chunk: &[UnifiedEntry], index: &UnifiedIndex) -> Result<RecordBatch> {
    let mut cols: Vec<(&str, ArrayRef)> = vec![
        (
            "label",
            Arc::new(UInt64Array::from_iter_values(
                chunk.iter().map(|u| u.e.label),
            )),
        ),
        (
            "block",
            block_array(
                index.schema.block_type(),
                chunk.iter().map(|u| u.e.block.clone()),
            ),
        ),
        (
            "worker",
            Arc::new(StringArray::from_iter_values(
                chunk
                    .iter()
                    .map(|u| index.workers[u.worker as usize].worker.as_str()),
            )),
        ),
        (
            "commit_seq",
            Arc::new(UInt64Array::from_iter_values(
                chunk.iter().map(|u| u.commit),
            )),
        ),
        (
            "part",
            Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|u| u.e.part.as_str()),
            )),
        ),
        (
            "row_start",
            Arc::new(UInt64Array::from_iter_values(
                chunk.iter().map(|u| u.e.row_start),
            )),
        ),
        (
            "row_count",
            Arc::new(UInt64Array::from_iter_values(
                chunk.iter().map(|u| u.e.row_count),
            )),
        ),
    ];
    for (i, n) in ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z"]
        .into_iter()
        .enumerate()
    {
        cols.push((
            n,
            Arc::new(Float64Array::from_iter_values(
                chunk.iter().map(|u| u.e.bbox[i]),
            )),
        ));
    }
    Ok(RecordBatch::try_from_iter(cols)?)
}

fn read_entries(
    b: &RecordBatch,
    workers: &[WorkerState],
    out: &mut Vec<UnifiedEntry>,
) -> Result<()> {
    let bad = |c: &str| db_err("read", format!("column {c} has an unexpected type"));
    let u = |i: usize, n: &str| {
        b.column(i)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| bad(n))
    };
    let s = |i: usize, n: &str| {
        b.column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad(n))
    };
    let f = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| bad("bbox"))
    };
    let (label, commit, start, count) = (
        u(0, "label")?,
        u(3, "commit_seq")?,
        u(5, "row_start")?,
        u(6, "row_count")?,
    );
    let (worker, part) = (s(2, "worker")?, s(4, "part")?);
    let bbox: Vec<&Float64Array> = (7..13).map(f).collect::<Result<_>>()?;
    let blocks = block_ids(b.column(1))?;
    let ids: std::collections::HashMap<&str, usize> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| (w.worker.as_str(), i))
        .collect();
    for (r, block) in blocks.into_iter().enumerate() {
        let w = *ids.get(worker.value(r)).ok_or_else(|| {
            db_err(
                "read",
                format!("entry of unknown worker '{}'", worker.value(r)),
            )
        })?;
        out.push(UnifiedEntry {
            worker: w as u32,
            commit: commit.value(r),
            e: SegmentEntry {
                label: label.value(r),
                block,
                part: part.value(r).to_string(),
                row_start: start.value(r),
                row_count: count.value(r),
                bbox: std::array::from_fn(|i| bbox[i].value(r)),
            },
        });
    }
    Ok(())
}
