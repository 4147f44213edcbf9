//! Test harness: an in-process fake upstream registry that can misbehave on purpose (corrupt,
//! truncated or slow bodies, 429/5xx, token auth, redirects to a second host), and helpers to
//! run berth in-process against it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use berth::config::Config;
use berth::oci::digest::Digest;
use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Clone, Debug)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// Same length, one byte changed.
    Corrupt,
    /// Announces the full length, sends half, then cuts the connection.
    Truncate,
    /// Sends `chunk` bytes every `delay`.
    Slow { chunk: usize, delay: Duration },
    /// Sends the body in slow chunks without a Content-Length (chunked encoding).
    NoLength,
    /// The first GET sends `at` bytes and is cut; later GETs answer `Range: bytes=N-` with a
    /// 206 (or, with `honour_range` false, ignore it and send everything with a 200).
    CutOnce { at: usize, honour_range: bool },
    /// Sends half, then nothing more while keeping the connection open.
    Stall,
    /// Answers with this status.
    Status(u16),
    /// 307 to the same path on another server, as Docker Hub does to its CDN.
    RedirectTo(SocketAddr),
    /// Announces this Content-Length whatever the body is, then sends the blob's bytes.
    Announce(u64),
    /// Sends `chunk` bytes every `delay` with no Content-Length (a trickle).
    Trickle { chunk: usize, delay: Duration },
    /// Like `Slow`, but a GET with `Range: bytes=a-b` gets a 206 whose `Content-Range` says
    /// it starts one byte later than asked.
    SlowWrongRange { chunk: usize, delay: Duration },
    /// Like `Slow`, but `Range` is ignored: every GET gets the whole blob with a 200.
    SlowNoRanges { chunk: usize, delay: Duration },
    /// Like `Slow`, but a GET with `Range: bytes=a-b` gets a 206 that is cut after half.
    SlowCutRanges { chunk: usize, delay: Duration },
}

#[derive(Default)]
pub struct Auth {
    /// Require bearer tokens from `/token`.
    pub bearer: bool,
    /// Require Basic auth on the token request (bearer) or on every request (no bearer).
    pub basic: Option<(String, String)>,
    pub tokens: HashSet<String>,
    pub issued: usize,
}

#[derive(Default)]
pub struct FakeState {
    pub addr: Mutex<Option<SocketAddr>>,
    pub blobs: Mutex<HashMap<String, Bytes>>,
    /// "repo:reference" → (media type, bytes); stored under the tag and the digest.
    pub manifests: Mutex<HashMap<String, (String, Bytes)>>,
    pub faults: Mutex<HashMap<String, Fault>>,
    /// A status every manifest request gets, when set.
    pub manifest_status: Mutex<Option<u16>>,
    /// A pause before every Basic challenge (401), when set: concurrent requests then all
    /// reach the server before any of them learns the challenge.
    pub challenge_delay: Mutex<Option<Duration>>,
    /// A pause before every manifest answer, when set.
    pub manifest_delay: Mutex<Option<Duration>>,
    pub auth: Mutex<Auth>,
    /// The token realm challenges name, when not this server's own `/token`.
    pub realm: Mutex<Option<String>>,
    /// Every `/v2/` request is answered with a 307 to this base URL plus the request's path.
    pub redirect_all: Mutex<Option<String>>,
    /// Referrers answers by subject digest (an image index's JSON), and a status every
    /// referrers request gets, when set.
    pub referrers: Mutex<HashMap<String, String>>,
    pub referrers_status: Mutex<Option<u16>>,
    /// Canned answers by exact path: status and body (a JSON error document, say).
    pub answers: Mutex<HashMap<String, (u16, String)>>,
    pub log: Mutex<Vec<Logged>>,
    /// GETs per blob digest.
    pub gets: Mutex<HashMap<String, usize>>,
    /// Slow blob bodies being sent now, and the most at once.
    pub sending: Arc<AtomicUsize>,
    pub most_sending: Arc<AtomicUsize>,
}

