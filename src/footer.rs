//! Parquet footers, parsed only after their bytes are checked.
//!
//! parquet-rs 58 sizes a vector from the element count a footer's Thrift list header claims
//! before it reads a single element (apache/arrow-rs#10920, fixed after 59.2; pocaduck cannot
//! move past arrow 58 while duckdb-rs pins it). A corrupt or hostile file whose footer claims
//! a list of 2^31 row groups makes the decoder allocate tens of GB, and the user's whole DuckDB
//! process dies: no error can be reported. Every footer pocaduck reads (commit segments, index
//! segments, parts) therefore goes through [`decode`], which first walks the Thrift compact
//! bytes of the footer and of every offset index it will load, and refuses:
//!
//! - a list, set or map that claims more elements than bytes are left (every element takes at
//!   least one byte), and a string or binary longer than the bytes left;
//! - a schema element claiming more children than the schema has elements;
//! - nesting deeper than [`MAX_DEPTH`], field types that do not exist, and truncated values.
//!
//! Walking is linear in the footer's size, so the decoder's allocations stay proportional to the
//! bytes actually present.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use crate::error::{Error, Result};
use crate::storage::Store;

/// Deepest nesting of structs, lists and maps accepted (Parquet's own footers nest about 6 deep).
pub const MAX_DEPTH: usize = 32;

/// What [`decode`] needs next.
#[derive(Debug)]
pub enum Footer {
    /// The last `n` bytes of the file are needed (more than the tail given).
    Need(u64),
    /// The file's metadata (with offset indexes when asked for and present).
    Meta(Box<ParquetMetaData>),
}

/// Decodes the metadata of a Parquet file of `size` bytes from its last `tail.len()` bytes,
/// after checking them (see the module documentation). With `offset_index`, also loads the
/// offset indexes (the page locations) when the file has them.
pub fn decode(tail: &Bytes, size: u64, offset_index: bool) -> std::result::Result<Footer, String> {
    std::panic::catch_unwind(|| decode_inner(tail, size, offset_index))
        .unwrap_or_else(|_| Err("corrupt Parquet footer: the decoder failed".into()))
}

fn decode_inner(
    tail: &Bytes,
    size: u64,
    offset_index: bool,
) -> std::result::Result<Footer, String> {
    if size < 12 {
        return Err(format!(
            "not a Parquet file: {size} bytes is too small to hold a footer"
        ));
    }
    if (tail.len() as u64) < 8 {
        return Ok(Footer::Need(8));
    }
    let t = &tail[tail.len() - 8..];
    match &t[4..] {
        b"PAR1" => {}
        b"PARE" => return Err("encrypted Parquet files are not supported".into()),
        _ => return Err("not a Parquet file: no PAR1 magic at its end".into()),
    }
    let meta_len = u64::from(u32::from_le_bytes([t[0], t[1], t[2], t[3]]));
    if meta_len + 12 > size {
        return Err(format!(
            "corrupt Parquet footer: it claims {meta_len} bytes of metadata in a file of {size} bytes"
        ));
    }
    if meta_len + 8 > tail.len() as u64 {
        return Ok(Footer::Need(meta_len + 8));
    }
    let meta_start = tail.len() - 8 - meta_len as usize;
    let footer = &tail[meta_start..tail.len() - 8];
    check_file_metadata(footer).map_err(|e| format!("corrupt Parquet footer: {e}"))?;
    let md = ParquetMetaDataReader::decode_metadata(footer)
        .map_err(|e| format!("corrupt Parquet footer: {e}"))?;
    if !offset_index {
        return Ok(Footer::Meta(Box::new(md)));
    }
    // Offset indexes lie before the footer; check each one the decoder will read.
    let footer_start = size - meta_len - 8;
    let tail_start = size - tail.len() as u64;
    let mut need = None::<u64>;
    for rg in md.row_groups() {
        for cc in rg.columns() {
            let (Some(off), Some(len)) = (cc.offset_index_offset(), cc.offset_index_length())
            else {
                continue;
            };
            let (Ok(off), Ok(len)) = (u64::try_from(off), u64::try_from(len)) else {
                return Err(format!(
                    "corrupt Parquet footer: offset index at {off} of {len} bytes"
                ));
            };
            if off.saturating_add(len) > footer_start {
                return Err(format!(
                    "corrupt Parquet footer: offset index at {off} of {len} bytes overlaps the footer at {footer_start}"
                ));
            }
            if off < tail_start {
                need = Some(need.map_or(off, |n: u64| n.min(off)));
                continue;
            }
            let s = (off - tail_start) as usize;
            check_offset_index(&tail[s..s + len as usize])
                .map_err(|e| format!("corrupt offset index at byte {off}: {e}"))?;
        }
    }
    if let Some(start) = need {
        return Ok(Footer::Need(size - start));
    }
    let mut r = ParquetMetaDataReader::new_with_metadata(md)
        .with_offset_index_policy(PageIndexPolicy::Optional);
    r.read_page_indexes_sized(tail, size)
        .map_err(|e| format!("corrupt offset index: {e}"))?;
    r.finish()
        .map(|m| Footer::Meta(Box::new(m)))
        .map_err(|e| format!("corrupt offset index: {e}"))
}

