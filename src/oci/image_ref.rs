//! Image references normalised as docker does: `alpine` → `docker.io/library/alpine:latest`.

use std::fmt;

use super::digest::Digest;
use super::reference::{validate_name, Reference};
use super::Invalid;

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    /// The registry host as clients name it (`docker.io`, `ghcr.io`, `localhost:5000`).
    pub(crate) host: String,
    pub(crate) repo: String,
    /// The tag, when the reference has one.
    pub(crate) tag: Option<String>,
    pub(crate) digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises a reference. Errors name the problem, never echo credentials.
    pub fn parse(s: &str) -> Result<ImageRef, Invalid> {
        let shown = redact(s);
        if s.is_empty() || s.contains("://") || s.chars().any(char::is_whitespace) {
            return Err(Invalid::ImageRef(format!("{shown:?} is not an image reference")));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                (r, Some(Digest::parse(d).map_err(|e| Invalid::ImageRef(format!("{shown:?}: {e}")))?))
            }
            None => (s, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_owned())),
            _ => (rest, None),
        };
        let (host, repo) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), path.to_owned())
            }
            _ => ("docker.io".to_owned(), name.to_owned()),
        };
        let host = if host == "index.docker.io" || host == "registry-1.docker.io" {
            "docker.io".into()
        } else {
            host
        };
        let repo = if host == "docker.io" && !repo.contains('/') { format!("library/{repo}") } else { repo };
        validate_name(&repo).map_err(|e| Invalid::ImageRef(format!("{shown:?}: {e}")))?;
        if let Some(t) = &tag {
            Reference::parse(t).map_err(|e| Invalid::ImageRef(format!("{shown:?}: {e}")))?;
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_owned()) } else { tag };
        Ok(ImageRef { host, repo, tag, digest })
    }

    /// What to ask the registry for: the digest when pinned by one, else the tag.
    pub(crate) fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Reference::Digest(d.clone()),
            (None, Some(t)) => Reference::Tag(t.clone()),
            (None, None) => Reference::Tag("latest".into()),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Hides a `user:password@` prefix, should someone paste one.
fn redact(s: &str) -> String {
    match s.split_once('@') {
        Some((creds, rest))
            if creds.contains(':') && !creds.contains('/') && !rest.starts_with("sha256:") =>
        {
            format!("<redacted>@{rest}")
        }
        _ => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = |s| ImageRef::parse(s).unwrap().to_string();
        assert_eq!(r("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(r("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(r("docker.io/library/nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(r("index.docker.io/bitnami/redis"), "docker.io/bitnami/redis:latest");
        assert_eq!(r("ghcr.io/org/app:v1"), "ghcr.io/org/app:v1");
        assert_eq!(r("localhost:5000/app"), "localhost:5000/app:latest");
        let d = Digest::of(b"x");
        let pinned = ImageRef::parse(&format!("ghcr.io/org/app@{d}")).unwrap();
        assert_eq!(pinned.tag, None);
        assert_eq!(pinned.reference(), Reference::Digest(d.clone()));
        assert_eq!(ImageRef::parse(&format!("app:1@{d}")).unwrap().reference(), Reference::Digest(d));
    }

    #[test]
    fn rejects_and_redacts() {
        for bad in ["", "UPPER/case", "a b", "https://x/y", "x:-bad", "a@sha256:zz"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
        let e = ImageRef::parse("bob:hunter2@evil host").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
