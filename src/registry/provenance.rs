//! Which registry has which content. Content is stored once per digest, but served under a
//! registry only once that registry has served it (a fill or manifest fetched from it) or
//! confirmed it (one upstream HEAD, then recorded). A blob cached from registry A is not
//! evidence that registry B has it: B's clients get 404 until B says so, and with B's
//! upstream down and nothing recorded, 404 too. Repositories of one registry share content.

use std::sync::Arc;

use crate::oci::digest::Digest;
use crate::store::meta::{served_key, Meta};

/// Records kept in memory in front of the metadata store.
const REMEMBERED: u64 = 262_144;

pub(crate) struct Provenance {
    meta: Arc<Meta>,
    known: moka::sync::Cache<String, ()>,
}

impl Provenance {
    pub(crate) fn new(meta: Arc<Meta>) -> Provenance {
        Provenance { meta, known: moka::sync::Cache::new(REMEMBERED) }
    }

    /// Whether `registry` served or confirmed `digest`.
    pub(crate) async fn knows(&self, registry: &str, digest: &Digest) -> bool {
        let key = served_key(registry, digest);
        if self.known.contains_key(&key) {
            return true;
        }
        let (meta, registry, d) = (self.meta.clone(), registry.to_owned(), digest.clone());
        let found = tokio::task::spawn_blocking(move || meta.served(&registry, &d)).await;
        let found = matches!(found, Ok(Ok(true)));
        if found {
            self.known.insert(key, ());
        }
        found
    }

    /// Notes that `registry` served or confirmed `digest` (kept across restarts).
    pub(crate) async fn record(&self, registry: &str, digest: &Digest) {
        let key = served_key(registry, digest);
        if self.known.contains_key(&key) {
            return;
        }
        self.known.insert(key, ());
        let (meta, registry, d) = (self.meta.clone(), registry.to_owned(), digest.clone());
        match tokio::task::spawn_blocking(move || meta.record_served(&registry, &d)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not record which registry has a digest"),
            Err(e) => tracing::warn!(error = %e, "recording which registry has a digest panicked"),
        }
    }
}
