//! The store's log of generations: which index generation is current, what it holds, and the
//! one create-if-absent protocol that publishes commits and generations.
//!
//! A generation is a small JSON **manifest** (`index/<generation>.json`, [`Manifest`]) naming
//! immutable, label-sorted index segments (`segments/…parquet`, module [`crate::segment`]) and
//! recording, per worker, the last commit merged. Generations are published with
//! put-if-absent under the next number, so a generation is complete or absent, and two writers
//! racing for the same number cannot both win. Stores written before format 2 hold generations
//! as DuckDB databases (`index/<generation>.duckdb`); they are read whole through an
//! [`IndexCodec`] and upgraded to a manifest by the next consolidate.
//!
//! Guarantees relied on: `put_if_absent` is atomic (local: hard-link/rename; object stores:
//! `If-None-Match: *`), and a listing shows every object whose creation completed before it.

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::index::{IndexCodec, UnifiedIndex, WorkerState};
use crate::layout;
use crate::schema::StoreSchema;
use crate::storage::Store;

/// Newest format of generation manifests this release reads and writes: 3 when the manifest
/// holds tombstones (older releases must refuse it rather than show hidden points), else 2.
pub const MANIFEST_FORMAT: u32 = 3;

/// Format of a manifest without tombstones (what the previous release reads).
pub const MANIFEST_FORMAT_PLAIN: u32 = 2;

/// One index segment file of a generation, restricted to the labels `lo ..= hi`.
///
/// A file may appear more than once with disjoint ranges (after a label-range optimize clipped
/// it); entries of the file outside the range are not part of the generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    /// Path relative to the store root (`segments/….parquet`).
    pub file: String,
    /// Size of the file in bytes (readers fetch its footer without a HEAD request).
    pub bytes: u64,
    /// Entries in the file (all of it, whatever the range).
    pub entries: u64,
    /// Smallest label of the generation's part of the file.
    pub lo: u64,
    /// Largest label of the generation's part of the file.
    pub hi: u64,
    /// Files written together (one consolidate, one merge, one optimize) share a run number;
    /// the files of a run have disjoint label ranges.
    pub run: u64,
    /// Size tier of the run, for merging (see [`crate::segment::tier_of`]).
    pub tier: u32,
    /// Written by `pocaduck_optimize` (its entries point at label-contiguous parts).
    #[serde(default)]
    pub optimized: bool,
    /// The file's row-group directory ([`crate::segment::Directory::encode`]): where each row
    /// group starts and which labels it holds, so that a reader on an object store fetches a
    /// label's row group without the file's footer. Absent in manifests written before
    /// 2026-12-01 and for files whose layout it cannot describe; readers then use the footer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// A generation manifest (`index/<generation>.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] (3) when it holds tombstones, else [`MANIFEST_FORMAT_PLAIN`] (2);
    /// readers refuse newer formats.
    pub format: u32,
    /// Generation number (1 for the first consolidate).
    pub generation: u64,
    /// Milliseconds since the Unix epoch when it was built.
    pub created_ms: u64,
    /// The store schema.
    pub schema: StoreSchema,
    /// Per worker, the highest commit merged.
    pub workers: Vec<WorkerState>,
    /// The index segments (newest runs last).
    pub segments: Vec<SegmentRef>,
    /// Next run number to hand out.
    pub next_run: u64,
    /// What re-scans and deletes hide in segments of lower runs (format 3; see
    /// [`crate::tombstone`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tombstones: Vec<crate::tombstone::Tombstone>,
}

