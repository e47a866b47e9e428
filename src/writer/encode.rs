//! Encoding a session's buffers: writing a job's rows in (label, block) order (see
//! [`super::group`]) into part files with an index entry per (label, block) run and its bounding
//! box, and the encoder thread that does it.

use super::gather::Gather;
use super::group::{Distinct, Grouping};
use super::*;
use crate::schema::ColumnType;
use arrow::array::PrimitiveArray;
use arrow::buffer::{Buffer, MutableBuffer, ScalarBuffer};

/// Rows encoded between part size checks.
const SLICE_ROWS: usize = 8192;

/// The index entries of one encoded buffer (a job), kept encoded as commit segment pieces of
/// at most [`PIECE_ENTRIES`] entries (about 20 bytes an entry instead of about 200 as
/// [`SegmentEntry`] structs) until the commit concatenates the pieces. Entries never span two jobs, so a statement's jobs can be dropped.
/// Once an encoder holds more than `entries_in_memory` bytes of pieces, it spills them to a
/// temporary file of its own (unlinked: it goes when the last piece in it is dropped), so a long
/// session's memory does not grow with its entries.
pub(super) struct JobEntries {
    /// [`encode_segment`]'s bytes of each [`PIECE_ENTRIES`] entries, or where they were spilled.
    pieces: Vec<Piece>,
    pub(super) count: usize,
    /// The parts its entries reference.
    pub(super) parts: Vec<String>,
}

/// Where a job's encoded entries are.
enum Piece {
    Memory(Bytes),
    /// `len` bytes at `offset` of a temporary file.
    Spilled {
        file: Arc<std::fs::File>,
        offset: u64,
        len: usize,
    },
}

/// The error of a temporary file that could not be written or read back.
fn spill_error(what: &str, e: std::io::Error) -> Error {
    Error::Internal(format!(
        "index entries could not be {what} a temporary file in '{}' (TMPDIR): {e}",
        std::env::temp_dir().display()
    ))
}

/// Entries per encoded piece. A job's entries are encoded in pieces of at most this many, so
/// that encoding allocates no array or output buffer of the job's size (a 1–2 MiB allocation
/// made and freed per job is what glibc's dynamic mmap threshold turns into resident heap).
const PIECE_ENTRIES: usize = 8192;

impl Piece {
    /// The piece's bytes, read back if spilled.
    fn bytes(&self) -> Result<Bytes> {
        match self {
            Piece::Memory(b) => Ok(b.clone()),
            Piece::Spilled { file, offset, len } => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; *len];
                file.read_exact_at(&mut buf, *offset)
                    .map_err(|e| spill_error("read back from", e))?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

impl JobEntries {
    /// The encoded entries, a piece at a time ([`encode_segment`]'s bytes), read back if
    /// spilled.
    pub(super) fn pieces(&self) -> impl Iterator<Item = Result<Bytes>> + '_ {
        self.pieces.iter().map(Piece::bytes)
    }

    /// Whether the entries were spilled to a temporary file.
    #[cfg(test)]
    pub(super) fn spilled(&self) -> bool {
        !self.pieces.is_empty()
            && self
                .pieces
                .iter()
                .all(|p| matches!(p, Piece::Spilled { .. }))
    }

    /// Bytes held in memory.
    fn in_memory(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Memory(b) => b.len(),
                Piece::Spilled { .. } => 0,
            })
            .sum()
    }

    /// The job's `entries` (their parts numbered in `parts`, their blocks ranked in `distinct`),
    /// encoded in pieces.
    fn new(
        entries: &[Entry],
        parts: &[String],
        distinct: &Distinct,
        block: ColumnType,
    ) -> Result<JobEntries> {
        let pieces = entries
            .chunks(PIECE_ENTRIES)
            .map(|c| Ok(Piece::Memory(encode_piece(c, parts, distinct, block)?)))
            .collect::<Result<_>>()?;
        let mut parts = parts.to_vec();
        parts.sort_unstable();
        parts.dedup();
        Ok(JobEntries {
            pieces,
            count: entries.len(),
            parts,
        })
    }
}

/// An index entry of the job being encoded, with its part by number (in the job's parts) and its
/// block by rank (in the job's [`Distinct`] blocks): no string of its own, so making, merging and
/// encoding a million entries allocates and compares no strings.
struct Entry {
    label: u64,
    rank: u32,
    part: u32,
    row_start: u64,
    row_count: u64,
    bbox: [f64; 6],
}

impl Entry {
    /// Extends `self` by `next` if `next` is the same (label, block) in the same part and starts
    /// where `self` ends (the boxes merged); returns whether it did. As [`crate::index::SegmentEntry::absorb`].
    fn absorb(&mut self, next: &Entry) -> bool {
        if (self.label, self.rank, self.part) != (next.label, next.rank, next.part)
            || self.row_start + self.row_count != next.row_start
        {
            return false;
        }
        self.row_count += next.row_count;
        crate::index::widen_bbox(&mut self.bbox, &next.bbox);
        true
    }
}

