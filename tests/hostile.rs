//! The trust boundary, tried as an attacker would: one test per attack, each named for it.
//! Requests that claim trust they do not have, upstreams that redirect inward or lie about
//! lengths, clients that hold connections open, and registries that try to read each other's
//! content. Each test fails if the guard it names is missing.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{bytes_of, Fault, Harness};

/// Reads (and discards) until the server closes the connection; `None` if it is still open
/// after `bound`, else how long it took.
async fn closed_within(s: &mut TcpStream, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let until_closed = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, until_closed).await.ok().map(|()| started.elapsed())
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_head_timeout() {
    let h = Harness::start_with("", |c| c.server.head_timeout = Duration::from_secs(1)).await;
    let mut silent = TcpStream::connect(h.berth.registry_addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5)).await;
    let took = took.expect("a connection that sent nothing is still open after 5 s");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the head timeout");
}

/// The client preface of HTTP/2 over cleartext, and an empty SETTINGS frame.
const H2C_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

#[tokio::test]
async fn an_h2c_connection_that_sends_only_its_preface_is_closed_when_idle() {
    let h = Harness::start_with("", |c| c.server.idle_timeout = Duration::from_secs(1)).await;
    let mut s = TcpStream::connect(h.berth.registry_addr).await.unwrap();
    s.write_all(H2C_PREFACE).await.unwrap();
    // The server's SETTINGS, PING and GOAWAY go unanswered.
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    let took = took.expect("an HTTP/2 connection with no request is still open after 5 s");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the idle timeout");
}

#[tokio::test]
async fn an_h2c_peer_that_does_not_answer_pings_is_dropped() {
    let h = Harness::start_with("", |c| {
        c.server.client_idle_timeout = Duration::from_secs(1);
        c.server.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let mut s = TcpStream::connect(h.berth.registry_addr).await.unwrap();
    s.write_all(H2C_PREFACE).await.unwrap();
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(took.is_some(), "a peer that answers no ping is still connected after 5 s");
}

/// Sends a GET for `path` on an open HTTP/1.1 connection and reads the answer: status, body.
async fn get_on(s: &mut TcpStream, path: &str) -> (u16, Vec<u8>) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: berth\r\n\r\n").as_bytes()).await.unwrap();
    read_response(s).await
}

async fn read_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.expect("the connection closed before a response head"));
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length = head.lines().find_map(|l| {
        let l = l.to_ascii_lowercase();
        l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
    });
    let mut body = vec![0; length.unwrap_or(0)];
    s.read_exact(&mut body).await.unwrap();
    (status, body)
}

#[tokio::test]
async fn connections_past_max_connections_wait_and_open_ones_keep_working() {
    let h = Harness::start_with("", |c| c.server.max_connections = 2).await;
    let addr = h.berth.registry_addr;
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut first, "/v2/").await.0, 200);
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut second, "/v2/").await.0, 200);

    // The kernel completes the third handshake; berth does not take the connection yet.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n").await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(800), third.read_u8()).await;
    assert!(early.is_err(), "a connection past max_connections was served: {early:?}");

    assert_eq!(get_on(&mut first, "/v2/").await.0, 200, "an open connection stopped working");
    assert_eq!(get_on(&mut second, "/v2/").await.0, 200, "an open connection stopped working");
    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(5), read_response(&mut third)).await;
    assert_eq!(answered.expect("the waiting connection was not served once one closed").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_and_a_request_queued_for_a_fill_are_not_idle() {
    let h = Harness::start_with("", |c| {
        c.server.idle_timeout = Duration::from_secs(1);
        c.storage.max_fills = 1;
    })
    .await;
    // About 3.5 s of body: more than twice the idle timeout.
    let slow = bytes_of(36 << 10, 1);
    let slow_digest = h.upstream.add_blob(slow.clone());
    h.upstream.fault(&slow_digest, Fault::Slow { chunk: 1 << 10, delay: Duration::from_millis(100) });
    let queued = bytes_of(1 << 10, 2);
    let queued_digest = h.upstream.add_blob(queued.clone());

    let mut streaming = TcpStream::connect(h.berth.registry_addr).await.unwrap();
    let started = Instant::now();
    let slow_path = Harness::blob_path("library/app", &slow_digest);
    let streamed = tokio::spawn(async move {
        let answer = get_on(&mut streaming, &slow_path).await;
        (answer, streaming)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Over HTTP/2, waiting its turn behind the slow fill (the only one allowed).
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let asked = Instant::now();
    let waited = h2.get(h.url(&Harness::blob_path("library/app", &queued_digest))).send().await.unwrap();
    assert_eq!(waited.version(), http::Version::HTTP_2);
    assert!(waited.bytes().await.unwrap() == queued, "the queued request's body differs");
    let waited = asked.elapsed();
    assert!(waited > Duration::from_secs(2), "the request did not wait its turn: {waited:?}");

    let ((status, body), mut streaming) = streamed.await.unwrap();
    assert!(started.elapsed() > Duration::from_secs(2), "the body was not slow: {:?}", started.elapsed());
    assert_eq!(status, 200);
    assert!(body == slow, "the slow body differs");
    // The connection is still open and kept alive.
    assert_eq!(get_on(&mut streaming, "/v2/").await.0, 200);
}
