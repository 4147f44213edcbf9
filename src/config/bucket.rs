//! `[bucket]`: an S3-compatible bucket below the disk tier, shared by a fleet of berths.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{CaFile, Checker, SecretSource};

#[derive(Debug, Clone)]
pub struct Bucket {
    /// `s3://<bucket>/<prefix>` as written.
    pub url: Url,
    /// The bucket's name.
    pub name: String,
    /// Where berth's objects live in the bucket (`""` for the bucket's root); never `..`.
    pub prefix: String,
    /// The S3 API's base URL (SeaweedFS, MinIO, another cloud's S3 API); None: AWS S3 in
    /// `region`.
    pub endpoint: Option<Url>,
    pub region: String,
    /// Both keys, or neither (anonymous requests: a public bucket, read-only in practice).
    pub(crate) access_key_id: Option<SecretSource>,
    pub(crate) secret_access_key: Option<SecretSource>,
    /// Roots trusted for the endpoint besides the system's; TLS is always verified.
    pub ca_file: Option<CaFile>,
    pub upload: Upload,
    /// The longest a bucket request may take to answer (and a body may stall) before berth
    /// moves on to the next source; then the bucket is left alone for a backoff.
    pub timeout: Duration,
    /// Fleet-wide fill lease: how long a berth's claim on a digest's upstream fetch lasts.
    pub fill_lease: Duration,
    /// Budget of the bucket GC.
    pub capacity: Option<u64>,
}

/// What berth writes to the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// Verified content is uploaded after it is published locally.
    Background,
    /// Nothing is written: the bucket is read only.
    Off,
}

#[derive(Deserialize)]
pub(super) struct RawBucket {
    url: String,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id_file: Option<PathBuf>,
    access_key_id_env: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    secret_access_key_env: Option<String>,
    ca_file: Option<PathBuf>,
    upload: Option<String>,
    timeout: Option<String>,
    fill_lease: Option<String>,
    capacity: Option<String>,
}

pub(super) fn validate(raw: Option<RawBucket>, p: &mut Checker) -> Option<Bucket> {
    let raw = raw?;
    let (url, name, prefix) = location(&raw.url, p)?;
    let endpoint = raw.endpoint.as_deref().and_then(|e| match Url::parse(e) {
        Ok(u) if is_base_url(&u) => Some(u),
        _ => {
            p.0.push(format!(
                "bucket.endpoint = {e:?}: expected a base URL such as \"http://127.0.0.1:8333\" (no credentials, path or query)"
            ));
            None
        }
    });
    let region = raw.region.unwrap_or_else(|| "us-east-1".into());
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if region.is_empty() || region.len() > 64 || !region.bytes().all(plain) {
        p.0.push(format!("bucket.region = {region:?}: expected a region name such as \"us-east-1\""));
    }
    let key = p.secret(
        "bucket",
        "access_key_id",
        raw.access_key_id_file.as_deref(),
        raw.access_key_id_env.as_deref(),
    );
    let secret = p.secret(
        "bucket",
        "secret_access_key",
        raw.secret_access_key_file.as_deref(),
        raw.secret_access_key_env.as_deref(),
    );
    if key.is_some() != secret.is_some() {
        p.0.push("bucket: access_key_id and secret_access_key go together".into());
    }
    let upload = match raw.upload.as_deref().unwrap_or("background") {
        "background" => Upload::Background,
        "off" => Upload::Off,
        other => {
            p.0.push(format!("bucket.upload = {other:?}: expected \"background\" or \"off\""));
            Upload::Off
        }
    };
    let capacity = raw.capacity.map(|c| p.size("bucket.capacity", Some(c), "0"));
    Some(Bucket {
        url,
        name,
        prefix,
        endpoint,
        region,
        access_key_id: key,
        secret_access_key: secret,
        ca_file: raw.ca_file.map(CaFile::new),
        upload,
        timeout: p.timeout("bucket.timeout", raw.timeout, "2s"),
        fill_lease: p.timeout("bucket.fill_lease", raw.fill_lease, "2m"),
        capacity,
    })
}

/// An http(s) base URL with a host and nothing else: no credentials (which would show in
/// error messages), path, query or fragment.
fn is_base_url(u: &Url) -> bool {
    matches!(u.scheme(), "http" | "https")
        && u.host().is_some()
        && u.path() == "/"
        && u.username().is_empty()
        && u.password().is_none()
        && u.query().is_none()
        && u.fragment().is_none()
}

