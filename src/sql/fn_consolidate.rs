//! `pocaduck_consolidate(store)`: merge worker commits into a new index generation (see
//! [`crate::consolidate`]); one row about what it did.

use super::index_db::DuckDbCodec;
use super::vtab::{Bind, OneRow, StoreArg};
use crate::consolidate::consolidate;
use crate::error::Result;
use crate::storage::OpenMode;

/// `pocaduck_consolidate(store)`.
pub struct Consolidate;

impl OneRow for Consolidate {
    const NAME: &'static str = "pocaduck_consolidate";
    const COLUMNS: &'static [&'static str] = &[
        "generation",
        "workers",
        "new_commits",
        "new_files",
        "new_points",
        "new_entries",
        "segments",
    ];
    type Args = StoreArg;

    fn bind(b: &Bind) -> Result<StoreArg> {
        b.existing_store()
    }

    fn compute(name: &StoreArg) -> Result<Vec<u64>> {
        let s = consolidate(&name.open(OpenMode::Existing)?, &DuckDbCodec)?;
        Ok(vec![
            s.generation,
            s.workers,
            s.new_commits,
            s.new_files,
            s.new_points,
            s.new_entries,
            s.segments,
        ])
    }
}
