//! The table-function scaffold: what every `pocaduck_*` table function shares, so that a function
//! is one [`TableFn`] implementation in its own file plus one line in [`super::register`].
//!
//! - [`Bind`]: the bind prologue (`SET pocaduck_storage_options` and `pocaduck_max_staleness`
//!   applied, the `store` argument, named arguments, result columns);
//! - [`Table`]: the adapter from a [`TableFn`] to duckdb-rs' `VTab`. It binds inside [`run`] (an
//!   error or a panic becomes `<function>: <message>`), and starts the rows anew for each
//!   execution (its pieces at init, or its single stream at the first `func` call), so a prepared
//!   statement executed again does its work again and sees the newest generation (within
//!   `pocaduck_max_staleness`; the execution right after the bind uses the index the bind
//!   opened, [`StoreArg::bind_index`]);
//! - [`Emitter`]: hands result batches to DuckDB in chunks of at most 2048 rows, pulling a stream
//!   only as far as DuckDB asks (`LIMIT` stops reading);
//! - [`ubigint_row`], [`one_batch`]: the result of a one-row function.
//!
//! Guarantees: no callback panics into DuckDB (duckdb-rs contains them too); a function's
//! arguments are checked at bind time, before any work; its work runs once per execution.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use arrow::datatypes::DataType;
use duckdb::core::{DataChunkHandle, LogicalTypeHandle, LogicalTypeId};
use duckdb::vtab::{
    record_batch_to_duckdb_data_chunk, to_duckdb_logical_type, BindInfo, InitInfo,
    TableFunctionInfo, VTab, Value,
};
use duckdb::{ffi, Connection};

use super::args::{arg_string, parse_size};
use super::{guard, ClientContext};
use crate::error::{Error, Result};
use crate::reader;
use crate::storage::{OpenMode, StorageOptions, Store};

/// The error type of duckdb-rs callbacks.
pub type BoxErr = Box<dyn std::error::Error>;

/// Runs `f` for SQL function `func`: an error or a panic becomes `<func>: <message>`.
pub fn run<T>(func: &str, f: impl FnOnce() -> Result<T>) -> std::result::Result<T, BoxErr> {
    guard(func, f).map_err(Into::into)
}

/// A source of result batches.
pub type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// A table function of pocaduck. Its first argument is always `store` (VARCHAR).
pub trait TableFn: 'static {
    /// The SQL name (`pocaduck_…`), also the prefix of its error messages.
    const NAME: &'static str;
    /// Positional arguments after `store`, by name (typed ANY: checked at bind).
    const PARAMETERS: &'static [&'static str] = &[];
    /// Named arguments (`name := …`), typed ANY: checked at bind.
    const NAMED: &'static [&'static str] = &[];
    /// Whether DuckDB may project: [`TableFn::rows`] then gets the result columns wanted.
    const PROJECTION: bool = false;
    /// The validated arguments (the bind data).
    type Args: Send + Sync;

    /// Validates the arguments and declares the result columns.
    fn bind(b: &Bind) -> Result<Self::Args>;

    /// The rows of one execution, on one thread, started when the execution is initialized (a
    /// function that does its work here does it on the thread running the query, see
    /// `Table::init`). `columns` holds the indices of the result columns DuckDB wants when
    /// [`TableFn::PROJECTION`] is set (empty otherwise). A function whose [`TableFn::pieces`]
    /// always returns `Some` need not implement it.
    fn rows(_args: &Self::Args, _columns: &[usize]) -> Result<BatchIter> {
        Err(Error::Internal(format!(
            "{}: neither rows nor pieces to produce",
            Self::NAME
        )))
    }

    /// Rows that several DuckDB threads may produce at once, made when an execution starts: a
    /// source of independent pieces and the number of threads worth using. `None` (the
    /// default): [`TableFn::rows`] on one thread.
    fn pieces(_args: &Self::Args, _columns: &[usize]) -> Result<Option<(Box<dyn Pieces>, u64)>> {
        Ok(None)
    }
}

/// Rows made in independent pieces (see [`TableFn::pieces`]); any thread may take the next one.
pub trait Pieces: Send + Sync {
    /// The next piece's batches (`None`: no pieces left).
    fn next_piece(&self) -> Option<Result<Vec<RecordBatch>>>;
}

