//! `pocaduck_consolidate`: merge every worker's commits into a new unified index generation.
//!
//! - Incremental: the previous generation records, per worker, the last commit merged; only newer
//!   commit segments are read. No part file is read.
//! - Idempotent: with no new commits nothing is written and the current generation is reported.
//! - Atomic: the new generation is built in a local temporary file and published with
//!   put-if-absent under the next generation number. Readers keep using the previous generation
//!   until the new one exists in full. Two consolidates racing for the same number: one wins, the
//!   other fails with a conflict error and changes nothing.

use crate::error::{Error, Result};
use crate::index::{decode_segment, IndexCodec, UnifiedIndex};
use crate::layout;
use crate::storage::Store;
use crate::writer::read_schema;

/// What consolidate did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsolidateSummary {
    /// Generation of the unified index now current.
    pub generation: u64,
    /// Workers in the index.
    pub workers: u64,
    /// Commits merged by this call (0 when nothing was new).
    pub new_commits: u64,
    /// Part files referenced.
    pub files: u64,
    /// Distinct labels.
    pub labels: u64,
    /// Points.
    pub points: u64,
}

/// Latest unified index generation of a store (0 if never consolidated).
pub fn latest_generation(store: &Store) -> Result<u64> {
    Ok(latest_index(store)?.map(|(g, _)| g).unwrap_or(0))
}

/// The newest unified index generation and its object metadata (`None` if never consolidated).
pub fn latest_index(store: &Store) -> Result<Option<(u64, object_store::ObjectMeta)>> {
    Ok(store
        .list(&layout::index_dir())?
        .into_iter()
        .filter_map(|m| layout::parse_index_gen(&m.location).map(|g| (g, m)))
        .max_by_key(|(g, _)| *g))
}

/// Loads generation `gen` of the unified index through `codec`.
pub fn load_generation(store: &Store, gen: u64, codec: &dyn IndexCodec) -> Result<UnifiedIndex> {
    let file = layout::index_file(gen);
    let local = match &store.local_dir {
        Some(dir) => dir.join(file.as_ref()),
        None => cached_index_file(store, gen)?,
    };
    codec.read(&local).map_err(|e| match e {
        Error::Internal(m) => Error::file(&store.name, file.as_ref(), m),
        other => other,
    })
}

