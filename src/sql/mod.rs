//! The SQL adapter: DuckDB callbacks in, core calls out. All `unsafe` code of pocaduck lives in
//! this module and its children.
//!
//! - [`vtab`]: the table-function scaffold (bind prologue, execution, result chunks) that every
//!   table function is written against, one file per function or family: [`fn_write`]
//!   (`pocaduck_write`, `pocaduck_commit`), [`fn_consolidate`], [`fn_optimize`], [`fn_points`]
//!   (`pocaduck_points`, `pocaduck_points_in_box`), [`fn_labels`] (`pocaduck_labels`,
//!   `pocaduck_blocks`), [`fn_stats`], [`fn_explain`], [`fn_check`];
//! - [`args`]: SQL argument values checked and converted;
//! - [`copy`]: `COPY … TO '<store>' (FORMAT pocaduck, …)` through the raw copy-function C API;
//! - [`index_db`]: the format-1 index as a DuckDB database file;
//! - here: the settings `pocaduck_target_file_size`, `pocaduck_buffer_size`,
//!   `pocaduck_storage_options` and `pocaduck_max_staleness` (`SET …`), the entry point, and
//!   [`register`], the one list of everything pocaduck adds to DuckDB.
//!
//! No callback may panic into DuckDB: duckdb-rs contains table-function callbacks, and every raw
//! callback here runs inside [`guard`].
//!
//! Every `unsafe` block says why it is sound in a `// SAFETY:` comment (enforced by clippy's
//! `undocumented_unsafe_blocks`); an `unsafe fn` states its contract under `# Safety`.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod copy;
pub mod fn_check;
pub mod fn_consolidate;
pub mod fn_delete;
pub mod fn_explain;
pub mod fn_labels;
pub mod fn_optimize;
pub mod fn_points;
pub mod fn_stats;
pub mod fn_vacuum;
pub mod fn_write;
pub mod index_db;
pub mod vtab;

use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use duckdb::ffi;
use duckdb::vtab::Value;

use crate::error::{Error, Result};
use crate::writer::{WriterOptions, DEFAULT_BUFFER_SIZE, DEFAULT_TARGET_FILE_SIZE};
use args::parse_size;

/// Name of the target part size setting.
pub const SET_TARGET_FILE_SIZE: &str = "pocaduck_target_file_size";
/// Name of the object-store options setting.
pub const SET_STORAGE_OPTIONS: &str = "pocaduck_storage_options";
/// Name of the setting bounding how old a reader's view of the index may be.
pub const SET_MAX_STALENESS: &str = "pocaduck_max_staleness";
/// Name of the writer buffer setting.
pub const SET_BUFFER_SIZE: &str = "pocaduck_buffer_size";
/// The DuckDB C API version pocaduck is built for, which is also the oldest DuckDB that loads it.
/// The one place it is written: `scripts/package.py` reads it from this line for the extension's
/// metadata footer.
pub const DUCKDB_C_API_VERSION: &str = "v1.5.6";

/// Formats an error as SQL shows it: `<function>: <message>`.
pub fn user_error(func: &str, e: &Error) -> String {
    format!("{func}: {e}")
}

/// Runs `f`, turning an error or a panic into a message for DuckDB.
pub fn guard<T>(func: &str, f: impl FnOnce() -> Result<T>) -> std::result::Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(user_error(func, &e)),
        Err(p) => {
            let msg = crate::error::panic_text(&*p);
            Err(format!("{func}: internal error (please report): {msg}"))
        }
    }
}

/// A C string for DuckDB, with interior NULs replaced.
pub fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

/// A client context handed out by DuckDB, destroyed when dropped.
pub struct ClientContext(ffi::duckdb_client_context);

impl ClientContext {
    /// Wraps a context returned by DuckDB (null is allowed: settings then take their defaults).
    pub fn new(ctx: ffi::duckdb_client_context) -> Self {
        ClientContext(ctx)
    }

    /// The value of a `SET pocaduck_…` setting (`None`: no context, or NULL).
    fn setting(&self, name: &str) -> Option<Value> {
        if self.0.is_null() {
            return None;
        }
        let cname = c_string(name);
        let mut scope: ffi::duckdb_config_option_scope = 0;
        // SAFETY: self.0 is a live context; the returned value is owned and destroyed by Value.
        let raw = unsafe {
            ffi::duckdb_client_context_get_config_option(self.0, cname.as_ptr(), &mut scope)
        };
        if raw.is_null() {
            return None;
        }
        Some(Value::from(raw)).filter(|v| !v.is_null())
    }

    /// Reads a `SET pocaduck_…` size setting.
    pub fn setting_size(&self, name: &str, default: u64) -> Result<u64> {
        match self.setting(name) {
            Some(v) => parse_size(&v, name),
            None => Ok(default),
        }
    }

