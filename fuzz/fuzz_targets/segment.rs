//! Commit segments (worker index files): arbitrary bytes must give Ok or an error, never a panic
//! that escapes (a panic inside the Parquet decoder is caught and reported as the file's error).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // libfuzzer-sys aborts on every panic, even caught ones; pocaduck catches decoder panics
        // on purpose. An uncaught panic still aborts: it cannot unwind out of the target.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
        let _ = pocaduck::fuzzing::segment(data);
    }
);