/// The Arrow view of decoded metadata (the Arrow schema stored in the footer is decoded here,
/// and arrow-ipc panics on some corrupt schemas: the panic becomes an error).
pub fn arrow_metadata(
    md: ParquetMetaData,
    opts: ArrowReaderOptions,
) -> std::result::Result<ArrowReaderMetadata, String> {
    std::panic::catch_unwind(move || ArrowReaderMetadata::try_new(Arc::new(md), opts))
        .map_err(|_| "corrupt Arrow schema in the Parquet footer: the decoder failed".to_string())?
        .map_err(|e| e.to_string())
}

/// Reads and decodes the footer of the file at `path` in `store` (see [`decode`]); `size` when
/// known saves a request on stores without suffix ranges. The first request fetches the last
/// `hint` bytes; a second one only if the footer is larger. Returns the metadata and the size.
/// Errors name the file and start with `what` (e.g. "index segment: ").
pub async fn load(
    store: &Store,
    path: &Path,
    size: Option<u64>,
    hint: u64,
    offset_index: bool,
    what: &str,
) -> Result<(ParquetMetaData, u64)> {
    let err =
        |e: &dyn std::fmt::Display| Error::file(&store.name, path.as_ref(), format!("{what}{e}"));
    let fetch = |n: u64, size: Option<u64>| async move {
        let range = match size {
            Some(s) => object_store::GetRange::Bounded(s - n.min(s)..s),
            None => object_store::GetRange::Suffix(n),
        };
        let opts = object_store::GetOptions {
            range: Some(range),
            ..Default::default()
        };
        let r = store.objects.get_opts(path, opts).await?;
        let size = r.meta.size;
        Ok::<_, object_store::Error>((r.bytes().await?, size))
    };
    let size = match size {
        Some(s) => Some(s),
        None if store.suffix_ranges() => None,
        // Azure serves no suffix ranges: ask for the size first.
        None => Some(store.objects.head(path).await.map_err(|e| err(&e))?.size),
    };
    let (mut tail, size) = fetch(hint, size).await.map_err(|e| err(&e))?;
    loop {
        match decode(&tail, size, offset_index).map_err(|e| err(&e))? {
            Footer::Meta(m) => return Ok((*m, size)),
            Footer::Need(n) if n > tail.len() as u64 && n <= size => {
                tail = fetch(n, Some(size)).await.map_err(|e| err(&e))?.0;
            }
            Footer::Need(n) => {
                return Err(err(&format!(
                    "corrupt Parquet footer: needs the last {n} bytes of a {size}-byte file"
                )))
            }
        }
    }
}

/// Most values a page may claim. parquet-rs sizes a dictionary by its page header's value count
/// before decoding it (a corrupt count of 2^30 made it fill 9 GB); pocaduck writes pages of at
/// most 8,192 rows, parquet-rs' defaults at most 20,000 rows and 1 MiB dictionaries.
pub const MAX_PAGE_VALUES: i64 = 1 << 22;
/// Largest uncompressed page accepted (parquet-rs allocates and fills it before decompressing).
pub const MAX_PAGE_BYTES: i64 = 256 << 20;

/// Checks that `buf` is a sequence of whole Parquet pages (as parquet-rs fetches them: a column
/// chunk, or single pages), each header well-formed with sizes and a value count within bounds
/// and its data inside `buf`.
pub fn check_pages(buf: &[u8]) -> std::result::Result<(), String> {
    let mut pos = 0usize;
    while pos < buf.len() {
        pos = checked_page(buf, pos, "a column chunk")?.1;
    }
    Ok(())
}

