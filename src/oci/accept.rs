//! Manifest content negotiation. A tag can resolve to different manifests for different
//! Accept sets, so tag lookups are keyed by the client's class of accepted media types.

use http::{header, HeaderMap};

pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Media types that select a manifest format, in a fixed order.
const KNOWN: [&str; 7] = [
    DOCKER_MANIFEST,
    DOCKER_LIST,
    OCI_MANIFEST,
    OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/json",
];

/// The set of manifest media types a client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptClass {
    known: [bool; KNOWN.len()],
    any: bool,
}

impl AcceptClass {
    /// From every `Accept` header line of a request (each may be a comma list).
    pub fn from_headers(headers: &HeaderMap) -> AcceptClass {
        let mut class = AcceptClass { known: [false; KNOWN.len()], any: false };
        for line in headers.get_all(header::ACCEPT) {
            let Ok(line) = line.to_str() else { continue };
            class.add(line);
        }
        class
    }

    /// From one `Accept` value (a comma list), such as [`AcceptClass::header`] gives.
    pub(crate) fn from_header(value: &str) -> AcceptClass {
        let mut class = AcceptClass { known: [false; KNOWN.len()], any: false };
        class.add(value);
        class
    }

    fn add(&mut self, line: &str) {
        for item in line.split(',') {
            let media = item.split(';').next().unwrap_or("").trim();
            if media == "*/*" {
                self.any = true;
            } else if let Some(i) = KNOWN.iter().position(|k| k.eq_ignore_ascii_case(media)) {
                self.known[i] = true;
            }
        }
    }

    /// What containerd sends on a pull: the image and index types of both formats and `*/*`.
    /// Preheat resolves tags with it, so that pulls find the same tag-cache entry.
    pub(crate) fn pull() -> AcceptClass {
        let mut known = [false; KNOWN.len()];
        known[..4].fill(true);
        AcceptClass { known, any: true }
    }

    /// Every manifest type and `*/*`: for fetches by digest, whose content is fixed.
    pub(crate) fn all() -> AcceptClass {
        AcceptClass { known: [true; KNOWN.len()], any: true }
    }

    /// Whether this class names `media_type` (parameters ignored); `*/*` does not count.
    pub(crate) fn names(&self, media_type: &str) -> bool {
        let media = media_type.split(';').next().unwrap_or("").trim();
        KNOWN.iter().zip(self.known).any(|(k, on)| on && k.eq_ignore_ascii_case(media))
    }

    /// The `Accept` value sent upstream for this class; also its cache key.
    pub fn header(&self) -> String {
        let mut parts: Vec<&str> =
            KNOWN.iter().zip(self.known).filter(|(_, on)| *on).map(|(k, _)| *k).collect();
        if self.any {
            parts.push("*/*");
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn containerd_and_docker_accepts_differ_from_oci_only() {
        let mut containerd = HeaderMap::new();
        containerd.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*",
            ),
        );
        let mut docker = HeaderMap::new();
        for v in [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST] {
            docker.append(header::ACCEPT, HeaderValue::from_static(v));
        }
        docker.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        let mut oci = HeaderMap::new();
        oci.insert(header::ACCEPT, HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"));
        let (a, b, c) = (
            AcceptClass::from_headers(&containerd),
            AcceptClass::from_headers(&docker),
            AcceptClass::from_headers(&oci),
        );
        assert_eq!(a, b, "same set in another order and layout is one class");
        assert_eq!(a, AcceptClass::pull());
        assert_ne!(a.header(), c.header());
        assert_eq!(c.header(), OCI_MANIFEST);
    }
}
