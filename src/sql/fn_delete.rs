//! `pocaduck_delete(store, labels := [...], blocks := [...] [, worker := '…'])`: commits a
//! delete (see [`crate::delete`]), visible after the next consolidate; one row about it.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, UInt64Array};
use duckdb::core::LogicalTypeId;
use duckdb::vtab::Value;

use super::args::{arg_labels, arg_string, is_integer, shown};
use super::vtab::{batch, one_batch, BatchIter, Bind, StoreArg, TableFn};
use crate::delete::{delete, DELETE_WORKER};
use crate::error::{Error, Result};
use crate::storage::OpenMode;
use crate::tombstone::Block;

/// `pocaduck_delete(store, …)`.
pub struct Delete;

/// What a delete names.
pub struct DeleteArgs {
    store: StoreArg,
    labels: Option<Vec<u64>>,
    blocks: Option<Vec<Block>>,
    worker: String,
}

/// A block id value: an integer or a VARCHAR.
fn block_value(v: &Value) -> Result<Block> {
    if v.is_null() {
        return Err(Error::arg("blocks", "must not hold NULL"));
    }
    let t = v.logical_type_id();
    if t == LogicalTypeId::Varchar {
        return Ok(Block::Str(v.to_string()));
    }
    if is_integer(t) {
        let s = v.to_string();
        return s
            .parse::<i64>()
            .map(Block::Int)
            .map_err(|_| Error::arg("blocks", format!("must fit BIGINT, got {s}")));
    }
    Err(Error::arg(
        "blocks",
        format!("must be block ids (integers or VARCHAR), got {}", shown(v)),
    ))
}

impl TableFn for Delete {
    const NAME: &'static str = "pocaduck_delete";
    const NAMED: &'static [&'static str] = &["labels", "blocks", "worker"];
    type Args = DeleteArgs;

    fn bind(b: &Bind) -> Result<DeleteArgs> {
        let store = b.existing_store()?;
        let labels = match b.named("labels") {
            None => None,
            Some(v) if v.is_null() => return Err(Error::arg("labels", "must not be NULL")),
            Some(v) => Some(arg_labels(v, "labels")?.0),
        };
        let blocks = match b.named("blocks") {
            None => None,
            Some(v) if v.is_null() => return Err(Error::arg("blocks", "must not be NULL")),
            Some(v) if v.logical_type_id() == LogicalTypeId::List => Some(
                v.to_list()
                    .unwrap_or_default()
                    .iter()
                    .map(block_value)
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(v) => Some(vec![block_value(&v)?]),
        };
        let worker = match b.named("worker") {
            None => DELETE_WORKER.to_string(),
            v => arg_string(v, "worker")?,
        };
        b.columns(&[
            ("worker", LogicalTypeId::Varchar),
            ("commit", LogicalTypeId::UBigint),
            ("labels", LogicalTypeId::UBigint),
            ("blocks", LogicalTypeId::UBigint),
        ]);
        Ok(DeleteArgs {
            store,
            labels,
            blocks,
            worker,
        })
    }

    fn rows(a: &DeleteArgs, _: &[usize]) -> Result<BatchIter> {
        let s = delete(
            &a.store.open(OpenMode::Existing)?,
            a.labels.clone(),
            a.blocks.clone(),
            &a.worker,
        )?;
        Ok(one_batch(batch(vec![
            (
                "worker",
                Arc::new(StringArray::from(vec![s.worker])) as ArrayRef,
            ),
            (
                "commit",
                Arc::new(UInt64Array::from(vec![s.commit])) as ArrayRef,
            ),
            (
                "labels",
                Arc::new(UInt64Array::from(vec![s.labels])) as ArrayRef,
            ),
            (
                "blocks",
                Arc::new(UInt64Array::from(vec![s.blocks])) as ArrayRef,
            ),
        ])?))
    }
}