/// The header of the page at `pos` of `buf` (part of `what`), walked and checked: sizes and a
/// value count within bounds and the page's data inside `buf`. Returns it and where the page
/// ends.
fn checked_page(
    buf: &[u8],
    pos: usize,
    what: &str,
) -> std::result::Result<(PageSizes, usize), String> {
    let mut w = Walk {
        buf: &buf[pos..],
        pos: 0,
    };
    let h = w
        .page_header()
        .map_err(|e| format!("corrupt page header at byte {pos} of {what}: {e}"))?;
    let bad = |field: &str, v: i64, max: i64| {
        format!("corrupt page header at byte {pos} of {what}: {field} {v} (at most {max} accepted)")
    };
    if !(0..=MAX_PAGE_BYTES).contains(&h.uncompressed) {
        return Err(bad("uncompressed size", h.uncompressed, MAX_PAGE_BYTES));
    }
    if !(0..=MAX_PAGE_VALUES).contains(&h.values) {
        return Err(bad("value count", h.values, MAX_PAGE_VALUES));
    }
    let left = (buf.len() - pos - w.pos) as i64;
    if !(0..=left).contains(&h.compressed) {
        return Err(bad("compressed size", h.compressed, left));
    }
    let end = pos + w.pos + h.compressed as usize;
    Ok((h, end))
}

/// Splits `buf`, the column chunks of one row group laid end to end (as parquet-rs writes
/// them), into its first `columns` chunks of `rows` values each, without the file's footer:
/// a chunk is its pages (a dictionary page, then data pages) until its data pages hold `rows`
/// values. Every header is checked as by [`check_pages`]. Returns each chunk's (offset,
/// length). Only flat, non-null columns have one value per row; pocaduck's index segments have
/// nothing else.
pub fn split_chunks(
    buf: &[u8],
    rows: i64,
    columns: usize,
) -> std::result::Result<Vec<(usize, usize)>, String> {
    let mut out = Vec::with_capacity(columns);
    let mut pos = 0usize;
    for c in 0..columns {
        let (start, mut values) = (pos, 0i64);
        while values < rows {
            if pos >= buf.len() {
                return Err(format!(
                    "column {c} ends after {values} of {rows} values, at byte {pos} of {}",
                    buf.len()
                ));
            }
            let (h, end) = checked_page(buf, pos, "a row group")?;
            if h.kind == DICTIONARY_PAGE {
                if pos != start {
                    return Err(format!(
                        "a dictionary page after data pages at byte {pos} of a row group"
                    ));
                }
            } else {
                values += h.values;
            }
            pos = end;
        }
        if values != rows {
            return Err(format!(
                "column {c} holds {values} values where its row group has {rows}"
            ));
        }
        out.push((start, pos - start));
    }
    Ok(out)
}

/// Checks every page of every column chunk of a whole file in memory, given its metadata.
pub fn check_file_pages(file: &[u8], md: &ParquetMetaData) -> std::result::Result<(), String> {
    for rg in md.row_groups() {
        for cc in rg.columns() {
            let (start, len) = cc.byte_range();
            let end = start.saturating_add(len);
            if end > file.len() as u64 {
                return Err(format!(
                    "corrupt Parquet footer: a column chunk at bytes {start}..{end} of a {}-byte file",
                    file.len()
                ));
            }
            check_pages(&file[start as usize..end as usize])?;
        }
    }
    Ok(())
}

/// An [`AsyncFileReader`](parquet::arrow::async_reader::AsyncFileReader) that checks the pages
/// of every byte range it returns ([`check_pages`]) before parquet-rs decodes them. The arrow
/// reader only asks for whole column chunks or whole pages once it has the metadata.
pub struct CheckedPages(pub Box<dyn parquet::arrow::async_reader::AsyncFileReader>);

