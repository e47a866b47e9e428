//! Reading: `pocaduck_points`, `pocaduck_labels`, `pocaduck_blocks`.
//!
//! A [`LoadedIndex`] is one generation of a store's index ready for queries: its manifest and an
//! [`IndexView`] over its segments (a label's entries are fetched per query from the one or few
//! segment row groups that hold it; segment footers are cached per process). It is cached per
//! process and per store and replaced by a newer generation once a query sees one (each query
//! lists new generation names, or, within `pocaduck_max_staleness` of the last listing, does
//! not: [`open_store`]), so a query pays at most one listing, the segment row groups of its
//! labels, and the pages holding its rows. Part footers (with the offset index) are cached per
//! process.
//!
//! Results stream: [`PointStream`] reads a label's entries in windows of at most
//! [`WINDOW_ROWS`] rows (the first window is smaller, so `LIMIT` queries return early), with at
//! most [`PARTS_IN_FLIGHT`] part reads at a time (bounded open files and requests).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;

use crate::error::{Error, Result};
use crate::index::{BlockId, IndexCodec, UnifiedEntry};
use crate::log;
use crate::schema::StoreSchema;
use crate::segment::IndexView;
use crate::storage::{block_on, OpenMode, StorageOptions, Store};

/// Most rows a [`PointStream`] reads at once.
pub const WINDOW_ROWS: u64 = 1 << 20;

/// Rows of a stream's first window.
const FIRST_WINDOW_ROWS: u64 = 1 << 16;

/// Most part files read at once by one query.
pub const PARTS_IN_FLIGHT: usize = 16;

/// An axis-aligned box, inclusive: min x, y, z, max x, y, z.
pub type BBox = [f64; 6];

fn overlaps(a: &BBox, b: &BBox) -> bool {
    (0..3).all(|d| a[d] <= b[d + 3] && b[d] <= a[d + 3])
}

/// What a read touched (for `pocaduck_explain`): counted from the plan and the page index.
#[derive(Debug, Default)]
pub struct ReadTrace {
    /// Part files read.
    pub parts: AtomicU64,
    /// Row groups read.
    pub row_groups: AtomicU64,
    /// Data pages read (all projected columns), per the offset index.
    pub pages: AtomicU64,
    /// Compressed bytes of those pages.
    pub page_bytes: AtomicU64,
    /// Rows selected.
    pub rows: AtomicU64,
}

impl ReadTrace {
    fn record(
        &self,
        md: &parquet::file::metadata::ParquetMetaData,
        rg_start: &[u64],
        groups: &[usize],
        ranges: &[(u64, u64)],
        cols: &[usize],
    ) {
        self.parts.fetch_add(1, Relaxed);
        self.row_groups.fetch_add(groups.len() as u64, Relaxed);
        self.rows
            .fetch_add(ranges.iter().map(|r| r.1).sum::<u64>(), Relaxed);
        let Some(oi) = md.offset_index() else {
            return;
        };
        let leaves = md.file_metadata().schema_descr().num_columns();
        for &g in groups {
            let (gs, ge) = (rg_start[g], rg_start[g + 1]);
            for &c in cols.iter().filter(|&&c| c < leaves) {
                let locs = oi[g][c].page_locations();
                for (k, loc) in locs.iter().enumerate() {
                    let ps = gs + loc.first_row_index as u64;
                    let pe = locs
                        .get(k + 1)
                        .map(|n| gs + n.first_row_index as u64)
                        .unwrap_or(ge);
                    if ranges.iter().any(|&(s, n)| s < pe && s + n > ps) {
                        self.pages.fetch_add(1, Relaxed);
                        self.page_bytes
                            .fetch_add(loc.compressed_page_size as u64, Relaxed);
                    }
                }
            }
        }
    }
}

/// One generation of a store's index, ready to answer queries.
pub struct LoadedIndex {
    /// The store.
    pub store: Store,
    /// Generation loaded.
    pub generation: u64,
    /// Size and modification time of the generation's file: a store deleted and rebuilt to the
    /// same generation number is not mistaken for the cached one.
    stamp: (u64, i64),
    /// Loaded from the store's head manifest: `stamp` is the head's, whose size (the same bytes)
    /// but not its time or ETag is the manifest's.
    from_head: bool,
    /// The store schema.
    pub schema: StoreSchema,
    /// The index of this generation.
    pub view: Arc<IndexView>,
}

/// A loaded generation, when the store was last checked for a newer one, and how many
/// generations this process had published then ([`log::seen`]).
type Cached = (Arc<LoadedIndex>, Instant, u64);

/// Loaded generations per (store, options): a connection never reads through a client opened
/// with another connection's options.
type IndexCache = Mutex<HashMap<(std::path::PathBuf, Arc<StorageOptions>), Cached>>;

fn cache() -> &'static IndexCache {
    static C: OnceLock<IndexCache> = OnceLock::new();
    C.get_or_init(Default::default)
}

fn no_index(store: &Store) -> Result<Error> {
    crate::writer::require_store(store, false)?;
    Ok(Error::store(
        &store.name,
        format!(
            "has no unified index yet: commit the workers' writes, then run pocaduck_consolidate('{}')",
            store.name
        ),
    ))
}

/// How old a process's view of an index may be when `SET pocaduck_max_staleness` is `'auto'`:
/// none for a local store (checking is a directory listing), one second for an object store
/// (checking is a LIST request, as much as the rest of a warm lookup).
pub fn default_max_staleness(store: &Store) -> Duration {
    match store.local_dir {
        Some(_) => Duration::ZERO,
        None => Duration::from_secs(1),
    }
}

/// Opens the current index generation of `store_name`, from the process cache when it is
/// current. `codec` reads format-1 generations.
pub fn open(store_name: &str, codec: &dyn IndexCodec) -> Result<Arc<LoadedIndex>> {
    open_store(
        Store::open(store_name, OpenMode::Read)?,
        codec,
        Duration::ZERO,
    )
}

/// Whether this process has neither published a generation of `index`'s store since it had
/// published `published` of them, nor listed one newer than `index` ([`log::seen`]).
pub fn nothing_newer_here(index: &LoadedIndex, published: u64) -> bool {
    let (newest, now_published) = log::seen(&index.store);
    now_published == published && index.generation >= newest
}

