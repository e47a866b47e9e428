//! `pocaduck_consolidate`: merge every worker's new commits into a new index generation.
//!
//! - Cost follows the new work: the new commits' entries become one new run of index segments
//!   (module [`crate::segment`]); the previous generation's segments are referenced, not
//!   rewritten. To keep lookups to a few segments, runs of one size tier are merged when
//!   [`crate::segment::FANOUT`] of them accumulate (each entry is rewritten O(log N) times over
//!   the store's life). No part file is read.
//! - Incremental: the previous generation records, per worker, the last commit merged; only newer
//!   commit segments are read. Idempotent: with no new commits nothing is written.
//! - Atomic: segments are written first (immutable, unreferenced until published), then the
//!   manifest is published with put-if-absent under the next generation number (module
//!   [`crate::log`]). Two consolidates racing: one wins, the other deletes its segments and fails
//!   with a conflict error.
//! - Upgrades a format-1 store (a DuckDB index generation) to manifests and segments.

use object_store::path::Path;

use crate::error::{Error, Result};
use crate::index::{decode_commit, IndexCodec, UnifiedEntry, UnifiedIndex, WorkerState};
use crate::layout;
use crate::log::{self, Manifest};
use crate::segment::{supersede, IndexView, RunWriter, FANOUT};
use crate::storage::Store;
use crate::tombstone::{combine, BatchHides, CommitOrder, Hides, Tombstone};
use crate::writer::read_schema;

/// What consolidate did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsolidateSummary {
    /// Generation of the index now current.
    pub generation: u64,
    /// Workers in the index.
    pub workers: u64,
    /// Commits merged by this call (0 when nothing was new).
    pub new_commits: u64,
    /// Part files the merged commits added.
    pub new_files: u64,
    /// Points the merged commits added (rows they supersede are not subtracted).
    pub new_points: u64,
    /// Index entries the merged commits added.
    pub new_entries: u64,
    /// Index segment files of the generation now current.
    pub segments: u64,
}

/// Loads format-1 generation `gen` (a DuckDB database) whole through `codec`.
pub fn load_legacy(store: &Store, gen: u64, codec: &dyn IndexCodec) -> Result<UnifiedIndex> {
    let file = layout::index_file(gen);
    let local = match &store.local_dir {
        Some(dir) => dir.join(file.as_ref()),
        None => cached_index_file(store, gen)?,
    };
    let named = |e: Error| match e {
        Error::Internal(m) => Error::file(&store.name, file.as_ref(), m),
        other => other,
    };
    let mut u = match codec.read(&local) {
        // Another process holds the database open for writing (plain DuckDB's `ATTACH` without
        // `READ_ONLY`): read a copy instead of failing every query on the store.
        Err(Error::Internal(m))
            if store.local_dir.is_some() && m.contains("Could not set lock") =>
        {
            let copy = std::env::temp_dir().join(format!(
                "pocaduck-index-{}.duckdb",
                crate::writer::new_session_id()
            ));
            let r = std::fs::copy(&local, &copy)
                .map_err(|e| Error::file(&store.name, file.as_ref(), format!("cannot copy: {e}")))
                .and_then(|_| codec.read(&copy).map_err(named));
            let _ = std::fs::remove_file(&copy);
            let _ = std::fs::remove_file(copy.with_extension("duckdb.wal"));
            r?
        }
        r => r.map_err(named)?,
    };
    u.sort();
    Ok(u)
}

/// This machine's directory of local copies of `store`'s format-1 generations
/// (`<temp>/pocaduck-index-cache/<hash of the store>/`, files `<gen:010>-<size>-<version>.duckdb`).
pub(crate) fn index_cache_dir(store: &Store) -> std::path::PathBuf {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(store.cache_key());
    std::env::temp_dir()
        .join("pocaduck-index-cache")
        .join(format!("{h:016x}"))
}

