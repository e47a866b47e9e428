//! The SQL adapter: DuckDB callbacks in, core calls out. All `unsafe` code of pocaduck lives in
//! this module and its children.
//!
//! - [`functions`]: the table functions (`pocaduck_write`, `pocaduck_commit`,
//!   `pocaduck_consolidate`, `pocaduck_points`, `pocaduck_labels`, `pocaduck_blocks`);
//! - [`copy`]: `COPY … TO '<store>' (FORMAT pocaduck, …)` through the raw copy-function C API;
//! - [`index_db`]: the unified index as a DuckDB database file;
//! - settings `pocaduck_target_file_size` and `pocaduck_buffer_size` (`SET …`).
//!
//! No callback may panic into DuckDB: duckdb-rs contains table-function callbacks, and every raw
//! callback here runs inside [`guard`].
//!
//! Every `unsafe` block says why it is sound in a `// SAFETY:` comment (enforced by clippy's
//! `undocumented_unsafe_blocks`); an `unsafe fn` states its contract under `# Safety`.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod copy;
pub mod functions;
pub mod index_db;
// Its three `get_bind_data` blocks get their comments when the module is restructured (issue 14).
#[allow(clippy::undocumented_unsafe_blocks)]
pub mod maintenance;

use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use duckdb::core::LogicalTypeId;
use duckdb::ffi;
use duckdb::vtab::Value;

use crate::error::{Error, Result};
use crate::writer::{WriterOptions, DEFAULT_BUFFER_SIZE, DEFAULT_TARGET_FILE_SIZE};

/// Name of the target part size setting.
pub const SET_TARGET_FILE_SIZE: &str = "pocaduck_target_file_size";
/// Name of the object-store options setting.
pub const SET_STORAGE_OPTIONS: &str = "pocaduck_storage_options";
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
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("{func}: internal error (please report): {msg}"))
        }
    }
}

/// A C string for DuckDB, with interior NULs replaced.
pub fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

/// A value for an error message. `Value`'s own `Display` must not be used on a NULL: DuckDB throws
/// a C++ exception there, which aborts the process when it unwinds into Rust.
pub fn shown(v: &Value) -> String {
    if v.is_null() {
        "NULL".to_string()
    } else {
        v.to_string()
    }
}

/// Describes a value's type for error messages.
fn type_name(v: &Value) -> String {
    format!("{:?}", v.logical_type_id()).to_uppercase()
}

/// A non-NULL VARCHAR argument.
pub fn arg_string(v: Option<Value>, arg: &str) -> Result<String> {
    let v = v.ok_or_else(|| Error::arg(arg, "is required"))?;
    if v.is_null() {
        return Err(Error::arg(arg, "must not be NULL"));
    }
    if v.logical_type_id() != LogicalTypeId::Varchar {
        return Err(Error::arg(
            arg,
            format!("must be VARCHAR, got {} {}", type_name(&v), shown(&v)),
        ));
    }
    let s = v.to_string();
    if s.contains('\0') {
        return Err(Error::arg(arg, "must not contain a NUL character"));
    }
    Ok(s)
}

pub(crate) fn is_integer(t: LogicalTypeId) -> bool {
    use LogicalTypeId::*;
    matches!(
        t,
        Tinyint
            | Smallint
            | Integer
            | Bigint
            | UTinyint
            | USmallint
            | UInteger
            | UBigint
            | Hugeint
            | UHugeint
            | IntegerLiteral
    )
}

/// A label: a non-NULL, non-negative integer of at most 64 bits.
pub fn value_label(v: &Value, arg: &str) -> Result<u64> {
    if v.is_null() {
        return Err(Error::arg(arg, "must not be NULL"));
    }
    if !is_integer(v.logical_type_id()) {
        return Err(Error::arg(
            arg,
            format!(
                "must be an integer (UBIGINT), got {} {}",
                type_name(v),
                shown(v)
            ),
        ));
    }
    let s = v.to_string();
    let n: i128 = s
        .parse()
        .map_err(|_| Error::arg(arg, format!("must be an integer (UBIGINT), got {s}")))?;
    if n < 0 {
        return Err(Error::arg(arg, format!("must not be negative, got {n}")));
    }
    u64::try_from(n).map_err(|_| {
        Error::arg(
            arg,
            format!("must fit UBIGINT (at most 18446744073709551615), got {n}"),
        )
    })
}

