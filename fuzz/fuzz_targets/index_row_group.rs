//! Index segment row groups read through a row-group directory (as on an object store, without
//! the footer): arbitrary bytes as the row group are looked up; Ok or an error naming the
//! file, never an escaping panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
        let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
        let _ = pocaduck::fuzzing::index_row_group(dir.path(), data);
    }
);
