//! The NDJSON upload parser on arbitrary bytes, as an upload (header line
//! first) and as an append (blocks only): never a panic; accepted blocks
//! have non-empty, sorted periods within the supported instants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use visbin::model::parse_ndjson_chunk;
use visbin::model::time::{UNIX_MAX, UNIX_MIN};

fuzz_target!(|data: &[u8]| {
    for header in [true, false] {
        if let Ok(chunk) = parse_ndjson_chunk(data, 1, 0, header) {
            assert!(header || chunk.header.is_none());
            for b in &chunk.blocks {
                assert!(b.priority.is_finite());
                assert!(b.periods.windows(2).all(|w| w[0] <= w[1]));
                for &(s, e) in &b.periods {
                    assert!(s < e && s >= UNIX_MIN && e <= UNIX_MAX);
                }
            }
        }
    }
});
