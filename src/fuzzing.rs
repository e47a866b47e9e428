//! Entry points for the fuzz targets in `fuzz/` (and their smoke test): each feeds arbitrary
//! bytes to a reader and must return (an error is fine) without panicking.

use crate::error::Result;
use crate::index::{decode_segment, BlockId, SegmentEntry, UnifiedEntry, WorkerState};
use crate::reader::LoadedIndex;
use crate::storage::{OpenMode, Store};

/// Decodes `data` as a commit segment.
pub fn segment(data: &[u8]) -> Result<usize> {
    decode_segment(
        bytes::Bytes::copy_from_slice(data),
        "fuzz",
        "segment.parquet",
    )
    .map(|e| e.len())
}

/// Writes `data` as the only part of a store in `dir` whose index claims rows `0..rows` of it
/// for label 1 in block 0, then reads them back (all columns) and runs `pocaduck_check`'s
/// verification.
pub fn part(dir: &std::path::Path, data: &[u8], rows: u64) -> Result<usize> {
    std::fs::write(dir.join("p.parquet"), data)
        .map_err(|e| crate::error::Error::Internal(e.to_string()))?;
    let store = Store::open(dir.to_str().unwrap_or_default(), OpenMode::Existing)?;
    let schema =
        crate::schema::schema_for_input(&[const { arrow::datatypes::DataType::Int64 }; 5], &[])?;
    let mut m = crate::log::Manifest::empty(schema);
    m.generation = 1;
    m.workers = vec![WorkerState {
        worker: "w".into(),
        last_commit: 1,
    }];
    let gen = crate::log::Generation {
        manifest: m,
        legacy: Some(vec![UnifiedEntry {
            worker: 0,
            commit: 1,
            entry: SegmentEntry {
                label: 1,
                block: BlockId::Int(0),
                part: "p.parquet".into(),
                row_start: 0,
                row_count: rows,
                bbox: [f64::MIN, f64::MIN, f64::MIN, f64::MAX, f64::MAX, f64::MAX],
            },
        }]),
    };
    let idx = LoadedIndex::from_generation(store, gen);
    let got = idx.points(&[1], &[0, 1, 2, 3, 4])?;
    Ok(got.iter().map(|b| b.num_rows()).sum())
}

/// Writes `data` as the only index segment of a store in `dir` (a generation whose manifest
/// claims it for every label), then looks label 1 up and scans every label.
pub fn index_segment(dir: &std::path::Path, data: &[u8]) -> Result<usize> {
    let view = one_segment(dir, data, None, false)?;
    let mut n = view.entries(1)?.len();
    for r in view.scan() {
        n += r?.1.len();
    }
    Ok(n)
}

/// Reads `data` as an index segment's first row group through a row-group directory (as a
/// reader on an object store does, without the footer). Its first 11 bytes are the directory:
/// the row group's entry count (`u16`), the bytes of its lookup columns and of the whole row
/// group (`u32`s, little-endian, each at least 1, at most the bytes given) and the block type
/// (0: BIGINT, else VARCHAR); the rest is the file from its first row group on. Looks labels
/// 0, 1 and 2^40 up with and without the boxes.
pub fn index_row_group(dir: &std::path::Path, data: &[u8]) -> Result<usize> {
    let (head, body) = data.split_at(data.len().min(11));
    if head.len() < 11 || body.is_empty() {
        return Ok(0);
    }
    let n = |i: usize, w: usize| {
        let mut b = [0u8; 8];
        b[..w].copy_from_slice(&head[i..i + w]);
        u64::from_le_bytes(b).clamp(1, body.len() as u64)
    };
    let (rows, lookup, total) = (n(0, 2), n(2, 4), n(6, 4));
    let varchar = head[10] != 0;
    let mut file = b"PAR1".to_vec();
    file.extend_from_slice(body);
    let d = crate::segment::Directory {
        fences: vec![0, u64::MAX],
        starts: vec![4, 4 + total],
        lookup: vec![lookup.min(total)],
        rows: vec![rows],
    };
    let view = one_segment(dir, &file, Some(d.encode()), varchar)?;
    let mut n = 0;
    for with_bbox in [false, true] {
        n += view
            .lookup_through_directories(&[0, 1, 1 << 40], with_bbox)?
            .len();
    }
    Ok(n)
}

