//! `pocaduck_vacuum(store [, retain := INTERVAL '7 days'] [, dry_run := true] [, force := true])`:
//! deletes the files no retained generation needs (see [`crate::vacuum`]); one row per kind of
//! file: how many were deleted (or would be, with `dry_run`) and their bytes.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, StringArray, UInt64Array};
use duckdb::core::LogicalTypeId;
use duckdb::vtab::Value;

use super::args::{parse_duration_str, shown};
use super::index_db::DuckDbCodec;
use super::vtab::{batch, one_batch, BatchIter, Bind, StoreArg, TableFn};
use crate::error::{Error, Result};
use crate::storage::OpenMode;
use crate::vacuum::{vacuum, VacuumOptions, KINDS};

/// `pocaduck_vacuum(store)`.
pub struct Vacuum;

/// The `retain` argument: an INTERVAL, or its text (`'7 days'`, `'12 hours'`, `'0'`).
fn retain(v: Value) -> Result<std::time::Duration> {
    let text = match v.logical_type_id() {
        _ if v.is_null() => return Err(Error::arg("retain", "must not be NULL")),
        LogicalTypeId::Interval | LogicalTypeId::Varchar => v.to_string(),
        _ => {
            return Err(Error::arg(
                "retain",
                format!(
                    "must be an INTERVAL such as INTERVAL '7 days', got {}",
                    shown(&v)
                ),
            ))
        }
    };
    let bad = || {
        Error::arg(
            "retain",
            format!("must be an INTERVAL such as INTERVAL '7 days' (or its text: '12 hours', '0'), got '{text}'"),
        )
    };
    match parse_duration_str(&text) {
        Ok(Some(d)) => Ok(d),
        _ => Err(bad()),
    }
}

impl TableFn for Vacuum {
    const NAME: &'static str = "pocaduck_vacuum";
    const NAMED: &'static [&'static str] = &["retain", "dry_run", "force"];
    type Args = (StoreArg, VacuumOptions);

    fn bind(b: &Bind) -> Result<(StoreArg, VacuumOptions)> {
        let store = b.existing_store()?;
        let mut opts = VacuumOptions {
            dry_run: b.named_bool("dry_run", false)?,
            force: b.named_bool("force", false)?,
            ..Default::default()
        };
        if let Some(v) = b.named("retain") {
            opts.retain = retain(v)?;
        }
        opts.check()?;
        b.columns(&[
            ("kind", LogicalTypeId::Varchar),
            ("files", LogicalTypeId::UBigint),
            ("bytes", LogicalTypeId::UBigint),
            ("dry_run", LogicalTypeId::Boolean),
        ]);
        Ok((store, opts))
    }

    fn rows((name, opts): &(StoreArg, VacuumOptions), _: &[usize]) -> Result<BatchIter> {
        let r = vacuum(&name.open(OpenMode::Existing)?, &DuckDbCodec, opts)?;
        Ok(one_batch(batch(vec![
            (
                "kind",
                Arc::new(StringArray::from(KINDS.to_vec())) as ArrayRef,
            ),
            (
                "files",
                Arc::new(UInt64Array::from_iter_values(
                    r.kinds.iter().map(|k| k.files),
                )) as ArrayRef,
            ),
            (
                "bytes",
                Arc::new(UInt64Array::from_iter_values(
                    r.kinds.iter().map(|k| k.bytes),
                )) as ArrayRef,
            ),
            (
                "dry_run",
                Arc::new(BooleanArray::from(vec![opts.dry_run; KINDS.len()])) as ArrayRef,
            ),
        ])?))
    }
}
