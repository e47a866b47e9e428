//! `pocaduck_vacuum`: deletes the files of a store that no retained generation needs.
//!
//! **Retained generations**: the newest, and every generation that was the newest at some time
//! within the retention (its successor was published less than `retain` ago, by the storage's
//! modification times). A reader holding one of them keeps working.
//!
//! **Kept files**: the segments of the retained generations; every part the newest
//! generation's entries reference (a rerun's superseded entries do not count), and every part
//! the segment files of older retained generations name (whole files: a superset, so a part
//! superseded while an older generation is retained stays until `pocaduck_optimize` or a merge
//! has rewritten the segments naming it; format-1 generations are read whole); the commit segments consolidate has not
//! merged into the newest generation yet (pending or skipped, see [`log::skipped_commits`]) and
//! the merged ones younger than the retention, with every part they name; and every file of a
//! writer session (parts, or a consolidate's or optimize's segments) that wrote a file within the
//! retention, so that sessions in flight are never touched. A session's parts exist before its
//! commit names them: the retention must exceed the longest pause between a session's writes
//! and its commit (hence the minimum of [`MIN_RETAIN`] without `force`).
//!
//! **Deleted** (older than the retention, never referenced): generation manifests, merged commit
//! segments, index segments, parts (superseded by a rerun, optimized away, orphans of sessions
//! that never committed), staging files of interrupted local uploads (`<file>#<n>`), and the
//! local copies of deleted format-1 generations (`<temp>/pocaduck-index-cache/`).
//!
//! **Order**: data files are listed before the generations and commits are read, so a file
//! created later is never a candidate; then manifests go first, commits before the parts they
//! name, segments and parts last. A vacuum killed at any point leaves a readable store whose
//! leftovers are unreferenced, and a rerun deletes them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use object_store::path::Path;

use crate::error::{Error, Result};
use crate::index::IndexCodec;
use crate::layout;
use crate::log;
use crate::storage::Store;

/// Retention when none is given: 7 days (as Delta Lake's `VACUUM`).
pub const DEFAULT_RETAIN: Duration = Duration::from_secs(7 * 86400);

/// Shortest retention accepted without `force`: 1 day.
pub const MIN_RETAIN: Duration = Duration::from_secs(86400);

/// The kinds of files vacuum deletes, in the order it deletes them.
pub const KINDS: [&str; 6] = [
    "generation",
    "commit",
    "segment",
    "part",
    "staging",
    "index_cache",
];

/// What to vacuum.
#[derive(Clone, Debug)]
pub struct VacuumOptions {
    /// Files (and generations superseded) within this time are kept.
    pub retain: Duration,
    /// Only report what would be deleted.
    pub dry_run: bool,
    /// Accept a retention shorter than [`MIN_RETAIN`].
    pub force: bool,
}

impl Default for VacuumOptions {
    fn default() -> Self {
        VacuumOptions {
            retain: DEFAULT_RETAIN,
            dry_run: false,
            force: false,
        }
    }
}

impl VacuumOptions {
    /// Refuses a retention under [`MIN_RETAIN`] without `force`.
    pub fn check(&self) -> Result<()> {
        if self.retain < MIN_RETAIN && !self.force {
            return Err(Error::arg(
                "retain",
                format!(
                    "must be at least {} hours ({}s given): a shorter retention can delete the parts of a write session in flight; pass force := true if nothing writes to the store",
                    MIN_RETAIN.as_secs() / 3600,
                    self.retain.as_secs_f64()
                ),
            ));
        }
        Ok(())
    }
}

/// Files and bytes of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Files deleted (or that would be).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What a vacuum deleted (or would delete, `dry_run`), by kind ([`KINDS`] order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VacuumReport {
    /// One entry per kind of [`KINDS`].
    pub kinds: [Reclaimed; 6],
    /// Generations retained (the newest included).
    pub generations_retained: u64,
}

impl VacuumReport {
    /// The figures of `kind` (one of [`KINDS`]).
    pub fn of(&self, kind: &str) -> Reclaimed {
        KINDS
            .iter()
            .position(|k| *k == kind)
            .map(|i| self.kinds[i])
            .unwrap_or_default()
    }
}

/// A file to delete.
struct Doomed {
    path: Path,
    bytes: u64,
}

