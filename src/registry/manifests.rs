//! Manifests: by digest from the tiers (immutable), by tag through the tag cache, which
//! trusts a mapping for `tags.ttl` and then revalidates it with an upstream HEAD.

use std::sync::Arc;

use bytes::Bytes;

use super::{tags, Mirror, Via, Want};
use crate::error::Error;
use crate::oci::accept::AcceptClass;
use crate::oci::digest::Digest;
use crate::oci::reference::Reference;
use crate::source::Upstream;
use crate::store::meta::{now_secs, TagEntry};
use crate::store::ServedBy;

/// How a manifest digest came to be asked for under a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// The registry's own tag mapping named it: the registry has it.
    ByTag,
    /// A client named it: served only once the registry has served or confirmed it.
    ByDigest,
}

/// A manifest answer: headers, and the bytes for a GET.
pub(crate) struct ManifestAnswer {
    pub(crate) digest: Digest,
    pub(crate) media_type: String,
    pub(crate) len: u64,
    pub(crate) bytes: Option<Bytes>,
    pub(crate) served_by: ServedBy,
}

impl Mirror {
    pub(crate) async fn manifest(
        &self,
        ns: Option<&str>,
        repo: &str,
        reference: &Reference,
        accept: &AcceptClass,
        want: Want,
        via: Via,
    ) -> Result<ManifestAnswer, Error> {
        let upstream = &self.upstreams.get(ns)?;
        match reference {
            Reference::Digest(d) => self.manifest_by_digest(upstream, repo, d, Asked::ByDigest, via).await,
            Reference::Tag(tag) => {
                let (entry, served_by) = self.resolve_tag(upstream, repo, tag, accept).await?;
                let digest = Digest::parse(&entry.digest)?;
                // The registry named this digest for its tag (a mapping of its own tag cache,
                // recorded when it was learnt): it has it.
                if served_by != ServedBy::Memory {
                    self.provenance.record(&upstream.host, &digest).await;
                }
                if want == Want::Head {
                    return Ok(ManifestAnswer {
                        digest,
                        media_type: entry.media_type,
                        len: entry.size,
                        bytes: None,
                        served_by,
                    });
                }
                let mut answer = self.manifest_by_digest(upstream, repo, &digest, Asked::ByTag, via).await?;
                if served_by != ServedBy::Memory {
                    answer.served_by = served_by;
                }
                Ok(answer)
            }
        }
    }

