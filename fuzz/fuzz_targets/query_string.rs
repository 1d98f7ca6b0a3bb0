//! The query-string parsers of the range query and the histogram on
//! arbitrary text: never a panic; what they accept is a valid grid (a
//! width of at least one second, instants within the supported range).
#![no_main]

use libfuzzer_sys::fuzz_target;
use visbin::model::time::{UNIX_MAX, UNIX_MIN};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = visbin::api::bin_query(text) {
        assert!(q.width >= 1);
        for t in [q.start, q.end, Some(q.origin)].into_iter().flatten() {
            assert!((UNIX_MIN..=UNIX_MAX).contains(&t));
        }
        // The grid the server would build from it.
        let _ = visbin::engine::Grid::new(q.width, q.origin);
    }
    if let Ok(q) = visbin::api::histogram_query(text) {
        assert!(q.num_bins >= 1);
        if let Some(m) = q.bin_minutes {
            // A bin that starts anywhere in the supported range must end
            // without overflow.
            assert!(m >= 1 && UNIX_MAX.checked_add(m * 60).is_some());
        }
    }
});