/// [`open`] for a store already opened (with the caller's storage options). The generation
/// this process holds is used without checking the store when it was checked less than
/// `max_staleness` ago and this process has neither published a generation since nor listed a
/// newer one (bounded staleness: another process's generation is seen at most `max_staleness`
/// late; zero checks every time).
pub fn open_store(
    store: Store,
    codec: &dyn IndexCodec,
    max_staleness: Duration,
) -> Result<Arc<LoadedIndex>> {
    let key = store.client_key();
    let hit = cache().lock().ok().and_then(|c| c.get(&key).cloned());
    // Read before the listing: a generation this process publishes meanwhile is checked for
    // by the next query.
    let checked = (Instant::now(), log::seen(&store).1);
    if let Some((h, at, published)) = &hit {
        if !max_staleness.is_zero()
            && checked.0.saturating_duration_since(*at) < max_staleness
            && nothing_newer_here(h, *published)
        {
            return Ok(h.clone());
        }
    }
    let hit = hit.map(|(h, _, _)| h);
    let mut from_head = None;
    let latest = match &hit {
        // Only names from the cached generation on are listed.
        Some(h) => match log::latest_since(&store, h.generation)? {
            Some(g) => Some(g),
            None => log::latest(&store)?,
        },
        // Strict freshness lists.
        None if max_staleness.is_zero() => {
            store.drop_first_head();
            log::latest(&store)?
        }
        // A cold reader of an object store: the head manifest read at opening, if any.
        None => match log::head(&store) {
            Some((g, m)) => {
                from_head = Some(m);
                Some(g)
            }
            None => log::latest(&store)?,
        },
    };
    let Some(g) = latest else {
        return Err(no_index(&store)?);
    };
    let stamp = crate::storage::object_stamp(&g.meta);
    if let Some(hit) = hit {
        // What was loaded from the head is the listed manifest if its size is.
        let same = hit.stamp == stamp || (hit.from_head && hit.stamp.0 == stamp.0);
        if hit.generation == g.generation && same {
            let now = match hit.from_head {
                false => hit.clone(),
                true => Arc::new(LoadedIndex {
                    store: hit.store.clone(),
                    generation: hit.generation,
                    stamp,
                    from_head: false,
                    schema: hit.schema.clone(),
                    view: hit.view.clone(),
                }),
            };
            if let Ok(mut c) = cache().lock() {
                if let Some(e) = c.get_mut(&key).filter(|e| Arc::ptr_eq(&e.0, &hit)) {
                    *e = (now.clone(), checked.0, checked.1);
                }
            }
            return Ok(now);
        }
    }
    let head = from_head.is_some();
    let gen = match from_head {
        Some(manifest) => log::Generation {
            manifest,
            legacy: None,
        },
        None => log::load(&store, &g, codec)?,
    };
    let loaded = Arc::new(LoadedIndex {
        generation: g.generation,
        stamp,
        from_head: head,
        schema: gen.manifest.schema.clone(),
        view: Arc::new(IndexView::new(store.clone(), gen)),
        store,
    });
    if let Ok(mut c) = cache().lock() {
        // One entry per location: the latest options' (rotating credentials must not keep
        // an index per token).
        c.retain(|k, _| k.0 != key.0);
        c.insert(key, (loaded.clone(), checked.0, checked.1));
    }
    Ok(loaded)
}

/// Generation `generation` of `store` (time travel): read while the store still holds it (see
/// [`crate::vacuum`]); a generation it no longer holds, or never did, is an error naming it and
/// the generations it holds. Each call lists `index/` (a vacuumed generation must never be
/// answered from this process's cache); the loaded generation is cached.
pub fn open_generation(
    store: Store,
    codec: &dyn IndexCodec,
    generation: u64,
) -> Result<Arc<LoadedIndex>> {
    let Some(g) = log::find(&store, generation)? else {
        return Err(no_index(&store)?);
    };
    let stamp = crate::storage::object_stamp(&g.meta);
    let key = (store.client_key(), generation);
    if let Some(hit) = past_cache().lock().ok().and_then(|c| c.get(&key)) {
        if hit.stamp == stamp {
            return Ok(hit);
        }
    }
    let gen = log::load(&store, &g, codec)?;
    let loaded = Arc::new(LoadedIndex {
        generation,
        stamp,
        from_head: false,
        schema: gen.manifest.schema.clone(),
        view: Arc::new(IndexView::new(store.clone(), gen)),
        store,
    });
    if let Ok(mut c) = past_cache().lock() {
        c.insert(key, loaded.clone());
    }
    Ok(loaded)
}

/// Generations opened by [`open_generation`], per (store, generation).
type PastCache = Mutex<
    crate::cache::FifoCache<((std::path::PathBuf, Arc<StorageOptions>), u64), Arc<LoadedIndex>>,
>;

fn past_cache() -> &'static PastCache {
    static C: OnceLock<PastCache> = OnceLock::new();
    C.get_or_init(|| Mutex::new(crate::cache::FifoCache::new(16)))
}

/// Where rows of a query are, in output order.
#[derive(Clone, Debug)]
struct ReadEntry {
    part: Arc<str>,
    row_start: u64,
    row_count: u64,
}

/// Part footers per (store, part).
type PartCache = Mutex<
    crate::cache::FifoCache<(std::path::PathBuf, Arc<str>), (ArrowReaderMetadata, Option<u64>)>,
>;

fn part_cache() -> &'static PartCache {
    static C: OnceLock<PartCache> = OnceLock::new();
    C.get_or_init(|| Mutex::new(crate::cache::FifoCache::new(PART_CACHE)))
}

/// Part footers kept per process; beyond this the oldest go.
const PART_CACHE: usize = 4096;

impl LoadedIndex {
    /// The entries of `label` (superseded entries dropped), in index order.
    pub fn entries(&self, label: u64) -> Result<Vec<UnifiedEntry>> {
        self.view.entries(label)
    }

    /// (label, points, blocks) of every label, in label order, streamed over the segments.
    pub fn label_stats(&self) -> impl Iterator<Item = Result<(u64, u64, u64)>> + Send + 'static {
        self.view.scan_shared().map(|r| {
            r.map(|(l, v)| {
                let points = v.iter().map(|e| e.entry.row_count).sum();
                (l, points, blocks_of(&v).len() as u64)
            })
        })
    }

    /// (block, points) of one label, in block order. Empty for an unknown label.
    pub fn blocks(&self, label: u64) -> Result<Vec<(BlockId, u64)>> {
        let found = self.view.lookup(&[label], false)?;
        Ok(found.first().map(|x| blocks_of(&x.1)).unwrap_or_default())
    }

    /// Number of points of each label of `labels` (0 if unknown), from the index alone.
    pub fn point_count(&self, labels: &[u64]) -> Result<u64> {
        Ok(self
            .view
            .lookup(labels, false)?
            .iter()
            .flat_map(|x| x.1.iter())
            .map(|e| e.entry.row_count)
            .sum())
    }

    /// Rows and Arrow schema of `part`, from its footer read afresh (for `pocaduck_check`: the
    /// process cache is refreshed with it).
    pub(crate) fn part_info(&self, part: &str) -> Result<(u64, arrow::datatypes::SchemaRef)> {
        let part: Arc<str> = Arc::from(part);
        if let Ok(mut c) = part_cache().lock() {
            c.remove(&(self.store.cache_key(), part.clone()));
        }
        let (meta, _) = block_on(part_meta(&self.store, &part))?;
        Ok((
            meta.metadata().file_metadata().num_rows() as u64,
            meta.schema().clone(),
        ))
    }

    /// Reads the rows of `labels`, returning the part-file columns `cols` (0 = label, 1 = block,
    /// 2.. = x, y, z, attributes) in that order, as one vector of batches.
    pub fn points(&self, labels: &[u64], cols: &[usize]) -> Result<Vec<RecordBatch>> {
        ScanRequest::labels(labels.to_vec())
            .columns(cols.to_vec())
            .collect(self)
    }

    /// Reads the rows of `entries` (in that order), returning the part-file columns `cols`.
    pub(crate) fn read_entry_rows<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a UnifiedEntry>,
        cols: &[usize],
    ) -> Result<Vec<RecordBatch>> {
        // Part names interned: entries of a few parts share one string each.
        let mut parts: HashMap<&str, Arc<str>> = HashMap::new();
        let es = entries
            .into_iter()
            .map(|e| ReadEntry {
                part: parts
                    .entry(e.entry.part.as_str())
                    .or_insert_with(|| Arc::from(e.entry.part.as_str()))
                    .clone(),
                row_start: e.entry.row_start,
                row_count: e.entry.row_count,
            })
            .collect();
        let schema = self.projected(cols);
        block_on(read_window(&self.store, es, cols, &schema, None))
    }

    /// A generation loaded by the caller (not cached).
    pub fn from_generation(store: Store, gen: log::Generation) -> LoadedIndex {
        LoadedIndex::from_view(IndexView::new(store, gen))
    }

    /// A generation's view prepared by the caller (not cached).
    pub fn from_view(view: IndexView) -> LoadedIndex {
        LoadedIndex {
            generation: view.manifest.generation,
            stamp: (0, 0),
            from_head: false,
            schema: view.manifest.schema.clone(),
            store: view.store.clone(),
            view: Arc::new(view),
        }
    }

    /// Schema of the part-file columns `cols`.
    pub(crate) fn projected(&self, cols: &[usize]) -> arrow::datatypes::SchemaRef {
        Arc::new(arrow::datatypes::Schema::new(
            cols.iter()
                .map(|&c| self.schema.arrow().field(c).clone())
                .collect::<Vec<_>>(),
        ))
    }
}

