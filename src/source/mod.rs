//! Where content comes from on a miss: the owning peer mirror, else the configured upstream
//! registries.

pub(crate) mod auth;
pub(crate) mod bucket;
pub(crate) mod outbound;
pub(crate) mod peers;
pub(crate) mod public;
mod status;
pub(crate) mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::Semaphore;

use crate::config::{Config, MinRate, Registry, WILDCARD_MAX_FILLS};
use crate::error::Error;
pub(crate) use upstream::Upstream;
use upstream::{FillTurns, Split};

/// A body as a source sends it.
pub(crate) type Body = BoxStream<'static, Result<Bytes, Error>>;

/// A blob as a source answered it, with what a fill needs to go on after a cut.
pub(crate) struct Fetched {
    /// The announced length, when the source sent one.
    pub(crate) len: Option<u64>,
    pub(crate) body: Body,
    /// How to continue after the body is cut; without it a cut fails the fill.
    pub(crate) resume: Option<Resume>,
    /// To call when the content fails verification (a peer that sent wrong bytes).
    pub(crate) rejected: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// To keep until the fill ends (a turn among the fills the registry allows at once).
    pub(crate) hold: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// The slowest the body (and any resumed rest) may arrive; below it, it counts as cut.
    pub(crate) floor: Option<MinRate>,
}

/// Asks the source for the rest of a body from a byte offset.
pub(crate) type Resume = Box<dyn Fn(u64) -> BoxFuture<'static, Result<Resumed, Error>> + Send + Sync>;

/// The rest of a body after a cut: bytes from some offset, of which `skip` are already held
/// (a server that ignores Range sends everything again).
pub(crate) struct Resumed {
    pub(crate) body: Body,
    pub(crate) skip: u64,
}

/// The configured registries by the name clients use (`?ns=`).
pub(crate) struct Upstreams {
    by_host: HashMap<String, Arc<Upstream>>,
    default: String,
    /// The `host = "*"` entry, if any: its settings apply to every public host.
    wildcard: Option<Registry>,
    /// Upstreams made for the wildcard entry, by host, at most `MAX_DYNAMIC`: past it, the
    /// least recently used is dropped (its client with it) to make room.
    dynamic: moka::sync::Cache<String, Arc<Upstream>>,
    /// Turns for blob fills that all the wildcard's hosts share (`storage.max_fills`).
    wildcard_fills: Arc<Semaphore>,
    split: Split,
}

/// Hosts the wildcard entry keeps an upstream (and its HTTP client) for.
const MAX_DYNAMIC: usize = 1024;

impl Upstreams {
    pub(crate) fn new(config: &Config) -> Result<Upstreams, Error> {
        let mut by_host = HashMap::new();
        let mut wildcard = None;
        let split = Split {
            connections: config.storage.fill_connections,
            above: config.storage.fill_connections_above,
            room: Arc::new(Semaphore::new(upstream::PIECES_ROOM)),
        };
        for r in &config.registries {
            if r.host == "*" {
                wildcard = Some(r.clone());
            } else {
                // Each registry has turns of its own: one slow registry cannot hold another's.
                let turns = FillTurns::new(r.max_fills.unwrap_or(config.storage.max_fills), None);
                by_host.insert(r.host.clone(), Arc::new(Upstream::new(r, turns, split.clone())?));
            }
        }
        Ok(Upstreams {
            by_host,
            default: config.server.default_registry.clone(),
            wildcard,
            dynamic: moka::sync::Cache::builder()
                .max_capacity(MAX_DYNAMIC as u64)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            wildcard_fills: Arc::new(Semaphore::new(config.storage.max_fills)),
            split,
        })
    }

    /// The registry for a request's `ns` (none: the default registry). Unknown hosts are
    /// refused: berth is a mirror of its configured registries, never an open proxy.
    /// With a wildcard entry, any public host is mirrored from `https://<host>`; loopback,
    /// link-local and private addresses are refused, also after DNS resolution.
    pub(crate) fn get(&self, ns: Option<&str>) -> Result<Arc<Upstream>, Error> {
        let host = ns.unwrap_or(&self.default);
        if let Some(u) = self.by_host.get(host) {
            return Ok(u.clone());
        }
        let denied = || Error::Denied(format!("registry {host:?} is not mirrored here"));
        let Some(template) = &self.wildcard else { return Err(denied()) };
        // One spelling per host (`GHCR.io:443` is ghcr.io), so that no host gets more turns
        // or records by being spelled differently.
        let host = canonical(host);
        public::check_host(&host).map_err(|why| Error::Denied(format!("registry {host:?}: {why}")))?;
        // Built once per host while it is remembered (concurrent first requests share it).
        self.dynamic
            .try_get_with(host.clone(), || self.wildcard_upstream(&host, template))
            .map_err(|e| (*e).clone())
    }

    /// Whether `host` is one of the configured registries (the wildcard's hosts are not).
    pub(crate) fn is_configured(&self, host: &str) -> bool {
        self.by_host.contains_key(host)
    }

    /// A new upstream for `host`, a public registry the wildcard entry `template` mirrors.
    fn wildcard_upstream(&self, host: &str, template: &Registry) -> Result<Arc<Upstream>, Error> {
        let endpoint = if host == "docker.io" {
            "https://registry-1.docker.io".to_owned()
        } else {
            format!("https://{host}")
        };
        let endpoint = url::Url::parse(&endpoint)
            .map_err(|_| Error::Denied(format!("registry {host:?} is not mirrored here")))?;
        let cfg = Registry { host: host.to_owned(), endpoint, public_only: true, ..template.clone() };
        // A few turns per host, within a total for all of them: a flood of hosts cannot
        // exceed `storage.max_fills`, and one host cannot take all of those.
        let per_host = template.max_fills.unwrap_or(WILDCARD_MAX_FILLS);
        let turns = FillTurns::new(per_host, Some(self.wildcard_fills.clone()));
        Ok(Arc::new(Upstream::new(&cfg, turns, self.split.clone())?))
    }

