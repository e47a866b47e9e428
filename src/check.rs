//! `pocaduck_check`: verify that a store holds what its index says.
//!
//! Checks, reporting every problem with the file it is in (never stopping at the first):
//! - the schema file parses;
//! - every commit segment of every worker decodes, and the parts of those not merged yet exist;
//! - the current index generation loads;
//! - every part the index references opens, has the store's columns, and has the rows the index
//!   points at;
//! - every indexed row range reads back, holding only its entry's label and block, with
//!   coordinates inside the entry's bounds (so counts agree with `pocaduck_labels`).

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};

use crate::error::{Error, Result};
use crate::index::{block_ids, decode_segment, IndexCodec, UnifiedEntry};
use crate::layout;
use crate::log;
use crate::reader::LoadedIndex;
use crate::schema::col;
use crate::storage::Store;

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file (relative to the store root) the problem is in.
    pub file: String,
    /// What is wrong.
    pub msg: String,
}

/// What `check` looked at and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Index generation checked (0: none).
    pub generation: u64,
    /// Commit segments decoded.
    pub commits: u64,
    /// Part files opened.
    pub parts: u64,
    /// Index entries read back.
    pub entries: u64,
    /// Points read back.
    pub points: u64,
    /// Everything wrong.
    pub problems: Vec<Problem>,
}

/// Rows read at once when reading entries back.
const CHUNK_ROWS: u64 = 1 << 20;

/// Checks `store`. Errors only if it is not a store at all; everything else is a [`Problem`].
pub fn check(store: &Store, codec: &dyn IndexCodec) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    let schema = match crate::writer::read_schema(store) {
        Ok(s) => s,
        Err(e) => {
            r.problems.push(problem(layout::schema_file().as_ref(), &e));
            None
        }
    };
    let latest = log::latest(store)?;
    if schema.is_none() && latest.is_none() && r.problems.is_empty() {
        return Err(crate::writer::not_a_store(store));
    }
    let existing: HashSet<String> = store
        .list(&layout::workers_dir())?
        .into_iter()
        .chain(store.list(&layout::optimized_dir())?)
        .map(|m| m.location.to_string())
        .collect();
    // The index first: which commits it has merged.
    let gen = latest.map(|g| {
        r.generation = g.generation;
        log::load(store, &g, codec).map_err(|e| problem(g.meta.location.as_ref(), &e))
    });
    let merged = match &gen {
        Some(Ok(x)) => Some(&x.manifest),
        _ => None,
    };
    check_commits(store, &existing, merged, &mut r);
    check_skipped(store, codec, &mut r)?;
    // The index and what it references.
    let gen = match gen {
        None => return Ok(r),
        Some(Err(p)) => {
            r.problems.push(p);
            return Ok(r);
        }
        Some(Ok(x)) => x,
    };
    check_head(store, r.generation, &gen.manifest, &mut r);
    // Segment footers are read afresh, not taken from the process cache.
    let idx = LoadedIndex::from_view(crate::segment::IndexView::new(store.clone(), gen).uncached());
    check_entries(&idx, &mut r);
    Ok(r)
}

/// An object store's head manifest ([`log::head`]), if it has one, is a copy of the newest
/// generation's manifest: one that does not parse, names another generation, or differs from
/// that generation's manifest is a problem (readers on object stores answer from it).
fn check_head(store: &Store, newest: u64, manifest: &log::Manifest, r: &mut CheckReport) {
    if store.is_local() || manifest.format < 2 {
        return;
    }
    let file = layout::head_file();
    let bytes = match store.get_opt(&file) {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => return r.problems.push(problem(file.as_ref(), &e)),
    };
    let fix = "pocaduck_consolidate replaces it";
    let msg = match log::Manifest::from_json(&bytes, &store.name, file.as_ref()) {
        Err(e) => format!("{e}; readers list index/ instead; {fix}"),
        Ok(h) if h.generation < newest => format!(
            "names generation {}, not the newest ({newest}): cold readers on this object store answer from generation {}; {fix}",
            h.generation, h.generation
        ),
        Ok(h) if h.generation > newest => {
            // Unless it was published since the listing.
            if log::latest(store).is_ok_and(|l| l.is_some_and(|l| l.generation >= h.generation)) {
                return;
            }
            format!(
                "names generation {}, which the store does not hold (the newest is {newest}); {fix}",
                h.generation
            )
        }
        Ok(h) if h != *manifest => format!(
            "differs from the manifest of generation {newest} it names; delete it (readers then list index/, and the next consolidate writes it again)"
        ),
        Ok(_) => return,
    };
    r.problems.push(Problem {
        file: file.to_string(),
        msg,
    });
}

