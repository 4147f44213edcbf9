//! Peer mirrors: who the peers are (static list, DNS), which are healthy, and which one owns
//! a digest. A miss on a non-owner is asked of the owner (see `fetch`); peer trouble only
//! ever sends a fill to upstream instead.

mod fetch;
pub mod ring;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::{Peers as PeersConfig, Secret};
use crate::error::Error;
use crate::oci::digest::Digest;

/// Marks a request sent by a peer; its value is the sender. It grants nothing by itself:
/// only the peer token makes a request a peer's (`api::caller`), and a peer's request is
/// answered from the tiers or upstream, never forwarded again.
pub(crate) const HOP: &str = "x-berth-hop";
/// The shared peer token every peer request carries.
pub(crate) const TOKEN: &str = "x-berth-peer-token";

/// A peer's identity: its URL's origin (`http://10.0.0.7:5000`), as every instance spells it.
fn id_of(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

/// The other peers after a DNS answer: the static ones and the addresses found, the latter
/// spelled with `scheme` (that of `peers.self`) and as identities, so an address of this
/// instance (`https://10.0.0.7` found as `10.0.0.7:443`) is recognised and left out.
fn members_with(
    me: &str,
    scheme: &str,
    statics: &[String],
    found: impl IntoIterator<Item = SocketAddr>,
) -> BTreeSet<String> {
    let found = found.into_iter().filter_map(|a| url::Url::parse(&format!("{scheme}://{a}")).ok());
    statics.iter().cloned().chain(found.map(|u| id_of(&u))).filter(|p| p != me).collect()
}

#[derive(Default)]
struct Health {
    down_until: Option<Instant>,
    last_error: Option<String>,
    failures: u64,
}

pub(crate) struct Peers {
    me: String,
    statics: Vec<String>,
    dns: Option<String>,
    dns_interval: Duration,
    /// The scheme of `peers.self`: peers found through DNS are reached with it.
    scheme: String,
    /// The other peers now: static ones and the last DNS answer, without this instance.
    members: RwLock<BTreeSet<String>>,
    health: Mutex<HashMap<String, Health>>,
    backoff: Duration,
    token: Secret,
    client: reqwest::Client,
    /// Misses asked of an owner, fills that went to upstream after peer trouble, and
    /// requests answered for peers.
    forwarded: AtomicU64,
    fallbacks: AtomicU64,
    served: AtomicU64,
}

impl Peers {
    pub(crate) fn new(cfg: &PeersConfig) -> Result<Arc<Peers>, Error> {
        let me = id_of(&cfg.self_url);
        let statics: Vec<String> = cfg.static_peers.iter().map(id_of).filter(|p| *p != me).collect();
        let client = crate::source::outbound::peer_client(cfg)?;
        Ok(Arc::new(Peers {
            members: RwLock::new(statics.iter().cloned().collect()),
            me,
            statics,
            dns: cfg.dns.clone(),
            dns_interval: cfg.dns_interval,
            scheme: cfg.self_url.scheme().to_owned(),
            health: Mutex::new(HashMap::new()),
            backoff: cfg.backoff,
            token: cfg.token.loaded().clone(),
            client,
            forwarded: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            served: AtomicU64::new(0),
        }))
    }

    /// This instance's identity.
    pub(crate) fn me(&self) -> &str {
        &self.me
    }

    /// The other peers, healthy or not.
    pub(crate) fn members(&self) -> Vec<String> {
        self.members.read().expect("members lock").iter().cloned().collect()
    }

    fn healthy(&self, peer: &str) -> bool {
        let health = self.health.lock().expect("health lock");
        health.get(peer).and_then(|h| h.down_until).is_none_or(|until| Instant::now() >= until)
    }

    /// The peer that owns `digest`, or `None` when this instance does. Peers in backoff
    /// are left out, so their digests fall to the next highest score.
    pub(crate) fn owner(&self, digest: &Digest) -> Option<String> {
        let members = self.members.read().expect("members lock");
        let live = members.iter().map(String::as_str).filter(|p| self.healthy(p));
        let owner = ring::owner(live.chain([self.me.as_str()]), digest)?;
        (owner != self.me).then(|| owner.to_owned())
    }

    /// Leaves `peer` out of ownership for the backoff, after it failed a request.
    pub(crate) fn mark_down(&self, peer: &str, why: &str) {
        tracing::warn!(peer, error = why, backoff = ?self.backoff, "peer failed: using upstream meanwhile");
        metrics::counter!("berth_peer_failures_total", "peer" => peer.to_owned()).increment(1);
        let mut health = self.health.lock().expect("health lock");
        let h = health.entry(peer.to_owned()).or_default();
        h.down_until = Some(Instant::now() + self.backoff);
        h.last_error = Some(why.to_owned());
        h.failures += 1;
    }

    /// Whether `presented` is the peer token (compared in constant time).
    pub(crate) fn token_matches(&self, presented: &[u8]) -> bool {
        self.token.matches(presented)
    }

    /// Counts a request answered for a peer.
    pub(crate) fn served_one(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// Re-resolves `dns` every `dns_interval`, for as long as the peers are in use.
    pub(crate) fn spawn_discovery(self: &Arc<Self>) {
        let Some(name) = self.dns.clone() else { return };
        let (peers, every) = (Arc::downgrade(self), self.dns_interval);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(peers) = peers.upgrade() else { return };
                match tokio::net::lookup_host(name.as_str()).await {
                    Ok(addrs) => {
                        let members = members_with(&peers.me, &peers.scheme, &peers.statics, addrs);
                        let mut current = peers.members.write().expect("members lock");
                        if *current != members {
                            tracing::info!(peers = ?members, "peer set changed");
                            *current = members;
                        }
                    }
                    // Keep the last answer: a DNS hiccup is not a reason to drop every peer.
                    Err(e) => tracing::warn!(dns = %name, error = %e, "resolving peers failed"),
                }
            }
        });
    }

    /// `/api/v1/peers`: every peer, its health, and the share of digests it owns now.
    pub(crate) fn status(&self) -> Value {
        let members = self.members();
        let live: Vec<&str> = members
            .iter()
            .map(String::as_str)
            .filter(|p| self.healthy(p))
            .chain([self.me.as_str()])
            .collect();
        const SAMPLE: u32 = 4096;
        let mut owned: HashMap<&str, u32> = HashMap::new();
        for i in 0..SAMPLE {
            if let Some(o) = ring::owner(live.iter().copied(), &Digest::of(&i.to_le_bytes())) {
                *owned.entry(o).or_default() += 1;
            }
        }
        let share = |p: &str| f64::from(owned.get(p).copied().unwrap_or(0)) / f64::from(SAMPLE);
        let now = Instant::now();
        let health = self.health.lock().expect("health lock");
        let peers: Vec<Value> = members
            .iter()
            .map(|p| {
                let h = health.get(p);
                let down_for =
                    h.and_then(|h| h.down_until).filter(|u| *u > now).map(|u| (u - now).as_secs_f64());
                json!({
                    "peer": p,
                    "healthy": down_for.is_none(),
                    "retry_in_seconds": down_for,
                    "failures": h.map_or(0, |h| h.failures),
                    "last_error": h.and_then(|h| h.last_error.clone()),
                    "ownership_share": share(p),
                })
            })
            .collect();
        json!({
            "self": { "peer": self.me, "ownership_share": share(&self.me) },
            "peers": peers,
            "dns": self.dns,
            "forwarded": self.forwarded.load(Ordering::Relaxed),
            "fallbacks": self.fallbacks.load(Ordering::Relaxed),
            "served_to_peers": self.served.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_members_take_the_self_scheme_and_leave_this_instance_out() {
        let me = id_of(&url::Url::parse("https://10.0.0.7").unwrap());
        let statics = vec!["https://10.0.0.5".to_owned()];
        let found: Vec<SocketAddr> =
            ["10.0.0.7:443", "10.0.0.8:443", "[fd00::9]:5000"].iter().map(|a| a.parse().unwrap()).collect();
        let members = members_with(&me, "https", &statics, found);
        let expected: BTreeSet<String> =
            ["https://10.0.0.5", "https://10.0.0.8", "https://[fd00::9]:5000"].map(String::from).into();
        assert_eq!(members, expected);
    }
}