impl Manifest {
    /// An empty manifest of generation 0.
    pub fn empty(schema: StoreSchema) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT_PLAIN,
            generation: 0,
            created_ms: 0,
            schema,
            workers: Vec::new(),
            segments: Vec::new(),
            next_run: 1,
            tombstones: Vec::new(),
        }
    }

    /// Last commit merged for `worker` (0 if none).
    pub fn last_commit(&self, worker: &str) -> u64 {
        self.workers
            .iter()
            .find(|w| w.worker == worker)
            .map(|w| w.last_commit)
            .unwrap_or(0)
    }

    /// Parses a manifest; `file` names it in errors.
    pub fn from_json(bytes: &[u8], store: &str, file: &str) -> Result<Manifest> {
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let bad = |e: &dyn std::fmt::Display| {
            Error::file(store, file, format!("corrupt generation manifest: {e}"))
        };
        let p: Probe = serde_json::from_slice(bytes).map_err(|e| bad(&e))?;
        if p.format > MANIFEST_FORMAT {
            return Err(Error::file(
                store,
                file,
                format!(
                    "index format {} is newer than this pocaduck supports ({MANIFEST_FORMAT}): upgrade pocaduck",
                    p.format
                ),
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| bad(&e))
    }
}

/// Where a generation lives.
#[derive(Clone, Debug)]
pub struct GenerationFile {
    /// Generation number.
    pub generation: u64,
    /// `false`: a format-2 manifest; `true`: a format-1 DuckDB database.
    pub legacy: bool,
    /// Object metadata from the listing (size, modification time, ETag).
    pub meta: object_store::ObjectMeta,
}

fn parse(m: object_store::ObjectMeta) -> Option<GenerationFile> {
    if let Some(g) = layout::parse_manifest_gen(&m.location) {
        return Some(GenerationFile {
            generation: g,
            legacy: false,
            meta: m,
        });
    }
    layout::parse_index_gen(&m.location).map(|g| GenerationFile {
        generation: g,
        legacy: true,
        meta: m,
    })
}

/// The newest of `files`. Once a store holds a format-2 manifest, format-1 files (`.duckdb`)
/// never count again: this release never writes one, so a `.duckdb` file in `index/` next to a
/// manifest is not a generation (plain DuckDB creates one when it `ATTACH`es a missing path
/// there), and it must neither hide the manifests nor fail every read.
fn newest(files: impl IntoIterator<Item = GenerationFile>) -> Option<GenerationFile> {
    let (manifests, legacy): (Vec<_>, Vec<_>) = files.into_iter().partition(|g| !g.legacy);
    let pick = if manifests.is_empty() {
        legacy
    } else {
        manifests
    };
    pick.into_iter().max_by_key(|g| g.generation)
}

/// The newest generation of `store` (`None`: never consolidated). One listing of `index/`.
pub fn latest(store: &Store) -> Result<Option<GenerationFile>> {
    let g = newest(
        store
            .list(&layout::index_dir())?
            .into_iter()
            .filter_map(parse),
    );
    if let Some(g) = &g {
        note(store, g.generation, false);
    }
    Ok(g)
}

/// Every generation file of `store`, oldest first (format-1 files only up to the first
/// manifest, as in [`latest`]).
pub fn all(store: &Store) -> Result<Vec<GenerationFile>> {
    let mut v: Vec<GenerationFile> = store
        .list(&layout::index_dir())?
        .into_iter()
        .filter_map(parse)
        .collect();
    v.sort_by_key(|g| (g.generation, !g.legacy));
    if let Some(first) = v.iter().position(|g| !g.legacy) {
        // Format-1 files count only below the first manifest (the upgrade published it over the
        // last of them); one numbered like a manifest is not a generation (plain DuckDB creates
        // such a file when it ATTACHes a missing path in index/).
        let upgraded = v[first].generation;
        v.retain(|g| !g.legacy || g.generation < upgraded);
    }
    if let Some(g) = v.last() {
        note(store, g.generation, false);
    }
    Ok(v)
}

/// Generation `n` as the store lists it now (one listing of `index/`); `None` if the store holds
/// no generation at all, and an error naming `n` and the generations held if it holds others
/// (`n` was vacuumed, or never published).
pub fn find(store: &Store, n: u64) -> Result<Option<GenerationFile>> {
    let mut all = all(store)?;
    if all.is_empty() {
        return Ok(None);
    }
    if let Some(i) = all.iter().position(|g| g.generation == n) {
        return Ok(Some(all.swap_remove(i)));
    }
    let held: Vec<u64> = all.iter().map(|g| g.generation).collect();
    let held = match held.windows(2).all(|w| w[1] == w[0] + 1) {
        true => format!("{}..={}", held[0], held[held.len() - 1]),
        false => held
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    Err(Error::store(
        &store.name,
        format!("does not hold generation {n} (vacuumed, or never published); it holds generations {held}"),
    ))
}

/// Like [`latest`], but lists only names from generation `known` on (`known` itself included),
/// so a reader that holds generation `known` pays for new generations only. `None` when
/// `known` is gone too (the store was rewritten: call [`latest`]).
pub fn latest_since(store: &Store, known: u64) -> Result<Option<GenerationFile>> {
    let offset = Path::from(format!("{}/{known:010}", layout::index_dir()));
    let listed: Vec<GenerationFile> = store
        .list_from(&layout::index_dir(), &offset)?
        .into_iter()
        .filter_map(parse)
        .collect();
    if !listed.iter().any(|g| g.generation == known) {
        // The store was deleted and written again (its numbers started over): what this
        // process saw of the old one says nothing about the new one.
        if let Ok(mut s) = seen_map().lock() {
            if let Some(e) = s.get_mut(&store.cache_key()) {
                e.0 = 0;
            }
        }
        return Ok(None);
    }
    let g = newest(listed);
    if let Some(g) = &g {
        note(store, g.generation, false);
    }
    Ok(g)
}

/// Latest generation number (0 if never consolidated).
pub fn latest_generation(store: &Store) -> Result<u64> {
    Ok(latest(store)?.map(|g| g.generation).unwrap_or(0))
}

/// A loaded generation: its manifest, plus, for a format-1 generation, all of its entries.
pub struct Generation {
    /// The manifest (for a format-1 generation: its workers and schema, no segments).
    pub manifest: Manifest,
    /// Entries of a format-1 generation, sorted by label (read whole, once).
    pub legacy: Option<Vec<crate::index::UnifiedEntry>>,
}

/// Loads generation `g`. A format-1 generation is read whole through `codec`.
pub fn load(store: &Store, g: &GenerationFile, codec: &dyn IndexCodec) -> Result<Generation> {
    if !g.legacy {
        let file = layout::manifest_file(g.generation);
        let bytes = store.get(&file)?;
        let manifest = Manifest::from_json(&bytes, &store.name, file.as_ref())?;
        if manifest.generation != g.generation {
            return Err(Error::file(
                &store.name,
                file.as_ref(),
                format!(
                    "corrupt generation manifest: it says generation {}",
                    manifest.generation
                ),
            ));
        }
        return Ok(Generation {
            manifest,
            legacy: None,
        });
    }
    let u: UnifiedIndex = crate::consolidate::load_legacy(store, g.generation, codec)?;
    let mut m = Manifest::empty(u.schema.clone());
    m.format = 1;
    m.generation = u.generation;
    m.workers = u.workers.clone();
    Ok(Generation {
        manifest: m,
        legacy: Some(u.entries),
    })
}

/// The last commit of `worker` merged into the newest generation (0: none, or the newest
/// generation is a format-1 database, whose workers only consolidate reads). A writer numbers its
/// commits after both this and the commits on storage, so a worker id reused after its
/// `workers/<id>/` directory was deleted never writes a commit that consolidate would skip.
pub fn merged_commit(store: &Store, worker: &str) -> Result<u64> {
    match latest(store)? {
        Some(g) if !g.legacy => {
            let file = layout::manifest_file(g.generation);
            let bytes = store.get(&file)?;
            Ok(Manifest::from_json(&bytes, &store.name, file.as_ref())?.last_commit(worker))
        }
        _ => Ok(0),
    }
}

/// A commit segment on storage that no consolidate will merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedCommit {
    /// The commit segment (`workers/<w>/commits/<seq>.parquet`).
    pub file: String,
    /// Its worker.
    pub worker: String,
    /// Its number.
    pub seq: u64,
    /// A generation created before the commit that had already merged `merged` of the worker.
    pub generation: u64,
    /// The worker's last merged commit in `generation` (at least `seq`).
    pub merged: u64,
}

/// The commits among `commits` (listing entries of commit segments) that consolidate skips: a
/// commit created after a generation that already recorded a commit number at or above its own
/// for its worker (its worker id was reused after `workers/<id>/` was deleted, by a writer that
/// did not number after [`merged_commit`]). Consolidate reads only commits numbered above the
/// recorded one, so such a commit is never merged. Compares the storage's modification times of
/// the commit and of the generations (the same clock on an object store); a generation published
/// in the same clock tick as the commit is not counted as before it. Loads the manifests of the
/// generations that precede a commit (each at most once).
pub fn skipped_commits(
    store: &Store,
    codec: &dyn IndexCodec,
    commits: &[object_store::ObjectMeta],
) -> Result<Vec<SkippedCommit>> {
    let gens = all(store)?;
    let mut manifests: std::collections::HashMap<usize, Manifest> = Default::default();
    let mut out = Vec::new();
    for c in commits {
        let path = c.location.as_ref();
        let Some((worker, seq)) = layout::parse_commit_file(path) else {
            continue;
        };
        // The newest generation published strictly before the commit was created.
        let Some(i) = gens
            .iter()
            .rposition(|g| g.meta.last_modified < c.last_modified)
        else {
            continue;
        };
        if let std::collections::hash_map::Entry::Vacant(v) = manifests.entry(i) {
            v.insert(load(store, &gens[i], codec)?.manifest);
        }
        let merged = manifests[&i].last_commit(worker);
        if merged >= seq {
            out.push(SkippedCommit {
                file: path.to_string(),
                worker: worker.to_string(),
                seq,
                generation: gens[i].generation,
                merged,
            });
        }
    }
    Ok(out)
}

/// Creates `file` with `bytes` if absent, then makes it durable. `false`: it already existed.
pub fn create(store: &Store, file: &Path, bytes: Bytes) -> Result<bool> {
    if !store.put_if_absent(file, bytes)? {
        return Ok(false);
    }
    store.sync(std::slice::from_ref(file))?;
    Ok(true)
}

/// Publishes `m` as generation `m.generation` (create-if-absent). Losing the race is a
/// [`Error::Conflict`] naming the generation.
pub fn publish(store: &Store, m: &Manifest) -> Result<()> {
    let mut m = m.clone();
    crate::tombstone::Tombstones::gc(&mut m.tombstones, m.segments.iter().map(|r| r.run));
    m.format = if m.tombstones.is_empty() {
        MANIFEST_FORMAT_PLAIN
    } else {
        MANIFEST_FORMAT
    };
    let bytes =
        serde_json::to_vec(&m).map_err(|e| Error::Internal(format!("manifest encode: {e}")))?;
    let bytes = Bytes::from(bytes);
    if create(store, &layout::manifest_file(m.generation), bytes.clone())? {
        note(store, m.generation, true);
        store.drop_first_head();
        if !store.is_local() && advance_head(store, m.generation, bytes).is_err() {
            // The generation is published whatever happens here. A head that cannot be moved on
            // (the store unreachable after the object store's retries, or refusing conditional
            // updates) goes, so that readers list `index/` instead of answering from an older
            // generation; the next publication creates it again.
            let _ = store.delete(&layout::head_file());
        }
        return Ok(());
    }
    Err(Error::Conflict {
        store: store.name.clone(),
        msg: format!(
            "another consolidate or optimize published generation {} first; nothing was changed, run it again",
            m.generation
        ),
    })
}

/// The newest generation of an object store as its head manifest (`index/HEAD.json`) names
/// it, read when the store was opened: a cold reader's first query costs no listing of
/// `index/`. `None` (the caller lists `index/`): a local store, a store without a head (never
/// consolidated, or last consolidated before head manifests), a head read more than a second
/// ago or already taken, one older than a generation this process published or listed, or one
/// that does not parse (`pocaduck_check` reports it).
///
/// The head is replaced after each publication with a compare-and-swap that never moves it
/// back ([`advance_head`]; deleted if that fails), so it names the newest generation except
/// while a publisher is between publishing and replacing it, or after one died there or was an
/// older release: then any later publication moves it on, and [`repair_head`] (a consolidate
/// with nothing new, vacuum) puts it right; readers meanwhile answer from an older generation,
/// which is complete and which vacuum keeps until the head is repaired.
pub fn head(store: &Store) -> Option<(GenerationFile, Manifest)> {
    let (bytes, meta) = store.take_first_head()?;
    let m = Manifest::from_json(&bytes, &store.name, layout::head_file().as_ref()).ok()?;
    if m.generation == 0 || m.generation < seen(store).0 {
        return None;
    }
    note(store, m.generation, false);
    let g = GenerationFile {
        generation: m.generation,
        legacy: false,
        meta,
    };
    Some((g, m))
}

/// Makes the head manifest of an object store name generation `generation` (whose manifest is
/// `bytes`) unless it already names that one or a newer one: a compare-and-swap on the head's
/// version, retried while other publishers move it.
pub fn advance_head(store: &Store, generation: u64, bytes: Bytes) -> Result<()> {
    let head = layout::head_file();
    for _ in 0..1000 {
        let cur = store.get_versioned(&head)?;
        if cur
            .as_ref()
            .is_some_and(|(b, _)| named_generation(b) >= generation)
        {
            return Ok(());
        }
        if swap_head(store, cur.map(|c| c.1), bytes.clone())? {
            return Ok(());
        }
    }
    Err(Error::Conflict {
        store: store.name.clone(),
        msg: "could not replace index/HEAD.json after 1000 tries".into(),
    })
}

/// Writes the head manifest if it is still the version `was` (`None`: still absent); `false`
/// if another writer changed it first.
fn swap_head(store: &Store, was: Option<object_store::ObjectMeta>, bytes: Bytes) -> Result<bool> {
    let head = layout::head_file();
    match was {
        None => store.put_if_absent(&head, bytes),
        Some(was) => store.put_update(&head, bytes, &was),
    }
}

/// The generation a head manifest names (0 if it does not parse: any generation replaces it).
fn named_generation(bytes: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Probe {
        generation: u64,
    }
    serde_json::from_slice::<Probe>(bytes).map_or(0, |p| p.generation)
}

/// Makes an object store's head manifest a copy of the newest listed generation's manifest if
/// it is not (a publisher died between publishing and replacing it, or was a release before
/// head manifests; it names a generation the store does not hold; it is missing), then lists
/// again until no publication raced it. Local stores have no head.
pub fn repair_head(store: &Store) -> Result<()> {
    if store.is_local() {
        return Ok(());
    }
    store.drop_first_head();
    let head = layout::head_file();
    for _ in 0..100 {
        let Some(newest) = latest(store)?.filter(|g| !g.legacy) else {
            return Ok(());
        };
        let cur = store.get_versioned(&head)?;
        // The head is written with the manifest's own bytes: same generation, same size.
        if let Some((b, _)) = &cur {
            if named_generation(b) == newest.generation && b.len() as u64 == newest.meta.size {
                return Ok(());
            }
        }
        let bytes = store.get(&layout::manifest_file(newest.generation))?;
        swap_head(store, cur.map(|c| c.1), bytes)?;
    }
    Err(Error::Conflict {
        store: store.name.clone(),
        msg: "could not repair index/HEAD.json after 100 tries".into(),
    })
}

/// Per store: the newest generation this process has published or listed, and how many it
/// published.
type Seen = std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, (u64, u64)>>;

fn seen_map() -> &'static Seen {
    static S: std::sync::OnceLock<Seen> = std::sync::OnceLock::new();
    S.get_or_init(Default::default)
}