/// The writer session a part or segment file belongs to: its path without the trailing
/// `-<n>.parquet` (parts: `…/<session>-<n>`; segments: `segments/<run>-<session>-<k>`).
fn session_key(path: &str) -> &str {
    path.rsplit_once('-').map_or(path, |(a, _)| a)
}

/// Whether `name` is a staging file of an interrupted local upload (`<file>#<digits>`).
fn is_staging(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Vacuums `store` (see the module documentation).
pub fn vacuum(store: &Store, codec: &dyn IndexCodec, opts: &VacuumOptions) -> Result<VacuumReport> {
    opts.check()?;
    crate::writer::require_store(store, log::latest(store)?.is_some())?;
    // Cold readers of an object store answer from its head manifest: it must name the newest
    // generation before older ones may go.
    log::repair_head(store)?;
    // Times are the storage's: an object store's clock stamps its objects, so "now" is read
    // from it too (a client clock ahead of the store's would otherwise shorten the retention).
    let now = storage_now(store)?;
    let cutoff = now - opts.retain.as_millis().min(i64::MAX as u128) as i64;
    let ms = |m: &object_store::ObjectMeta| m.last_modified.timestamp_millis();
    // 1. Data files first: whatever is created from here on is never a candidate.
    let mut files = store.list(&layout::workers_dir())?;
    files.extend(store.list(&layout::optimized_dir())?);
    files.extend(store.list(&layout::segments_dir())?);
    let commits: Vec<object_store::ObjectMeta> = files
        .iter()
        .filter(|m| layout::parse_commit_file(m.location.as_ref()).is_some())
        .cloned()
        .collect();
    // Commits consolidate will never merge, and the generations that show it (kept with them:
    // without its witness a skipped commit would look merged).
    let skipped = log::skipped_commits(store, codec, &commits)?;
    let witnesses: HashSet<u64> = skipped.iter().map(|s| s.generation).collect();
    let skipped: HashSet<String> = skipped.into_iter().map(|s| s.file).collect();
    // 2. Generations, and which are retained.
    let gens = log::all(store)?;
    let mut report = VacuumReport::default();
    let mut doomed: [Vec<Doomed>; 6] = Default::default();
    let mut segments: HashSet<String> = HashSet::new();
    let mut scanned: HashSet<String> = HashSet::new();
    let mut parts: HashSet<String> = HashSet::new();
    let mut merged: Option<log::Manifest> = None;
    let mut retained_gens: HashSet<u64> = HashSet::new();
    for (i, g) in gens.iter().enumerate() {
        let newest = i + 1 == gens.len();
        let retained =
            newest || ms(&gens[i + 1].meta) >= cutoff || witnesses.contains(&g.generation);
        if !retained {
            doomed[0].push(Doomed {
                path: g.meta.location.clone(),
                bytes: g.meta.size,
            });
            continue;
        }
        retained_gens.insert(g.generation);
        report.generations_retained += 1;
        let gen = log::load(store, g, codec)?;
        if newest {
            merged = Some(gen.manifest.clone());
        }
        match &gen.legacy {
            Some(entries) => parts.extend(entries.iter().map(|e| e.entry.part.clone())),
            None if newest => {
                // Exactly what the newest generation references: its entries, superseded ones
                // (a rerun's earlier rows) dropped.
                segments.extend(gen.manifest.segments.iter().map(|r| r.file.clone()));
                parts.extend(crate::stats::scan(store, gen)?.parts);
            }
            None => {
                // An older generation: every part its segment files name (a superset: cheap,
                // and safe for any generation sharing the files).
                let block = gen.manifest.schema.block_type();
                for r in &gen.manifest.segments {
                    if scanned.insert(r.file.clone()) {
                        parts.extend(crate::entry_chunks::segment_part_names(store, r, block)?);
                    }
                    segments.insert(r.file.clone());
                }
            }
        }
    }
    // 3. Commits. Pending and skipped ones are kept with every part they name. Merged ones are
    // history (their live entries are in the index): older than the retention they go. A writer
    // numbers its commits after the newest generation's record of its worker and after its
    // commits on storage; a format-1 generation gives it no record, so while the newest is one,
    // each worker's highest commit stays (it keeps the numbering above the merged ones).
    let newest_legacy = gens.last().is_some_and(|g| g.legacy);
    fn worker_seq(m: &object_store::ObjectMeta) -> (&str, u64) {
        layout::parse_commit_file(m.location.as_ref()).unwrap_or_default()
    }
    let mut highest: HashMap<&str, u64> = HashMap::new();
    for m in &commits {
        let (worker, seq) = worker_seq(m);
        let h = highest.entry(worker).or_insert(seq);
        *h = (*h).max(seq);
    }
    for m in &commits {
        let path = m.location.as_ref();
        let (worker, seq) = worker_seq(m);
        let done = merged.as_ref().map_or(0, |x| x.last_commit(worker));
        if seq <= done && !skipped.contains(path) {
            if ms(m) < cutoff && !(newest_legacy && highest.get(worker) == Some(&seq)) {
                doomed[1].push(Doomed {
                    path: m.location.clone(),
                    bytes: m.size,
                });
            }
            continue;
        }
        let bytes = store.get(&m.location)?;
        for e in crate::index::decode_segment(bytes, &store.name, path)? {
            parts.insert(e.part);
        }
    }
    // 4. Segments and parts: unreferenced, of a session that wrote nothing within the retention.
    // A session's activity: its files' times, and (local stores) the staging file of the part
    // it is writing, which listings do not show.
    let mut active: HashMap<String, i64> = HashMap::new();
    let mut touch = |path: &str, t: i64| {
        let e = active.entry(session_key(path).to_string()).or_insert(t);
        *e = (*e).max(t);
    };
    for m in &files {
        let path = m.location.as_ref();
        if path.ends_with(".parquet") && !path.contains("/commits/") {
            touch(path, ms(m));
        }
    }
    // Local stores: staging files, with their size and modification time, listed once.
    let mut staging: Vec<(std::path::PathBuf, u64, std::time::SystemTime)> = Vec::new();
    if let Some(root) = &store.local_dir {
        staging_files(root, &mut |p, md| {
            let t = md
                .modified()
                .unwrap_or_else(|_| std::time::SystemTime::now());
            staging.push((p, md.len(), t));
        });
        for (p, _, t) in &staging {
            let rel = p.strip_prefix(root).unwrap_or(p).to_string_lossy();
            let ms = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(i64::MAX, |d| d.as_millis() as i64);
            if let Some((base, _)) = rel.rsplit_once('#') {
                touch(base, ms);
            }
        }
    }
    for m in &files {
        let path = m.location.as_ref();
        if !path.ends_with(".parquet") || path.contains("/commits/") {
            continue;
        }
        let kind = if path.starts_with("segments/") {
            if segments.contains(path) {
                continue;
            }
            2
        } else {
            let part_dir = path.starts_with("optimized/") || path.contains("/parts/");
            if !part_dir || parts.contains(path) {
                continue;
            }
            3
        };
        if active.get(session_key(path)).is_some_and(|t| *t >= cutoff) {
            continue;
        }
        doomed[kind].push(Doomed {
            path: m.location.clone(),
            bytes: m.size,
        });
    }
    // 5. Local only: staging files of interrupted uploads, and copies of deleted generations.
    let mut local: [Vec<(std::path::PathBuf, u64)>; 2] = Default::default();
    let cutoff_sys = std::time::SystemTime::now()
        .checked_sub(opts.retain)
        .unwrap_or(std::time::UNIX_EPOCH);
    // (Local files: this machine's clock stamps them.)
    let old = |md: &std::fs::Metadata| md.modified().is_ok_and(|t| t < cutoff_sys);
    for (p, len, t) in staging {
        if t < cutoff_sys {
            local[0].push((p, len));
        }
    }
    let cache = crate::consolidate::index_cache_dir(store);
    if let Ok(rd) = std::fs::read_dir(&cache) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Ok(md) = e.metadata() else { continue };
            let gen: Option<u64> = name.get(..10).and_then(|g| g.parse().ok());
            let stale_copy =
                !name.ends_with(".tmp") && gen.is_some_and(|g| !retained_gens.contains(&g));
            if md.is_file() && (stale_copy || (name.ends_with(".tmp") && old(&md))) {
                local[1].push((e.path(), md.len()));
            }
        }
    }
    for (k, list) in doomed.iter().enumerate() {
        report.kinds[k].files = list.len() as u64;
        report.kinds[k].bytes = list.iter().map(|d| d.bytes).sum();
    }
    for (k, list) in local.iter().enumerate() {
        report.kinds[4 + k].files = list.len() as u64;
        report.kinds[4 + k].bytes = list.iter().map(|d| d.1).sum();
    }
    if opts.dry_run {
        return Ok(report);
    }
    for list in doomed {
        store.delete_all(list.into_iter().map(|d| d.path).collect())?;
    }
    for (p, _) in local.iter().flatten() {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::store(
                    &store.name,
                    format!("cannot delete {}: {e}", p.display()),
                ))
            }
        }
    }
    Ok(report)
}

