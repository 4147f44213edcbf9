//! `[auth]`: the registry API wants Basic credentials from an htpasswd file or a bearer
//! token; peers pass with the peer token; a reload changes who may pull.

use crate::common;

use common::{bytes_of, Harness};
use http::StatusCode;

const REPO: &str = "library/app";

/// A berth whose registry API takes alice (password "wonderland") and the token "t0k3n".
async fn guarded(extra_peer_token: bool) -> (Harness, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("wonderland", 4).unwrap();
    std::fs::write(files.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
    std::fs::write(files.path().join("tokens"), "t0k3n\n").unwrap();
    let (htpasswd, tokens) = (files.path().join("htpasswd"), files.path().join("tokens"));
    let h = Harness::start_with("", |c| {
        c.auth = Some(berth::config::Auth { htpasswd_file: Some(htpasswd), tokens_file: Some(tokens) });
        if extra_peer_token {
            c.peers = Some(berth::config::Peers {
                self_url: url::Url::parse("http://127.0.0.1:1").unwrap(),
                static_peers: vec![],
                dns: None,
                dns_interval: std::time::Duration::from_secs(30),
                timeout: std::time::Duration::from_millis(200),
                read_timeout: std::time::Duration::from_secs(2),
                backoff: std::time::Duration::from_secs(30),
                token: berth::config::Secret::new("peer-secret").into(),
                ca_file: None,
            });
        }
    })
    .await;
    (h, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_api_wants_credentials() {
    let (h, files) = guarded(false).await;
    let d = h.upstream.add_blob(bytes_of(1000, 1));
    let blob = Harness::blob_path(REPO, &d);
    let get = |path: &str| h.client.get(h.url(path));

    let r = get("/v2/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"berth\"");
    assert!(r.text().await.unwrap().contains("UNAUTHORIZED"));
    for wrong in [
        get(&blob).basic_auth("alice", Some("rabbit")),
        get(&blob).basic_auth("bob", Some("wonderland")),
        get(&blob).bearer_auth("nope"),
    ] {
        assert_eq!(wrong.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        get("/v2/").basic_auth("alice", Some("wonderland")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let r = get(&blob).basic_auth("alice", Some("wonderland")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    assert_eq!(get(&blob).bearer_auth("t0k3n").send().await.unwrap().status(), StatusCode::OK);

    // A reload without alice: her (cached) credentials stop working.
    std::fs::write(files.path().join("htpasswd"), "").unwrap();
    h.berth.reload().unwrap();
    assert_eq!(
        get(&blob).basic_auth("alice", Some("wonderland")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(&blob).bearer_auth("t0k3n").send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_pass_with_the_peer_token_only() {
    let (h, _files) = guarded(true).await;
    let d = h.upstream.add_blob(bytes_of(1000, 2));
    let blob = h.url(&Harness::blob_path(REPO, &d));
    let hop = |token: Option<&str>| {
        let req = h.client.get(&blob).header("x-berth-hop", "http://127.0.0.1:2");
        match token {
            Some(t) => req.header("x-berth-peer-token", t),
            None => req,
        }
    };
    assert_eq!(hop(Some("peer-secret")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(hop(Some("guess")).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(hop(None).send().await.unwrap().status(), StatusCode::FORBIDDEN);
}

#[test]
fn auth_with_peers_needs_a_peer_token_and_files_must_hold_someone() {
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("tokens"), "t\n").unwrap();
    std::fs::write(files.path().join("empty"), "\n").unwrap();
    let base = "[[registry]]\nhost = \"docker.io\"\nendpoint = \"https://registry-1.docker.io\"\n";
    let dir = files.path().display();
    let err = berth::config::Config::parse(&format!(
        "[auth]\ntokens_file = \"{dir}/tokens\"\n[peers]\nself = \"http://10.0.0.1:5000\"\nstatic = [\"http://10.0.0.2:5000\"]\n{base}"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("set token_file or token_env"), "{err}");
    let err = berth::check::parse(&format!("[auth]\ntokens_file = \"{dir}/empty\"\n{base}"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nobody could pull"), "{err}");
    assert!(berth::check::parse(&format!("[auth]\ntokens_file = \"{dir}/tokens\"\n{base}")).is_ok());
}

#[test]
fn htpasswd_lines_verify() {
    let line = berth::htpasswd_line("carol", "s3cret").unwrap();
    let (user, hash) = line.split_once(':').unwrap();
    assert_eq!(user, "carol");
    assert!(bcrypt::verify("s3cret", hash).unwrap());
    assert!(berth::htpasswd_line("a:b", "x").is_err());
}
