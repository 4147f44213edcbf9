//! The open-proxy guard of a public-only registry (the wildcard entry): berth connects only
//! to public addresses for it. The guard is applied at three depths, each a backstop for the
//! one before:
//! - the host a client names (`?ns=`), read as the URL parser reads it (`127.1`, `0x7f.1` and
//!   `2130706433` are all 127.0.0.1): [`check_host`];
//! - every URL before a request goes out (the first, each redirect hop, the token realm):
//!   [`Guard::check_url`];
//! - every connection once its socket address is known, whatever produced it (DNS, an IP
//!   literal, a rebinding answer): the resolver [`PublicOnly`] and the connector layer
//!   [`ConnectGuard`], which refuses a connection whose remote address is not public.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connection, HttpInfo};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

/// Whether `ip` is reachable on the public internet: not loopback, private, link-local,
/// shared, benchmarking, reserved, multicast, unspecified or documentation space, and for
/// IPv6 not unique-local, site-local, NAT64, Teredo, or an IPv4 address in disguise (mapped,
/// compatible, 6to4) that is not public itself.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || o[0] == 0 // "this network", 0.0.0.0/8
        || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space, 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments, 192.0.0.0/24
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast, 192.88.99.0/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking, 198.18.0.0/15
        || o[0] >= 240) // reserved, 240.0.0.0/4
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_public_v4(v4); // ::ffff:a.b.c.d
    }
    let s = v6.segments();
    if s[..6] == [0; 6] {
        return false; // ::/96: unspecified, loopback and IPv4-compatible ::a.b.c.d
    }
    if s[0] == 0x2002 {
        // 6to4: the IPv4 address is in the next 32 bits.
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_public_v4(v4);
    }
    !(v6.is_multicast()
        || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64, 64:ff9b::/96 and 64:ff9b:1::/48
        || (s[0] == 0x100 && s[1..4] == [0; 3]) // discard-only, 100::/64
        || (s[0] == 0x2001 && s[1] == 0) // Teredo, 2001::/32
        || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation, 2001:db8::/32
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
        || (s[0] & 0xffc0) == 0xfec0) // site-local, fec0::/10
}

/// Why `check_host` refused a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostRefused {
    #[error("not a host name")]
    NotAHostName,
    #[error("not a public address")]
    NotPublic,
}

/// Checks a registry host as a client named it: a DNS name or a public IP, with an optional
/// port; nothing else (no paths, no credentials). The host is read as the URL parser reads
/// it, so that every spelling of an address is judged as the address it connects to.
pub fn check_host(host: &str) -> Result<(), HostRefused> {
    let port_ok = |p: &str| p.is_empty() || p.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok());
    let bare = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        let (ip, after) = rest.split_once(']').ok_or(HostRefused::NotAHostName)?;
        if !port_ok(after) {
            return Err(HostRefused::NotAHostName);
        }
        return match ip.parse::<Ipv6Addr>() {
            Ok(v6) if is_public_v6(v6) => Ok(()),
            Ok(_) => Err(HostRefused::NotPublic),
            Err(_) => Err(HostRefused::NotAHostName),
        };
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && port.parse::<u16>().is_ok() => h,
            _ => host,
        }
    };
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return if is_public(ip) { Ok(()) } else { Err(HostRefused::NotPublic) };
    }
    let valid_label =
        |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(valid_label) {
        return Err(HostRefused::NotAHostName);
    }
    let name = match url::Host::parse(bare).map_err(|_| HostRefused::NotAHostName)? {
        url::Host::Ipv4(v4) if is_public_v4(v4) => return Ok(()),
        url::Host::Ipv4(_) | url::Host::Ipv6(_) => return Err(HostRefused::NotPublic),
        url::Host::Domain(name) => name,
    };
    if name == "localhost" || name.ends_with(".localhost") {
        return Err(HostRefused::NotPublic);
    }
    Ok(())
}

/// The error a refused address carries, so that it can be told from a DNS or connect failure.
#[derive(Debug)]
pub struct NotPublic(pub String);

