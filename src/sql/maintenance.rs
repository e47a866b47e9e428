//! Table functions that look after a store: `pocaduck_optimize`, `pocaduck_stats`,
//! `pocaduck_explain`, `pocaduck_check`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, StringArray, UInt64Array};
use duckdb::core::{DataChunkHandle, LogicalTypeHandle, LogicalTypeId};
use duckdb::vtab::{BindInfo, InitInfo, TableFunctionInfo, VTab};
use duckdb::Connection;

use super::functions::{
    add_columns, batch, bbox_value, client_context, err, named_size, run, ty, BoxErr, Emitter,
    Once, OneShot,
};
use super::index_db::DuckDbCodec;
use super::{arg_labels, arg_string, SET_TARGET_FILE_SIZE};
use crate::error::{Error, Result};
use crate::optimize::{optimize, OptimizeOptions};
use crate::reader::{self, BBox, ReadTrace, ScanRequest};
use crate::stats::stats;
use crate::storage::{OpenMode, Store};

fn one_row(cols: Vec<(&str, u64)>) -> Result<arrow::array::RecordBatch> {
    batch(
        cols.into_iter()
            .map(|(n, v)| (n, Arc::new(UInt64Array::from(vec![v])) as ArrayRef))
            .collect(),
    )
}

fn ubigint_columns(bind: &BindInfo, names: &[&str]) {
    for n in names {
        bind.add_result_column(n, ty(LogicalTypeId::UBigint));
    }
}

// ---------------------------------------------------------------------------------------------
// pocaduck_optimize(store [, target_file_size := …])

/// `pocaduck_optimize(store)`: rewrite fragmented labels contiguously (see [`crate::optimize`]).
pub struct Optimize;

const OPTIMIZE_COLUMNS: [&str; 7] = [
    "generation",
    "labels",
    "labels_rewritten",
    "points_rewritten",
    "entries_before",
    "entries_after",
    "files_written",
];

impl VTab for Optimize {
    type BindData = OneShot<(String, OptimizeOptions)>;
    type InitData = Once;

    fn bind(bind: &BindInfo) -> std::result::Result<Self::BindData, BoxErr> {
        const F: &str = "pocaduck_optimize";
        client_context(bind)
            .apply_storage_options()
            .map_err(|e| err(F, e))?;
        let ctx = client_context(bind);
        let args = (|| -> Result<(String, OptimizeOptions)> {
            let store = arg_string(Some(bind.get_parameter(0)), "store")?;
            let default = ctx.setting_size(
                SET_TARGET_FILE_SIZE,
                OptimizeOptions::default().target_file_size,
            )?;
            let labels = match bind.get_named_parameter("labels") {
                None => None,
                Some(v) => {
                    let (ls, list) = arg_labels(v, "labels")?;
                    match ls[..] {
                        [lo, hi] if list && lo < hi => Some((lo, hi - 1)),
                        _ => {
                            return Err(Error::arg(
                                "labels",
                                format!(
                                "must be a range [lo, hi) of two labels with lo < hi, got {ls:?}"
                            ),
                            ))
                        }
                    }
                }
            };
            let opts = OptimizeOptions {
                target_file_size: named_size(bind, "target_file_size", default)?,
                labels,
                ..Default::default()
            };
            Store::open(&store, OpenMode::Existing)?;
            Ok((store, opts))
        })()
        .map_err(|e| err(F, e))?;
        ubigint_columns(bind, &OPTIMIZE_COLUMNS);
        Ok(OneShot { args })
    }

    fn init(_: &InitInfo) -> std::result::Result<Once, BoxErr> {
        Ok(Once::default())
    }

    fn func(
        func: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), BoxErr> {
        const F: &str = "pocaduck_optimize";
        if func.get_init_data().done.swap(true, Ordering::SeqCst) {
            output.set_len(0);
            return Ok(());
        }
        let (name, opts) = &func.get_bind_data().args;
        let rb = run(F, || {
            let store = Store::open(name, OpenMode::Existing)?;
            let s = optimize(&store, &DuckDbCodec, opts)?;
            let v = [
                s.generation,
                s.labels,
                s.labels_rewritten,
                s.points_rewritten,
                s.entries_before,
                s.entries_after,
                s.files_written,
            ];
            one_row(OPTIMIZE_COLUMNS.iter().copied().zip(v).collect())
        })?;
        Emitter::new(vec![rb]).emit(output)
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![ty(LogicalTypeId::Varchar)])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(vec![
            ("target_file_size".to_string(), ty(LogicalTypeId::Any)),
            ("labels".to_string(), ty(LogicalTypeId::Any)),
        ])
    }
}