/// A table function whose result is one row of UBIGINT figures (`pocaduck_consolidate`,
/// `pocaduck_optimize`, `pocaduck_stats`): it supplies its columns, its bind and its computation;
/// the rest is [`TableFn`]'s.
pub trait OneRow: 'static {
    /// The SQL name.
    const NAME: &'static str;
    /// Named arguments (`name := …`), typed ANY: checked at bind.
    const NAMED: &'static [&'static str] = &[];
    /// The result columns, in order.
    const COLUMNS: &'static [&'static str];
    /// The validated arguments.
    type Args: Send + Sync;

    /// Validates the arguments.
    fn bind(b: &Bind) -> Result<Self::Args>;

    /// Does the work (once per execution) and returns the figures, one per column.
    fn compute(args: &Self::Args) -> Result<Vec<u64>>;
}

impl<T: OneRow> TableFn for T {
    const NAME: &'static str = T::NAME;
    const NAMED: &'static [&'static str] = T::NAMED;
    type Args = T::Args;

    fn bind(b: &Bind) -> Result<T::Args> {
        let args = T::bind(b)?;
        b.ubigint_columns(T::COLUMNS);
        Ok(args)
    }

    fn rows(args: &T::Args, _: &[usize]) -> Result<BatchIter> {
        let v = T::compute(args)?;
        if v.len() != T::COLUMNS.len() {
            return Err(Error::Internal(format!(
                "{} figures for {} columns",
                v.len(),
                T::COLUMNS.len()
            )));
        }
        Ok(one_batch(ubigint_row(T::COLUMNS, &v)?))
    }
}

/// A bind in progress: the arguments DuckDB passed and the result columns being declared.
pub struct Bind<'a> {
    info: &'a BindInfo,
    ctx: ClientContext,
    options: StorageOptions,
    max_staleness: Option<std::time::Duration>,
}

/// A `store` argument and the storage options (`SET pocaduck_storage_options`) of the connection
/// whose statement named it: the statement opens the store with those, whichever thread runs it.
#[derive(Clone, Debug)]
pub struct StoreArg {
    /// The store as the user named it.
    pub name: String,
    options: StorageOptions,
    /// `SET pocaduck_max_staleness` (`None`: the store's default).
    max_staleness: Option<std::time::Duration>,
    /// The index the bind opened and how many generations this process had published then,
    /// for the execution that follows it at once if nothing newer was published or seen since
    /// (a query checks the store for a new generation once, not at bind and again at execution).
    at_bind: KeptForExecution<(Arc<reader::LoadedIndex>, u64)>,
    /// `generation := N` (time travel): read that generation instead of the current one.
    pub generation: Option<u64>,
}

/// A value a bind computed for the execution that follows it: taken by the first execution
/// that starts within [`BIND_TO_EXECUTION`] of the bind; later executions of a prepared
/// statement get nothing and compute it again.
pub struct KeptForExecution<T>(Arc<Mutex<Option<(T, std::time::Instant)>>>);

impl<T> Default for KeptForExecution<T> {
    fn default() -> Self {
        KeptForExecution(Default::default())
    }
}

impl<T> Clone for KeptForExecution<T> {
    fn clone(&self) -> Self {
        KeptForExecution(self.0.clone())
    }
}

impl<T> std::fmt::Debug for KeptForExecution<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeptForExecution")
    }
}

impl<T> KeptForExecution<T> {
    /// Keeps `v`, computed at `at` (taken before the work it stands for).
    pub fn keep(&self, v: T, at: std::time::Instant) {
        if let Ok(mut k) = self.0.lock() {
            *k = Some((v, at));
        }
    }

    /// The kept value, if the bind was less than [`BIND_TO_EXECUTION`] ago (once).
    pub fn take(&self) -> Option<T> {
        let (v, at) = self.0.lock().ok()?.take()?;
        (at.elapsed() < BIND_TO_EXECUTION).then_some(v)
    }
}

/// How long after its bind an execution may use what the bind computed.
pub const BIND_TO_EXECUTION: std::time::Duration = std::time::Duration::from_millis(100);

impl StoreArg {
    /// Opens the store with the connection's options.
    pub fn open(&self, mode: OpenMode) -> Result<Store> {
        Store::open_with(&self.name, mode, &self.options)
    }

