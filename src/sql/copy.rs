//! `COPY (SELECT label, block, x, y, z [, attr…] FROM …) TO '<store>' (FORMAT pocaduck, WORKER '<id>', …)`.
//!
//! Options (case-insensitive): `WORKER` (required), `ATTRIBUTES` (names of the columns after z, as
//! a list or a comma-separated string), `COMMIT` (default true), `REPLACE_BLOCKS` (default false), `TARGET_FILE_SIZE`, `BUFFER_SIZE`
//! (bytes, or strings like '64MB'; default from `SET pocaduck_target_file_size` /
//! `SET pocaduck_buffer_size`).
//!
//! Columns are positional. Bind checks the column count and types; sink converts each (flat)
//! chunk to Arrow and appends it to the worker's session; finalize commits when `COMMIT` is true.
//! If the statement fails anywhere (here or in the query feeding it), the global-state destructor
//! rolls back the statement's rows, or discards the uncommitted session if they were already
//! encoded.

use std::ffi::c_void;
use std::sync::Arc;

use arrow::array::{ArrayRef, PrimitiveArray, RecordBatch, StringBuilder};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::*;
use duckdb::core::LogicalTypeId;
use duckdb::ffi;
use duckdb::vtab::Value;

use super::args::{attribute_names, parse_size, shown};
use super::{c_string, from_c, guard, ClientContext};
use crate::error::{Error, Result};
use crate::schema::{col, schema_for_input, FIXED};
use crate::storage::{OpenMode, StorageOptions, Store};
use crate::writer::{session_slot, Session, Slot, Statement, WriterOptions};

const F: &str = "COPY TO (FORMAT pocaduck)";

struct BindData {
    worker: String,
    attributes: Vec<String>,
    commit: bool,
    replace_blocks: bool,
    opts: WriterOptions,
    types: Vec<DataType>,
    /// The connection's `SET pocaduck_storage_options`.
    storage: StorageOptions,
}

struct GlobalState {
    /// The statement in the worker's session; taken by `finalize`. Dropped with the state while
    /// still here (the statement failed), it rolls the statement back.
    statement: Option<Statement<Slot>>,
    types: Vec<DataType>,
    /// Column names (label, block, x, y, z, attributes), for errors.
    names: Vec<String>,
    commit: bool,
}

/// Frees bind data handed to DuckDB as a boxed `T`.
///
/// # Safety
/// `p` must be null or come from `Box::<T>::into_raw`, and be freed only once (DuckDB calls this
/// once per bind data).
unsafe extern "C" fn drop_box<T>(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: `p` is a `Box<T>` leaked by `bind` and freed only here (this function's contract).
        drop(unsafe { Box::from_raw(p as *mut T) });
    }
}

fn arrow_type(id: LogicalTypeId) -> Option<DataType> {
    use LogicalTypeId::*;
    Some(match id {
        Tinyint => DataType::Int8,
        Smallint => DataType::Int16,
        Integer => DataType::Int32,
        Bigint => DataType::Int64,
        UTinyint => DataType::UInt8,
        USmallint => DataType::UInt16,
        UInteger => DataType::UInt32,
        UBigint => DataType::UInt64,
        Float => DataType::Float32,
        Double => DataType::Float64,
        Varchar => DataType::Utf8,
        _ => return None,
    })
}

fn column_name(i: usize, attrs: &[String]) -> String {
    if i < col::ATTRIBUTES {
        return FIXED[i].to_string();
    }
    attrs
        .get(i - col::ATTRIBUTES)
        .cloned()
        .unwrap_or_else(|| format!("column {}", i + 1))
}

/// Reads the COPY options and column types.
///
/// # Safety
/// `info` must be the bind info of a running bind callback.
unsafe fn bind_inner(info: ffi::duckdb_copy_function_bind_info) -> Result<BindData> {
    // SAFETY: `info` is live (caller); the options value is owned by us and destroyed below.
    let mut opts_raw = unsafe { ffi::duckdb_copy_function_bind_get_options(info) };
    // SAFETY: `info` is live and `opts_raw` is the options STRUCT value, destroyed only after.
    let res = unsafe { parse_options(info, opts_raw) };
    // SAFETY: `opts_raw` was returned by DuckDB and is destroyed exactly once.
    unsafe { ffi::duckdb_destroy_value(&mut opts_raw) };
    res
}