    /// A manifest by digest: memory, disk, or one upstream fetch shared by concurrent callers.
    async fn manifest_by_digest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &str,
        digest: &Digest,
        asked: Asked,
        via: Via,
    ) -> Result<ManifestAnswer, Error> {
        // Confirmed before the tiers are read: a refused request does not count as a read.
        if asked == Asked::ByDigest
            && !self.provenance.knows(&upstream.host, digest).await
            && self.store.holds(digest).await
        {
            self.confirm_manifest(upstream, repo, digest).await?;
        }
        if let Some(answer) = self.stored_manifest(digest).await? {
            if asked == Asked::ByDigest {
                self.confirm_manifest(upstream, repo, digest).await?;
            }
            return Ok(answer);
        }
        let fetch = {
            let (upstream, repo, digest) = (upstream.clone(), repo.to_owned(), digest.clone());
            let store = self.store.clone();
            let media_types = self.media_types.clone();
            let owner = self.owner_of(&digest, via);
            let provenance = self.provenance.clone();
            async move {
                // The bucket before the owner and upstream: verified there, kept here.
                if let Some(media_type) = store.manifest_from_bucket(&digest, &upstream.host).await {
                    provenance.record(&upstream.host, &digest).await;
                    media_types.insert(digest, media_type.into());
                    return Ok(());
                }
                let m = match owner {
                    Some((peers, owner)) => peers.manifest(&owner, &upstream, &repo, &digest).await?,
                    None => upstream.manifest(&repo, digest.as_str(), &AcceptClass::all().header()).await?,
                };
                if m.digest != digest {
                    return Err(Error::Integrity(format!("manifest {digest} hashes to {}", m.digest)));
                }
                store.put_verified(&digest, m.bytes, Some(&m.media_type), &upstream.host).await?;
                provenance.record(&upstream.host, &digest).await;
                media_types.insert(digest, m.media_type.into());
                Ok(())
            }
        };
        let key = (upstream.host.clone(), digest.clone());
        let (result, led) = self.manifest_fetches.run(key, || fetch).await;
        result?;
        let mut answer = self
            .stored_manifest(digest)
            .await?
            .ok_or_else(|| Error::Internal(format!("manifest {digest} vanished after its fetch")))?;
        answer.served_by = if led { ServedBy::FillLeader } else { ServedBy::FillFollower };
        Ok(answer)
    }

    /// Succeeds when this registry has served or confirmed manifest `digest`; otherwise asks
    /// its upstream (one HEAD) and records the answer. Not confirmed: 404.
    async fn confirm_manifest(&self, upstream: &Upstream, repo: &str, digest: &Digest) -> Result<(), Error> {
        if self.provenance.knows(&upstream.host, digest).await {
            return Ok(());
        }
        match upstream.head_manifest(repo, digest.as_str(), &AcceptClass::all().header()).await {
            Ok(_) => {
                self.provenance.record(&upstream.host, digest).await;
                Ok(())
            }
            Err(e) => {
                tracing::info!(registry = %upstream.host, %digest, error = %e,
                    "a cached manifest not confirmed by this registry: not served under it");
                Err(Error::ManifestUnknown)
            }
        }
    }

    /// A manifest from the tiers, when both its bytes and its media type are known.
    pub(super) async fn stored_manifest(&self, digest: &Digest) -> Result<Option<ManifestAnswer>, Error> {
        let media_type = match self.media_types.get(digest) {
            Some(t) => t,
            None => {
                let (meta, d) = (self.store.meta().clone(), digest.clone());
                let found =
                    tokio::task::spawn_blocking(move || meta.blob(&d)).await.map_err(Error::internal)??;
                match found.and_then(|m| m.media_type) {
                    Some(t) => {
                        let t: Arc<str> = t.into();
                        self.media_types.insert(digest.clone(), t.clone());
                        t
                    }
                    None => return Ok(None), // never fetched as a manifest
                }
            }
        };
        let Some(hit) = self.store.get(digest).await else {
            return Ok(None);
        };
        let bytes = hit.bytes;
        Ok(Some(ManifestAnswer {
            digest: digest.clone(),
            media_type: media_type.to_string(),
            len: bytes.len() as u64,
            bytes: Some(bytes),
            served_by: hit.served_by,
        }))
    }

    /// What `tag` points to for this accept class: from the cache while fresh; otherwise
    /// revalidated with upstream (HEAD), falling back to the stale mapping when upstream is
    /// unreachable or rate-limits.
    async fn resolve_tag(
        &self,
        upstream: &Arc<Upstream>,
        repo: &str,
        tag: &str,
        accept: &AcceptClass,
    ) -> Result<(TagEntry, ServedBy), Error> {
        let base = tags::base(&upstream.host, repo, tag);
        let cached = match self.tags.get(&base, &accept.header()) {
            Some(exact) => Some(exact),
            None => self.tags.compatible(&base, |media_type| accept.names(media_type)),
        };
        if let Some(entry) = cached.as_ref().filter(|e| self.tags.is_fresh(e)) {
            return Ok((entry.clone(), ServedBy::Memory));
        }
        let accept = accept.header();
        let key = format!("{base}#{accept}");
        let work = {
            let (upstream, repo, tag) = (upstream.clone(), repo.to_owned(), tag.to_owned());
            let this = self.refs();
            async move { this.revalidate(&upstream, &repo, &tag, &accept, &base, cached).await }
        };
        let (result, led) = self.tag_lookups.run(key, || work).await;
        Ok((result?, if led { ServedBy::FillLeader } else { ServedBy::FillFollower }))
    }

    fn refs(&self) -> TagWork {
        TagWork {
            store: self.store.clone(),
            media_types: self.media_types.clone(),
            tags: self.tags.clone(),
            peered: self.peers.is_some(),
        }
    }
}

/// The parts of the mirror a detached tag lookup needs.
struct TagWork {
    store: Arc<crate::store::Store>,
    media_types: moka::sync::Cache<Digest, Arc<str>>,
    tags: Arc<tags::TagCache>,
    /// Peers are configured: resolve with HEAD, fetch by digest through the owner.
    peered: bool,
}

/// The index media types (OCI and Docker): a mapping learnt with an Accept naming one is
/// shared with the fleet.
const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// A tag entry from a HEAD that named the digest, media type and length.
fn entry_of(head: crate::source::upstream::ManifestHead) -> Option<TagEntry> {
    Some(TagEntry {
        digest: head.digest?.to_string(),
        media_type: head.media_type.filter(|t| !t.is_empty())?,
        size: head.len?,
        checked_at: now_secs(),
    })
}

