//! Table functions. Each validates its arguments at bind time (so mistakes fail before any work)
//! and performs side effects (writes, commits, consolidation) once, at execution.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    UInt64Array,
};
use arrow::datatypes::DataType;
use duckdb::core::{DataChunkHandle, LogicalTypeHandle, LogicalTypeId};
use duckdb::vtab::{
    record_batch_to_duckdb_data_chunk, to_duckdb_logical_type, BindInfo, InitInfo,
    TableFunctionInfo, VTab, Value,
};
use duckdb::{ffi, Connection};

use super::index_db::DuckDbCodec;
use super::{arg_labels, arg_string, guard, parse_size, value_label, ClientContext};
use crate::consolidate::consolidate;
use crate::error::{Error, Result};
use crate::index::{block_array, BlockId};
use crate::reader;
use crate::storage::{OpenMode, Store};
use crate::writer::{lock_slot, session_slot, Session, Statement, WriterOptions};

pub(super) type BoxErr = Box<dyn std::error::Error>;

pub(super) fn err(func: &str, e: Error) -> BoxErr {
    super::user_error(func, &e).into()
}

pub(super) fn run<T>(func: &str, f: impl FnOnce() -> Result<T>) -> std::result::Result<T, BoxErr> {
    guard(func, f).map_err(Into::into)
}

const _: () =
    assert!(std::mem::size_of::<BindInfo>() == std::mem::size_of::<ffi::duckdb_bind_info>());

/// The client context of a bind (for `SET` settings).
pub(super) fn client_context(bind: &BindInfo) -> ClientContext {
    // SAFETY: BindInfo is a single-field wrapper around duckdb_bind_info (size checked above).
    let raw: ffi::duckdb_bind_info =
        unsafe { *(bind as *const BindInfo as *const ffi::duckdb_bind_info) };
    let mut ctx: ffi::duckdb_client_context = std::ptr::null_mut();
    // SAFETY: `raw` is the live bind info of this bind; ClientContext owns (and destroys) the
    // context written to `ctx`, and handles it staying null.
    unsafe { ffi::duckdb_table_function_get_client_context(raw, &mut ctx) };
    ClientContext::new(ctx)
}

pub(super) fn ty(id: LogicalTypeId) -> LogicalTypeHandle {
    LogicalTypeHandle::from(id)
}

/// A source of result batches.
pub type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// Rows handed to DuckDB in chunks of at most 2048 as they are produced (a stream is pulled
/// only as far as DuckDB asks: `LIMIT` stops reading).
pub struct Emitter {
    func: &'static str,
    state: Mutex<(BatchIter, Option<RecordBatch>, usize)>,
}

impl Emitter {
    pub(super) fn new(batches: Vec<RecordBatch>) -> Self {
        Emitter::stream("pocaduck", Box::new(batches.into_iter().map(Ok)))
    }

    /// Emits what `iter` yields; its errors are reported as errors of `func`.
    pub(super) fn stream(func: &'static str, iter: BatchIter) -> Self {
        Emitter {
            func,
            state: Mutex::new((iter, None, 0)),
        }
    }

    pub(super) fn emit(&self, output: &mut DataChunkHandle) -> std::result::Result<(), BoxErr> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| "pocaduck: emitter lock poisoned")?;
        let (iter, cur, pos) = &mut *st;
        loop {
            if let Some(b) = cur.as_ref().filter(|b| *pos < b.num_rows()) {
                let n = (b.num_rows() - *pos).min(2048);
                record_batch_to_duckdb_data_chunk(&b.slice(*pos, n), output)?;
                output.set_len(n);
                *pos += n;
                return Ok(());
            }
            match run(self.func, || iter.next().transpose())? {
                Some(b) => {
                    *cur = Some(b);
                    *pos = 0;
                }
                None => {
                    output.set_len(0);
                    return Ok(());
                }
            }
        }
    }
}

pub(super) fn batch(cols: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_from_iter(cols)?)
}

