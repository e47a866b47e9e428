//! `pocaduck_check(store)`: verifies a whole store (see [`crate::check`]): one row per problem
//! found (`ok = false`, the file, what is wrong), then a summary row (`ok` true when nothing was
//! found, `file` NULL).

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, StringArray};
use duckdb::core::LogicalTypeId;

use super::index_db::DuckDbCodec;
use super::vtab::{batch, one_batch, BatchIter, Bind, StoreArg, TableFn};
use crate::error::Result;
use crate::storage::OpenMode;

/// `pocaduck_check(store)`.
pub struct Check;

impl TableFn for Check {
    const NAME: &'static str = "pocaduck_check";
    type Args = StoreArg;

    fn bind(b: &Bind) -> Result<StoreArg> {
        let store = b.existing_store()?;
        b.columns(&[
            ("ok", LogicalTypeId::Boolean),
            ("file", LogicalTypeId::Varchar),
            ("message", LogicalTypeId::Varchar),
        ]);
        Ok(store)
    }

    fn rows(name: &StoreArg, _: &[usize]) -> Result<BatchIter> {
        let store = name.open(OpenMode::Existing)?;
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
        Ok(one_batch(batch(vec![
            ("ok", Arc::new(BooleanArray::from(ok)) as ArrayRef),
            ("file", Arc::new(StringArray::from(file)) as ArrayRef),
            ("message", Arc::new(StringArray::from(msg)) as ArrayRef),
        ])?))
    }
}
