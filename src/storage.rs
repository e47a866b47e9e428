//! Storage I/O: every byte pocaduck reads or writes goes through [`object_store`].
//!
//! A [`Store`] is a store root (a local directory or a bucket prefix) plus the `ObjectStore` that
//! serves it.
//! Paths handed to a `Store` are relative to its root, so a store can be moved or copied into a
//! bucket unchanged. Guarantees relied on elsewhere:
//! - Puts and completed multipart uploads are atomic: a reader sees the whole object or nothing
//!   (`LocalFileSystem` writes a staging file and renames it into place).
//! - [`Store::put_if_absent`] creates an object only if it does not exist yet; this is how commits
//!   and index generations are numbered without a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{
    local::LocalFileSystem, path::Path, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload,
};

use crate::error::{Error, Result};

/// The process-wide tokio runtime that drives object-store futures.
///
/// DuckDB calls pocaduck from its own threads, which are not inside a runtime; every async call is
/// driven with [`block_on`].
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pocaduck-io")
            .enable_all()
            .build()
            .unwrap_or_else(|e| {
                // Building a runtime only fails when the OS refuses threads; fall back to one
                // thread rather than panic across the FFI boundary.
                eprintln!("pocaduck: multi-thread runtime failed ({e}); using current thread");
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio current-thread runtime")
            })
    })
}

/// Runs a future to completion on the pocaduck runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// A store root and the object store that holds it.
#[derive(Clone, Debug)]
pub struct Store {
    /// The store as the user named it (used in messages).
    pub name: String,
    /// Object store rooted at the store directory.
    pub objects: Arc<dyn ObjectStore>,
    /// Local directory of the store, when it is on the local file system.
    pub local_dir: Option<std::path::PathBuf>,
    /// The caller's options this store was opened with (empty: the environment's only).
    options: Arc<StorageOptions>,
    /// An object store's first listing of `index/`, made when it was opened (it proves the
    /// bucket and the credentials), with when it was made: the next [`Store::list`] of
    /// `index/` within [`FIRST_LISTING_FOR`] is answered with it instead of a second request.
    first_listing: Arc<Fresh<Vec<object_store::ObjectMeta>>>,
    /// An object store's head manifest (`index/HEAD.json`, see [`crate::log::head`]) as read
    /// when it was opened to read (it proves the bucket, the credentials and the store); taken
    /// by the first reader within [`FIRST_LISTING_FOR`].
    first_head: Arc<Fresh<(Bytes, object_store::ObjectMeta)>>,
}

/// What a store was opened with, for the first taker within [`FIRST_LISTING_FOR`].
#[derive(Debug)]
struct Fresh<T>(Mutex<Option<(std::time::Instant, T)>>);

impl<T> Default for Fresh<T> {
    fn default() -> Self {
        Fresh(Mutex::new(None))
    }
}

impl<T> Fresh<T> {
    fn put(&self, v: T) {
        if let Ok(mut f) = self.0.lock() {
            *f = Some((std::time::Instant::now(), v));
        }
    }

    /// The value, if put less than [`FIRST_LISTING_FOR`] ago and not taken yet.
    fn take(&self) -> Option<T> {
        let first = self.0.lock().ok().and_then(|mut f| f.take())?;
        (first.0.elapsed() < FIRST_LISTING_FOR).then_some(first.1)
    }
}

/// How long the listing of `index/` an object store is opened with may stand in for the next
/// one: the statement that opened it is still binding (a reader's first query lists `index/`
/// right after opening the store; it saves that request).
const FIRST_LISTING_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether [`Store::open`] may create the store directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The store must already exist.
    Existing,
    /// The store must already exist, and is opened to read its index: on an object store its
    /// head manifest proves it (one GET instead of a listing) and serves its first reader.
    Read,
    /// Create the directory if it is missing (writers).
    Create,
}

/// Object-store options given by the caller (`SET pocaduck_storage_options` of the connection
/// that runs the statement), applied on top of the environment when a remote store is opened.
/// Validated `key=value` pairs (see [`parse_storage_options`]); empty for none.
pub type StorageOptions = Vec<(String, String)>;

