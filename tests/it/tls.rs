//! Upstream TLS is always verified: an unknown certificate is refused unless `ca_file` names
//! its root.

use crate::common;

use std::sync::Arc;

use common::{bytes_of, config, Fake};
use http::StatusCode;
use tokio_rustls::rustls;

/// A TLS front for `backend` with a self-signed certificate for "localhost"; returns its port
/// and the certificate in PEM.
async fn tls_front(backend: std::net::SocketAddr) -> (u16, String) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, cert.pem())
}

#[tokio::test]
async fn unknown_certificate_is_refused_and_ca_file_admits_it() {
    let upstream = Fake::start().await;
    upstream.put_image("library/app", "1", &[bytes_of(100, 1)]);
    let (port, pem) = tls_front(upstream.addr).await;
    let endpoint = format!("https://localhost:{port}");
    let client = reqwest::Client::new();

    // No ca_file: the self-signed certificate is not trusted.
    let dir = tempfile::tempdir().unwrap();
    let berth = berth::Server::start(&config(dir.path(), &[("docker.io", &endpoint)], "")).await.unwrap();
    let r = client
        .get(format!("http://{}/v2/library/app/manifests/1", berth.registry_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = r.text().await.unwrap();
    assert!(body.to_lowercase().contains("certificate"), "the error should say why: {body}");
    assert!(upstream.log().is_empty(), "a request went through an unverified TLS connection");
    berth.stop().await.unwrap();

    // With its root in ca_file: verified and served.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let extra = format!("ca_file = \"{}\"", ca.display());
    let berth =
        berth::Server::start(&config(dir2.path(), &[("docker.io", &endpoint)], &extra)).await.unwrap();
    let r = client
        .get(format!("http://{}/v2/library/app/manifests/1", berth.registry_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.log().len(), 1);
    berth.stop().await.unwrap();
}
