//! The trust boundary's parsers: a host a client names, a URL upstream redirects to, an
//! upstream error body. Never a panic; a host or URL the public-only guard accepts never
//! reaches a non-public address as the URL parser reads it; an error code is printable.
#![no_main]

use berth::test_util::{check_host, is_public, Guard};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = berth::test_util::first_code(data).map(|c| assert!(c.bytes().all(|b| b.is_ascii_graphic())));
    let Ok(s) = std::str::from_utf8(data) else { return };
    if check_host(s).is_ok() {
        if let Ok(url) = url::Url::parse(&format!("https://{s}/")) {
            assert_public(&url, s);
        }
    }
    if let Ok(url) = url::Url::parse(s) {
        if Guard::default().check_url(&url).is_ok() {
            assert_public(&url, s);
        }
    }
});

fn assert_public(url: &url::Url, from: &str) {
    let ip: Option<std::net::IpAddr> = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(v4.into()),
        Some(url::Host::Ipv6(v6)) => Some(v6.into()),
        _ => None,
    };
    if let Some(ip) = ip {
        assert!(is_public(ip), "{from:?} let through {ip}");
    }
}