impl std::fmt::Display for NotPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not a public address", self.0)
    }
}

impl std::error::Error for NotPublic {}

/// The policy of a public-only registry: public addresses only, but for `exempt` socket
/// addresses (never set from mirror.toml; tests put their loopback fake upstream there).
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub(crate) exempt: Vec<SocketAddr>,
}

impl Guard {
    /// Whether a connection to `addr` is allowed.
    pub(crate) fn check_addr(&self, addr: SocketAddr) -> Result<(), NotPublic> {
        if is_public(addr.ip()) || self.exempt.contains(&addr) {
            return Ok(());
        }
        Err(NotPublic(addr.to_string()))
    }

    /// Whether a request to `url` may go out: an IP-literal host must be public (names are
    /// checked when they resolve, and every connection again by `ConnectGuard`).
    pub fn check_url(&self, url: &Url) -> Result<(), NotPublic> {
        let port = url.port_or_known_default().unwrap_or(0);
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(d)) if d == "localhost" || d.ends_with(".localhost") => {
                return Err(NotPublic(d.to_owned()))
            }
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(NotPublic(url.to_string())),
        };
        self.check_addr(SocketAddr::new(ip, port))
    }
}

/// A resolver that answers only when every address of a name is public.
pub(crate) struct PublicOnly;

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connector layer of a public-only client: a connection whose remote socket address the
/// guard refuses is dropped before any request is written on it.
#[derive(Clone)]
pub(crate) struct ConnectGuard(pub Arc<Guard>);

impl<S> tower::Layer<S> for ConnectGuard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner, guard: self.0.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct Guarded<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S, R> tower::Service<R> for Guarded<S>
where
    S: tower::Service<R, Error = BoxError>,
    S::Response: Connection,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let (connecting, guard) = (self.inner.call(req), self.guard.clone());
        Box::pin(async move {
            let conn = connecting.await?;
            let mut extras = http::Extensions::new();
            conn.connected().get_extras(&mut extras);
            let remote = extras.get::<HttpInfo>().map(HttpInfo::remote_addr);
            match remote {
                Some(addr) => guard.check_addr(addr).map_err(|e| Box::new(e) as BoxError)?,
                None => return Err(Box::new(NotPublic("a connection of unknown address".into())) as BoxError),
            }
            Ok(conn)
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
            "0.1.2.3",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "[64:ff9b::a9fe:a9fe]:443",
            "[::ffff:127.0.0.1]",
            "[::ffff:10.0.0.1]:443",
            "[::127.0.0.1]",
            "[::a9fe:a9fe]",
            "[fec0::1]",
            "[fc00::1]",
            "[2002:7f00:1::]",
            "[2001::1]",
            "[2001:db8::1]",
            // Spellings the URL parser reads as 127.0.0.1 or 169.254.169.254.
            "2130706433:5000",
            "2130706433",
            "127.1:5000",
            "0x7f.1:5000",
            "0x7f000001",
            "0177.0.0.1",
            "2852039166",
            "localhost",
            "LOCALHOST",
            "a.localhost",
            "x/y",
            "user@host",
            "[v6",
            "",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        for ok in [
            "ghcr.io",
            "quay.io:443",
            "8.8.8.8",
            "registry-1.docker.io",
            "[2606:4700::1111]:443",
            "[2002:0808:0808::]",
            "1e100.net",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn urls_with_non_public_ip_literals_are_refused() {
        let guard = Guard { exempt: vec!["127.0.0.1:4000".parse().unwrap()] };
        for bad in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:5000/v2/",
            "http://[::1]/",
            "https://10.0.0.1/token",
            "http://2130706433/",
            "http://0x7f.1:4001/",
            "http://localhost:4000/",
        ] {
            assert!(guard.check_url(&Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
        for ok in ["https://ghcr.io/v2/", "http://8.8.8.8/", "http://127.0.0.1:4000/v2/"] {
            assert!(guard.check_url(&Url::parse(ok).unwrap()).is_ok(), "{ok}");
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
