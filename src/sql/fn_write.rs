//! `pocaduck_write(store, worker := …, label := …, block := …, points := …)` and
//! `pocaduck_commit(store, worker := …)`: rows into a worker's session of this process, and its
//! commit. Side effects happen once per execution, never at bind.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    UInt64Array,
};
use arrow::datatypes::DataType;
use duckdb::core::LogicalTypeId;
use duckdb::vtab::Value;

use super::args::{attribute_names, is_integer, shown, value_label};
use super::vtab::{batch, one_batch, BatchIter, Bind, StoreArg, TableFn};
use crate::error::{Error, Result};
use crate::storage::OpenMode;
use crate::writer::{lock_slot, session_slot, CommitSummary, Session, Statement, WriterOptions};

/// Arguments of `pocaduck_write`, validated.
pub struct WriteArgs {
    store: StoreArg,
    worker: String,
    attributes: Vec<String>,
    commit: bool,
    opts: WriterOptions,
    rows: RecordBatch,
}

/// `pocaduck_write(...)`: append one (label, block)'s points to the worker's session.
pub struct Write;

/// `pocaduck_commit(store, worker := …)`: make the worker's session in this process durable.
pub struct Commit;

/// The worker argument (`worker := …`), checked.
fn worker_arg(b: &Bind) -> Result<String> {
    let worker = super::args::arg_string(b.named("worker"), "worker")?;
    crate::layout::check_worker_id(&worker, "worker")?;
    Ok(worker)
}

fn named_attributes(v: Option<Value>, arg: &str) -> Result<Vec<String>> {
    v.map_or(Ok(vec![]), |v| attribute_names(&v, arg))
}

