//! The one step that reads what a configuration names on disk: the TLS certificate and key,
//! the `[auth]` files, and every `ca_file`. `config` only parses and validates syntax;
//! `berth check-config` and `berth serve` both run this step once, and `serve` starts with
//! the certificate and auth files it loaded. A `ca_file` is only proven readable here: it is
//! read again where its client is built (`source::outbound`).

use std::path::Path;

use crate::api::{auth::ClientAuth, tls::Certs};
use crate::config::{Config, ConfigError};
use crate::error::Error;
use crate::source::outbound::extra_roots;

/// What a checked configuration loaded from disk.
pub struct Loaded {
    pub(crate) certs: Option<std::sync::Arc<Certs>>,
    pub(crate) auth: Option<std::sync::Arc<ClientAuth>>,
}

/// Parses the file at `path` and loads what it names.
pub fn load_file(path: &Path) -> Result<(Config, Loaded), ConfigError> {
    let config = Config::load(path)?;
    let loaded = load(&config)?;
    Ok((config, loaded))
}

/// Parses `text` and loads what it names.
pub fn parse(text: &str) -> Result<(Config, Loaded), ConfigError> {
    let config = Config::parse(text)?;
    let loaded = load(&config)?;
    Ok((config, loaded))
}

/// Loads the files `config` names; every one that fails is named in the error.
pub(crate) fn load(config: &Config) -> Result<Loaded, ConfigError> {
    let mut problems = Vec::new();
    let certs = config.server.tls.as_ref().and_then(|(cert, key)| {
        Certs::load(cert, key).map_err(|e| problems.push(format!("server.tls: {}", cause(e)))).ok()
    });
    let auth = config.auth.as_ref().and_then(|a| {
        ClientAuth::load(a.htpasswd_file.as_deref(), a.tokens_file.as_deref())
            .map_err(|e| problems.push(format!("auth: {}", cause(e))))
            .ok()
    });
    for (i, r) in config.registries.iter().enumerate() {
        if let Some(ca) = &r.ca_file {
            if let Err(e) = extra_roots(ca) {
                problems.push(format!("registry[{i}] ({}): ca_file {}", r.host, cause(e)));
            }
        }
    }
    if let Some(ca) = config.peers.as_ref().and_then(|p| p.ca_file.as_ref()) {
        if let Err(e) = extra_roots(ca) {
            problems.push(format!("peers.ca_file {}", cause(e)));
        }
    }
    if problems.is_empty() {
        Ok(Loaded { certs, auth })
    } else {
        Err(ConfigError(problems))
    }
}

/// What went wrong, without the "internal error" a loader's error carries.
fn cause(e: Error) -> String {
    e.detail()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[[registry]]\nhost = \"docker.io\"\nendpoint = \"https://registry-1.docker.io\"\n";

    fn with_ca_file(path: &std::path::Path) -> String {
        std::env::set_var("BERTH_TEST_CHECK_PEER_TOKEN", "s3cret");
        format!(
            "[peers]\nself = \"https://10.0.0.1\"\ndns = \"berth-peers:443\"\nca_file = {:?}\ntoken_env = \"BERTH_TEST_CHECK_PEER_TOKEN\"\n{BASE}",
            path.display().to_string()
        )
    }

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_root_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = parse(&with_ca_file(&missing)).err().unwrap().to_string();
        assert!(err.contains(&format!("peers.ca_file {}:", missing.display())), "{err}");

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let err = parse(&with_ca_file(&not_pem)).err().unwrap().to_string();
        assert!(err.contains(&format!("peers.ca_file {}: no certificate", not_pem.display())), "{err}");

        let not_der = dir.path().join("not-der.pem");
        std::fs::write(&not_der, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let err = parse(&with_ca_file(&not_der)).err().unwrap().to_string();
        assert!(err.contains(&format!("peers.ca_file {}:", not_der.display())), "{err}");
    }

    #[test]
    fn a_ca_file_with_a_root_builds_the_peer_client() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let root = rcgen::generate_simple_self_signed(vec!["berth-peer".into()]).unwrap();
        std::fs::write(&ca, root.cert.pem()).unwrap();
        let (config, _) = parse(&with_ca_file(&ca)).ok().unwrap();
        let peers = config.peers.unwrap();
        assert!(crate::source::peers::Peers::new(&peers).is_ok());
    }
}