impl parquet::arrow::async_reader::AsyncFileReader for CheckedPages {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let f = self.0.get_bytes(range);
        Box::pin(async move {
            let b = f.await?;
            check_pages(&b).map_err(parquet::errors::ParquetError::General)?;
            Ok(b)
        })
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let f = self.0.get_byte_ranges(ranges);
        Box::pin(async move {
            let bs = f.await?;
            for b in &bs {
                check_pages(b).map_err(parquet::errors::ParquetError::General)?;
            }
            Ok(bs)
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        self.0.get_metadata(options)
    }
}

/// The sizes and value count of a page header.
#[derive(Default)]
struct PageSizes {
    uncompressed: i64,
    compressed: i64,
    values: i64,
    /// The page type (Thrift `PageType`: 0 data, 2 dictionary, 3 data v2).
    kind: i64,
}

/// Thrift `PageType::DICTIONARY_PAGE`.
const DICTIONARY_PAGE: i64 = 2;

/// Thrift compact-protocol type codes.
mod ty {
    pub const STOP: u8 = 0;
    pub const TRUE: u8 = 1;
    pub const FALSE: u8 = 2;
    pub const BYTE: u8 = 3;
    pub const I16: u8 = 4;
    pub const I32: u8 = 5;
    pub const I64: u8 = 6;
    pub const DOUBLE: u8 = 7;
    pub const BINARY: u8 = 8;
    pub const LIST: u8 = 9;
    pub const SET: u8 = 10;
    pub const MAP: u8 = 11;
    pub const STRUCT: u8 = 12;
}

/// A cursor over Thrift compact bytes that checks every count against the bytes left.
struct Walk<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The walk's result: errors are boxed so that the hot path returns one word.
type Check<T = ()> = std::result::Result<T, Box<String>>;

impl<'a> Walk<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Check<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Check<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift.min(63);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Box::new(format!(
            "varint longer than 10 bytes at byte {}",
            self.pos
        )))
    }

    fn zigzag(&mut self) -> Check<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn skip(&mut self, n: u64) -> Check {
        if n > self.left() as u64 {
            return Err(Box::new(format!(
                "{n} bytes claimed at byte {} with {} left",
                self.pos,
                self.left()
            )));
        }
        self.pos += n as usize;
        Ok(())
    }

    /// A count of elements that each take at least one byte.
    fn count(&mut self, n: u64, what: &str) -> Check<u64> {
        if n > self.left() as u64 {
            return Err(Box::new(format!(
                "a {what} of {n} elements at byte {} with {} bytes left",
                self.pos,
                self.left()
            )));
        }
        Ok(n)
    }

    /// Reads a list or set header: (element count, element type).
    fn list_header(&mut self) -> Check<(u64, u8)> {
        let h = self.byte()?;
        let n = match h >> 4 {
            15 => self.varint()?,
            n => u64::from(n),
        };
        Ok((self.count(n, "list")?, h & 0x0f))
    }

    /// Reads a field header: `None` at the struct's end, else (field id, type).
    fn field_header(&mut self, last: &mut i64) -> Check<Option<(i64, u8)>> {
        let h = self.byte()?;
        let t = h & 0x0f;
        if t == ty::STOP {
            return Ok(None);
        }
        let id = match h >> 4 {
            0 => self.zigzag()?,
            d => *last + i64::from(d),
        };
        if i16::try_from(id).is_err() {
            return Err(Box::new(format!(
                "field id {id} out of range at byte {}",
                self.pos
            )));
        }
        *last = id;
        Ok(Some((id, t)))
    }

    /// Skips one value of type `t`.
    fn value(&mut self, t: u8, depth: usize) -> Check {
        if depth > MAX_DEPTH {
            return Err(Box::new(format!("nesting deeper than {MAX_DEPTH}")));
        }
        match t {
            ty::TRUE | ty::FALSE => Ok(()),
            ty::BYTE => self.skip(1),
            ty::I16 | ty::I32 | ty::I64 => self.varint().map(|_| ()),
            ty::DOUBLE => self.skip(8),
            ty::BINARY => {
                let n = self.varint()?;
                self.skip(n)
            }
            ty::LIST | ty::SET => {
                let (n, et) = self.list_header()?;
                for _ in 0..n {
                    // Booleans in a list take a byte each.
                    match et {
                        ty::TRUE | ty::FALSE => self.skip(1)?,
                        _ => self.value(et, depth + 1)?,
                    }
                }
                Ok(())
            }
            ty::MAP => {
                let n = self.varint()?;
                let n = self.count(n, "map")?;
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                for _ in 0..n {
                    self.value(kv >> 4, depth + 1)?;
                    self.value(kv & 0x0f, depth + 1)?;
                }
                Ok(())
            }
            ty::STRUCT => self.fields(depth + 1, |w, _, t| w.value(t, depth + 1)),
            _ => Err(Box::new(format!(
                "unknown Thrift type {t} at byte {}",
                self.pos
            ))),
        }
    }

    /// Walks a struct's fields to its end, handing each (id, type) to `f`, which must consume
    /// the value.
    fn fields(&mut self, depth: usize, mut f: impl FnMut(&mut Self, i64, u8) -> Check) -> Check {
        if depth > MAX_DEPTH {
            return Err(Box::new(format!("nesting deeper than {MAX_DEPTH}")));
        }
        let mut last = 0;
        while let Some((id, t)) = self.field_header(&mut last)? {
            f(self, id, t)?;
        }
        Ok(())
    }
}