/// A generation of a store in `dir` (of integer blocks, or `varchar` ones) whose one segment
/// file is `data` (with the row-group directory `dir_text`), claimed for every label.
fn one_segment(
    dir: &std::path::Path,
    data: &[u8],
    dir_text: Option<String>,
    varchar: bool,
) -> Result<crate::segment::IndexView> {
    let io = |e: std::io::Error| crate::error::Error::Internal(e.to_string());
    std::fs::create_dir_all(dir.join("segments")).map_err(io)?;
    std::fs::write(dir.join("segments/s.parquet"), data).map_err(io)?;
    let store = Store::open(dir.to_str().unwrap_or_default(), OpenMode::Existing)?;
    use arrow::datatypes::DataType;
    let block = match varchar {
        true => DataType::Utf8,
        false => DataType::Int64,
    };
    let types = [
        DataType::Int64,
        block,
        DataType::Int64,
        DataType::Int64,
        DataType::Int64,
    ];
    let schema = crate::schema::schema_for_input(&types, &[])?;
    let mut m = crate::log::Manifest::empty(schema);
    m.generation = 1;
    m.workers = vec![WorkerState {
        worker: "w".into(),
        last_commit: 1,
    }];
    m.segments = vec![crate::log::SegmentRef {
        file: "segments/s.parquet".into(),
        bytes: data.len() as u64,
        entries: 0,
        lo: 0,
        hi: u64::MAX,
        run: 1,
        tier: 0,
        optimized: false,
        dir: dir_text,
    }];
    crate::segment::clear_caches();
    Ok(crate::segment::IndexView::new(
        store,
        crate::log::Generation {
            manifest: m,
            legacy: None,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs the fuzzers once crashed on (`fuzz/regressions/<target>/`) give errors, without a
    /// panic. `segment/oom-footer-list-size`: its footer declares field 2 an integer whose bytes,
    /// read as parquet-rs reads field 2 (a list header, whatever the declared type), claim 205
    /// million schema elements, which parquet-rs would reserve (19.7 GB) before reading one: the
    /// footer check must refuse it first. `index_segment/panic-arrow-schema-int-width`: its
    /// embedded Arrow schema makes arrow-ipc panic (an integer 10,485,824 bits wide).
    /// `segment/oom-dictionary-page-values`: a dictionary page header claims 1.15 billion values,
    /// which parquet-rs would allocate and fill (9.2 GB) before decoding the page.
    #[test]
    fn fuzz_regressions_give_errors() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        let work = tempfile::tempdir().unwrap();
        let mut n = 0;
        for target in ["segment", "index_segment", "index_row_group", "part"] {
            let Ok(dir) = std::fs::read_dir(root.join(target)) else {
                continue;
            };
            for f in dir {
                let path = f.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let r = std::panic::catch_unwind(|| match target {
                    "segment" => segment(&data).map(|_| ()),
                    "index_segment" => index_segment(work.path(), &data).map(|_| ()),
                    "index_row_group" => index_row_group(work.path(), &data).map(|_| ()),
                    // As fuzz/fuzz_targets/part.rs: the first byte × 7 is the rows claimed.
                    _ => match data.split_first() {
                        Some((r, body)) => part(work.path(), body, *r as u64 * 7).map(|_| ()),
                        None => part(work.path(), &data, 0).map(|_| ()),
                    },
                });
                let e = r
                    .unwrap_or_else(|_| panic!("{} panicked", path.display()))
                    .unwrap_err()
                    .to_string();
                let name = path.file_name().unwrap().to_str().unwrap();
                let want = match name {
                    "oom-footer-list-size" => {
                        "corrupt Parquet footer: a value of Thrift type 5 where the format has another"
                    }
                    "panic-arrow-schema-int-width" => "corrupt Arrow schema in the Parquet footer",
                    "oom-dictionary-page-values" => "value count",
                    _ => "",
                };
                assert!(e.contains(want), "{name}: {e}");
                n += 1;
            }
        }
        assert!(n >= 3);
    }

    /// A deterministic mutation smoke test of the fuzz entry points (the real fuzzing runs with
    /// `cargo fuzz`, see `scripts/fuzz.sh`).
    #[test]
    fn mutated_inputs_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("s");
        let name = name.to_str().unwrap();
        let pts: Vec<[i32; 3]> = (0..300).map(|i| [i, 2 * i, 3]).collect();
        crate::consolidate::tests::write(
            name,
            "w",
            &[crate::writer::tests::rows(&[1; 300], "0", &pts)],
        );
        let seg = std::fs::read(dir.path().join("s/workers/w/commits/0000000001.parquet")).unwrap();
        let part_path = std::fs::read_dir(dir.path().join("s/workers/w/parts"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let part_bytes = std::fs::read(part_path).unwrap();
        crate::consolidate::consolidate(
            &Store::open(name, OpenMode::Existing).unwrap(),
            &crate::consolidate::tests::JsonCodec,
        )
        .unwrap();
        let iseg_path = std::fs::read_dir(dir.path().join("s/segments"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let iseg = std::fs::read(iseg_path).unwrap();
        // The unmutated index segment reads back: 1 entry looked up, 1 scanned.
        let work2 = tempfile::tempdir().unwrap();
        assert_eq!(index_segment(work2.path(), &iseg).unwrap(), 2);
        // Its first row group, as `index_row_group` takes it (the directory's entry count and
        // lookup bytes, then the file from byte 4): label 1 found with and without boxes.
        let manifest: crate::log::Manifest = serde_json::from_slice(
            &std::fs::read(dir.path().join("s/index/0000000001.json")).unwrap(),
        )
        .unwrap();
        let r = &manifest.segments[0];
        let d = crate::segment::Directory::decode(r.dir.as_deref().unwrap(), r.bytes).unwrap();
        let mut rg = (d.rows[0] as u16).to_le_bytes().to_vec();
        rg.extend((d.lookup[0] as u32).to_le_bytes());
        rg.extend(((d.starts[1] - d.starts[0]) as u32).to_le_bytes());
        rg.push(1); // VARCHAR blocks
        rg.extend(&iseg[4..]);
        let work3 = tempfile::tempdir().unwrap();
        assert_eq!(index_row_group(work3.path(), &rg).unwrap(), 2);
        let work = tempfile::tempdir().unwrap();
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..800 {
            let (src, kind) = match i % 4 {
                0 => (&seg, 0),
                1 => (&part_bytes, 1),
                2 => (&iseg, 2),
                _ => (&rg, 3),
            };
            let mut b = src.clone();
            for _ in 0..1 + next() % 4 {
                let pos = (next() % b.len() as u64) as usize;
                match next() % 3 {
                    0 => b[pos] ^= 1 << (next() % 8),
                    1 => b.truncate(pos.max(1)),
                    _ => b[pos] = next() as u8,
                }
            }
            let r = std::panic::catch_unwind(|| match kind {
                0 => {
                    let _ = segment(&b);
                }
                1 => {
                    let _ = part(work.path(), &b, 300);
                }
                2 => {
                    let _ = index_segment(work2.path(), &b);
                }
                _ => {
                    let _ = index_row_group(work3.path(), &b);
                }
            });
            assert!(r.is_ok(), "panic on mutation {i}");
        }
    }
}
