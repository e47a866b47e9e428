//! `pocaduck_delete`: hides labels, blocks, or labels within blocks from the next generation on.
//!
//! A delete is a commit without entries whose metadata says what it hides
//! ([`crate::index::META_HIDES`]), written by a worker of its own (default [`DELETE_WORKER`])
//! with the same create-if-absent numbering as every commit: durable when the call returns,
//! visible after the next consolidate (which turns it into a tombstone, module
//! [`crate::tombstone`]), idempotent (deleting twice hides the same points), and undone by
//! nothing but writing the points again (a later commit of those labels or blocks is not hidden).

use crate::error::{Error, Result};
use crate::index::{encode_segment, META_COMMITTED_MS, META_HIDES};
use crate::layout;
use crate::schema::ColumnType;
use crate::storage::Store;
use crate::tombstone::{Block, Hides};
use crate::writer::{create_commit, new_session_id, not_a_store, read_schema};

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
            (META_COMMITTED_MS, crate::log::now_ms().to_string()),
        ],
    )?;
    let commit = create_commit(store, worker, seg, "a delete")?;
    Ok(DeleteSummary {
        worker: worker.to_string(),
        commit,
        labels: hides.labels.map_or(0, |l| l.len() as u64),
        blocks: hides.blocks.map_or(0, |b| b.len() as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consolidate::consolidate;
    use crate::consolidate::tests::{write, JsonCodec};
    use crate::storage::OpenMode;
    use crate::writer::tests::{rows, session_at};
    use crate::writer::WriterOptions;
    use arrow::array::{Int32Array, StringArray};

    /// Every visible point of the newest generation (or of `generation`) as (label, block, x),
    /// sorted; read through labels, then points.
    fn visible(name: &str, generation: Option<u64>) -> Vec<(u64, String, i32)> {
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let idx = match generation {
            Some(g) => crate::reader::open_generation(store, &JsonCodec, g).unwrap(),
            None => crate::reader::open(name, &JsonCodec).unwrap(),
        };
        let mut out = Vec::new();
        let labels: Vec<_> = idx.label_stats().map(|r| r.unwrap()).collect();
        for (l, points, _) in labels {
            let mut n = 0;
            for b in idx.points(&[l], &[1, 2]).unwrap() {
                let blocks = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                let xs = b.column(1).as_any().downcast_ref::<Int32Array>().unwrap();
                for i in 0..b.num_rows() {
                    out.push((l, blocks.value(i).to_string(), xs.value(i)));
                    n += 1;
                }
            }
            assert_eq!(
                n, points,
                "label {l}: pocaduck_labels' count and the points read agree"
            );
        }
        out.sort();
        out
    }

    fn pts(v: &[(u64, &str, i32)]) -> Vec<(u64, String, i32)> {
        let mut v: Vec<_> = v.iter().map(|(l, b, x)| (*l, b.to_string(), *x)).collect();
        v.sort();
        v
    }

    /// A commit of `labels` in `block` (x values `xs`) written with REPLACE_BLOCKS.
    fn replace(name: &str, worker: &str, labels: &[u64], block: &str, xs: &[i32]) {
        let mut s = session_at(name, worker, WriterOptions::default()).unwrap();
        s.set_replace_blocks("REPLACE_BLOCKS").unwrap();
        let xyz: Vec<[i32; 3]> = xs.iter().map(|x| [*x, 0, 0]).collect();
        s.append(&rows(labels, block, &xyz)).unwrap();
        s.commit().unwrap();
    }

    fn consolidated(name: &str) -> u64 {
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap().generation
    }

    fn manifest(name: &str) -> crate::log::Manifest {
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let g = crate::log::latest(&store).unwrap().unwrap();
        crate::log::load(&store, &g, &JsonCodec).unwrap().manifest
    }

    fn pause() {
        // Commits of one consolidate are ordered by their storage time.
        std::thread::sleep(std::time::Duration::from_millis(30));
    }

    #[test]
    fn replaced_blocks_and_deletes_hide_earlier_points_only() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(
            name,
            "w1",
            &[
                rows(&[1, 2], "a", &[[1, 0, 0], [2, 0, 0]]),
                rows(&[1, 2], "b", &[[3, 0, 0], [4, 0, 0]]),
            ],
        );
        write(name, "w2", &[rows(&[1], "a", &[[5, 0, 0]])]);
        assert_eq!(consolidated(name), 1);
        let first = visible(name, None);
        assert_eq!(
            first,
            pts(&[
                (1, "a", 1),
                (1, "a", 5),
                (1, "b", 3),
                (2, "a", 2),
                (2, "b", 4)
            ])
        );
        // Block a is edited (labels 1 and 2 merged into 3) and re-scanned by another worker.
        // In the same consolidate: w5's commit is older than the re-scan (hidden), w4's newer
        // (kept).
        write(name, "w5", &[rows(&[5], "a", &[[6, 0, 0]])]);
        pause();
        replace(name, "w3", &[3, 3], "a", &[7, 8]);
        pause();
        write(name, "w4", &[rows(&[4], "a", &[[9, 0, 0]])]);
        assert_eq!(consolidated(name), 2);
        let rescanned = pts(&[
            (1, "b", 3),
            (2, "b", 4),
            (3, "a", 7),
            (3, "a", 8),
            (4, "a", 9),
        ]);
        assert_eq!(visible(name, None), rescanned);
        let m = manifest(name);
        assert_eq!((m.format, m.tombstones.len()), (3, 1));
        // The generation before the re-scan still reads as it was.
        assert_eq!(visible(name, Some(1)), first);
        // The same re-scan again: block a is what the re-scan wrote, nothing else (w4's later
        // point is replaced too); twice more changes nothing.
        let rescanned = pts(&[(1, "b", 3), (2, "b", 4), (3, "a", 7), (3, "a", 8)]);
        for _ in 0..2 {
            pause();
            replace(name, "w3", &[3, 3], "a", &[7, 8]);
            consolidated(name);
            assert_eq!(visible(name, None), rescanned);
        }

        // Deletes: a label everywhere, a label within a block.
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let d = delete(&store, Some(vec![2, 2]), None, DELETE_WORKER).unwrap();
        assert_eq!((d.commit, d.labels, d.blocks), (1, 1, 0));
        delete(
            &store,
            Some(vec![1]),
            Some(vec![Block::Str("b".into())]),
            DELETE_WORKER,
        )
        .unwrap();
        // Not visible before consolidate.
        assert_eq!(visible(name, None), rescanned);
        consolidated(name);
        let deleted = pts(&[(3, "a", 7), (3, "a", 8)]);
        assert_eq!(visible(name, None), deleted);
        // Deleting again is a no-op; points written after a delete are not hidden by it.
        delete(&store, Some(vec![2]), None, DELETE_WORKER).unwrap();
        consolidated(name);
        assert_eq!(visible(name, None), deleted);
        pause();
        write(name, "w1", &[rows(&[2], "c", &[[10, 0, 0]])]);
        consolidated(name);
        let mut now = deleted.clone();
        now.push((2, "c".into(), 10));
        now.sort();
        assert_eq!(visible(name, None), now);

        // Tier merges apply the tombstones to what they merge: nothing hidden comes back.
        for i in 0..9 {
            write(name, "w9", &[rows(&[100 + i], "z", &[[i as i32, 0, 0]])]);
            consolidated(name);
            now.push((100 + i, "z".into(), i as i32));
        }
        now.sort();
        assert_eq!(visible(name, None), now);
        let m = manifest(name);
        let lowest = m.segments.iter().map(|r| r.run).min().unwrap();
        assert!(m.tombstones.iter().all(|t| t.run > lowest), "{m:?}");

        // Optimize writes only visible entries and drops every tombstone.
        let opts = crate::optimize::OptimizeOptions::default();
        crate::optimize::optimize(&store, &JsonCodec, &opts).unwrap();
        assert_eq!(visible(name, None), now);
        let m = manifest(name);
        assert_eq!((m.format, m.tombstones.len()), (2, 0));
        let stats = crate::stats::stats(&store, &JsonCodec).unwrap();
        assert_eq!(stats.points, now.len() as u64);

        // A delete after an optimize (a consolidate that writes no segment, only a tombstone
        // above the optimized run): the next optimize still applies it.
        delete(&store, Some(vec![100]), None, DELETE_WORKER).unwrap();
        consolidated(name);
        now.retain(|p| p.0 != 100);
        assert_eq!(visible(name, None), now);
        assert_eq!(manifest(name).format, 3);
        crate::optimize::optimize(&store, &JsonCodec, &opts).unwrap();
        let m = manifest(name);
        assert_eq!((m.format, m.tombstones.len()), (2, 0));
        assert_eq!(visible(name, None), now);
    }

    #[test]
    fn bad_deletes_are_refused_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(name, "w1", &[rows(&[1], "a", &[[1, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let err = |l: Option<Vec<u64>>, b: Option<Vec<Block>>, w: &str| {
            delete(&store, l, b, w).unwrap_err().to_string()
        };
        assert!(err(None, None, DELETE_WORKER).contains("'labels'"));
        assert!(err(Some(vec![]), None, DELETE_WORKER).contains("'labels' must name at least one"));
        assert!(err(None, Some(vec![]), DELETE_WORKER).contains("'blocks' must name at least one"));
        let e = err(None, Some(vec![Block::Int(3)]), DELETE_WORKER);
        assert!(e.contains("'blocks'") && e.contains("VARCHAR"), "{e}");
        assert!(err(Some(vec![1]), None, "a/b").contains("'worker'"));
        assert!(!dir.path().join("workers").join(DELETE_WORKER).exists());
        let empty = tempfile::tempdir().unwrap();
        let s = Store::open(empty.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        assert!(delete(&s, Some(vec![1]), None, DELETE_WORKER)
            .unwrap_err()
            .to_string()
            .contains("not a pocaduck store"));
    }
}