/// The type pocaduck's check expects for a field or list element. parquet-rs reads a field it
/// knows by its id alone, whatever type its header declares, so a footer whose field 2 declares an
/// integer is read as a list header: every field parquet-rs knows must have its declared type
/// checked, or the check and the decoder part ways.
#[derive(Clone, Copy)]
enum T {
    Bool,
    Byte,
    /// i16, i32 or i64 (and enums): a varint either way.
    Int,
    Double,
    /// Binary or string.
    Bin,
    List(&'static T),
    /// A struct or union with its known fields; others are skipped by their declared type.
    Struct(&'static [(i16, T)]),
    /// `SchemaElement.num_children`: at most the schema's number of elements.
    Children,
}

impl T {
    fn wire_ok(self, wire: u8) -> bool {
        match self {
            T::Bool => wire == ty::TRUE || wire == ty::FALSE,
            T::Byte => wire == ty::BYTE,
            T::Int | T::Children => matches!(wire, ty::I16 | ty::I32 | ty::I64),
            T::Double => wire == ty::DOUBLE,
            T::Bin => wire == ty::BINARY,
            T::List(_) => wire == ty::LIST || wire == ty::SET,
            T::Struct(_) => wire == ty::STRUCT,
        }
    }
}

/// The Parquet footer's Thrift schema (parquet.thrift, as parquet-rs 58 reads it).
mod schema {
    use super::T::{self, *};
    const EMPTY: T = Struct(&[]);
    const KEY_VALUE: T = Struct(&[(1, Bin), (2, Bin)]);
    const TIME_UNIT: T = Struct(&[(1, EMPTY), (2, EMPTY), (3, EMPTY)]);
    const LOGICAL_TYPE: T = Struct(&[
        (1, EMPTY),
        (2, EMPTY),
        (3, EMPTY),
        (4, EMPTY),
        (5, Struct(&[(1, Int), (2, Int)])),
        (6, EMPTY),
        (7, Struct(&[(1, Bool), (2, TIME_UNIT)])),
        (8, Struct(&[(1, Bool), (2, TIME_UNIT)])),
        (10, Struct(&[(1, Byte), (2, Bool)])),
        (11, EMPTY),
        (12, EMPTY),
        (13, EMPTY),
        (14, EMPTY),
        (15, EMPTY),
        (16, Struct(&[(1, Byte)])),
        (17, Struct(&[(1, Bin)])),
        (18, Struct(&[(1, Bin), (2, Int)])),
    ]);
    const SCHEMA_ELEMENT: T = Struct(&[
        (1, Int),
        (2, Int),
        (3, Int),
        (4, Bin),
        (5, Children),
        (6, Int),
        (7, Int),
        (8, Int),
        (9, Int),
        (10, LOGICAL_TYPE),
    ]);
    const STATISTICS: T = Struct(&[
        (1, Bin),
        (2, Bin),
        (3, Int),
        (4, Int),
        (5, Bin),
        (6, Bin),
        (7, Bool),
        (8, Bool),
    ]);
    const SIZE_STATISTICS: T = Struct(&[(1, Int), (2, List(&Int)), (3, List(&Int))]);
    const BOUNDING_BOX: T = Struct(&[
        (1, Double),
        (2, Double),
        (3, Double),
        (4, Double),
        (5, Double),
        (6, Double),
        (7, Double),
        (8, Double),
    ]);
    const COLUMN_META_DATA: T = Struct(&[
        (1, Int),
        (2, List(&Int)),
        (3, List(&Bin)),
        (4, Int),
        (5, Int),
        (6, Int),
        (7, Int),
        (8, List(&KEY_VALUE)),
        (9, Int),
        (10, Int),
        (11, Int),
        (12, STATISTICS),
        (13, List(&Struct(&[(1, Int), (2, Int), (3, Int)]))),
        (14, Int),
        (15, Int),
        (16, SIZE_STATISTICS),
        (17, Struct(&[(1, BOUNDING_BOX), (2, List(&Int))])),
    ]);
    const COLUMN_CRYPTO_META_DATA: T =
        Struct(&[(1, EMPTY), (2, Struct(&[(1, List(&Bin)), (2, Bin)]))]);
    const COLUMN_CHUNK: T = Struct(&[
        (1, Bin),
        (2, Int),
        (3, COLUMN_META_DATA),
        (4, Int),
        (5, Int),
        (6, Int),
        (7, Int),
        (8, COLUMN_CRYPTO_META_DATA),
        (9, Bin),
    ]);
    const ROW_GROUP: T = Struct(&[
        (1, List(&COLUMN_CHUNK)),
        (2, Int),
        (3, Int),
        (4, List(&Struct(&[(1, Int), (2, Bool), (3, Bool)]))),
        (5, Int),
        (6, Int),
        (7, Int),
    ]);
    const AES: T = Struct(&[(1, Bin), (2, Bin), (3, Bool)]);
    pub const FILE_META_DATA: T = Struct(&[
        (1, Int),
        (2, List(&SCHEMA_ELEMENT)),
        (3, Int),
        (4, List(&ROW_GROUP)),
        (5, List(&KEY_VALUE)),
        (6, Bin),
        (7, List(&Struct(&[(1, EMPTY)]))),
        (8, Struct(&[(1, AES), (2, AES)])),
        (9, Bin),
    ]);
    /// The headers inside a `PageHeader` (fields 5 to 8); field 1 of each is read apart.
    pub const PAGE_HEADER: T = Struct(&[
        (1, Int),
        (2, Int),
        (3, Int),
        (4, Int),
        (
            5,
            Struct(&[(1, Int), (2, Int), (3, Int), (4, Int), (5, STATISTICS)]),
        ),
        (6, EMPTY),
        (7, Struct(&[(1, Int), (2, Int), (3, Bool)])),
        (
            8,
            Struct(&[
                (1, Int),
                (2, Int),
                (3, Int),
                (4, Int),
                (5, Int),
                (6, Int),
                (7, Bool),
                (8, STATISTICS),
            ]),
        ),
    ]);
    pub const OFFSET_INDEX: T = Struct(&[
        (1, List(&Struct(&[(1, Int), (2, Int), (3, Int)]))),
        (2, List(&Int)),
    ]);
}

impl Walk<'_> {
    /// Walks one value of expected type `t` whose wire type is `wire`; `list_len` is the length
    /// of the innermost enclosing list.
    fn typed(&mut self, t: T, wire: u8, depth: usize, list_len: u64) -> Check {
        if depth > MAX_DEPTH {
            return Err(Box::new(format!("nesting deeper than {MAX_DEPTH}")));
        }
        if !t.wire_ok(wire) {
            return Err(Box::new(format!(
                "a value of Thrift type {wire} where the format has another, at byte {}",
                self.pos
            )));
        }
        match t {
            T::List(et) => {
                let (n, ew) = self.list_header()?;
                for _ in 0..n {
                    match ew {
                        ty::TRUE | ty::FALSE if et.wire_ok(ew) => self.skip(1)?,
                        _ => self.typed(*et, ew, depth + 1, n)?,
                    }
                }
                Ok(())
            }
            T::Struct(known) => self.fields(depth + 1, |w, id, wire| match field(known, id) {
                // Scalars inline: most fields are integers.
                Some(T::Int) if T::Int.wire_ok(wire) => w.varint().map(|_| ()),
                Some(t) => w.typed(t, wire, depth + 1, list_len),
                None => w.value(wire, depth + 1),
            }),
            T::Children => {
                let c = self.zigzag()?;
                if c < 0 || c as u64 > list_len {
                    return Err(Box::new(format!(
                        "a schema element claims {c} children in a schema of {list_len} elements"
                    )));
                }
                Ok(())
            }
            _ => self.value(wire, depth),
        }
    }
}

impl Walk<'_> {
    /// Walks a `PageHeader` (checked against [`schema::PAGE_HEADER`]), returning its sizes and
    /// the value count of its data, dictionary or v2 header.
    fn page_header(&mut self) -> Check<PageSizes> {
        let T::Struct(known) = schema::PAGE_HEADER else {
            return Err(Box::new("page header schema".to_string()));
        };
        let mut p = PageSizes {
            uncompressed: -1,
            compressed: -1,
            values: 0,
            kind: -1,
        };
        self.fields(1, |w, id, wire| {
            let Some(t) = field(known, id) else {
                return w.value(wire, 1);
            };
            if !t.wire_ok(wire) {
                return Err(Box::new(format!(
                    "a value of Thrift type {wire} where the format has another, at byte {}",
                    w.pos
                )));
            }
            match (id, t) {
                (1, _) => p.kind = w.zigzag()?,
                (2, _) => p.uncompressed = w.zigzag()?,
                (3, _) => p.compressed = w.zigzag()?,
                (5 | 7 | 8, T::Struct(inner)) => w.fields(2, |w, id, wire| {
                    if id == 1 && T::Int.wire_ok(wire) {
                        p.values = p.values.max(w.zigzag()?);
                        return Ok(());
                    }
                    match field(inner, id) {
                        Some(t) => w.typed(t, wire, 2, 0),
                        None => w.value(wire, 2),
                    }
                })?,
                _ => w.typed(t, wire, 1, 0)?,
            }
            Ok(())
        })?;
        Ok(p)
    }
}

