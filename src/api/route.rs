//! Request paths of the distribution API, parsed and validated.

use crate::error::Error;
use crate::oci::digest::Digest;
use crate::oci::reference::{validate_name, Reference};

#[derive(Debug, PartialEq)]
pub enum Route {
    /// `/v2/`
    Base,
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: Digest,
    },
    /// `/v2/<name>/tags/list`
    Tags {
        name: String,
    },
    /// `/v2/<name>/referrers/<digest>`
    Referrers {
        name: String,
        digest: Digest,
    },
    /// Upload endpoints: writes, which a mirror does not take.
    Upload,
}

pub fn parse(path: &str) -> Result<Route, Error> {
    if path == "/v2/" || path == "/v2" {
        return Ok(Route::Base);
    }
    let rest = path.strip_prefix("/v2/").ok_or(Error::NameUnknown)?;
    if let Some((name, _)) = rest.split_once("/blobs/uploads") {
        validate_name(name)?;
        return Ok(Route::Upload);
    }
    // `<name>/<kind>/<last>`: the name may itself contain any of the kind words.
    let (head, last) = rest.rsplit_once('/').ok_or(Error::NameUnknown)?;
    let (name, kind) = head.rsplit_once('/').ok_or(Error::NameUnknown)?;
    let route = match (kind, last) {
        ("tags", "list") => Route::Tags { name: name.to_owned() },
        ("manifests", r) => Route::Manifest { name: name.to_owned(), reference: Reference::parse(r)? },
        ("blobs", d) => Route::Blob { name: name.to_owned(), digest: Digest::parse(d)? },
        ("referrers", d) => Route::Referrers { name: name.to_owned(), digest: Digest::parse(d)? },
        _ => return Err(Error::NameUnknown),
    };
    validate_name(name)?;
    Ok(route)
}

impl Route {
    /// The repository name the route is for, if it has one.
    pub(crate) fn name_mut(&mut self) -> Option<&mut String> {
        match self {
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Tags { name }
            | Route::Referrers { name, .. } => Some(name),
            Route::Base | Route::Upload => None,
        }
    }
}

/// A repository name whose first component is `host`, split: `ghcr.io/org/app` → `org/app`.
/// Docker Hub's official images take their `library/` (`docker.io/alpine`), as docker
/// spells them.
pub(crate) fn strip_host<'a>(name: &'a str, host: &str) -> Option<std::borrow::Cow<'a, str>> {
    let rest = name.strip_prefix(host)?.strip_prefix('/')?;
    if host == "docker.io" && !rest.contains('/') {
        return Some(format!("library/{rest}").into());
    }
    Some(rest.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let d = Digest::of(b"x");
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert_eq!(
            parse("/v2/library/alpine/manifests/3.20").unwrap(),
            Route::Manifest { name: "library/alpine".into(), reference: Reference::Tag("3.20".into()) }
        );
        assert_eq!(
            parse(&format!("/v2/a/manifests/b/blobs/{d}")).unwrap(),
            Route::Blob { name: "a/manifests/b".into(), digest: d.clone() }
        );
        assert_eq!(parse("/v2/a/b/tags/list").unwrap(), Route::Tags { name: "a/b".into() });
        assert_eq!(parse("/v2/a/blobs/uploads/").unwrap(), Route::Upload);
        assert_eq!(
            parse(&format!("/v2/a/referrers/{d}")).unwrap(),
            Route::Referrers { name: "a".into(), digest: d }
        );
        assert!(matches!(parse("/v2/a/manifests/sha256:totallywrong"), Err(Error::DigestInvalid(_))));
        assert!(matches!(parse("/v2/A/manifests/x"), Err(Error::NameInvalid(_))));
        assert!(matches!(parse("/v3/x"), Err(Error::NameUnknown)));
    }

    #[test]
    fn a_host_prefix_is_split_off_whole_components_only() {
        assert_eq!(strip_host("ghcr.io/org/app", "ghcr.io").as_deref(), Some("org/app"));
        assert_eq!(strip_host("docker.io/alpine", "docker.io").as_deref(), Some("library/alpine"));
        assert_eq!(strip_host("docker.io/library/alpine", "docker.io").as_deref(), Some("library/alpine"));
        assert_eq!(strip_host("ghcr.io", "ghcr.io"), None);
        assert_eq!(strip_host("ghcr.iox/app", "ghcr.io"), None);
        assert_eq!(strip_host("org/ghcr.io/app", "ghcr.io"), None);
    }
}