pub(super) fn add_columns(bind: &BindInfo, cols: &[(&str, LogicalTypeId)]) {
    for (n, t) in cols {
        bind.add_result_column(n, ty(*t));
    }
}

// ---------------------------------------------------------------------------------------------
// pocaduck_points(store, label | [labels])

/// `pocaduck_points(store, label [, bbox := …])`: every point of a label (or list of labels).
pub struct Points;

/// `pocaduck_points_in_box(store, bbox)`: every point of every label inside a box.
pub struct PointsInBox;

/// Bind data of `pocaduck_points` and `pocaduck_points_in_box`.
pub struct PointsBind {
    store: String,
    /// `None`: every label.
    labels: Option<Vec<u64>>,
    bbox: Option<reader::BBox>,
    /// Part-file column of each result column.
    part_cols: Vec<usize>,
}

/// Parses `[min_x, min_y, min_z, max_x, max_y, max_z]`.
pub(super) fn bbox_value(v: &Value, arg: &str) -> Result<reader::BBox> {
    let shape = || {
        format!(
            "must be a list of 6 numbers [min_x, min_y, min_z, max_x, max_y, max_z], got {}",
            super::shown(v)
        )
    };
    if v.is_null() {
        return Err(Error::arg(
            arg,
            "must not be NULL (leave it out for no box)",
        ));
    }
    let items = v.to_list().ok_or_else(|| Error::arg(arg, shape()))?;
    if items.len() != 6 {
        return Err(Error::arg(arg, shape()));
    }
    let mut b = [0f64; 6];
    for (i, x) in items.iter().enumerate() {
        let t = x.logical_type_id();
        if x.is_null()
            || !(super::is_integer(t)
                || matches!(
                    t,
                    LogicalTypeId::Float | LogicalTypeId::Double | LogicalTypeId::Decimal
                ))
        {
            return Err(Error::arg(arg, shape()));
        }
        b[i] = x
            .to_string()
            .parse()
            .map_err(|_| Error::arg(arg, shape()))?;
    }
    if b.iter().any(|x| x.is_nan()) {
        return Err(Error::arg(
            arg,
            format!("must not contain NaN, got {}", super::shown(v)),
        ));
    }
    if (0..3).any(|d| b[d] > b[d + 3]) {
        return Err(Error::arg(
            arg,
            format!("has a minimum above its maximum: {}", super::shown(v)),
        ));
    }
    Ok(b)
}

/// Shared bind: result columns `[label,] x, y, z, attributes…, block`.
fn bind_points(
    bind: &BindInfo,
    f: &str,
    labels: Option<Vec<u64>>,
    with_label: bool,
    bbox: Option<reader::BBox>,
) -> std::result::Result<PointsBind, BoxErr> {
    let store = arg_string(Some(bind.get_parameter(0)), "store").map_err(|e| err(f, e))?;
    let index = run(f, || reader::open(&store, &DuckDbCodec))?;
    let mut part_cols = Vec::new();
    if with_label {
        bind.add_result_column("label", ty(LogicalTypeId::UBigint));
        part_cols.push(0);
    }
    for (i, c) in index.schema.columns.iter().enumerate().skip(1) {
        bind.add_result_column(&c.name, to_duckdb_logical_type(&c.ty.arrow())?);
        part_cols.push(i + 1);
    }
    let b = &index.schema.columns[0];
    bind.add_result_column(&b.name, to_duckdb_logical_type(&b.ty.arrow())?);
    part_cols.push(1);
    Ok(PointsBind {
        store,
        labels,
        bbox,
        part_cols,
    })
}

