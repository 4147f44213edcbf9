//! Registry semantics: what a manifest or blob request means, answered from the store tiers
//! or, on a miss, from the request's upstream registry through one coalesced fill.

pub(crate) mod blobs;
pub(crate) mod gc;
pub(crate) mod manifests;
pub(crate) mod pins;
pub(crate) mod provenance;
pub(crate) mod referrers;
pub(crate) mod singleflight;
pub(crate) mod tags;

use std::sync::Arc;

use crate::config::Config;
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::source::peers::Peers;
use crate::source::Upstreams;
use crate::store::meta::TagEntry;
use crate::store::Store;
use pins::Pins;
use singleflight::SingleFlight;
use tags::TagCache;

/// What a request wants of a manifest or a blob: its headers only (HEAD), or its content too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Head,
    Content,
}

/// Who asks: a client, or a peer mirror passing on its own client's request (the hop
/// marker), which is answered here and never forwarded again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Client,
    Peer,
}

/// The mirror: the store, the upstreams, and the tag cache between them.
pub(crate) struct Mirror {
    store: Arc<Store>,
    upstreams: Upstreams,
    /// The peer mirrors, when `[peers]` is configured.
    peers: Option<Arc<Peers>>,
    tags: Arc<TagCache>,
    gc: Arc<gc::Collector>,
    pins: Arc<Pins>,
    /// Manifest fetches by (registry, digest): one registry's answer never stands in for
    /// another's.
    manifest_fetches: SingleFlight<(String, Digest), ()>,
    /// Which registry has served or confirmed which digest.
    provenance: Arc<provenance::Provenance>,
    tag_lookups: SingleFlight<String, TagEntry>,
    /// Media types of stored manifests, so that a memory hit needs no metadata read.
    media_types: moka::sync::Cache<Digest, Arc<str>>,
    /// Turns for ranges fetched from upstream ahead of their fill (`blobs::AHEAD_AT_ONCE`).
    ahead: Arc<tokio::sync::Semaphore>,
}

impl Mirror {
    pub(crate) fn new(config: &Config, store: Arc<Store>) -> Result<Mirror, Error> {
        let pins = Arc::new(Pins::new(store.meta().clone(), config.pins.clone()));
        let tags =
            Arc::new(TagCache::load(store.meta().clone(), config.tags.ttl, tags::MAX_BASES, pins.clone())?);
        let bucket_capacity = config.bucket.as_ref().and_then(|b| b.capacity);
        let gc = Arc::new(gc::Collector::new(
            store.clone(),
            tags.clone(),
            pins.clone(),
            config.gc.clone(),
            bucket_capacity,
        ));
        let collector = Arc::downgrade(&gc);
        store.on_full(Arc::new(move |more| {
            let collector = collector.clone();
            Box::pin(async move {
                if let Some(gc) = collector.upgrade() {
                    gc.free_for(more).await;
                }
            })
        }));
        Ok(Mirror {
            upstreams: Upstreams::new(config)?,
            peers: config.peers.as_ref().map(Peers::new).transpose()?,
            tags,
            gc,
            pins,
            manifest_fetches: SingleFlight::default(),
            provenance: Arc::new(provenance::Provenance::new(store.meta().clone())),
            store,
            tag_lookups: SingleFlight::default(),
            media_types: moka::sync::Cache::new(65_536),
            ahead: Arc::new(tokio::sync::Semaphore::new(blobs::AHEAD_AT_ONCE)),
        })
    }

    /// The store's tiers, in-flight fills and contents.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The peer mirrors, when `[peers]` is configured.
    pub(crate) fn peers(&self) -> Option<&Arc<Peers>> {
        self.peers.as_ref()
    }

    /// The upstream registry for a request's `ns` (see `Upstreams::get`).
    pub(crate) fn upstream(&self, ns: Option<&str>) -> Result<Arc<crate::source::upstream::Upstream>, Error> {
        self.upstreams.get(ns)
    }

    /// The configured registry a repository name starts with (`ghcr.io/org/app`), for
    /// clients that send no `ns`; the wildcard's hosts never match.
    pub(crate) fn registry_prefix<'a>(&self, name: &'a str) -> Option<&'a str> {
        let (first, _) = name.split_once('/')?;
        self.upstreams.is_configured(first).then_some(first)
    }

    /// The collector: GC passes and the cache's contents in registry terms.
    pub(crate) fn collector(&self) -> &Arc<gc::Collector> {
        &self.gc
    }

    /// The pins, shared by the admin API, preheat and GC.
    pub(crate) fn pins(&self) -> &Pins {
        &self.pins
    }

    /// The peer to ask for `digest` on a miss: none for a request that came from a peer
    /// (never forwarded twice), or when this instance owns it.
    fn owner_of(&self, digest: &Digest, via: Via) -> Option<(Arc<Peers>, String)> {
        let peers = self.peers.as_ref().filter(|_| via == Via::Client)?;
        Some((peers.clone(), peers.owner(digest)?))
    }
}