/// A local copy of generation `gen` of a remote store's index. Generations are immutable, but a
/// store can be deleted and written again under the same URL: the copy's name carries the
/// object's size, modification time and ETag, so only the same object reuses it. Downloaded to a
/// temporary name, then renamed into place.
fn cached_index_file(store: &Store, gen: u64) -> Result<std::path::PathBuf> {
    use object_store::ObjectStoreExt;
    let dir = index_cache_dir(store);
    let file = layout::index_file(gen);
    let meta = crate::storage::block_on(store.objects.head(&file))
        .map_err(|e| Error::file(&store.name, file.as_ref(), e))?;
    let (size, version) = crate::storage::object_stamp(&meta);
    let path = dir.join(format!("{gen:010}-{size}-{version:016x}.duckdb"));
    // A copy of another size is a truncated download: fetch it again.
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
        return Ok(path);
    }
    let cache_err = |e: std::io::Error| {
        Error::store(
            &store.name,
            format!("cannot cache the index in {}: {e}", dir.display()),
        )
    };
    std::fs::create_dir_all(&dir).map_err(cache_err)?;
    let bytes = store.get(&layout::index_file(gen))?;
    // A name per download: threads and processes sharing the cache never write one file.
    let tmp = dir.join(format!(
        "{gen:010}.duckdb.{}.tmp",
        crate::writer::new_session_id()
    ));
    std::fs::write(&tmp, &bytes).map_err(cache_err)?;
    std::fs::rename(&tmp, &path).map_err(cache_err)?;
    Ok(path)
}

/// Consolidates `store`. `codec` reads format-1 generations (a store being upgraded).
pub fn consolidate(store: &Store, codec: &dyn IndexCodec) -> Result<ConsolidateSummary> {
    let schema = read_schema(store)?.ok_or_else(|| {
        Error::store(
            &store.name,
            "is not a pocaduck store (no _pocaduck.json): nothing was ever committed to it",
        )
    })?;
    let base = match log::latest(store)? {
        Some(g) => log::load(store, &g, codec)?,
        None => log::Generation {
            manifest: Manifest::empty(schema.clone()),
            legacy: None,
        },
    };
    let mut m = base.manifest.clone();
    m.format = log::MANIFEST_FORMAT;
    m.schema = schema;
    let mut summary = ConsolidateSummary::default();
    let mut new: Vec<UnifiedEntry> = Vec::new();
    let mut new_parts: std::collections::HashSet<String> = Default::default();
    let mut workers: Vec<String> = store
        .list_dirs(&layout::workers_dir())?
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect();
    workers.sort();
    // What the new commits hide: in each other (older commits of this call), and in the index.
    let mut orders: Vec<CommitOrder> = Vec::new();
    let mut new_order: Vec<u32> = Vec::new();
    let mut batch = BatchHides::default();
    let mut hides: Vec<Hides> = Vec::new();
    for w in workers {
        let done = m.last_commit(&w);
        let mut listed: Vec<(u64, i64)> = store
            .list(&layout::commits_dir(&w))?
            .iter()
            .filter_map(|x| {
                let seq = layout::parse_commit_seq(&x.location)?;
                Some((seq, x.last_modified.timestamp_millis()))
            })
            .filter(|(s, _)| *s > done)
            .collect();
        if listed.is_empty() {
            continue;
        }
        listed.sort_unstable();
        let seqs: Vec<u64> = listed.iter().map(|x| x.0).collect();
        let wi = match m.workers.iter().position(|x| x.worker == w) {
            Some(i) => i,
            None => {
                m.workers.push(WorkerState {
                    worker: w.clone(),
                    last_commit: 0,
                });
                m.workers.len() - 1
            }
        };
        // A worker's commits keep their sequence order even if the clocks say otherwise.
        let mut floor = (i64::MIN, 0u64);
        for &(seq, at) in &listed {
            let file = layout::commit_file(&w, seq);
            let bytes = store.get(&file)?;
            let commit = decode_commit(bytes, &store.name, file.as_ref())?;
            floor = floor.max((at, commit.committed_ms));
            let order = (floor.0, floor.1, w.clone(), seq);
            if let Some(h) = commit.hides {
                batch.add(&order, &h);
                hides.push(h);
            }
            for e in commit.entries {
                summary.new_points += e.row_count;
                new_parts.insert(e.part.clone());
                new.push(UnifiedEntry {
                    worker: wi as u32,
                    commit: seq,
                    entry: e,
                });
                new_order.push(orders.len() as u32);
            }
            orders.push(order);
        }
        summary.new_commits += seqs.len() as u64;
        m.workers[wi].last_commit = seqs[seqs.len() - 1];
    }
    let upgrading = base.legacy.is_some();
    if summary.new_commits == 0 && !upgrading {
        // A publisher that died before replacing the head left readers a generation behind.
        log::repair_head(store)?;
        summary.generation = m.generation;
        summary.workers = m.workers.len() as u64;
        summary.segments = m.segments.len() as u64;
        return Ok(summary);
    }
    if !batch.is_empty() {
        // Entries of a commit that a newer commit of this call hides are never written.
        let mut k = 0;
        new.retain(|e| {
            k += 1;
            !batch.hides(
                &orders[new_order[k - 1] as usize],
                e.entry.label,
                &e.entry.block,
            )
        });
    }
    summary.new_entries = new.len() as u64;
    summary.new_files = new_parts.len() as u64;
    let mut written: Vec<Path> = Vec::new();
    let res = (|| {
        if let Some(old) = base.legacy {
            // Upgrade: the format-1 generation's entries become the first run.
            let run = m.next_run;
            m.next_run += 1;
            let refs = write_run(store, &m, run, grouped(old), &mut written)?;
            m.segments.extend(refs);
        }
        let run = m.next_run;
        m.next_run += 1;
        // The new commits' hides apply to every segment of a lower run (dropped at publication
        // when there is none).
        m.tombstones.extend(
            combine(hides)
                .into_iter()
                .map(|hides| Tombstone { run, hides }),
        );
        new.sort_by_key(|e| e.entry.label);
        let refs = write_run(store, &m, run, grouped(new), &mut written)?;
        m.segments.extend(refs);
        merge_tiers(store, &mut m, &mut written)?;
        m.generation += 1;
        m.created_ms = log::now_ms();
        log::publish(store, &m)
    })();
    if let Err(e) = res {
        for p in &written {
            let _ = store.delete(p);
        }
        return Err(e);
    }
    summary.generation = m.generation;
    summary.workers = m.workers.len() as u64;
    summary.segments = m.segments.len() as u64;
    Ok(summary)
}

