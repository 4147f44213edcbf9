//! TLS for the registry listener: the certificate and key are read from their files at
//! startup and again on every reload (SIGHUP). A reload swaps the key that new handshakes
//! use; connections already open keep theirs. A reload that fails keeps the old key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::error::{BoxError, Error};

/// The certificate new handshakes present, replaceable while serving.
#[derive(Debug)]
pub(crate) struct Certs {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certs {
    pub(crate) fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Certs>, Error> {
        let current = RwLock::new(Arc::new(read(cert_file, key_file)?));
        Ok(Arc::new(Certs { cert_file: cert_file.to_owned(), key_file: key_file.to_owned(), current }))
    }

    /// Reads the files again; on success new handshakes use them.
    pub(crate) fn reload(&self) -> Result<(), Error> {
        let key = read(&self.cert_file, &self.key_file)?;
        *self.current.write().expect("certs lock") = Arc::new(key);
        tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// A TLS acceptor that asks this for the certificate at every handshake.
    pub(crate) fn acceptor(self: &Arc<Self>) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certs lock").clone())
    }
}

fn read(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, Error> {
    let bad = |path: &Path, e: BoxError| Error::fault(path.display().to_string(), e);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| bad(cert_file, e.into()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert_file, e.into()))?;
    if certs.is_empty() {
        return Err(bad(cert_file, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| bad(key_file, e.into()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| bad(key_file, e.into()))
}