/// Parses `key=value` pairs separated by commas, semicolons or newlines (`object_store` config
/// keys such as `aws_endpoint`, `aws_region`, `aws_allow_http`, `google_service_account`,
/// `azure_storage_account_name`; see the README). A key that no object store (S3, GCS, Azure)
/// knows is an error naming it: `object_store` would silently ignore it.
pub fn parse_storage_options(s: &str, arg: &str) -> Result<Vec<(String, String)>> {
    s.split([',', ';', '\n'])
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                Error::arg(
                    arg,
                    format!("must be key=value pairs separated by commas, got '{kv}'"),
                )
            })?;
            let k = k.trim().to_ascii_lowercase();
            if !is_storage_option_key(&k) {
                return Err(Error::arg(
                    arg,
                    format!(
                        "has unknown key '{k}': use object_store's S3, GCS or Azure keys (aws_endpoint, aws_region, aws_access_key_id, google_service_account, azure_storage_account_name, timeout, …)"
                    ),
                ));
            }
            Ok((k, v.trim().to_string()))
        })
        .collect()
}

/// Whether `key` (lower case) is a configuration key of one of the object stores pocaduck opens
/// (the same parsing `object_store::parse_url_opts` applies; client keys such as `timeout` are
/// accepted by each of them).
fn is_storage_option_key(key: &str) -> bool {
    use std::str::FromStr;
    object_store::aws::AmazonS3ConfigKey::from_str(key).is_ok()
        || object_store::gcp::GoogleConfigKey::from_str(key).is_ok()
        || object_store::azure::AzureConfigKey::from_str(key).is_ok()
}

/// Requests and bytes moved through object stores by this process (all stores), for
/// `pocaduck_explain` and the benchmark.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// GET / range requests.
    pub gets: AtomicU64,
    /// Bytes received by GETs.
    pub bytes_read: AtomicU64,
    /// PUT requests and multipart uploads.
    pub puts: AtomicU64,
    /// LIST requests.
    pub lists: AtomicU64,
}

/// The process-wide [`IoCounters`].
pub fn io_counters() -> &'static IoCounters {
    static C: OnceLock<IoCounters> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// Ranges of one object closer than this are fetched with one request.
const COALESCE_GAP: u64 = 64 << 10;

/// Ranges of one object that all lie within this many bytes are fetched with one request,
/// whatever the gaps between them: the pages of a small label in a part (one per column, in
/// column chunks that are hundreds of KB apart) then cost one GET instead of one per column.
const ONE_REQUEST_SPAN: u64 = 1 << 20;

/// An `ObjectStore` that counts requests and bytes into [`io_counters`].
#[derive(Debug)]
struct Counted(Arc<dyn ObjectStore>);

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counted({})", self.0)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counted {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        io_counters().puts.fetch_add(1, Relaxed);
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        io_counters().puts.fetch_add(1, Relaxed);
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let c = io_counters();
        c.gets.fetch_add(1, Relaxed);
        let r = self.0.get_opts(location, options).await?;
        if !r.range.is_empty() {
            c.bytes_read.fetch_add(r.range.end - r.range.start, Relaxed);
        }
        Ok(r)
    }

    /// Byte ranges of one object (Parquet pages): all in one request when they lie within
    /// 1 MiB ([`ONE_REQUEST_SPAN`]: requests, not bytes, are what a small lookup costs on an
    /// object store), otherwise ranges closer than 64 KiB merged into one request
    /// (object_store's default merges within 1 MiB, which for a large read fetches most of every
    /// row group touched); up to 10 requests in parallel.
    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let lo = ranges.iter().map(|r| r.start).min().unwrap_or(0);
        let hi = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        let gap = if hi.saturating_sub(lo) <= ONE_REQUEST_SPAN {
            u64::MAX
        } else {
            COALESCE_GAP
        };
        object_store::coalesce_ranges(
            ranges,
            |r| async move {
                let opts = object_store::GetOptions {
                    range: Some(r.into()),
                    ..Default::default()
                };
                self.get_opts(location, opts).await?.bytes().await
            },
            gap,
        )
        .await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        io_counters().lists.fetch_add(1, Relaxed);
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        io_counters().lists.fetch_add(1, Relaxed);
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        io_counters().lists.fetch_add(1, Relaxed);
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