    /// The connection's `SET pocaduck_storage_options`, checked (an unknown key is an error
    /// naming it). They follow the statement, not the process: each statement opens its stores
    /// with its own connection's options.
    pub fn storage_options(&self) -> Result<crate::storage::StorageOptions> {
        let text = self
            .setting(SET_STORAGE_OPTIONS)
            .map(|v| v.to_string())
            .unwrap_or_default();
        crate::storage::parse_storage_options(&text, SET_STORAGE_OPTIONS)
    }

    /// The connection's `SET pocaduck_max_staleness` (`None`: `'auto'`, the store's default).
    pub fn max_staleness(&self) -> Result<Option<std::time::Duration>> {
        match self.setting(SET_MAX_STALENESS) {
            Some(v) => args::parse_duration_str(&v.to_string())
                .map_err(|m| Error::arg(SET_MAX_STALENESS, m)),
            None => Ok(None),
        }
    }

    /// Writer options from the `SET` settings (unchecked: the caller checks them with
    /// [`WriterOptions::check_as`], naming each by where it came from).
    pub fn writer_options(&self) -> Result<WriterOptions> {
        let opts = WriterOptions {
            target_file_size: self.setting_size(SET_TARGET_FILE_SIZE, DEFAULT_TARGET_FILE_SIZE)?,
            buffer_size: self.setting_size(SET_BUFFER_SIZE, DEFAULT_BUFFER_SIZE)?,
            ..Default::default()
        };
        Ok(opts)
    }
}

impl Drop for ClientContext {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the context came from DuckDB and is destroyed exactly once.
            unsafe { ffi::duckdb_destroy_client_context(&mut self.0) };
        }
    }
}

/// The default (and so the type) of a setting.
enum SettingDefault<'a> {
    Size(u64),
    Text(&'a str),
}

/// Registers a `SET pocaduck_…` setting.
///
/// # Safety
/// `con` must be a valid, open connection.
unsafe fn register_setting(
    con: ffi::duckdb_connection,
    name: &str,
    default: SettingDefault,
    description: &str,
) -> Result<()> {
    // SAFETY: `con` is valid (caller); every handle created here is destroyed once, after its
    // last use; the C strings outlive the calls that read them.
    unsafe {
        let mut opt = ffi::duckdb_create_config_option();
        let cname = c_string(name);
        ffi::duckdb_config_option_set_name(opt, cname.as_ptr());
        let (mut ty, mut dv) = match default {
            SettingDefault::Size(n) => (
                ffi::duckdb_create_logical_type(ffi::DUCKDB_TYPE_DUCKDB_TYPE_UBIGINT),
                ffi::duckdb_create_uint64(n),
            ),
            SettingDefault::Text(t) => {
                let c = c_string(t);
                (
                    ffi::duckdb_create_logical_type(ffi::DUCKDB_TYPE_DUCKDB_TYPE_VARCHAR),
                    ffi::duckdb_create_varchar(c.as_ptr()),
                )
            }
        };
        ffi::duckdb_config_option_set_type(opt, ty);
        ffi::duckdb_destroy_logical_type(&mut ty);
        ffi::duckdb_config_option_set_default_value(opt, dv);
        ffi::duckdb_destroy_value(&mut dv);
        let cdesc = c_string(description);
        ffi::duckdb_config_option_set_description(opt, cdesc.as_ptr());
        let rc = ffi::duckdb_register_config_option(con, opt);
        ffi::duckdb_destroy_config_option(&mut opt);
        if rc != ffi::duckdb_state_DuckDBSuccess {
            return Err(Error::Internal(format!(
                "could not register setting {name}"
            )));
        }
    }
    Ok(())
}