/// Records that this process published (`published`) or listed generation `g` of `store`.
fn note(store: &Store, g: u64, published: bool) {
    if let Ok(mut s) = seen_map().lock() {
        let e = s.entry(store.cache_key()).or_default();
        e.0 = e.0.max(g);
        e.1 += u64::from(published);
    }
}

/// The newest generation of `store` this process has published or listed (by any function),
/// and how many generations of it this process has published. A reader allowed to answer from
/// the generation it holds for a while (bounded staleness) uses this to see at once what its
/// own process published (also a store deleted and written again under the same name, whose
/// numbers start over) or saw (`pocaduck_stats` never shows a newer generation than the next
/// query reads).
pub fn seen(store: &Store) -> (u64, u64) {
    seen_map()
        .lock()
        .ok()
        .and_then(|s| s.get(&store.cache_key()).copied())
        .unwrap_or_default()
}

/// Publishes `bytes` as the first free file of a numbered sequence at or after `first`
/// (`file_of(n)` names number `n`): the protocol of commit segments. Returns the number taken.
pub fn create_numbered(
    store: &Store,
    first: u64,
    file_of: impl Fn(u64) -> Path,
    bytes: Bytes,
    what: &str,
) -> Result<u64> {
    for n in first..first + 1000 {
        if create(store, &file_of(n), bytes.clone())? {
            return Ok(n);
        }
    }
    Err(Error::Conflict {
        store: store.name.clone(),
        msg: format!("could not number {what} after 1000 tries"),
    })
}

