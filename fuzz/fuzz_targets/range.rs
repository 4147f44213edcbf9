//! Range headers: never a panic; a resolved span is non-empty and inside the content; a set's
//! spans are also apart from each other (overlaps merged) and never more than were asked.
#![no_main]

use berth::oci::range::{RangeSet, RangeSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let len = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
    let Ok(s) = std::str::from_utf8(&data[8..]) else { return };
    if let Some(spec) = RangeSpec::parse(s) {
        if let Ok((start, end)) = spec.resolve(len) {
            assert!(start < end && end <= len, "{s:?} over {len}: {start}..{end}");
        }
    }
    if let Some(set) = RangeSet::parse(s) {
        if let Ok(spans) = set.resolve(len) {
            assert!(!spans.is_empty() && spans.len() <= s.matches(',').count() + 1);
            let mut sorted = spans.clone();
            sorted.sort_unstable();
            for (i, &(start, end)) in sorted.iter().enumerate() {
                assert!(start < end && end <= len, "{s:?} over {len}: {start}..{end}");
                assert!(i == 0 || sorted[i - 1].1 < start, "{s:?}: overlapping parts {sorted:?}");
            }
        }
    }
});