fn init_points(init: &InitInfo, f: &'static str) -> std::result::Result<Emitter, BoxErr> {
    // SAFETY: the bind data of pocaduck_points and pocaduck_points_in_box is a `PointsBind`,
    // alive (and not mutated) until the statement ends.
    let bind = unsafe { &*init.get_bind_data::<PointsBind>() };
    let wanted: Vec<usize> = init
        .get_column_indices()
        .into_iter()
        .filter_map(|i| bind.part_cols.get(i as usize).copied())
        .collect();
    // Opened again per execution: a prepared statement sees the newest generation.
    let stream = run(f, || {
        let index = reader::open(&bind.store, &DuckDbCodec)?;
        let req = match &bind.labels {
            Some(ls) => reader::ScanRequest::labels(ls.clone()),
            None => reader::ScanRequest::all(),
        };
        req.bbox(bind.bbox).columns(wanted).stream(&index)
    })?;
    Ok(Emitter::stream(f, Box::new(stream)))
}

impl VTab for Points {
    type BindData = PointsBind;
    type InitData = Emitter;

    fn bind(bind: &BindInfo) -> std::result::Result<PointsBind, BoxErr> {
        const F: &str = "pocaduck_points";
        client_context(bind)
            .apply_storage_options()
            .map_err(|e| err(F, e))?;
        let (labels, with_label) =
            arg_labels(bind.get_parameter(1), "label").map_err(|e| err(F, e))?;
        let bbox = match bind.get_named_parameter("bbox") {
            Some(v) => Some(bbox_value(&v, "bbox").map_err(|e| err(F, e))?),
            None => None,
        };
        bind_points(bind, F, Some(labels), with_label, bbox)
    }

    fn init(init: &InitInfo) -> std::result::Result<Emitter, BoxErr> {
        init_points(init, "pocaduck_points")
    }

    fn func(
        func: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), BoxErr> {
        func.get_init_data().emit(output)
    }

    fn supports_pushdown() -> bool {
        true
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![ty(LogicalTypeId::Varchar), ty(LogicalTypeId::Any)])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(vec![("bbox".to_string(), ty(LogicalTypeId::Any))])
    }
}

impl VTab for PointsInBox {
    type BindData = PointsBind;
    type InitData = Emitter;

    fn bind(bind: &BindInfo) -> std::result::Result<PointsBind, BoxErr> {
        const F: &str = "pocaduck_points_in_box";
        client_context(bind)
            .apply_storage_options()
            .map_err(|e| err(F, e))?;
        let v = bind.get_parameter(1);
        if v.is_null() {
            return Err(err(F, Error::arg("bbox", "must not be NULL")));
        }
        let bbox = bbox_value(&v, "bbox").map_err(|e| err(F, e))?;
        bind_points(bind, F, None, true, Some(bbox))
    }

    fn init(init: &InitInfo) -> std::result::Result<Emitter, BoxErr> {
        init_points(init, "pocaduck_points_in_box")
    }

    fn func(
        func: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), BoxErr> {
        func.get_init_data().emit(output)
    }

    fn supports_pushdown() -> bool {
        true
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![ty(LogicalTypeId::Varchar), ty(LogicalTypeId::Any)])
    }
}

// ---------------------------------------------------------------------------------------------
// pocaduck_labels(store), pocaduck_blocks(store, label)

/// `pocaduck_labels(store)`: label, point_count, block_count, from the index.
pub struct Labels;

impl VTab for Labels {
    type BindData = String;
    type InitData = Emitter;

    fn bind(bind: &BindInfo) -> std::result::Result<String, BoxErr> {
        const F: &str = "pocaduck_labels";
        client_context(bind)
            .apply_storage_options()
            .map_err(|e| err(F, e))?;
        let store = arg_string(Some(bind.get_parameter(0)), "store").map_err(|e| err(F, e))?;
        run(F, || reader::open(&store, &DuckDbCodec))?;
        add_columns(
            bind,
            &[
                ("label", LogicalTypeId::UBigint),
                ("point_count", LogicalTypeId::UBigint),
                ("block_count", LogicalTypeId::UBigint),
            ],
        );
        Ok(store)
    }