/// `entries` as a commit segment piece ([`crate::index::encode_entries`]), its block and part
/// columns made straight from the job's blocks and parts.
fn encode_piece(
    entries: &[Entry],
    parts: &[String],
    distinct: &Distinct,
    block: ColumnType,
) -> Result<Bytes> {
    use arrow::array::{Int64Array, StringBuilder};
    // Strings into a builder of their exact size: grown by doubling, a piece's part names (about
    // half a MiB) were reallocated and copied several times over.
    let strings = |s: &mut dyn Iterator<Item = &str>, bytes: usize| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(entries.len(), bytes);
        s.for_each(|v| b.append_value(v));
        Arc::new(b.finish())
    };
    let block_col: ArrayRef = match distinct {
        Distinct::Int(d) => Arc::new(Int64Array::from_iter_values(
            entries.iter().map(|e| d[e.rank as usize]),
        )),
        Distinct::Str(d) => strings(
            &mut entries.iter().map(|e| d[e.rank as usize]),
            entries.iter().map(|e| d[e.rank as usize].len()).sum(),
        ),
    };
    let part_col = strings(
        &mut entries.iter().map(|e| parts[e.part as usize].as_str()),
        entries.iter().map(|e| parts[e.part as usize].len()).sum(),
    );
    crate::index::encode_entries(
        entries,
        |e| (e.label, e.row_start, e.row_count, e.bbox),
        block_col,
        part_col,
        block,
        &[],
    )
}

/// Sorts buffers and writes them into part files; owned by the encoder thread.
pub(super) struct PartWriter {
    pub(super) sink: PartSink,
    /// The block type of the store (for encoding entries).
    block: ColumnType,
    /// The entries of the job being encoded.
    cur: Vec<Entry>,
    /// The parts the job's entries are in (an entry's `part` numbers them).
    cur_parts: Vec<String>,
    /// The entries of each job encoded, in order.
    pub(super) jobs: Vec<JobEntries>,
    /// Bytes of encoded entries kept in memory before they are spilled.
    entries_in_memory: u64,
    /// The temporary file entries are spilled to (made on first use) and its length.
    spill: Option<(Arc<std::fs::File>, u64)>,
    /// The order of the job being encoded ([`Grouping`]), kept from job to job.
    grouping: Grouping,
    /// The buffers columns were placed into in the last job ([`place`]), for the next one.
    spare: Vec<MutableBuffer>,
    /// The bounding boxes of a slice's groups.
    boxes: Vec<[f64; 6]>,
}

impl PartWriter {
    pub(super) fn new(sink: PartSink, block: ColumnType, entries_in_memory: u64) -> PartWriter {
        PartWriter {
            sink,
            block,
            cur: Vec::new(),
            cur_parts: Vec::new(),
            jobs: Vec::new(),
            entries_in_memory,
            spill: None,
            grouping: Grouping::default(),
            spare: Vec::new(),
            boxes: Vec::new(),
        }
    }

    /// Encodes one buffer (a job).
    pub(super) fn encode(&mut self, batches: Vec<RecordBatch>, target: u64) -> Result<()> {
        self.encode_job(batches, target)?;
        let held: usize = self.jobs.iter().map(JobEntries::in_memory).sum();
        if held as u64 > self.entries_in_memory {
            self.spill()?;
        }
        Ok(())
    }

