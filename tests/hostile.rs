//! The trust boundary, tried as an attacker would: one test per attack, each named for it.
//! Requests that claim trust they do not have, upstreams that redirect inward or lie about
//! lengths, clients that hold connections open, and registries that try to read each other's
//! content. Each test fails if the guard it names is missing.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::Harness;

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
