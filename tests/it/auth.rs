//! Upstream auth: bearer tokens (anonymous and with credentials), refresh, Basic, redirects.

use crate::common;

use common::{bytes_of, Fake, Fault, Harness};
use http::{Method, StatusCode};

const REPO: &str = "library/app";

fn token_requests(h: &Harness) -> Vec<common::Logged> {
    h.upstream.log().into_iter().filter(|l| l.path.starts_with("/token")).collect()
}

#[tokio::test]
async fn anonymous_bearer_token_is_fetched_cached_and_used() {
    let h = Harness::start().await;
    h.upstream.state.auth.lock().unwrap().bearer = true;
    let (_, layers) = h.upstream.put_image(REPO, "1", &[bytes_of(1000, 1), bytes_of(1000, 2)]);

    assert_eq!(h.get(&format!("/v2/{REPO}/manifests/1")).await.status(), StatusCode::OK);
    for d in &layers {
        assert_eq!(h.get(&Harness::blob_path(REPO, d)).await.status(), StatusCode::OK);
    }
    let tokens = token_requests(&h);
    assert_eq!(tokens.len(), 1, "token not cached: {tokens:?}");
    assert!(tokens[0].authorization.is_none(), "anonymous token request carried credentials");
    assert!(tokens[0].path.contains("scope=repository%3Alibrary%2Fapp%3Apull"), "{}", tokens[0].path);
    assert!(tokens[0].path.contains("service=fake"));
    let blob_get = h
        .upstream
        .log()
        .into_iter()
        .find(|l| l.method == Method::GET && l.path.contains(layers[0].as_str()))
        .unwrap();
    assert!(blob_get.authorization.unwrap().starts_with("Bearer tok-"));
}

#[tokio::test]
async fn credentials_are_sent_to_the_token_realm() {
    std::env::set_var("BERTH_AUTH_TEST_PASSWORD", "s3cret");
    let h = Harness::start_with("username = \"alice\"\npassword_env = \"BERTH_AUTH_TEST_PASSWORD\"", |_| {})
        .await;
    {
        let mut auth = h.upstream.state.auth.lock().unwrap();
        auth.bearer = true;
        auth.basic = Some(("alice".into(), "s3cret".into()));
    }
    h.upstream.put_image(REPO, "1", &[bytes_of(1000, 3)]);
    assert_eq!(h.get(&format!("/v2/{REPO}/manifests/1")).await.status(), StatusCode::OK);
    let tokens = token_requests(&h);
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].authorization.as_deref().unwrap().starts_with("Basic "));
}

#[tokio::test]
async fn wrong_credentials_are_denied() {
    std::env::set_var("BERTH_AUTH_TEST_WRONG", "nope");
    let h =
        Harness::start_with("username = \"alice\"\npassword_env = \"BERTH_AUTH_TEST_WRONG\"", |_| {}).await;
    {
        let mut auth = h.upstream.state.auth.lock().unwrap();
        auth.bearer = true;
        auth.basic = Some(("alice".into(), "s3cret".into()));
    }
    h.upstream.put_image(REPO, "1", &[bytes_of(1000, 4)]);
    let r = h.get(&format!("/v2/{REPO}/manifests/1")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body = r.text().await.unwrap();
    assert!(body.contains("DENIED"));
    assert!(!body.contains("nope"), "a password leaked into an error");
}

#[tokio::test]
async fn expired_token_is_refreshed_once() {
    let h = Harness::start().await;
    h.upstream.state.auth.lock().unwrap().bearer = true;
    let (_, layers) = h.upstream.put_image(REPO, "1", &[bytes_of(1000, 5), bytes_of(1000, 6)]);
    assert_eq!(h.get(&Harness::blob_path(REPO, &layers[0])).await.status(), StatusCode::OK);
    // Upstream forgets every token, as when one expires.
    h.upstream.state.auth.lock().unwrap().tokens.clear();
    h.upstream.clear_log();
    let r = h.get(&Harness::blob_path(REPO, &layers[1])).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), bytes_of(1000, 6));
    assert_eq!(token_requests(&h).len(), 1, "expected exactly one refresh");
    assert_eq!(h.upstream.count(Method::GET, layers[1].as_str()), 2, "401 with the old token, then 200");
}

#[tokio::test]
async fn basic_auth_upstream() {
    std::env::set_var("BERTH_AUTH_TEST_BASIC", "pw");
    let h = Harness::start_with("username = \"bob\"\npassword_env = \"BERTH_AUTH_TEST_BASIC\"", |_| {}).await;
    h.upstream.state.auth.lock().unwrap().basic = Some(("bob".into(), "pw".into()));
    let (_, layers) = h.upstream.put_image(REPO, "1", &[bytes_of(1000, 7)]);
    assert_eq!(h.get(&format!("/v2/{REPO}/manifests/1")).await.status(), StatusCode::OK);
    assert_eq!(h.get(&Harness::blob_path(REPO, &layers[0])).await.status(), StatusCode::OK);
    // After the first challenge, credentials go up front: no more 401 round trips.
    let unauthenticated = h.upstream.log().iter().filter(|l| l.authorization.is_none()).count();
    assert_eq!(unauthenticated, 1);
}

#[tokio::test]
async fn redirect_is_followed_without_upstream_credentials() {
    let h = Harness::start().await;
    let cdn = Fake::start().await;
    h.upstream.state.auth.lock().unwrap().bearer = true;
    let blob = bytes_of(200_000, 8);
    let d = h.upstream.add_blob(blob.clone());
    cdn.add_blob(blob.clone());
    h.upstream.fault(&d, Fault::RedirectTo(cdn.addr));

    let r = h.get(&Harness::blob_path(REPO, &d)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap() == blob);
    let cdn_log = cdn.log();
    assert_eq!(cdn_log.len(), 1);
    assert!(cdn_log[0].authorization.is_none(), "upstream token sent to the redirect host");
    // The upstream itself did get the token.
    let up = h.upstream.log().into_iter().rfind(|l| l.path.contains(d.as_str())).unwrap();
    assert!(up.authorization.is_some());
}
