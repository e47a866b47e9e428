//! Format-1 unified index generations (the previous release's): a DuckDB database file.
//!
//! Read (never written: format 2 replaced it) through a separate, short-lived DuckDB instance
//! opened read-only on the file itself (never through the user's connection). Tables:
//! - `store_info(key, value)`: `format`, `generation`, `schema` (the `_pocaduck.json` text);
//! - `workers(worker, last_commit)`;
//! - `entries(label, block, worker, commit_seq, part, row_start, row_count, min_x … max_z)`,
//!   sorted by label: rows `row_start .. row_start + row_count` of the Parquet file `part`
//!   (relative to the store root) are points of `label` in `block`;
//! - view `labels(label, point_count, block_count)`.

use duckdb::{AccessMode, Config, Connection};

use crate::error::{Error, Result};
use crate::index::{IndexCodec, UnifiedIndex, WorkerState};
use crate::schema::StoreSchema;

/// Reads a format-1 unified index (a DuckDB database).
pub struct DuckDbCodec;

fn db_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("unified index {what}: {e}"))
}

impl IndexCodec for DuckDbCodec {
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
        let ids: crate::segment::WorkerIds = workers
            .iter()
            .enumerate()
            .map(|(i, w)| (w.worker.clone(), i as u32))
            .collect();
        let bad = |m: &str| db_err("read", m);
        for b in st.query_arrow([]).map_err(|e| db_err("read", e))? {
            crate::segment::decode_entries(&b, &ids, (0, u64::MAX), &bad, &mut entries)?;
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