/// Counts a body as being sent until dropped.
struct Sending(Arc<AtomicUsize>);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Fake {
    pub async fn start() -> Fake {
        let state = Arc::new(FakeState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *state.addr.lock().unwrap() = Some(addr);
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Fake { addr, state, task: Arc::new(task) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving: the port then refuses connections.
    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn add_blob(&self, bytes: impl Into<Bytes>) -> Digest {
        let bytes = bytes.into();
        let d = Digest::of(&bytes);
        self.state.blobs.lock().unwrap().insert(d.to_string(), bytes);
        d
    }

    /// Puts a manifest under `repo:tag` and `repo:digest`; returns its digest.
    pub fn put_manifest(&self, repo: &str, tag: &str, media_type: &str, bytes: impl Into<Bytes>) -> Digest {
        let bytes = bytes.into();
        let d = Digest::of(&bytes);
        let mut m = self.state.manifests.lock().unwrap();
        m.insert(format!("{repo}:{tag}"), (media_type.to_owned(), bytes.clone()));
        m.insert(format!("{repo}:{d}"), (media_type.to_owned(), bytes));
        d
    }

    /// An image manifest over a config and layers that are added as blobs.
    pub fn put_image(&self, repo: &str, tag: &str, layers: &[Bytes]) -> (Digest, Vec<Digest>) {
        let config = self.add_blob(Bytes::from(format!("{{\"tag\":\"{tag}\"}}")));
        let layer_digests: Vec<Digest> = layers.iter().map(|l| self.add_blob(l.clone())).collect();
        let layers_json: Vec<String> = layer_digests
            .iter()
            .zip(layers)
            .map(|(d, l)| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{}}}"#,
                    l.len()
                )
            })
            .collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{}}},"layers":[{}]}}"#,
            self.state.blobs.lock().unwrap()[config.as_str()].len(),
            layers_json.join(",")
        );
        let d = self.put_manifest(repo, tag, OCI_MANIFEST, manifest);
        (d, layer_digests)
    }

    pub fn fault(&self, digest: &Digest, fault: Fault) {
        self.state.faults.lock().unwrap().insert(digest.to_string(), fault);
    }

    pub fn clear_fault(&self, digest: &Digest) {
        self.state.faults.lock().unwrap().remove(digest.as_str());
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Requests with this method whose path contains `needle`.
    pub fn count(&self, method: Method, needle: &str) -> usize {
        self.log().iter().filter(|l| l.method == method && l.path.contains(needle)).count()
    }
}

fn challenge(realm: &str, repo: &str, error: Option<&str>) -> Response {
    let mut v = format!(r#"Bearer realm="{realm}",service="fake",scope="repository:{repo}:pull""#);
    if let Some(e) = error {
        v.push_str(&format!(r#",error="{e}""#));
    }
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, v)], "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}")
        .into_response()
}

fn basic_ok(headers: &HeaderMap, user: &str, pass: &str) -> bool {
    use base64::Engine as _;
    let want =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")));
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(want.as_str())
}

static TOKEN_SEQ: AtomicUsize = AtomicUsize::new(0);