/// A label argument that may also be a LIST of labels. Returns the labels and whether a list was given.
pub fn arg_labels(v: Value, arg: &str) -> Result<(Vec<u64>, bool)> {
    if v.logical_type_id() == LogicalTypeId::List && !v.is_null() {
        let items = v.to_list().unwrap_or_default();
        let labels = items
            .iter()
            .map(|x| value_label(x, arg))
            .collect::<Result<Vec<_>>>()?;
        return Ok((labels, true));
    }
    Ok((vec![value_label(&v, arg)?], false))
}

/// Attribute names: a LIST of names, or one comma-separated VARCHAR (`''` for none), checked.
pub fn attribute_names(v: &Value, arg: &str) -> Result<Vec<String>> {
    if v.is_null() {
        return Err(Error::arg(arg, "must not be NULL"));
    }
    let names: Vec<String> = match v.logical_type_id() {
        LogicalTypeId::List => v
            .to_list()
            .unwrap_or_default()
            .iter()
            .map(|x| {
                if x.is_null() {
                    Err(Error::arg(arg, "must not contain NULL"))
                } else {
                    Ok(x.to_string())
                }
            })
            .collect::<Result<_>>()?,
        LogicalTypeId::Varchar => {
            let s = v.to_string();
            if s.trim().is_empty() {
                vec![]
            } else {
                s.split(',').map(|x| x.trim().to_string()).collect()
            }
        }
        _ => {
            return Err(Error::arg(
                arg,
                format!(
                    "must be a list of names or a comma-separated VARCHAR, got {}",
                    shown(v)
                ),
            ))
        }
    };
    crate::schema::check_attribute_names(&names, arg)?;
    Ok(names)
}

/// A byte size: an integer, or a string such as `'64MB'`, `'1GiB'`, `'65536'`.
pub fn parse_size(v: &Value, arg: &str) -> Result<u64> {
    if v.is_null() {
        return Err(Error::arg(arg, "must not be NULL"));
    }
    let t = v.logical_type_id();
    if is_integer(t) {
        let n: i128 = v
            .to_string()
            .parse()
            .map_err(|_| Error::arg(arg, format!("must be a size, got {}", shown(v))))?;
        return u64::try_from(n)
            .map_err(|_| Error::arg(arg, format!("must be a positive size in bytes, got {n}")));
    }
    if t == LogicalTypeId::Varchar {
        return parse_size_str(&v.to_string()).map_err(|m| Error::arg(arg, m));
    }
    Err(Error::arg(
        arg,
        format!(
            "must be a size in bytes (integer or a string like '64MB'), got {} {}",
            type_name(v),
            shown(v)
        ),
    ))
}

