//! Referrers answers (`GET /v2/<name>/referrers/<digest>`, with or without `artifactType`),
//! kept per (registry, repository, subject, query) so that a policy that requires signatures
//! verifies with upstream down: fresh for `tags.ttl`, asked again after it, and the last
//! answer served when upstream cannot be reached (5xx, unreachable, 429). The answer's body,
//! an image index of the referrers, is kept in the tiers like any manifest, and GC counts it,
//! with the manifests it lists, as part of its subject's version. A client error (404 from a
//! registry without the API, which sends clients to the tag schema) is passed on, and an
//! answer that is not an image index is passed on without being kept.

use bytes::Bytes;
use http::HeaderValue;

use super::Mirror;
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::source::upstream::{FetchedReferrers, Upstream};
use crate::store::meta::{now_secs, ReferrersEntry};
use crate::store::ServedBy;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A referrers answer as berth sends it.
#[derive(Clone)]
pub(crate) struct ReferrersAnswer {
    pub(crate) body: Bytes,
    pub(crate) media_type: String,
    pub(crate) filters_applied: Option<String>,
    /// Upstream's next-page `Link` and the URL of its page.
    pub(crate) link: Option<(String, url::Url)>,
    pub(crate) served_by: ServedBy,
}

/// The key of one answer: the query (`artifactType`, `n`, `last`) is part of it.
fn key(registry: &str, repo: &str, subject: &Digest, query: &str) -> String {
    format!("{registry}/{repo}@{subject}?{query}")
}

impl Mirror {
    /// The referrers of `subject` in `repo` of the registry for `ns`, asked of upstream at
    /// `path_and_query` (`query` alone is the key's part).
    pub(crate) async fn referrers(
        &self,
        ns: Option<&str>,
        repo: &str,
        subject: &Digest,
        path_and_query: &str,
        query: Option<&str>,
        accept: Option<&HeaderValue>,
    ) -> Result<ReferrersAnswer, Error> {
        let upstream = self.upstreams.get(ns)?;
        let Some(query) = query else {
            // Not a query berth keeps answers for: upstream's answer, as it is.
            let fetched = upstream.referrers(path_and_query, repo, accept).await?;
            return Ok(answer_of(fetched));
        };
        let key = key(&upstream.host, repo, subject, query);
        let kept = self.kept_referrers(&key).await?;
        if let Some((entry, answer)) = &kept {
            if self.tags.is_fresh_at(entry.checked_at) {
                return Ok(answer.clone());
            }
        }
        match upstream.referrers(path_and_query, repo, accept).await {
            Ok(fetched) => self.keep_referrers(&upstream, &key, subject, fetched).await,
            Err(e @ (Error::Unavailable(_) | Error::TooManyRequests { .. })) => match kept {
                Some((_, answer)) => {
                    tracing::warn!(registry = %upstream.host, repo, %subject, error = %e,
                        "upstream cannot answer; serving the last referrers answer");
                    metrics::counter!("berth_stale_serves_total").increment(1);
                    Ok(answer)
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The answer kept under `key`, when its index is still in the tiers.
    async fn kept_referrers(&self, key: &str) -> Result<Option<(ReferrersEntry, ReferrersAnswer)>, Error> {
        let (meta, k) = (self.store.meta().clone(), key.to_owned());
        let entry =
            tokio::task::spawn_blocking(move || meta.referrers(&k)).await.map_err(Error::internal)??;
        let Some(entry) = entry else { return Ok(None) };
        let Ok(index) = Digest::parse(&entry.index) else { return Ok(None) };
        let Some(stored) = self.stored_manifest(&index).await? else { return Ok(None) };
        let answer = ReferrersAnswer {
            body: stored.bytes.unwrap_or_default(),
            media_type: entry.media_type.clone(),
            filters_applied: entry.filters_applied.clone(),
            link: entry.link.as_ref().and_then(|(l, page)| Some((l.clone(), url::Url::parse(page).ok()?))),
            served_by: stored.served_by,
        };
        Ok(Some((entry, answer)))
    }

    /// Keeps upstream's answer when it is an image index (its body in the tiers, its entry in
    /// the metadata store), and answers with it either way.
    async fn keep_referrers(
        &self,
        upstream: &Upstream,
        key: &str,
        subject: &Digest,
        fetched: FetchedReferrers,
    ) -> Result<ReferrersAnswer, Error> {
        let answer = answer_of(fetched.clone());
        let FetchedReferrers { body, content_type: _, filters_applied, link, page } = fetched;
        let media_type = answer.media_type.clone();
        let essence = media_type.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case(OCI_INDEX) || !is_index(&body) {
            return Ok(answer);
        }
        let index = Digest::of(&body);
        self.store.put_verified(&index, body, Some(&media_type), &upstream.host).await?;
        self.media_types.insert(index.clone(), media_type.as_str().into());
        let entry = ReferrersEntry {
            subject: subject.to_string(),
            index: index.to_string(),
            media_type,
            filters_applied,
            link: link.map(|l| (l, page.to_string())),
            checked_at: now_secs(),
        };
        let (meta, k) = (self.store.meta().clone(), key.to_owned());
        tokio::task::spawn_blocking(move || meta.put_referrers(&k, &entry))
            .await
            .map_err(Error::internal)??;
        Ok(answer)
    }
}

/// Upstream's answer as berth sends it.
fn answer_of(fetched: FetchedReferrers) -> ReferrersAnswer {
    let FetchedReferrers { body, content_type, filters_applied, link, page } = fetched;
    ReferrersAnswer {
        body,
        media_type: content_type.unwrap_or_else(|| OCI_INDEX.to_owned()),
        filters_applied,
        link: link.map(|l| (l, page)),
        served_by: ServedBy::Upstream,
    }
}

/// An image index whose every entry names a valid digest.
fn is_index(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
    }
    serde_json::from_slice::<Index>(body)
        .is_ok_and(|i| i.manifests.iter().all(|d| Digest::parse(&d.digest).is_ok()))
}
