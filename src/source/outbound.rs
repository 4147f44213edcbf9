//! The one place that builds the HTTP clients berth talks to upstream registries with, and so
//! owns every outbound connection's policy: TLS roots (system plus `ca_file`, always
//! verified), timeouts, proxies, redirects (never followed by the client: `Upstream` follows
//! them itself, checking each hop), and for a public-only registry the address guard at the
//! resolver and at the connector, with proxy environment variables ignored so that no proxy
//! can reach what the guard refuses.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::RootCertStore;

use super::public::{ConnectGuard, Guard, PublicOnly};
use crate::config::{CaFile, Registry};
use crate::error::{BoxError, Error};

/// The client for `cfg`'s upstream, and its guard when the registry is public-only.
pub(crate) fn client_for(cfg: &Registry) -> Result<(reqwest::Client, Option<Arc<Guard>>), Error> {
    // HTTP/1.1 only: each fill, and each piece of a fill over several connections, gets a
    // connection of its own. Over HTTP/2 they would all share one, which a CDN edge throttles
    // as one and which one slow body holds up for the others.
    let mut builder = base(cfg.connect_timeout, cfg.read_timeout, cfg.ca_file.as_ref())?.http1_only();
    let guard = cfg.public_only.then(|| Arc::new(Guard { exempt: cfg.public_exempt.clone() }));
    if let Some(guard) = &guard {
        builder = builder
            .no_proxy()
            .dns_resolver(Arc::new(PublicOnly))
            .connector_layer(ConnectGuard(guard.clone()));
    }
    Ok((builder.build().map_err(Error::internal)?, guard))
}

/// The client peer requests go out with: the peers' timeouts, the system roots plus
/// `peers.ca_file`, no redirects. Peers are private addresses by nature: no address guard.
pub(crate) fn peer_client(cfg: &crate::config::Peers) -> Result<reqwest::Client, Error> {
    base(cfg.timeout, cfg.read_timeout, cfg.ca_file.as_ref())?.build().map_err(Error::internal)
}

/// The client the bucket is reached with (object_store's S3 client speaks through it): the
/// same policy as every other, for the reqwest object_store is built on. No redirects, no
/// proxy from the environment, `bucket.timeout` to connect and for each read, HTTPS only
/// unless the endpoint is `http://`, the system roots plus `bucket.ca_file`'s.
///
/// With `reads`, each read also within `bucket.timeout`; without (the uploads' client: a read
/// timeout would also bound sending a request's body), the caller bounds each request.
pub(crate) fn bucket_client(
    cfg: &crate::config::Bucket,
    reads: bool,
) -> Result<reqwest_bucket::Client, Error> {
    let https_only = cfg.endpoint.as_ref().is_none_or(|e| e.scheme() == "https");
    let mut builder = reqwest_bucket::Client::builder()
        .redirect(reqwest_bucket::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(cfg.timeout)
        .https_only(https_only)
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &cfg.ca_file {
        let not_loaded = || Error::fault(ca.path.display().to_string(), "used before check::load read it");
        let mut roots = Vec::new();
        for der in ca.roots.as_ref().ok_or_else(not_loaded)?.iter() {
            let root = reqwest_bucket::Certificate::from_der(der)
                .map_err(|e| Error::fault(ca.path.display().to_string(), e))?;
            roots.push(root);
        }
        builder = builder.tls_certs_merge(roots);
    }
    if reads {
        builder = builder.read_timeout(cfg.timeout);
    }
    builder.build().map_err(Error::internal)
}

/// What every outbound client has: no redirects followed by the client, the timeouts, and
/// the system roots plus the roots `check::load` read from `ca_file` (no file is read here).
fn base(
    connect: std::time::Duration,
    read: std::time::Duration,
    ca_file: Option<&CaFile>,
) -> Result<reqwest::ClientBuilder, Error> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect)
        .read_timeout(read)
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca_file {
        let not_loaded = || Error::fault(ca.path.display().to_string(), "used before check::load read it");
        for der in ca.roots.as_ref().ok_or_else(not_loaded)?.iter() {
            let root = reqwest::Certificate::from_der(der)
                .map_err(|e| Error::fault(ca.path.display().to_string(), e))?;
            builder = builder.add_root_certificate(root);
        }
    }
    Ok(builder)
}

/// Reads the certificates of a PEM bundle of extra roots (a `ca_file`), as DER: at least one,
/// each parsed as a trust anchor and as a client root, so that a bundle that would fail the
/// client fails the check first. The error names the file.
pub(crate) fn extra_roots(ca_file: &Path) -> Result<Vec<Vec<u8>>, Error> {
    let bad = |e: BoxError| Error::fault(ca_file.display().to_string(), e);
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| bad(e.into()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.into()))?;
    if ders.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    let unusable =
        |e: tokio_rustls::rustls::Error| Error::fault(format!("{}: not a usable root", ca_file.display()), e);
    ders.iter()
        .map(|der| {
            RootCertStore::empty().add(der.clone()).map_err(unusable)?;
            reqwest::Certificate::from_der(der).map_err(|e| bad(e.into()))?;
            Ok(der.to_vec())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn registry(public_only: bool) -> Registry {
        Registry {
            host: "example.test".into(),
            endpoint: url::Url::parse("https://example.test").unwrap(),
            username: None,
            password: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            public_only,
            public_exempt: Vec::new(),
            max_fills: None,
            min_rate: crate::config::MinRate { bytes_per_sec: 1, window: Duration::from_secs(30) },
        }
    }

    /// A listener that counts the bytes any client sends it.
    async fn listener() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, seen) = (l.local_addr().unwrap(), Arc::new(std::sync::atomic::AtomicUsize::new(0)));
        let counted = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        counted.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn a_public_only_client_writes_nothing_on_a_connection_to_a_private_address() {
        let (addr, seen) = listener().await;
        let (client, _) = client_for(&registry(true)).unwrap();
        // Straight to the client, past every URL check: the connector is the backstop.
        let err = client.get(format!("http://{addr}/v2/")).send().await.unwrap_err();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut refused = false;
        while let Some(c) = cause {
            refused |= c.downcast_ref::<crate::source::public::NotPublic>().is_some();
            cause = c.source();
        }
        assert!(refused, "{err:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0, "a request was written");

        // The same request from a client of a configured registry goes out.
        let (open, _) = client_for(&registry(false)).unwrap();
        let _ =
            tokio::time::timeout(Duration::from_millis(300), open.get(format!("http://{addr}/v2/")).send())
                .await;
        assert!(seen.load(std::sync::atomic::Ordering::SeqCst) > 0);
    }
}