    fn init(init: &InitInfo) -> std::result::Result<Emitter, BoxErr> {
        const F: &str = "pocaduck_labels";
        // SAFETY: this function's bind data is a `String`, alive until the statement ends.
        let store = unsafe { &*init.get_bind_data::<String>() };
        let index = run(F, || reader::open(store, &DuckDbCodec))?;
        // Streamed over the index segments, a batch of labels at a time.
        let mut stats = index.label_stats();
        let iter = std::iter::from_fn(move || {
            let mut v: Vec<(u64, u64, u64)> = Vec::with_capacity(2048);
            for r in stats.by_ref() {
                match r {
                    Ok(x) => v.push(x),
                    Err(e) => return Some(Err(e)),
                }
                if v.len() == 2048 {
                    break;
                }
            }
            if v.is_empty() {
                return None;
            }
            Some(batch(vec![
                (
                    "label",
                    Arc::new(UInt64Array::from_iter_values(v.iter().map(|x| x.0))),
                ),
                (
                    "point_count",
                    Arc::new(UInt64Array::from_iter_values(v.iter().map(|x| x.1))),
                ),
                (
                    "block_count",
                    Arc::new(UInt64Array::from_iter_values(v.iter().map(|x| x.2))),
                ),
            ]))
        });
        Ok(Emitter::stream(F, Box::new(iter)))
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

/// `pocaduck_blocks(store, label)`: block, point_count of one label, from the index.
pub struct Blocks;

impl VTab for Blocks {
    type BindData = (String, u64);
    type InitData = Emitter;

    fn bind(bind: &BindInfo) -> std::result::Result<(String, u64), BoxErr> {
        const F: &str = "pocaduck_blocks";
        client_context(bind)
            .apply_storage_options()
            .map_err(|e| err(F, e))?;
        let store = arg_string(Some(bind.get_parameter(0)), "store").map_err(|e| err(F, e))?;
        let label = value_label(&bind.get_parameter(1), "label").map_err(|e| err(F, e))?;
        let index = run(F, || reader::open(&store, &DuckDbCodec))?;
        let bt = index.schema.block_type();
        bind.add_result_column("block", to_duckdb_logical_type(&bt.arrow())?);
        bind.add_result_column("point_count", ty(LogicalTypeId::UBigint));
        Ok((store, label))
    }

    fn init(init: &InitInfo) -> std::result::Result<Emitter, BoxErr> {
        const F: &str = "pocaduck_blocks";
        // SAFETY: this function's bind data is a `(String, u64)`, alive until the statement ends.
        let (store, label) = unsafe { &*init.get_bind_data::<(String, u64)>() };
        let index = run(F, || reader::open(store, &DuckDbCodec))?;
        let blocks: Vec<(BlockId, u64)> = run(F, || index.blocks(*label))?;
        let bt = index.schema.block_type();
        let b = run(F, || {
            batch(vec![
                ("block", block_array(bt, blocks.iter().map(|x| x.0.clone()))),
                (
                    "point_count",
                    Arc::new(UInt64Array::from_iter_values(blocks.iter().map(|x| x.1))),
                ),
            ])
        })?;
        Ok(Emitter::new(vec![b]))
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
}

// ---------------------------------------------------------------------------------------------
// pocaduck_consolidate(store)

/// `pocaduck_consolidate(store)`: merge worker commits into a new unified index generation.
pub struct Consolidate;

/// Bind data of one-shot functions: their validated arguments.
pub struct OneShot<A> {
    pub(super) args: A,
}

/// Init data of one-shot functions: whether this execution did its work. It lives in init data
/// (one per execution), so a prepared statement executed again does the work again.
#[derive(Default)]
pub struct Once {
    pub(super) done: AtomicBool,
}

impl VTab for Consolidate {
    type BindData = OneShot<String>;
    type InitData = Once;

    fn bind(bind: &BindInfo) -> std::result::Result<OneShot<String>, BoxErr> {
        const F: &str = "pocaduck_consolidate";
        client_context(bind)
            .apply_storage_options()
            .map_err(|e| err(F, e))?;
        let store = arg_string(Some(bind.get_parameter(0)), "store").map_err(|e| err(F, e))?;
        run(F, || Store::open(&store, OpenMode::Existing).map(|_| ()))?;
        add_columns(
            bind,
            &[
                ("generation", LogicalTypeId::UBigint),
                ("workers", LogicalTypeId::UBigint),
                ("new_commits", LogicalTypeId::UBigint),
                ("new_files", LogicalTypeId::UBigint),
                ("new_points", LogicalTypeId::UBigint),
                ("new_entries", LogicalTypeId::UBigint),
                ("segments", LogicalTypeId::UBigint),
            ],
        );
        Ok(OneShot { args: store })
    }

    fn init(_: &InitInfo) -> std::result::Result<Once, BoxErr> {
        Ok(Once::default())
    }

    fn func(
        func: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), BoxErr> {
        let b = func.get_bind_data();
        if func.get_init_data().done.swap(true, Ordering::SeqCst) {
            output.set_len(0);
            return Ok(());
        }
        let s = run("pocaduck_consolidate", || {
            let store = Store::open(&b.args, OpenMode::Existing)?;
            consolidate(&store, &DuckDbCodec)
        })?;
        let u = |v: u64| -> ArrayRef { Arc::new(UInt64Array::from(vec![v])) };
        let rb = run("pocaduck_consolidate", || {
            batch(vec![
                ("generation", u(s.generation)),
                ("workers", u(s.workers)),
                ("new_commits", u(s.new_commits)),
                ("new_files", u(s.new_files)),
                ("new_points", u(s.new_points)),
                ("new_entries", u(s.new_entries)),
                ("segments", u(s.segments)),
            ])
        })?;
        Emitter::new(vec![rb]).emit(output)
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![ty(LogicalTypeId::Varchar)])
    }
}

// ---------------------------------------------------------------------------------------------
// pocaduck_write(store, worker := …, label := …, block := …, points := …) and pocaduck_commit

/// Arguments of `pocaduck_write`, validated.
pub struct WriteArgs {
    store: String,
    worker: String,
    attributes: Vec<String>,
    commit: bool,
    opts: WriterOptions,
    rows: RecordBatch,
}

/// `pocaduck_write(...)`: append one (label, block)'s points to the worker's session.
pub struct Write;

fn named_bool(bind: &BindInfo, name: &str, default: bool) -> Result<bool> {
    match bind.get_named_parameter(name) {
        None => Ok(default),
        Some(v) if v.is_null() => Err(Error::arg(name, "must not be NULL")),
        Some(v) if v.logical_type_id() == LogicalTypeId::Boolean => Ok(v.to_bool()),
        Some(v) => Err(Error::arg(
            name,
            format!("must be BOOLEAN, got {}", super::shown(&v)),
        )),
    }
}

fn named_attributes(v: Option<Value>, arg: &str) -> Result<Vec<String>> {
    v.map_or(Ok(vec![]), |v| super::attribute_names(&v, arg))
}

fn block_value(v: Option<Value>) -> Result<ArrayRef> {
    let v = v.ok_or_else(|| Error::arg("block", "is required"))?;
    if v.is_null() {
        return Err(Error::arg("block", "must not be NULL"));
    }
    match v.logical_type_id() {
        LogicalTypeId::Varchar => Ok(Arc::new(StringArray::from(vec![v.to_string()]))),
        t if super::is_integer(t) => {
            let n: i64 = v.to_string().parse().map_err(|_| {
                Error::arg(
                    "block",
                    format!("must fit BIGINT, got {}", super::shown(&v)),
                )
            })?;
            Ok(Arc::new(Int64Array::from(vec![n])))
        }
        _ => Err(Error::arg(
            "block",
            format!("must be VARCHAR or an integer, got {}", super::shown(&v)),
        )),
    }
}

/// Builds the coordinate and attribute columns from `points := [[x, y, z, a…], …]`.
fn points_columns(v: Option<Value>, n_attrs: usize) -> Result<Vec<ArrayRef>> {
    let arg = "points";
    let v = v.ok_or_else(|| Error::arg(arg, "is required"))?;
    if v.is_null() {
        return Err(Error::arg(arg, "must not be NULL"));
    }
    let pts = v.to_list().ok_or_else(|| {
        Error::arg(
            arg,
            format!(
                "must be a LIST of points [[x, y, z, …], …], got {}",
                super::shown(&v)
            ),
        )
    })?;
    let width = 3 + n_attrs;
    let mut elem: Option<LogicalTypeId> = None;
    let mut ints: Vec<Vec<i64>> = vec![Vec::with_capacity(pts.len()); width];
    let mut floats: Vec<Vec<f64>> = vec![Vec::with_capacity(pts.len()); width];
    for (i, p) in pts.iter().enumerate() {
        if p.is_null() {
            return Err(Error::arg(arg, format!("point {i} must not be NULL")));
        }
        let vals = p.to_list().ok_or_else(|| {
            Error::arg(
                arg,
                format!(
                    "point {i} must be a LIST [x, y, z, …], got {}",
                    super::shown(p)
                ),
            )
        })?;
        if vals.len() != width {
            return Err(Error::arg(
                arg,
                format!("point {i} has {} values; expected {width} (x, y, z and {n_attrs} attribute(s))", vals.len()),
            ));
        }
        for (j, x) in vals.iter().enumerate() {
            if x.is_null() {
                return Err(Error::arg(
                    arg,
                    format!("point {i} has a NULL value at position {j}"),
                ));
            }
            let t = x.logical_type_id();
            elem.get_or_insert(t);
            if super::is_integer(t) {
                let n: i64 = x.to_string().parse().map_err(|_| {
                    Error::arg(
                        arg,
                        format!("value {} does not fit BIGINT", super::shown(x)),
                    )
                })?;
                ints[j].push(n);
            } else if matches!(
                t,
                LogicalTypeId::Float | LogicalTypeId::Double | LogicalTypeId::Decimal
            ) {
                floats[j].push(x.to_double());
            } else {
                return Err(Error::arg(
                    arg,
                    format!("values must be numbers, got {}", super::shown(x)),
                ));
            }
        }
    }
    let t = elem.unwrap_or(LogicalTypeId::Integer);
    let cols: Vec<ArrayRef> = (0..width)
        .map(|j| -> Result<ArrayRef> {
            Ok(match t {
                LogicalTypeId::Float => Arc::new(Float32Array::from_iter_values(
                    floats[j].iter().map(|f| *f as f32),
                )),
                LogicalTypeId::Double | LogicalTypeId::Decimal => {
                    Arc::new(Float64Array::from(std::mem::take(&mut floats[j])))
                }
                other => {
                    let a: ArrayRef = Arc::new(Int64Array::from(std::mem::take(&mut ints[j])));
                    let target = match other {
                        LogicalTypeId::Tinyint => DataType::Int8,
                        LogicalTypeId::Smallint => DataType::Int16,
                        LogicalTypeId::Integer | LogicalTypeId::IntegerLiteral => DataType::Int32,
                        LogicalTypeId::UTinyint => DataType::UInt8,
                        LogicalTypeId::USmallint => DataType::UInt16,
                        LogicalTypeId::UInteger => DataType::UInt32,
                        LogicalTypeId::UBigint => DataType::UInt64,
                        _ => DataType::Int64,
                    };
                    arrow::compute::cast(&a, &target)?
                }
            })
        })
        .collect::<Result<_>>()?;
    Ok(cols)
}

pub(super) fn named_size(bind: &BindInfo, name: &str, default: u64) -> Result<u64> {
    match bind.get_named_parameter(name) {
        None => Ok(default),
        Some(v) => parse_size(&v, name),
    }
}

fn summary_columns(bind: &BindInfo) {
    add_columns(
        bind,
        &[
            ("worker", LogicalTypeId::Varchar),
            ("points", LogicalTypeId::UBigint),
            ("pending_points", LogicalTypeId::UBigint),
            ("committed", LogicalTypeId::Boolean),
            ("commit", LogicalTypeId::UBigint),
            ("parts", LogicalTypeId::UBigint),
        ],
    );
}

fn summary_batch(
    worker: &str,
    points: u64,
    pending: u64,
    commit: Option<crate::writer::CommitSummary>,
) -> Result<RecordBatch> {
    let u = |v: u64| -> ArrayRef { Arc::new(UInt64Array::from(vec![v])) };
    batch(vec![
        ("worker", Arc::new(StringArray::from(vec![worker]))),
        ("points", u(points)),
        ("pending_points", u(pending)),
        (
            "committed",
            Arc::new(BooleanArray::from(vec![commit.is_some()])),
        ),
        ("commit", u(commit.as_ref().map(|c| c.commit).unwrap_or(0))),
        ("parts", u(commit.as_ref().map(|c| c.parts).unwrap_or(0))),
    ])
}

impl VTab for Write {
    type BindData = OneShot<WriteArgs>;
    type InitData = Once;

    fn bind(bind: &BindInfo) -> std::result::Result<OneShot<WriteArgs>, BoxErr> {
        const F: &str = "pocaduck_write";
        client_context(bind)
            .apply_storage_options()
            .map_err(|e| err(F, e))?;
        let ctx = client_context(bind);
        let args = (|| -> Result<WriteArgs> {
            let store = arg_string(Some(bind.get_parameter(0)), "store")?;
            let worker = arg_string(bind.get_named_parameter("worker"), "worker")?;
            crate::layout::check_worker_id(&worker, "worker")?;
            let label_v = bind
                .get_named_parameter("label")
                .ok_or_else(|| Error::arg("label", "is required"))?;
            let label = value_label(&label_v, "label")?;
            let block = block_value(bind.get_named_parameter("block"))?;
            let attributes =
                named_attributes(bind.get_named_parameter("attributes"), "attributes")?;
            let cols = points_columns(bind.get_named_parameter("points"), attributes.len())?;
            let commit = named_bool(bind, "commit", false)?;
            let defaults = ctx.writer_options()?;
            let opts = WriterOptions {
                target_file_size: named_size(bind, "target_file_size", defaults.target_file_size)?,
                buffer_size: named_size(bind, "buffer_size", defaults.buffer_size)?,
            };
            let from = |name: &'static str, setting: &'static str| {
                if bind.get_named_parameter(name).is_some() {
                    name
                } else {
                    setting
                }
            };
            opts.check_as(
                from("target_file_size", super::SET_TARGET_FILE_SIZE),
                from("buffer_size", super::SET_BUFFER_SIZE),
            )?;
            let n = cols[0].len();
            let mut all: Vec<(String, ArrayRef)> = vec![
                ("label".into(), Arc::new(UInt64Array::from(vec![label; n]))),
                (
                    "block".into(),
                    arrow::compute::take(&block, &UInt64Array::from(vec![0u64; n]), None)?,
                ),
            ];
            for (j, c) in cols.into_iter().enumerate() {
                all.push((format!("c{j}"), c));
            }
            let rows = RecordBatch::try_from_iter(all)?;
            Ok(WriteArgs {
                store,
                worker,
                attributes,
                commit,
                opts,
                rows,
            })
        })()
        .map_err(|e| err(F, e))?;
        summary_columns(bind);
        Ok(OneShot { args })
    }

    fn init(_: &InitInfo) -> std::result::Result<Once, BoxErr> {
        Ok(Once::default())
    }

    fn func(
        func: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), BoxErr> {
        let b = func.get_bind_data();
        if func.get_init_data().done.swap(true, Ordering::SeqCst) {
            output.set_len(0);
            return Ok(());
        }
        let a = &b.args;
        let rb = run("pocaduck_write", || {
            let slot = session_slot(&a.store, &a.worker, OpenMode::Create)?;
            // The slot stays locked for the whole statement.
            let mut statement = Statement::begin(
                lock_slot(&slot),
                || {
                    Session::start(
                        &a.store,
                        &a.worker,
                        a.attributes.clone(),
                        "attributes",
                        a.opts,
                    )
                },
                |s| {
                    s.check_attributes(&a.attributes, "attributes")?;
                    s.set_options(a.opts)
                },
            )?;
            statement.append(&a.rows)?;
            let n = a.rows.num_rows() as u64;
            let end = statement.finish(a.commit)?;
            if a.commit {
                let c = end
                    .commit
                    .ok_or_else(|| Error::Internal("no session".into()))?;
                summary_batch(&a.worker, n, 0, Some(c))
            } else {
                summary_batch(&a.worker, n, end.pending_points, None)
            }
        })?;
        Emitter::new(vec![rb]).emit(output)
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![ty(LogicalTypeId::Varchar)])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(
            [
                ("worker", LogicalTypeId::Any),
                ("label", LogicalTypeId::Any),
                ("block", LogicalTypeId::Any),
                ("points", LogicalTypeId::Any),
                ("attributes", LogicalTypeId::Any),
                ("commit", LogicalTypeId::Any),
                ("target_file_size", LogicalTypeId::Any),
                ("buffer_size", LogicalTypeId::Any),
            ]
            .into_iter()
            .map(|(n, t)| (n.to_string(), ty(t)))
            .collect(),
        )
    }
}

/// `pocaduck_commit(store, worker := …)`: make the worker's session in this process durable.
pub struct Commit;

impl VTab for Commit {
    type BindData = OneShot<(String, String)>;
    type InitData = Once;