/// Identifies one version of an object: its size, and a hash of its modification time and ETag
/// (object stores may keep whole-second times; the ETag tells same-second rewrites apart).
pub fn object_stamp(meta: &object_store::ObjectMeta) -> (u64, i64) {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one((
        meta.last_modified.timestamp_nanos_opt().unwrap_or(0),
        &meta.e_tag,
    ));
    (meta.size, h as i64)
}

/// URL schemes served by object stores.
const REMOTE_SCHEMES: [&str; 8] = ["s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss"];

impl Store {
    /// Opens the store named `name`: a local path, a `file://` URL, or an object-store URL
    /// (`s3://bucket/prefix`, `gs://…`, `az://…`). Object-store settings come from the
    /// environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    pub fn open(name: &str, mode: OpenMode) -> Result<Store> {
        Store::open_with(name, mode, &[])
    }

    /// Like [`Store::open`], with `options` applied over the environment for object stores
    /// (ignored for local stores). Each (store, options) gets its own client: two connections
    /// with different endpoints or credentials for the same URL work side by side.
    pub fn open_with(name: &str, mode: OpenMode, options: &[(String, String)]) -> Result<Store> {
        if name.is_empty() {
            return Err(Error::arg("store", "must not be empty"));
        }
        // Schemes are case-insensitive (as for object stores): `FILE:///tmp/s` is `/tmp/s`.
        let file_url = name
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("file://"));
        let local = if file_url {
            name[7..].to_string()
        } else if let Some((scheme, _)) = name.split_once("://") {
            if REMOTE_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                return Store::open_remote(name, mode, options);
            }
            return Err(Error::store(
                name,
                format!(
                    "URL scheme '{scheme}://' is not supported (local paths, file://, s3://, gs://, az://)"
                ),
            ));
        } else {
            name.to_string()
        };
        let path = std::path::PathBuf::from(&local);
        if !path.exists() {
            match mode {
                OpenMode::Existing | OpenMode::Read => {
                    return Err(Error::store(name, "does not exist"));
                }
                OpenMode::Create => std::fs::create_dir_all(&path)
                    .map_err(|e| Error::store(name, format!("cannot create directory: {e}")))?,
            }
        } else if !path.is_dir() {
            return Err(Error::store(name, "is not a directory"));
        }
        let abs = std::fs::canonicalize(&path)
            .map_err(|e| Error::store(name, format!("cannot resolve path: {e}")))?;
        let os = LocalFileSystem::new_with_prefix(&abs)
            .map_err(|e| Error::store(name, format!("cannot open: {e}")))?;
        Ok(Store {
            name: name.to_string(),
            objects: Arc::new(Counted(Arc::new(os))),
            local_dir: Some(abs),
            options: Default::default(),
            first_listing: Default::default(),
            first_head: Default::default(),
        })
    }

    fn open_remote(name: &str, mode: OpenMode, options: &[(String, String)]) -> Result<Store> {
        let url = url::Url::parse(name.trim_end_matches('/'))
            .map_err(|e| Error::store(name, format!("is not a valid URL: {e}")))?;
        // Environment first, then the SET options; deliberate timeouts so that a wrong endpoint
        // or credentials fail promptly instead of hanging.
        let mut opts: Vec<(String, String)> = vec![
            ("timeout".into(), "30s".into()),
            ("connect_timeout".into(), "5s".into()),
        ];
        for (k, v) in std::env::vars() {
            if k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_") {
                opts.push((k.to_ascii_lowercase(), v));
            }
        }
        opts.extend(options.iter().cloned());
        // One client per (store, options) per process: connections are reused across queries,
        // and the existence probe below runs once.
        type Key = (String, Vec<(String, String)>);
        static CLIENTS: OnceLock<Mutex<HashMap<Key, Store>>> = OnceLock::new();
        let clients = CLIENTS.get_or_init(Default::default);
        let key = (name.to_string(), opts.clone());
        if let Some(s) = clients.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(s);
        }
        let (os, prefix) = object_store::parse_url_opts(&url, opts)
            .map_err(|e| Error::store(name, format!("cannot open: {e}")))?;
        let os: Arc<dyn ObjectStore> = Arc::new(Counted(Arc::new(
            object_store::prefix::PrefixStore::new(Arc::<dyn ObjectStore>::from(os), prefix),
        )));
        let store = Store {
            name: name.to_string(),
            objects: os,
            local_dir: None,
            options: Arc::new(options.to_vec()),
            first_listing: Default::default(),
            first_head: Default::default(),
        };
        // One listing proves the bucket and the credentials (fails fast, naming the store). For
        // an existing store it is the listing of `index/` its first reader needs anyway; the
        // store's top level is listed only if that is empty (never consolidated, or missing).
        let unlisted = |e: object_store::Error| {
            Error::store(
                name,
                format!("cannot be listed (bucket, endpoint or credentials?): {e}"),
            )
        };
        // Opened to read: the store's head manifest, when it has one, proves all that in one GET
        // and is what its first reader needs. A store without one (never consolidated, or
        // last consolidated by a release before head manifests) is listed.
        let head = match mode {
            OpenMode::Read => match store.get_versioned_raw(&crate::layout::head_file()) {
                Ok(h) => h,
                // A missing bucket is "not found" too, and is named by the listing below.
                Err(e) => {
                    return Err(Error::store(
                        name,
                        format!("cannot be read (bucket, endpoint or credentials?): {e}"),
                    ))
                }
            },
            _ => None,
        };
        if let Some(h) = head {
            store.first_head.put(h);
        } else {
            let existing = mode != OpenMode::Create;
            let index = match existing {
                true => {
                    let dir = crate::layout::index_dir();
                    block_on(store.objects.list(Some(&dir)).try_collect::<Vec<_>>())
                        .map_err(unlisted)?
                }
                false => Vec::new(),
            };
            if index.is_empty() {
                let top = block_on(store.objects.list_with_delimiter(None)).map_err(unlisted)?;
                if existing && top.objects.is_empty() && top.common_prefixes.is_empty() {
                    return Err(Error::store(name, "does not exist"));
                }
            }
            if existing {
                store.first_listing.put(index);
            }
        }
        if let Ok(mut c) = clients.lock() {
            c.insert(key, store.clone());
        }
        Ok(store)
    }

    /// A key identifying the store's location and the options it was opened with: what a cache
    /// of things read *through* this client is keyed by (a connection with other credentials or
    /// another endpoint must not be served what this one read).
    pub fn client_key(&self) -> (std::path::PathBuf, Arc<StorageOptions>) {
        (self.cache_key(), self.options.clone())
    }

    /// A key identifying the store's location in process caches (immutable files, writer
    /// sessions).
    pub fn cache_key(&self) -> std::path::PathBuf {
        self.local_dir.clone().unwrap_or_else(|| {
            // `S3://b/p` and `s3://b/p` are the same store.
            let (scheme, rest) = self.name.split_once("://").unwrap_or(("", &self.name));
            std::path::PathBuf::from(format!(
                "{}://{}",
                scheme.to_ascii_lowercase(),
                rest.trim_end_matches('/')
            ))
        })
    }

    /// A Parquet reader of `path` (of `size` bytes, when known). Local files are read with
    /// positioned reads on the calling thread: a lookup reads a few KB from the page cache, and
    /// handing each read to tokio's blocking pool (as `object_store`'s local store does) costs
    /// more than the read. Other stores read through `object_store`. Both count into
    /// [`io_counters`] (ranges closer than 64 KiB count as one request).
    pub fn parquet_reader(
        &self,
        path: &Path,
        size: Option<u64>,
    ) -> Box<dyn parquet::arrow::async_reader::AsyncFileReader> {
        let r: Box<dyn parquet::arrow::async_reader::AsyncFileReader> = match &self.local_dir {
            Some(dir) => Box::new(LocalParquet {
                path: dir.join(path.as_ref()),
                file: None,
                size,
            }),
            None => {
                let r = parquet::arrow::async_reader::ParquetObjectReader::new(
                    self.objects.clone(),
                    path.clone(),
                );
                Box::new(match size {
                    Some(s) => r.with_file_size(s),
                    None => r,
                })
            }
        };
        // Pages are checked before parquet-rs decodes them (see `footer`).
        Box::new(crate::footer::CheckedPages(r))
    }

    /// Whether the store is a local directory (reads are positioned file reads, not requests).
    pub fn is_local(&self) -> bool {
        self.local_dir.is_some()
    }

    /// Whether the store serves suffix byte ranges (`bytes=-N`): local, S3 and GCS do, Azure
    /// does not.
    pub fn suffix_ranges(&self) -> bool {
        let scheme = self
            .name
            .split_once("://")
            .map(|x| x.0.to_ascii_lowercase());
        !matches!(
            scheme.as_deref(),
            Some("az" | "adl" | "azure" | "abfs" | "abfss")
        )
    }

    fn err(&self, file: &Path, e: impl std::fmt::Display) -> Error {
        Error::file(&self.name, file.as_ref(), e)
    }

    /// Creates `path` with `data` only if it does not exist. Returns `false` if it already existed.
    pub fn put_if_absent(&self, path: &Path, data: Bytes) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match block_on(self.objects.put_opts(path, PutPayload::from(data), opts)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.err(path, e)),
        }
    }

    /// Reads the whole object at `path` with its metadata (ETag and version, for
    /// [`Store::put_update`]); `None` if it does not exist.
    pub fn get_versioned(&self, path: &Path) -> Result<Option<(Bytes, object_store::ObjectMeta)>> {
        self.get_versioned_raw(path).map_err(|e| self.err(path, e))
    }

    fn get_versioned_raw(
        &self,
        path: &Path,
    ) -> object_store::Result<Option<(Bytes, object_store::ObjectMeta)>> {
        block_on(async {
            match self.objects.get_opts(path, Default::default()).await {
                Ok(r) => {
                    let meta = r.meta.clone();
                    r.bytes().await.map(|b| Some((b, meta)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// Replaces `path` with `data` only if it is still the version `was` describes (its ETag
    /// and version, from [`Store::get_versioned`]). Returns `false` if it changed meanwhile.
    /// Object stores only (the local file system has no conditional update).
    pub fn put_update(
        &self,
        path: &Path,
        data: Bytes,
        was: &object_store::ObjectMeta,
    ) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Update(object_store::UpdateVersion {
                e_tag: was.e_tag.clone(),
                version: was.version.clone(),
            }),
            ..Default::default()
        };
        match block_on(self.objects.put_opts(path, PutPayload::from(data), opts)) {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(false),
            Err(e) => Err(self.err(path, e)),
        }
    }

    /// The head manifest read when the store was opened (bytes and metadata), if it was read
    /// less than [`FIRST_LISTING_FOR`] ago and nobody took it yet.
    pub fn take_first_head(&self) -> Option<(Bytes, object_store::ObjectMeta)> {
        self.first_head.take()
    }

    /// Forgets the head manifest read at opening (this process published a newer generation).
    pub fn drop_first_head(&self) {
        self.first_head.take();
    }

    /// Reads the whole object at `path`; `None` if it does not exist.
    pub fn get_opt(&self, path: &Path) -> Result<Option<Bytes>> {
        block_on(async {
            match self.objects.get(path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.err(path, e))
    }

    /// Reads the whole object at `path`, which must exist.
    pub fn get(&self, path: &Path) -> Result<Bytes> {
        self.get_opt(path)?
            .ok_or_else(|| self.err(path, "is missing"))
    }

    /// Lists the objects below `prefix` (recursively), as paths relative to the store root.
    pub fn list(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        if *prefix == crate::layout::index_dir() {
            if let Some(listed) = self.first_listing.take() {
                return Ok(listed);
            }
        }
        block_on(self.objects.list(Some(prefix)).try_collect::<Vec<_>>())
            .map_err(|e| self.err(prefix, e))
    }

    /// Lists the objects below `prefix` whose paths sort after `offset`.
    pub fn list_from(&self, prefix: &Path, offset: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        block_on(
            self.objects
                .list_with_offset(Some(prefix), offset)
                .try_collect::<Vec<_>>(),
        )
        .map_err(|e| self.err(prefix, e))
    }

    /// Lists the immediate children "directories" of `prefix`.
    pub fn list_dirs(&self, prefix: &Path) -> Result<Vec<Path>> {
        block_on(self.objects.list_with_delimiter(Some(prefix)))
            .map(|r| r.common_prefixes)
            .map_err(|e| self.err(prefix, e))
    }

    /// Starts writing `path` to disk in the background (a local store's file; nothing on an
    /// object store), so that the [`Store::sync`] that must precede a reference to it finds
    /// little left to write: a part closed while the encoders still work is on disk by the
    /// commit. Errors are left to that sync, which reports them.
    pub fn start_sync(&self, path: &Path) {
        if let Some(root) = &self.local_dir {
            let file = root.join(path.as_ref());
            runtime().spawn_blocking(move || {
                if let Ok(f) = std::fs::File::open(&file) {
                    let _ = f.sync_all();
                }
            });
        }
    }

    /// Makes `paths` (and their directories) durable on disk, for local stores.
    ///
    /// `LocalFileSystem` renames files into place without syncing them; without this, a power
    /// loss could keep a commit segment but lose the part data it references. Object stores
    /// are durable once an upload completes, so this is a no-op for them.
    pub fn sync(&self, paths: &[Path]) -> Result<()> {
        let Some(root) = &self.local_dir else {
            return Ok(());
        };
        let mut dirs: Vec<std::path::PathBuf> = Vec::new();
        for p in paths {
            let file = root.join(p.as_ref());
            std::fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(|e| self.err(p, format!("cannot sync to disk: {e}")))?;
            if let Some(d) = file.parent() {
                if !dirs.iter().any(|x| x == d) {
                    dirs.push(d.to_path_buf());
                }
            }
        }
        for d in dirs {
            // Directory fsync makes the renames durable; some file systems refuse it, which only
            // loses that extra guarantee.
            if let Ok(f) = std::fs::File::open(&d) {
                let _ = f.sync_all();
            }
        }
        Ok(())
    }

    /// Deletes `paths` (object stores: in batches where the store has a bulk delete); missing
    /// objects are not an error.
    pub fn delete_all(&self, paths: Vec<Path>) -> Result<()> {
        use futures::StreamExt;
        if paths.is_empty() {
            return Ok(());
        }
        let stream = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        block_on(async {
            let mut out = self.objects.delete_stream(stream);
            while let Some(r) = out.next().await {
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    // object_store's error names the object.
                    Err(e) => return Err(Error::store(&self.name, format!("cannot delete: {e}"))),
                }
            }
            Ok(())
        })
    }

    /// Deletes `path`; a missing object is not an error.
    pub fn delete(&self, path: &Path) -> Result<()> {
        match block_on(self.objects.delete(path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(path, e)),
        }
    }
}

/// A local Parquet file read with positioned reads; see [`Store::parquet_reader`].
struct LocalParquet {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    size: Option<u64>,
}

impl LocalParquet {
    fn file(&mut self) -> parquet::errors::Result<&std::fs::File> {
        if self.file.is_none() {
            let f = std::fs::File::open(&self.path).map_err(|e| {
                parquet::errors::ParquetError::External(Box::new(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", self.path.display()),
                )))
            })?;
            self.file = Some(f);
        }
        self.file
            .as_ref()
            .ok_or_else(|| parquet::errors::ParquetError::General("no file".into()))
    }

    fn size(&mut self) -> parquet::errors::Result<u64> {
        if let Some(s) = self.size {
            return Ok(s);
        }
        let s = self.file()?.metadata()?.len();
        self.size = Some(s);
        Ok(s)
    }

    /// Reads `ranges` (merging those closer than [`COALESCE_GAP`] into one read).
    fn read(&mut self, ranges: &[std::ops::Range<u64>]) -> parquet::errors::Result<Vec<Bytes>> {
        use std::os::unix::fs::FileExt;
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&i| ranges[i].start);
        let mut out = vec![Bytes::new(); ranges.len()];
        let c = io_counters();
        let mut k = 0;
        while k < order.len() {
            let start = ranges[order[k]].start;
            let mut end = ranges[order[k]].end;
            let mut j = k + 1;
            while j < order.len() && ranges[order[j]].start <= end.saturating_add(COALESCE_GAP) {
                end = end.max(ranges[order[j]].end);
                j += 1;
            }
            // Ranges come from file metadata: refuse any past the end before allocating.
            let size = self.size()?;
            if end > size {
                return Err(parquet::errors::ParquetError::General(format!(
                    "{}: bytes {start}..{end} are past the end of the {size}-byte file",
                    self.path.display()
                )));
            }
            let len = usize::try_from(end.saturating_sub(start)).map_err(|_| {
                parquet::errors::ParquetError::General(format!("range {start}..{end} too large"))
            })?;
            let mut buf = vec![0u8; len];
            self.file()?.read_exact_at(&mut buf, start).map_err(|e| {
                parquet::errors::ParquetError::External(Box::new(std::io::Error::new(
                    e.kind(),
                    format!("{}: bytes {start}..{end}: {e}", self.path.display()),
                )))
            })?;
            c.gets.fetch_add(1, Relaxed);
            c.bytes_read.fetch_add(len as u64, Relaxed);
            let buf = Bytes::from(buf);
            for &i in &order[k..j] {
                let r = &ranges[i];
                out[i] = buf.slice((r.start - start) as usize..(r.end - start) as usize);
            }
            k = j;
        }
        Ok(out)
    }
}

impl parquet::arrow::async_reader::AsyncFileReader for LocalParquet {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let r = self
            .read(std::slice::from_ref(&range))
            .map(|mut v| v.remove(0));
        Box::pin(async move { r })
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let r = self.read(&ranges);
        Box::pin(async move { r })
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        parquet::errors::Result<Arc<parquet::file::metadata::ParquetMetaData>>,
    > {
        Box::pin(async move {
            let size = self.size()?;
            let offset_index = options.is_some_and(|o| {
                o.offset_index_policy() != parquet::file::metadata::PageIndexPolicy::Skip
            });
            let mut n = size.min(64 << 10);
            loop {
                let tail = self
                    .read(std::slice::from_ref(&(size - n..size)))?
                    .remove(0);
                match crate::footer::decode(&tail, size, offset_index)
                    .map_err(parquet::errors::ParquetError::General)?
                {
                    crate::footer::Footer::Meta(m) => return Ok(Arc::new(*m)),
                    crate::footer::Footer::Need(k) if k > n && k <= size => n = k,
                    crate::footer::Footer::Need(k) => {
                        return Err(parquet::errors::ParquetError::General(format!(
                            "corrupt Parquet footer: needs the last {k} bytes of a {size}-byte file"
                        )))
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_missing_store_for_reading_fails_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope");
        let err = Store::open(p.to_str().unwrap(), OpenMode::Existing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("store '{}': does not exist", p.display())
        );
    }

    #[test]
    fn put_if_absent_refuses_second_create() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().to_str().unwrap(), OpenMode::Existing).unwrap();
        let p = Path::from("a/b.txt");
        assert!(s.put_if_absent(&p, Bytes::from_static(b"1")).unwrap());
        assert!(!s.put_if_absent(&p, Bytes::from_static(b"2")).unwrap());
        assert_eq!(s.get(&p).unwrap(), Bytes::from_static(b"1"));
    }

    #[test]
    fn unknown_storage_option_keys_are_named() {
        let err = parse_storage_options("aws_region=x, bogus_key=1", "opts").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("argument 'opts' has unknown key 'bogus_key'"),
            "{err}"
        );
        // Keys of every cloud, client keys and any case are accepted.
        let ok = parse_storage_options(
            "AWS_ENDPOINT=http://h:1; aws_allow_http=true, timeout=5s, google_service_account=a, azure_storage_account_name=n, region=r",
            "opts",
        )
        .unwrap();
        assert_eq!(ok.len(), 6);
        assert_eq!(ok[0], ("aws_endpoint".into(), "http://h:1".into()));
    }

    #[test]
    fn file_urls_ignore_scheme_case() {
        let dir = tempfile::tempdir().unwrap();
        for scheme in ["file://", "FILE://", "File://"] {
            let name = format!("{scheme}{}", dir.path().display());
            let s = Store::open(&name, OpenMode::Existing).unwrap();
            assert_eq!(s.local_dir.unwrap(), dir.path().canonicalize().unwrap());
        }
    }

    #[test]
    fn unsupported_scheme_is_named() {
        let err = Store::open("ftp://x/y", OpenMode::Create).unwrap_err();
        assert!(err.to_string().contains("'ftp://'"), "{err}");
    }
}