async fn handle(State(state): State<Arc<FakeState>>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let headers = parts.headers;
    let addr = state.addr.lock().unwrap().unwrap();
    state.log.lock().unwrap().push(Logged {
        method: parts.method.clone(),
        path: parts.uri.to_string(),
        authorization: headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned()),
        range: headers.get(header::RANGE).map(|v| v.to_str().unwrap().to_owned()),
    });

    if path == "/token" {
        let mut auth = state.auth.lock().unwrap();
        if let Some((u, p)) = auth.basic.clone() {
            if !basic_ok(&headers, &u, &p) {
                return StatusCode::UNAUTHORIZED.into_response();
            }
        }
        let token = format!("tok-{}", TOKEN_SEQ.fetch_add(1, Ordering::SeqCst));
        auth.tokens.insert(token.clone());
        auth.issued += 1;
        return (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({"token": token, "expires_in": 300}).to_string(),
        )
            .into_response();
    }

    if let Some((status, body)) = state.answers.lock().unwrap().get(&path).cloned() {
        let status = StatusCode::from_u16(status).unwrap();
        return (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    if let Some(digest) = path.strip_prefix("/cdn/") {
        let blob = state.blobs.lock().unwrap().get(digest).cloned();
        return match blob {
            Some(b) => b.into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }

    let Some(rest) = path.strip_prefix("/v2/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(base) = state.redirect_all.lock().unwrap().clone() {
        return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, format!("{base}{path}"))])
            .into_response();
    }
    let realm = state.realm.lock().unwrap().clone().unwrap_or_else(|| format!("http://{addr}/token"));
    let (repo, kind, reference) = if let Some((r, x)) = rest.rsplit_once("/manifests/") {
        (r.to_owned(), "manifests", x.to_owned())
    } else if let Some((r, x)) = rest.rsplit_once("/blobs/") {
        (r.to_owned(), "blobs", x.to_owned())
    } else if let Some(r) = rest.strip_suffix("/tags/list") {
        (r.to_owned(), "tags", String::new())
    } else if let Some((r, x)) = rest.rsplit_once("/referrers/") {
        (r.to_owned(), "referrers", x.to_owned())
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };

    let mut basic_challenge = false;
    {
        let auth = state.auth.lock().unwrap();
        if auth.bearer {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned);
            match presented {
                None => return challenge(&realm, &repo, None),
                Some(t) if !auth.tokens.contains(&t) => {
                    return challenge(&realm, &repo, Some("invalid_token"))
                }
                Some(_) => {}
            }
        } else if let Some((u, p)) = &auth.basic {
            basic_challenge = !basic_ok(&headers, u, p);
        }
    }
    if basic_challenge {
        let delay = *state.challenge_delay.lock().unwrap();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, r#"Basic realm="fake""#)], "")
            .into_response();
    }

    match kind {
        "tags" => {
            let query = parts.uri.query().unwrap_or("");
            let mut r = (
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({"name": repo, "tags": ["1"]}).to_string(),
            )
                .into_response();
            if query.contains("n=1") && !query.contains("last=") {
                let next = format!("</v2/{repo}/tags/list?n=1&last=1>; rel=\"next\"");
                r.headers_mut().insert(header::LINK, next.parse().unwrap());
            }
            r
        }
        "referrers" => {
            if let Some(s) = *state.referrers_status.lock().unwrap() {
                return StatusCode::from_u16(s).unwrap().into_response();
            }
            let empty =
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
            let body =
                state.referrers.lock().unwrap().get(&reference).cloned().unwrap_or_else(|| empty.into());
            let mut r =
                ([(header::CONTENT_TYPE, "application/vnd.oci.image.index.v1+json")], body).into_response();
            if parts.uri.query().unwrap_or("").contains("artifactType=") {
                r.headers_mut().insert("oci-filters-applied", "artifactType".parse().unwrap());
            }
            r
        }
        "manifests" => {
            let delay = *state.manifest_delay.lock().unwrap();
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(s) = *state.manifest_status.lock().unwrap() {
                let mut r = (StatusCode::from_u16(s).unwrap(), "{\"errors\":[]}").into_response();
                if s == 429 {
                    r.headers_mut().insert(header::RETRY_AFTER, "7".parse().unwrap());
                }
                return r;
            }
            if let Some(Fault::Status(s)) = state.faults.lock().unwrap().get(&reference).cloned() {
                return (StatusCode::from_u16(s).unwrap(), "{\"errors\":[]}").into_response();
            }
            let found = state.manifests.lock().unwrap().get(&format!("{repo}:{reference}")).cloned();
            let Some((media_type, bytes)) = found else {
                return (StatusCode::NOT_FOUND, "{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}")
                    .into_response();
            };
            let d = Digest::of(&bytes);
            let body = if parts.method == Method::HEAD { Body::empty() } else { Body::from(bytes.clone()) };
            let mut r = Response::new(body);
            r.headers_mut().insert(header::CONTENT_TYPE, media_type.parse().unwrap());
            r.headers_mut().insert(header::CONTENT_LENGTH, bytes.len().into());
            r.headers_mut().insert("docker-content-digest", d.as_str().parse().unwrap());
            r
        }
        _ => {
            let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            blob_response(&state, &parts.method, &reference, range.as_deref())
        }
    }
}

