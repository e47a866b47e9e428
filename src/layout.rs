//! Where things live inside a store. The only module that spells store paths.
//!
//! ```text
//! <store>/_pocaduck.json                          store schema (created by the first write)
//! <store>/workers/<worker>/parts/<session>-<n>.parquet   immutable part files
//! <store>/workers/<worker>/commits/<seq>.parquet  worker index segments, one per commit
//! <store>/optimized/<session>-<n>.parquet         parts rewritten by pocaduck_optimize
//! <store>/index/<generation>.json                 generation manifests (immutable)
//! <store>/index/<generation>.duckdb               generations of format 1 (read, never written)
//! <store>/index/HEAD.json                         object stores: a copy of the newest manifest
//! <store>/segments/<run>-<session>-<k>.parquet    index segments (immutable)
//! ```
//! All paths are relative to the store root, so a store can be moved or copied into a bucket.

use object_store::path::Path;

use crate::error::{Error, Result};

/// The store schema file.
pub fn schema_file() -> Path {
    Path::from("_pocaduck.json")
}

/// Directory of all workers.
pub fn workers_dir() -> Path {
    Path::from("workers")
}

/// A part file of a worker's session.
pub fn part_file(worker: &str, session: &str, n: u32) -> Path {
    Path::from(format!("workers/{worker}/parts/{session}-{n:06}.parquet"))
}

/// Directory of a worker's commit segments.
pub fn commits_dir(worker: &str) -> Path {
    Path::from(format!("workers/{worker}/commits"))
}

/// A worker's commit segment number `seq`.
pub fn commit_file(worker: &str, seq: u64) -> Path {
    Path::from(format!("workers/{worker}/commits/{seq:010}.parquet"))
}

/// Parses the sequence number out of a commit segment path.
pub fn parse_commit_seq(p: &Path) -> Option<u64> {
    p.filename()?.strip_suffix(".parquet")?.parse().ok()
}

/// The worker and sequence number of a commit segment path (`workers/<w>/commits/<seq>.parquet`);
/// `None` for any other path.
pub fn parse_commit_file(path: &str) -> Option<(&str, u64)> {
    let mut it = path.split('/');
    let (Some("workers"), Some(worker), Some("commits"), Some(file), None) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return None;
    };
    Some((worker, file.strip_suffix(".parquet")?.parse().ok()?))
}

/// Directory of the parts written by `pocaduck_optimize`.
pub fn optimized_dir() -> Path {
    Path::from("optimized")
}

/// A part file written by `pocaduck_optimize` run `session`.
pub fn optimized_part(session: &str, n: u32) -> Path {
    Path::from(format!("optimized/{session}-{n:06}.parquet"))
}

/// Directory of unified index generations.
pub fn index_dir() -> Path {
    Path::from("index")
}

/// Format-1 unified index generation `gen` (a DuckDB database).
pub fn index_file(gen: u64) -> Path {
    Path::from(format!("index/{gen:010}.duckdb"))
}

/// Generation manifest `gen`.
pub fn manifest_file(gen: u64) -> Path {
    Path::from(format!("index/{gen:010}.json"))
}

/// An object store's head manifest: a copy of the newest generation's manifest, replaced by
/// each publication (see [`crate::log::head`]). Not a generation (its name is no number).
pub fn head_file() -> Path {
    Path::from("index/HEAD.json")
}

/// Parses the generation out of a manifest path.
pub fn parse_manifest_gen(p: &Path) -> Option<u64> {
    p.filename()?.strip_suffix(".json")?.parse().ok()
}

/// Directory of index segments.
pub fn segments_dir() -> Path {
    Path::from("segments")
}

/// Index segment file `k` of run `run` written by writer `session`.
pub fn segment_file(run: u64, session: &str, k: u32) -> Path {
    Path::from(format!("segments/{run:010}-{session}-{k:04}.parquet"))
}

/// Parses the generation out of a format-1 unified index path.
pub fn parse_index_gen(p: &Path) -> Option<u64> {
    p.filename()?.strip_suffix(".duckdb")?.parse().ok()
}

/// Checks a worker id: 1-128 characters of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check_worker_id(w: &str, arg: &str) -> Result<()> {
    if w.is_empty() {
        return Err(Error::arg(arg, "must not be empty"));
    }
    let ok = w.len() <= 128
        && !w.starts_with('.')
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(Error::arg(
            arg,
            format!("must be 1-128 characters of [A-Za-z0-9._-], not starting with '.': got '{w}'"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_commit_seq(&commit_file("w1", 42)), Some(42));
        assert_eq!(parse_index_gen(&index_file(7)), Some(7));
        assert_eq!(index_file(7).as_ref(), "index/0000000007.duckdb");
        assert_eq!(parse_index_gen(&Path::from("index/tmp.duckdb")), None);
        let c = commit_file("w-1", 42);
        assert_eq!(parse_commit_file(c.as_ref()), Some(("w-1", 42)));
        for other in [
            "workers/w/parts/1-2-000001.parquet",
            "workers/w/commits/x.parquet",
            "workers/w/commits/1.json",
            "a/workers/w/commits/1.parquet",
        ] {
            assert_eq!(parse_commit_file(other), None, "{other}");
        }
    }

    #[test]
    fn worker_ids_are_checked() {
        assert!(check_worker_id("worker-07.a_b", "WORKER").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", "ü"] {
            assert!(check_worker_id(bad, "WORKER").is_err(), "{bad}");
        }
        assert_eq!(
            check_worker_id("a/b", "WORKER").unwrap_err().to_string(),
            "argument 'WORKER' must be 1-128 characters of [A-Za-z0-9._-], not starting with '.': got 'a/b'"
        );
    }
}