// ---------------------------------------------------------------------------------------------
// pocaduck_stats(store)

/// `pocaduck_stats(store)`: one row of figures about a store (see [`crate::stats`]).
pub struct Stats;

const STATS_COLUMNS: [&str; 14] = [
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
];

impl VTab for Stats {
    type BindData = String;
    type InitData = Emitter;

    fn bind(bind: &BindInfo) -> std::result::Result<String, BoxErr> {
        const F: &str = "pocaduck_stats";
        client_context(bind)
            .apply_storage_options()
            .map_err(|e| err(F, e))?;
        let store = arg_string(Some(bind.get_parameter(0)), "store").map_err(|e| err(F, e))?;
        run(F, || Store::open(&store, OpenMode::Existing).map(|_| ()))?;
        ubigint_columns(bind, &STATS_COLUMNS);
        Ok(store)
    }

    fn init(init: &InitInfo) -> std::result::Result<Emitter, BoxErr> {
        let name = unsafe { &*init.get_bind_data::<String>() };
        let rb = run("pocaduck_stats", || {
            let store = Store::open(name, OpenMode::Existing)?;
            let s = stats(&store, &DuckDbCodec)?;
            let v = [
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
            ];
            one_row(STATS_COLUMNS.iter().copied().zip(v).collect())
        })?;
        Ok(Emitter::new(vec![rb]))
    }

    fn func(
        func: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), BoxErr> {
        func.get_init_data().emit(output)
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![ty(LogicalTypeId::Varchar)])
    }
}

// ---------------------------------------------------------------------------------------------
// pocaduck_explain(store, label | [labels] [, bbox := …])

/// `pocaduck_explain(store, label)`: runs the read `pocaduck_points` would do (every column) and
/// reports what it touched and how long each step took.
pub struct Explain;

/// Bind data of `pocaduck_explain`.
pub struct ExplainBind {
    store: String,
    labels: Vec<u64>,
    bbox: Option<BBox>,
}

const EXPLAIN_COUNTS: [&str; 12] = [
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
const EXPLAIN_TIMES: [&str; 3] = ["index_ms", "read_ms", "total_ms"];

impl VTab for Explain {
    type BindData = ExplainBind;
    type InitData = Emitter;

    fn bind(bind: &BindInfo) -> std::result::Result<ExplainBind, BoxErr> {
        const F: &str = "pocaduck_explain";
        client_context(bind)
            .apply_storage_options()
            .map_err(|e| err(F, e))?;
        let b = (|| -> Result<ExplainBind> {
            let store = arg_string(Some(bind.get_parameter(0)), "store")?;
            let (labels, _) = arg_labels(bind.get_parameter(1), "label")?;
            let bbox = match bind.get_named_parameter("bbox") {
                Some(v) => Some(bbox_value(&v, "bbox")?),
                None => None,
            };
            Ok(ExplainBind {
                store,
                labels,
                bbox,
            })
        })()
        .map_err(|e| err(F, e))?;
        run(F, || reader::open(&b.store, &DuckDbCodec).map(|_| ()))?;
        ubigint_columns(bind, &EXPLAIN_COUNTS);
        add_columns(bind, &EXPLAIN_TIMES.map(|n| (n, LogicalTypeId::Double)));
        Ok(b)
    }

    fn init(init: &InitInfo) -> std::result::Result<Emitter, BoxErr> {
        let b = unsafe { &*init.get_bind_data::<ExplainBind>() };
        let rb = run("pocaduck_explain", || {
            let io = crate::storage::io_counters();
            let ld = |f: &std::sync::atomic::AtomicU64| f.load(Ordering::Relaxed);
            let before = [ld(&io.lists), ld(&io.gets), ld(&io.bytes_read)];
            let t0 = Instant::now();
            let index = reader::open(&b.store, &DuckDbCodec)?;
            let t1 = Instant::now();
            let trace = Arc::new(ReadTrace::default());
            let cols: Vec<usize> = (0..index.schema.columns.len() + 1).collect();
            let mut rows = 0u64;
            for r in ScanRequest::labels(b.labels.clone())
                .bbox(b.bbox)
                .columns(cols)
                .trace(trace.clone())
                .stream(&index)?
            {
                rows += r?.num_rows() as u64;
            }
            let t2 = Instant::now();
            let entries = index.view.entries_of(&b.labels)?;
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
                ld(&io.lists) - before[0],
                ld(&io.gets) - before[1],
                ld(&io.bytes_read) - before[2],
            ];
            let ms = |a: Instant, z: Instant| (z - a).as_secs_f64() * 1e3;
            let times = [ms(t0, t1), ms(t1, t2), ms(t0, t2)];
            let mut cols: Vec<(&str, ArrayRef)> = EXPLAIN_COUNTS
                .iter()
                .zip(counts)
                .map(|(n, v)| (*n, Arc::new(UInt64Array::from(vec![v])) as ArrayRef))
                .collect();
            cols.extend(
                EXPLAIN_TIMES
                    .iter()
                    .zip(times)
                    .map(|(n, v)| (*n, Arc::new(Float64Array::from(vec![v])) as ArrayRef)),
            );
            batch(cols)
        })?;
        Ok(Emitter::new(vec![rb]))
    }

    fn func(
        func: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), BoxErr> {
        func.get_init_data().emit(output)
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![ty(LogicalTypeId::Varchar), ty(LogicalTypeId::Any)])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(vec![("bbox".to_string(), ty(LogicalTypeId::Any))])
    }
}

