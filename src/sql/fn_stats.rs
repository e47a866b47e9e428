//! `pocaduck_stats(store)`: one row of figures about a store (see [`crate::stats`]).

use super::index_db::DuckDbCodec;
use super::vtab::{Bind, OneRow, StoreArg};
use crate::error::Result;
use crate::stats::stats;
use crate::storage::OpenMode;

/// `pocaduck_stats(store)`.
pub struct Stats;

impl OneRow for Stats {
    const NAME: &'static str = "pocaduck_stats";
    const COLUMNS: &'static [&'static str] = &[
        "generation",
        "workers",
        "commits",
        "pending_commits",
        "labels",
        "points",
        "entries",
        "fragmented_labels",
        "files",
        "file_bytes",
        "unreferenced_files",
        "unreferenced_bytes",
        "index_bytes",
        "segments",
        "skipped_commits",
    ];
    type Args = StoreArg;

    fn bind(b: &Bind) -> Result<StoreArg> {
        b.existing_store()
    }

    fn compute(name: &StoreArg) -> Result<Vec<u64>> {
        let s = stats(&name.open(OpenMode::Existing)?, &DuckDbCodec)?;
        Ok(vec![
            s.generation,
            s.workers,
            s.commits,
            s.pending_commits,
            s.labels,
            s.points,
            s.entries,
            s.fragmented_labels,
            s.files,
            s.file_bytes,
            s.unreferenced_files,
            s.unreferenced_bytes,
            s.index_bytes,
            s.segments,
            s.skipped_commits,
        ])
    }
}
