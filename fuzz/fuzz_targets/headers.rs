//! Accept headers and WWW-Authenticate challenges: never a panic; a bearer challenge always
//! has a realm.
#![no_main]

use berth::oci::accept::AcceptClass;
use berth::test_util::{parse_challenge, Challenge};
use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = HeaderValue::from_bytes(data) {
        let mut h = HeaderMap::new();
        h.append(header::ACCEPT, v.clone());
        h.append(header::ACCEPT, v);
        let class = AcceptClass::from_headers(&h);
        let _ = class.header();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(Challenge::Bearer { realm, .. }) = parse_challenge(s) {
            assert!(s.contains(realm.as_str()) || s.contains('\\'), "realm {realm:?} not from {s:?}");
        }
    }
});
