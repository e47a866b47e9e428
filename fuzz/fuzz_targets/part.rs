//! Part files: arbitrary bytes claimed by the index as rows of a label are read back through the
//! row-selection reader; Ok or an error naming the file, never an escaping panic.
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
        // The first byte picks how many rows the index claims.
        let (rows, body) = match data.split_first() {
            Some((r, b)) => (*r as u64 * 7, b),
            None => (0, data),
        };
        let _ = pocaduck::fuzzing::part(dir.path(), body, rows);
    }
);
