//! Ingest: a worker's writer session.
//!
//! A [`Session`] belongs to one (store, worker) in one process and lives across SQL statements, so
//! that many small writes (one block at a time) fill a few large parts instead of many small ones.
//!
//! - Rows are validated ([`crate::schema::normalize`]) before they touch the session.
//! - They are buffered; when the buffer reaches its bound it is sorted by (label, block) and
//!   encoded into the open part, which rolls over at the target file size. Memory stays at about
//!   the buffer bound (the bound covers the sort copy).
//! - A part is uploaded atomically (staging object + rename / multipart completion), so a part
//!   file either is complete or does not exist.
//! - [`Session::commit`] closes the open part and then creates the worker's next commit segment
//!   with put-if-absent. **The commit segment is the durability point**: before it exists none of
//!   the session's rows are visible to consolidate; after, all are.
//! - A failed statement rolls back its own rows, and only those: rows still buffered are dropped;
//!   rows already encoded are dropped from the session's entries (an encoded buffer never mixes
//!   two statements' rows, and entries never span two buffers), and parts left holding none of
//!   the session's remaining rows are deleted. Rows of a rolled-back statement that share a part
//!   with kept rows stay in that part, unreferenced. Only if the encoder itself failed is the
//!   whole uncommitted session discarded (its parts deleted), so nothing half-written is ever
//!   referenced.
//!
//! Files: this one holds the [`Session`] (options, schema negotiation, buffering, statement
//! marks, commits, and the encoder threads' jobs: a job goes to whichever encoder is free first,
//! but the smaller jobs of a session without full ones to the first, each encoder writing parts
//! of its own, and their entries are taken back in job order); `group` orders a job's rows by
//! (label, block); `encode` writes them into parts on an encoder thread; `gather` gathers
//! columns by row;
//! `statement` holds the per-process session slots and the [`Statement`] guard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use bytes::Bytes;
use object_store::path::Path;

use crate::error::{Error, Result};
use crate::index::concat_segments;
use crate::layout;
use crate::part_sink::PartSink;
use crate::schema::{col, normalize, schema_for_input, StoreSchema};
use crate::storage::Store;

mod encode;
mod gather;
mod group;
mod statement;

use encode::{Encoder, JobEntries, PartWriter};
pub use statement::{lock_slot, session_slot, Slot, SlotAccess, Statement, StatementEnd};

/// Default target size of a part file: 128 MiB.
pub const DEFAULT_TARGET_FILE_SIZE: u64 = 128 << 20;
/// Default in-memory buffer bound: 256 MiB.
pub const DEFAULT_BUFFER_SIZE: u64 = 256 << 20;
/// Smallest buffer bound.
pub const MIN_BUFFER_SIZE: u64 = 1 << 20;
/// Largest buffer bound: at most a tenth of it is ordered at once (see `Session::append`), with 32-bit
/// row numbers and 32-bit string offsets, which stay far from overflowing below 4 GiB.
pub const MAX_BUFFER_SIZE: u64 = 4 << 30;

/// Encoder threads of a session: two where the machine has two cores or more (the COPY sink
/// runs on one DuckDB thread; sorting and encoding a job costs more than buffering it), else one.
pub fn encoders() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 2)
    })
}

/// Settings of a writer session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// A part is closed once it reaches this many bytes.
    pub target_file_size: u64,
    /// Buffered rows are encoded once they take this much memory.
    pub buffer_size: u64,
    /// Encoded index entries an encoder keeps in memory until the commit; beyond this it
    /// spills them to a temporary file (see [`encode::JobEntries`]).
    pub entries_in_memory: u64,
}

/// Default [`WriterOptions::entries_in_memory`]: 2 MiB (about 100 k index entries) per encoder.
pub const DEFAULT_ENTRIES_IN_MEMORY: u64 = 2 << 20;

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            target_file_size: DEFAULT_TARGET_FILE_SIZE,
            buffer_size: DEFAULT_BUFFER_SIZE,
            entries_in_memory: DEFAULT_ENTRIES_IN_MEMORY,
        }
    }
}

impl WriterOptions {
    /// Checks the bounds of the options; errors name them `target_file_size` and `buffer_size`
    /// ([`WriterOptions::check_as`] names them as the user spelled them).
    pub fn check(&self) -> Result<()> {
        self.check_as("target_file_size", "buffer_size")
    }

    /// [`WriterOptions::check`], naming the options as the user spelled them.
    pub fn check_as(&self, target_arg: &str, buffer_arg: &str) -> Result<()> {
        if self.target_file_size < 1024 {
            return Err(Error::arg(
                target_arg,
                format!("must be at least 1024 bytes, got {}", self.target_file_size),
            ));
        }
        if !(MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&self.buffer_size) {
            return Err(Error::arg(
                buffer_arg,
                format!(
                    "must be between {MIN_BUFFER_SIZE} (1 MiB) and {MAX_BUFFER_SIZE} (4 GiB) bytes, got {}",
                    self.buffer_size
                ),
            ));
        }
        Ok(())
    }
}

/// What a commit made durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitSummary {
    /// The worker.
    pub worker: String,
    /// Sequence number of the commit segment (0 when there was nothing to commit).
    pub commit: u64,
    /// Part files completed by this commit.
    pub parts: u64,
    /// Points committed.
    pub points: u64,
    /// (label, block) entries committed.
    pub entries: u64,
}