    /// Moves the pieces held in memory to the end of the temporary file.
    fn spill(&mut self) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let (file, len) = match &mut self.spill {
            Some(s) => s,
            None => {
                let f = tempfile::tempfile().map_err(|e| spill_error("spilled to", e))?;
                self.spill.insert((Arc::new(f), 0))
            }
        };
        for piece in self.jobs.iter_mut().flat_map(|j| j.pieces.iter_mut()) {
            let b = match piece {
                Piece::Memory(b) => b.clone(),
                Piece::Spilled { .. } => continue,
            };
            file.write_all_at(&b, *len)
                .map_err(|e| spill_error("spilled to", e))?;
            *piece = Piece::Spilled {
                file: file.clone(),
                offset: *len,
                len: b.len(),
            };
            *len += b.len() as u64;
        }
        Ok(())
    }

    fn encode_job(&mut self, batches: Vec<RecordBatch>, target: u64) -> Result<()> {
        // Order by (label, block), then write the rows straight from the buffered batches (no
        // concatenated copy of any column).
        if batches.is_empty() {
            // Still a job (the session counts its jobs): one of no entries.
            let none = Distinct::Int(Vec::new());
            self.jobs
                .push(JobEntries::new(&[], &[], &none, self.block)?);
            return Ok(());
        }
        let mut grouping = std::mem::take(&mut self.grouping);
        let r = grouping.build(&batches).and_then(|distinct| {
            self.write_ordered(&batches, &mut grouping, &distinct, target)?;
            // Encoded from the vectors, which keep their capacity for the next job.
            let entries = JobEntries::new(&self.cur, &self.cur_parts, &distinct, self.block);
            self.cur.clear();
            self.cur_parts.clear();
            self.jobs.push(entries?);
            Ok(())
        });
        self.grouping = grouping;
        r
    }

    /// Writes the rows of `batches` in the order of `grouping` a slice at a time: the label and
    /// block columns are filled from the groups (equal within one), number columns without
    /// nulls (the coordinates) placed in order first ([`place`]), the others gathered.
    fn write_ordered(
        &mut self,
        batches: &[RecordBatch],
        grouping: &mut Grouping,
        distinct: &Distinct,
        target: u64,
    ) -> Result<()> {
        let ncols = batches[0].num_columns();
        let mut held: Vec<Buffer> = Vec::new();
        let mut placed: Vec<Option<ArrayRef>> = vec![None; ncols];
        for (i, p) in placed.iter_mut().enumerate().skip(col::XYZ[0]) {
            let mut buf = self.spare.pop().unwrap_or_else(|| MutableBuffer::new(0));
            match place(batches, i, grouping.positions(), &mut buf) {
                Some((a, b)) => {
                    *p = Some(a);
                    held.push(b);
                }
                None => self.spare.push(buf),
            }
        }
        let r = self.write_placed(batches, grouping, distinct, &placed, target);
        // The slices written are gone: the buffers are this encoder's again.
        drop(placed);
        self.spare
            .extend(held.into_iter().filter_map(|b| b.into_mutable().ok()));
        r
    }

    fn write_placed(
        &mut self,
        batches: &[RecordBatch],
        grouping: &mut Grouping,
        distinct: &Distinct,
        placed: &[Option<ArrayRef>],
        target: u64,
    ) -> Result<()> {
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        // Written a slice at a time, each of at most SLICE_ROWS rows and
        // `bounded::STRING_BYTES` of strings (a job may hold more than a string array can);
        // a job whose strings fit in total needs no per-row sizes.
        let fits = refs
            .iter()
            .map(|b| crate::bounded::string_bytes(b))
            .sum::<usize>()
            <= crate::bounded::STRING_BYTES;
        let gathered = placed.iter().skip(col::XYZ[0]).any(|p| p.is_none());
        if gathered || !fits {
            grouping.make_order();
        }
        let grouping = &*grouping;
        let rows = grouping.positions().len();
        // COPY hands over batches of one DuckDB vector (2,048 rows) but the last: a row's batch
        // is then a shift away; otherwise a binary search over the batches' starts.
        let len = batches[0].num_rows();
        let shift = (len.is_power_of_two()
            && batches[..batches.len() - 1]
                .iter()
                .all(|b| b.num_rows() == len)
            && batches[batches.len() - 1].num_rows() <= len)
            .then(|| len.trailing_zeros());
        let mut starts = Vec::with_capacity(batches.len());
        let mut acc = 0usize;
        for b in batches {
            starts.push(acc);
            acc += b.num_rows();
        }
        let pair = |g: u32| {
            let g = g as usize;
            match shift {
                Some(sh) => (g >> sh, g & (len - 1)),
                None => {
                    let bi = starts.partition_point(|&s| s <= g) - 1;
                    (bi, g - starts[bi])
                }
            }
        };
        let gather = Gather::new(batches);
        let mut groups = grouping.groups();
        // The group being written: (label, rank, rows left).
        let mut cur = (0u64, 0u32, 0u32);
        // A slice's (batch, row) pairs (when some column is gathered or strings may not fit)
        // and its groups (label, rank, rows in the slice).
        let mut pairs: Vec<(usize, usize)> = Vec::with_capacity(SLICE_ROWS);
        let mut segs: Vec<(u64, u32, u32)> = Vec::new();
        let mut off = 0;
        while off < rows {
            let end = rows.min(off + SLICE_ROWS);
            pairs.clear();
            if let Some(order) = grouping.order() {
                pairs.extend(order[off..end].iter().map(|&g| pair(g)));
            }
            let n = if fits {
                end - off
            } else {
                crate::bounded::cut(&refs, &pairs, 0, SLICE_ROWS, crate::bounded::STRING_BYTES)
            };
            segs.clear();
            let mut need = n as u32;
            while need > 0 {
                if cur.2 == 0 {
                    cur = groups
                        .next()
                        .ok_or_else(|| Error::Internal("ordered rows beyond the groups".into()))?;
                    continue;
                }
                let k = cur.2.min(need);
                segs.push((cur.0, cur.1, k));
                cur.2 -= k;
                need -= k;
            }
            let pairs = &pairs[..pairs.len().min(n)];
            let slice = slice_of(&gather, pairs, (off, n), placed, &segs, distinct)?;
            self.write_slice(&slice, &segs, target)?;
            off += n;
        }
        Ok(())
    }

    /// Writes `slice`, whose rows are the groups `segs` (label, block rank, rows) in order, and
    /// records its index entries.
    fn write_slice(
        &mut self,
        slice: &RecordBatch,
        segs: &[(u64, u32, u32)],
        target: u64,
    ) -> Result<()> {
        let (part_name, base) = self.sink.write(slice)?;
        if self.cur_parts.last() != Some(&part_name) {
            self.cur_parts.push(part_name);
        }
        let part = self.cur_parts.len() as u32 - 1;
        let full = self.sink.size() >= target;
        let boxes = &mut self.boxes;
        boxes.clear();
        boxes.resize(segs.len(), crate::index::EMPTY_BBOX);
        for (d, &i) in col::XYZ.iter().enumerate() {
            extents(slice.column(i), segs, d, boxes)?;
        }
        let mut start = 0usize;
        for (&(label, rank, rows), &bbox) in segs.iter().zip(boxes.iter()) {
            let end = start + rows as usize;
            let r = Entry {
                label,
                rank,
                part,
                row_start: base + start as u64,
                row_count: rows as u64,
                bbox,
            };
            if !self.cur.last_mut().is_some_and(|l| l.absorb(&r)) {
                self.cur.push(r);
            }
            start = end;
        }
        if full {
            self.sink.close()?;
        }
        Ok(())
    }

    /// Abandons the open part (its upload never completes, so no file appears) and deletes the
    /// parts completed so far.
    pub(super) fn discard(&mut self) {
        self.sink.discard();
        self.cur.clear();
        self.cur_parts.clear();
        self.jobs.clear();
    }
}

