//! `pocaduck_labels(store)` and `pocaduck_blocks(store, label)`: what the index says about labels,
//! without reading any point.

use std::sync::Arc;

use arrow::array::UInt64Array;
use duckdb::core::LogicalTypeId;

use super::args::value_label;
use super::vtab::{batch, one_batch, BatchIter, Bind, StoreArg, TableFn};
use crate::error::Result;
use crate::index::{block_array, BlockId};

/// `pocaduck_labels(store)`: label, point_count, block_count, from the index.
pub struct Labels;

impl TableFn for Labels {
    const NAME: &'static str = "pocaduck_labels";
    const NAMED: &'static [&'static str] = &["generation"];
    type Args = StoreArg;

    fn bind(b: &Bind) -> Result<StoreArg> {
        let store = b.store()?;
        store.bind_index()?;
        b.ubigint_columns(&["label", "point_count", "block_count"]);
        Ok(store)
    }

    fn rows(store: &StoreArg, _: &[usize]) -> Result<BatchIter> {
        let index = store.index()?;
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
            let col = |f: fn(&(u64, u64, u64)) -> u64| {
                Arc::new(UInt64Array::from_iter_values(v.iter().map(f))) as _
            };
            Some(batch(vec![
                ("label", col(|x| x.0)),
                ("point_count", col(|x| x.1)),
                ("block_count", col(|x| x.2)),
            ]))
        });
        Ok(Box::new(iter))
    }
}

/// `pocaduck_blocks(store, label)`: block, point_count of one label, from the index.
pub struct Blocks;

impl TableFn for Blocks {
    const NAME: &'static str = "pocaduck_blocks";
    const NAMED: &'static [&'static str] = &["generation"];
    const PARAMETERS: &'static [&'static str] = &["label"];
    type Args = (StoreArg, u64);

    fn bind(b: &Bind) -> Result<(StoreArg, u64)> {
        let store = b.store()?;
        let label = value_label(&b.param(1), "label")?;
        let index = store.bind_index()?;
        b.arrow_column("block", &index.schema.block_type().arrow())?;
        b.columns(&[("point_count", LogicalTypeId::UBigint)]);
        Ok((store, label))
    }

    fn rows((store, label): &(StoreArg, u64), _: &[usize]) -> Result<BatchIter> {
        let index = store.index()?;
        let blocks: Vec<(BlockId, u64)> = index.blocks(*label)?;
        let bt = index.schema.block_type();
        Ok(one_batch(batch(vec![
            ("block", block_array(bt, blocks.iter().map(|x| x.0.clone()))),
            (
                "point_count",
                Arc::new(UInt64Array::from_iter_values(blocks.iter().map(|x| x.1))),
            ),
        ])?))
    }
}