/// A worker's uncommitted writes in this process.
pub struct Session {
    store: Store,
    worker: String,
    id: String,
    schema: Option<StoreSchema>,
    /// Whether `schema` is in the store already (else the first commit writes it).
    schema_persisted: bool,
    attr_names: Vec<String>,
    opts: WriterOptions,
    buffer: Vec<RecordBatch>,
    buffered_bytes: usize,
    /// The background threads that order and encode buffers, each into parts of its own (started
    /// on first use, up to [`encoders`]). A job goes to whichever is free first; the smaller
    /// jobs (the rows of earlier statements, the rest at commit) of a session that has had no
    /// full one to the first, so that small writes fill one part.
    encoders: Vec<Encoder>,
    /// The encoder of each job handed to the running encoders, in job order.
    pool_jobs: Vec<usize>,
    /// Full buffers handed to the running encoders.
    pool_full: usize,
    /// Filled when the encoders finish: complete parts and the entries of each job (job `i` of
    /// the session at `jobs[i]`) awaiting the commit segment.
    parts_done: Vec<Path>,
    jobs: Vec<JobEntries>,
    points: u64,
    /// Buffers handed to the encoder so far (jobs, numbered from 0).
    encodes: u64,
    /// Parts opened by earlier encoders of this session (a new encoder numbers on from here).
    parts_made: u32,
    /// Where the current statement began, for [`Session::rollback_statement`].
    stmt_start: StatementMark,
    /// A statement is writing into the session.
    in_statement: bool,
    /// The commit replaces every block it writes (`REPLACE_BLOCKS`).
    replace_blocks: bool,
    /// Handing a job over or finishing the encoders failed: some encoded rows may be lost, so
    /// the session can neither roll a statement back nor commit; it must be dropped.
    failed: bool,
}

/// The session's state when a statement began: what [`Session::rollback_statement`] restores.
#[derive(Clone, Copy, Debug, Default)]
struct StatementMark {
    /// Batches in the buffer.
    buffered_batches: usize,
    /// Bytes in the buffer.
    buffered_bytes: usize,
    /// The first job holding rows of this statement: jobs before it hold only earlier rows.
    first_job: u64,
    /// Points written in the session.
    points: u64,
}

/// A new session id: `<unix milliseconds>-<random hex>`.
pub fn new_session_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let rand = RandomState::new().hash_one(std::process::id()) as u32;
    format!("{now:013}-{:08x}", rand)
}

impl Session {
    /// Starts a session. The store directory is created if missing; its schema is read if present.
    /// `attr_arg` names the attributes argument in errors (`ATTRIBUTES` for COPY).
    pub fn start(
        store: &Store,
        worker: &str,
        attr_names: Vec<String>,
        attr_arg: &str,
        opts: WriterOptions,
    ) -> Result<Session> {
        layout::check_worker_id(worker, "WORKER")?;
        crate::schema::check_attribute_names(&attr_names, attr_arg)?;
        opts.check()?;
        let store = store.clone();
        let schema = read_schema(&store)?;
        if let Some(s) = &schema {
            let have: Vec<&str> = s.attributes().map(|c| c.name.as_str()).collect();
            if have != attr_names.iter().map(String::as_str).collect::<Vec<_>>() {
                return Err(Error::arg(
                    attr_arg,
                    format!(
                        "must match the store's attributes [{}], got [{}]",
                        have.join(", "),
                        attr_names.join(", ")
                    ),
                ));
            }
        }
        Ok(Session {
            store,
            worker: worker.to_string(),
            id: new_session_id(),
            schema_persisted: schema.is_some(),
            schema,
            attr_names,
            opts,
            buffer: Vec::new(),
            buffered_bytes: 0,
            encoders: Vec::new(),
            pool_jobs: Vec::new(),
            pool_full: 0,
            parts_done: Vec::new(),
            jobs: Vec::new(),
            points: 0,
            encodes: 0,
            parts_made: 0,
            stmt_start: StatementMark::default(),
            in_statement: false,
            replace_blocks: false,
            failed: false,
        })
    }