impl TagWork {
    async fn revalidate(
        &self,
        upstream: &Upstream,
        repo: &str,
        tag: &str,
        accept: &str,
        base: &str,
        cached: Option<TagEntry>,
    ) -> Result<TagEntry, Error> {
        if let Some(old) = &cached {
            match upstream.head_manifest(repo, tag, accept).await {
                Ok(head) if head.digest.as_ref().is_some_and(|d| d.as_str() == old.digest) => {
                    metrics::counter!("berth_tag_revalidations_total", "result" => "unchanged").increment(1);
                    let entry = TagEntry { checked_at: now_secs(), ..old.clone() };
                    self.tags.put(base, accept, entry.clone()).await?;
                    return Ok(entry);
                }
                Ok(head) => {
                    // Moved, or no digest header: fetched below.
                    metrics::counter!("berth_tag_revalidations_total", "result" => "moved").increment(1);
                    if let Some(entry) = self.peered.then(|| entry_of(head)).flatten() {
                        self.tags.put(base, accept, entry.clone()).await?;
                        self.share(upstream, repo, tag, accept, &entry);
                        return Ok(entry);
                    }
                }
                Err(Error::ManifestUnknown) => {
                    metrics::counter!("berth_tag_revalidations_total", "result" => "gone").increment(1);
                    self.tags.remove(base, accept).await?;
                    return Err(Error::ManifestUnknown);
                }
                Err(e) => {
                    tracing::warn!(registry = %upstream.host, repo, tag, error = %e,
                        "upstream unreachable; serving the stale tag mapping");
                    metrics::counter!("berth_stale_serves_total").increment(1);
                    return Ok(old.clone());
                }
            }
        }
        // With peers, a tag is resolved with a HEAD (Docker Hub does not count it as a pull),
        // and the manifest is then fetched by digest, through its owner: once per cluster.
        if cached.is_none() && self.peered {
            match upstream.head_manifest(repo, tag, accept).await {
                Ok(head) => {
                    if let Some(entry) = entry_of(head) {
                        self.tags.put(base, accept, entry.clone()).await?;
                        self.share(upstream, repo, tag, accept, &entry);
                        return Ok(entry);
                    }
                }
                Err(Error::ManifestUnknown) => return Err(Error::ManifestUnknown),
                Err(_) => {} // asked again below, with a GET
            }
        }
        let m = match upstream.manifest(repo, tag, accept).await {
            Ok(m) => m,
            Err(e) if e != Error::ManifestUnknown && cached.is_some() => {
                tracing::warn!(registry = %upstream.host, repo, tag, error = %e,
                    "upstream failed; serving the stale tag mapping");
                metrics::counter!("berth_stale_serves_total").increment(1);
                return Ok(cached.expect("checked"));
            }
            // Only when upstream could not be reached or failed: a refusal (401/403, 429) or
            // a client error is upstream's answer, not an outage.
            Err(e @ Error::Unavailable(_)) => {
                return self.fleet_mapping(upstream, repo, tag, accept, base, e).await
            }
            Err(e) => return Err(e),
        };
        self.store.put_verified(&m.digest, m.bytes.clone(), Some(&m.media_type), &upstream.host).await?;
        self.media_types.insert(m.digest.clone(), m.media_type.as_str().into());
        let entry = TagEntry {
            digest: m.digest.to_string(),
            media_type: m.media_type,
            size: m.bytes.len() as u64,
            checked_at: now_secs(),
        };
        self.tags.put(base, accept, entry.clone()).await?;
        self.share(upstream, repo, tag, accept, &entry);
        Ok(entry)
    }

    /// Shares a mapping upstream gave with the fleet, when it was asked with an Accept that
    /// names index types: that is what upstream gives any client able to pick its platform,
    /// not a platform's manifest chosen for a client that takes no index.
    fn share(&self, upstream: &Upstream, repo: &str, tag: &str, accept: &str, entry: &TagEntry) {
        let class = AcceptClass::from_header(accept);
        if INDEX_TYPES.iter().any(|t| class.names(t)) {
            self.store.share_tag(&upstream.host, repo, tag, entry);
        }
    }

    /// Upstream failed with `error` and this berth has no mapping of its own: the fleet's last
    /// one from the bucket, when the client accepts its media type (kept as stale, so the next
    /// lookup asks upstream again); else `error`.
    async fn fleet_mapping(
        &self,
        upstream: &Upstream,
        repo: &str,
        tag: &str,
        accept: &str,
        base: &str,
        error: Error,
    ) -> Result<TagEntry, Error> {
        let accepts = |t: &str| AcceptClass::from_header(accept).names(t);
        let Some(entry) =
            self.store.fleet_tag(&upstream.host, repo, tag).await.filter(|e| accepts(&e.media_type))
        else {
            return Err(error);
        };
        tracing::warn!(registry = %upstream.host, repo, tag, error = %error,
            "upstream failed; serving the fleet's last tag mapping from the bucket");
        metrics::counter!("berth_stale_serves_total").increment(1);
        // Never fresh: the next lookup asks upstream again.
        let entry = TagEntry { checked_at: 0, ..entry };
        self.tags.put(base, accept, entry.clone()).await?;
        Ok(entry)
    }
}