/// Every commit segment of every worker decodes, and the parts a commit not merged into the index
/// yet references exist (a merged commit's live entries are in the index, checked below; its
/// superseded or optimized-away parts may have been vacuumed).
fn check_commits(
    store: &Store,
    existing: &HashSet<String>,
    merged: Option<&log::Manifest>,
    r: &mut CheckReport,
) {
    let mut commit_files: Vec<&String> = existing
        .iter()
        .filter(|p| layout::parse_commit_file(p).is_some())
        .collect();
    commit_files.sort();
    for f in commit_files {
        r.commits += 1;
        let decoded = store
            .get(&f.as_str().into())
            .and_then(|b| decode_segment(b, &store.name, f));
        match decoded {
            Err(e) => r.problems.push(problem(f, &e)),
            Ok(_) if is_merged(f, merged) => {}
            Ok(entries) => {
                let mut missing: Vec<&str> = entries
                    .iter()
                    .map(|e| e.part.as_str())
                    .filter(|p| !existing.contains(*p))
                    .collect();
                missing.sort_unstable();
                missing.dedup();
                for m in missing {
                    r.problems.push(Problem {
                        file: f.clone(),
                        msg: format!("references part '{m}', which is missing"),
                    });
                }
            }
        }
    }
}

/// Whether commit segment `path` is numbered at or below what the index `merged` of its worker.
fn is_merged(path: &str, merged: Option<&log::Manifest>) -> bool {
    let (Some((worker, seq)), Some(m)) = (layout::parse_commit_file(path), merged) else {
        return false;
    };
    seq <= m.last_commit(worker)
}

/// Commits that consolidate will never merge ([`log::skipped_commits`]).
fn check_skipped(store: &Store, codec: &dyn IndexCodec, r: &mut CheckReport) -> Result<()> {
    let commits: Vec<object_store::ObjectMeta> = store
        .list(&layout::workers_dir())?
        .into_iter()
        .filter(|m| m.location.as_ref().contains("/commits/"))
        .collect();
    let skipped = match log::skipped_commits(store, codec, &commits) {
        Ok(s) => s,
        Err(e) => {
            let file = match &e {
                Error::File { file, .. } => file.clone(),
                _ => "index".to_string(),
            };
            r.problems.push(problem(&file, &e));
            return Ok(());
        }
    };
    for c in skipped {
        r.problems.push(Problem {
            file: c.file,
            msg: format!(
                "commit {} of worker '{}' was written after generation {} had merged the worker's commits up to {}: consolidate will never merge it (the worker id was reused after its commits were deleted); write its rows again with this pocaduck, which numbers new commits after the merged ones",
                c.seq, c.worker, c.generation, c.merged
            ),
        });
    }
    Ok(())
}

/// Streams the index: every part it references opens with the store's columns and enough rows,
/// and every entry's rows read back as its label and block, inside its bounds.
fn check_entries(idx: &LoadedIndex, r: &mut CheckReport) {
    let want_schema = idx.schema.arrow();
    let cols: Vec<usize> = (0..idx.schema.part_columns()).collect();
    // Per part: its row count, or None when it cannot be read.
    let mut parts: HashMap<String, Option<u64>> = HashMap::new();
    let mut chunk: Vec<UnifiedEntry> = Vec::new();
    let mut rows = 0u64;
    let mut scan = idx.view.scan();
    loop {
        let next = match scan.next() {
            None => None,
            Some(Ok((_, v))) => Some(v),
            Some(Err(e)) => {
                let file = match &e {
                    Error::File { file, .. } => file.clone(),
                    _ => "index".to_string(),
                };
                r.problems.push(problem(&file, &e));
                None
            }
        };
        let done = next.is_none();
        for e in next.into_iter().flatten() {
            let info = parts.entry(e.entry.part.clone()).or_insert_with(|| {
                r.parts += 1;
                part_rows(idx, &e.entry.part, &want_schema, r)
            });
            let Some(n) = *info else { continue };
            if e.entry.row_start + e.entry.row_count > n {
                r.problems.push(Problem {
                    file: e.entry.part.clone(),
                    msg: format!(
                        "has {n} rows but the index references rows up to {}",
                        e.entry.row_start + e.entry.row_count
                    ),
                });
                parts.insert(e.entry.part.clone(), None);
                continue;
            }
            rows += e.entry.row_count;
            chunk.push(e);
        }
        if rows >= CHUNK_ROWS || (done && !chunk.is_empty()) {
            read_back(idx, &std::mem::take(&mut chunk), &cols, r);
            rows = 0;
        }
        if done {
            return;
        }
    }
}

