//! Walks an image from its reference to its blobs: index → platform manifests → config and
//! layers, through the mirror's manifest path (tag cache and all).

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::job::{ImageJob, Item};
use super::status::{ItemKind, ItemState};
use crate::error::Error;
use crate::oci::accept::AcceptClass;
use crate::oci::digest::Digest;
use crate::oci::image_ref::ImageRef;
use crate::oci::platform::Platform;
use crate::oci::reference::Reference;
use crate::oci::Invalid;
use crate::registry::{Mirror, Via, Want};

/// Why an image could not be walked to its blobs (the image's `error`).
#[derive(Debug, thiserror::Error)]
pub(super) enum PlanError {
    #[error("resolving {image}: {source}")]
    Resolve {
        image: String,
        #[source]
        source: Error,
    },
    #[error("{image}: unreadable index: {source}")]
    Index {
        image: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("{image}: platform {want} is not in the index (it has: {has})")]
    NoPlatform { image: String, want: String, has: String },
    #[error("{image}: manifest for {platform}: {source}")]
    Manifest {
        image: String,
        platform: String,
        #[source]
        source: Error,
    },
    #[error("unreadable image manifest: {0}")]
    ImageManifest(#[source] oci_spec::OciSpecError),
    /// A platform asked for, or a digest named by an index or manifest, that does not parse.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

/// Resolves `r` and records every item of the chosen platforms in `image`; manifests are
/// fetched (and so cached) here, blobs are left pending for the caller.
pub(super) async fn resolve(
    mirror: &Mirror,
    r: &ImageRef,
    platforms: &[String],
    image: &ImageJob,
    referrers: bool,
) -> Result<(), PlanError> {
    let subjects = resolve_image(mirror, r, platforms, image).await?;
    if referrers {
        add_referrers(mirror, r, image, &subjects).await?;
    }
    Ok(())
}

/// The image's own items; the manifests (and index) it resolved to.
async fn resolve_image(
    mirror: &Mirror,
    r: &ImageRef,
    platforms: &[String],
    image: &ImageJob,
) -> Result<Vec<Digest>, PlanError> {
    let top = mirror
        .manifest(Some(&r.host), &r.repo, &r.reference(), &AcceptClass::pull(), Want::Content, Via::Client)
        .await
        .map_err(|source| PlanError::Resolve { image: r.to_string(), source })?;
    *image.resolved.lock().expect("image lock") = Some((top.digest.clone(), top.media_type.clone()));
    let bytes = top.bytes.unwrap_or_default();
    let kind = if is_index(&top.media_type) { ItemKind::Index } else { ItemKind::Manifest };
    cached(image, top.digest.clone(), bytes.len() as u64, kind, None);

    if kind == ItemKind::Manifest {
        add_blobs(image, &bytes, None)?;
        return Ok(vec![top.digest]);
    }
    let mut subjects = vec![top.digest.clone()];
    let index = ImageIndex::from_reader(&bytes[..])
        .map_err(|source| PlanError::Index { image: r.to_string(), source })?;
    let entries: Vec<(Platform, &Descriptor)> = index
        .manifests()
        .iter()
        .filter_map(|d| Platform::of(d).map(|p| (p, d)))
        .filter(|(p, _)| !p.is_unknown()) // attestations
        .collect();
    let mut chosen = Vec::new();
    for wanted in platforms {
        let want = Platform::parse(wanted)?;
        let Some((p, d)) = entries.iter().find(|(p, _)| want.serves(p)) else {
            let has: Vec<String> = entries.iter().map(|(p, _)| p.to_string()).collect();
            return Err(PlanError::NoPlatform {
                image: r.to_string(),
                want: want.to_string(),
                has: has.join(", "),
            });
        };
        chosen.push((p.to_string(), d.digest().to_string()));
    }
    *image.platforms.lock().expect("image lock") = chosen.iter().map(|(p, _)| p.clone()).collect();
    for (platform, digest) in chosen {
        let digest = Digest::parse(&digest)?;
        let m = mirror
            .manifest(
                Some(&r.host),
                &r.repo,
                &Reference::Digest(digest.clone()),
                &AcceptClass::all(),
                Want::Content,
                Via::Client,
            )
            .await
            .map_err(|source| PlanError::Manifest {
                image: r.to_string(),
                platform: platform.clone(),
                source,
            })?;
        let bytes = m.bytes.unwrap_or_default();
        subjects.push(digest.clone());
        cached(image, digest, bytes.len() as u64, ItemKind::Manifest, Some(platform.clone()));
        add_blobs(image, &bytes, Some(platform))?;
    }
    Ok(subjects)
}

/// Referrers warmed per subject, at most: an answer may list any number of them.
const MAX_REFERRERS_PER_SUBJECT: usize = 64;

/// The signatures and attestations of `subjects`, fetched (and so cached) here with their
/// blobs left pending: the manifests each referrers answer lists (the first 64; an answer
/// upstream cannot give fails the image, a 404 counts as none), and the tag schema's
/// `sha256-<hex>.sig`, `.att` and `.sbom` where they exist. A referrer that is an index is
/// cached alone.
async fn add_referrers(
    mirror: &Mirror,
    r: &ImageRef,
    image: &ImageJob,
    subjects: &[Digest],
) -> Result<(), PlanError> {
    for subject in subjects {
        let path = format!("/v2/{}/referrers/{subject}", r.repo);
        let mut listed = match mirror.referrers(Some(&r.host), &r.repo, subject, &path, Some(""), None).await
        {
            Ok(answer) => listed_in(&answer.body),
            // Upstream could not say: what it lists is not warmed, and the image says so.
            Err(e @ (Error::Unavailable(_) | Error::TooManyRequests { .. })) => {
                image.fail(format!("referrers of {subject}: {e}"));
                Vec::new()
            }
            Err(e) => {
                tracing::info!(image = %r, %subject, error = %e, "no referrers answer; trying the tag schema");
                Vec::new()
            }
        };
        if listed.len() > MAX_REFERRERS_PER_SUBJECT {
            tracing::warn!(image = %r, %subject, listed = listed.len(), "warming only the first referrers");
            listed.truncate(MAX_REFERRERS_PER_SUBJECT);
        }
        let tags = ["sig", "att", "sbom"].map(|s| Reference::parse(&format!("sha256-{}.{s}", subject.hex())));
        let references = listed.into_iter().map(Reference::Digest).chain(tags.into_iter().flatten());
        for reference in references {
            let m = match mirror
                .manifest(Some(&r.host), &r.repo, &reference, &AcceptClass::all(), Want::Content, Via::Client)
                .await
            {
                Ok(m) => m,
                Err(Error::ManifestUnknown) => continue,
                // One referrer that cannot be had does not stop the image or the others.
                Err(e) => {
                    image.fail(format!("referrer {}: {e}", reference_name(&reference)));
                    continue;
                }
            };
            let bytes = m.bytes.unwrap_or_default();
            let kind = if is_index(&m.media_type) { ItemKind::Index } else { ItemKind::Manifest };
            cached(image, m.digest, bytes.len() as u64, kind, None);
            if kind == ItemKind::Manifest {
                if let Err(e) = add_blobs(image, &bytes, None) {
                    image.fail(format!("referrer {}: {e}", reference_name(&reference)));
                }
            }
        }
    }
    Ok(())
}

fn reference_name(reference: &Reference) -> String {
    match reference {
        Reference::Digest(d) => d.to_string(),
        Reference::Tag(t) => format!("tag {t}"),
    }
}

/// The digests an image index lists (none when it is not one).
fn listed_in(index: &[u8]) -> Vec<Digest> {
    ImageIndex::from_reader(index)
        .map(|i| i.manifests().iter().filter_map(|d| Digest::parse(d.digest().as_ref()).ok()).collect())
        .unwrap_or_default()
}

fn cached(image: &ImageJob, digest: Digest, size: u64, kind: ItemKind, platform: Option<String>) {
    let item = Item::new(digest, size, kind, platform);
    item.done.store(size, std::sync::atomic::Ordering::Relaxed);
    item.set(ItemState::Cached, None);
    image.push(item);
}

/// Records a manifest's config and layers as pending items.
fn add_blobs(image: &ImageJob, manifest: &[u8], platform: Option<String>) -> Result<(), PlanError> {
    let m = ImageManifest::from_reader(manifest).map_err(PlanError::ImageManifest)?;
    let config = m.config();
    let blobs =
        std::iter::once((config, ItemKind::Config)).chain(m.layers().iter().map(|l| (l, ItemKind::Layer)));
    for (d, kind) in blobs {
        let digest = Digest::parse(d.digest().as_ref())?;
        image.push(Item::new(digest, d.size(), kind, platform.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_matching() {
        let arm64v8 = Platform::parse("linux/arm64/v8").unwrap();
        assert!(Platform::parse("linux/arm64").unwrap().serves(&arm64v8));
        assert!(arm64v8.serves(&arm64v8));
        assert!(!Platform::parse("linux/arm64/v7").unwrap().serves(&arm64v8));
        assert!(!Platform::parse("linux/amd64").unwrap().serves(&arm64v8));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//v7").is_err());
    }
}