/// A [`PartWriter`] on its own thread, fed buffers through a rendezvous channel.
pub(super) struct Encoder {
    tx: std::sync::mpsc::SyncSender<(Vec<RecordBatch>, u64)>,
    handle: std::thread::JoinHandle<(Option<PartWriter>, Result<()>)>,
}

impl Encoder {
    pub(super) fn spawn(mut pw: PartWriter) -> Result<Encoder> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<RecordBatch>, u64)>(0);
        let handle = std::thread::Builder::new()
            .name("pocaduck-encode".into())
            .spawn(move || {
                for (batches, target) in rx {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        pw.encode(batches, target)
                    }));
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return (Some(pw), Err(e)),
                        Err(p) => {
                            let msg =
                                format!("encoder panicked: {}", crate::error::panic_text(&*p));
                            return (Some(pw), Err(Error::Internal(msg)));
                        }
                    }
                }
                (Some(pw), Ok(()))
            })
            .map_err(|e| Error::Internal(format!("cannot start encoder thread: {e}")))?;
        Ok(Encoder { tx, handle })
    }

    /// Hands a job over if the encoder is waiting for one; gives it back if the encoder is
    /// busy (`Err(Some)`), fails if it has stopped (on an error: `Err(None)`).
    pub(super) fn try_send(
        &mut self,
        job: (Vec<RecordBatch>, u64),
    ) -> std::result::Result<(), Option<(Vec<RecordBatch>, u64)>> {
        use std::sync::mpsc::TrySendError;
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) => Some(j),
            TrySendError::Disconnected(_) => None,
        })
    }

    /// Whether the encoder's thread has ended (it only ends early on an error).
    pub(super) fn stopped(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the encoder to finish everything queued.
    pub(super) fn join(self) -> (Option<PartWriter>, Result<()>) {
        drop(self.tx);
        self.handle.join().unwrap_or_else(|p| {
            let msg = format!("encoder thread panicked: {}", crate::error::panic_text(&*p));
            (None, Err(Error::Internal(msg)))
        })
    }
}

/// The order of a job's rows and their block ranks in that order, as arrays (for tests).
#[cfg(test)]
pub(super) fn sort_order(batches: &[RecordBatch]) -> Result<(arrow::array::UInt32Array, Vec<u32>)> {
    let mut g = Grouping::default();
    g.build(batches)?;
    g.make_order();
    let idx = arrow::array::UInt32Array::from(g.order().unwrap_or_default().to_vec());
    let ranks = g
        .groups()
        .flat_map(|(_, r, n)| std::iter::repeat_n(r, n as usize))
        .collect();
    Ok((idx, ranks))
}