/// [`create_numbered`] of a file that `write` produces, without holding it in memory on a local
/// store: it is written to a staging file beside number `first` (`<file>#<k>`, the name
/// `object_store`'s local uploads stage under, which listings skip), synced, then hard-linked to
/// the first free number (a link fails if the name exists: create-if-absent), and the staging
/// file removed. On object stores it is written to memory and created as [`create_numbered`]
/// does (a conditional PUT needs the whole body). `write` is called once.
pub fn create_numbered_streamed(
    store: &Store,
    first: u64,
    file_of: impl Fn(u64) -> Path,
    write: impl FnOnce(&mut (dyn std::io::Write + Send)) -> Result<()>,
    what: &str,
) -> Result<u64> {
    let Some(root) = &store.local_dir else {
        let mut buf = Vec::new();
        write(&mut buf)?;
        return create_numbered(store, first, file_of, Bytes::from(buf), what);
    };
    let dest = |n: u64| root.join(file_of(n).as_ref());
    let err = |n: u64, e: std::io::Error| {
        Error::file(
            &store.name,
            file_of(n).as_ref(),
            format!("cannot create {what}: {e}"),
        )
    };
    let (file, staging) = staged_file(&dest(first)).map_err(|e| err(first, e))?;
    let written = (|| {
        let mut w = std::io::BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| err(first, e.into_error()))?;
        file.sync_all().map_err(|e| err(first, e))
    })();
    let linked = written.and_then(|()| {
        for n in first..first + 1000 {
            match std::fs::hard_link(&staging, dest(n)) {
                Ok(()) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(n, e)),
            }
        }
        Err(Error::Conflict {
            store: store.name.clone(),
            msg: format!("could not number {what} after 1000 tries"),
        })
    });
    let _ = std::fs::remove_file(&staging);
    let n = linked?;
    store.sync(&[file_of(n)])?;
    Ok(n)
}

