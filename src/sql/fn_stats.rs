//! `pocaduck_stats(store)`: one row of figures about a store (see [`crate::stats`]);
//! `pocaduck_generations(store)`: one row per generation the store holds.

use std::sync::Arc;

use arrow::array::{ArrayRef, TimestampMicrosecondArray, UInt64Array};
use arrow::datatypes::{DataType, TimeUnit};

use super::index_db::DuckDbCodec;
use super::vtab::{batch, one_batch, BatchIter, Bind, OneRow, StoreArg, TableFn};
use crate::error::Result;
use crate::stats::{generations, stats_at, GenerationStats};
use crate::storage::OpenMode;

/// `pocaduck_stats(store)`.
pub struct Stats;

impl OneRow for Stats {
    const NAME: &'static str = "pocaduck_stats";
    const NAMED: &'static [&'static str] = &["generation"];
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
        let s = stats_at(
            &name.open(OpenMode::Existing)?,
            &DuckDbCodec,
            name.generation,
        )?;
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

/// `pocaduck_generations(store)`: one row per generation the store holds (see
/// [`crate::stats::generations`]).
pub struct Generations;

impl TableFn for Generations {
    const NAME: &'static str = "pocaduck_generations";
    type Args = StoreArg;

    fn bind(b: &Bind) -> Result<StoreArg> {
        let store = b.existing_store()?;
        b.ubigint_columns(&["generation"]);
        b.arrow_column("created_at", &created_type())?;
        b.ubigint_columns(&["format", "commits", "labels", "points", "entries", "bytes"]);
        Ok(store)
    }

    fn rows(name: &StoreArg, _: &[usize]) -> Result<BatchIter> {
        let g = generations(&name.open(OpenMode::Existing)?, &DuckDbCodec)?;
        let u = |f: &dyn Fn(&GenerationStats) -> u64| -> ArrayRef {
            Arc::new(UInt64Array::from_iter_values(g.iter().map(f)))
        };
        let created = TimestampMicrosecondArray::from_iter_values(
            g.iter().map(|x| x.created_ms.saturating_mul(1000)),
        )
        .with_data_type(created_type());
        Ok(one_batch(batch(vec![
            ("generation", u(&|x| x.generation)),
            ("created_at", Arc::new(created) as ArrayRef),
            ("format", u(&|x| x.format as u64)),
            ("commits", u(&|x| x.commits)),
            ("labels", u(&|x| x.labels)),
            ("points", u(&|x| x.points)),
            ("entries", u(&|x| x.entries)),
            ("bytes", u(&|x| x.bytes)),
        ])?))
    }
}

/// `created_at`: a TIMESTAMP in UTC (not TIMESTAMPTZ, whose Python conversion needs `pytz`).
fn created_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}
