//! The one error type of pocaduck.
//!
//! Every variant carries the context a user needs to act on it: the function and argument for bad
//! input, the store path or file for I/O and format problems. `Display` produces the message shown in
//! SQL; the SQL layer prefixes it with the function name (`pocaduck_points: …`).

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in pocaduck.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad argument or option value given by the user.
    #[error("argument '{arg}' {msg}")]
    Arg {
        /// Name of the argument or option, as the user spells it.
        arg: String,
        /// What is wrong, including the rule and the value found.
        msg: String,
    },
    /// A bad value of a `SET pocaduck_…` setting, found when a statement uses it.
    #[error("setting '{name}' {msg}")]
    Setting {
        /// The setting's name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// Bad data in the rows handed to a writer.
    #[error("{0}")]
    Data(String),
    /// The store path or URL does not hold what was expected.
    #[error("store '{store}': {msg}")]
    Store {
        /// The store as the user named it.
        store: String,
        /// What is wrong.
        msg: String,
    },
    /// A file inside the store could not be read, written or decoded.
    #[error("store '{store}', file '{file}': {msg}")]
    File {
        /// The store as the user named it.
        store: String,
        /// Path of the file relative to the store root.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// Another process changed the store in a way that conflicts with this operation.
    #[error("store '{store}': {msg}")]
    Conflict {
        /// The store as the user named it.
        store: String,
        /// What conflicted.
        msg: String,
    },
    /// An internal failure that is not the user's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::Arg`]; a name starting with `pocaduck_` is a setting
    /// ([`Error::Setting`]).
    pub fn arg(arg: impl Into<String>, msg: impl fmt::Display) -> Self {
        let arg = arg.into();
        if arg.starts_with("pocaduck_") {
            return Error::Setting {
                name: arg,
                msg: msg.to_string(),
            };
        }
        Error::Arg {
            arg,
            msg: msg.to_string(),
        }
    }

    /// Shorthand for [`Error::Store`].
    pub fn store(store: impl Into<String>, msg: impl fmt::Display) -> Self {
        Error::Store {
            store: store.into(),
            msg: msg.to_string(),
        }
    }

    /// Shorthand for [`Error::File`].
    pub fn file(store: impl Into<String>, file: impl Into<String>, msg: impl fmt::Display) -> Self {
        Error::File {
            store: store.into(),
            file: file.into(),
            msg: msg.to_string(),
        }
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Internal(format!("arrow: {e}"))
    }
}

thread_local! {
    /// Where the last panic on this thread happened (recorded by the extension's panic hook).
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records where a panic happened on this thread (called from a panic hook, which prints
/// nothing: the panic is caught and reported as an error with [`panic_text`]).
pub fn record_panic(at: String) {
    PANIC_AT.with(|p| *p.borrow_mut() = Some(at));
}

/// The message of a caught panic's payload, with where it happened when the hook recorded it
/// on this thread.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    match PANIC_AT.with(|a| a.borrow_mut().take()) {
        Some(at) => format!("{msg} (at {at})"),
        None => msg,
    }
}
