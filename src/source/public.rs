//! The open-proxy guard of the wildcard registry: only public addresses, checked on the host
//! name as given and on every address DNS answers for it.

use std::net::{IpAddr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is reachable on the public internet (not loopback, private, link-local,
/// shared, multicast, unspecified or documentation space).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space
                || (o[0] == 192 && o[1] == 0 && o[2] == 0))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80) // link-local
        }
    }
}

/// Checks a registry host as a client named it: a DNS name or a public IP, with an optional
/// port; nothing else (no paths, no credentials).
pub fn check_host(host: &str) -> Result<(), String> {
    let port_ok = |p: &str| p.is_empty() || p.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok());
    let bare = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        let (ip, after) = rest.split_once(']').ok_or("not a host name")?;
        if !port_ok(after) {
            return Err("not a host name".into());
        }
        ip
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && port.parse::<u16>().is_ok() => h,
            _ => host,
        }
    };
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return if is_public(ip) { Ok(()) } else { Err("not a public address".into()) };
    }
    let valid = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err("not a host name".into());
    }
    if bare.eq_ignore_ascii_case("localhost") || bare.to_ascii_lowercase().ends_with(".localhost") {
        return Err("not a public address".into());
    }
    Ok(())
}

/// The error a refused resolution carries, so that it can be told from a DNS failure.
#[derive(Debug)]
pub struct NotPublic(pub String);

impl std::fmt::Display for NotPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves to a non-public address", self.0)
    }
}

impl std::error::Error for NotPublic {}

/// A resolver that answers only when every address of a name is public.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() || addrs.iter().any(|a| !is_public(a.ip())) {
                return Err(Box::new(NotPublic(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused() {
        for bad in [
            "127.0.0.1",
            "127.0.0.1:5000",
            "169.254.169.254",
            "10.1.2.3",
            "192.168.0.1:443",
            "[::1]:5000",
            "::1",
            "fe80::1",
            "fd00::1",
            "100.64.0.1",
            "0.0.0.0",
            "localhost",
            "a.localhost",
            "x/y",
            "user@host",
            "",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        for ok in ["ghcr.io", "quay.io:443", "8.8.8.8", "registry-1.docker.io", "[2606:4700::1111]:443"] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_by_the_resolver() {
        use std::str::FromStr;
        // localhost resolves through /etc/hosts, no network needed.
        let err = match PublicOnly.resolve(Name::from_str("localhost").unwrap()).await {
            Ok(_) => panic!("localhost was let through"),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<NotPublic>().is_some(), "{err}");
    }
}
