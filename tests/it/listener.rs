//! The registry listener: TLS with a certificate reloaded while serving, and clients that
//! stop reading dropped after `client_idle_timeout` while slow and fast ones are served.

use crate::common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{bytes_of, Harness};
use http::StatusCode;

const REPO: &str = "library/app";

/// A self-signed certificate for localhost: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (cert.pem(), key_pair.serialize_pem())
}

fn trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_and_a_reload_changes_the_certificate_for_new_connections_only() {
    let files = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    let (first, first_key) = self_signed();
    std::fs::write(&cert_file, &first).unwrap();
    std::fs::write(&key_file, &first_key).unwrap();
    let h = Harness::start_with("", |c| c.server.tls = Some((cert_file.clone(), key_file.clone()))).await;
    let url = format!("https://localhost:{}/v2/", h.berth.registry_addr.port());

    let old = trusting(&first);
    assert_eq!(old.get(&url).send().await.unwrap().status(), StatusCode::OK);
    assert!(reqwest::get(url.replace("https", "http")).await.is_err(), "plain HTTP on a TLS listener");

    let (second, second_key) = self_signed();
    std::fs::write(&cert_file, &second).unwrap();
    std::fs::write(&key_file, &second_key).unwrap();
    h.berth.reload().unwrap();
    // The connection opened before the reload goes on; new ones get the new certificate.
    assert_eq!(old.get(&url).send().await.unwrap().status(), StatusCode::OK);
    assert!(trusting(&first).get(&url).send().await.is_err(), "a new connection got the old certificate");
    assert_eq!(trusting(&second).get(&url).send().await.unwrap().status(), StatusCode::OK);

    // A reload of broken files fails and keeps the certificate in use.
    std::fs::write(&cert_file, "not a certificate").unwrap();
    assert!(h.berth.reload().is_err());
    assert_eq!(trusting(&second).get(&url).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn mismatched_tls_files_are_a_config_error() {
    let files = tempfile::tempdir().unwrap();
    let (cert, _) = self_signed();
    let (_, other_key) = self_signed();
    std::fs::write(files.path().join("tls.crt"), cert).unwrap();
    std::fs::write(files.path().join("tls.key"), other_key).unwrap();
    let text = format!(
        "[server]\ntls_cert_file = \"{0}/tls.crt\"\ntls_key_file = \"{0}/tls.key\"\n\
         [[registry]]\nhost = \"docker.io\"\nendpoint = \"https://registry-1.docker.io\"\n",
        files.path().display()
    );
    assert!(berth::config::Config::parse(&text).is_ok(), "the syntax is right");
    let err = berth::check::parse(&text).err().unwrap().to_string();
    assert!(err.contains("server.tls"), "{err}");
}

/// Sends a GET for `path` on a raw connection and reads nothing.
fn stalled_get(addr: std::net::SocketAddr, path: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: berth\r\n\r\n").unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_is_dropped_and_others_are_not() {
    let h = Harness::start_with("", |c| c.server.client_idle_timeout = Duration::from_secs(1)).await;
    let blob = bytes_of(48 << 20, 7);
    let d = h.upstream.add_blob(blob.clone());
    let path = Harness::blob_path(REPO, &d);
    assert!(h.get(&path).await.bytes().await.unwrap() == blob); // cached now
    h.settle().await;

    let stalled = stalled_get(h.berth.registry_addr, &path);
    // A slow reader: a few KiB at a time, well under the idle timeout apart.
    let addr = h.berth.registry_addr;
    let slow_path = path.clone();
    let slow = std::thread::spawn(move || {
        let mut s = stalled_get(addr, &slow_path);
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            if s.read_exact(&mut buf).is_err() {
                return Err(got);
            }
            got += buf.len();
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(got)
    });
    // While the stalled client holds its body, the blob counts as being read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.berth.probe().is_busy(&d));
    // A fast client of the same blob finishes meanwhile.
    assert!(h.get(&path).await.bytes().await.unwrap() == blob);

    let slow = tokio::task::spawn_blocking(move || slow.join().unwrap()).await.unwrap();
    assert!(slow.is_ok(), "the slow reader was cut after {:?} bytes", slow.err());
    // The stalled one was dropped: its body (and read guard) is gone, its socket closed.
    let mut released = false;
    for _ in 0..50 {
        if !h.berth.probe().is_busy(&d) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the stalled client's body is still held");
    let mut stalled = stalled;
    stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    let read = stalled.read_to_end(&mut sink);
    assert!(read.is_err() || sink.len() < blob.len(), "the stalled client got the whole blob");
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let h = Harness::start().await;
    let big = "x".repeat(berth::test_util::MAX_HEAD + 1);
    let refused = h.client.get(h.url("/v2/")).header("x-filler", &big).send().await;
    match refused {
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(e.is_request() || e.is_connect(), "{e}"),
    }
    let fine = h.client.get(h.url("/v2/")).header("x-filler", "x".repeat(8 * 1024)).send().await.unwrap();
    assert_eq!(fine.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_client_does_not_hold_back_the_fill_or_a_fast_client() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let h = Harness::start().await;
    let blob = bytes_of(24 << 20, 9);
    let d = h.upstream.add_blob(blob.clone());
    h.upstream.fault(&d, common::Fault::Slow { chunk: 1 << 20, delay: Duration::from_millis(20) });
    let path = Harness::blob_path(REPO, &d);

    // About 1 MB/s: 64 KiB every 60 ms.
    let read = Arc::new(AtomicUsize::new(0));
    let (addr, slow_path, slow_read) = (h.berth.registry_addr, path.clone(), read.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow_stop = stop.clone();
    let slow = std::thread::spawn(move || {
        let mut s = stalled_get(addr, &slow_path);
        let mut buf = vec![0u8; 64 << 10];
        while !slow_stop.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => slow_read.fetch_add(n, Ordering::Relaxed),
            };
            std::thread::sleep(Duration::from_millis(60));
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.get(&path).await.bytes().await.unwrap() == blob, "the fast client's body differs");
    h.settle().await; // the fill is done and published
    let slow_had = read.load(Ordering::Relaxed);
    assert!(slow_had < blob.len() / 2, "the slow client had read {slow_had} bytes: it was not slow");
    assert!(h.stored_blobs().contains(&d.hex().to_owned()), "the fill waited for the slow client");
    stop.store(true, Ordering::Relaxed);
    slow.join().unwrap();
}
