//! `[[registry]]`: the upstream registries berth mirrors, and the wildcard entry.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{placeholder_url, CaFile, Checker, SecretSource};

#[derive(Debug, Clone)]
pub struct Registry {
    /// The name clients use; `*` is the wildcard entry: any public host, fetched from
    /// `https://<host>`, never a loopback, link-local or private address.
    pub host: String,
    pub endpoint: Url,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<SecretSource>,
    pub ca_file: Option<CaFile>,
    pub(crate) connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Connect only to public addresses (the wildcard entry and the hosts it mirrors).
    pub public_only: bool,
    /// Socket addresses a public-only registry may reach anyway: never set from mirror.toml
    /// (tests put their loopback fake upstream here).
    pub public_exempt: Vec<SocketAddr>,
    /// Blob fills from this registry at once; more wait for a turn. None: `storage.max_fills`,
    /// and for the wildcard entry [`WILDCARD_MAX_FILLS`] per host.
    pub max_fills: Option<usize>,
    /// The slowest a blob body from this registry may arrive: below it, the body counts as
    /// cut (resumed, then the fill fails).
    pub(crate) min_rate: MinRate,
}

/// Blob fills at once from each host the wildcard entry mirrors, unless it sets `max_fills`.
pub(crate) const WILDCARD_MAX_FILLS: usize = 4;

/// The most `max_fills` may say: more fills than this at once is no bound.
pub(super) const MAX_FILLS: usize = 65_536;

/// A transfer-rate floor: at least `bytes_per_sec` on average over each `window` spent waiting
/// for the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    pub(crate) bytes_per_sec: u64,
    pub(crate) window: Duration,
}

#[derive(Deserialize)]
pub(super) struct RawRegistry {
    host: String,
    endpoint: String,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    ca_file: Option<PathBuf>,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
    max_fills: Option<usize>,
    min_rate: Option<String>,
    rate_window: Option<String>,
}

/// Every `[[registry]]`, checked, and the set of their hosts.
pub(super) fn validate(raw: Vec<RawRegistry>, p: &mut Checker) -> (Vec<Registry>, HashSet<String>) {
    let mut hosts = HashSet::new();
    let mut registries = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("registry[{i}] ({})", r.host);
        if !hosts.insert(r.host.clone()) {
            p.0.push(format!("{at}: duplicate host {:?}", r.host));
        }
        if r.host.is_empty() || r.host.contains(['/', ' ']) {
            p.0.push(format!("{at}: host must be a registry name such as docker.io"));
        }
        let wildcard = r.host == "*";
        if wildcard && (r.endpoint != "https://*" || r.username.is_some()) {
            p.0.push(format!(
                "{at}: the wildcard registry takes endpoint = \"https://*\" and no credentials"
            ));
        }
        let endpoint = match Url::parse(&r.endpoint) {
            _ if wildcard => Url::parse("https://wildcard.invalid").expect("static URL"),
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            Ok(_) => {
                p.0.push(format!("{at}: endpoint {:?} must be an http(s) URL", r.endpoint));
                placeholder_url()
            }
            Err(e) => {
                p.0.push(format!("{at}: endpoint {:?}: {e}", r.endpoint));
                placeholder_url()
            }
        };
        let password = p.secret(&at, "password", r.password_file.as_deref(), r.password_env.as_deref());
        if password.is_some() != r.username.is_some() {
            p.0.push(format!("{at}: username and a password go together"));
        }
        p.fills(&format!("{at}.max_fills"), r.max_fills);
        registries.push(Registry {
            connect_timeout: p.duration(&format!("{at}.connect_timeout"), r.connect_timeout, "3s"),
            read_timeout: p.duration(&format!("{at}.read_timeout"), r.read_timeout, "30s"),
            max_fills: r.max_fills,
            min_rate: MinRate {
                bytes_per_sec: p.rate(&format!("{at}.min_rate"), r.min_rate, "16KiB/s"),
                window: p.timeout(&format!("{at}.rate_window"), r.rate_window, "30s"),
            },
            host: r.host,
            endpoint,
            username: r.username,
            password,
            ca_file: r.ca_file.map(CaFile::new),
            public_only: wildcard,
            public_exempt: Vec::new(),
        });
    }
    (registries, hosts)
}
