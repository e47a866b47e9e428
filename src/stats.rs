//! `pocaduck_stats`: what a store holds and how well it is laid out for reading.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::index::IndexCodec;
use crate::layout;
use crate::log;
use crate::optimize::is_contiguous;
use crate::segment::IndexView;
use crate::storage::Store;

/// Figures about one store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Current index generation (0: never consolidated).
    pub generation: u64,
    /// Workers in the index.
    pub workers: u64,
    /// Commits merged into the index.
    pub commits: u64,
    /// Commits on storage that the index does not hold yet (consolidate would merge them).
    pub pending_commits: u64,
    /// Commits on storage that consolidate will never merge (see [`log::skipped_commits`]:
    /// numbered at or below a commit the index already held for their worker when they were
    /// written). Should be 0; `pocaduck_check` names them.
    pub skipped_commits: u64,
    /// Labels in the index.
    pub labels: u64,
    /// Points in the index.
    pub points: u64,
    /// Index entries ((label, block, row range) triples).
    pub entries: u64,
    /// Labels stored as more than one row range (pocaduck_optimize would rewrite them).
    pub fragmented_labels: u64,
    /// Part files the index references, and their bytes.
    pub files: u64,
    /// Bytes of the referenced part files.
    pub file_bytes: u64,
    /// Part files the index does not reference (uncommitted, superseded or optimized away).
    pub unreferenced_files: u64,
    /// Bytes of the unreferenced part files.
    pub unreferenced_bytes: u64,
    /// Bytes of the current index generation: its manifest and segment files.
    pub index_bytes: u64,
    /// Index segment files of the current generation.
    pub segments: u64,
}

/// Computes [`StoreStats`] for `store`: lists the store's files and streams the index (reads no
/// part; time is proportional to the index entries, memory to the part files).
pub fn stats(store: &Store, codec: &dyn IndexCodec) -> Result<StoreStats> {
    stats_at(store, codec, None)
}

/// [`stats`] of generation `at` (`None`: the newest): its index and the files it references;
/// pending commits are those it has not merged. An error names a generation the store no longer
/// holds.
pub fn stats_at(store: &Store, codec: &dyn IndexCodec, at: Option<u64>) -> Result<StoreStats> {
    let latest = match at {
        None => log::latest(store)?,
        // The same check and message as a read of that generation.
        Some(g) => Some(log::find(store, g)?.ok_or_else(|| {
            Error::store(
                &store.name,
                format!("has no unified index: generation {g} does not exist"),
            )
        })?),
    };
    crate::writer::require_store(store, latest.is_some())?;
    let mut s = StoreStats::default();
    let mut referenced: HashSet<String> = HashSet::new();
    let mut merged: Option<log::Manifest> = None;
    if let Some(g) = latest {
        let gen = log::load(store, &g, codec)?;
        let m = &gen.manifest;
        s.generation = g.generation;
        s.index_bytes = g.meta.size + segment_bytes(m);
        let mut files: Vec<&str> = m.segments.iter().map(|r| r.file.as_str()).collect();
        files.sort_unstable();
        files.dedup();
        s.segments = files.len() as u64;
        s.workers = m.workers.len() as u64;
        s.commits = m.workers.iter().map(|w| w.last_commit).sum();
        merged = Some(m.clone());
        let f = scan(store, gen)?;
        (s.labels, s.points, s.entries, s.fragmented_labels) =
            (f.labels, f.points, f.entries, f.fragmented_labels);
        referenced = f.parts;
    }
    let mut files = store.list(&layout::workers_dir())?;
    files.extend(store.list(&layout::optimized_dir())?);
    let commits: Vec<object_store::ObjectMeta> = files
        .iter()
        .filter(|m| m.location.as_ref().contains("/commits/"))
        .cloned()
        .collect();
    s.skipped_commits = log::skipped_commits(store, codec, &commits)?.len() as u64;
    for m in files {
        let path = m.location.as_ref();
        if let Some((worker, seq)) = layout::parse_commit_file(path) {
            if seq > merged.as_ref().map_or(0, |x| x.last_commit(worker)) {
                s.pending_commits += 1;
            }
        } else if path.ends_with(".parquet") {
            if referenced.contains(path) {
                s.files += 1;
                s.file_bytes += m.size;
            } else {
                s.unreferenced_files += 1;
                s.unreferenced_bytes += m.size;
            }
        }
    }
    Ok(s)
}

/// What a scan of one generation's entries finds.
pub(crate) struct Scanned {
    labels: u64,
    points: u64,
    entries: u64,
    fragmented_labels: u64,
    /// Parts the entries reference.
    pub(crate) parts: HashSet<String>,
}

