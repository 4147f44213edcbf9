//! What the integration tests, benches and fuzz targets reach beyond the API, behind the
//! `test-util` feature (the crate's own dev-dependency turns it on for them): the parsers
//! and plan functions they test directly, and a `Probe` into a running server's store.

use std::path::PathBuf;
use std::sync::Arc;

pub use crate::api::route;
pub use crate::api::serve::MAX_HEAD;
pub use crate::error::first_code;
pub use crate::registry::gc::plan;
pub use crate::registry::gc::{Evicted, Report};
pub use crate::source::auth::{parse_challenge, Challenge};
pub use crate::source::peers::ring;
pub use crate::source::public::{check_host, is_public, Guard};
pub use crate::store::fill::Source;
pub use crate::store::memory::MemoryTier;
pub use crate::store::{body, Store};

use crate::oci::digest::Digest;
use crate::registry::Mirror;

/// Looks into a running server's store, collector and peers.
#[derive(Clone)]
pub struct Probe(pub(crate) Arc<Mirror>);

impl Probe {
    /// Fills running now.
    pub fn fills_in_flight(&self) -> usize {
        self.0.store().fills_in_flight()
    }

    /// Whether `digest` is being filled or read now (never evicted).
    pub fn is_busy(&self, digest: &Digest) -> bool {
        self.0.store().busy().contains(digest)
    }

    /// Where the disk tier keeps `digest`.
    pub fn disk_path(&self, digest: &Digest) -> PathBuf {
        self.0.store().disk_path(digest)
    }

    /// Bytes on disk.
    pub fn disk_used(&self) -> u64 {
        self.0.store().usage().disk.used
    }

    /// Whether the memory tier holds `digest`.
    pub fn in_memory(&self, digest: &Digest) -> bool {
        self.0.store().held(digest).memory
    }

    /// The recorded pins: image → digest.
    pub async fn pins(&self) -> Vec<(String, String)> {
        let pins = self.0.pins().recorded().await.expect("reading pins");
        pins.into_iter().map(|(image, pin)| (image, pin.digest)).collect()
    }

    /// Whether `registry` has served or confirmed `digest`.
    pub fn served(&self, registry: &str, digest: &Digest) -> bool {
        self.0.store().meta().served(registry, digest).expect("reading provenance")
    }

    /// A GC pass down to `target` bytes.
    pub async fn collect(&self, target: u64) -> Report {
        self.0.collector().collect(target).await.expect("a GC pass")
    }

    /// The peer ring's status (`GET /api/v1/peers`); panics without `[peers]`.
    pub fn peer_status(&self) -> serde_json::Value {
        self.0.peers().expect("[peers] configured").status()
    }

    /// The peer ring's members now; panics without `[peers]`.
    pub fn peer_members(&self) -> Vec<String> {
        self.0.peers().expect("[peers] configured").members()
    }
}

impl crate::Server {
    /// A probe into this server's store, collector and peers.
    pub fn probe(&self) -> Probe {
        Probe(self.mirror.clone())
    }
}