fn block_value(v: Option<Value>) -> Result<ArrayRef> {
    let v = v.ok_or_else(|| Error::arg("block", "is required"))?;
    if v.is_null() {
        return Err(Error::arg("block", "must not be NULL"));
    }
    match v.logical_type_id() {
        LogicalTypeId::Varchar => Ok(Arc::new(StringArray::from(vec![v.to_string()]))),
        t if is_integer(t) => {
            let n: i64 = v
                .to_string()
                .parse()
                .map_err(|_| Error::arg("block", format!("must fit BIGINT, got {}", shown(&v))))?;
            Ok(Arc::new(Int64Array::from(vec![n])))
        }
        _ => Err(Error::arg(
            "block",
            format!("must be VARCHAR or an integer, got {}", shown(&v)),
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
                shown(&v)
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
                format!("point {i} must be a LIST [x, y, z, …], got {}", shown(p)),
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
            if is_integer(t) {
                let n: i64 = x.to_string().parse().map_err(|_| {
                    Error::arg(arg, format!("value {} does not fit BIGINT", shown(x)))
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
                    format!("values must be numbers, got {}", shown(x)),
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

/// Result columns of both functions: one row about the worker's session.
const SUMMARY_COLUMNS: [(&str, LogicalTypeId); 6] = [
    ("worker", LogicalTypeId::Varchar),
    ("points", LogicalTypeId::UBigint),
    ("pending_points", LogicalTypeId::UBigint),
    ("committed", LogicalTypeId::Boolean),
    ("commit", LogicalTypeId::UBigint),
    ("parts", LogicalTypeId::UBigint),
];

fn summary(
    worker: &str,
    points: u64,
    pending: u64,
    commit: Option<CommitSummary>,
) -> Result<BatchIter> {
    let u = |v: u64| -> ArrayRef { Arc::new(UInt64Array::from(vec![v])) };
    Ok(one_batch(batch(vec![
        ("worker", Arc::new(StringArray::from(vec![worker]))),
        ("points", u(points)),
        ("pending_points", u(pending)),
        (
            "committed",
            Arc::new(BooleanArray::from(vec![commit.is_some()])),
        ),
        ("commit", u(commit.as_ref().map(|c| c.commit).unwrap_or(0))),
        ("parts", u(commit.as_ref().map(|c| c.parts).unwrap_or(0))),
    ])?))
}

impl TableFn for Write {
    const NAME: &'static str = "pocaduck_write";
    const NAMED: &'static [&'static str] = &[
        "worker",
        "label",
        "block",
        "points",
        "attributes",
        "commit",
        "target_file_size",
        "buffer_size",
    ];
    type Args = WriteArgs;

    fn bind(b: &Bind) -> Result<WriteArgs> {
        let store = b.store()?;
        let worker = worker_arg(b)?;
        let label_v = b
            .named("label")
            .ok_or_else(|| Error::arg("label", "is required"))?;
        let label = value_label(&label_v, "label")?;
        let block = block_value(b.named("block"))?;
        let attributes = named_attributes(b.named("attributes"), "attributes")?;
        let cols = points_columns(b.named("points"), attributes.len())?;
        let commit = b.named_bool("commit", false)?;
        let defaults = b.context().writer_options()?;
        let opts = WriterOptions {
            target_file_size: b.named_size("target_file_size", defaults.target_file_size)?,
            buffer_size: b.named_size("buffer_size", defaults.buffer_size)?,
            ..defaults
        };
        // A size is named in errors by where it came from: the argument, or the SET setting.
        let from = |name: &'static str, setting: &'static str| {
            if b.named(name).is_some() {
                name
            } else {
                setting
            }
        };
        opts.check_as(
            from("target_file_size", super::SET_TARGET_FILE_SIZE),
            from("buffer_size", super::SET_BUFFER_SIZE),
        )?;
        // The rows in the input layout (`schema::col`): label, block, x, y, z, attributes.
        let n = cols[0].len();
        if let Some(v) = block.as_any().downcast_ref::<StringArray>() {
            let len = v.value_length(0) as usize;
            if len > crate::bounded::VALUE_BYTES
                || len.saturating_mul(n) > crate::bounded::STRING_BYTES
            {
                return Err(Error::arg(
                    "block",
                    format!(
                        "is a VARCHAR of {len} bytes for {n} points; pocaduck_write takes at most {} MiB of block strings per call (values of at most {} MiB): use COPY",
                        crate::bounded::STRING_BYTES >> 20,
                        crate::bounded::VALUE_BYTES >> 20
                    ),
                ));
            }
        }
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
        b.columns(&SUMMARY_COLUMNS);
        Ok(WriteArgs {
            store,
            worker,
            attributes,
            commit,
            opts,
            rows,
        })
    }

    fn rows(a: &WriteArgs, _: &[usize]) -> Result<BatchIter> {
        let store = a.store.open(OpenMode::Create)?;
        let slot = session_slot(&store, &a.worker)?;
        // The slot stays locked for the whole statement.
        let mut statement = Statement::begin(
            lock_slot(&slot),
            || {
                Session::start(
                    &store,
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
            summary(&a.worker, n, 0, Some(c))
        } else {
            summary(&a.worker, n, end.pending_points, None)
        }
    }
}

impl TableFn for Commit {
    const NAME: &'static str = "pocaduck_commit";
    const NAMED: &'static [&'static str] = &["worker"];
    type Args = (StoreArg, String);

    fn bind(b: &Bind) -> Result<(StoreArg, String)> {
        let store = b.store()?;
        let worker = worker_arg(b)?;
        b.columns(&SUMMARY_COLUMNS);
        Ok((store, worker))
    }

    fn rows((store, worker): &(StoreArg, String), _: &[usize]) -> Result<BatchIter> {
        let slot = session_slot(&store.open(OpenMode::Existing)?, worker)?;
        let mut guard = lock_slot(&slot);
        if guard.as_ref().is_some_and(Session::in_statement) {
            return Err(Error::Conflict {
                store: store.name.clone(),
                msg: format!(
                    "worker '{worker}' is being written by a running statement; commit after it ends"
                ),
            });
        }
        match guard.take() {
            None => summary(worker, 0, 0, None),
            Some(s) => {
                let c = s.commit()?;
                summary(worker, c.points, 0, Some(c))
            }
        }
    }
}