fn blocks_of(v: &[UnifiedEntry]) -> Vec<(BlockId, u64)> {
    let mut out: Vec<(BlockId, u64)> = Vec::new();
    for e in v {
        match out.last_mut() {
            Some(l) if l.0 == e.entry.block => l.1 += e.entry.row_count,
            _ => out.push((e.entry.block.clone(), e.entry.row_count)),
        }
    }
    out
}

/// What to read: labels (or every label), an optional box, the columns, an optional trace.
#[derive(Clone, Default)]
pub struct ScanRequest {
    labels: Option<Vec<u64>>,
    bbox: Option<BBox>,
    cols: Vec<usize>,
    trace: Option<Arc<ReadTrace>>,
}

impl ScanRequest {
    /// The points of `labels` (each label once, whatever the repeats).
    pub fn labels(labels: Vec<u64>) -> ScanRequest {
        ScanRequest {
            labels: Some(labels),
            ..Default::default()
        }
    }

    /// The points of every label (with a box: the points inside it).
    pub fn all() -> ScanRequest {
        ScanRequest::default()
    }

    /// Only points whose x, y, z lie inside `bbox` (inclusive). Entries whose (label, block)
    /// bounds miss the box are skipped without reading; the rows of the others are filtered
    /// exactly.
    pub fn bbox(mut self, bbox: Option<BBox>) -> ScanRequest {
        self.bbox = bbox;
        self
    }

    /// The part-file columns to return (0 = label, 1 = block, 2.. = x, y, z, attributes), in
    /// that order.
    pub fn columns(mut self, cols: Vec<usize>) -> ScanRequest {
        self.cols = cols;
        self
    }

    /// Records what the read touched.
    pub fn trace(mut self, trace: Arc<ReadTrace>) -> ScanRequest {
        self.trace = Some(trace);
        self
    }

    /// Plans the read: finds the entries (index reads happen here) and returns a stream.
    pub fn stream(self, index: &LoadedIndex) -> Result<PointStream> {
        let keep = |e: &UnifiedEntry| self.bbox.is_none_or(|b| overlaps(&b, &e.entry.bbox));
        let mut entries: Vec<ReadEntry> = Vec::new();
        let mut parts: HashMap<String, Arc<str>> = HashMap::new();
        let mut add = |e: UnifiedEntry| {
            let part = parts
                .entry(e.entry.part.clone())
                .or_insert_with(|| Arc::from(e.entry.part.as_str()))
                .clone();
            entries.push(ReadEntry {
                part,
                row_start: e.entry.row_start,
                row_count: e.entry.row_count,
            });
        };
        match &self.labels {
            Some(labels) => {
                for (_, v) in index.view.lookup(labels, self.bbox.is_some())? {
                    v.into_iter().filter(|e| keep(e)).for_each(&mut add);
                }
            }
            None => {
                for r in index.view.scan() {
                    r?.1.into_iter().filter(|e| keep(e)).for_each(&mut add);
                }
            }
        }
        // The box filter needs x, y, z: read them after the requested columns.
        let mut cols = self.cols.clone();
        if self.bbox.is_some() {
            cols.extend(crate::schema::col::XYZ);
        }
        let schema = index.projected(&cols);
        let out_schema = index.projected(&self.cols);
        Ok(PointStream {
            store: index.store.clone(),
            entries: entries.into(),
            cols,
            keep: self.cols.len(),
            schema,
            out_schema,
            bbox: self.bbox,
            trace: self.trace,
            window: FIRST_WINDOW_ROWS,
            ready: VecDeque::new(),
        })
    }

    /// Reads everything into memory (for callers that want all of it).
    pub fn collect(self, index: &LoadedIndex) -> Result<Vec<RecordBatch>> {
        self.stream(index)?.collect()
    }
}

/// Rows of a query, read window by window; see [`ScanRequest::stream`].
pub struct PointStream {
    store: Store,
    entries: VecDeque<ReadEntry>,
    cols: Vec<usize>,
    keep: usize,
    schema: arrow::datatypes::SchemaRef,
    out_schema: arrow::datatypes::SchemaRef,
    bbox: Option<BBox>,
    trace: Option<Arc<ReadTrace>>,
    window: u64,
    ready: VecDeque<RecordBatch>,
}

impl PointStream {
    /// Schema of the batches returned.
    pub fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.out_schema.clone()
    }

    /// Plans the next window: takes its entries (none left: `None`).
    fn plan_window(&mut self) -> Option<Window> {
        if self.entries.is_empty() {
            return None;
        }
        let mut rows = 0;
        let mut take = Vec::new();
        let mut parts = std::collections::HashSet::new();
        while let Some(e) = self.entries.front_mut() {
            if rows >= self.window || parts.len() >= 4 * PARTS_IN_FLIGHT {
                break;
            }
            // An entry larger than what the window has left is split (row ranges split freely).
            let room = self.window - rows;
            if e.row_count > room {
                take.push(ReadEntry {
                    row_count: room,
                    ..e.clone()
                });
                e.row_start += room;
                e.row_count -= room;
                break;
            }
            rows += e.row_count;
            parts.insert(e.part.clone());
            take.extend(self.entries.pop_front());
        }
        self.window = (self.window * 4).min(WINDOW_ROWS);
        Some(Window {
            store: self.store.clone(),
            entries: take,
            cols: self.cols.clone(),
            keep: self.keep,
            schema: self.schema.clone(),
            bbox: self.bbox,
            trace: self.trace.clone(),
        })
    }

    fn next_window(&mut self) -> Result<()> {
        if let Some(w) = self.plan_window() {
            self.ready.extend(w.read()?);
        }
        Ok(())
    }

    /// Rows not yet planned into a window (before any box filter).
    pub fn rows_left(&self) -> u64 {
        self.entries.iter().map(|e| e.row_count).sum()
    }

    /// Shares the stream between threads: see [`SharedPoints`].
    pub fn shared(self) -> SharedPoints {
        SharedPoints(Mutex::new(self))
    }
}

