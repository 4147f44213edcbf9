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
    // A path prefix never selects one of the wildcard's hosts: with no ns, the name is the
    // default registry's.
    let prefixed = format!("http://{}/v2/127.0.0.1/library/app/manifests/1", berth.registry_addr);
    assert_eq!(client.get(prefixed).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert!(hub.log().iter().any(|l| l.path == "/v2/127.0.0.1/library/app/manifests/1"));
}

fn paths(fake: &Fake) -> Vec<String> {
    fake.log().into_iter().map(|l| l.path).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_ns_a_first_path_component_naming_a_registry_selects_it() {
    let Two { hub, other: ghcr, berth, client, _dir } = two_registries().await;
    let (_, layers) = ghcr.put_image("org/app", "1", &[bytes_of(3000, 1)]);
    hub.put_image("library/alpine", "3", &[bytes_of(10, 2)]);
    let get = |path: String| client.get(format!("http://{}{path}", berth.registry_addr)).send();

    let r = get("/v2/registry.test/org/app/manifests/1".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = get(format!("/v2/registry.test/org/app/blobs/{}", layers[0])).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), 3000);
    assert!(paths(&ghcr).iter().any(|p| p == "/v2/org/app/manifests/1"), "{:?}", paths(&ghcr));
    assert!(paths(&ghcr).iter().all(|p| !p.contains("registry.test")));
    // The same repository by ns is the same content, served from the cache.
    let by_ns = get(format!("/v2/org/app/blobs/{}?ns=registry.test", layers[0])).await.unwrap();
    assert_eq!(by_ns.status(), StatusCode::OK);
    // Docker Hub's official images get their library/, as docker spells them.
    let r = get("/v2/docker.io/alpine/manifests/3".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(paths(&hub).iter().any(|p| p == "/v2/library/alpine/manifests/3"));
    assert!(paths(&ghcr).iter().all(|p| !p.contains("alpine")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_selects_only_configured_registries_and_ns_wins_over_it() {
    let Two { hub, other: ghcr, berth, client, _dir } = two_registries().await;
    hub.put_image("registry.test/org/app", "1", &[bytes_of(10, 3)]);
    hub.put_image("evil.example/org/app", "1", &[bytes_of(10, 4)]);
    let get = |path: &str| client.get(format!("http://{}{path}", berth.registry_addr)).send();
    // With ns, the path is the repository's name under that registry, prefix or not.
    let r = get("/v2/registry.test/org/app/manifests/1?ns=docker.io").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(paths(&hub).iter().any(|p| p == "/v2/registry.test/org/app/manifests/1"));
    // A host that is not configured is no prefix: a repository of the default registry.
    let r = get("/v2/evil.example/org/app/manifests/1").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(paths(&hub).iter().any(|p| p == "/v2/evil.example/org/app/manifests/1"));
    // A registry's name alone is a repository name, and a prefix needs a whole component.
    let before = paths(&ghcr).len();
    for path in [
        "/v2/registry.test/manifests/1",
        "/v2/registry.testx/app/manifests/1",
        "/v2/registry.test./app/manifests/1",
    ] {
        let _ = get(path).await.unwrap();
    }
    assert_eq!(paths(&ghcr).len(), before, "registry.test was asked for a name it does not prefix");
    // Next-page links stay on the prefix.
    let r = get("/v2/registry.test/org/app/tags/list?n=1").await.unwrap();
    assert_eq!(r.headers()["link"], "</v2/registry.test/org/app/tags/list?n=1&last=1>; rel=\"next\"");
    assert!(paths(&ghcr).iter().any(|p| p.starts_with("/v2/org/app/tags/list")));
}
