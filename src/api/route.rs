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
}