/// Milliseconds since the epoch by the storage's clock: this machine's for a local store; for an
/// object store, the modification time of a small object written (and deleted) for the purpose
/// (1 PUT, 1 HEAD, 1 DELETE).
fn storage_now(store: &Store) -> Result<i64> {
    use object_store::ObjectStoreExt;
    if store.local_dir.is_some() {
        return Ok(log::now_ms() as i64);
    }
    let probe = Path::from(format!("_vacuum-clock-{}", crate::writer::new_session_id()));
    store.put_if_absent(
        &probe,
        bytes::Bytes::from_static(b"pocaduck_vacuum clock probe"),
    )?;
    let head = crate::storage::block_on(store.objects.head(&probe))
        .map_err(|e| Error::file(&store.name, probe.as_ref(), e));
    store.delete(&probe)?;
    // Object stores stamp whole seconds: now is within the second after the probe's stamp.
    Ok(head?.last_modified.timestamp_millis() + 999)
}

/// Calls `f` for every staging file (`<name>.parquet#<digits>` or `<name>.json#<digits>`) in the
/// directories pocaduck writes of a local store: its root, `index/`, `segments/`, `optimized/`
/// and `workers/<w>/parts/` and `workers/<w>/commits/` (nothing else of the directory is looked
/// at).
fn staging_files(
    root: &std::path::Path,
    f: &mut dyn FnMut(std::path::PathBuf, &std::fs::Metadata),
) {
    let mut dirs = vec![
        root.to_path_buf(),
        root.join("index"),
        root.join("segments"),
        root.join("optimized"),
    ];
    if let Ok(rd) = std::fs::read_dir(root.join("workers")) {
        for e in rd.flatten() {
            dirs.push(e.path().join("parts"));
            dirs.push(e.path().join("commits"));
        }
    }
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let ours = name
                .rsplit_once('#')
                .is_some_and(|(base, _)| base.ends_with(".parquet") || base.ends_with(".json"));
            let Ok(md) = e.metadata() else { continue };
            if ours && md.is_file() && is_staging(&name) {
                f(e.path(), &md);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::consolidate::consolidate;
    use crate::consolidate::tests::{write, JsonCodec};
    use crate::optimize::tests::read_all;
    use crate::optimize::{optimize, OptimizeOptions};
    use crate::storage::OpenMode;
    use crate::writer::tests::rows;

    /// Every file under `dir`, relative, sorted.
    pub(crate) fn files(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let p = e.path();
                    out.push(p.strip_prefix(dir).unwrap().to_string_lossy().to_string());
                }
            }
        }
        out.sort();
        out
    }

    /// Sets the modification time of every file under `dir` to `days` days ago.
    fn age(dir: &std::path::Path, days: u64) {
        let t = std::time::SystemTime::now() - Duration::from_secs(days * 86400);
        for f in files(dir) {
            let f = std::fs::File::options()
                .write(true)
                .open(dir.join(f))
                .unwrap();
            f.set_modified(t).unwrap();
        }
    }

    fn count(fs: &[String], f: impl Fn(&str) -> bool) -> u64 {
        fs.iter().filter(|p| f(p)).count() as u64
    }

    fn forced(retain: Duration, dry_run: bool) -> VacuumOptions {
        VacuumOptions {
            retain,
            dry_run,
            force: true,
        }
    }

    /// Reruns, consolidates, optimizes, orphans and staging files, all older than the
    /// retention: vacuum deletes exactly what the newest generation does not reference (checked
    /// against a listing and `pocaduck_stats`), every label reads the same, and the store checks
    /// clean.
    #[test]
    fn vacuum_deletes_what_no_retained_generation_needs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let name = root.to_str().unwrap();
        write(name, "w1", &[rows(&[1, 2], "a", &[[0, 0, 0], [1, 1, 1]])]);
        write(name, "w2", &[rows(&[2, 3], "b", &[[2, 2, 2], [3, 3, 3]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        // A rerun of w1 replaces its (label, block)s: its first part is superseded.
        write(name, "w1", &[rows(&[1, 2], "a", &[[5, 0, 0], [6, 1, 1]])]);
        consolidate(&store, &JsonCodec).unwrap();
        write(name, "w3", &[rows(&[3], "c", &[[7, 7, 7]])]);
        consolidate(&store, &JsonCodec).unwrap();
        optimize(&store, &JsonCodec, &OptimizeOptions::default()).unwrap();
        // An orphan (a session that never committed) and an interrupted upload's staging file.
        let any_part = files(root)
            .into_iter()
            .find(|p| p.contains("/parts/"))
            .unwrap();
        std::fs::create_dir_all(root.join("workers/w9/parts")).unwrap();
        std::fs::copy(
            root.join(&any_part),
            root.join("workers/w9/parts/1700000000000-abcd-000000.parquet"),
        )
        .unwrap();
        std::fs::write(root.join("segments/x.parquet#1"), b"partial").unwrap();
        // Not pocaduck's: a user's file with a staging-like name, and a directory of its own.
        std::fs::write(root.join("notes.txt#3"), b"mine").unwrap();
        std::fs::create_dir_all(root.join("extra")).unwrap();
        std::fs::write(root.join("extra/a.parquet#1"), b"mine").unwrap();
        let expect = read_all(name);
        let before = files(root);
        let s = crate::stats::stats(&store, &JsonCodec).unwrap();
        assert_eq!(s.generation, 4);
        assert!(s.unreferenced_files >= 3, "{s:?}");

        // Everything is young: the default retention deletes nothing.
        let r = vacuum(&store, &JsonCodec, &VacuumOptions::default()).unwrap();
        assert_eq!(r.kinds, [Reclaimed::default(); 6]);
        assert_eq!(r.generations_retained, 4);
        assert_eq!(files(root), before);

        age(root, 10);
        // A dry run reports and deletes nothing.
        let dry = vacuum(&store, &JsonCodec, &forced(DEFAULT_RETAIN, true)).unwrap();
        assert_eq!(files(root), before);
        let r = vacuum(&store, &JsonCodec, &forced(DEFAULT_RETAIN, false)).unwrap();
        assert_eq!(r, dry);
        assert_eq!(r.generations_retained, 1);
        let after = files(root);
        let gone: Vec<&String> = before.iter().filter(|p| !after.contains(p)).collect();
        // Manifests 1-3 go, 4 stays; every commit was merged, so all 4 go; parts as stats
        // counted them.
        assert_eq!(r.of("generation").files, 3);
        assert_eq!(count(&after, |p| p.starts_with("index/")), 1);
        assert_eq!(count(&before, |p| p.contains("/commits/")), 4);
        assert_eq!(r.of("commit").files, 4);
        assert_eq!(count(&after, |p| p.contains("/commits/")), 0);
        assert_eq!(r.of("part").files, s.unreferenced_files);
        assert_eq!(r.of("part").bytes, s.unreferenced_bytes);
        assert_eq!(r.of("staging").files, 1);
        let seg_before = count(&before, |p| {
            p.starts_with("segments/") && p.ends_with(".parquet")
        });
        assert_eq!(
            r.of("segment").files,
            seg_before - count(&after, |p| p.starts_with("segments/"))
        );
        assert!(r.of("segment").files > 0);
        let total: u64 = r.kinds.iter().map(|k| k.files).sum();
        assert_eq!(total as usize, gone.len(), "{gone:?}");
        assert_eq!(read_all(name), expect);
        assert!(after.contains(&"notes.txt#3".to_string()));
        assert!(after.contains(&"extra/a.parquet#1".to_string()));
        let s2 = crate::stats::stats(&store, &JsonCodec).unwrap();
        assert_eq!((s2.unreferenced_files, s2.files), (0, s.files));
        let c = crate::check::check(&store, &JsonCodec).unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        // Nothing left to do.
        let again = vacuum(&store, &JsonCodec, &forced(Duration::ZERO, false)).unwrap();
        assert_eq!(again.kinds, [Reclaimed::default(); 6]);
    }

    /// Pending commits keep their parts however old; a session that wrote within the retention
    /// keeps all its files, even old ones; generations superseded within the retention stay.
    #[test]
    fn vacuum_keeps_pending_commits_sessions_in_flight_and_recent_generations() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let name = root.to_str().unwrap();
        write(name, "w1", &[rows(&[1], "a", &[[0, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        write(name, "w1", &[rows(&[1], "a", &[[1, 0, 0]])]);
        consolidate(&store, &JsonCodec).unwrap();
        write(name, "w2", &[rows(&[2], "b", &[[2, 0, 0]])]); // pending
        let part = files(root)
            .into_iter()
            .find(|p| p.starts_with("workers/w2/parts/"))
            .unwrap();
        // A session in flight: one part written long ago, one just now.
        std::fs::create_dir_all(root.join("workers/w3/parts")).unwrap();
        for n in 0..2 {
            let to = format!("workers/w3/parts/1700000000000-beef-00000{n}.parquet");
            std::fs::copy(root.join(&part), root.join(to)).unwrap();
        }
        age(root, 10);
        // Generation 2 (newest) was published just now: generation 1 was current within the
        // retention.
        let now = std::time::SystemTime::now();
        for p in [
            "index/0000000002.json",
            "workers/w3/parts/1700000000000-beef-000001.parquet",
        ] {
            let f = std::fs::File::options()
                .write(true)
                .open(root.join(p))
                .unwrap();
            f.set_modified(now).unwrap();
        }
        let before = files(root);
        let r = vacuum(&store, &JsonCodec, &VacuumOptions::default()).unwrap();
        assert_eq!(r.generations_retained, 2);
        assert_eq!(r.of("generation").files, 0);
        // Generation 1's part is still referenced by retained generation 1; w1's merged
        // commits (old) go.
        assert_eq!(r.of("part").files, 0);
        assert_eq!(r.of("commit").files, 2);
        let after = files(root);
        assert!(after.contains(&part), "pending commit's part deleted");
        assert!(after.iter().any(|p| p.starts_with("workers/w2/commits/")));
        assert_eq!(count(&after, |p| p.starts_with("workers/w3/")), 2);
        assert_eq!(before.len() - after.len(), 2);
        // A new commit of w1 is numbered after the merged ones, and merged.
        write(name, "w1", &[rows(&[5], "e", &[[5, 5, 5]])]);
        assert!(root.join("workers/w1/commits/0000000003.parquet").exists());
        // Once generation 2 is old too, generation 1 and w1's first part go; w2 is merged.
        consolidate(&store, &JsonCodec).unwrap();
        age(root, 10);
        let expect = read_all(name);
        let r = vacuum(&store, &JsonCodec, &VacuumOptions::default()).unwrap();
        assert_eq!(r.generations_retained, 1);
        assert_eq!(r.of("generation").files, 2);
        // w1's first part (superseded) and both of the abandoned w3 session's parts.
        assert_eq!(r.of("part").files, 3);
        assert_eq!(read_all(name), expect);
        assert_eq!(expect[&1], vec![("a".to_string(), 1, 0, 0)]);
        let c = crate::check::check(&store, &JsonCodec).unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }

    /// A session writing its next part (a local staging file, which listings do not show) is in
    /// flight: its old completed part stays. Once the staging file is old too, both go.
    #[test]
    fn a_part_being_written_keeps_its_session() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let name = root.to_str().unwrap();
        write(name, "w1", &[rows(&[1], "a", &[[0, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let part = files(root)
            .into_iter()
            .find(|p| p.contains("/parts/"))
            .unwrap();
        std::fs::create_dir_all(root.join("workers/w2/parts")).unwrap();
        let done = "workers/w2/parts/1700000000000-cafe-000000.parquet";
        std::fs::copy(root.join(&part), root.join(done)).unwrap();
        age(root, 10);
        // The session's next part, being written now.
        let open = "workers/w2/parts/1700000000000-cafe-000001.parquet#1";
        std::fs::write(root.join(open), b"in progress").unwrap();
        let r = vacuum(&store, &JsonCodec, &VacuumOptions::default()).unwrap();
        assert_eq!((r.of("part").files, r.of("staging").files), (0, 0));
        assert!(root.join(done).exists());
        age(root, 10);
        let r = vacuum(&store, &JsonCodec, &VacuumOptions::default()).unwrap();
        assert_eq!((r.of("part").files, r.of("staging").files), (1, 1));
        assert!(!root.join(done).exists() && !root.join(open).exists());
    }

    /// A commit consolidate will never merge (numbered at or below what the index had merged of
    /// its worker when it was written) keeps the generation that shows it, so it stays reported
    /// and kept across vacuums, with its part.
    #[test]
    fn a_skipped_commit_keeps_its_witness_generation() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let name = root.to_str().unwrap();
        write(name, "w0", &[rows(&[1], "a", &[[0, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        // Generation 1 is 20 days old. An earlier pocaduck reusing worker id w0 after its
        // directory was deleted wrote commit 1 again 15 days ago (here: w0's commit, rewritten).
        age(root, 20);
        let commit = root.join("workers/w0/commits/0000000001.parquet");
        let bytes = std::fs::read(&commit).unwrap();
        std::fs::remove_file(&commit).unwrap();
        std::fs::write(&commit, bytes).unwrap();
        let t = std::time::SystemTime::now() - Duration::from_secs(15 * 86400);
        let f = std::fs::File::options().write(true).open(&commit).unwrap();
        f.set_modified(t).unwrap();
        // Generation 2 (10 days ago) merges another worker.
        write(name, "w1", &[rows(&[2], "b", &[[1, 0, 0]])]);
        consolidate(&store, &JsonCodec).unwrap();
        for (p, days) in [
            ("workers/w1/commits/0000000001.parquet", 11),
            ("index/0000000002.json", 10),
        ] {
            let t = std::time::SystemTime::now() - Duration::from_secs(days * 86400);
            let f = std::fs::File::options()
                .write(true)
                .open(root.join(p))
                .unwrap();
            f.set_modified(t).unwrap();
        }
        let skipped = |s: &Store| crate::stats::stats(s, &JsonCodec).unwrap().skipped_commits;
        assert_eq!(skipped(&store), 1);
        for merged_commits in [1, 0] {
            let r = vacuum(&store, &JsonCodec, &VacuumOptions::default()).unwrap();
            // Generation 1 (superseded 10 days ago) is kept as the witness.
            assert_eq!(
                (r.of("generation").files, r.generations_retained),
                (0, 2),
                "{r:?}"
            );
            // w1's merged commit goes (the first time); the skipped one stays.
            assert_eq!(r.of("commit").files, merged_commits, "{r:?}");
            assert!(commit.exists());
            assert_eq!(skipped(&store), 1);
        }
    }

    #[test]
    fn short_retention_needs_force_and_bad_stores_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(name, "w1", &[rows(&[1], "a", &[[0, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let before = files(dir.path());
        let opts = VacuumOptions {
            retain: Duration::from_secs(3600),
            ..Default::default()
        };
        let e = vacuum(&store, &JsonCodec, &opts).unwrap_err().to_string();
        assert!(
            e.starts_with("argument 'retain' must be at least 24 hours (3600s given)"),
            "{e}"
        );
        assert_eq!(files(dir.path()), before);
        let empty = tempfile::tempdir().unwrap();
        let s = Store::open(empty.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        let e = vacuum(&s, &JsonCodec, &VacuumOptions::default()).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("is not a pocaduck store (no _pocaduck.json and no index)"));
    }

    #[test]
    fn session_keys_and_staging_names() {
        assert_eq!(
            session_key("workers/w/parts/1700-ab12-000003.parquet"),
            "workers/w/parts/1700-ab12"
        );
        assert_eq!(
            session_key("segments/0000000004-1700-ab12-0001.parquet"),
            "segments/0000000004-1700-ab12"
        );
        assert!(is_staging("a.parquet#12"));
        assert!(!is_staging("a.parquet#x1"));
        assert!(!is_staging("a.parquet#"));
        assert!(!is_staging("a.parquet"));
    }
}