impl Iterator for PointStream {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        while self.ready.is_empty() && !self.entries.is_empty() {
            if let Err(e) = self.next_window() {
                self.entries.clear();
                return Some(Err(e));
            }
        }
        self.ready.pop_front().map(Ok)
    }
}

/// A planned window of a [`PointStream`]: entries to read, and how.
struct Window {
    store: Store,
    entries: Vec<ReadEntry>,
    cols: Vec<usize>,
    keep: usize,
    schema: arrow::datatypes::SchemaRef,
    bbox: Option<BBox>,
    trace: Option<Arc<ReadTrace>>,
}

impl Window {
    /// Reads and decodes the window (box-filtered, empty batches dropped).
    fn read(self) -> Result<Vec<RecordBatch>> {
        let batches = block_on(read_window(
            &self.store,
            self.entries,
            &self.cols,
            &self.schema,
            self.trace.as_deref(),
        ))?;
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            let b = match self.bbox {
                Some(bx) => filter_box(&b, &bx, self.keep)?,
                None => b,
            };
            if b.num_rows() > 0 {
                out.push(b);
            }
        }
        Ok(out)
    }
}

/// A [`PointStream`] that several threads read at once: each call plans the next window under a
/// lock and reads it outside, so windows decode in parallel (rows come out in no fixed order
/// across windows). Memory: at most one window per reading thread.
pub struct SharedPoints(Mutex<PointStream>);

impl SharedPoints {
    /// The next window's batches (`None`: every window has been taken).
    pub fn next_window(&self) -> Option<Result<Vec<RecordBatch>>> {
        let w = match self.0.lock() {
            Ok(mut s) => s.plan_window()?,
            Err(_) => return Some(Err(Error::Internal("point stream lock poisoned".into()))),
        };
        Some(w.read())
    }
}

/// Reads `entries` (rows of parts), returning their rows in entry order as batches of the
/// projected `schema`. Parts are read concurrently, at most [`PARTS_IN_FLIGHT`] at a time.
async fn read_window(
    store: &Store,
    entries: Vec<ReadEntry>,
    cols: &[usize],
    schema: &arrow::datatypes::SchemaRef,
    trace: Option<&ReadTrace>,
) -> Result<Vec<RecordBatch>> {
    // Part names as dense ids (entries share the `Arc`s of a few parts).
    let mut parts: Vec<Arc<str>> = Vec::new();
    let mut ids: HashMap<Arc<str>, u32> = HashMap::new();
    let part: Vec<u32> = entries
        .iter()
        .map(|e| {
            *ids.entry(e.part.clone()).or_insert_with(|| {
                parts.push(e.part.clone());
                parts.len() as u32 - 1
            })
        })
        .collect();
    let start: Vec<u64> = entries.iter().map(|e| e.row_start).collect();
    let count: Vec<u64> = entries.iter().map(|e| e.row_count).collect();
    let ranges = RowRanges {
        parts: &parts,
        part: &part,
        start: &start,
        count: &count,
    };
    gather_rows(store, ranges, cols, schema, trace, false).await
}

/// A spawned task, aborted when dropped (a gather that failed, or was dropped, stops the reads
/// it started; aborting a task that ended does nothing).
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Row ranges of parts, as columns: range `i` is rows `start[i] .. start[i] + count[i]` of
/// part `parts[part[i]]`.
pub(crate) struct RowRanges<'a> {
    /// Part paths by id.
    pub parts: &'a [Arc<str>],
    /// Part id of each range.
    pub part: &'a [u32],
    /// First row of each range.
    pub start: &'a [u64],
    /// Rows of each range.
    pub count: &'a [u64],
}