    /// The store's current index generation, or the one this process saw within the
    /// connection's `pocaduck_max_staleness` (see [`reader::open_store`]), or the one the bind
    /// just opened if nothing newer was published or seen in this process since. With
    /// `generation := N`: that generation ([`reader::open_generation`]; the bind's, if it just
    /// opened it).
    pub fn index(&self) -> Result<Arc<reader::LoadedIndex>> {
        if let Some((index, published)) = self.at_bind.take() {
            // A generation asked for by number stays what it is.
            if self.generation.is_some() || reader::nothing_newer_here(&index, published) {
                return Ok(index);
            }
        }
        self.open_index(self.open(OpenMode::Read)?)
    }

    /// [`StoreArg::index`] at bind: the index is kept for the execution that follows.
    pub fn bind_index(&self) -> Result<Arc<reader::LoadedIndex>> {
        let at = std::time::Instant::now();
        let store = self.open(OpenMode::Read)?;
        let published = crate::log::seen(&store).1;
        let index = self.open_index(store)?;
        self.at_bind.keep((index.clone(), published), at);
        Ok(index)
    }

    fn open_index(&self, store: Store) -> Result<Arc<reader::LoadedIndex>> {
        if let Some(g) = self.generation {
            return reader::open_generation(store, &super::index_db::DuckDbCodec, g);
        }
        let staleness = self
            .max_staleness
            .unwrap_or_else(|| reader::default_max_staleness(&store));
        reader::open_store(store, &super::index_db::DuckDbCodec, staleness)
    }
}

const _: () =
    assert!(std::mem::size_of::<BindInfo>() == std::mem::size_of::<ffi::duckdb_bind_info>());

impl<'a> Bind<'a> {
    /// The prologue every bind starts with: the connection's `SET pocaduck_storage_options`
    /// and `SET pocaduck_max_staleness` read (and checked) for the stores the statement opens.
    fn new(info: &'a BindInfo) -> Result<Self> {
        // SAFETY: BindInfo is a single-field wrapper around duckdb_bind_info (size checked above).
        let raw: ffi::duckdb_bind_info =
            unsafe { *(info as *const BindInfo as *const ffi::duckdb_bind_info) };
        let mut ctx: ffi::duckdb_client_context = std::ptr::null_mut();
        // SAFETY: `raw` is the live bind info of this bind; ClientContext owns (and destroys) the
        // context written to `ctx`, and handles it staying null.
        unsafe { ffi::duckdb_table_function_get_client_context(raw, &mut ctx) };
        let ctx = ClientContext::new(ctx);
        let options = ctx.storage_options()?;
        let max_staleness = ctx.max_staleness()?;
        Ok(Bind {
            info,
            ctx,
            options,
            max_staleness,
        })
    }

    /// The `store` argument (the first one), with the connection's storage options.
    pub fn store(&self) -> Result<StoreArg> {
        Ok(StoreArg {
            name: arg_string(Some(self.info.get_parameter(0)), "store")?,
            options: self.options.clone(),
            max_staleness: self.max_staleness,
            at_bind: KeptForExecution::default(),
            generation: match self.named("generation") {
                Some(v) => Some(super::args::arg_generation(&v)?),
                None => None,
            },
        })
    }

    /// The `store` argument, which must name an existing store.
    pub fn existing_store(&self) -> Result<StoreArg> {
        let store = self.store()?;
        store.open(OpenMode::Existing)?;
        Ok(store)
    }

    /// Positional argument `i` (0 is `store`).
    pub fn param(&self, i: u64) -> Value {
        self.info.get_parameter(i)
    }

    /// A named argument, if given.
    pub fn named(&self, name: &str) -> Option<Value> {
        self.info.get_named_parameter(name)
    }

    /// A named BOOLEAN argument.
    pub fn named_bool(&self, name: &str, default: bool) -> Result<bool> {
        match self.named(name) {
            None => Ok(default),
            Some(v) if v.is_null() => Err(Error::arg(name, "must not be NULL")),
            Some(v) if v.logical_type_id() == LogicalTypeId::Boolean => Ok(v.to_bool()),
            Some(v) => Err(Error::arg(
                name,
                format!("must be BOOLEAN, got {}", super::args::shown(&v)),
            )),
        }
    }

