//! The JSON upload parser on arbitrary bytes: it never panics, and what it
//! accepts is what the store relies on — identities unique, periods
//! non-empty, sorted and within the supported instants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use visbin::model::time::{UNIX_MAX, UNIX_MIN};
use visbin::model::{parse_document, Block};

fn check(blocks: &[Block]) {
    let mut ids = std::collections::HashSet::new();
    for b in blocks {
        assert!(
            ids.insert(b.identity.as_str()),
            "duplicate identity accepted"
        );
        assert!(b.priority.is_finite());
        assert!(
            b.periods.windows(2).all(|w| w[0] <= w[1]),
            "unsorted periods"
        );
        for &(s, e) in &b.periods {
            assert!(s < e, "empty period accepted");
            assert!((UNIX_MIN..=UNIX_MAX).contains(&s) && (UNIX_MIN..=UNIX_MAX).contains(&e));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for with_header in [true, false] {
        if let Ok(doc) = parse_document(data, with_header) {
            assert!(with_header || doc.header.is_none());
            check(&doc.blocks);
        }
    }
});