/// Reads `ranges`, returning their rows in range order as batches of the projected `schema`:
/// one row selection per part (each page decoded once), parts read concurrently, at most
/// [`PARTS_IN_FLIGHT`] at a time; then zero-copy slices when ranges are long, one `take` per
/// column when they are short. With `spread` (and no `trace`), parts are decoded on the
/// runtime's threads, in parallel with each other (optimize); else on the calling thread (a
/// query's own threads decode in parallel already).
pub(crate) async fn gather_rows(
    store: &Store,
    ranges: RowRanges<'_>,
    cols: &[usize],
    schema: &arrow::datatypes::SchemaRef,
    trace: Option<&ReadTrace>,
    spread: bool,
) -> Result<Vec<RecordBatch>> {
    let RowRanges {
        parts,
        part,
        start,
        count,
    } = ranges;
    let n = part.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    // Ranges grouped by part (a counting sort; parts in first-use order), each group in row
    // order; `off[i]`: where range i's rows land in its part's output.
    let mut slot = vec![u32::MAX; parts.len()];
    let mut used: Vec<u32> = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    for &p in part {
        let s = &mut slot[p as usize];
        if *s == u32::MAX {
            *s = used.len() as u32;
            used.push(p);
            sizes.push(0);
        }
        sizes[*s as usize] += 1;
    }
    let mut first: Vec<usize> = Vec::with_capacity(used.len() + 1);
    let mut acc = 0;
    for &z in &sizes {
        first.push(acc);
        acc += z;
    }
    first.push(acc);
    let mut fill = first.clone();
    let mut by_part = vec![0u32; n];
    for (i, &p) in part.iter().enumerate() {
        let s = slot[p as usize] as usize;
        by_part[fill[s]] = i as u32;
        fill[s] += 1;
    }
    let mut off = vec![0usize; n];
    let mut jobs = Vec::with_capacity(used.len());
    let mut sorted: Vec<(u64, u32)> = Vec::new();
    for (k, &p) in used.iter().enumerate() {
        let g = &by_part[first[k]..first[k + 1]];
        sorted.clear();
        sorted.extend(g.iter().map(|&i| (start[i as usize], i)));
        if !sorted.windows(2).all(|w| w[0].0 <= w[1].0) {
            // Stable and run-adaptive: a part of several sorted flushes is a few runs.
            sorted.sort_by_key(|x| x.0);
        }
        let mut merged: Vec<(u64, u64)> = Vec::new();
        let mut o = 0usize;
        for &(s, i) in &sorted {
            let c = count[i as usize];
            match merged.last_mut() {
                Some(last) if last.0 + last.1 > s => {
                    return Err(Error::file(
                        &store.name,
                        parts[p as usize].as_ref(),
                        format!(
                            "the index references overlapping rows {}..{} and {s}..{}",
                            last.0,
                            last.0 + last.1,
                            s + c
                        ),
                    ));
                }
                Some(last) if last.0 + last.1 == s => last.1 += c,
                _ => merged.push((s, c)),
            }
            off[i as usize] = o;
            o += c as usize;
        }
        jobs.push((parts[p as usize].clone(), merged));
    }
    let per_part: Vec<Vec<RecordBatch>> = match spread && trace.is_none() && jobs.len() > 1 {
        // Each part decoded by a task of the runtime's threads (spawned when its turn comes).
        true => {
            let spawned = jobs.into_iter().map(|(part, merged)| {
                let (store, cols) = (store.clone(), cols.to_vec());
                async move {
                    let name = part.clone();
                    let mut task =
                        Aborting(crate::storage::runtime().spawn(async move {
                            read_part(&store, part, merged, &cols, None).await
                        }));
                    (&mut task.0).await.map_err(|e| {
                        Error::Internal(format!("the read of part '{name}' failed: {e}"))
                    })?
                }
            });
            futures::stream::iter(spawned)
                .buffered(PARTS_IN_FLIGHT)
                .try_collect()
                .await?
        }
        false => {
            let here = jobs
                .into_iter()
                .map(|(part, merged)| read_part(store, part, merged, cols, trace));
            futures::stream::iter(here)
                .buffered(PARTS_IN_FLIGHT)
                .try_collect()
                .await?
        }
    };
    let total: usize = count.iter().map(|&c| c as usize).sum();
    let flat_strings: usize = per_part
        .iter()
        .flatten()
        .map(crate::bounded::string_bytes)
        .sum();
    if n * 1024 > total {
        // Many small ranges: all rows in one batch, then one gather per column — or, when they
        // hold more strings than one batch can, gathered from the decoded batches into batches
        // of bounded string bytes.
        let flat: Vec<RecordBatch> = per_part.into_iter().flatten().collect();
        let mut base = vec![0usize; used.len()];
        let mut acc = 0;
        for k in 0..used.len() {
            base[k] = acc;
            let g = &by_part[first[k]..first[k + 1]];
            acc += g.iter().map(|&i| count[i as usize] as usize).sum::<usize>();
        }
        // Range i's rows in `flat` (concatenated).
        let rows_of = |i: usize| {
            let from = base[slot[part[i] as usize] as usize] + off[i];
            from..from + count[i] as usize
        };
        if flat_strings > crate::bounded::STRING_BYTES {
            let mut loc: Vec<(usize, usize)> = Vec::with_capacity(total);
            for (bi, b) in flat.iter().enumerate() {
                loc.extend((0..b.num_rows()).map(|r| (bi, r)));
            }
            let mut pairs: Vec<(usize, usize)> = Vec::with_capacity(total);
            for i in 0..n {
                pairs.extend_from_slice(&loc[rows_of(i)]);
            }
            let refs: Vec<&RecordBatch> = flat.iter().collect();
            return crate::bounded::interleave(&refs, &pairs, 8192, crate::bounded::STRING_BYTES);
        }
        let all = arrow::compute::concat_batches(schema, &flat)?;
        drop(flat);
        let mut idx: Vec<u32> = Vec::with_capacity(total);
        for i in 0..n {
            let r = rows_of(i);
            idx.extend(r.start as u32..r.end as u32);
        }
        if idx.iter().enumerate().all(|(k, &x)| k == x as usize) {
            return Ok(vec![all]);
        }
        return Ok(vec![arrow::compute::take_record_batch(
            &all,
            &arrow::array::UInt32Array::from(idx),
        )?]);
    }
    // Long ranges: zero-copy slices of the decoded batches; runs of small slices are gathered
    // into one batch (DuckDB takes chunks of up to 2,048 rows).
    let starts: Vec<Vec<usize>> = per_part
        .iter()
        .map(|bs| {
            let mut acc = 0;
            let mut v: Vec<usize> = bs
                .iter()
                .map(|b| {
                    let s = acc;
                    acc += b.num_rows();
                    s
                })
                .collect();
            v.push(acc);
            v
        })
        .collect();
    let mut out: Vec<RecordBatch> = Vec::new();
    let mut small: Vec<RecordBatch> = Vec::new();
    let mut small_rows = 0;
    let flush = |small: &mut Vec<RecordBatch>, out: &mut Vec<RecordBatch>| -> Result<()> {
        out.extend(crate::bounded::concat(
            schema,
            std::mem::take(small),
            crate::bounded::STRING_BYTES,
        )?);
        Ok(())
    };
    for i in 0..n {
        let k = slot[part[i] as usize] as usize;
        let (bs, st) = (&per_part[k], &starts[k]);
        let (mut pos, end) = (off[i], off[i] + count[i] as usize);
        let mut j = st.partition_point(|&x| x <= pos).saturating_sub(1);
        while pos < end {
            let (b0, b1) = (st[j], st[j + 1]);
            let take = end.min(b1) - pos;
            let piece = bs[j].slice(pos - b0, take);
            if take >= 2048 {
                flush(&mut small, &mut out)?;
                small_rows = 0;
                out.push(piece);
            } else {
                small_rows += take;
                small.push(piece);
                if small_rows >= 8192 {
                    flush(&mut small, &mut out)?;
                    small_rows = 0;
                }
            }
            pos += take;
            j += 1;
        }
    }
    flush(&mut small, &mut out)?;
    Ok(out)
}

/// A part's metadata (with its offset index) and its size.
async fn part_meta(store: &Store, part: &Arc<str>) -> Result<(ArrowReaderMetadata, Option<u64>)> {
    let key = (store.cache_key(), part.clone());
    if let Some(m) = part_cache().lock().ok().and_then(|c| c.get(&key)) {
        return Ok(m);
    }
    let path = Path::from(part.as_ref());
    let err = |e: &dyn std::fmt::Display| Error::file(&store.name, part.as_ref(), e);
    // One suffix request fetches the footer and the page index, and tells the size (no HEAD;
    // Azure serves no suffix ranges and gets a HEAD first); a second one only if they are
    // larger than the first fetch. 128 KiB holds the offset index of ~2,500 pages per column
    // of five columns (a 10^7-row optimized part of 1-point labels needs 66 KB).
    let (md, size) = crate::footer::load(store, &path, None, 128 << 10, true, "").await?;
    let opts = ArrowReaderOptions::new()
        .with_offset_index_policy(parquet::file::metadata::PageIndexPolicy::Optional);
    let meta = crate::footer::arrow_metadata(md, opts).map_err(|e| err(&e))?;
    let size = Some(size);
    if let Ok(mut c) = part_cache().lock() {
        c.insert(key, (meta.clone(), size));
    }
    Ok((meta, size))
}

async fn read_part(
    store: &Store,
    part: Arc<str>,
    mut ranges: Vec<(u64, u64)>,
    cols: &[usize],
    trace: Option<&ReadTrace>,
) -> Result<Vec<RecordBatch>> {
    let (meta, size) = part_meta(store, &part).await?;
    let err = |e: &dyn std::fmt::Display| Error::file(&store.name, part.as_ref(), e);
    ranges.sort_unstable();
    // Row groups touched, and the selection relative to them.
    let md = meta.metadata();
    let mut rg_start = Vec::with_capacity(md.num_row_groups() + 1);
    let mut acc = 0u64;
    for rg in md.row_groups() {
        rg_start.push(acc);
        acc += rg.num_rows() as u64;
    }
    rg_start.push(acc);
    if let Some(&(s, n)) = ranges.last() {
        if s + n > acc {
            return Err(err(&format!(
                "index references rows {s}..{} but the part has {acc} rows",
                s + n
            )));
        }
    }
    let (groups, selectors) = plan_selection(&rg_start, &ranges);
    if let Some(t) = trace {
        t.record(md, &rg_start, &groups, &ranges, cols);
    }
    let mut sorted_cols: Vec<usize> = cols.to_vec();
    sorted_cols.sort_unstable();
    sorted_cols.dedup();
    let mask = ProjectionMask::roots(
        md.file_metadata().schema_descr(),
        sorted_cols.iter().copied(),
    );
    // Batches of 8,192 rows; when the strings of that many rows pass what one Arrow string
    // array holds (2 GiB: parquet-rs reports an offset overflow), read again with fewer rows
    // per batch.
    let mut batch_rows = 8192;
    let batches: Vec<RecordBatch> = loop {
        let reader = store.parquet_reader(&Path::from(part.as_ref()), size);
        let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta.clone())
            .with_row_groups(groups.clone())
            .with_row_selection(RowSelection::from(selectors.clone()))
            .with_projection(mask.clone())
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| err(&e))?;
        // The Parquet decoder can panic on corrupt pages: report that as this file's error.
        let got = match AssertUnwindSafe(stream.try_collect::<Vec<_>>())
            .catch_unwind()
            .await
        {
            Ok(Ok(b)) => break b,
            Ok(Err(e)) => e.to_string(),
            Err(p) => panic_message(p),
        };
        // parquet-rs's error (or, decoding a dictionary, panic) for a string array past 2 GiB.
        if batch_rows > 1 && got.contains("index overflow decoding byte array") {
            batch_rows = (batch_rows / 16).max(1);
            continue;
        }
        return Err(err(&got));
    };
    let order: Vec<usize> = cols
        .iter()
        .map(|c| sorted_cols.binary_search(c).unwrap_or(0))
        .collect();
    batches
        .into_iter()
        .map(|b| Ok(b.project(&order)?))
        .collect()
}

