//! Tags fleet-wide, for outages only: the last tag → digest mapping a berth learnt from
//! upstream, at `v1/tags/<registry>/<repository>/<tag>` (last writer wins). A berth asks for
//! it only when upstream cannot answer and it has no mapping of its own; upstream stays
//! authoritative whenever it answers.

use object_store::path::Path;
use object_store::{Attribute, Attributes, GetOptions, PutOptions, PutPayload};

use super::manifests::read_bounded;
use super::{count, is_manifest_type, Bucket, MANIFEST_MAX};
use crate::oci::digest::Digest;
use crate::store::meta::TagEntry;

/// A tag object larger than this is not read.
const TAG_MAX: u64 = 16 * 1024;

impl Bucket {
    /// Where the mapping of `registry/repo:tag` lives. The parts are validated names (a host,
    /// a repository, a tag); `object_store` encodes anything a path segment cannot hold.
    fn tag_path(&self, registry: &str, repo: &str, tag: &str) -> Path {
        let mut path = self.tags.clone().join(registry);
        for part in repo.split('/') {
            path = path.join(part);
        }
        path.join(tag)
    }

    /// Writes the mapping upstream just gave (in the background; a failure is only counted).
    pub(crate) fn put_tag(
        self: &std::sync::Arc<Self>,
        registry: &str,
        repo: &str,
        tag: &str,
        entry: &TagEntry,
    ) {
        if !self.uploads || !self.up() {
            return;
        }
        let Ok(json) = serde_json::to_vec(entry) else { return };
        let (bucket, path) = (self.clone(), self.tag_path(registry, repo, tag));
        tokio::spawn(async move {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, "application/json".into());
            let opts = PutOptions { attributes, ..PutOptions::default() };
            let put = bucket.store.put_opts(&path, PutPayload::from(json), opts);
            match tokio::time::timeout(bucket.timeout, put).await {
                Ok(Ok(_)) => count("tag-put", "stored"),
                _ => count("tag-put", "error"),
            }
        });
    }

    /// The fleet's last mapping of `registry/repo:tag`, when it is well-formed: a digest, a
    /// manifest media type and a manifest's size. Anything else is no mapping.
    pub(crate) async fn tag(&self, registry: &str, repo: &str, tag: &str) -> Option<TagEntry> {
        if !self.up() {
            return None;
        }
        let path = self.tag_path(registry, repo, tag);
        let read = async {
            let got = self.store.get_opts(&path, GetOptions::default()).await.ok()?;
            read_bounded(got, TAG_MAX).await.ok()
        };
        let bytes = tokio::time::timeout(self.timeout, read).await.ok().flatten();
        let entry = bytes.and_then(|b| serde_json::from_slice::<TagEntry>(&b).ok()).filter(well_formed);
        count("tag-get", if entry.is_some() { "hit" } else { "miss" });
        entry
    }
}

fn well_formed(e: &TagEntry) -> bool {
    Digest::parse(&e.digest).is_ok() && is_manifest_type(&e.media_type) && e.size <= MANIFEST_MAX
}

impl crate::store::Store {
    /// Shares a mapping upstream just gave with the fleet, when a bucket is configured.
    pub(crate) fn share_tag(&self, registry: &str, repo: &str, tag: &str, entry: &TagEntry) {
        if let Some(bucket) = &self.bucket {
            bucket.put_tag(registry, repo, tag, entry);
        }
    }

    /// The fleet's last mapping of a tag, for when upstream cannot answer and this berth has
    /// none of its own.
    pub(crate) async fn fleet_tag(&self, registry: &str, repo: &str, tag: &str) -> Option<TagEntry> {
        self.bucket.as_ref()?.tag(registry, repo, tag).await
    }
}