    /// A named byte-size argument.
    pub fn named_size(&self, name: &str, default: u64) -> Result<u64> {
        match self.named(name) {
            None => Ok(default),
            Some(v) => parse_size(&v, name),
        }
    }

    /// The client context (for `SET` settings).
    pub fn context(&self) -> &ClientContext {
        &self.ctx
    }

    /// Declares result columns.
    pub fn columns(&self, cols: &[(&str, LogicalTypeId)]) {
        for (n, t) in cols {
            self.info.add_result_column(n, LogicalTypeHandle::from(*t));
        }
    }

    /// Declares UBIGINT result columns.
    pub fn ubigint_columns(&self, names: &[&str]) {
        for n in names {
            self.info
                .add_result_column(n, LogicalTypeHandle::from(LogicalTypeId::UBigint));
        }
    }

    /// Declares a result column of an Arrow type.
    pub fn arrow_column(&self, name: &str, ty: &DataType) -> Result<()> {
        let t = to_duckdb_logical_type(ty)
            .map_err(|e| Error::Internal(format!("column {name} of type {ty}: {e}")))?;
        self.info.add_result_column(name, t);
        Ok(())
    }
}

/// A batch from named columns.
pub fn batch(cols: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_from_iter(cols)?)
}

/// One row of UBIGINT columns.
pub fn ubigint_row(names: &[&str], values: &[u64]) -> Result<RecordBatch> {
    batch(
        names
            .iter()
            .zip(values)
            .map(|(n, v)| (*n, Arc::new(UInt64Array::from(vec![*v])) as ArrayRef))
            .collect(),
    )
}

/// The rows of a function that returns one batch.
pub fn one_batch(b: RecordBatch) -> BatchIter {
    Box::new(std::iter::once(Ok(b)))
}

/// Rows handed to DuckDB in chunks of at most 2048 as they are produced.
pub struct Emitter {
    func: &'static str,
    iter: BatchIter,
    cur: Option<RecordBatch>,
    pos: usize,
}

impl Emitter {
    /// Emits what `iter` yields; its errors are reported as errors of `func`.
    pub fn new(func: &'static str, iter: BatchIter) -> Self {
        Emitter {
            func,
            iter,
            cur: None,
            pos: 0,
        }
    }

    /// Fills `output` with the next rows (none: the end).
    pub fn emit(&mut self, output: &mut DataChunkHandle) -> std::result::Result<(), BoxErr> {
        loop {
            if let Some(b) = self.cur.as_ref().filter(|b| self.pos < b.num_rows()) {
                return fill(output, &next_slice(b, &mut self.pos));
            }
            match run(self.func, || self.iter.next().transpose())? {
                Some(b) => {
                    self.cur = Some(b);
                    self.pos = 0;
                }
                None => {
                    output.set_len(0);
                    return Ok(());
                }
            }
        }
    }
}

/// The rows of `b` from `*pos` that fit one DuckDB vector (2048), advancing `*pos` past them.
fn next_slice(b: &RecordBatch, pos: &mut usize) -> RecordBatch {
    let n = (b.num_rows() - *pos).min(2048);
    let out = b.slice(*pos, n);
    *pos += n;
    out
}

/// Writes `b` (at most one vector of rows) into `output`.
fn fill(output: &mut DataChunkHandle, b: &RecordBatch) -> std::result::Result<(), BoxErr> {
    record_batch_to_duckdb_data_chunk(b, output)?;
    output.set_len(b.num_rows());
    Ok(())
}

/// The state of one execution: its rows, made by one thread ([`TableFn::rows`], started at
/// init) or by several ([`TableFn::pieces`]).
pub enum Execution {
    /// Rows made on one thread.
    Rows(Mutex<Emitter>),
    /// Rows made in pieces by several threads.
    Shared(Shared),
}

/// Rows of an execution that several threads produce: the pieces, and decoded batches waiting
/// to be emitted (with the position in the first).
pub struct Shared {
    pieces: Box<dyn Pieces>,
    queue: Mutex<(std::collections::VecDeque<RecordBatch>, usize)>,
}