/// A new file `<dest>#<k>` (the first free `k`), creating `dest`'s directory if needed.
fn staged_file(dest: &std::path::Path) -> std::io::Result<(std::fs::File, std::path::PathBuf)> {
    for k in 1..10_000 {
        let mut p = dest.as_os_str().to_owned();
        p.push(format!("#{k}"));
        let p = std::path::PathBuf::from(p);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((f, p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d)?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free staging name"))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::OpenMode;

    /// A streamed create on a local store takes the first free number, holds exactly what was
    /// written, and leaves no staging file; a failed write publishes nothing and cleans up.
    #[test]
    fn streamed_creates_take_the_first_free_number_and_leave_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        let file_of = |n: u64| Path::from(format!("c/{n:03}.bin"));
        let names = || {
            let mut v: Vec<String> = std::fs::read_dir(dir.path().join("c"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        let data = |tag: &'static [u8]| {
            move |w: &mut (dyn std::io::Write + Send)| {
                w.write_all(tag).map_err(|e| Error::Internal(e.to_string()))
            }
        };
        assert_eq!(
            create_numbered_streamed(&store, 1, file_of, data(b"one"), "x").unwrap(),
            1
        );
        // Numbers 2 and 3 taken by others: the next create gets 4, starting from 2.
        assert!(create(&store, &file_of(2), Bytes::from_static(b"two")).unwrap());
        assert!(create(&store, &file_of(3), Bytes::from_static(b"three")).unwrap());
        assert_eq!(
            create_numbered_streamed(&store, 2, file_of, data(b"four"), "x").unwrap(),
            4
        );
        let failing = |w: &mut (dyn std::io::Write + Send)| {
            w.write_all(b"partial").unwrap();
            Err(Error::Internal("encoder failed".into()))
        };
        let e = create_numbered_streamed(&store, 5, file_of, failing, "x").unwrap_err();
        assert!(e.to_string().contains("encoder failed"), "{e}");
        assert_eq!(names(), ["001.bin", "002.bin", "003.bin", "004.bin"]);
        for (n, want) in [(1, &b"one"[..]), (2, b"two"), (3, b"three"), (4, b"four")] {
            assert_eq!(&store.get(&file_of(n)).unwrap()[..], want, "file {n}");
        }
    }

    /// A `.duckdb` file newer than the newest manifest (what plain DuckDB leaves behind when it
    /// `ATTACH`es a missing path in `index/`) is not a generation: readers and consolidate keep
    /// using the manifests. Before any manifest, `.duckdb` files are the generations.
    #[test]
    fn duckdb_files_after_the_upgrade_are_not_generations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        let idx = dir.path().join("index");
        std::fs::create_dir_all(&idx).unwrap();
        let touch = |n: &str| std::fs::write(idx.join(n), b"x").unwrap();
        touch("0000000001.duckdb");
        touch("0000000002.duckdb");
        let g = latest(&store).unwrap().unwrap();
        assert_eq!((g.generation, g.legacy), (2, true));
        touch("0000000003.json");
        touch("0000000009.duckdb");
        touch("0000000009.duckdb.wal");
        let g = latest(&store).unwrap().unwrap();
        assert_eq!((g.generation, g.legacy), (3, false));
        let g = latest_since(&store, 3).unwrap().unwrap();
        assert_eq!((g.generation, g.legacy), (3, false));
        let g = latest_since(&store, 2).unwrap().unwrap();
        assert_eq!((g.generation, g.legacy), (3, false));
        // The known generation gone (a rewritten store): None, the caller lists everything.
        assert!(latest_since(&store, 4).unwrap().is_none());
        let names: Vec<(u64, bool)> = all(&store)
            .unwrap()
            .iter()
            .map(|g| (g.generation, g.legacy))
            .collect();
        assert_eq!(names, vec![(1, true), (2, true), (3, false)]);
    }
}
