//! `pocaduck_delete`: hides labels, blocks, or labels within blocks from the next generation on.
//!
//! A delete is a commit without entries whose metadata says what it hides
//! ([`crate::index::META_HIDES`]), written by a worker of its own (default [`DELETE_WORKER`])
//! with the same create-if-absent numbering as every commit: durable when the call returns,
//! visible after the next consolidate (which turns it into a tombstone, module
//! [`crate::tombstone`]), idempotent (deleting twice hides the same points), and undone by
//! nothing but writing the points again (a later commit of those labels or blocks is not hidden).

use crate::error::{Error, Result};
use crate::index::{encode_segment, META_HIDES};
use crate::layout;
use crate::schema::ColumnType;
use crate::storage::Store;
use crate::tombstone::{Block, Hides};
use crate::writer::{latest_commit, new_session_id, not_a_store, read_schema};

/// The worker deletes are committed as unless the call names another.
pub const DELETE_WORKER: &str = "_delete";

/// What a delete committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteSummary {
    /// The worker the delete was committed as.
    pub worker: String,
    /// Its commit number.
    pub commit: u64,
    /// Distinct labels named (0: every label of the blocks).
    pub labels: u64,
    /// Distinct blocks named (0: every block of the labels).
    pub blocks: u64,
}

/// Commits a delete of the points of `labels` (all labels when `None`) within `blocks` (all
/// blocks when `None`) as `worker`. Errors name the argument (`labels`, `blocks`, `worker`).
pub fn delete(
    store: &Store,
    labels: Option<Vec<u64>>,
    blocks: Option<Vec<Block>>,
    worker: &str,
) -> Result<DeleteSummary> {
    layout::check_worker_id(worker, "worker")?;
    if labels.is_none() && blocks.is_none() {
        return Err(Error::arg(
            "labels",
            "or blocks is required: pocaduck_delete(store, labels := [...]) and/or blocks := [...]",
        ));
    }
    for (arg, empty) in [
        ("labels", labels.as_ref().is_some_and(|v| v.is_empty())),
        ("blocks", blocks.as_ref().is_some_and(|v| v.is_empty())),
    ] {
        if empty {
            return Err(Error::arg(
                arg,
                "must name at least one (an empty list deletes nothing)",
            ));
        }
    }
    let schema = read_schema(store)?.ok_or_else(|| not_a_store(store))?;
    let block_type = schema.block_type();
    if let Some(bs) = &blocks {
        let int = block_type != ColumnType::Varchar;
        for b in bs {
            let ok = matches!((b, int), (Block::Int(_), true) | (Block::Str(_), false));
            if !ok {
                return Err(Error::arg(
                    "blocks",
                    format!(
                        "must be {} block ids (the store's blocks are {}), got {}",
                        if int { "integer" } else { "VARCHAR" },
                        block_type.name(),
                        match b {
                            Block::Int(i) => format!("the integer {i}"),
                            Block::Str(s) => format!("the string '{s}'"),
                        }
                    ),
                ));
            }
        }
    }
    let mut hides = Hides { labels, blocks };
    if let Some(l) = &mut hides.labels {
        l.sort_unstable();
        l.dedup();
    }
    if let Some(b) = &mut hides.blocks {
        b.sort();
        b.dedup();
    }
    let seg = encode_segment(
        &[],
        block_type,
        &[
            ("pocaduck.session", new_session_id()),
            ("pocaduck.worker", worker.to_string()),
            (META_HIDES, hides.to_json()),
        ],
    )?;
    // Numbered like a writer's commit: after the commits on storage and the last one merged.
    let first = latest_commit(store, worker)?.max(crate::log::merged_commit(store, worker)?) + 1;
    let commit = crate::log::create_numbered(
        store,
        first,
        |n| layout::commit_file(worker, n),
        seg,
        &format!("a delete for worker '{worker}'"),
    )?;
    Ok(DeleteSummary {
        worker: worker.to_string(),
        commit,
        labels: hides.labels.map_or(0, |l| l.len() as u64),
        blocks: hides.blocks.map_or(0, |b| b.len() as u64),
    })
}