impl Shared {
    /// Fills `output` with the next rows. A thread that finds no rows waiting makes the next
    /// piece itself (outside the lock, so pieces are made in parallel); it reports the end only
    /// when no piece is left — a piece another thread is still making is emitted by that thread,
    /// whose scan goes on until it finds nothing left.
    fn emit(
        &self,
        func: &'static str,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), BoxErr> {
        loop {
            {
                let mut q = self
                    .queue
                    .lock()
                    .map_err(|_| format!("{func}: execution lock poisoned"))?;
                let (batches, pos) = &mut *q;
                if let Some(b) = batches.front() {
                    let piece = next_slice(b, pos);
                    if *pos >= b.num_rows() {
                        batches.pop_front();
                        *pos = 0;
                    }
                    drop(q);
                    return fill(output, &piece);
                }
            }
            match run(func, || self.pieces.next_piece().transpose())? {
                Some(bs) => {
                    let mut q = self
                        .queue
                        .lock()
                        .map_err(|_| format!("{func}: execution lock poisoned"))?;
                    q.0.extend(bs.into_iter().filter(|b| b.num_rows() > 0));
                }
                None => {
                    output.set_len(0);
                    return Ok(());
                }
            }
        }
    }
}

/// The duckdb-rs table function of a [`TableFn`].
pub struct Table<T>(PhantomData<T>);

impl<T: TableFn> VTab for Table<T> {
    type BindData = T::Args;
    type InitData = Execution;

    fn bind(info: &BindInfo) -> std::result::Result<T::Args, BoxErr> {
        run(T::NAME, || T::bind(&Bind::new(info)?))
    }

    fn init(init: &InitInfo) -> std::result::Result<Execution, BoxErr> {
        let columns = if T::PROJECTION {
            init.get_column_indices()
                .into_iter()
                .map(|i| i as usize)
                .collect()
        } else {
            vec![]
        };
        // SAFETY: duckdb-rs stored a `Box<T::Args>` as this function's bind data in `bind`
        // (the bind data type of `Table<T>`), and DuckDB keeps it alive until the execution ends.
        let args = unsafe { init.get_bind_data::<T::Args>().as_ref() }
            .ok_or_else(|| format!("{}: no bind data", T::NAME))?;
        if let Some((pieces, threads)) = run(T::NAME, || T::pieces(args, &columns))? {
            init.set_max_threads(threads.max(1));
            return Ok(Execution::Shared(Shared {
                pieces,
                queue: Mutex::new((Default::default(), 0)),
            }));
        }
        // The rows are started here, not at the first `func` call: DuckDB initializes a query's
        // scans in a task that the thread running the query (the client's, for a plain
        // `SELECT … FROM f(…)`) usually takes, while `func` often runs on one of its worker
        // threads, the client thread then spinning until the query ends. A function that does
        // its work when its rows start (the one-row functions: consolidate, optimize, stats;
        // vacuum, check, delete) thus usually takes one core, not two. A worker thread can take
        // the init task too (4 runs in 26 of optimize on 2 threads); the client then spins.
        let iter = run(T::NAME, || T::rows(args, &columns))?;
        Ok(Execution::Rows(Mutex::new(Emitter::new(T::NAME, iter))))
    }

    fn func(
        func: &TableFunctionInfo<Self>,
        output: &mut DataChunkHandle,
    ) -> std::result::Result<(), BoxErr> {
        match func.get_init_data() {
            Execution::Shared(sh) => sh.emit(T::NAME, output),
            Execution::Rows(rows) => rows
                .lock()
                .map_err(|_| format!("{}: execution lock poisoned", T::NAME))?
                .emit(output),
        }
    }

    fn supports_pushdown() -> bool {
        T::PROJECTION
    }

    fn parameters() -> Option<Vec<LogicalTypeHandle>> {
        let mut v = vec![LogicalTypeHandle::from(LogicalTypeId::Varchar)];
        v.extend(
            T::PARAMETERS
                .iter()
                .map(|_| LogicalTypeHandle::from(LogicalTypeId::Any)),
        );
        Some(v)
    }

    fn named_parameters() -> Option<Vec<(String, LogicalTypeHandle)>> {
        Some(
            T::NAMED
                .iter()
                .map(|n| (n.to_string(), LogicalTypeHandle::from(LogicalTypeId::Any)))
                .collect(),
        )
    }
}

/// Registers table function `T` under its name.
pub fn register<T: TableFn>(con: &Connection) -> duckdb::Result<()> {
    con.register_table_function::<Table<T>>(T::NAME)
}