/// Parses the options STRUCT and the column types of a COPY.
///
/// # Safety
/// `info` must be the bind info of a running bind callback and `opts_raw` its options value
/// (a STRUCT), alive for the whole call.
unsafe fn parse_options(
    info: ffi::duckdb_copy_function_bind_info,
    opts_raw: ffi::duckdb_value,
) -> Result<BindData> {
    let mut worker = None;
    let mut attributes = Vec::new();
    let mut commit = true;
    let mut replace_blocks = false;
    // SAFETY: `info` is live (caller); ClientContext owns the returned context and destroys it.
    let ctx =
        ClientContext::new(unsafe { ffi::duckdb_copy_function_bind_get_client_context(info) });
    let storage = ctx.storage_options()?;
    let mut opts = ctx.writer_options()?;
    // Sizes are named in errors by where they came from: the option, or the SET setting.
    let mut target_arg = super::SET_TARGET_FILE_SIZE;
    let mut buffer_arg = super::SET_BUFFER_SIZE;
    // Borrowed from the value: not destroyed here.
    // SAFETY: `opts_raw` is a live value (caller).
    let stype = unsafe { ffi::duckdb_get_value_type(opts_raw) };
    // SAFETY: `stype` is the STRUCT type of the live `opts_raw`.
    let n = unsafe { ffi::duckdb_struct_type_child_count(stype) };
    for i in 0..n {
        // SAFETY: `i` is below the child count; the returned name is a NUL-terminated string that
        // we own, copied by `from_c` before `duckdb_free` releases it.
        let name = unsafe {
            let p = ffi::duckdb_struct_type_child_name(stype, i);
            let s = from_c(p);
            ffi::duckdb_free(p as *mut c_void);
            s
        };
        // SAFETY: `i` is below the child count; `Value` owns the returned value and destroys it.
        let v = Value::from(unsafe { ffi::duckdb_get_struct_child(opts_raw, i) });
        match name.to_ascii_uppercase().as_str() {
            "WORKER" => {
                if v.is_null() {
                    return Err(Error::arg("WORKER", "must not be NULL"));
                }
                if v.logical_type_id() != LogicalTypeId::Varchar {
                    return Err(Error::arg("WORKER", format!("must be a VARCHAR worker id, got {}", shown(&v))));
                }
                let w = v.to_string();
                crate::layout::check_worker_id(&w, "WORKER")?;
                worker = Some(w);
            }
            "ATTRIBUTES" => {
                attributes = attribute_names(&v, "ATTRIBUTES")?;
            }
            "COMMIT" => commit = copy_bool(&v, "COMMIT")?,
            "REPLACE_BLOCKS" => replace_blocks = copy_bool(&v, "REPLACE_BLOCKS")?,
            "TARGET_FILE_SIZE" => {
                opts.target_file_size = parse_size(&v, "TARGET_FILE_SIZE")?;
                target_arg = "TARGET_FILE_SIZE";
            }
            "BUFFER_SIZE" => {
                opts.buffer_size = parse_size(&v, "BUFFER_SIZE")?;
                buffer_arg = "BUFFER_SIZE";
            }
            // DuckDB adds FORMAT itself for custom formats on some versions.
            "FORMAT" => {}
            other => {
                return Err(Error::arg(
                    other,
                    "is not a pocaduck COPY option (options: WORKER, ATTRIBUTES, COMMIT, REPLACE_BLOCKS, TARGET_FILE_SIZE, BUFFER_SIZE)",
                ))
            }
        }
    }
    let worker = worker.ok_or_else(|| {
        Error::arg(
            "WORKER",
            "is required: COPY … TO '<store>' (FORMAT pocaduck, WORKER '<id>')",
        )
    })?;
    if replace_blocks && !commit {
        return Err(Error::arg(
            "REPLACE_BLOCKS",
            "needs COMMIT true: the blocks replaced are those of the statement's own commit",
        ));
    }
    opts.check_as(target_arg, buffer_arg)?;
    // SAFETY: `info` is live (caller).
    let ncols = unsafe { ffi::duckdb_copy_function_bind_get_column_count(info) } as usize;
    let mut types = Vec::with_capacity(ncols);
    for i in 0..ncols {
        // SAFETY: `info` is live and `i` is below the column count; we own the returned type.
        let mut lt = unsafe { ffi::duckdb_copy_function_bind_get_column_type(info, i as u64) };
        // SAFETY: `lt` is a live logical type.
        let id = LogicalTypeId::from(unsafe { ffi::duckdb_get_type_id(lt) });
        // SAFETY: `lt` is ours and destroyed exactly once, after its last use.
        unsafe { ffi::duckdb_destroy_logical_type(&mut lt) };
        let name = column_name(i, &attributes);
        if i == col::LABEL && arrow_type(id).is_none() {
            return Err(Error::arg(
                "label",
                format!(
                    "(column 1 of the query) must be an integer (UBIGINT), got {}",
                    format!("{id:?}").to_uppercase()
                ),
            ));
        }
        let dt = arrow_type(id).ok_or_else(|| {
            Error::arg(
                &name,
                format!(
                    "(column {} of the query) has type {}; pocaduck stores integers (TINYINT … UBIGINT), FLOAT, DOUBLE and VARCHAR: cast it, e.g. to DOUBLE or BIGINT",
                    i + 1,
                    format!("{id:?}").to_uppercase()
                ),
            )
        })?;
        types.push(dt);
    }
    if let Some(DataType::Utf8) | Some(DataType::Float32) | Some(DataType::Float64) =
        types.get(col::LABEL)
    {
        return Err(Error::arg(
            "label",
            format!(
                "(column 1 of the query) must be an integer (UBIGINT), got {}",
                crate::schema::ColumnType::from_arrow(&types[col::LABEL])
                    .map(|t| t.name())
                    .unwrap_or_default()
            ),
        ));
    }
    schema_for_input(&types, &attributes)?;
    Ok(BindData {
        worker,
        attributes,
        commit,
        replace_blocks,
        opts,
        types,
        storage,
    })
}