    fn bind(bind: &BindInfo) -> std::result::Result<Self::BindData, BoxErr> {
        const F: &str = "pocaduck_commit";
        client_context(bind)
            .apply_storage_options()
            .map_err(|e| err(F, e))?;
        let args = (|| -> Result<(String, String)> {
            let store = arg_string(Some(bind.get_parameter(0)), "store")?;
            let worker = arg_string(bind.get_named_parameter("worker"), "worker")?;
            crate::layout::check_worker_id(&worker, "worker")?;
            Ok((store, worker))
        })()
        .map_err(|e| err(F, e))?;
        summary_columns(bind);
        Ok(OneShot { args })
    }

    fn init(_: &InitInfo) -> std::result::Result<Once, BoxErr> {
        Ok(Once::default())
    }

    fn func(
        func: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), BoxErr> {
        let b = func.get_bind_data();
        if func.get_init_data().done.swap(true, Ordering::SeqCst) {
            output.set_len(0);
            return Ok(());
        }
        let (store, worker) = &b.args;
        let rb = run("pocaduck_commit", || {
            let slot = session_slot(store, worker, OpenMode::Existing)?;
            let mut guard = lock_slot(&slot);
            if guard.as_ref().is_some_and(Session::in_statement) {
                return Err(Error::Conflict {
                    store: store.clone(),
                    msg: format!("worker '{worker}' is being written by a running statement; commit after it ends"),
                });
            }
            match guard.take() {
                None => summary_batch(worker, 0, 0, None),
                Some(s) => {
                    let c = s.commit()?;
                    summary_batch(worker, c.points, 0, Some(c))
                }
            }
        })?;
        Emitter::new(vec![rb]).emit(output)
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        Some(vec![ty(LogicalTypeId::Varchar)])
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(vec![("worker".to_string(), ty(LogicalTypeId::Any))])
    }
}

/// Registers every table function.
pub fn register(con: &Connection) -> duckdb::Result<()> {
    con.register_table_function::<Write>("pocaduck_write")?;
    con.register_table_function::<Commit>("pocaduck_commit")?;
    con.register_table_function::<Consolidate>("pocaduck_consolidate")?;
    con.register_table_function::<Points>("pocaduck_points")?;
    con.register_table_function::<PointsInBox>("pocaduck_points_in_box")?;
    con.register_table_function::<Labels>("pocaduck_labels")?;
    con.register_table_function::<Blocks>("pocaduck_blocks")?;
    super::maintenance::register(con)?;
    Ok(())
}
