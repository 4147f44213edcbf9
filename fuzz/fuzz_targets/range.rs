//! Range headers: never a panic; a resolved span is non-empty and inside the content.
#![no_main]

use berth::oci::range::RangeSpec;
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
});