    /// Checks that a statement names the same attributes as the session.
    pub fn check_attributes(&self, names: &[String], arg: &str) -> Result<()> {
        if names != self.attr_names.as_slice() {
            return Err(Error::arg(
                arg,
                format!(
                    "must match the attributes of this worker's open session [{}], got [{}]",
                    self.attr_names.join(", "),
                    names.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The store this session writes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Changes the options for what is written from now on.
    pub fn set_options(&mut self, opts: WriterOptions) -> Result<()> {
        opts.check()?;
        self.opts = opts;
        Ok(())
    }

    /// Refuses a second statement while one is writing into the session.
    pub fn check_free(&self) -> Result<()> {
        if self.in_statement {
            return Err(Error::Conflict {
                store: self.store.name.clone(),
                msg: format!(
                    "worker '{}' is already being written by another statement in this process; a worker id takes one writer at a time",
                    self.worker
                ),
            });
        }
        Ok(())
    }

    /// Marks the start of a statement, for [`Session::rollback_statement`]. A worker takes one
    /// writing statement at a time: a second one while another is running is refused, so that
    /// neither can commit or roll back the other's rows.
    pub fn begin_statement(&mut self) -> Result<()> {
        self.check_free()?;
        self.in_statement = true;
        self.stmt_start = StatementMark {
            buffered_batches: self.buffer.len(),
            buffered_bytes: self.buffered_bytes,
            first_job: self.encodes,
            points: self.points,
        };
        Ok(())
    }

    /// Whether a statement is writing into the session.
    pub fn in_statement(&self) -> bool {
        self.in_statement
    }

    /// Marks the end of the current statement (its rows stay in the session).
    pub fn end_statement(&mut self) {
        self.in_statement = false;
    }

    /// Undoes the current statement's rows and ends it, keeping every earlier row of the session.
    /// Returns `false` if that was impossible because the encoder failed; the caller must then
    /// drop the session (which discards everything uncommitted).
    pub fn rollback_statement(&mut self) -> bool {
        self.in_statement = false;
        let mark = self.stmt_start;
        self.buffer.truncate(mark.buffered_batches);
        self.buffered_bytes = mark.buffered_bytes;
        self.points = mark.points;
        if self.failed {
            return false;
        }
        if self.encodes == mark.first_job {
            return true;
        }
        // Some of the statement's rows are encoded: wait for the encoder, then keep the entries
        // of the jobs before the statement's.
        if self.finish_encoder().is_err() {
            return false;
        }
        if self.jobs.len() < mark.first_job as usize {
            return false;
        }
        self.jobs.truncate(mark.first_job as usize);
        self.encodes = mark.first_job;
        let used: std::collections::HashSet<&str> = self
            .jobs
            .iter()
            .flat_map(|j| j.parts.iter().map(String::as_str))
            .collect();
        let (kept, unused): (Vec<Path>, Vec<Path>) = std::mem::take(&mut self.parts_done)
            .into_iter()
            .partition(|p| used.contains(p.as_ref()));
        self.parts_done = kept;
        for p in unused {
            // A part left behind (delete failed) is referenced by no commit: never read.
            let _ = self.store.delete(&p);
        }
        true
    }

    /// Whether the session holds nothing: no rows, no encoded parts. An empty session can be
    /// dropped, so that the next statement starts afresh (its types and attributes are not
    /// fixed by a statement that wrote nothing).
    pub fn is_empty(&self) -> bool {
        self.points == 0 && self.encoders.is_empty() && self.parts_done.is_empty()
    }

    /// Makes the next commit replace every block it writes: every earlier point of those blocks
    /// (any label, any worker) is hidden once it is consolidated. Only for a session holding no
    /// uncommitted rows yet, so that the blocks replaced are exactly those of the statement.
    pub fn set_replace_blocks(&mut self, arg: &str) -> Result<()> {
        if !self.is_empty() && !self.replace_blocks {
            return Err(Error::arg(
                arg,
                format!(
                    "cannot be used while worker '{}' has uncommitted rows written without it: commit them first (pocaduck_commit)",
                    self.worker
                ),
            ));
        }
        self.replace_blocks = true;
        Ok(())
    }

    /// Checks the column types of incoming rows (`label, block, x, y, z, attr…`) before any row
    /// arrives. In a store with no schema yet, the first rows define it; it is persisted by the
    /// first commit, so a failed first write leaves no schema behind.
    pub fn check_input_types(&mut self, types: &[DataType]) -> Result<()> {
        let wanted = schema_for_input(types, &self.attr_names)?;
        if self.schema.is_none() {
            self.schema = read_schema(&self.store)?;
            self.schema_persisted = self.schema.is_some();
            if self.schema.is_none() {
                self.schema = Some(wanted);
            }
        }
        Ok(())
    }

    /// Writes the store schema if this session defined it.
    fn persist_schema(&mut self) -> Result<()> {
        if self.schema_persisted {
            return Ok(());
        }
        let ours = self
            .schema
            .clone()
            .ok_or_else(|| Error::Internal("no schema".into()))?;
        let file = layout::schema_file();
        if self
            .store
            .put_if_absent(&file, Bytes::from(ours.to_json()))?
        {
            self.store.sync(&[file])?;
        } else {
            let theirs = read_schema(&self.store)?;
            if theirs.as_ref() != Some(&ours) {
                return Err(Error::Conflict {
                    store: self.store.name.clone(),
                    msg: format!(
                        "another writer created the store with a different schema while worker '{}' was writing; nothing was committed",
                        self.worker
                    ),
                });
            }
        }
        self.schema_persisted = true;
        Ok(())
    }

    /// Appends rows `label, block, x, y, z, attr…`.
    pub fn append(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let types: Vec<DataType> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        self.check_input_types(&types)?;
        let schema = self
            .schema
            .as_ref()
            .ok_or_else(|| Error::Internal("no schema".into()))?;
        // Rows are numbered from the start of the statement (0 = its first input row).
        let b = normalize(batch, schema, self.points - self.stmt_start.points)?;
        self.buffered_bytes += b.get_array_memory_size();
        self.points += b.num_rows() as u64;
        self.buffer.push(b);
        // A job fills while each encoder holds an earlier one and its workspace (see
        // ARCHITECTURE.md, *Memory and threads*): with `n` encoders about 2n + 1 jobs' worth
        // on typical rows, 4n + 1 at worst. The buffer covers 6n + 4 jobs (a tenth of it each
        // with one encoder, a sixteenth with two), leaving room for the parts' pages being
        // encoded and uploaded, the jobs' index entries and the allocator's slack; small jobs
        // also keep the time a COPY starts and ends with an encoder idle short.
        if self.buffered_bytes as u64 >= self.job_bytes() {
            self.encode_buffer()?;
        }
        Ok(())
    }

    /// The buffered bytes that make a full buffer, handed to an encoder as one job.
    fn job_bytes(&self) -> u64 {
        self.opts.buffer_size / (6 * encoders() as u64 + 4)
    }

    /// Hands the buffered rows to an encoder thread, which orders them by (label, block) and
    /// encodes them into parts while new rows are buffered. Waits while every encoder it may
    /// choose is busy with an earlier job (so at most `encoders() + 1` jobs exist). An error marks the
    /// session failed.
    fn encode_buffer(&mut self) -> Result<()> {
        let r = self.encode_buffer_inner();
        self.failed |= r.is_err();
        r
    }

    fn encode_buffer_inner(&mut self) -> Result<()> {
        // Rows of earlier statements still buffered go into a job of their own, so that this
        // statement's rows can be rolled back alone.
        let earlier = self.stmt_start.buffered_batches;
        if self.in_statement && earlier > 0 && earlier < self.buffer.len() {
            let rest = self.buffer.split_off(earlier);
            let rest_bytes = self.buffered_bytes - self.stmt_start.buffered_bytes;
            self.buffered_bytes = self.stmt_start.buffered_bytes;
            self.send_buffer()?;
            self.buffer = rest;
            self.buffered_bytes = rest_bytes;
        }
        self.send_buffer()
    }

    /// Hands the rows still buffered at a commit to the encoders. With every encoder running
    /// (the session has had a full job), the rest is split into a job per encoder, so that they
    /// finish together instead of one encoding it while the others wait (on the bench's 9 M rows,
    /// ~40 ms of a 0.57 s COPY ran on one encoder). A commit that fails discards the session, so
    /// the statement's marks need no job boundary here.
    fn encode_rest(&mut self) -> Result<()> {
        let n = encoders();
        if self.pool_full == 0 || n < 2 || self.buffer.len() < n {
            return self.encode_buffer();
        }
        let r = self.send_split(n);
        self.failed |= r.is_err();
        r
    }

    /// Hands the buffer over as `n` jobs of consecutive batches (about equal in number).
    fn send_split(&mut self, n: usize) -> Result<()> {
        let mut rest = std::mem::take(&mut self.buffer);
        let per = rest.len().div_ceil(n);
        while !rest.is_empty() {
            let tail = rest.split_off(per.min(rest.len()));
            self.buffer = std::mem::replace(&mut rest, tail);
            self.buffered_bytes = self.buffer.iter().map(|b| b.get_array_memory_size()).sum();
            self.send_buffer()?;
        }
        Ok(())
    }

    /// Hands the whole buffer to the encoder as one job.
    fn send_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.in_statement && self.stmt_start.buffered_batches > 0 {
            // The buffer holds only earlier rows (none of this statement's yet).
            self.stmt_start.buffered_batches = 0;
            self.stmt_start.buffered_bytes = 0;
            self.stmt_start.first_job = self.encodes + 1;
        }
        self.encodes += 1;
        let n = encoders();
        let full = self.buffered_bytes as u64 >= self.job_bytes();
        // Small jobs of a session that has had no full one go to the first encoder (a session of
        // small writes fills one part); other jobs to whichever encoder is free first.
        let any = full || self.pool_full > 0;
        let want = if any { n } else { 1 };
        while self.encoders.len() < want {
            let k = self.encoders.len();
            let store_schema = self
                .schema
                .as_ref()
                .ok_or_else(|| Error::Internal("no schema".into()))?;
            let (schema, block) = (store_schema.arrow(), store_schema.block_type());
            let (worker, session) = (self.worker.clone(), self.id.clone());
            // Encoder k of n numbers its parts k, k + n, k + 2n, … after the earlier encoders'.
            let base = self.parts_made + k as u32;
            let paths =
                Box::new(move |i: u32| layout::part_file(&worker, &session, base + i * n as u32));
            self.encoders.push(Encoder::spawn(PartWriter::new(
                PartSink::new(self.store.clone(), schema, paths),
                block,
                self.opts.entries_in_memory,
            ))?);
        }
        let batches = std::mem::take(&mut self.buffer);
        self.buffered_bytes = 0;
        let target = self.opts.target_file_size;
        let Some(k) = self.hand_over(batches, target, want) else {
            // An encoder stopped on an error: collect it (and its parts, for cleanup).
            return self.finish_encoder();
        };
        self.pool_jobs.push(k);
        self.pool_full += usize::from(full);
        Ok(())
    }

    /// Hands a job to the first of the first `want` encoders that is free (waiting for one, in
    /// steps of 0.2 ms), starting with the one after the last full job's; returns it, or `None`
    /// if one has stopped on an error.
    fn hand_over(&mut self, batches: Vec<RecordBatch>, target: u64, want: usize) -> Option<usize> {
        let mut job = (batches, target);
        let start = self.pool_full % want;
        loop {
            // An encoder that stopped (on an error) fails the hand-over even if another is free.
            if self.encoders.iter().any(Encoder::stopped) {
                return None;
            }
            for i in 0..want {
                let k = (start + i) % want;
                match self.encoders[k].try_send(job) {
                    Ok(()) => return Some(k),
                    Err(Some(j)) => job = j,
                    Err(None) => return None,
                }
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Stops the encoders (closing their open parts) and takes over their entries, in job order,
    /// and their parts.
    fn finish_encoder(&mut self) -> Result<()> {
        if self.encoders.is_empty() {
            return Ok(());
        }
        let n = encoders();
        let mut res = Ok(());
        let mut writers = Vec::new();
        let mut made = 0;
        let started = self.encoders.len();
        for enc in std::mem::take(&mut self.encoders) {
            let (pw, r) = enc.join();
            let r = match pw {
                Some(mut pw) => {
                    let r = r.and_then(|_| pw.sink.close());
                    made = made.max(pw.sink.made());
                    self.parts_done.append(&mut pw.sink.take_done());
                    writers.push(pw);
                    r
                }
                None => r,
            };
            if res.is_ok() {
                res = r;
            }
        }
        self.parts_made += made * n as u32;
        let jobs = std::mem::take(&mut self.pool_jobs);
        self.pool_full = 0;
        // Every encoder came back (one handed no job is fine: jobs go to whichever is free).
        if res.is_ok() && writers.len() == started && jobs.iter().all(|&k| k < started) {
            // Each encoder's jobs, in the order the jobs were handed out.
            let mut per: Vec<_> = writers
                .iter_mut()
                .map(|pw| std::mem::take(&mut pw.jobs).into_iter())
                .collect();
            for (j, &k) in jobs.iter().enumerate() {
                let Some(job) = per[k].next() else {
                    res = Err(Error::Internal(format!("encoder {k} lost job {j}")));
                    break;
                };
                self.jobs.push(job);
            }
        } else if res.is_ok() {
            res = Err(Error::Internal("an encoder thread was lost".into()));
        }
        if res.is_err() {
            self.failed = true;
            for pw in &mut writers {
                pw.discard();
            }
        }
        res
    }

    /// Makes everything written in this session durable and visible to consolidate.
    pub fn commit(mut self) -> Result<CommitSummary> {
        let res = self.commit_inner();
        if res.is_err() {
            self.abort();
        }
        res
    }

    fn commit_inner(&mut self) -> Result<CommitSummary> {
        if self.failed {
            return Err(Error::Internal(format!(
                "worker '{}': an earlier write of this session failed, so its uncommitted rows were discarded",
                self.worker
            )));
        }
        self.encode_rest()?;
        self.finish_encoder()?;
        let mut summary = CommitSummary {
            worker: self.worker.clone(),
            parts: self.parts_done.len() as u64,
            points: self.points,
            entries: self.jobs.iter().map(|j| j.count as u64).sum(),
            ..Default::default()
        };
        if summary.entries == 0 {
            return Ok(summary);
        }
        self.persist_schema()?;
        self.store.sync(&self.parts_done)?;
        let schema = self
            .schema
            .as_ref()
            .ok_or_else(|| Error::Internal("no schema".into()))?;
        let mut meta = vec![
            ("pocaduck.session", self.id.clone()),
            ("pocaduck.worker", self.worker.clone()),
            (
                crate::index::META_COMMITTED_MS,
                crate::log::now_ms().to_string(),
            ),
        ];
        if self.replace_blocks {
            meta.push((crate::index::META_REPLACE_BLOCKS, "true".to_string()));
        }
        // Read back one piece at a time (spilled pieces from their temporary files), and written
        // as it is encoded (on a local store, straight to the file).
        let pieces = self.jobs.iter().flat_map(|j| j.pieces());
        let block = schema.block_type();
        let write = |w: &mut (dyn std::io::Write + Send)| {
            concat_segments(w, pieces, block, &meta).map(|_| ())
        };
        let seq = create_commit_streamed(&self.store, &self.worker, write, "a commit")?;
        summary.commit = seq;
        self.jobs.clear();
        self.parts_done.clear();
        Ok(summary)
    }

    /// Discards everything uncommitted: buffered rows, the open part, completed parts.
    pub fn abort(&mut self) {
        self.buffer.clear();
        for enc in std::mem::take(&mut self.encoders) {
            if let (Some(mut pw), _) = enc.join() {
                pw.discard();
            }
        }
        self.pool_jobs.clear();
        self.pool_full = 0;
        for p in self.parts_done.drain(..) {
            let _ = self.store.delete(&p);
        }
        self.jobs.clear();
        self.points = 0;
    }

    /// Points written in this session and not yet committed.
    pub fn pending_points(&self) -> u64 {
        self.points
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // An uncommitted session left behind (error, or never committed) must not leave parts
        // that look like data. Committed sessions have nothing left to delete.
        self.abort();
    }
}

/// The error for a path that holds no pocaduck store.
pub fn not_a_store(store: &Store) -> Error {
    Error::store(
        &store.name,
        "is not a pocaduck store (no _pocaduck.json and no index)",
    )
}

/// Refuses a store with neither an index (`has_index`) nor a schema.
pub fn require_store(store: &Store, has_index: bool) -> Result<()> {
    match has_index || read_schema(store)?.is_some() {
        true => Ok(()),
        false => Err(not_a_store(store)),
    }
}

/// Reads the store schema, if the store has one.
pub fn read_schema(store: &Store) -> Result<Option<StoreSchema>> {
    match store.get_opt(&layout::schema_file())? {
        None => Ok(None),
        Some(b) => StoreSchema::from_json(&b)
            .map(Some)
            .map_err(|e| Error::file(&store.name, layout::schema_file().as_ref(), e)),
    }
}

/// Creates `bytes` as `worker`'s next commit segment and returns its number: after the commits
/// on storage and after the last one merged (a worker id reused after its directory was deleted
/// must not write a commit numbered at or below one the index already holds: consolidate would
/// skip it). `what` names it in errors (`a commit`, `a delete`).
pub(crate) fn create_commit(store: &Store, worker: &str, bytes: Bytes, what: &str) -> Result<u64> {
    let write = |w: &mut (dyn std::io::Write + Send)| {
        w.write_all(&bytes).map_err(|e| Error::Store {
            store: store.name.clone(),
            msg: format!("cannot write {what} for worker '{worker}': {e}"),
        })
    };
    create_commit_streamed(store, worker, write, what)
}

/// [`create_commit`] of a segment that `write` produces (on a local store, straight into the
/// staging file: see [`crate::log::create_numbered_streamed`]).
pub(crate) fn create_commit_streamed(
    store: &Store,
    worker: &str,
    write: impl FnOnce(&mut (dyn std::io::Write + Send)) -> Result<()>,
    what: &str,
) -> Result<u64> {
    let first = latest_commit(store, worker)?.max(crate::log::merged_commit(store, worker)?) + 1;
    crate::log::create_numbered_streamed(
        store,
        first,
        |n| layout::commit_file(worker, n),
        write,
        &format!("{what} for worker '{worker}'"),
    )
}

/// Highest commit sequence of a worker (0 if none).
pub fn latest_commit(store: &Store, worker: &str) -> Result<u64> {
    Ok(store
        .list(&layout::commits_dir(worker))?
        .iter()
        .filter_map(|m| layout::parse_commit_seq(&m.location))
        .max()
        .unwrap_or(0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::OpenMode;

    /// Starts a session of `worker` (no attributes) on the store at `name`, created if missing.
    /// A session in store `name` with the given part target and buffer sizes (other options
    /// default).
    pub(crate) fn sized_session(
        name: &str,
        worker: &str,
        target_file_size: u64,
        buffer_size: u64,
    ) -> Session {
        let opts = WriterOptions {
            target_file_size,
            buffer_size,
            ..Default::default()
        };
        session_at(name, worker, opts).unwrap()
    }

    pub(crate) fn session_at(name: &str, worker: &str, opts: WriterOptions) -> Result<Session> {
        Session::start(
            &Store::open(name, OpenMode::Create)?,
            worker,
            vec![],
            "ATTRIBUTES",
            opts,
        )
    }
    use arrow::array::{Int32Array, Int64Array, StringArray, UInt64Array};

    pub(crate) fn rows(labels: &[u64], block: &str, xyz: &[[i32; 3]]) -> RecordBatch {
        let n = labels.len();
        RecordBatch::try_from_iter(vec![
            (
                "label",
                Arc::new(UInt64Array::from(labels.to_vec())) as ArrayRef,
            ),
            (
                "block",
                Arc::new(StringArray::from(vec![block; n])) as ArrayRef,
            ),
            (
                "x",
                Arc::new(Int32Array::from_iter_values(xyz.iter().map(|p| p[0]))) as ArrayRef,
            ),
            (
                "y",
                Arc::new(Int32Array::from_iter_values(xyz.iter().map(|p| p[1]))) as ArrayRef,
            ),
            (
                "z",
                Arc::new(Int32Array::from_iter_values(xyz.iter().map(|p| p[2]))) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    /// A job's index entries: one per (label, block) run of its part, with the run's rows and
    /// bounding box, whatever order the rows arrived in, and when a block's rows come in two
    /// runs with another block's between them.
    #[test]
    fn entries_are_label_block_runs_with_bbox() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let mut s = session_at(name, "w", WriterOptions::default()).unwrap();
        // (label, block, x, y, z): label 1 in blocks 5 and 6, label 2 in block 6; block 6 in
        // two runs.
        let rows = [
            (1u64, 6i64, [0, 0, 0]),
            (2, 6, [0, 0, 0]),
            (1, 5, [1, 2, 0]),
            (1, 5, [3, -2, 9]),
            (1, 6, [4, 4, 4]),
            (2, 6, [-1, 0, 0]),
        ];
        let b = RecordBatch::try_from_iter(vec![
            (
                "label",
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
            ),
            (
                "block",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))) as ArrayRef,
            ),
            (
                "x",
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2[0]))) as ArrayRef,
            ),
            (
                "y",
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2[1]))) as ArrayRef,
            ),
            (
                "z",
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2[2]))) as ArrayRef,
            ),
        ])
        .unwrap();
        s.append(&b).unwrap();
        let c = s.commit().unwrap();
        let file = dir.path().join(layout::commit_file("w", c.commit).as_ref());
        let bytes = Bytes::from(std::fs::read(&file).unwrap());
        let r = crate::index::decode_segment(bytes, name, "c").unwrap();
        let got: Vec<_> = r
            .iter()
            .map(|e| (e.label, e.block.clone(), e.row_start, e.row_count, e.bbox))
            .collect();
        use crate::index::BlockId::Int;
        assert_eq!(
            got,
            vec![
                (1, Int(5), 0, 2, [1.0, -2.0, 0.0, 3.0, 2.0, 9.0]),
                (1, Int(6), 2, 2, [0.0, 0.0, 0.0, 4.0, 4.0, 4.0]),
                (2, Int(6), 4, 2, [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
            ]
        );
    }

    #[test]
    fn nothing_is_visible_before_commit_and_everything_after() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let mut s = session_at(name, "w1", WriterOptions::default()).unwrap();
        s.append(&rows(&[3, 1, 3], "b0", &[[1, 2, 3], [4, 5, 6], [7, 8, 9]]))
            .unwrap();
        assert_eq!(latest_commit(s.store(), "w1").unwrap(), 0);
        let c = s.commit().unwrap();
        assert_eq!((c.commit, c.points, c.entries, c.parts), (1, 3, 2, 1));
        let store = Store::open(name, OpenMode::Existing).unwrap();
        assert_eq!(latest_commit(&store, "w1").unwrap(), 1);
    }

    #[test]
    fn dropped_session_leaves_no_part_files() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let mut s = sized_session(name, "w1", 1024, 1 << 20);
        let pts: Vec<[i32; 3]> = (0..50_000).map(|i| [i, i, i]).collect();
        let labels: Vec<u64> = (0..50_000).map(|i| i % 97).collect();
        s.append(&rows(&labels, "b", &pts)).unwrap();
        drop(s);
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let files: Vec<_> = store.list(&Path::from("workers")).unwrap();
        assert!(files.is_empty(), "{files:?}");
    }