/// Rows of a part, or `None` (and a problem) when it cannot be opened or has other columns.
fn part_rows(
    idx: &LoadedIndex,
    part: &str,
    want_schema: &arrow::datatypes::Schema,
    r: &mut CheckReport,
) -> Option<u64> {
    match idx.part_info(part) {
        Err(e) => {
            r.problems.push(problem(part, &e));
            None
        }
        Ok((rows, schema)) => {
            let cols = |s: &arrow::datatypes::Schema| -> Vec<String> {
                s.fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect()
            };
            let (names, want) = (cols(&schema), cols(want_schema));
            if names != want {
                r.problems.push(Problem {
                    file: part.to_string(),
                    msg: format!("has columns {names:?}, the store has {want:?}"),
                });
                return None;
            }
            Some(rows)
        }
    }
}

/// Reads `entries` back and verifies each.
fn read_back(idx: &LoadedIndex, entries: &[UnifiedEntry], cols: &[usize], r: &mut CheckReport) {
    // Batches of bounded string bytes (a label may hold more strings than one batch can).
    let schema = idx.projected(cols);
    let batches = idx
        .read_entry_rows(entries, cols)
        .and_then(|b| crate::bounded::concat(&schema, b, crate::bounded::STRING_BYTES));
    let batches = match batches {
        Ok(b) => b,
        Err(e) => {
            let file = match &e {
                Error::File { file, .. } => file.clone(),
                _ => entries[0].entry.part.clone(),
            };
            r.problems.push(problem(&file, &e));
            return;
        }
    };
    let mut starts = vec![0usize];
    for b in &batches {
        starts.push(starts[starts.len() - 1] + b.num_rows());
    }
    let total = starts[starts.len() - 1];
    // Rows off..off + n, as slices of the batches they span.
    let rows = |off: usize, n: usize| -> Vec<arrow::array::RecordBatch> {
        let mut pieces = Vec::new();
        let mut j = starts.partition_point(|&x| x <= off).saturating_sub(1);
        let mut pos = off;
        while pos < off + n {
            let take = (off + n).min(starts[j + 1]) - pos;
            pieces.push(batches[j].slice(pos - starts[j], take));
            pos += take;
            j += 1;
        }
        pieces
    };
    let mut off = 0usize;
    for ue in entries {
        let n = ue.entry.row_count as usize;
        if off + n > total {
            r.problems.push(Problem {
                file: ue.entry.part.clone(),
                msg: format!(
                    "rows {}..{} could not all be read",
                    ue.entry.row_start,
                    ue.entry.row_start + ue.entry.row_count
                ),
            });
            break;
        }
        let mut first = 0u64;
        let checked = rows(off, n).iter().try_for_each(|b| {
            let r = verify(b, ue, first);
            first += b.num_rows() as u64;
            r
        });
        if let Err(msg) = checked {
            r.problems.push(Problem {
                file: ue.entry.part.clone(),
                msg,
            });
        }
        off += n;
        r.entries += 1;
        r.points += ue.entry.row_count;
    }
}

fn problem(file: &str, e: &Error) -> Problem {
    Problem {
        file: file.to_string(),
        msg: e.to_string(),
    }
}

