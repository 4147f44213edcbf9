//! Manifests in the bucket (`v1/manifests/sha256/<hex>`, the media type as the object's
//! Content-Type): read only whole (at most 4 MiB), matching their digest, with a manifest
//! media type that their own `mediaType` names; anything else is rejected and replaced.

use bytes::Bytes;
use futures::StreamExt;
use object_store::{Attribute, GetResult};

use super::{Bucket, Found, MANIFEST_MAX};
use crate::oci::digest::Digest;

impl Bucket {
    /// A verified manifest and its media type from the bucket, for `origin`; None when it is
    /// not there, not whole, or the bucket is skipped. A wrong one is deleted.
    pub(crate) async fn manifest(&self, digest: &Digest, origin: &str) -> Option<(Bytes, String)> {
        let Found::Object(got) = self.open(&self.manifest_path(digest), origin).await else { return None };
        if got.meta.size > MANIFEST_MAX {
            self.rejected(digest, &self.manifest_path(digest), "larger than a manifest").await;
            return None;
        }
        let Some(media_type) = got
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string())
            .filter(|t| is_manifest_type(t))
        else {
            self.rejected(digest, &self.manifest_path(digest), "no manifest media type").await;
            return None;
        };
        let bytes = match tokio::time::timeout(self.timeout, read_bounded(*got, MANIFEST_MAX)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                self.failed("get", &e);
                return None;
            }
            Err(_) => {
                self.failed("get", "manifest body stalled");
                return None;
            }
        };
        if Digest::of(&bytes) != *digest {
            self.rejected(digest, &self.manifest_path(digest), "does not match its digest").await;
            return None;
        }
        if !names_its_type(&bytes, &media_type) {
            self.rejected(digest, &self.manifest_path(digest), "its bytes name another media type").await;
            return None;
        }
        Some((bytes, media_type))
    }
}

/// A media type as manifests carry it (`application/vnd.oci.image.index.v1+json`): what a
/// bucket object's Content-Type must be to be served as one.
pub(super) fn is_media_type(t: &str) -> bool {
    let (kind, sub) = t.split_once('/').unwrap_or_default();
    let token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b));
    t.len() <= 255 && token(kind) && token(sub)
}

/// A manifest media type berth serves (an image manifest or an index, OCI or Docker).
pub(super) fn is_manifest_type(t: &str) -> bool {
    is_media_type(t) && crate::oci::accept::AcceptClass::all().names(t)
}

/// Whether a manifest's own `mediaType`, when it names one, is `media_type`.
fn names_its_type(bytes: &[u8], media_type: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    match serde_json::from_slice::<Named>(bytes) {
        Ok(Named { media_type: Some(named) }) => named == media_type,
        Ok(Named { media_type: None }) => true,
        Err(_) => false,
    }
}

/// Reads a whole body, refusing one announced or sent past `max` bytes (manifest, tag and
/// lease objects).
pub(super) async fn read_bounded(got: GetResult, max: u64) -> Result<Bytes, String> {
    if got.meta.size > max {
        return Err(format!("object of {} bytes, more than {max}", got.meta.size));
    }
    let mut body = got.into_stream();
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if (out.len() + chunk.len()) as u64 > max {
            return Err(format!("object longer than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
