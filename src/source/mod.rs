//! Where content comes from on a miss: the configured upstream registries.

pub mod auth;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::error::Error;
pub use upstream::Upstream;

/// The configured registries by the name clients use (`?ns=`).
pub struct Upstreams {
    by_host: HashMap<String, Arc<Upstream>>,
    default: String,
}

impl Upstreams {
    pub fn new(config: &Config) -> Result<Upstreams, Error> {
        let mut by_host = HashMap::new();
        for r in &config.registries {
            by_host.insert(r.host.clone(), Arc::new(Upstream::new(r)?));
        }
        Ok(Upstreams { by_host, default: config.server.default_registry.clone() })
    }

    /// The registry for a request's `ns` (none: the default registry). Unknown hosts are
    /// refused: berth is a mirror of its configured registries, never an open proxy.
    pub fn get(&self, ns: Option<&str>) -> Result<&Arc<Upstream>, Error> {
        let host = ns.unwrap_or(&self.default);
        self.by_host.get(host).ok_or_else(|| Error::Denied(format!("registry {host:?} is not mirrored here")))
    }
}