/// Rows `at.0 .. at.0 + at.1` of the order as one batch: the label and block columns filled from
/// the slice's groups `segs` (label, block rank, rows), the placed columns sliced, the others
/// gathered from `gather` by `pairs` (`(batch, row)` of each row).
fn slice_of(
    gather: &Gather,
    pairs: &[(usize, usize)],
    at: (usize, usize),
    placed: &[Option<ArrayRef>],
    segs: &[(u64, u32, u32)],
    distinct: &Distinct,
) -> Result<RecordBatch> {
    let (off, n) = at;
    let rep = |n: u32| n as usize;
    let columns = (0..gather.schema().fields().len())
        .map(|i| {
            Ok(match i {
                col::LABEL => {
                    let mut v: Vec<u64> = Vec::with_capacity(n);
                    for &(l, _, k) in segs {
                        v.extend(std::iter::repeat_n(l, rep(k)));
                    }
                    Arc::new(arrow::array::UInt64Array::from(v)) as ArrayRef
                }
                col::BLOCK => match distinct {
                    Distinct::Int(d) => {
                        let mut v: Vec<i64> = Vec::with_capacity(n);
                        for &(_, r, k) in segs {
                            v.extend(std::iter::repeat_n(d[r as usize], rep(k)));
                        }
                        Arc::new(arrow::array::Int64Array::from(v)) as ArrayRef
                    }
                    Distinct::Str(d) => {
                        let bytes: usize = segs
                            .iter()
                            .map(|&(_, r, k)| d[r as usize].len() * rep(k))
                            .sum();
                        let mut b = arrow::array::StringBuilder::with_capacity(n, bytes);
                        for &(_, r, k) in segs {
                            for _ in 0..k {
                                b.append_value(d[r as usize]);
                            }
                        }
                        Arc::new(b.finish()) as ArrayRef
                    }
                },
                _ => match &placed[i] {
                    Some(a) => a.slice(off, n),
                    None => gather.column(i, pairs)?,
                },
            })
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(gather.schema().clone(), columns)?)
}

/// Sets `boxes[k][d]` and `boxes[k][d + 3]` to the minimum and maximum of coordinate column `a`
/// over the rows of group `k` of `segs` (label, block rank, rows), which follow each other.
/// Values are converted to `f64` one at a time (no converted copy of the column) and compared
/// without branches (comparing integers as they are mispredicts a branch every other value);
/// NaN is ignored, as [`f64::min`] does.
fn extents(a: &ArrayRef, segs: &[(u64, u32, u32)], d: usize, boxes: &mut [[f64; 6]]) -> Result<()> {
    use arrow::datatypes::*;
    // A macro, not a function taking the conversion: the conversion must inline into the loop.
    macro_rules! extremes {
        ($t:ty) => {{
            let v = a.as_primitive::<$t>().values();
            let mut start = 0;
            for (&(_, _, n), b) in segs.iter().zip(boxes.iter_mut()) {
                let (mut lo, mut hi) = (b[d], b[d + 3]);
                for &x in &v[start..start + n as usize] {
                    lo = lo.min(x as f64);
                    hi = hi.max(x as f64);
                }
                (b[d], b[d + 3]) = (lo, hi);
                start += n as usize;
            }
        }};
    }
    match a.data_type() {
        DataType::Int8 => extremes!(Int8Type),
        DataType::Int16 => extremes!(Int16Type),
        DataType::Int32 => extremes!(Int32Type),
        DataType::Int64 => extremes!(Int64Type),
        DataType::UInt8 => extremes!(UInt8Type),
        DataType::UInt16 => extremes!(UInt16Type),
        DataType::UInt32 => extremes!(UInt32Type),
        DataType::UInt64 => extremes!(UInt64Type),
        DataType::Float32 => extremes!(Float32Type),
        DataType::Float64 => extremes!(Float64Type),
        t => return Err(Error::Internal(format!("a coordinate column of type {t}"))),
    }
    Ok(())
}

/// Column `i` of `batches` in order, its rows placed at their `positions`, in `buf` (this
/// encoder's, reused from job to job): one sequential pass over the rows, writing each value
/// where it goes, instead of a gather reading each row's value from wherever it is (a cache
/// miss per value of a job larger than the caches). Returns the column and its buffer, or
/// `None` for a column of another type than the integers and floats, or with nulls (those are
/// gathered).
fn place(
    batches: &[RecordBatch],
    i: usize,
    positions: &[u32],
    buf: &mut MutableBuffer,
) -> Option<(ArrayRef, Buffer)> {
    if batches.iter().any(|b| b.column(i).null_count() > 0) {
        return None;
    }
    fn typed<T: ArrowPrimitiveType>(
        batches: &[RecordBatch],
        i: usize,
        positions: &[u32],
        buf: &mut MutableBuffer,
    ) -> (ArrayRef, Buffer) {
        let rows = positions.len();
        // Every position is written (they are a permutation of the rows): a reused buffer needs
        // no zeroing, only its length.
        let bytes = rows * std::mem::size_of::<T::Native>();
        if buf.len() < bytes {
            buf.resize(bytes, 0);
        } else {
            buf.truncate(bytes);
        }
        let out = buf.typed_data_mut::<T::Native>();
        let mut r = 0;
        for b in batches {
            let v = b.column(i).as_primitive::<T>().values();
            for (x, &p) in v.iter().zip(&positions[r..r + v.len()]) {
                out[p as usize] = *x;
            }
            r += v.len();
        }
        let b: Buffer = std::mem::replace(buf, MutableBuffer::new(0)).into();
        let a = PrimitiveArray::<T>::new(ScalarBuffer::new(b.clone(), 0, rows), None);
        (Arc::new(a) as ArrayRef, b)
    }
    use arrow::datatypes::*;
    Some(match batches[0].column(i).data_type() {
        DataType::Int8 => typed::<Int8Type>(batches, i, positions, buf),
        DataType::Int16 => typed::<Int16Type>(batches, i, positions, buf),
        DataType::Int32 => typed::<Int32Type>(batches, i, positions, buf),
        DataType::Int64 => typed::<Int64Type>(batches, i, positions, buf),
        DataType::UInt8 => typed::<UInt8Type>(batches, i, positions, buf),
        DataType::UInt16 => typed::<UInt16Type>(batches, i, positions, buf),
        DataType::UInt32 => typed::<UInt32Type>(batches, i, positions, buf),
        DataType::UInt64 => typed::<UInt64Type>(batches, i, positions, buf),
        DataType::Float32 => typed::<Float32Type>(batches, i, positions, buf),
        DataType::Float64 => typed::<Float64Type>(batches, i, positions, buf),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::group::ranks;
    use crate::storage::{OpenMode, Store};
    use crate::writer::tests::{rows, session_at};
    use crate::writer::WriterOptions;
    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::{Int32Type, UInt64Type};

    /// The batches of worker `w`'s parts, in part order.
    fn part_batches(dir: &std::path::Path) -> Vec<RecordBatch> {
        let mut files: Vec<_> = std::fs::read_dir(dir.join("workers/w/parts"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .into_iter()
            .flat_map(|f| {
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    std::fs::File::open(f).unwrap(),
                )
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
            })
            .collect()
    }

    /// The rows of the worker's parts, as (label, block, x).
    fn part_rows(dir: &std::path::Path) -> Vec<(u64, String, i32)> {
        let mut out = Vec::new();
        for b in part_batches(dir) {
            let l = b.column(0).as_primitive::<UInt64Type>();
            let k = b.column(1).as_string::<i32>();
            let x = b.column(2).as_primitive::<Int32Type>();
            for i in 0..b.num_rows() {
                out.push((l.value(i), k.value(i).to_string(), x.value(i)));
            }
        }
        out
    }

    /// The rows still buffered at a commit, after full jobs, go to the encoders as a job each,
    /// and every row arrives.
    #[test]
    fn the_rest_at_a_commit_is_split_between_the_encoders() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        // Jobs of 64 KiB (a 1 MiB buffer): about eight batches of 256 rows.
        let mut s = crate::writer::tests::sized_session(name, "w", 1 << 30, 1 << 20);
        let mut want = Vec::new();
        for k in 0..45i32 {
            let labels: Vec<u64> = (0..256u64).map(|i| (i * 7 + k as u64) % 13).collect();
            let pts: Vec<[i32; 3]> = (0..256).map(|i| [k * 256 + i, 0, 0]).collect();
            want.extend(labels.iter().zip(&pts).map(|(l, p)| (*l, p[0])));
            s.append(&rows(&labels, "b", &pts)).unwrap();
        }
        let (jobs, rest) = (s.encodes, s.buffer.len());
        assert!(
            s.pool_full > 0 && rest >= 2,
            "{} full jobs, {rest} batches left",
            s.pool_full
        );
        s.encode_rest().unwrap();
        let n = crate::writer::encoders();
        assert_eq!(s.encodes - jobs, n as u64, "{rest} batches left");
        assert!(s.buffer.is_empty());
        let c = s.commit().unwrap();
        assert_eq!(c.points, want.len() as u64);
        let got = part_rows(dir.path());
        let mut a: Vec<(u64, i32)> = got.iter().map(|r| (r.0, r.2)).collect();
        a.sort_unstable();
        want.sort_unstable();
        assert_eq!(a, want);
    }

    /// A buffer of batches of these sizes (one append each) is encoded in (label, block) order,
    /// rows of one (label, block) in arrival order: batches of one power-of-two size but a
    /// shorter last one (a row's batch by shift), and the others (by binary search), and
    /// blocks whose rows come in several runs.
    #[test]
    fn a_buffer_of_batches_is_encoded_in_label_block_order() {
        for sizes in [
            vec![4, 4, 2],
            vec![4, 4, 6],
            vec![3, 3, 3],
            vec![1],
            vec![8, 8],
            // Blocks b2, b0, b1, b2, b0: blocks come back in later runs.
            vec![2, 3, 2, 2, 3],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let name = dir.path().to_str().unwrap();
            let mut s = session_at(name, "w", WriterOptions::default()).unwrap();
            let mut want = Vec::new();
            let mut x = 0;
            for (k, &n) in sizes.iter().enumerate() {
                let labels: Vec<u64> = (0..n).map(|i| (7 * i as u64 + k as u64) % 5).collect();
                let block = ["b2", "b0", "b1"][k % 3];
                let pts: Vec<[i32; 3]> = (0..n).map(|i| [x + i, 0, 0]).collect();
                x += n;
                for (l, p) in labels.iter().zip(&pts) {
                    want.push((*l, block.to_string(), p[0]));
                }
                s.append(&rows(&labels, block, &pts)).unwrap();
            }
            s.commit().unwrap();
            // A stable sort by (label, block): rows of one (label, block) keep arrival order.
            want.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            assert_eq!(part_rows(dir.path()), want, "batch sizes {sizes:?}");
            assert!(Store::open(name, OpenMode::Existing).is_ok());
        }
    }

    /// Every column of every row arrives in its part in (label, block) order, whatever the
    /// column: coordinates of three types and number attributes (placed), attributes with nulls
    /// and strings (gathered), over batches of several sizes and with VARCHAR and BIGINT blocks.
    #[test]
    fn every_column_of_every_row_is_written_in_order() {
        use arrow::array::{
            Array, ArrayRef, Float32Array, Float64Array, Int16Array, Int64Array, Int8Array,
            StringArray, UInt64Array,
        };
        use std::sync::Arc;
        for strings in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let name = dir.path().to_str().unwrap();
            let attrs = vec![
                "a16".to_string(),
                "f".to_string(),
                "s".to_string(),
                "b".to_string(),
            ];
            let mut s = crate::writer::Session::start(
                &Store::open(name, OpenMode::Create).unwrap(),
                "w",
                attrs,
                "ATTRIBUTES",
                WriterOptions::default(),
            )
            .unwrap();
            let mut want: Vec<(u64, i64, String)> = Vec::new();
            let mut r = 0i64;
            for n in [700usize, 2048, 5, 1300] {
                let rows: Vec<i64> = (r..r + n as i64).collect();
                r += n as i64;
                let label = |i: i64| (i * 7919 % 13) as u64;
                let block = |i: i64| i / 500;
                let block_col: ArrayRef = if strings {
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|&i| format!("b{}", block(i))),
                    ))
                } else {
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|&i| block(i))))
                };
                let b = RecordBatch::try_from_iter(vec![
                    (
                        "label",
                        Arc::new(UInt64Array::from_iter_values(
                            rows.iter().map(|&i| label(i)),
                        )) as ArrayRef,
                    ),
                    ("block", block_col),
                    (
                        "x",
                        Arc::new(arrow::array::Int32Array::from_iter_values(
                            rows.iter().map(|&i| i as i32),
                        )),
                    ),
                    (
                        "y",
                        Arc::new(Float64Array::from_iter_values(
                            rows.iter().map(|&i| i as f64 / 2.0),
                        )),
                    ),
                    (
                        "z",
                        Arc::new(Int8Array::from_iter_values(
                            rows.iter().map(|&i| (i % 100) as i8),
                        )),
                    ),
                    (
                        "a16",
                        Arc::new(Int16Array::from_iter(
                            rows.iter().map(|&i| (i % 3 != 0).then_some(i as i16)),
                        )),
                    ),
                    (
                        "f",
                        Arc::new(Float32Array::from_iter_values(
                            rows.iter().map(|&i| i as f32),
                        )),
                    ),
                    (
                        "s",
                        Arc::new(StringArray::from_iter(
                            rows.iter().map(|&i| (i % 5 != 0).then(|| format!("s{i}"))),
                        )),
                    ),
                    (
                        "b",
                        Arc::new(arrow::array::UInt32Array::from_iter_values(
                            rows.iter().map(|&i| i as u32 * 3),
                        )),
                    ),
                ])
                .unwrap();
                for &i in &rows {
                    want.push((label(i), block(i), format!("b{}", block(i))));
                }
                s.append(&b).unwrap();
            }
            s.commit().unwrap();
            // Expected: the input rows (numbered by x) stably sorted by (label, block).
            let mut order: Vec<i64> = (0..r).collect();
            order.sort_by_key(|&i| {
                let (l, b, bs) = &want[i as usize];
                (
                    *l,
                    if strings { 0 } else { *b },
                    if strings { bs.clone() } else { String::new() },
                )
            });
            let mut got: Vec<i64> = Vec::new();
            for b in part_batches(dir.path()) {
                let x = b.column(2).as_primitive::<Int32Type>();
                for k in 0..b.num_rows() {
                    let i = x.value(k) as i64;
                    got.push(i);
                    // Every column of row `i`, as it was appended.
                    assert_eq!(
                        b.column(0).as_primitive::<UInt64Type>().value(k),
                        want[i as usize].0
                    );
                    if strings {
                        assert_eq!(b.column(1).as_string::<i32>().value(k), want[i as usize].2);
                    } else {
                        assert_eq!(
                            b.column(1)
                                .as_primitive::<arrow::datatypes::Int64Type>()
                                .value(k),
                            want[i as usize].1
                        );
                    }
                    assert_eq!(
                        b.column(3)
                            .as_primitive::<arrow::datatypes::Float64Type>()
                            .value(k),
                        i as f64 / 2.0
                    );
                    assert_eq!(
                        b.column(4)
                            .as_primitive::<arrow::datatypes::Int8Type>()
                            .value(k),
                        (i % 100) as i8
                    );
                    let a = b.column(5).as_primitive::<arrow::datatypes::Int16Type>();
                    assert_eq!(a.is_valid(k), i % 3 != 0);
                    if a.is_valid(k) {
                        assert_eq!(a.value(k), i as i16);
                    }
                    assert_eq!(
                        b.column(6)
                            .as_primitive::<arrow::datatypes::Float32Type>()
                            .value(k),
                        i as f32
                    );
                    let st = b.column(7).as_string::<i32>();
                    assert_eq!(st.is_valid(k), i % 5 != 0);
                    if st.is_valid(k) {
                        assert_eq!(st.value(k), format!("s{i}"));
                    }
                    assert_eq!(
                        b.column(8)
                            .as_primitive::<arrow::datatypes::UInt32Type>()
                            .value(k),
                        i as u32 * 3
                    );
                }
            }
            assert_eq!(got, order, "strings {strings}");
        }
    }

    /// `sort_order` gives the order of a stable sort by (label, block): labels differing in
    /// any byte (or in none), blocks arriving in rank order or not, integer and string blocks.
    #[test]
    fn sort_order_is_a_stable_sort_by_label_and_block() {
        use arrow::array::{ArrayRef, Int64Array, StringArray, UInt64Array};
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let mut seed = 12345u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let label_kinds: [fn(u64) -> u64; 5] = [
            |r| r,
            |r| r % 7,
            |r| r % 100_000,
            |r| (r % 5) << 40 | 0xff00_0000_0000_00ff,
            |_| 42,
        ];
        for (li, lab) in label_kinds.iter().enumerate() {
            for in_order in [true, false] {
                for strings in [false, true] {
                    let n = 3000;
                    let labels: Vec<u64> = (0..n).map(|_| lab(next())).collect();
                    // Runs of one block, as a scan hands them over; ascending or shuffled.
                    let blocks: Vec<i64> = (0..n as i64)
                        .map(|i| {
                            if in_order {
                                i / 100
                            } else {
                                (i / 100 * 7919) % 31 - 15
                            }
                        })
                        .collect();
                    let block_col: ArrayRef = if strings {
                        Arc::new(StringArray::from_iter_values(
                            blocks.iter().map(|b| format!("b{b}")),
                        ))
                    } else {
                        Arc::new(Int64Array::from(blocks.clone()))
                    };
                    let schema = Arc::new(Schema::new(vec![
                        Field::new("label", DataType::UInt64, false),
                        Field::new("block", block_col.data_type().clone(), false),
                    ]));
                    let b = RecordBatch::try_new(
                        schema,
                        vec![Arc::new(UInt64Array::from(labels.clone())), block_col],
                    )
                    .unwrap();
                    // In batches of 1,000 rows (the ranks and order are over all of them).
                    let parts: Vec<RecordBatch> = (0..3).map(|i| b.slice(i * 1000, 1000)).collect();
                    let (idx, ranks) = super::sort_order(&parts).unwrap();
                    // Integer blocks compare as numbers, string blocks as strings.
                    let key = |i: usize| match strings {
                        true => (labels[i], 0, format!("b{}", blocks[i])),
                        false => (labels[i], blocks[i], String::new()),
                    };
                    let mut want: Vec<usize> = (0..n).collect();
                    want.sort_by_key(|&i| key(i)); // stable: equal keys keep arrival order
                    let got: Vec<usize> = idx.values().iter().map(|&i| i as usize).collect();
                    assert_eq!(
                        got, want,
                        "labels {li}, in order {in_order}, strings {strings}"
                    );
                    // Equal ranks exactly for equal blocks, ascending within a label.
                    for (w, r) in got.windows(2).zip(ranks.windows(2)) {
                        let (a, b, ra, rb) = (w[0], w[1], r[0], r[1]);
                        assert_eq!(blocks[a] == blocks[b], ra == rb);
                        if labels[a] == labels[b] {
                            assert!(ra <= rb);
                        }
                    }
                }
            }
        }
    }

    /// The block ranks [`ranks`] gives the rows of batches of `lens` rows (labels 0), in row
    /// order.
    fn ranks_of<K: Ord + Copy>(
        lens: &[usize],
        key: impl Fn(usize, usize) -> Option<K>,
    ) -> crate::error::Result<Vec<u32>> {
        let batches: Vec<RecordBatch> = lens
            .iter()
            .map(|&n| {
                let labels = arrow::array::UInt64Array::from(vec![0u64; n]);
                RecordBatch::try_from_iter([("label", std::sync::Arc::new(labels) as _)]).unwrap()
            })
            .collect();
        let mut out = Vec::new();
        ranks(&batches, key, |labels, r, _| {
            for &l in labels {
                assert_eq!(l, 0);
                out.push(r)
            }
        })?;
        Ok(out)
    }

    /// Ranks among the distinct keys, whether a key comes back after others (not one run) or
    /// not, for integer and string keys.
    #[test]
    fn ranks_are_positions_among_distinct_keys() {
        let v = [7i64, 7, -3, -3, 7, 100, -3, 7];
        let one = |b: usize, i: usize| (b == 0).then(|| v[i]);
        assert_eq!(
            ranks_of(&[v.len()], one).unwrap(),
            vec![1, 1, 0, 0, 1, 2, 0, 1]
        );
        // The same keys over three batches: rows numbered on across them.
        let at = |b: usize, i: usize| Some(v[[0, 3, 5][b] + i]);
        assert_eq!(
            ranks_of(&[3, 2, 3], at).unwrap(),
            vec![1, 1, 0, 0, 1, 2, 0, 1]
        );
        let s = ["b", "b", "a", "c", "a", "", "c"];
        assert_eq!(
            ranks_of(&[s.len()], |_, i| Some(s[i])).unwrap(),
            vec![2, 2, 1, 3, 1, 0, 3]
        );
        assert!(ranks_of(&[], one).unwrap().is_empty());
        assert!(ranks_of(&[2], |_, i| (i == 0).then_some(1)).is_err());
    }
}