// ---------------------------------------------------------------------------------------------
// pocaduck_check(store)

/// `pocaduck_check(store)`: one row per problem found (`ok = false`, the file, what is wrong),
/// then a summary row (`ok` true when nothing was found, `file` NULL).
pub struct Check;

impl VTab for Check {
    type BindData = String;
    type InitData = Emitter;

    fn bind(bind: &BindInfo) -> std::result::Result<String, BoxErr> {
        const F: &str = "pocaduck_check";
        client_context(bind)
            .apply_storage_options()
            .map_err(|e| err(F, e))?;
        let store = arg_string(Some(bind.get_parameter(0)), "store").map_err(|e| err(F, e))?;
        run(F, || Store::open(&store, OpenMode::Existing).map(|_| ()))?;
        add_columns(
            bind,
            &[
                ("ok", LogicalTypeId::Boolean),
                ("file", LogicalTypeId::Varchar),
                ("message", LogicalTypeId::Varchar),
            ],
        );
        Ok(store)
    }

    fn init(init: &InitInfo) -> std::result::Result<Emitter, BoxErr> {
        let name = unsafe { &*init.get_bind_data::<String>() };
        let rb = run("pocaduck_check", || {
            let store = Store::open(name, OpenMode::Existing)?;
            let r = crate::check::check(&store, &DuckDbCodec)?;
            let mut ok: Vec<bool> = r.problems.iter().map(|_| false).collect();
            let mut file: Vec<Option<String>> =
                r.problems.iter().map(|p| Some(p.file.clone())).collect();
            let mut msg: Vec<String> = r.problems.iter().map(|p| p.msg.clone()).collect();
            ok.push(r.problems.is_empty());
            file.push(None);
            msg.push(format!(
                "generation {}: {} commit segments, {} parts, {} entries, {} points checked; {} problem(s)",
                r.generation,
                r.commits,
                r.parts,
                r.entries,
                r.points,
                r.problems.len()
            ));
            batch(vec![
                ("ok", Arc::new(BooleanArray::from(ok)) as ArrayRef),
                ("file", Arc::new(StringArray::from(file)) as ArrayRef),
                ("message", Arc::new(StringArray::from(msg)) as ArrayRef),
            ])
        })?;
        Ok(Emitter::new(vec![rb]))
    }

    fn func(
        func: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), BoxErr> {
        func.get_init_data().emit(output)
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![ty(LogicalTypeId::Varchar)])
    }
}

/// Registers the maintenance table functions.
pub fn register(con: &Connection) -> duckdb::Result<()> {
    con.register_table_function::<Optimize>("pocaduck_optimize")?;
    con.register_table_function::<Stats>("pocaduck_stats")?;
    con.register_table_function::<Explain>("pocaduck_explain")?;
    con.register_table_function::<Check>("pocaduck_check")?;
    Ok(())
}