/// Everything pocaduck adds to DuckDB, in one list: the settings, the COPY format and the table
/// functions. A new table function is one [`vtab::TableFn`] in its own file and one line here.
///
/// # Safety
/// `raw` must be a valid, open connection (for what the raw C API registers).
unsafe fn register(
    raw: ffi::duckdb_connection,
    con: &duckdb::Connection,
) -> std::result::Result<(), String> {
    let settings = [
        (
            SET_TARGET_FILE_SIZE,
            SettingDefault::Size(DEFAULT_TARGET_FILE_SIZE),
            "pocaduck: a part file is closed once it reaches this many bytes",
        ),
        (
            SET_BUFFER_SIZE,
            SettingDefault::Size(DEFAULT_BUFFER_SIZE),
            "pocaduck: memory a writer session buffers before encoding (bounds ingest memory)",
        ),
        (
            SET_STORAGE_OPTIONS,
            SettingDefault::Text(""),
            "pocaduck: object-store options as key=value pairs (aws_endpoint=…, aws_region=…, aws_allow_http=true, …), for this connection's statements",
        ),
        (
            SET_MAX_STALENESS,
            SettingDefault::Text("auto"),
            "pocaduck: how long a process may answer queries from the index generation it last saw before checking the store for a newer one ('auto': 0 for local stores, 1s for object stores; '0': check every query; '500ms', '5 s', '2 minutes')",
        ),
    ];
    // SAFETY: `raw` is a valid, open connection (caller).
    unsafe {
        for (name, default, description) in settings {
            register_setting(raw, name, default, description).map_err(|e| e.to_string())?;
        }
        copy::register(raw).map_err(|e| e.to_string())?;
    }
    (|| -> duckdb::Result<()> {
        use vtab::register as table;
        table::<fn_write::Write>(con)?;
        table::<fn_write::Commit>(con)?;
        table::<fn_consolidate::Consolidate>(con)?;
        table::<fn_points::Points>(con)?;
        table::<fn_points::PointsInBox>(con)?;
        table::<fn_labels::Labels>(con)?;
        table::<fn_labels::Blocks>(con)?;
        table::<fn_optimize::Optimize>(con)?;
        table::<fn_stats::Stats>(con)?;
        table::<fn_stats::Generations>(con)?;
        table::<fn_explain::Explain>(con)?;
        table::<fn_check::Check>(con)?;
        table::<fn_vacuum::Vacuum>(con)?;
        table::<fn_delete::Delete>(con)
    })()
    .map_err(|e| e.to_string())
}

/// Initialises the C API function table and [`register`]s everything.
///
/// # Safety
/// `info` and `access` must be the pointers DuckDB passed to [`pocaduck_init_c_api`].
unsafe fn init(
    info: ffi::duckdb_extension_info,
    access: *const ffi::duckdb_extension_access,
) -> std::result::Result<bool, String> {
    // SAFETY: `info` and `access` come from DuckDB's load call (caller). The database handle is
    // checked for null and used only during this call; the raw connection is open while
    // `register` runs and closed before returning; the C API table is initialised before any
    // other `ffi` call.
    unsafe {
        if !ffi::duckdb_rs_extension_api_init(info, access, DUCKDB_C_API_VERSION)
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        let get_database = (*access)
            .get_database
            .ok_or("no get_database in duckdb_extension_access")?;
        let db_ptr = get_database(info);
        if db_ptr.is_null() {
            return Ok(false);
        }
        let db: ffi::duckdb_database = *db_ptr;
        let con = duckdb::Connection::open_from_raw(db.cast()).map_err(|e| e.to_string())?;
        let mut raw: ffi::duckdb_connection = std::ptr::null_mut();
        if ffi::duckdb_connect(db, &mut raw) != ffi::duckdb_state_DuckDBSuccess {
            return Err("could not connect to the database".into());
        }
        let res = register(raw, &con);
        ffi::duckdb_disconnect(&mut raw);
        res?;
        Ok(true)
    }
}

/// Keeps Rust's default panic output (message, and a backtrace under `RUST_BACKTRACE`) out of the
/// user's terminal: every panic in pocaduck is caught ([`guard`] and the threads' own catches)
/// and reported as the statement's error, with its message and where it happened (the hook
/// records the place for [`crate::error::panic_text`]). `POCADUCK_PANIC_OUTPUT=1` restores the
/// default output (for debugging). The hook is this library's own (the extension links its own
/// Rust standard library), so other code in the process is not affected.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("POCADUCK_PANIC_OUTPUT").is_none() {
            std::panic::set_hook(Box::new(|info| {
                if let Some(l) = info.location() {
                    crate::error::record_panic(format!("{}:{}", l.file(), l.line()));
                }
            }));
        }
    });
}

/// The extension entry point called by DuckDB on `LOAD pocaduck`.
///
/// # Safety
/// Called by DuckDB with valid `info` and `access`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pocaduck_init_c_api(
    info: ffi::duckdb_extension_info,
    access: *const ffi::duckdb_extension_access,
) -> bool {
    quiet_panics();
    // SAFETY: DuckDB passes valid `info` and `access` (this function's contract).
    let r = catch_unwind(AssertUnwindSafe(|| unsafe { init(info, access) }))
        .unwrap_or_else(|_| Err("pocaduck: panic during load".into()));
    match r {
        Ok(v) => v,
        Err(msg) => {
            // SAFETY: `access` is valid for this call; `set_error` copies the message, which
            // lives until the end of the block.
            unsafe {
                if let Some(set_error) = (*access).set_error {
                    let c = c_string(&format!("pocaduck: {msg}"));
                    set_error(info, c.as_ptr());
                }
            }
            false
        }
    }
}

/// Reads a C string from DuckDB.
///
/// # Safety
/// `p` must be null or a valid NUL-terminated string.
pub unsafe fn from_c(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: `p` is non-null and NUL-terminated (this function's contract).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