fn blob_response(state: &FakeState, method: &Method, digest: &str, range: Option<&str>) -> Response {
    let fault = state.faults.lock().unwrap().get(digest).cloned();
    let Some(bytes) = state.blobs.lock().unwrap().get(digest).cloned() else {
        return (StatusCode::NOT_FOUND, "{\"errors\":[{\"code\":\"BLOB_UNKNOWN\"}]}").into_response();
    };
    let len = bytes.len();
    if method == Method::GET {
        let n = {
            let mut gets = state.gets.lock().unwrap();
            let n = gets.entry(digest.to_owned()).or_default();
            *n += 1;
            *n
        };
        if let Some(Fault::CutOnce { at, honour_range }) = fault {
            if n == 1 {
                let items: Vec<Result<Bytes, std::io::Error>> =
                    vec![Ok(bytes.slice(..at)), Err(std::io::Error::other("cut"))];
                let mut r = Response::new(Body::from_stream(futures::stream::iter(items)));
                r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
                return r;
            }
            let from = range.and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok());
            if let (Some(from), true) = (from, honour_range) {
                let mut r = Response::new(Body::from(bytes.slice(from..)));
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                r.headers_mut().insert(header::CONTENT_LENGTH, (len - from).into());
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    format!("bytes {from}-{}/{len}", len - 1).parse().unwrap(),
                );
                return r;
            }
            return Response::new(Body::from(bytes));
        }
    }
    // A closed range `bytes=a-b` (or a suffix, `bytes=-n`) of a healthy or slow blob: a 206
    // at once (an open one, `bytes=a-`, is a resume: only `CutOnce` honours it).
    let closed = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| match a {
            "" => b.parse::<usize>().ok().filter(|&n| n > 0).map(|n| (len.saturating_sub(n), len - 1)),
            a => Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)),
        })
        .filter(|&(a, b)| a <= b && b < len);
    let ranged_fault = matches!(
        fault,
        None | Some(Fault::Slow { .. })
            | Some(Fault::SlowWrongRange { .. })
            | Some(Fault::SlowCutRanges { .. })
    );
    if let (true, Some((a, b)), true) = (method == Method::GET, closed, ranged_fault) {
        if let Some(Fault::SlowCutRanges { .. }) = fault {
            let half = bytes.slice(a..a + (b + 1 - a) / 2);
            let items: Vec<Result<Bytes, std::io::Error>> = vec![Ok(half), Err(std::io::Error::other("cut"))];
            let mut r = Response::new(Body::from_stream(futures::stream::iter(items)));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut().insert(header::CONTENT_RANGE, format!("bytes {a}-{b}/{len}").parse().unwrap());
            r.headers_mut().insert(header::CONTENT_LENGTH, (b + 1 - a).into());
            return r;
        }
        let shift = usize::from(matches!(fault, Some(Fault::SlowWrongRange { .. })));
        let mut r = Response::new(Body::from(bytes.slice(a..=b)));
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        let cr = format!("bytes {}-{}/{len}", a + shift, b + shift);
        r.headers_mut().insert(header::CONTENT_RANGE, cr.parse().unwrap());
        return r;
    }
    let fault = match fault {
        Some(
            Fault::SlowWrongRange { chunk, delay }
            | Fault::SlowNoRanges { chunk, delay }
            | Fault::SlowCutRanges { chunk, delay },
        ) => Some(Fault::Slow { chunk, delay }),
        other => other,
    };
    if let (false, Some(Fault::NoLength)) = (method == Method::HEAD, &fault) {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            bytes.chunks(64 << 10).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let paced = futures::StreamExt::then(futures::stream::iter(chunks), |c| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            c
        });
        return Response::new(Body::from_stream(paced));
    }
    if let (false, Some(Fault::Announce(n))) = (method == Method::HEAD, &fault) {
        let mut r = Response::new(Body::from(bytes));
        r.headers_mut().insert(header::CONTENT_LENGTH, (*n).into());
        return r;
    }
    if let (false, Some(Fault::Trickle { chunk, delay })) = (method == Method::HEAD, fault.clone()) {
        let stream = futures::stream::unfold(0usize, move |pos| {
            let bytes = bytes.clone();
            async move {
                if pos >= bytes.len() {
                    return None;
                }
                tokio::time::sleep(delay).await;
                let end = (pos + chunk).min(bytes.len());
                Some((Ok::<_, std::io::Error>(bytes.slice(pos..end)), end))
            }
        });
        return Response::new(Body::from_stream(stream));
    }
    let body = match (method, fault) {
        (&Method::HEAD, _) => Body::empty(),
        (_, None) => Body::from(bytes),
        (_, Some(Fault::Corrupt)) => {
            let mut v = bytes.to_vec();
            v[len / 2] ^= 0xff;
            Body::from(v)
        }
        (_, Some(Fault::Truncate)) => {
            let half = bytes.slice(..len / 2);
            let items: Vec<Result<Bytes, std::io::Error>> = vec![Ok(half), Err(std::io::Error::other("cut"))];
            Body::from_stream(futures::stream::iter(items))
        }
        (_, Some(Fault::Slow { chunk, delay })) => {
            let now = state.sending.fetch_add(1, Ordering::SeqCst) + 1;
            state.most_sending.fetch_max(now, Ordering::SeqCst);
            let sending = Arc::new(Sending(state.sending.clone()));
            let stream = futures::stream::unfold(0usize, move |pos| {
                let (bytes, _sending) = (bytes.clone(), sending.clone());
                async move {
                    if pos >= bytes.len() {
                        return None;
                    }
                    if pos > 0 {
                        tokio::time::sleep(delay).await;
                    }
                    let end = (pos + chunk).min(bytes.len());
                    Some((Ok::<_, std::io::Error>(bytes.slice(pos..end)), end))
                }
            });
            Body::from_stream(stream)
        }
        (_, Some(Fault::NoLength))
        | (_, Some(Fault::CutOnce { .. }))
        | (_, Some(Fault::Announce(_)))
        | (_, Some(Fault::Trickle { .. }))
        | (
            _,
            Some(Fault::SlowWrongRange { .. } | Fault::SlowNoRanges { .. } | Fault::SlowCutRanges { .. }),
        ) => unreachable!("answered above"),
        (_, Some(Fault::Stall)) => {
            let half = futures::stream::iter([Ok::<_, std::io::Error>(bytes.slice(..len / 2))]);
            let never = futures::stream::pending();
            Body::from_stream(futures::StreamExt::chain(half, never))
        }
        (_, Some(Fault::Status(s))) => return StatusCode::from_u16(s).unwrap().into_response(),
        (_, Some(Fault::RedirectTo(other))) => {
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, format!("http://{other}/cdn/{digest}"))],
            )
                .into_response()
        }
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
    r.headers_mut().insert(header::CONTENT_TYPE, "application/octet-stream".parse().unwrap());
    r
}

