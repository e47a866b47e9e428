//! Storage I/O: every byte pocaduck reads or writes goes through [`object_store`].
//!
//! A [`Store`] is a store root (a local directory for now) plus the `ObjectStore` that serves it.
//! Paths handed to a `Store` are relative to its root, so a store can be moved or copied into a
//! bucket unchanged. Guarantees relied on elsewhere:
//! - Puts and completed multipart uploads are atomic: a reader sees the whole object or nothing
//!   (`LocalFileSystem` writes a staging file and renames it into place).
//! - [`Store::put_if_absent`] creates an object only if it does not exist yet; this is how commits
//!   and index generations are numbered without a lock.

use std::sync::{Arc, OnceLock};

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
    pub os: Arc<dyn ObjectStore>,
    /// Local directory of the store, when it is on the local file system.
    pub local_dir: Option<std::path::PathBuf>,
}

/// Whether [`Store::open`] may create the store directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The store must already exist (readers).
    Existing,
    /// Create the directory if it is missing (writers).
    Create,
}

impl Store {
    /// Opens the store named `name`: a local path or a `file://` URL.
    pub fn open(name: &str, mode: OpenMode) -> Result<Store> {
        if name.is_empty() {
            return Err(Error::arg("store", "must not be empty"));
        }
        let local = if let Some(rest) = name.strip_prefix("file://") {
            rest.to_string()
        } else if name.contains("://") {
            let scheme = name.split("://").next().unwrap_or_default();
            return Err(Error::store(
                name,
                format!(
                    "URL scheme '{scheme}://' is not supported yet (local paths and file:// only)"
                ),
            ));
        } else {
            name.to_string()
        };
        let path = std::path::PathBuf::from(&local);
        if !path.exists() {
            match mode {
                OpenMode::Existing => {
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
            os: Arc::new(os),
            local_dir: Some(abs),
        })
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
        match block_on(self.os.put_opts(path, PutPayload::from(data), opts)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.err(path, e)),
        }
    }

    /// Reads the whole object at `path`; `None` if it does not exist.
    pub fn get_opt(&self, path: &Path) -> Result<Option<Bytes>> {
        block_on(async {
            match self.os.get(path).await {
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
        block_on(self.os.list(Some(prefix)).try_collect::<Vec<_>>())
            .map_err(|e| self.err(prefix, e))
    }

    /// Lists the immediate children "directories" of `prefix`.
    pub fn list_dirs(&self, prefix: &Path) -> Result<Vec<Path>> {
        block_on(self.os.list_with_delimiter(Some(prefix)))
            .map(|r| r.common_prefixes)
            .map_err(|e| self.err(prefix, e))
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

    /// Deletes `path`; a missing object is not an error.
    pub fn delete(&self, path: &Path) -> Result<()> {
        match block_on(self.os.delete(path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(path, e)),
        }
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
    fn unsupported_scheme_is_named() {
        let err = Store::open("ftp://x/y", OpenMode::Create).unwrap_err();
        assert!(err.to_string().contains("'ftp://'"), "{err}");
    }
}