/// COPY bind callback: validates options and column types before any row is read.
///
/// # Safety
/// Called by DuckDB with a live bind info.
unsafe extern "C" fn bind(info: ffi::duckdb_copy_function_bind_info) {
    // SAFETY: DuckDB passes a live bind info for the duration of this callback.
    match guard(F, || unsafe { bind_inner(info) }) {
        // SAFETY: `info` is live; DuckDB takes ownership of the leaked box and frees it once
        // with `drop_box::<BindData>`, the matching type.
        Ok(b) => unsafe {
            ffi::duckdb_copy_function_bind_set_bind_data(
                info,
                Box::into_raw(Box::new(b)) as *mut c_void,
                Some(drop_box::<BindData>),
            );
        },
        // SAFETY: `info` is live; DuckDB copies the message before the CString is dropped.
        Err(m) => unsafe { ffi::duckdb_copy_function_bind_set_error(info, c_string(&m).as_ptr()) },
    }
}

/// A boolean COPY option: true/false (or their text, or 1/0).
fn copy_bool(v: &Value, arg: &str) -> Result<bool> {
    if v.is_null() {
        return Err(Error::arg(arg, "must not be NULL (true or false)"));
    }
    match v.logical_type_id() {
        LogicalTypeId::Boolean => Ok(v.to_bool()),
        LogicalTypeId::Varchar => match v.to_string().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(Error::arg(
                arg,
                format!("must be true or false, got '{other}'"),
            )),
        },
        _ => Err(Error::arg(
            arg,
            format!("must be true or false, got {}", shown(v)),
        )),
    }
}