/// Entries a scan decodes at a time.
const SCAN_CHUNK_ENTRIES: usize = 1 << 16;

/// Streams the entries of `gen` (superseded ones dropped).
pub(crate) fn scan(store: &Store, gen: log::Generation) -> Result<Scanned> {
    let mut s = Scanned {
        labels: 0,
        points: 0,
        entries: 0,
        fragmented_labels: 0,
        parts: HashSet::new(),
    };
    let legacy = gen.legacy.is_some();
    let view = IndexView::new(store.clone(), gen);
    if !legacy {
        // Entries as columns, chunk by chunk (no string per entry).
        use crate::entry_chunks::{c, u32s, u64s, ChunkScan};
        let mut scan = ChunkScan::new(&view, 0, u64::MAX, SCAN_CHUNK_ENTRIES)?;
        let mut used: Vec<bool> = Vec::new();
        while let Some(chunk) = scan.next_chunk()? {
            let b = &chunk.batch;
            s.labels += chunk.labels.len() as u64 - 1;
            s.entries += b.num_rows() as u64;
            s.points += u64s(b, c::ROW_COUNT).iter().sum::<u64>();
            s.fragmented_labels += chunk
                .labels
                .windows(2)
                .filter(|g| !crate::optimize::contiguous(b, &scan.parts, g[0], g[1]))
                .count() as u64;
            for &p in u32s(b, c::PART) {
                if used.len() <= p as usize {
                    used.resize(p as usize + 1, false);
                }
                used[p as usize] = true;
            }
        }
        for (p, _) in used.iter().enumerate().filter(|x| *x.1) {
            s.parts.insert(scan.parts.name(p as u32).to_string());
        }
        return Ok(s);
    }
    for r in view.scan() {
        let (_, v) = r?;
        s.labels += 1;
        s.entries += v.len() as u64;
        s.points += v.iter().map(|e| e.entry.row_count).sum::<u64>();
        if !is_contiguous(&v) {
            s.fragmented_labels += 1;
        }
        for e in v {
            if !s.parts.contains(&e.entry.part) {
                s.parts.insert(e.entry.part);
            }
        }
    }
    Ok(s)
}

/// One generation, as `pocaduck_generations` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerationStats {
    /// Generation number.
    pub generation: u64,
    /// When it was built (its manifest's `created_ms`; a format-1 generation: when its file was
    /// written), in milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Index format: 3 (manifest with tombstones), 2 (manifest and segments) or 1 (a DuckDB
    /// database, before 2026-11-29).
    pub format: u32,
    /// Commits merged (over all workers).
    pub commits: u64,
    /// Labels.
    pub labels: u64,
    /// Points.
    pub points: u64,
    /// Index entries.
    pub entries: u64,
    /// Bytes of every file the generation needs: its manifest (or database), its index segments
    /// and the parts its entries reference.
    pub bytes: u64,
}

