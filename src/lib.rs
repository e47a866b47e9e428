//! pocaduck: a DuckDB extension that stores and serves 3-D point clouds keyed by `uint64` labels.
//!
//! The core (everything but [`sql`]) is plain Rust with no DuckDB types:
//! - [`storage`]: object-store I/O; [`layout`]: where files live in a store;
//! - [`schema`]: store schema and input validation; [`index`]: index entries, commit segments;
//! - [`log`]: generations (manifests) and publishing; [`segment`]: index segments and lookups;
//!   `entry_chunks`: index entries as columns, in label-range chunks (for optimize);
//! - [`bounded`]: batches bounded by their string bytes (Arrow's 2 GiB per array);
//! - [`writer`]: ingest sessions; [`part_sink`]: writing part files (for writer and optimize);
//! - [`consolidate`]: building the unified index; [`tombstone`]: what re-scans and deletes hide;
//!   [`delete`]: `pocaduck_delete`;
//! - [`optimize`]: rewriting fragmented labels; [`reader`]: points, labels and blocks queries.
//!
//! [`sql`] adapts DuckDB callbacks to the core and holds all `unsafe` code: the crate denies
//! `unsafe_code` everywhere else, and every `unsafe` block in [`sql`] says why it is sound
//! (`// SAFETY:`).
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod bounded;
pub mod cache;
pub mod check;
pub mod consolidate;
pub mod delete;
pub(crate) mod entry_chunks;
pub mod error;
pub mod footer;
#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod layout;
pub mod log;
pub mod optimize;
pub mod part_sink;
pub mod reader;
pub mod schema;
pub mod segment;
#[allow(unsafe_code)]
pub mod sql;
pub mod stats;
pub mod storage;
pub mod tombstone;
pub mod vacuum;
pub mod writer;