    /// How many of the wildcard's hosts have an upstream remembered now.
    #[cfg(test)]
    fn remembered_hosts(&self) -> usize {
        self.dynamic.run_pending_tasks();
        usize::try_from(self.dynamic.entry_count()).unwrap_or(usize::MAX)
    }
}

/// A wildcard host as one spelling: lowercase, without the default port `:443`.
fn canonical(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.strip_suffix(":443") {
        Some(bare) if !bare.is_empty() && !bare.ends_with(':') => bare.to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// docker.io and the wildcard entry, with `[storage] max_fills`.
    fn with_wildcard(max_fills: usize) -> Config {
        Config::parse(&format!(
            r#"
            [storage]
            max_fills = {max_fills}
            [[registry]]
            host = "docker.io"
            endpoint = "https://registry-1.docker.io"
            [[registry]]
            host = "*"
            endpoint = "https://*"
            "#
        ))
        .unwrap()
    }

    /// A fill turn of `u`, if one is given at once.
    async fn turn_now(u: &Upstream) -> Option<upstream::Turn> {
        tokio::time::timeout(Duration::from_millis(50), u.turn()).await.ok().map(Result::unwrap)
    }

    #[tokio::test]
    async fn each_wildcard_host_has_a_few_turns_within_a_total_for_all_of_them() {
        let upstreams = Upstreams::new(&with_wildcard(6)).unwrap();
        let host = |h: &str| upstreams.get(Some(h)).unwrap();
        let mut held = Vec::new();
        for _ in 0..WILDCARD_MAX_FILLS {
            held.push(turn_now(&host("one.example.com")).await.expect("a host's own turns"));
        }
        assert!(turn_now(&host("one.example.com")).await.is_none(), "one host took more than its own turns");
        for _ in 0..2 {
            held.push(
                turn_now(&host("two.example.com")).await.expect("another host waited behind the first"),
            );
        }
        // Six turns held: all the wildcard's hosts share storage.max_fills.
        assert!(
            turn_now(&host("three.example.com")).await.is_none(),
            "the wildcard's hosts exceeded their total"
        );
        // A configured registry has turns of its own.
        assert!(turn_now(&host("docker.io")).await.is_some(), "docker.io waited behind the wildcard's hosts");
        held.clear();
        assert!(turn_now(&host("three.example.com")).await.is_some(), "turns given back were not free");
    }

    #[tokio::test]
    async fn wildcard_hosts_are_remembered_within_a_bound_and_reused_past_it() {
        let upstreams = Upstreams::new(&with_wildcard(64)).unwrap();
        let get = |h: &str| upstreams.get(Some(h)).unwrap();
        for i in 0..MAX_DYNAMIC + 100 {
            get(&format!("h{i}.example.com"));
        }
        assert!(
            upstreams.remembered_hosts() <= MAX_DYNAMIC,
            "{} hosts remembered",
            upstreams.remembered_hosts()
        );
        for late in [format!("h{}.example.com", MAX_DYNAMIC + 99), "new.example.com".to_owned()] {
            let (first, again) = (get(&late), get(&late));
            assert!(Arc::ptr_eq(&first, &again), "{late} got a new upstream (and client) per request");
        }
        assert!(
            upstreams.remembered_hosts() <= MAX_DYNAMIC,
            "{} hosts remembered",
            upstreams.remembered_hosts()
        );
    }

    #[tokio::test]
    async fn a_wildcard_host_has_one_spelling() {
        let upstreams = Upstreams::new(&with_wildcard(64)).unwrap();
        let first = upstreams.get(Some("ghcr.io")).unwrap();
        for spelling in ["GHCR.io", "ghcr.io:443", "Ghcr.IO:443"] {
            let again = upstreams.get(Some(spelling)).unwrap();
            assert!(Arc::ptr_eq(&first, &again), "{spelling} got an upstream of its own");
            assert_eq!(again.host, "ghcr.io");
        }
        assert!(!Arc::ptr_eq(&first, &upstreams.get(Some("ghcr.io:8443")).unwrap()));
    }

    #[tokio::test]
    async fn each_configured_registry_has_its_own_turns() {
        let config = Config::parse(
            r#"
            [storage]
            max_fills = 1
            [[registry]]
            host = "docker.io"
            endpoint = "https://registry-1.docker.io"
            [[registry]]
            host = "ghcr.io"
            endpoint = "https://ghcr.io"
            max_fills = 2
            "#,
        )
        .unwrap();
        let upstreams = Upstreams::new(&config).unwrap();
        let (docker, ghcr) =
            (upstreams.get(Some("docker.io")).unwrap(), upstreams.get(Some("ghcr.io")).unwrap());
        let _docker = turn_now(&docker).await.expect("docker.io's turn");
        assert!(turn_now(&docker).await.is_none(), "docker.io took more than storage.max_fills");
        let _ghcr =
            (turn_now(&ghcr).await.expect("ghcr.io's first"), turn_now(&ghcr).await.expect("its second"));
        assert!(turn_now(&ghcr).await.is_none(), "ghcr.io took more than its max_fills");
    }
}