/// Describes a panic caught while decoding a file (a corrupt file can make the decoder panic).
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let m = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("corrupt file: the Parquet decoder failed ({m})")
}

/// Keeps the rows of `batch` whose last three columns (x, y, z) lie in `b`, and its first `keep`
/// columns.
fn filter_box(batch: &RecordBatch, b: &BBox, keep: usize) -> Result<RecordBatch> {
    use arrow::array::{AsArray, BooleanArray};
    use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
    let n = batch.num_columns();
    let mut mask = vec![true; batch.num_rows()];
    for d in 0..3 {
        let col = batch.column(n - 3 + d);
        // Integer coordinates are compared as integers (a 64-bit one above 2^53 has no exact
        // DOUBLE): x >= lo is x >= ceil(lo), x <= hi is x <= floor(hi), in i128. The bounds
        // themselves are exact (bind refuses an integer bound a DOUBLE cannot hold).
        let (lo, hi) = (b[d].ceil() as i128, b[d + 3].floor() as i128);
        let dt = col.data_type();
        if dt.is_signed_integer() {
            let c = arrow::compute::cast(col, &DataType::Int64)?;
            for (m, x) in mask.iter_mut().zip(c.as_primitive::<Int64Type>().values()) {
                *m &= (lo..=hi).contains(&(*x as i128));
            }
        } else if dt.is_unsigned_integer() {
            let c = arrow::compute::cast(col, &DataType::UInt64)?;
            for (m, x) in mask.iter_mut().zip(c.as_primitive::<UInt64Type>().values()) {
                *m &= (lo..=hi).contains(&(*x as i128));
            }
        } else {
            let c = arrow::compute::cast(col, &DataType::Float64)?;
            for (m, x) in mask
                .iter_mut()
                .zip(c.as_primitive::<Float64Type>().values())
            {
                *m &= *x >= b[d] && *x <= b[d + 3];
            }
        }
    }
    let kept = arrow::compute::filter_record_batch(batch, &BooleanArray::from(mask))?;
    Ok(kept.project(&(0..keep).collect::<Vec<_>>())?)
}