/// Entries sorted by label → one superseded, index-ordered vector per label.
fn grouped(entries: Vec<UnifiedEntry>) -> impl Iterator<Item = Result<Vec<UnifiedEntry>>> {
    let mut it = entries.into_iter().peekable();
    std::iter::from_fn(move || {
        let first = it.next()?;
        let mut v = vec![first];
        while let Some(e) = it.next_if(|e| e.entry.label == v[0].entry.label) {
            v.push(e);
        }
        supersede(&mut v);
        Some(Ok(v))
    })
}

/// Writes one run from per-label entry vectors (in label order); records its files in
/// `written`.
pub(crate) fn write_run(
    store: &Store,
    m: &Manifest,
    run: u64,
    labels: impl Iterator<Item = Result<Vec<UnifiedEntry>>>,
    written: &mut Vec<Path>,
) -> Result<Vec<crate::log::SegmentRef>> {
    let mut w = RunWriter::new(store, m, run, false);
    let res: Result<()> = (|| {
        for l in labels {
            w.push_label(l?)?;
        }
        Ok(())
    })();
    written.extend(w.written());
    res?;
    let refs = w.finish()?;
    written.extend(refs.iter().map(|r| Path::from(r.file.as_str())));
    Ok(refs)
}

/// Merges runs while some size tier holds [`FANOUT`] or more of them: every run of that tier or
/// below becomes one run (superseded entries dropped).
fn merge_tiers(store: &Store, m: &mut Manifest, written: &mut Vec<Path>) -> Result<()> {
    loop {
        let mut runs: Vec<(u64, u32)> = m.segments.iter().map(|r| (r.run, r.tier)).collect();
        runs.sort_unstable();
        runs.dedup();
        let mut per_tier: std::collections::BTreeMap<u32, usize> = Default::default();
        for (_, t) in &runs {
            *per_tier.entry(*t).or_default() += 1;
        }
        let Some((&tier, _)) = per_tier.iter().find(|(_, n)| **n >= FANOUT) else {
            return Ok(());
        };
        let chosen: Vec<u64> = runs
            .iter()
            .filter(|(_, t)| *t <= tier)
            .map(|(r, _)| *r)
            .collect();
        let (sources, kept): (Vec<_>, Vec<_>) = m
            .segments
            .iter()
            .cloned()
            .partition(|r| chosen.contains(&r.run));
        let mut part = m.clone();
        part.segments = sources;
        let view = IndexView::new(
            store.clone(),
            log::Generation {
                manifest: part,
                legacy: None,
            },
        );
        let run = m.next_run;
        m.next_run += 1;
        let refs = write_run(store, m, run, view.scan().map(|r| r.map(|x| x.1)), written)?;
        m.segments = kept;
        m.segments.extend(refs);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::OpenMode;
    use crate::writer::WriterOptions;

    /// A codec that reads a format-1 index stored as JSON, so the core is testable without DuckDB.
    pub(crate) struct JsonCodec;
    impl IndexCodec for JsonCodec {
        fn read(&self, path: &std::path::Path) -> Result<UnifiedIndex> {
            let b = std::fs::read(path).map_err(|e| Error::Internal(e.to_string()))?;
            serde_json::from_slice(&b).map_err(|e| Error::Internal(e.to_string()))
        }
    }

    pub(crate) fn write(store: &str, worker: &str, rows: &[arrow::array::RecordBatch]) {
        let mut s =
            crate::writer::tests::session_at(store, worker, WriterOptions::default()).unwrap();
        for r in rows {
            s.append(r).unwrap();
        }
        s.commit().unwrap();
    }

    #[test]
    fn consolidate_is_incremental_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let rows = crate::writer::tests::rows;
        write(name, "w1", &[rows(&[1, 2], "a", &[[0, 0, 0], [1, 1, 1]])]);
        write(name, "w2", &[rows(&[2], "b", &[[2, 2, 2]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let s1 = consolidate(&store, &JsonCodec).unwrap();
        assert_eq!(
            s1,
            ConsolidateSummary {
                generation: 1,
                workers: 2,
                new_commits: 2,
                new_files: 2,
                new_points: 3,
                new_entries: 3,
                segments: 1,
            }
        );
        // Twice: nothing changes, no new generation.
        let s2 = consolidate(&store, &JsonCodec).unwrap();
        assert_eq!(
            s2,
            ConsolidateSummary {
                generation: 1,
                workers: 2,
                segments: 1,
                ..Default::default()
            }
        );
        assert_eq!(log::latest_generation(&store).unwrap(), 1);
        // A worker finishing later is merged; the others' segments are not read again: delete
        // them to prove it.
        write(name, "w3", &[rows(&[9], "c", &[[9, 9, 9]])]);
        std::fs::remove_file(dir.path().join("workers/w1/commits/0000000001.parquet")).unwrap();
        let s3 = consolidate(&store, &JsonCodec).unwrap();
        assert_eq!(
            (
                s3.generation,
                s3.workers,
                s3.new_commits,
                s3.new_points,
                s3.segments
            ),
            (2, 3, 1, 1, 2)
        );
        // The first generation's segment is referenced, not rewritten.
        let m1 = log::load(&store, &log::all(&store).unwrap()[0], &JsonCodec).unwrap();
        let m2 = log::load(&store, &log::all(&store).unwrap()[1], &JsonCodec).unwrap();
        assert_eq!(m2.manifest.segments[0], m1.manifest.segments[0]);
        let idx = crate::reader::open(name, &JsonCodec).unwrap();
        let stats: Vec<_> = idx.label_stats().map(|r| r.unwrap()).collect();
        assert_eq!(stats, vec![(1, 1, 1), (2, 2, 2), (9, 1, 1)]);
    }

    #[test]
    fn a_rerun_in_a_later_generation_supersedes_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let rows = crate::writer::tests::rows;
        write(
            name,
            "w1",
            &[rows(&[7, 7, 8], "a", &[[1, 0, 0], [2, 0, 0], [3, 0, 0]])],
        );
        write(name, "w2", &[rows(&[7], "a", &[[4, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        // w1 reruns block a with only label 7 (one point): its (7, a) is replaced, its (8, a)
        // stays (it is another (label, block)), w2's (7, a) stays.
        write(name, "w1", &[rows(&[7], "a", &[[9, 0, 0]])]);
        let s = consolidate(&store, &JsonCodec).unwrap();
        assert_eq!((s.generation, s.segments), (2, 2));
        let idx = crate::reader::open(name, &JsonCodec).unwrap();
        let xs = |l: u64| -> Vec<i32> {
            let mut v: Vec<i32> = idx
                .points(&[l], &[2])
                .unwrap()
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<arrow::array::Int32Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(xs(7), vec![4, 9]);
        assert_eq!(xs(8), vec![3]);
        assert_eq!(idx.point_count(&[7, 8]).unwrap(), 3);
    }

    #[test]
    fn a_worker_id_reused_after_its_directory_was_deleted_is_merged() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let rows = crate::writer::tests::rows;
        for (i, b) in ["a", "b", "c"].iter().enumerate() {
            write(name, "w", &[rows(&[1], b, &[[i as i32, 0, 0]])]);
        }
        let store = Store::open(name, OpenMode::Existing).unwrap();
        assert_eq!(consolidate(&store, &JsonCodec).unwrap().new_commits, 3);
        // The operator deletes the worker's directory and reruns it with other blocks.
        std::fs::remove_dir_all(dir.path().join("workers/w")).unwrap();
        write(name, "w", &[rows(&[2], "d", &[[7, 0, 0]])]);
        // The rerun's commit is numbered after the merged ones, so consolidate merges it.
        assert!(dir
            .path()
            .join("workers/w/commits/0000000004.parquet")
            .exists());
        let st = crate::stats::stats(&store, &JsonCodec).unwrap();
        assert_eq!((st.pending_commits, st.skipped_commits), (1, 0));
        let s = consolidate(&store, &JsonCodec).unwrap();
        assert_eq!((s.generation, s.new_commits, s.new_points), (2, 1, 1));
        let idx = crate::reader::open(name, &JsonCodec).unwrap();
        assert_eq!(idx.point_count(&[2]).unwrap(), 1);
        let st = crate::stats::stats(&store, &JsonCodec).unwrap();
        assert_eq!((st.pending_commits, st.skipped_commits), (0, 0));
        // A commit an older writer numbered at or below the merged ones (simulated by renaming
        // a new commit to number 2) is never merged: stats counts it, check names it.
        std::fs::remove_dir_all(dir.path().join("workers/w")).unwrap();
        write(name, "w", &[rows(&[3], "e", &[[8, 0, 0]])]);
        let commits = dir.path().join("workers/w/commits");
        std::fs::rename(
            commits.join("0000000005.parquet"),
            commits.join("0000000002.parquet"),
        )
        .unwrap();
        assert_eq!(consolidate(&store, &JsonCodec).unwrap().new_commits, 0);
        let st = crate::stats::stats(&store, &JsonCodec).unwrap();
        assert_eq!((st.pending_commits, st.skipped_commits), (0, 1));
        let r = crate::check::check(&store, &JsonCodec).unwrap();
        let p: Vec<_> = r
            .problems
            .iter()
            .filter(|p| p.file == "workers/w/commits/0000000002.parquet")
            .collect();
        assert_eq!(p.len(), 1, "{:?}", r.problems);
        assert!(
            p[0].msg.starts_with("commit 2 of worker 'w' was written after generation 2 had merged the worker's commits up to 4: consolidate will never merge it"),
            "{}",
            p[0].msg
        );
    }

    #[test]
    fn runs_merge_by_tier_and_answers_stay_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let rows = crate::writer::tests::rows;
        let store = || Store::open(name, OpenMode::Existing).unwrap();
        // 3 * FANOUT consolidates of one small commit each: runs of tier 0 merge whenever
        // FANOUT of them accumulate, so the generation never holds FANOUT or more of them.
        for i in 0..3 * FANOUT as i32 {
            write(
                name,
                &format!("w{i}"),
                &[rows(&[5, 6 + i as u64], "a", &[[i, 0, 0], [i, 1, 0]])],
            );
            let s = consolidate(&store(), &JsonCodec).unwrap();
            assert!(s.segments < FANOUT as u64, "{s:?}");
        }
        let idx = crate::reader::open(name, &JsonCodec).unwrap();
        assert_eq!(idx.point_count(&[5]).unwrap(), 3 * FANOUT as u64);
        let stats: Vec<_> = idx.label_stats().map(|r| r.unwrap()).collect();
        assert_eq!(stats.len(), 1 + 3 * FANOUT);
        assert_eq!(stats[0], (5, 3 * FANOUT as u64, 1));
        // Merged-away segment files are no longer referenced (they stay on disk for readers of
        // older generations).
        let on_disk = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .count();
        assert!(on_disk > idx.view.manifest.segments.len());
    }

    /// (block, part, row_start, row_count) of an entry.
    type Placed = (String, String, u64, u64);

    /// Every label's entries as [`Placed`], from a full scan.
    fn scanned(view: &IndexView) -> Vec<(u64, Vec<Placed>)> {
        let key = |e: &UnifiedEntry| {
            (
                format!("{:?}", e.entry.block),
                e.entry.part.clone(),
                e.entry.row_start,
                e.entry.row_count,
            )
        };
        view.scan()
            .map(|r| {
                let (l, v) = r.unwrap();
                (l, v.iter().map(key).collect())
            })
            .collect()
    }

    /// Lookups of single labels and of many labels at once agree with the scan.
    fn lookups_agree_with_scan(name: &str) {
        crate::segment::clear_caches();
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let g = log::latest(&store).unwrap().unwrap();
        let view = IndexView::new(store.clone(), log::load(&store, &g, &JsonCodec).unwrap());
        let all = scanned(&view);
        let key = |e: &UnifiedEntry| {
            (
                format!("{:?}", e.entry.block),
                e.entry.part.clone(),
                e.entry.row_start,
                e.entry.row_count,
            )
        };
        for (l, want) in &all {
            for bbox in [false, true] {
                let got = view.lookup(&[*l], bbox).unwrap();
                assert_eq!(got.len(), 1, "label {l}");
                let got: Vec<_> = got[0].1.iter().map(key).collect();
                assert_eq!(&got, want, "label {l}");
            }
        }
        for absent in [299_999u64, 5000, 20_000, u64::MAX] {
            assert!(view.lookup(&[absent], false).unwrap().is_empty());
        }
        let labels: Vec<u64> = all.iter().map(|x| x.0).step_by(7).collect();
        let many = view.lookup(&labels, false).unwrap();
        let want: Vec<_> = all.iter().step_by(7).cloned().collect();
        let got: Vec<_> = many
            .iter()
            .map(|(l, v)| (*l, v.iter().map(key).collect::<Vec<_>>()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn lookups_select_pages_and_read_files_without_page_fences() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let rows = crate::writer::tests::rows;
        // 40 blocks x 300 labels (labels of 40 entries cross page boundaries: pages hold 1,024
        // entries) and one label in 2,500 blocks (spanning pages and a row-group boundary).
        let labels: Vec<u64> = (0..300).map(|l| l * 3).collect();
        let mut batches: Vec<arrow::array::RecordBatch> = (0..40)
            .map(|b| rows(&labels, &format!("b{b:02}"), &vec![[b, 1, 2]; labels.len()]))
            .collect();
        batches.extend((0..2500).map(|b| rows(&[450], &format!("c{b:04}"), &[[b, 0, 0]])));
        write(name, "w", &batches);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let idx = crate::reader::open(name, &JsonCodec).unwrap();
        assert_eq!(idx.view.manifest.segments[0].entries, 40 * 300 + 2500);
        assert_eq!(idx.point_count(&[450]).unwrap(), 40 + 2500);
        lookups_agree_with_scan(name);
        // Segments written before page fences: row groups are the unit of a lookup.
        let gen = idx.view.manifest.generation;
        let mpath = dir.path().join(layout::manifest_file(gen).as_ref());
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        for seg in m["segments"].as_array_mut().unwrap() {
            let path = dir.path().join(seg["file"].as_str().unwrap());
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&path).unwrap(),
            )
            .unwrap();
            let kv = r
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .unwrap()
                .clone();
            assert!(kv.iter().any(|k| k.key == "pocaduck.page_fences"));
            let props = parquet::file::properties::WriterProperties::builder()
                .set_max_row_group_row_count(Some(crate::segment::ROW_GROUP_ENTRIES))
                .set_key_value_metadata(Some(
                    kv.into_iter()
                        .filter(|k| !k.key.starts_with("pocaduck.page_"))
                        .collect(),
                ))
                .build();
            let mut w =
                parquet::arrow::ArrowWriter::try_new(Vec::new(), r.schema().clone(), Some(props))
                    .unwrap();
            for b in r.build().unwrap() {
                w.write(&b.unwrap()).unwrap();
            }
            let bytes = w.into_inner().unwrap();
            seg["bytes"] = serde_json::json!(bytes.len());
            std::fs::write(&path, bytes).unwrap();
        }
        std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
        lookups_agree_with_scan(name);
    }

    /// Builds a format-1 generation (as the previous release wrote it) from the commits on disk.
    fn write_legacy(store: &Store) {
        let mut u = UnifiedIndex {
            generation: 1,
            schema: read_schema(store).unwrap().unwrap(),
            workers: vec![],
            entries: vec![],
        };
        let mut ws: Vec<String> = store
            .list_dirs(&layout::workers_dir())
            .unwrap()
            .iter()
            .map(|p| p.filename().unwrap().to_string())
            .collect();
        ws.sort();
        for w in ws {
            u.workers.push(WorkerState {
                worker: w.clone(),
                last_commit: 1,
            });
            let f = layout::commit_file(&w, 1);
            for e in crate::index::decode_segment(store.get(&f).unwrap(), "s", "f").unwrap() {
                u.entries.push(UnifiedEntry {
                    worker: (u.workers.len() - 1) as u32,
                    commit: 1,
                    entry: e,
                });
            }
        }
        u.sort();
        let dir = store.local_dir.as_ref().unwrap().join("index");
        std::fs::create_dir_all(&dir).unwrap();
        // JsonCodec's format: the JSON of the whole index.
        std::fs::write(
            dir.join("0000000001.duckdb"),
            serde_json::to_vec(&u).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn a_format_1_store_is_read_then_upgraded_by_consolidate() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let rows = crate::writer::tests::rows;
        write(name, "w1", &[rows(&[1, 2], "a", &[[0, 0, 0], [1, 1, 1]])]);
        write(name, "w2", &[rows(&[2], "b", &[[2, 2, 2]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        write_legacy(&store);
        let old = crate::reader::open(name, &JsonCodec).unwrap();
        assert_eq!(old.generation, 1);
        let before: Vec<_> = old.label_stats().map(|r| r.unwrap()).collect();
        assert_eq!(before, vec![(1, 1, 1), (2, 2, 2)]);
        assert_eq!(old.point_count(&[2]).unwrap(), 2);
        // Nothing new to merge, but the index is upgraded to format 2.
        let s = consolidate(&store, &JsonCodec).unwrap();
        assert_eq!((s.generation, s.new_commits, s.segments), (2, 0, 1));
        assert!(dir.path().join("index/0000000002.json").exists());
        assert!(dir.path().join("index/0000000001.duckdb").exists());
        let new = crate::reader::open(name, &JsonCodec).unwrap();
        assert!(new.view.manifest.segments.len() == 1);
        let after: Vec<_> = new.label_stats().map(|r| r.unwrap()).collect();
        assert_eq!(after, before);
        assert_eq!(
            new.points(&[2], &[2]).unwrap()[0].num_rows(),
            old.points(&[2], &[2]).unwrap()[0].num_rows()
        );
        // And it goes on incrementally.
        write(name, "w1", &[rows(&[3], "c", &[[3, 3, 3]])]);
        let s = consolidate(&store, &JsonCodec).unwrap();
        assert_eq!((s.generation, s.new_commits, s.segments), (3, 1, 2));
    }

    #[test]
    fn never_written_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        let e = consolidate(&store, &JsonCodec).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "is not a pocaduck store (no _pocaduck.json): nothing was ever committed to it"
            ),
            "{e}"
        );
    }

    #[test]
    fn losing_a_publish_race_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(
            name,
            "w1",
            &[crate::writer::tests::rows(&[1], "a", &[[0, 0, 0]])],
        );
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let mut m = Manifest::empty(read_schema(&store).unwrap().unwrap());
        m.generation = 1;
        log::publish(&store, &m).unwrap();
        let e = log::publish(&store, &m).unwrap_err().to_string();
        assert!(
            e.contains("another consolidate or optimize published generation 1 first"),
            "{e}"
        );
        assert_eq!(
            log::load(&store, &log::latest(&store).unwrap().unwrap(), &JsonCodec)
                .unwrap()
                .manifest,
            m
        );
    }
}
