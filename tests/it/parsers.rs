//! Property tests for the small parsers the registry API and upstream auth rely on (the fuzz
//! targets in fuzz/ look for panics; these check meaning).

use berth::oci::digest::Digest;
use berth::oci::range::RangeSpec;
use berth::oci::reference::{validate_name, Reference};
use berth::test_util::{parse_challenge, Challenge};
use proptest::prelude::*;

const COMPONENT: &str = "[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}";

proptest! {
    #[test]
    fn valid_names_pass_and_uppercase_fails(parts in prop::collection::vec(COMPONENT, 1..4), at in any::<prop::sample::Index>()) {
        let name = parts.join("/");
        prop_assert!(validate_name(&name).is_ok(), "{name}");
        let i = at.index(name.len());
        let mut bad = name.clone();
        bad.insert(i, 'A');
        prop_assert!(validate_name(&bad).is_err(), "{bad}");
    }

    #[test]
    fn tags_are_128_word_characters_at_most(tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", extra in "[A-Za-z0-9_.-]{1,4}") {
        prop_assert_eq!(Reference::parse(&tag).unwrap(), Reference::Tag(tag.clone()));
        let long = format!("{tag}{}{extra}", "x".repeat(128));
        prop_assert!(Reference::parse(&long).is_err());
    }

    #[test]
    fn digests_round_trip_and_need_lowercase_hex(bytes in any::<[u8; 32]>()) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let s = format!("sha256:{hex}");
        let d = Digest::parse(&s).unwrap();
        prop_assert_eq!(d.as_str(), s.as_str());
        let upper = format!("sha256:{}", hex.to_uppercase());
        prop_assert_eq!(Digest::parse(&upper).is_ok(), upper == s, "uppercase hex {}", upper);
        prop_assert!(Digest::parse(&s[..s.len() - 1]).is_err());
    }

    #[test]
    fn ranges_resolve_inside_the_content(start in 0u64..1_000_000, span in prop::option::of(0u64..1_000_000), len in 0u64..2_000_000) {
        let header = match span {
            Some(s) => format!("bytes={start}-{}", start + s),
            None => format!("bytes={start}-"),
        };
        let spec = RangeSpec::parse(&header).unwrap();
        match spec.resolve(len) {
            Ok((a, b)) => {
                prop_assert_eq!(a, start);
                prop_assert!(a < b && b <= len);
                prop_assert_eq!(b, span.map_or(len, |s| (start + s + 1).min(len)));
            }
            Err(_) => prop_assert!(start >= len),
        }
    }

    #[test]
    fn suffix_ranges_take_the_tail(n in 1u64..1000, len in 1u64..1000) {
        let (a, b) = RangeSpec::parse(&format!("bytes=-{n}")).unwrap().resolve(len).unwrap();
        prop_assert_eq!((a, b), (len - n.min(len), len));
    }

    #[test]
    fn bearer_challenges_give_back_their_parameters(
        realm in "https://[a-z]{1,10}\\.example/[a-z,= ]{0,12}",
        service in "[a-z. ]{1,16}",
        scope in "repository:[a-z/]{1,12}:pull(,push)?",
    ) {
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let header = format!("Bearer realm={},service={}, scope={}", quote(&realm), quote(&service), quote(&scope));
        let parsed = parse_challenge(&header);
        prop_assert_eq!(parsed, Some(Challenge::Bearer { realm, service: Some(service), scope: Some(scope), error: None }));
    }
}