/// `s3://<bucket>[/<prefix>]`: the URL, the bucket's name and the prefix, or the problem.
fn location(v: &str, p: &mut Checker) -> Option<(Url, String, String)> {
    let bad = |p: &mut Checker, why: &str| {
        p.0.push(format!("bucket.url = {v:?}: {why} (expected \"s3://<bucket>/<prefix>\")"));
        None
    };
    let Ok(url) = Url::parse(v) else { return bad(p, "not a URL") };
    if url.scheme() != "s3" {
        return bad(p, "only s3:// is supported; other clouds through their S3 API and `endpoint`");
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return bad(p, "credentials, a query or a fragment do not belong in it");
    }
    let name = url.host_str().unwrap_or_default().to_owned();
    let valid_name = (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if !valid_name {
        return bad(p, "the bucket name must be 3-63 lowercase letters, digits, '-' or '.'");
    }
    // Judged as written: the URL parser drops `.` and `..` segments.
    let written = v.strip_prefix("s3://").unwrap_or_default();
    let path = written.split_once('/').map_or("", |(_, p)| p);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let plain = |s: &&str| {
        *s != "." && *s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !segments.iter().all(plain) {
        return bad(p, "the prefix takes letters, digits, '-', '_' and '.' between slashes");
    }
    let prefix = segments.join("/");
    Some((url, name, prefix))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[[registry]]\nhost = \"docker.io\"\nendpoint = \"https://registry-1.docker.io\"\n";

    fn parse(bucket: &str) -> Result<Config, String> {
        Config::parse(&format!("[bucket]\n{bucket}\n{BASE}")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_bucket_section_parses_with_its_defaults() {
        let c = parse("url = \"s3://berth-cache/fleet/a\"\nendpoint = \"http://127.0.0.1:8333\"\naccess_key_id_env = \"K\"\nsecret_access_key_env = \"S\"").unwrap();
        let b = c.bucket.unwrap();
        assert_eq!(
            (b.name.as_str(), b.prefix.as_str(), b.region.as_str()),
            ("berth-cache", "fleet/a", "us-east-1")
        );
        assert_eq!(b.upload, super::Upload::Background);
        assert_eq!((b.timeout.as_secs(), b.fill_lease.as_secs()), (2, 120));
        assert_eq!(b.endpoint.unwrap().as_str(), "http://127.0.0.1:8333/");
        assert!(parse("url = \"s3://berth-cache\"").unwrap().bucket.unwrap().prefix.is_empty());
        assert!(Config::parse(BASE).unwrap().bucket.is_none(), "no [bucket], no bucket");
    }

    #[test]
    fn a_hostile_or_mistyped_bucket_section_is_refused_with_the_reason() {
        for (bucket, why) in [
            ("url = \"gs://berth-cache\"", "only s3:// is supported"),
            ("url = \"s3://Berth_Cache\"", "bucket name"),
            ("url = \"s3://ab\"", "bucket name"),
            ("url = \"s3://berth-cache/../other\"", "the prefix takes"),
            ("url = \"s3://berth-cache/a/%2e%2e\"", "the prefix takes"),
            ("url = \"s3://berth-cache/a b\"", "the prefix takes"),
            ("url = \"s3://key:secret@berth-cache\"", "credentials"),
            ("url = \"s3://berth-cache?x=1\"", "credentials, a query"),
            ("url = \"s3://berth-cache\"\nendpoint = \"ftp://x\"", "bucket.endpoint"),
            ("url = \"s3://berth-cache\"\nendpoint = \"http://x/path\"", "bucket.endpoint"),
            ("url = \"s3://berth-cache\"\nendpoint = \"http://key:secret@x\"", "bucket.endpoint"),
            ("url = \"s3://berth-cache\"\nendpoint = \"http://x/?token=1\"", "bucket.endpoint"),
            ("url = \"s3://berth-cache\"\nregion = \"us-east-1/../x\"", "bucket.region"),
            ("url = \"s3://berth-cache\"\naccess_key_id_env = \"K\"", "go together"),
            ("url = \"s3://berth-cache\"\naccess_key_id_env = \"K\"\naccess_key_id_file = \"k\"\nsecret_access_key_env = \"S\"", "not both"),
            ("url = \"s3://berth-cache\"\nupload = \"always\"", "bucket.upload"),
            ("url = \"s3://berth-cache\"\ntimeout = \"0s\"", "bucket.timeout must be more than 0"),
            ("url = \"s3://berth-cache\"\ncapacity = \"lots\"", "bucket.capacity"),
            ("url = \"s3://berth-cache\"\nsecret_access_key = \"inline\"", "unknown key"),
        ] {
            let err = parse(bucket).expect_err(bucket);
            assert!(err.contains(why), "{bucket}: {err}");
        }
    }
}