/// The type of field `id` in a struct's table (ids are mostly 1, 2, 3, …: tried by position
/// first).
fn field(known: &[(i16, T)], id: i64) -> Option<T> {
    match usize::try_from(id - 1).ok().and_then(|i| known.get(i)) {
        Some(&(k, t)) if i64::from(k) == id => Some(t),
        _ => known
            .iter()
            .find(|(k, _)| i64::from(*k) == id)
            .map(|&(_, t)| t),
    }
}

/// Checks a Thrift struct of type `t` at the start of `buf`.
fn check(buf: &[u8], t: T) -> Check {
    Walk { buf, pos: 0 }.typed(t, ty::STRUCT, 0, 0)
}

/// Checks a Parquet `FileMetaData` (the footer).
pub fn check_file_metadata(buf: &[u8]) -> Check {
    check(buf, schema::FILE_META_DATA)
}

/// Checks a Parquet `OffsetIndex`.
pub fn check_offset_index(buf: &[u8]) -> Check {
    check(buf, schema::OFFSET_INDEX)
}

/// Checks any Thrift struct at the start of `buf` (counts and lengths only).
pub fn check_struct(buf: &[u8]) -> Check {
    Walk { buf, pos: 0 }.value(ty::STRUCT, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, UInt64Array};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    fn file() -> Vec<u8> {
        let a: ArrayRef = Arc::new(UInt64Array::from_iter_values(0..5000));
        let b = RecordBatch::try_from_iter([("label", a)]).unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(1000))
            .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
                "k".into(),
                "v".to_string(),
            )]))
            .build();
        let mut out = Vec::new();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(&mut out, b.schema(), Some(props)).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
        out
    }

    fn footer(f: &[u8]) -> &[u8] {
        let n = u32::from_le_bytes(f[f.len() - 8..f.len() - 4].try_into().unwrap()) as usize;
        &f[f.len() - 8 - n..f.len() - 8]
    }

    #[test]
    fn real_footers_pass_and_decode_with_offset_indexes() {
        let f = file();
        check_file_metadata(footer(&f)).unwrap();
        let all = Bytes::from(f.clone());
        let Footer::Meta(m) = decode(&all, f.len() as u64, true).unwrap() else {
            panic!("the whole file was given");
        };
        assert_eq!(m.num_row_groups(), 5);
        assert_eq!(m.offset_index().unwrap().len(), 5);
        // A tail holding the footer but not the offset indexes asks for them.
        let short = all.slice(f.len() - footer(&f).len() - 8..);
        match decode(&short, f.len() as u64, true).unwrap() {
            Footer::Need(n) => assert!(n > short.len() as u64 && n < f.len() as u64),
            Footer::Meta(_) => panic!("the offset indexes are not in the tail"),
        }
        let Footer::Meta(m) = decode(&short, f.len() as u64, false).unwrap() else {
            panic!("the footer is in the tail");
        };
        assert!(m.offset_index().is_none());
        // A tail too short for the footer asks for exactly footer + 8 bytes.
        match decode(&all.slice(f.len() - 20..), f.len() as u64, false).unwrap() {
            Footer::Need(n) => assert_eq!(n, footer(&f).len() as u64 + 8),
            Footer::Meta(_) => panic!("the footer is not in the tail"),
        }
    }

    #[test]
    fn pages_are_checked() {
        let f = file();
        let all = Bytes::from(f.clone());
        let Footer::Meta(m) = decode(&all, f.len() as u64, false).unwrap() else {
            panic!("whole file");
        };
        check_file_pages(&f, &m).unwrap();
        let (start, len) = m.row_group(0).column(0).byte_range();
        let chunk = &f[start as usize..(start + len) as usize];
        check_pages(chunk).unwrap();
        // A truncated chunk: the last page's data runs past the end.
        let e = check_pages(&chunk[..chunk.len() - 1]).unwrap_err();
        assert!(e.contains("compressed size"), "{e}");
        // PageHeader { 1: DICTIONARY_PAGE, 2: 16, 3: 0, 7: { 1: num_values = 2^30, 2: PLAIN } }
        let mut h = vec![0x15, 0x04, 0x15, 0x20, 0x15, 0x00, 0x4c, 0x15];
        h.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x08]);
        h.extend_from_slice(&[0x15, 0x00, 0x00, 0x00]);
        let e = check_pages(&h).unwrap_err();
        assert!(e.contains("value count 1073741824"), "{e}");
        // The same header claiming 2 values passes.
        let ok = [
            0x15, 0x04, 0x15, 0x20, 0x15, 0x00, 0x4c, 0x15, 0x04, 0x15, 0x00, 0x00, 0x00,
        ];
        assert_eq!(check_pages(&ok), Ok(()));
        // An uncompressed size beyond the bound.
        let big = [
            0x15, 0x00, 0x15, 0x80, 0x80, 0x80, 0x80, 0x08, 0x15, 0x00, 0x00,
        ];
        assert!(check_pages(&big).unwrap_err().contains("uncompressed size"));
    }

    /// FileMetaData { 1: version i32 = 1, 2: schema list<struct> claiming `n` elements }
    fn huge_list_footer(n: u32) -> Vec<u8> {
        let mut v = vec![0x15, 0x02, 0x19, 0xfc];
        let mut n = n;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                v.push(b);
                break;
            }
            v.push(b | 0x80);
        }
        v.extend_from_slice(&[0x00, 0x00]);
        v
    }

    fn with_footer(meta: &[u8]) -> Bytes {
        let mut f = b"PAR1".to_vec();
        f.extend_from_slice(meta);
        f.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        f.extend_from_slice(b"PAR1");
        Bytes::from(f)
    }

    #[test]
    fn huge_list_counts_are_refused_before_the_decoder_allocates() {
        // The decoder would reserve 2^31 schema elements (about 200 GB) for this footer.
        let f = with_footer(&huge_list_footer(1 << 31));
        let e = decode(&f, f.len() as u64, false).unwrap_err();
        assert!(e.contains("a list of 2147483648 elements"), "{e}");
        // The same footer claiming one element is walked and handed to the decoder.
        let f = with_footer(&huge_list_footer(1));
        assert_eq!(check_file_metadata(footer(&f)), Ok(()));
        let e = decode(&f, f.len() as u64, false).unwrap_err();
        assert!(!e.contains("elements at byte"), "{e}");
    }

    #[test]
    fn corrupt_counts_lengths_and_depths_are_refused() {
        // A binary longer than the bytes left.
        assert!(check_struct(&[0x18, 0x7f, 0x00])
            .unwrap_err()
            .contains("127 bytes"));
        // A map of 100 entries in 3 bytes.
        assert!(check_struct(&[0x1b, 0x64, 0x55, 0x00])
            .unwrap_err()
            .contains("a map of 100"));
        // Structs nested deeper than the limit.
        let mut deep = vec![0x1c; MAX_DEPTH + 2];
        deep.extend(vec![0; MAX_DEPTH + 3]);
        assert!(check_struct(&deep).unwrap_err().contains("deeper"));
        // Unknown type, truncated input, overlong varint.
        assert!(check_struct(&[0x1d]).unwrap_err().contains("unknown"));
        assert!(check_struct(&[0x15]).unwrap_err().contains("truncated"));
        assert!(check_struct(&[
            0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ])
        .unwrap_err()
        .contains("varint"));
        // A schema element with more children than the schema has elements:
        // FileMetaData { 2: [ SchemaElement { 5: num_children = 1000 } ] }.
        let meta = [0x29, 0x1c, 0x55, 0xd0, 0x0f, 0x00, 0x00];
        assert!(check_file_metadata(&meta)
            .unwrap_err()
            .contains("claims 1000 children"));
        // A known field with another type than the format's: the decoder would read field 2
        // (the schema) as a list header whatever its declared type.
        let meta = [0x25, 0xf5, 0xff, 0xff, 0xff, 0x61, 0x00];
        assert!(check_file_metadata(&meta)
            .unwrap_err()
            .contains("a value of Thrift type 5 where the format has another"));
        // Unknown fields are skipped by their declared type, counts still checked.
        assert_eq!(check_file_metadata(&[0x0c, 0x40, 0x00, 0x00]), Ok(()));
        assert!(check_file_metadata(&[0x0c, 0x40, 0x19, 0x7c, 0x00, 0x00])
            .unwrap_err()
            .contains("a list of 7 elements"));
        // An offset index whose page locations are integers, and a real-looking one.
        assert!(check_offset_index(&[0x15, 0x02, 0x00])
            .unwrap_err()
            .contains("type 5"));
        assert_eq!(
            check_offset_index(&[0x19, 0x1c, 0x16, 0x08, 0x15, 0x10, 0x16, 0x00, 0x00, 0x00]),
            Ok(())
        );
        // Bad magic and lengths are named.
        let f = Bytes::from_static(b"PAR1\0\0\0\0\0\0\0\0XXXX");
        assert!(decode(&f, 16, false).unwrap_err().contains("no PAR1"));
        let f = with_footer(&[0x00]);
        let mut v = f.to_vec();
        let n = v.len();
        v[n - 8..n - 4].copy_from_slice(&1000u32.to_le_bytes());
        let e = decode(&Bytes::from(v), n as u64, false).unwrap_err();
        assert!(e.contains("claims 1000 bytes of metadata"), "{e}");
    }
}
