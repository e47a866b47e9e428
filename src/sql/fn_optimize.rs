//! `pocaduck_optimize(store [, target_file_size := …] [, labels := [lo, hi)])`: rewrite
//! fragmented labels contiguously (see [`crate::optimize`]); one row about what it did.

use super::args::arg_labels;
use super::index_db::DuckDbCodec;
use super::vtab::{Bind, OneRow, StoreArg};
use super::SET_TARGET_FILE_SIZE;
use crate::error::{Error, Result};
use crate::optimize::{optimize, OptimizeOptions};
use crate::storage::OpenMode;

/// `pocaduck_optimize(store)`.
pub struct Optimize;

/// The `labels := [lo, hi)` argument, as an inclusive range.
fn label_range(b: &Bind) -> Result<Option<(u64, u64)>> {
    let Some(v) = b.named("labels") else {
        return Ok(None);
    };
    let (ls, list) = arg_labels(v, "labels")?;
    match ls[..] {
        [lo, hi] if list && lo < hi => Ok(Some((lo, hi - 1))),
        _ => Err(Error::arg(
            "labels",
            format!("must be a range [lo, hi) of two labels with lo < hi, got {ls:?}"),
        )),
    }
}

impl OneRow for Optimize {
    const NAME: &'static str = "pocaduck_optimize";
    const NAMED: &'static [&'static str] = &["target_file_size", "labels"];
    const COLUMNS: &'static [&'static str] = &[
        "generation",
        "labels",
        "labels_rewritten",
        "points_rewritten",
        "entries_before",
        "entries_after",
        "files_written",
    ];
    type Args = (StoreArg, OptimizeOptions);

    fn bind(b: &Bind) -> Result<(StoreArg, OptimizeOptions)> {
        let store = b.store()?;
        let default = b.context().setting_size(
            SET_TARGET_FILE_SIZE,
            OptimizeOptions::default().target_file_size,
        )?;
        let labels = label_range(b)?;
        let opts = OptimizeOptions {
            target_file_size: b.named_size("target_file_size", default)?,
            labels,
            ..Default::default()
        };
        store.open(OpenMode::Existing)?;
        Ok((store, opts))
    }

    fn compute((name, opts): &(StoreArg, OptimizeOptions)) -> Result<Vec<u64>> {
        let s = optimize(&name.open(OpenMode::Existing)?, &DuckDbCodec, opts)?;
        Ok(vec![
            s.generation,
            s.labels,
            s.labels_rewritten,
            s.points_rewritten,
            s.entries_before,
            s.entries_after,
            s.files_written,
        ])
    }
}
