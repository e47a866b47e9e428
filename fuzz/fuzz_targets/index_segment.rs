//! Index segments (format 2): arbitrary bytes as the one segment of a generation are looked up
//! and scanned; Ok or an error naming the file, never an escaping panic.
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
        let _ = pocaduck::fuzzing::index_segment(dir.path(), data);
    }
);