/// A berth configuration for tests: loopback, free ports, `registries` as (host, endpoint).
pub fn config(dir: &std::path::Path, registries: &[(&str, &str)], extra: &str) -> Config {
    let mut text = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        default_registry = "{}"
        [storage]
        dir = "{}"
        memory_capacity = "64MiB"
        memory_max_object = "1MiB"
        [tags]
        ttl = "1h"
        "#,
        registries[0].0,
        dir.display()
    );
    for (host, endpoint) in registries {
        text.push_str(&format!(
            "[[registry]]\nhost = \"{host}\"\nendpoint = \"{endpoint}\"\nconnect_timeout = \"1s\"\nread_timeout = \"3s\"\n{extra}\n"
        ));
    }
    Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// berth running in-process against one fake upstream, as registry "docker.io".
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub upstream: Fake,
    pub berth: berth::Server,
    pub client: reqwest::Client,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with("", |_| {}).await
    }

    /// `extra` is appended to the registry table; `tweak` edits the parsed config.
    pub async fn start_with(extra: &str, tweak: impl FnOnce(&mut Config)) -> Harness {
        let upstream = Fake::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), &[("docker.io", &upstream.url())], extra);
        tweak(&mut cfg);
        let berth = berth::Server::start(&cfg).await.unwrap();
        Harness { dir, upstream, berth, client: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.berth.registry_addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// The admin listener's JSON answer at `path` (`/api/v1/cache`, say).
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let url = format!("http://{}{path}", self.berth.admin_addr);
        self.client.get(url).send().await.unwrap().json().await.unwrap()
    }

    pub fn blob_path(repo: &str, d: &Digest) -> String {
        format!("/v2/{repo}/blobs/{d}")
    }

    /// Waits until no fill is in flight (publishing to disk follows the clients' last byte).
    pub async fn settle(&self) {
        for _ in 0..500 {
            if self.berth.probe().fills_in_flight() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fills still in flight");
    }

    /// Files in the disk tier's blob folder.
    pub fn stored_blobs(&self) -> Vec<String> {
        let root = self.dir.path().join("v1/blobs/sha256");
        let mut out = Vec::new();
        for sub in std::fs::read_dir(root).unwrap() {
            for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
                out.push(f.unwrap().file_name().to_string_lossy().into_owned());
            }
        }
        out
    }

    pub fn temp_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("v1/tmp")).unwrap().count()
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes_of(len: usize, seed: u8) -> Bytes {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// The digest of `bytes`.
pub fn digest_of(bytes: impl AsRef<[u8]>) -> Digest {
    Digest::of(bytes.as_ref())
}

/// An upstream that answers every request with `head` (status line and headers, without the
/// blank line) and `body`, then closes: for answers hyper would refuse to send, such as a
/// Content-Length that does not match the body.
pub async fn raw_upstream(head: &str, body: Bytes) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let head = format!("{head}\r\nConnection: close\r\n\r\n");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (head, body) = (head.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// berth in-process with "docker.io" at `endpoint` (`tweak` edits the parsed config).
pub async fn berth_for(
    endpoint: &str,
    tweak: impl FnOnce(&mut Config),
) -> (tempfile::TempDir, berth::Server) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &[("docker.io", endpoint)], "");
    tweak(&mut cfg);
    let berth = berth::Server::start(&cfg).await.unwrap();
    (dir, berth)
}
