//! Where content comes from on a miss: the owning peer mirror, else the configured upstream
//! registries.

pub mod auth;
pub(crate) mod outbound;
pub mod peers;
pub mod public;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::{Config, Registry};
use crate::error::Error;
pub use upstream::Upstream;

/// The configured registries by the name clients use (`?ns=`).
pub struct Upstreams {
    by_host: HashMap<String, Arc<Upstream>>,
    default: String,
    /// The `host = "*"` entry, if any: its settings apply to every public host.
    wildcard: Option<Registry>,
    /// Upstreams made for the wildcard entry, by host.
    dynamic: Mutex<HashMap<String, Arc<Upstream>>>,
    /// Turns for blob fills from any upstream (`storage.max_fills`).
    fills: Arc<tokio::sync::Semaphore>,
}

/// Hosts remembered for the wildcard entry; past this, upstreams are made per request.
const MAX_DYNAMIC: usize = 1024;

impl Upstreams {
    pub fn new(config: &Config) -> Result<Upstreams, Error> {
        let mut by_host = HashMap::new();
        let mut wildcard = None;
        let fills = Arc::new(tokio::sync::Semaphore::new(config.storage.max_fills));
        for r in &config.registries {
            if r.host == "*" {
                wildcard = Some(r.clone());
            } else {
                by_host.insert(r.host.clone(), Arc::new(Upstream::new(r, fills.clone())?));
            }
        }
        Ok(Upstreams {
            by_host,
            default: config.server.default_registry.clone(),
            wildcard,
            dynamic: Mutex::new(HashMap::new()),
            fills,
        })
    }

    /// The registry for a request's `ns` (none: the default registry). Unknown hosts are
    /// refused: berth is a mirror of its configured registries, never an open proxy.
    /// With a wildcard entry, any public host is mirrored from `https://<host>`; loopback,
    /// link-local and private addresses are refused, also after DNS resolution.
    pub fn get(&self, ns: Option<&str>) -> Result<Arc<Upstream>, Error> {
        let host = ns.unwrap_or(&self.default);
        if let Some(u) = self.by_host.get(host) {
            return Ok(u.clone());
        }
        let denied = || Error::Denied(format!("registry {host:?} is not mirrored here"));
        let Some(template) = &self.wildcard else { return Err(denied()) };
        public::check_host(host).map_err(|why| Error::Denied(format!("registry {host:?}: {why}")))?;
        if let Some(u) = self.dynamic.lock().expect("upstreams lock").get(host) {
            return Ok(u.clone());
        }
        let endpoint = if host == "docker.io" {
            "https://registry-1.docker.io".to_owned()
        } else {
            format!("https://{host}")
        };
        let cfg = Registry {
            host: host.to_owned(),
            endpoint: url::Url::parse(&endpoint).map_err(|_| denied())?,
            public_only: true,
            ..template.clone()
        };
        let upstream = Arc::new(Upstream::new(&cfg, self.fills.clone())?);
        let mut dynamic = self.dynamic.lock().expect("upstreams lock");
        if dynamic.len() < MAX_DYNAMIC {
            dynamic.insert(host.to_owned(), upstream.clone());
        }
        Ok(upstream)
    }
}