/// Every generation `store` holds, oldest first (what [`crate::vacuum`] has not deleted). Each is
/// scanned whole: time is proportional to generations × entries.
pub fn generations(store: &Store, codec: &dyn IndexCodec) -> Result<Vec<GenerationStats>> {
    let gens = log::all(store)?;
    crate::writer::require_store(store, !gens.is_empty())?;
    let mut sizes: std::collections::HashMap<String, u64> = Default::default();
    for m in store
        .list(&layout::workers_dir())?
        .into_iter()
        .chain(store.list(&layout::optimized_dir())?)
    {
        sizes.insert(m.location.to_string(), m.size);
    }
    let mut out = Vec::with_capacity(gens.len());
    for g in &gens {
        match generation_stats(store, codec, g, &sizes) {
            Ok(x) => out.push(x),
            // Vacuumed while this ran: not held any more.
            Err(_)
                if !log::all(store)?
                    .iter()
                    .any(|x| x.generation == g.generation) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Bytes of a generation's segment files; a file clipped into several label ranges (by a
/// label-range optimize) counts once.
fn segment_bytes(m: &log::Manifest) -> u64 {
    let mut files: Vec<(&str, u64)> = m
        .segments
        .iter()
        .map(|r| (r.file.as_str(), r.bytes))
        .collect();
    files.sort_unstable();
    files.dedup();
    files.iter().map(|f| f.1).sum()
}

fn generation_stats(
    store: &Store,
    codec: &dyn IndexCodec,
    g: &log::GenerationFile,
    sizes: &std::collections::HashMap<String, u64>,
) -> Result<GenerationStats> {
    let gen = log::load(store, g, codec)?;
    let m = &gen.manifest;
    let index_bytes = g.meta.size + segment_bytes(m);
    let created_ms = match g.legacy {
        true => g.meta.last_modified.timestamp_millis(),
        false => m.created_ms as i64,
    };
    let (format, commits) = (
        if g.legacy { 1 } else { m.format },
        m.workers.iter().map(|w| w.last_commit).sum(),
    );
    let f = scan(store, gen)?;
    Ok(GenerationStats {
        generation: g.generation,
        created_ms,
        format,
        commits,
        labels: f.labels,
        points: f.points,
        entries: f.entries,
        bytes: index_bytes + f.parts.iter().filter_map(|p| sizes.get(p)).sum::<u64>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consolidate::consolidate;
    use crate::consolidate::tests::{write, JsonCodec};
    use crate::optimize::{optimize, OptimizeOptions};
    use crate::storage::OpenMode;
    use crate::writer::tests::rows;

    #[test]
    fn stats_follow_commits_consolidate_and_optimize() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(
            name,
            "w1",
            &[rows(&[1, 1, 2], "a", &[[0, 0, 0], [1, 0, 0], [2, 0, 0]])],
        );
        write(name, "w2", &[rows(&[1], "b", &[[3, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let s0 = stats(&store, &JsonCodec).unwrap();
        assert_eq!((s0.generation, s0.pending_commits, s0.labels), (0, 2, 0));
        assert_eq!((s0.files, s0.unreferenced_files), (0, 2));
        consolidate(&store, &JsonCodec).unwrap();
        let s1 = stats(&store, &JsonCodec).unwrap();
        assert_eq!(
            (s1.generation, s1.workers, s1.commits, s1.pending_commits),
            (1, 2, 2, 0)
        );
        assert_eq!((s1.labels, s1.points, s1.entries), (2, 4, 3));
        // Label 1 is in two workers' parts; label 2 is one range.
        assert_eq!(s1.fragmented_labels, 1);
        assert_eq!((s1.files, s1.unreferenced_files), (2, 0));
        assert!(s1.file_bytes > 0 && s1.index_bytes > 0);
        write(name, "w2", &[rows(&[3], "c", &[[4, 0, 0]])]);
        assert_eq!(stats(&store, &JsonCodec).unwrap().pending_commits, 1);
        consolidate(&store, &JsonCodec).unwrap();
        optimize(&store, &JsonCodec, &OptimizeOptions::default()).unwrap();
        let s2 = stats(&store, &JsonCodec).unwrap();
        assert_eq!((s2.generation, s2.fragmented_labels, s2.points), (3, 0, 5));
        // Label 1's old parts: w2's first part only held label 1, so it is unreferenced now;
        // w1's part still holds label 2.
        assert_eq!(s2.unreferenced_files, 1);
        assert_eq!(s2.files, 3);
    }

    #[test]
    fn generations_show_each_retained_generation() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(
            name,
            "w1",
            &[rows(&[1, 1, 2], "a", &[[0, 0, 0], [1, 0, 0], [2, 0, 0]])],
        );
        let store = Store::open(name, OpenMode::Existing).unwrap();
        assert_eq!(generations(&store, &JsonCodec).unwrap(), vec![]);
        consolidate(&store, &JsonCodec).unwrap();
        // A rerun of w1 (label 1 only, one point): generation 2 supersedes label 1's block a.
        write(name, "w1", &[rows(&[1], "a", &[[9, 0, 0]])]);
        write(name, "w2", &[rows(&[3], "b", &[[4, 0, 0]])]);
        consolidate(&store, &JsonCodec).unwrap();
        let g = generations(&store, &JsonCodec).unwrap();
        let row = |g: &GenerationStats| {
            (
                g.generation,
                g.format,
                g.commits,
                g.labels,
                g.points,
                g.entries,
            )
        };
        assert_eq!(
            g.iter().map(row).collect::<Vec<_>>(),
            vec![(1, 2, 1, 2, 3, 2), (2, 2, 3, 3, 3, 3)]
        );
        assert!(g[0].created_ms <= g[1].created_ms && g[0].created_ms > 1_700_000_000_000);
        // Generation 2 no longer needs w1's first part; its bytes are those of its files.
        let s = stats(&store, &JsonCodec).unwrap();
        assert_eq!(g[1].bytes, s.index_bytes + s.file_bytes);
        assert!(g[0].bytes > 0 && g[1].bytes != g[0].bytes);
    }

    #[test]
    fn not_a_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        let e = stats(&store, &JsonCodec).unwrap_err().to_string();
        assert!(
            e.ends_with("is not a pocaduck store (no _pocaduck.json and no index)"),
            "{e}"
        );
    }
}
