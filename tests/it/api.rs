//! The registry API surface: base, writes refused, ns routing, bad input.

use crate::common;

use common::{bytes_of, config, Fake};
use http::StatusCode;

struct Two {
    _dir: tempfile::TempDir,
    hub: Fake,
    other: Fake,
    berth: berth::Server,
    client: reqwest::Client,
}

async fn two_registries() -> Two {
    let (hub, other) = (Fake::start().await, Fake::start().await);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[("docker.io", &hub.url()), ("registry.test", &other.url())], "");
    let berth = berth::Server::start(&cfg).await.unwrap();
    Two { _dir: dir, hub, other, berth, client: reqwest::Client::new() }
}

impl Two {
    fn url(&self, p: &str) -> String {
        format!("http://{}{p}", self.berth.registry_addr)
    }
}

async fn code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn base_endpoint_and_health() {
    let t = two_registries().await;
    let r = t.client.get(t.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
    assert_eq!(r.text().await.unwrap(), "{}");
    let r = t.client.get(format!("http://{}/healthz", t.berth.admin_addr)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn writes_are_refused() {
    let t = two_registries().await;
    for (method, path) in [
        (reqwest::Method::POST, "/v2/library/app/blobs/uploads/"),
        (reqwest::Method::PUT, "/v2/library/app/manifests/1"),
        (reqwest::Method::DELETE, "/v2/library/app/manifests/1"),
        (reqwest::Method::PATCH, "/v2/library/app/blobs/uploads/abc"),
    ] {
        let r = t.client.request(method.clone(), t.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(code(r).await, "UNSUPPORTED");
    }
    assert!(t.hub.log().is_empty());
}

#[tokio::test]
async fn ns_selects_the_registry_and_unknown_ns_is_denied() {
    let t = two_registries().await;
    t.hub.put_image("library/app", "1", &[bytes_of(10, 1)]);
    let (other_digest, _) = t.other.put_image("library/app", "1", &[bytes_of(10, 2)]);

    let r = t.client.get(t.url("/v2/library/app/manifests/1?ns=registry.test")).send().await.unwrap();
    assert_eq!(r.headers()["docker-content-digest"], other_digest.as_str());
    assert_eq!(t.hub.log().len(), 0);
    let r = t.client.get(t.url("/v2/library/app/manifests/1")).send().await.unwrap();
    assert_ne!(r.headers()["docker-content-digest"], other_digest.as_str(), "no ns must mean docker.io");
    assert_eq!(t.hub.log().len(), 1);

    let r = t.client.get(t.url("/v2/library/app/manifests/1?ns=evil.example")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(code(r).await, "DENIED");
}

#[tokio::test]
async fn bad_input_gets_oci_errors() {
    let t = two_registries().await;
    for (path, status, want) in [
        ("/v2/library/app/manifests/sha256:totallywrong", StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        ("/v2/library/app/blobs/sha256:abc", StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        ("/v2/library/app/blobs/md5:abc", StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        ("/v2/Library/App/manifests/1", StatusCode::BAD_REQUEST, "NAME_INVALID"),
        ("/v2/library/app/manifests/-bad", StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        ("/v2/library/app/whatever", StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
    ] {
        let r = t.client.get(t.url(path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(code(r).await, want, "{path}");
    }
    assert!(t.hub.log().is_empty(), "bad input reached upstream");
}

#[tokio::test]
async fn tags_list_passes_through_without_ns() {
    let t = two_registries().await;
    let r = t.client.get(t.url("/v2/library/app/tags/list?ns=registry.test&n=10")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["name"], "library/app");
    let logged = &t.other.log()[0].path;
    assert_eq!(logged, "/v2/library/app/tags/list?n=10");
}

#[tokio::test]
async fn the_admin_api_requires_its_token_when_one_is_set() {
    let hub = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &[("docker.io", &hub.url())], "");
    cfg.server.admin_token = Some(berth::config::Secret::new("s3cret-admin").into());
    let berth = berth::Server::start(&cfg).await.unwrap();
    let client = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", berth.admin_addr);
    assert_eq!(client.get(url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    for path in ["/api/v1/cache", "/metrics", "/api/v1/preheat"] {
        let r = client.get(url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} without a token");
        let r = client.get(url(path)).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} with a wrong token");
        let r = client.get(url(path)).bearer_auth("s3cret-admin").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path} with the token");
    }
    // The CLI sends BERTH_ADMIN_TOKEN.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["preheat", "--admin", &url(""), "quay.io/x/y:1"])
        .env("BERTH_ADMIN_TOKEN", "s3cret-admin")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not mirrored"), "the CLI was not let in: {stderr}");
}

#[tokio::test]
async fn the_wildcard_registry_refuses_loopback_link_local_and_private_addresses() {
    let hub = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        [storage]
        dir = "{}"
        [[registry]]
        host = "docker.io"
        endpoint = "{}"
        [[registry]]
        host = "*"
        endpoint = "https://*"
        connect_timeout = "1s"
        "#,
        dir.path().display(),
        hub.url()
    );
    let cfg = berth::config::Config::parse(&text).unwrap();
    let berth = berth::Server::start(&cfg).await.unwrap();
    let client = reqwest::Client::new();
    let get = |ns: &str| {
        client.get(format!("http://{}/v2/library/app/manifests/1?ns={ns}", berth.registry_addr)).send()
    };
    for ns in
        ["127.0.0.1", &hub.addr.to_string(), "169.254.169.254", "10.0.0.1:5000", "localhost", "[::1]:5000"]
    {
        let r = get(ns).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "ns={ns}");
        assert_eq!(code(r).await, "DENIED", "ns={ns}");
    }
    assert!(hub.log().is_empty(), "a refused ns reached the loopback upstream");
    // A public-looking name that does not resolve here is tried, and fails as unavailable.
    let r = get("registry.example.invalid").await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Configured registries are served as before.
    hub.put_image("library/app", "1", &[bytes_of(10, 1)]);
    assert_eq!(get("docker.io").await.unwrap().status(), StatusCode::OK);
}