/// Refuses the file name DuckDB makes for `PER_THREAD_OUTPUT` (`<store>/data_<n>.`: its default
/// `FILENAME_PATTERN` and pocaduck's empty file extension). DuckDB consumes that option (like
/// `OVERWRITE`, `APPEND`, `FILENAME_PATTERN`, … — see the README) before pocaduck's bind sees the
/// options, so the path is the only trace of it; without this, the rows would go to a new store
/// nested inside the one named.
fn refuse_per_thread_path(store: &str) -> Result<()> {
    let last = store
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let per_thread = last
        .strip_prefix("data_")
        .and_then(|r| r.strip_suffix('.'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
    if per_thread {
        return Err(Error::arg(
            "PER_THREAD_OUTPUT",
            format!(
                "is not supported: DuckDB split the COPY into per-thread files and handed pocaduck '{store}'; write without PER_THREAD_OUTPUT (and never with OVERWRITE: DuckDB then deletes the files of the store before pocaduck runs)"
            ),
        ));
    }
    Ok(())
}

/// COPY global init: begins the statement in the worker's session.
///
/// # Safety
/// Called by DuckDB with a live global-init info, after `bind` succeeded.
unsafe extern "C" fn global_init(info: ffi::duckdb_copy_function_global_init_info) {
    let r = guard(F, || {
        // SAFETY: the bind data is the `BindData` set by `bind`, alive until the statement ends.
        let b = unsafe {
            &*(ffi::duckdb_copy_function_global_init_get_bind_data(info) as *const BindData)
        };
        // SAFETY: `info` is live; the path is a NUL-terminated string owned by DuckDB, copied
        // by `from_c`.
        let store = unsafe { from_c(ffi::duckdb_copy_function_global_init_get_file_path(info)) };
        refuse_per_thread_path(&store)?;
        let store = Store::open_with(&store, OpenMode::Create, &b.storage)?;
        let slot = session_slot(&store, &b.worker)?;
        let statement = Statement::begin(
            slot,
            || {
                Session::start(
                    &store,
                    &b.worker,
                    b.attributes.clone(),
                    "ATTRIBUTES",
                    b.opts,
                )
            },
            |s| {
                s.check_attributes(&b.attributes, "ATTRIBUTES")?;
                s.set_options(b.opts)?;
                if b.replace_blocks {
                    s.set_replace_blocks("REPLACE_BLOCKS")?;
                }
                s.check_input_types(&b.types)
            },
        )?;
        Ok(GlobalState {
            statement: Some(statement),
            types: b.types.clone(),
            names: (0..b.types.len())
                .map(|i| column_name(i, &b.attributes))
                .collect(),
            commit: b.commit,
        })
    });
    match r {
        // SAFETY: `info` is live; DuckDB takes ownership of the leaked box and frees it once
        // with `drop_global`, which takes it back as a `GlobalState`.
        Ok(g) => unsafe {
            ffi::duckdb_copy_function_global_init_set_global_state(
                info,
                Box::into_raw(Box::new(g)) as *mut c_void,
                Some(drop_global),
            )
        },
        // SAFETY: `info` is live; DuckDB copies the message before the CString is dropped.
        Err(m) => unsafe {
            ffi::duckdb_copy_function_global_init_set_error(info, c_string(&m).as_ptr())
        },
    }
}

/// Runs when the statement ends, successfully or not.
///
/// # Safety
/// `p` must be null or the `GlobalState` box leaked by `global_init`, freed only once.
unsafe extern "C" fn drop_global(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` is the `Box<GlobalState>` leaked by `global_init`; DuckDB calls this once.
    let g = unsafe { Box::from_raw(p as *mut GlobalState) };
    // An unfinished statement rolls back as it drops.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(g)));
}

/// Converts a flat DuckDB chunk to Arrow: one batch, or several when its VARCHAR columns hold
/// more than [`crate::bounded::STRING_BYTES`] (an Arrow string array holds at most 2 GiB).
///
/// # Safety
/// `chunk` must be a live, flat chunk whose columns have the physical types `types` (checked at
/// bind time: the sink receives flat vectors of the bound column types).
unsafe fn chunk_to_batches(
    chunk: ffi::duckdb_data_chunk,
    types: &[DataType],
    names: &[String],
) -> Result<Vec<RecordBatch>> {
    // SAFETY: `chunk` is live (caller).
    let n = unsafe { ffi::duckdb_data_chunk_get_size(chunk) } as usize;
    let mut cols: Vec<(String, ArrayRef)> = Vec::with_capacity(types.len());
    let mut large_strings = false;
    for (i, dt) in types.iter().enumerate() {
        // SAFETY: `i` is below the chunk's column count (one type per bound column).
        let vec = unsafe { ffi::duckdb_data_chunk_get_vector(chunk, i as u64) };
        // SAFETY: `vec` is a live vector of the chunk.
        let data = unsafe { ffi::duckdb_vector_get_data(vec) };
        // SAFETY: `vec` is a live vector of the chunk.
        let validity = unsafe { ffi::duckdb_vector_get_validity(vec) };
        let nulls = if validity.is_null() {
            None
        } else {
            // SAFETY: a non-null validity mask of a flat vector holds one bit per row in u64
            // words: ceil(n / 64) words, alive as long as the chunk.
            let words = unsafe { std::slice::from_raw_parts(validity, n.div_ceil(64)) };
            let nb = NullBuffer::from_iter((0..n).map(|r| words[r / 64] >> (r % 64) & 1 == 1));
            (nb.null_count() > 0).then_some(nb)
        };
        macro_rules! prim {
            ($t:ty) => {{
                // SAFETY: a flat vector of this column type holds `n` values of its native
                // type, suitably aligned; they are copied before the chunk goes away.
                let vals = unsafe {
                    std::slice::from_raw_parts(data as *const <$t as ArrowPrimitiveType>::Native, n)
                };
                Arc::new(PrimitiveArray::<$t>::new(
                    ScalarBuffer::from(vals.to_vec()),
                    nulls,
                )) as ArrayRef
            }};
        }
        let arr: ArrayRef = match dt {
            DataType::Int8 => prim!(Int8Type),
            DataType::Int16 => prim!(Int16Type),
            DataType::Int32 => prim!(Int32Type),
            DataType::Int64 => prim!(Int64Type),
            DataType::UInt8 => prim!(UInt8Type),
            DataType::UInt16 => prim!(UInt16Type),
            DataType::UInt32 => prim!(UInt32Type),
            DataType::UInt64 => prim!(UInt64Type),
            DataType::Float32 => prim!(Float32Type),
            DataType::Float64 => prim!(Float64Type),
            DataType::Utf8 => {
                // SAFETY: a flat VARCHAR vector holds `n` `duckdb_string_t` values.
                let strs =
                    unsafe { std::slice::from_raw_parts(data as *const ffi::duckdb_string_t, n) };
                let valid = |r: usize| !nulls.as_ref().is_some_and(|nb| nb.is_null(r));
                let lens: Vec<usize> = (0..n)
                    .map(|r| match valid(r) {
                        // SAFETY: a valid duckdb_string_t holds its length in both union
                        // variants.
                        true => unsafe { strs[r].value.inlined.length as usize },
                        false => 0,
                    })
                    .collect();
                let total: usize = lens.iter().sum();
                if total > crate::bounded::STRING_BYTES {
                    large_strings = true;
                }
                let max_value = crate::bounded::VALUE_BYTES;
                if let Some(len) = lens.iter().find(|&&l| l > max_value) {
                    return Err(Error::Data(format!(
                        "column '{}' holds a VARCHAR value of {len} bytes; pocaduck stores values of at most {} MiB",
                        names.get(i).map(String::as_str).unwrap_or("?"),
                        max_value >> 20
                    )));
                }
                let mut b = StringBuilderOf::new(total > crate::bounded::STRING_BYTES, n, total);
                for (r, s) in strs.iter().enumerate() {
                    if !valid(r) {
                        b.append_null();
                        continue;
                    }
                    // SAFETY: a valid (non-NULL) duckdb_string_t holds its length in both union
                    // variants; up to 12 bytes are inlined, longer strings point to `len` bytes
                    // owned by the vector; the bytes are copied before the chunk goes away.
                    let bytes = unsafe {
                        let len = s.value.inlined.length as usize;
                        if len <= 12 {
                            std::slice::from_raw_parts(
                                s.value.inlined.inlined.as_ptr() as *const u8,
                                len,
                            )
                        } else {
                            std::slice::from_raw_parts(s.value.pointer.ptr as *const u8, len)
                        }
                    };
                    b.append_value(&String::from_utf8_lossy(bytes));
                }
                b.finish()
            }
            other => return Err(Error::Internal(format!("unexpected column type {other}"))),
        };
        cols.push((format!("c{i}"), arr));
    }
    let batch = RecordBatch::try_from_iter(cols)?;
    if !large_strings {
        return Ok(vec![batch]);
    }
    let schema = Arc::new(arrow::datatypes::Schema::new(
        types
            .iter()
            .enumerate()
            .map(|(i, dt)| arrow::datatypes::Field::new(format!("c{i}"), dt.clone(), true))
            .collect::<Vec<_>>(),
    ));
    crate::bounded::split_large(batch, &schema, "the input", crate::bounded::STRING_BYTES)
}

/// A string array builder with 32-bit offsets, or 64-bit ones for more than
/// [`crate::bounded::STRING_BYTES`] (split into 32-bit batches afterwards).
enum StringBuilderOf {
    Small(StringBuilder),
    Large(arrow::array::LargeStringBuilder),
}

impl StringBuilderOf {
    fn new(large: bool, rows: usize, bytes: usize) -> Self {
        if large {
            StringBuilderOf::Large(arrow::array::LargeStringBuilder::with_capacity(rows, bytes))
        } else {
            StringBuilderOf::Small(StringBuilder::with_capacity(rows, bytes))
        }
    }

    fn append_null(&mut self) {
        match self {
            StringBuilderOf::Small(b) => b.append_null(),
            StringBuilderOf::Large(b) => b.append_null(),
        }
    }

    fn append_value(&mut self, v: &str) {
        match self {
            StringBuilderOf::Small(b) => b.append_value(v),
            StringBuilderOf::Large(b) => b.append_value(v),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            StringBuilderOf::Small(b) => Arc::new(b.finish()),
            StringBuilderOf::Large(b) => Arc::new(b.finish()),
        }
    }
}

/// COPY sink: appends one chunk to the statement.
///
/// # Safety
/// Called by DuckDB with a live sink info and chunk, after `global_init` succeeded; never
/// concurrently for one statement (the C API sink runs on one thread).
unsafe extern "C" fn sink(
    info: ffi::duckdb_copy_function_sink_info,
    chunk: ffi::duckdb_data_chunk,
) {
    let r = guard(F, || {
        // SAFETY: the global state is the `GlobalState` set by `global_init`; sink and
        // finalize calls do not overlap, so this is the only reference to it.
        let g = unsafe {
            &mut *(ffi::duckdb_copy_function_sink_get_global_state(info) as *mut GlobalState)
        };
        // SAFETY: `chunk` is live and flat, with the bound column types `g.types`.
        let batches = unsafe { chunk_to_batches(chunk, &g.types, &g.names)? };
        let statement = g
            .statement
            .as_mut()
            .ok_or_else(|| Error::Internal("the COPY statement has already finished".into()))?;
        for b in &batches {
            statement.append(b)?;
        }
        Ok(())
    });
    if let Err(m) = r {
        // SAFETY: `info` is live; DuckDB copies the message before the CString is dropped.
        unsafe { ffi::duckdb_copy_function_sink_set_error(info, c_string(&m).as_ptr()) };
    }
}

/// COPY finalize: ends the statement (commits with `COMMIT true`).
///
/// # Safety
/// Called by DuckDB with a live finalize info, after the last sink call.
unsafe extern "C" fn finalize(info: ffi::duckdb_copy_function_finalize_info) {
    let r = guard(F, || {
        // SAFETY: the global state is the `GlobalState` set by `global_init`; no sink call
        // runs during finalize, so this is the only reference to it.
        let g = unsafe {
            &mut *(ffi::duckdb_copy_function_finalize_get_global_state(info) as *mut GlobalState)
        };
        if let Some(statement) = g.statement.take() {
            statement.finish(g.commit)?;
        }
        Ok(())
    });
    if let Err(m) = r {
        // SAFETY: `info` is live; DuckDB copies the message before the CString is dropped.
        unsafe { ffi::duckdb_copy_function_finalize_set_error(info, c_string(&m).as_ptr()) };
    }
}

/// Registers the `pocaduck` COPY format on a raw connection.
///
/// # Safety
/// `con` must be a valid connection.
pub unsafe fn register(con: ffi::duckdb_connection) -> Result<()> {
    // SAFETY: `con` is valid (caller); the copy function is destroyed once after registering
    // (DuckDB keeps its own copy); the name's CString outlives the call that reads it.
    unsafe {
        let mut f = ffi::duckdb_create_copy_function();
        let name = c_string("pocaduck");
        ffi::duckdb_copy_function_set_name(f, name.as_ptr());
        ffi::duckdb_copy_function_set_bind(f, Some(bind));
        ffi::duckdb_copy_function_set_global_init(f, Some(global_init));
        ffi::duckdb_copy_function_set_sink(f, Some(sink));
        ffi::duckdb_copy_function_set_finalize(f, Some(finalize));
        let rc = ffi::duckdb_register_copy_function(con, f);
        ffi::duckdb_destroy_copy_function(&mut f);
        if rc != ffi::duckdb_state_DuckDBSuccess {
            return Err(Error::Internal(
                "could not register COPY format pocaduck".into(),
            ));
        }
    }
    Ok(())
}
