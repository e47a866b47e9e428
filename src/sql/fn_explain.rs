//! `pocaduck_explain(store, label | [labels] [, bbox := …])`: runs the read `pocaduck_points`
//! would do (every column) and reports, in one row, what it touched and how long each step took.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, UInt64Array};
use duckdb::core::LogicalTypeId;

use super::args::{arg_labels, bbox_value};
use super::vtab::{batch, one_batch, BatchIter, Bind, KeptForExecution, StoreArg, TableFn};
use crate::error::Result;
use crate::reader::{BBox, ReadTrace, ScanRequest};

/// `pocaduck_explain(store, label)`.
pub struct Explain;

/// Bind data of `pocaduck_explain`.
pub struct ExplainArgs {
    store: StoreArg,
    labels: Vec<u64>,
    bbox: Option<BBox>,
    /// The request counters before the bind opened the store and its index: the execution that
    /// follows at once counts from there (a cold reader's first query includes opening the
    /// store).
    io_at_bind: KeptForExecution<[u64; 3]>,
}

/// The process-wide request counters: LISTs, GETs, bytes fetched.
fn io_now() -> [u64; 3] {
    let io = crate::storage::io_counters();
    let ld = |f: &AtomicU64| f.load(Ordering::Relaxed);
    [ld(&io.lists), ld(&io.gets), ld(&io.bytes_read)]
}

const COUNTS: [&str; 12] = [
    "generation",
    "points",
    "blocks",
    "entries",
    "parts",
    "row_groups",
    "pages",
    "page_bytes",
    "rows_returned",
    "list_requests",
    "get_requests",
    "bytes_fetched",
];
const TIMES: [&str; 3] = ["index_ms", "read_ms", "total_ms"];

impl TableFn for Explain {
    const NAME: &'static str = "pocaduck_explain";
    const PARAMETERS: &'static [&'static str] = &["label"];
    const NAMED: &'static [&'static str] = &["bbox", "generation"];
    type Args = ExplainArgs;

    fn bind(b: &Bind) -> Result<ExplainArgs> {
        let io_at_bind = KeptForExecution::default();
        io_at_bind.keep(io_now(), Instant::now());
        let store = b.store()?;
        let (labels, _) = arg_labels(b.param(1), "label")?;
        let bbox = match b.named("bbox") {
            Some(v) => Some(bbox_value(&v, "bbox")?),
            None => None,
        };
        store.bind_index()?;
        b.ubigint_columns(&COUNTS);
        b.columns(&TIMES.map(|n| (n, LogicalTypeId::Double)));
        Ok(ExplainArgs {
            store,
            labels,
            bbox,
            io_at_bind,
        })
    }

    fn rows(a: &ExplainArgs, _: &[usize]) -> Result<BatchIter> {
        let ld = |f: &AtomicU64| f.load(Ordering::Relaxed);
        let before = a.io_at_bind.take().unwrap_or_else(io_now);
        let t0 = Instant::now();
        let index = a.store.index()?;
        let t1 = Instant::now();
        let trace = Arc::new(ReadTrace::default());
        let cols: Vec<usize> = (0..index.schema.part_columns()).collect();
        let mut rows = 0u64;
        for r in ScanRequest::labels(a.labels.clone())
            .bbox(a.bbox)
            .columns(cols)
            .trace(trace.clone())
            .stream(&index)?
        {
            rows += r?.num_rows() as u64;
        }
        let t2 = Instant::now();
        // What the query cost, before the entries are looked up again for the figures below.
        let now = io_now();
        let io_used = [0, 1, 2].map(|i| now[i] - before[i]);
        let entries = index.view.entries_of(&a.labels)?;
        let all = || entries.iter().flat_map(|x| x.1.iter());
        let mut blocks: Vec<(u64, &crate::index::BlockId)> =
            all().map(|e| (e.entry.label, &e.entry.block)).collect();
        blocks.dedup();
        let counts = [
            index.generation,
            all().map(|e| e.entry.row_count).sum(),
            blocks.len() as u64,
            all().count() as u64,
            ld(&trace.parts),
            ld(&trace.row_groups),
            ld(&trace.pages),
            ld(&trace.page_bytes),
            rows,
            io_used[0],
            io_used[1],
            io_used[2],
        ];
        let ms = |a: Instant, z: Instant| (z - a).as_secs_f64() * 1e3;
        let times = [ms(t0, t1), ms(t1, t2), ms(t0, t2)];
        let mut cols: Vec<(&str, ArrayRef)> = COUNTS
            .iter()
            .zip(counts)
            .map(|(n, v)| (*n, Arc::new(UInt64Array::from(vec![v])) as ArrayRef))
            .collect();
        cols.extend(
            TIMES
                .iter()
                .zip(times)
                .map(|(n, v)| (*n, Arc::new(Float64Array::from(vec![v])) as ArrayRef)),
        );
        Ok(one_batch(batch(cols)?))
    }
}