/// Checks rows of one entry (`b`, from its row `first` on): its label and block only,
/// coordinates inside its bounds.
fn verify(
    b: &arrow::array::RecordBatch,
    ue: &crate::index::UnifiedEntry,
    first: u64,
) -> std::result::Result<(), String> {
    let e = &ue.entry;
    let at = |r: usize| {
        format!(
            "row {} (entry of label {}, block {})",
            e.row_start + first + r as u64,
            e.label,
            e.block
        )
    };
    let labels = crate::schema::labels(b);
    if let Some(r) = (0..b.num_rows()).find(|&r| labels.is_null(r) || labels.value(r) != e.label) {
        return Err(format!("{} holds label {}", at(r), labels.value(r)));
    }
    let blocks = block_ids(b.column(col::BLOCK)).map_err(|x| x.to_string())?;
    if let Some(r) = blocks.iter().position(|x| *x != e.block) {
        return Err(format!("{} holds block {}", at(r), blocks[r]));
    }
    for (d, i) in col::XYZ.into_iter().enumerate() {
        let c = arrow::compute::cast(b.column(i), &DataType::Float64).map_err(|x| x.to_string())?;
        let v = c.as_primitive::<Float64Type>();
        if let Some(r) = (0..v.len())
            .find(|&r| v.is_null(r) || v.value(r) < e.bbox[d] || v.value(r) > e.bbox[d + 3])
        {
            return Err(format!(
                "{}: {} = {} is outside the indexed bounds {}..{}",
                at(r),
                ["x", "y", "z"][d],
                v.value(r),
                e.bbox[d],
                e.bbox[d + 3]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consolidate::consolidate;
    use crate::consolidate::tests::{write, JsonCodec};
    use crate::storage::OpenMode;
    use crate::writer::tests::rows;
    use std::path::{Path as FsPath, PathBuf};

    /// A store of two workers, consolidated; returns (dir, part files sorted).
    fn store() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let pts: Vec<[i32; 3]> = (0..500).map(|i| [i, i % 7, 3]).collect();
        let la: Vec<u64> = (0..500).map(|i| (i % 5) as u64).collect();
        write(name, "w1", &[rows(&la, "a", &pts)]);
        write(name, "w2", &[rows(&la, "b", &pts)]);
        consolidate(&Store::open(name, OpenMode::Existing).unwrap(), &JsonCodec).unwrap();
        let mut parts: Vec<PathBuf> = ["w1", "w2"]
            .iter()
            .flat_map(|w| std::fs::read_dir(dir.path().join(format!("workers/{w}/parts"))).unwrap())
            .map(|f| f.unwrap().path())
            .collect();
        parts.sort();
        (dir, parts)
    }

    fn run(dir: &FsPath) -> CheckReport {
        let store = Store::open(dir.to_str().unwrap(), OpenMode::Existing).unwrap();
        check(&store, &JsonCodec).unwrap()
    }

    fn rel(dir: &FsPath, p: &FsPath) -> String {
        p.strip_prefix(dir).unwrap().to_str().unwrap().to_string()
    }

    /// The problems' files, and that reading label 1 fails naming one of them (never panics).
    fn assert_found(dir: &FsPath, file: &str) {
        let r = run(dir);
        assert!(
            r.problems.iter().any(|p| p.file == file),
            "no problem reported for {file}: {:?}",
            r.problems
        );
        let res = std::panic::catch_unwind(|| {
            let name = dir.to_str().unwrap();
            crate::reader::open(name, &JsonCodec).and_then(|i| i.points(&[1], &[0, 1, 2, 3, 4]))
        });
        let res = res.expect("reading a corrupt store panicked");
        if file.ends_with(".parquet") && file.contains("/parts/") {
            let e = res
                .expect_err("reading a corrupt part succeeded")
                .to_string();
            assert!(e.contains(file), "{e}");
        }
    }

    #[test]
    fn healthy_store_has_no_problems() {
        let (dir, _) = store();
        let r = run(dir.path());
        assert_eq!(r.problems, vec![]);
        assert_eq!(
            (r.generation, r.commits, r.parts, r.entries, r.points),
            (1, 2, 2, 10, 1000)
        );
    }

    #[test]
    fn truncated_part_is_reported_with_its_name() {
        let (dir, parts) = store();
        let len = std::fs::metadata(&parts[0]).unwrap().len();
        for cut in [len / 2, len - 3, 10] {
            let bytes = std::fs::read(&parts[0]).unwrap();
            std::fs::write(&parts[0], &bytes[..cut as usize]).unwrap();
            assert_found(dir.path(), &rel(dir.path(), &parts[0]));
            std::fs::write(&parts[0], &bytes).unwrap();
            assert_eq!(run(dir.path()).problems, vec![]);
        }
    }

    #[test]
    fn garbled_part_is_reported_and_never_panics() {
        let (dir, parts) = store();
        let bytes = std::fs::read(&parts[1]).unwrap();
        let file = rel(dir.path(), &parts[1]);
        // Flip bytes at many places: footer, page headers, page data.
        let mut caught = 0;
        for pos in (4..bytes.len() - 4).step_by(bytes.len() / 40 + 1) {
            let mut b = bytes.clone();
            for x in &mut b[pos..(pos + 3).min(bytes.len() - 4)] {
                *x ^= 0x5a;
            }
            std::fs::write(&parts[1], &b).unwrap();
            let r = std::panic::catch_unwind(|| run(dir.path())).expect("check panicked");
            let res = std::panic::catch_unwind(|| {
                crate::reader::open(dir.path().to_str().unwrap(), &JsonCodec)
                    .and_then(|i| i.points(&[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4]))
                    .map(|b| b.iter().map(|x| x.num_rows()).sum::<usize>())
            })
            .expect("read panicked");
            if !r.problems.is_empty() {
                caught += 1;
                assert!(
                    r.problems.iter().all(|p| p.file == file),
                    "{:?}",
                    r.problems
                );
            } else {
                // Undetected flips must not change what is read (e.g. in unused statistics).
                assert_eq!(res.unwrap(), 1000);
            }
        }
        std::fs::write(&parts[1], &bytes).unwrap();
        assert!(caught > 10, "only {caught} corruptions detected");
    }

    #[test]
    fn missing_part_and_garbled_segment_and_index_are_reported() {
        let (dir, parts) = store();
        let part = rel(dir.path(), &parts[0]);
        std::fs::remove_file(&parts[0]).unwrap();
        let r = run(dir.path());
        assert!(
            r.problems.iter().any(|p| p.file == part),
            "{:?}",
            r.problems
        );
        // The index reports the missing part; the merged commit naming it is history (a vacuum
        // deletes superseded parts), so it is not reported again.
        assert!(
            !r.problems
                .iter()
                .any(|p| p.file == "workers/w1/commits/0000000001.parquet"),
            "{:?}",
            r.problems
        );
        // A commit not merged yet whose part is missing is reported.
        let name = dir.path().to_str().unwrap();
        write(name, "w3", &[rows(&[9], "c", &[[1, 2, 3]])]);
        let w3 = std::fs::read_dir(dir.path().join("workers/w3/parts"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::remove_file(&w3).unwrap();
        let r = run(dir.path());
        assert!(
            r.problems
                .iter()
                .any(|p| p.file == "workers/w3/commits/0000000001.parquet"
                    && p.msg.contains("which is missing")),
            "{:?}",
            r.problems
        );
        let seg = dir.path().join("workers/w2/commits/0000000001.parquet");
        std::fs::write(&seg, b"not parquet").unwrap();
        assert_found(dir.path(), "workers/w2/commits/0000000001.parquet");
        // A garbled index segment, then a garbled manifest.
        let segs: Vec<_> = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        let good = std::fs::read(&segs[0]).unwrap();
        let mut bad = good.clone();
        let mid = bad.len() / 3;
        bad[mid..mid + 64].fill(0x55);
        std::fs::write(&segs[0], &bad).unwrap();
        crate::segment::clear_caches();
        let seg_name = rel(dir.path(), &segs[0]);
        let r = run(dir.path());
        assert!(
            r.problems.iter().any(|p| p.file == seg_name),
            "{:?}",
            r.problems
        );
        std::fs::write(&segs[0], b"short").unwrap();
        crate::segment::clear_caches();
        assert_found(dir.path(), &seg_name);
        std::fs::write(&segs[0], &good).unwrap();
        std::fs::write(dir.path().join("index/0000000001.json"), b"{garbage").unwrap();
        assert_found(dir.path(), "index/0000000001.json");
    }

    #[test]
    fn swapped_parts_are_caught_by_content_checks() {
        // Both parts are valid Parquet of the right shape; w2's holds block "b" where the index
        // expects "a".
        let (dir, parts) = store();
        std::fs::copy(&parts[1], &parts[0]).unwrap();
        let r = run(dir.path());
        let file = rel(dir.path(), &parts[0]);
        assert!(
            r.problems
                .iter()
                .any(|p| p.file == file && p.msg.contains("holds block b")),
            "{:?}",
            r.problems
        );
    }
}