    #[test]
    fn many_small_writes_fill_few_parts() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let mut s = sized_session(name, "w1", 256 << 10, 4 << 20);
        for blk in 0..300 {
            let pts: Vec<[i32; 3]> = (0..1000).map(|i| [i * 7 + blk, i * 13, blk * i]).collect();
            let labels: Vec<u64> = (0..1000).map(|i| (i % 10) as u64 + blk as u64).collect();
            s.begin_statement().unwrap();
            s.append(&rows(&labels, &format!("b{blk}"), &pts)).unwrap();
            s.end_statement();
        }
        let c = s.commit().unwrap();
        let store = Store::open(name, OpenMode::Existing).unwrap();
        let parts = store.list(&Path::from("workers/w1/parts")).unwrap();
        let bytes: u64 = parts.iter().map(|m| m.size).sum();
        let expect = bytes.div_ceil(256 << 10);
        assert_eq!(c.parts as usize, parts.len());
        // Each encoder leaves one part below the target size at most.
        assert!(
            parts.len() as u64 <= expect + encoders() as u64,
            "{} parts for {bytes} bytes",
            parts.len()
        );
        assert_eq!(c.points, 300_000);
    }

    /// A statement that ends a moment after the next one asks for the session (as a failed COPY
    /// whose state DuckDB destroys late) is waited for: the next one finds no session left.
    #[test]
    fn next_statement_waits_for_a_late_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let slot = session_slot(&Store::open(name, OpenMode::Create).unwrap(), "w1").unwrap();
        let start = || session_at(name, "w1", WriterOptions::default());
        let mut st = Statement::begin(slot.clone(), start, |_| Ok(())).unwrap();
        st.append(&rows(&[1], "b", &[[1, 1, 1]])).unwrap();
        let late = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(st);
        });
        let again = session_slot(&Store::open(name, OpenMode::Create).unwrap(), "w1").unwrap();
        assert!(
            lock_slot(&again).is_none(),
            "the failed statement's session is gone"
        );
        late.join().unwrap();
    }

    #[test]
    fn statement_guard_rolls_back_unless_finished() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let slot: Slot = Default::default();
        let start = || session_at(name, "w1", WriterOptions::default());
        // A failed first statement leaves no session behind.
        let mut st = Statement::begin(slot.clone(), start, |_| Ok(())).unwrap();
        st.append(&rows(&[1], "b", &[[1, 1, 1]])).unwrap();
        drop(st);
        assert!(lock_slot(&slot).is_none());
        // A finished statement keeps its rows; a second, failed one rolls back only its own.
        let mut st = Statement::begin(slot.clone(), start, |_| Ok(())).unwrap();
        st.append(&rows(&[1], "b", &[[1, 1, 1]])).unwrap();
        assert_eq!(st.finish(false).unwrap().pending_points, 1);
        let mut st = Statement::begin(slot.clone(), start, |_| Ok(())).unwrap();
        st.append(&rows(&[2, 2], "b", &[[1, 1, 1], [2, 2, 2]]))
            .unwrap();
        // Another statement is refused while this one runs, and does not close the session.
        let err = Statement::begin(slot.clone(), start, |_| Ok(()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("one writer at a time"), "{err}");
        drop(st);
        assert_eq!(lock_slot(&slot).as_ref().unwrap().pending_points(), 1);
        // A refused statement (failed `prepare`) keeps a session that holds rows.
        let err = Statement::begin(slot.clone(), start, |s| {
            s.check_attributes(&["a".into()], "attributes")
        });
        assert!(err.is_err());
        assert_eq!(lock_slot(&slot).as_ref().unwrap().pending_points(), 1);
        // Committing closes the session.
        let guard = lock_slot(&slot);
        let end = Statement::begin(guard, start, |_| Ok(()))
            .unwrap()
            .finish(true)
            .unwrap();
        assert_eq!(end.commit.map(|c| (c.commit, c.points)), Some((1, 1)));
        assert!(lock_slot(&slot).is_none());
    }

    /// A statement refused because another one is writing the worker does not change that
    /// statement's session: `REPLACE_BLOCKS` would otherwise mark the other statement's commit.
    #[test]
    fn a_refused_statement_leaves_the_running_ones_session_alone() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let slot: Slot = Default::default();
        let start = || session_at(name, "w1", WriterOptions::default());
        let st = Statement::begin(slot.clone(), start, |_| Ok(())).unwrap();
        let err = Statement::begin(slot.clone(), start, |s| {
            s.set_replace_blocks("REPLACE_BLOCKS")
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("one writer at a time"), "{err}");
        assert!(!lock_slot(&slot).as_ref().unwrap().replace_blocks);
        drop(st);
    }

    /// A failed statement whose rows were partly encoded already (small buffer) rolls back its
    /// own rows only: every row of the earlier statements is committed, whether it was encoded
    /// before the failing statement began or still buffered with the failing statement's rows.
    #[test]
    fn statement_rollback_keeps_earlier_encoded_rows() {
        use crate::consolidate::tests::JsonCodec;
        // Entries kept in memory, and spilled to a temporary file as soon as they are made.
        for (buffered_first, spill) in [(false, false), (true, false), (false, true), (true, true)]
        {
            let dir = tempfile::tempdir().unwrap();
            let name = dir.path().to_str().unwrap();
            let opts = WriterOptions {
                target_file_size: 64 << 10,
                buffer_size: 1 << 20,
                entries_in_memory: if spill { 0 } else { DEFAULT_ENTRIES_IN_MEMORY },
            };
            let mut s = session_at(name, "w", opts).unwrap();
            let block = |k: i32, n: usize| {
                let labels: Vec<u64> = (0..n).map(|i| (i % 50) as u64).collect();
                let pts: Vec<[i32; 3]> = (0..n).map(|i| [k, i as i32, 0]).collect();
                rows(&labels, &format!("b{k}"), &pts)
            };
            // Three statements that succeed: blocks 1..=3, 20,000 rows each (several encodes).
            for k in 1..=3 {
                s.begin_statement().unwrap();
                s.append(&block(k, 20_000)).unwrap();
                s.end_statement();
            }
            if buffered_first {
                // A small statement whose rows stay buffered when the next one begins.
                s.begin_statement().unwrap();
                s.append(&block(4, 10)).unwrap();
                s.end_statement();
            }
            let kept = s.pending_points();
            let encodes = s.encodes;
            s.begin_statement().unwrap();
            for _ in 0..4 {
                s.append(&block(9, 20_000)).unwrap();
            }
            assert!(
                s.encodes > encodes,
                "the failing statement's rows were encoded"
            );
            assert!(s.rollback_statement());
            assert_eq!(s.pending_points(), kept);
            let made: Vec<_> = s.jobs.iter().filter(|j| j.count > 0).collect();
            assert!(made.len() >= 3, "{} jobs with entries", made.len());
            assert!(
                made.iter().all(|j| j.spilled() == spill),
                "spill={spill}: every job's entries spilled, or none"
            );
            // The session goes on: one more statement, then the commit.
            s.begin_statement().unwrap();
            s.append(&block(5, 1000)).unwrap();
            s.end_statement();
            let c = s.commit().unwrap();
            assert_eq!(c.points, kept + 1000);
            let store = Store::open(name, OpenMode::Existing).unwrap();
            crate::consolidate::consolidate(&store, &JsonCodec).unwrap();
            let idx = crate::reader::open(name, &JsonCodec).unwrap();
            let labels: Vec<u64> = (0..50).collect();
            let got = idx.points(&labels, &[2]).unwrap();
            let mut per_block = std::collections::BTreeMap::<i32, u64>::new();
            for b in &got {
                let xs = b.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
                for x in xs.values() {
                    *per_block.entry(*x).or_default() += 1;
                }
            }
            let mut want = std::collections::BTreeMap::from([
                (1, 20_000),
                (2, 20_000),
                (3, 20_000),
                (5, 1000),
            ]);
            if buffered_first {
                want.insert(4, 10);
            }
            assert_eq!(
                per_block, want,
                "buffered_first={buffered_first} spill={spill}"
            );
            // No part is left that holds none of the committed rows.
            let parts = std::fs::read_dir(dir.path().join("workers/w/parts"))
                .unwrap()
                .count();
            assert_eq!(parts as u64, c.parts, "buffered_first={buffered_first}");
        }
    }

    /// A session whose one job is full starts every encoder, and hands the job to the first
    /// free one: the encoder left without a job does not fail the commit (it did, "an encoder
    /// thread was lost", when the job went to the first encoder), in sessions of one, two and
    /// three full jobs.
    #[test]
    fn an_encoder_handed_no_job_does_not_fail_the_commit() {
        for jobs in 1..=3u64 {
            for _ in 0..5 {
                let dir = tempfile::tempdir().unwrap();
                let name = dir.path().to_str().unwrap();
                let mut s = sized_session(name, "w", 64 << 20, 1 << 20);
                for j in 0..jobs {
                    // 20,000 rows: more than a job of a 1 MiB buffer.
                    let labels: Vec<u64> = (0..20_000).map(|i| i % 7).collect();
                    let pts: Vec<[i32; 3]> = (0..20_000).map(|i| [i, 0, 0]).collect();
                    s.append(&rows(&labels, &format!("b{j}"), &pts)).unwrap();
                }
                let c = s.commit().unwrap();
                assert_eq!((c.points, c.entries), (20_000 * jobs, 7 * jobs));
            }
        }
    }

    /// An encoder that fails (its parts cannot be written) fails the session: the statement that
    /// finds out cannot be rolled back alone (rows of earlier statements were lost with the
    /// encoder), and nothing can be committed. Here the failure is found when the rows of an
    /// earlier statement, still buffered, are handed over on their own.
    #[test]
    fn a_failed_encoder_fails_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap();
        let mut s = sized_session(name, "w", 64 << 10, 1 << 20);
        // The parts directory is a file: the first part to be uploaded fails.
        std::fs::create_dir_all(dir.path().join("workers/w")).unwrap();
        std::fs::write(dir.path().join("workers/w/parts"), b"not a directory").unwrap();
        let block = |k: i32, n: usize| {
            let labels: Vec<u64> = (0..n).map(|i| (i % 50) as u64).collect();
            // Coordinates that do not compress, so that parts fill.
            let pts: Vec<[i32; 3]> = (0..n)
                .map(|i| {
                    [
                        k,
                        (i as u32).wrapping_mul(2_654_435_761).rotate_left(13) as i32,
                        0,
                    ]
                })
                .collect();
            rows(&labels, &format!("b{k}"), &pts)
        };
        // A full buffer, handed to the first encoder, which fails on its own thread.
        s.begin_statement().unwrap();
        s.append(&block(1, 200_000)).unwrap();
        s.end_statement();
        // A small statement whose rows stay buffered.
        s.begin_statement().unwrap();
        s.append(&block(2, 10)).unwrap();
        s.end_statement();
        // The next statement fills the buffer: the small statement's rows go to an encoder on
        // their own, then the statement's. A hand-over after the first encoder stopped fails (if
        // the first encoder was still at work, both went to the second: then the commit fails).
        s.begin_statement().unwrap();
        match s.append(&block(3, 20_000)) {
            Err(err) => {
                assert!(err.to_string().contains("parts"), "{err}");
                assert!(
                    !s.rollback_statement(),
                    "rolled back as if nothing was lost"
                );
            }
            Ok(()) => s.end_statement(),
        }
        let err = s.commit().unwrap_err().to_string();
        assert!(err.contains("failed") || err.contains("parts"), "{err}");
        assert!(std::fs::read_dir(dir.path().join("workers/w/commits")).is_err());
    }

    #[test]
    fn statement_rollback_restores_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            session_at(dir.path().to_str().unwrap(), "w1", WriterOptions::default()).unwrap();
        s.append(&rows(&[1], "b", &[[1, 1, 1]])).unwrap();
        s.begin_statement().unwrap();
        let second = s.begin_statement().unwrap_err().to_string();
        assert!(second.contains("one writer at a time"), "{second}");
        s.append(&rows(&[2, 2], "b", &[[1, 1, 1], [2, 2, 2]]))
            .unwrap();
        assert!(s.rollback_statement());
        assert_eq!(s.pending_points(), 1);
        assert_eq!(s.commit().unwrap().points, 1);
    }
}