/// A local copy of generation `gen` of a remote store's index. Generations are immutable, but a
/// store can be deleted and written again under the same URL: the copy's name carries the
/// object's size, modification time and ETag, so only the same object reuses it. Downloaded to a
/// temporary name, then renamed into place.
fn cached_index_file(store: &Store, gen: u64) -> Result<std::path::PathBuf> {
    use object_store::ObjectStoreExt;
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(store.cache_key());
    let dir = std::env::temp_dir()
        .join("pocaduck-index-cache")
        .join(format!("{h:016x}"));
    let file = layout::index_file(gen);
    let meta = crate::storage::block_on(store.os.head(&file))
        .map_err(|e| Error::file(&store.name, file.as_ref(), e))?;
    let (size, version) = crate::storage::object_stamp(&meta);
    let path = dir.join(format!("{gen:010}-{size}-{version:016x}.duckdb"));
    if path.exists() {
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
    let tmp = dir.join(format!("{gen:010}.duckdb.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(cache_err)?;
    std::fs::rename(&tmp, &path).map_err(cache_err)?;
    Ok(path)
}

fn summarize(u: &UnifiedIndex, new_commits: u64) -> ConsolidateSummary {
    ConsolidateSummary {
        generation: u.generation,
        workers: u.workers.len() as u64,
        new_commits,
        files: u.part_count() as u64,
        labels: u.label_stats().len() as u64,
        points: u.entries.iter().map(|e| e.e.row_count).sum(),
    }
}

/// Consolidates `store`.
pub fn consolidate(store: &Store, codec: &dyn IndexCodec) -> Result<ConsolidateSummary> {
    let schema = read_schema(store)?.ok_or_else(|| {
        Error::store(
            &store.name,
            "is not a pocaduck store (no _pocaduck.json): nothing was ever committed to it",
        )
    })?;
    let gen = latest_generation(store)?;
    let mut index = if gen == 0 {
        UnifiedIndex {
            generation: 0,
            schema: schema.clone(),
            workers: vec![],
            entries: vec![],
        }
    } else {
        load_generation(store, gen, codec)?
    };
    let mut new_commits = 0;
    let mut workers: Vec<String> = store
        .list_dirs(&layout::workers_dir())?
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect();
    workers.sort();
    for w in workers {
        let done = index
            .workers
            .iter()
            .find(|s| s.worker == w)
            .map(|s| s.last_commit)
            .unwrap_or(0);
        let mut seqs: Vec<u64> = store
            .list(&layout::commits_dir(&w))?
            .iter()
            .filter_map(|m| layout::parse_commit_seq(&m.location))
            .filter(|s| *s > done)
            .collect();
        if seqs.is_empty() {
            continue;
        }
        seqs.sort_unstable();
        let mut commits = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let file = layout::commit_file(&w, seq);
            let bytes = store.get(&file)?;
            commits.push((seq, decode_segment(bytes, &store.name, file.as_ref())?));
        }
        new_commits += commits.len() as u64;
        index.merge_commits(&w, commits);
    }
    if new_commits == 0 {
        return Ok(summarize(&index, 0));
    }
    index.generation = gen + 1;
    index.schema = schema;
    publish(store, &index, codec)?;
    Ok(summarize(&index, new_commits))
}

pub(crate) fn publish(store: &Store, index: &UnifiedIndex, codec: &dyn IndexCodec) -> Result<()> {
    let tmp = tempdir_for(store)?;
    let local = tmp.join("index.duckdb");
    let res = (|| {
        codec.write(index, &local)?;
        let bytes = std::fs::read(&local).map_err(|e| {
            Error::Internal(format!("reading built index {}: {e}", local.display()))
        })?;
        let file = layout::index_file(index.generation);
        if store.put_if_absent(&file, bytes.into())? {
            store.sync(&[file])?;
        } else {
            return Err(Error::Conflict {
                store: store.name.clone(),
                msg: format!(
                    "another consolidate or optimize published generation {} first; nothing was changed, run it again",
                    index.generation
                ),
            });
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    res
}

fn tempdir_for(store: &Store) -> Result<std::path::PathBuf> {
    use std::hash::{BuildHasher, RandomState};
    sweep_dead_tempdirs();
    let r = RandomState::new().hash_one(std::process::id());
    let dir = std::env::temp_dir().join(format!("pocaduck-{}-{r:016x}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::store(
            &store.name,
            format!("cannot create temporary directory {}: {e}", dir.display()),
        )
    })?;
    Ok(dir)
}

/// Removes the temporary directories of consolidate/optimize runs whose process is gone (killed
/// before it could clean up). Linux: a process is alive if `/proc/<pid>` exists.
fn sweep_dead_tempdirs() {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for d in dir.flatten() {
        let name = d.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pocaduck-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::OpenMode;
    use crate::writer::{Session, WriterOptions};

    /// A codec that stores the index as JSON, so the core is testable without DuckDB.
    pub(crate) struct JsonCodec;
    impl IndexCodec for JsonCodec {
        fn write(&self, index: &UnifiedIndex, path: &std::path::Path) -> Result<()> {
            std::fs::write(path, serde_json::to_vec(index).unwrap())
                .map_err(|e| Error::Internal(e.to_string()))
        }
        fn read(&self, path: &std::path::Path) -> Result<UnifiedIndex> {
            let b = std::fs::read(path).map_err(|e| Error::Internal(e.to_string()))?;
            serde_json::from_slice(&b).map_err(|e| Error::Internal(e.to_string()))
        }
    }

    pub(crate) fn write(store: &str, worker: &str, rows: &[arrow::array::RecordBatch]) {
        let mut s = Session::start(
            store,
            worker,
            vec![],
            "ATTRIBUTES",
            WriterOptions::default(),
        )
        .unwrap();
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
                files: 2,
                labels: 2,
                points: 3
            }
        );
        // Twice: nothing changes, no new generation.
        let s2 = consolidate(&store, &JsonCodec).unwrap();
        assert_eq!(
            s2,
            ConsolidateSummary {
                new_commits: 0,
                ..s1.clone()
            }
        );
        assert_eq!(latest_generation(&store).unwrap(), 1);
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
                s3.labels,
                s3.points
            ),
            (2, 3, 1, 3, 4)
        );
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
        // Someone else publishes generation 1 between our read and our publish.
        std::fs::create_dir_all(dir.path().join("index")).unwrap();
        let u = UnifiedIndex {
            generation: 1,
            schema: read_schema(&store).unwrap().unwrap(),
            workers: vec![],
            entries: vec![],
        };
        publish(&store, &u, &JsonCodec).unwrap();
        let e = publish(&store, &u, &JsonCodec).unwrap_err().to_string();
        assert!(
            e.contains("another consolidate or optimize published generation 1 first"),
            "{e}"
        );
    }
}