/// Plans a read of the sorted, disjoint row `ranges` of a file whose row groups start at
/// `rg_start` (with the total row count appended): the row groups to read, and a selection over
/// the concatenation of exactly those row groups.
pub(crate) fn plan_selection(
    rg_start: &[u64],
    ranges: &[(u64, u64)],
) -> (Vec<usize>, Vec<RowSelector>) {
    let mut groups = Vec::new();
    let mut selectors = Vec::new();
    let mut ri = 0;
    for g in 0..rg_start.len().saturating_sub(1) {
        let (gs, ge) = (rg_start[g], rg_start[g + 1]);
        // Ranges that ended before this group are done.
        while ri < ranges.len() && ranges[ri].0 + ranges[ri].1 <= gs {
            ri += 1;
        }
        if ri >= ranges.len() {
            break;
        }
        if ranges[ri].0 >= ge {
            continue;
        }
        groups.push(g);
        let mut pos = gs;
        let mut k = ri;
        while k < ranges.len() && ranges[k].0 < ge {
            let (a, b) = (ranges[k].0.max(gs), (ranges[k].0 + ranges[k].1).min(ge));
            if a > pos {
                selectors.push(RowSelector::skip((a - pos) as usize));
            }
            if b > a {
                selectors.push(RowSelector::select((b - a) as usize));
            }
            pos = pos.max(b);
            k += 1;
        }
        if ge > pos {
            selectors.push(RowSelector::skip((ge - pos) as usize));
        }
    }
    (groups, selectors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consolidate::consolidate;
    use crate::consolidate::tests::{write, JsonCodec};
    use crate::writer::tests::rows;
    use arrow::array::Int32Array;

    fn xs(batches: &[RecordBatch]) -> Vec<i32> {
        let mut v: Vec<i32> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int32Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn points_of_a_label_come_from_every_worker_and_block() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(
            name,
            "w1",
            &[
                rows(&[5, 6, 5], "a", &[[1, 0, 0], [2, 0, 0], [3, 0, 0]]),
                rows(&[5], "b", &[[4, 0, 0]]),
            ],
        );
        write(name, "w2", &[rows(&[5, 7], "c", &[[10, 0, 0], [11, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let e = open(name, &JsonCodec).err().unwrap().to_string();
        assert!(e.contains("has no unified index yet"), "{e}");
        consolidate(&store, &JsonCodec).unwrap();
        let idx = open(name, &JsonCodec).unwrap();
        assert_eq!(xs(&idx.points(&[5], &[2]).unwrap()), vec![1, 3, 4, 10]);
        assert_eq!(xs(&idx.points(&[6, 7], &[2]).unwrap()), vec![2, 11]);
        assert!(idx
            .points(&[99], &[2])
            .unwrap()
            .iter()
            .all(|b| b.num_rows() == 0));
        assert_eq!(
            idx.blocks(5).unwrap(),
            vec![
                (BlockId::Str("a".into()), 2),
                (BlockId::Str("b".into()), 1),
                (BlockId::Str("c".into()), 1)
            ]
        );
        let stats: Vec<_> = idx.label_stats().map(|r| r.unwrap()).collect();
        assert_eq!(stats, vec![(5, 4, 3), (6, 1, 1), (7, 1, 1)]);
    }

    /// Publishes generation `g` of the local store in `dir` as another process would (a copy of
    /// generation `g - 1`'s manifest, written without `log::publish`).
    fn publish_elsewhere(dir: &std::path::Path, g: u64) {
        let index = dir.join("index");
        let text = std::fs::read_to_string(index.join(format!("{:010}.json", g - 1))).unwrap();
        let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
        m["generation"] = g.into();
        std::fs::write(index.join(format!("{g:010}.json")), m.to_string()).unwrap();
    }

    /// Bounded staleness: a process answers from the generation it holds while it was checked
    /// less than `max_staleness` ago, sees a newer one (another process's) once the bound has
    /// passed or with a zero bound, and sees at once what it published or listed elsewhere.
    #[test]
    fn bounded_staleness_holds_a_generation_until_the_bound_or_a_newer_one_seen_here() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(name, "w1", &[rows(&[5], "a", &[[1, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let hour = Duration::from_secs(3600);
        let gen = |bound| {
            open_store(store.clone(), &JsonCodec, bound)
                .unwrap()
                .generation
        };
        assert_eq!(gen(hour), 1);
        // Another process publishes generation 2.
        let foreign = |g: u64| publish_elsewhere(dir.path(), g);
        foreign(2);
        assert_eq!(gen(hour), 1, "held within the bound");
        assert_eq!(gen(Duration::ZERO), 2, "a zero bound checks every time");
        foreign(3);
        assert_eq!(gen(hour), 2);
        // Listed by another function of this process (`pocaduck_stats`): seen at once.
        assert_eq!(log::latest(&store).unwrap().unwrap().generation, 3);
        assert_eq!(gen(hour), 3);
        foreign(4);
        assert_eq!(gen(hour), 3);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            gen(Duration::from_millis(10)),
            4,
            "seen once the bound has passed"
        );
        // This process's own consolidate is seen at once, whatever the bound.
        write(name, "w1", &[rows(&[5], "b", &[[2, 0, 0]])]);
        consolidate(&store, &JsonCodec).unwrap();
        let idx = open_store(store.clone(), &JsonCodec, hour).unwrap();
        assert_eq!(idx.generation, 5);
        assert_eq!(xs(&idx.points(&[5], &[2]).unwrap()), vec![1, 2]);
    }

    /// A store deleted and written again under the same name (generation numbers start over):
    /// this process's own new generation is seen at once, and afterwards the bound holds again.
    #[test]
    fn bounded_staleness_after_the_store_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let hour = Duration::from_secs(3600);
        let gen = |bound| {
            let store = Store::open(name, OpenMode::Existing).unwrap();
            open_store(store, &JsonCodec, bound).unwrap().generation
        };
        for _ in 0..3 {
            write(name, "w1", &[rows(&[5], "a", &[[1, 0, 0]])]);
            consolidate(&Store::open(name, OpenMode::Existing).unwrap(), &JsonCodec).unwrap();
        }
        assert_eq!(gen(hour), 3);
        for e in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_dir_all(e.unwrap().path()).ok();
        }
        std::fs::remove_file(dir.path().join("_pocaduck.json")).ok();
        write(name, "w1", &[rows(&[7], "a", &[[9, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let idx = open_store(store.clone(), &JsonCodec, hour).unwrap();
        assert_eq!(
            idx.generation, 1,
            "this process's own generation of the new store"
        );
        assert_eq!(xs(&idx.points(&[7], &[2]).unwrap()), vec![9]);
        // Held again within the bound: another process's generation 2 is not listed yet.
        publish_elsewhere(dir.path(), 2);
        assert_eq!(gen(hour), 1);
        assert_eq!(gen(Duration::ZERO), 2);
    }

    /// Parts written by the release before LZ4 parts (zstd level 1, dictionary-encoded label and
    /// block columns, 8,192-row pages) read back exactly.
    #[test]
    fn parts_of_the_previous_release_read_back() {
        use parquet::basic::{Compression, Encoding, ZstdLevel};
        use parquet::file::properties::{EnabledStatistics, WriterProperties};
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let n = 30_000;
        let labels: Vec<u64> = (0..n).map(|i| (i * 7919 % 97) as u64).collect();
        let pts: Vec<[i32; 3]> = (0..n).map(|i| [i as i32, 0, 0]).collect();
        write(name, "w", &[rows(&labels, "a", &pts)]);
        let mut rewritten = 0;
        for f in std::fs::read_dir(dir.path().join("workers/w/parts")).unwrap() {
            let path = f.unwrap().path();
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&path).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap();
            let batches: Vec<RecordBatch> = r.map(|b| b.unwrap()).collect();
            let schema = batches[0].schema();
            let mut props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
                .set_data_page_row_count_limit(8192)
                .set_write_batch_size(8192)
                .set_statistics_enabled(EnabledStatistics::Page);
            for f in schema.fields().iter().skip(2) {
                let col = parquet::schema::types::ColumnPath::from(f.name().as_str());
                props = props
                    .set_column_dictionary_enabled(col.clone(), false)
                    .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED);
            }
            let mut out = Vec::new();
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props.build()))
                .unwrap();
            for b in &batches {
                w.write(b).unwrap();
            }
            w.close().unwrap();
            std::fs::write(&path, out).unwrap();
            rewritten += 1;
        }
        assert!(rewritten > 0);
        consolidate(&Store::open(name, OpenMode::Existing).unwrap(), &JsonCodec).unwrap();
        let idx = open(name, &JsonCodec).unwrap();
        for l in [0u64, 1, 50, 96] {
            let want: Vec<i32> = (0..n)
                .filter(|&i| labels[i] == l)
                .map(|i| i as i32)
                .collect();
            assert!(!want.is_empty());
            assert_eq!(xs(&idx.points(&[l], &[2]).unwrap()), want, "label {l}");
        }
    }

    #[test]
    fn selection_spans_row_groups_and_parts() {
        // Many labels over several parts; every label must come back exactly.
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let mut s = crate::writer::tests::sized_session(name, "w1", 16 << 10, 1 << 20);
        let mut expect: HashMap<u64, Vec<i32>> = HashMap::new();
        for blk in 0..20 {
            let n = 20_000;
            let labels: Vec<u64> = (0..n).map(|i| ((i * 31 + blk) % 211) as u64).collect();
            let pts: Vec<[i32; 3]> = (0..n).map(|i| [blk * 1_000_000 + i, 0, 0]).collect();
            for (l, p) in labels.iter().zip(&pts) {
                expect.entry(*l).or_default().push(p[0]);
            }
            s.append(&rows(&labels, &format!("b{blk}"), &pts)).unwrap();
        }
        let c = s.commit().unwrap();
        assert!(c.parts > 3, "{c:?}");
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let idx = open(name, &JsonCodec).unwrap();
        for l in [0u64, 1, 100, 210] {
            let mut want = expect[&l].clone();
            want.sort();
            let got = idx.points(&[l], &[2]).unwrap();
            assert_eq!(xs(&got), want, "label {l}");
            assert_eq!(idx.point_count(&[l]).unwrap(), want.len() as u64);
        }
    }

    /// Brute force: the rows a plan selects are exactly the rows of the ranges.
    fn selected_rows(rg_start: &[u64], groups: &[usize], sel: &[RowSelector]) -> Vec<u64> {
        let rows: Vec<u64> = groups
            .iter()
            .flat_map(|&g| rg_start[g]..rg_start[g + 1])
            .collect();
        let mut out = Vec::new();
        let mut i = 0;
        for s in sel {
            if !s.skip {
                out.extend_from_slice(&rows[i..i + s.row_count]);
            }
            i += s.row_count;
        }
        assert_eq!(
            i,
            rows.len(),
            "selection must cover the selected row groups exactly"
        );
        out
    }

    #[test]
    fn selection_plans_match_brute_force() {
        let rg_start = [0u64, 10, 20, 30, 40, 45];
        let cases: Vec<Vec<(u64, u64)>> = vec![
            vec![(0, 45)],
            vec![(3, 2)],
            vec![(8, 15), (25, 2), (27, 1), (44, 1)],
            vec![(5, 30), (36, 2)],
            vec![(10, 10)],
            vec![(0, 1), (19, 2), (39, 2)],
            vec![],
        ];
        for ranges in cases {
            let (groups, sel) = plan_selection(&rg_start, &ranges);
            let want: Vec<u64> = ranges.iter().flat_map(|&(s, n)| s..s + n).collect();
            assert_eq!(selected_rows(&rg_start, &groups, &sel), want, "{ranges:?}");
            for &g in &groups {
                assert!(
                    ranges
                        .iter()
                        .any(|&(s, n)| s < rg_start[g + 1] && s + n > rg_start[g]),
                    "group {g} read needlessly"
                );
            }
        }
    }

    #[test]
    fn box_queries_return_exactly_the_points_inside() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        // Label 1 in blocks a (x 0..100) and b (x 1000..1100); label 2 in block a.
        let pts_a: Vec<[i32; 3]> = (0..100).map(|i| [i, i % 10, 0]).collect();
        let pts_b: Vec<[i32; 3]> = (0..100).map(|i| [1000 + i, 0, 0]).collect();
        let la: Vec<u64> = (0..100).map(|i| 1 + (i % 2) as u64).collect();
        write(
            name,
            "w1",
            &[rows(&la, "a", &pts_a), rows(&[1; 100], "b", &pts_b)],
        );
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let idx = open(name, &JsonCodec).unwrap();
        let bx = [10.0, 0.0, 0.0, 19.0, 4.0, 0.0];
        // Brute force over what was written.
        let want = |label: Option<u64>| -> Vec<i32> {
            let mut v: Vec<i32> = pts_a
                .iter()
                .zip(&la)
                .filter(|(p, l)| {
                    label.is_none_or(|x| x == **l)
                        && (10..=19).contains(&p[0])
                        && (0..=4).contains(&p[1])
                })
                .map(|(p, _)| p[0])
                .collect();
            v.sort();
            v
        };
        let boxed = |labels: Option<Vec<u64>>, b: BBox| {
            labels
                .map(ScanRequest::labels)
                .unwrap_or_else(ScanRequest::all)
                .bbox(Some(b))
                .columns(vec![2])
                .collect(&idx)
                .unwrap()
        };
        assert_eq!(xs(&boxed(Some(vec![1]), bx)), want(Some(1)));
        assert_eq!(xs(&boxed(None, bx)), want(None));
        assert_eq!(want(None).len(), 5);
        // A box that misses everything reads nothing.
        assert!(boxed(None, [5000.0, 0.0, 0.0, 6000.0, 1.0, 1.0]).is_empty());
    }

    #[test]
    fn missing_part_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        write(name, "w1", &[rows(&[5], "a", &[[1, 0, 0]])]);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        for f in std::fs::read_dir(dir.path().join("workers/w1/parts")).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        let idx = open(name, &JsonCodec).unwrap();
        let e = idx.points(&[5], &[2]).unwrap_err().to_string();
        assert!(e.contains("file 'workers/w1/parts/"), "{e}");
    }
}

#[cfg(test)]
mod box_tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, UInt64Array};

    /// 64-bit integer coordinates above 2^53 are compared in their own type, not as DOUBLE
    /// (2^53 + 1 would round to 2^53 and fall inside a box [2^53, 2^53]).
    #[test]
    fn a_box_compares_64_bit_integers_exactly() {
        let big = 1i64 << 53;
        let xs: ArrayRef = Arc::new(Int64Array::from(vec![big - 1, big, big + 1, big + 2]));
        let us: ArrayRef = Arc::new(UInt64Array::from(vec![
            u64::MAX - 2,
            u64::MAX - 1,
            u64::MAX,
            0,
        ]));
        let zero: ArrayRef = Arc::new(Int64Array::from(vec![0; 4]));
        let batch = RecordBatch::try_from_iter([
            ("x", xs.clone()),
            ("y", zero.clone()),
            ("z", zero.clone()),
        ])
        .unwrap();
        let b = big as f64;
        let kept = filter_box(&batch, &[b, 0.0, 0.0, b, 0.0, 0.0], 1).unwrap();
        let got = kept
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(got.values().to_vec(), vec![big]);
        let kept = filter_box(&batch, &[b, 0.0, 0.0, b + 2.0, 0.0, 0.0], 1).unwrap();
        assert_eq!(kept.num_rows(), 3);
        // Fractional bounds: x >= 0.5 is x >= 1.
        let small: ArrayRef = Arc::new(Int64Array::from(vec![0, 1, 2, 3]));
        let batch =
            RecordBatch::try_from_iter([("x", small), ("y", zero.clone()), ("z", zero.clone())])
                .unwrap();
        let kept = filter_box(&batch, &[0.5, -1.0, -1.0, 2.5, 1.0, 1.0], 1).unwrap();
        assert_eq!(kept.num_rows(), 2);
        // UBIGINT near its maximum: 2^64 - 1 (a DOUBLE bound of 2^64 covers all three).
        let batch =
            RecordBatch::try_from_iter([("x", us), ("y", zero.clone()), ("z", zero)]).unwrap();
        let top = 18446744073709549568.0; // the largest DOUBLE below 2^64
        let kept = filter_box(&batch, &[top, 0.0, 0.0, f64::INFINITY, 0.0, 0.0], 1).unwrap();
        assert_eq!(kept.num_rows(), 3);
        let kept = filter_box(&batch, &[0.0, 0.0, 0.0, top, 0.0, 0.0], 1).unwrap();
        assert_eq!(kept.num_rows(), 1);
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use crate::consolidate::consolidate;
    use crate::consolidate::tests::{write, JsonCodec};
    use crate::writer::tests::rows;

    /// A label spread over many parts streams window by window, in index order, and LIMIT-like
    /// consumers stop early: the first batch comes from the first window only.
    #[test]
    fn a_big_label_streams_in_windows() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let n = 40_000i32;
        let mut want = Vec::new();
        for w in 0..5 {
            let pts: Vec<[i32; 3]> = (0..n).map(|i| [w * n + i, 0, 0]).collect();
            want.extend(pts.iter().map(|p| p[0]));
            write(
                name,
                &format!("w{w}"),
                &[rows(&vec![3; n as usize], "a", &pts)],
            );
        }
        let store = Store::open(name, OpenMode::Existing).unwrap();
        consolidate(&store, &JsonCodec).unwrap();
        let idx = open(name, &JsonCodec).unwrap();
        let mut s = ScanRequest::labels(vec![3])
            .columns(vec![2])
            .stream(&idx)
            .unwrap();
        let first = s.next().unwrap().unwrap();
        assert!(
            first.num_rows() as u64 <= FIRST_WINDOW_ROWS,
            "{}",
            first.num_rows()
        );
        let mut got: Vec<i32> = first
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int32Array>()
            .unwrap()
            .values()
            .to_vec();
        for b in s {
            let b = b.unwrap();
            got.extend(
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int32Array>()
                    .unwrap()
                    .values()
                    .iter(),
            );
        }
        // Index order: workers in order, rows in order within a part.
        assert_eq!(got, want);
    }
}
