//! Request paths, repository names, tags, digests and image references: never a panic, and
//! whatever parses is valid and prints back to itself.
#![no_main]

use berth::test_util::route::{self, Route};
use berth::oci::digest::Digest;
use berth::oci::image_ref::ImageRef;
use berth::oci::reference::{validate_name, Reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(d) = Digest::parse(s) {
        assert_eq!(d.as_str(), s);
        assert_eq!(d.hex().len(), 64);
        assert!(d.hex().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
    match route::parse(s) {
        Ok(Route::Manifest { name, reference }) => {
            validate_name(&name).expect("a routed name is valid");
            if let Reference::Tag(t) = reference {
                Reference::parse(&t).expect("a routed tag is valid");
            }
        }
        Ok(Route::Blob { name, digest } | Route::Referrers { name, digest }) => {
            validate_name(&name).expect("a routed name is valid");
            Digest::parse(digest.as_str()).expect("a routed digest is valid");
        }
        Ok(Route::Tags { name }) => validate_name(&name).expect("a routed name is valid"),
        Ok(Route::Base | Route::Upload) | Err(_) => {}
    }
    if let Ok(r) = ImageRef::parse(s) {
        let again = ImageRef::parse(&r.to_string()).expect("a normalised reference parses");
        assert_eq!(again, r);
    }
});