/// Parses `'64MB'`, `'1 GiB'`, `'4096'`.
pub fn parse_size_str(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        if !num.is_empty() {
            format!("is too large: '{s}'")
        } else {
            format!("must be a size like '64MB', got '{s}'")
        }
    })?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1000,
        "KIB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MIB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GIB" => 1 << 30,
        _ => {
            return Err(format!(
                "has an unknown unit in '{s}' (use B, KB, KiB, MB, MiB, GB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("is too large: '{s}'"))
}

/// A client context handed out by DuckDB, destroyed when dropped.
pub struct ClientContext(ffi::duckdb_client_context);

impl ClientContext {
    /// Wraps a context returned by DuckDB (null is allowed: settings then take their defaults).
    pub fn new(ctx: ffi::duckdb_client_context) -> Self {
        ClientContext(ctx)
    }

    /// Reads a `SET pocaduck_…` size setting.
    pub fn setting_size(&self, name: &str, default: u64) -> Result<u64> {
        if self.0.is_null() {
            return Ok(default);
        }
        let cname = c_string(name);
        let mut scope: ffi::duckdb_config_option_scope = 0;
        // SAFETY: self.0 is a live context; the returned value is owned and destroyed by Value.
        let raw = unsafe {
            ffi::duckdb_client_context_get_config_option(self.0, cname.as_ptr(), &mut scope)
        };
        if raw.is_null() {
            return Ok(default);
        }
        let v = Value::from(raw);
        if v.is_null() {
            return Ok(default);
        }
        parse_size(&v, name)
    }

    /// Applies `SET pocaduck_storage_options` to the stores opened from now on (process-wide:
    /// the latest statement's value wins).
    pub fn apply_storage_options(&self) -> Result<()> {
        if self.0.is_null() {
            return Ok(());
        }
        let cname = c_string(SET_STORAGE_OPTIONS);
        let mut scope: ffi::duckdb_config_option_scope = 0;
        // SAFETY: self.0 is a live context; the returned value is owned and destroyed by Value.
        let raw = unsafe {
            ffi::duckdb_client_context_get_config_option(self.0, cname.as_ptr(), &mut scope)
        };
        if raw.is_null() {
            return Ok(());
        }
        let v = Value::from(raw);
        let text = if v.is_null() {
            String::new()
        } else {
            v.to_string()
        };
        let opts = crate::storage::parse_storage_options(&text, SET_STORAGE_OPTIONS)?;
        crate::storage::set_storage_options(opts);
        Ok(())
    }

    /// Writer options from the `SET` settings (unchecked: the caller checks them with
    /// [`WriterOptions::check_as`], naming each by where it came from).
    pub fn writer_options(&self) -> Result<WriterOptions> {
        let opts = WriterOptions {
            target_file_size: self.setting_size(SET_TARGET_FILE_SIZE, DEFAULT_TARGET_FILE_SIZE)?,
            buffer_size: self.setting_size(SET_BUFFER_SIZE, DEFAULT_BUFFER_SIZE)?,
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

/// Initialises the C API function table and registers settings, the COPY format and the table
/// functions.
///
/// # Safety
/// `info` and `access` must be the pointers DuckDB passed to [`pocaduck_init_c_api`].
unsafe fn init(
    info: ffi::duckdb_extension_info,
    access: *const ffi::duckdb_extension_access,
) -> std::result::Result<bool, String> {
    // SAFETY: `info` and `access` come from DuckDB's load call (caller). The database handle is
    // checked for null and used only during this call; the raw connection is closed before
    // returning; the C API table is initialised before any other `ffi` call.
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
        let mut raw: ffi::duckdb_connection = std::ptr::null_mut();
        if ffi::duckdb_connect(db, &mut raw) != ffi::duckdb_state_DuckDBSuccess {
            return Err("could not connect to the database".into());
        }
        let res = (|| -> Result<()> {
            register_setting(
                raw,
                SET_TARGET_FILE_SIZE,
                SettingDefault::Size(DEFAULT_TARGET_FILE_SIZE),
                "pocaduck: a part file is closed once it reaches this many bytes",
            )?;
            register_setting(
                raw,
                SET_BUFFER_SIZE,
                SettingDefault::Size(DEFAULT_BUFFER_SIZE),
                "pocaduck: memory a writer session buffers before encoding (bounds ingest memory)",
            )?;
            register_setting(
                raw,
                SET_STORAGE_OPTIONS,
                SettingDefault::Text(""),
                "pocaduck: object-store options as key=value pairs (aws_endpoint=…, aws_region=…, aws_allow_http=true, …); process-wide",
            )?;
            copy::register(raw)
        })();
        ffi::duckdb_disconnect(&mut raw);
        res.map_err(|e| e.to_string())?;
        let con = duckdb::Connection::open_from_raw(db.cast()).map_err(|e| e.to_string())?;
        functions::register(&con).map_err(|e| e.to_string())?;
        Ok(true)
    }
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

#[cfg(test)]
mod tests {
    use super::parse_size_str;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size_str("64MB"), Ok(64_000_000));
        assert_eq!(parse_size_str("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size_str("4096"), Ok(4096));
        assert!(parse_size_str("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size_str("MB").is_err());
    }
}
