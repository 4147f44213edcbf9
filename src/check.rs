//! The one step that reads what a configuration names: the TLS certificate and key, the
//! `[auth]` files, every `ca_file` and every secret (`<key>_file`, `<key>_env`). `config` only
//! parses and validates syntax; `berth check-config` and `berth serve` both run this step,
//! once, and `serve` starts from what it loaded: a configuration whose secrets and extra roots
//! are in memory, and the certificate and auth files.

use std::path::Path;
use std::sync::Arc;

use crate::api::{auth::ClientAuth, tls::Certs};
use crate::config::{CaFile, Config, ConfigError, SecretSource};
use crate::error::Error;
use crate::source::outbound::extra_roots;

/// A checked configuration with what it names loaded: the only thing a server starts from.
pub struct Loaded {
    /// Its secrets are `SecretSource::Value`s and its `ca_file`s hold their roots.
    pub(crate) config: Config,
    pub(crate) certs: Option<Arc<Certs>>,
    pub(crate) auth: Option<Arc<ClientAuth>>,
}

impl Loaded {
    /// The configuration, with its secrets read.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Parses the file at `path` and loads what it names.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    load(&Config::load(path)?)
}

/// Parses `text` and loads what it names.
pub fn parse(text: &str) -> Result<Loaded, ConfigError> {
    load(&Config::parse(text)?)
}

/// Loads what `config` names; every one that fails is named in the error.
pub fn load(config: &Config) -> Result<Loaded, ConfigError> {
    let mut problems = Vec::new();
    let mut config = config.clone();
    let certs = config.server.tls.as_ref().and_then(|(cert, key)| {
        Certs::load(cert, key).map_err(|e| problems.push(format!("server.tls: {}", cause(e)))).ok()
    });
    let auth = config.auth.as_ref().and_then(|a| {
        ClientAuth::load(a.htpasswd_file.as_deref(), a.tokens_file.as_deref())
            .map_err(|e| problems.push(format!("auth: {}", cause(e))))
            .ok()
    });
    if let Some(token) = &mut config.server.admin_token {
        read_secret("server.admin_token", token, str::trim, &mut problems);
    }
    for (i, r) in config.registries.iter_mut().enumerate() {
        let at = format!("registry[{i}] ({})", r.host);
        if let Some(ca) = &mut r.ca_file {
            read_roots(&format!("{at}: ca_file"), ca, &mut problems);
        }
        if let Some(password) = &mut r.password {
            // A password file's last line break is not the password's; a variable is as set.
            let trim: fn(&str) -> &str = match password {
                SecretSource::File(_) => line_break_trimmed,
                _ => as_set,
            };
            read_secret(&format!("{at}: password"), password, trim, &mut problems);
        }
    }
    if let Some(peers) = &mut config.peers {
        if let Some(ca) = &mut peers.ca_file {
            read_roots("peers.ca_file", ca, &mut problems);
        }
        read_secret("peers.token", &mut peers.token, str::trim, &mut problems);
    }
    if let Some(bucket) = &mut config.bucket {
        if let Some(ca) = &mut bucket.ca_file {
            read_roots("bucket.ca_file", ca, &mut problems);
        }
        for (key, secret) in [
            ("bucket.access_key_id", &mut bucket.access_key_id),
            ("bucket.secret_access_key", &mut bucket.secret_access_key),
        ] {
            if let Some(secret) = secret {
                read_secret(key, secret, str::trim, &mut problems);
            }
        }
    }
    if problems.is_empty() {
        Ok(Loaded { config, certs, auth })
    } else {
        Err(ConfigError(problems))
    }
}

/// Asks the configured bucket once (a LIST of its prefix), as `check-config` does: Ok without
/// `[bucket]` or when it answers; else what went wrong. `serve` asks too, but starts without
/// a bucket that cannot be reached (it warns, and uses the bucket once it answers).
pub async fn reach_bucket(loaded: &Loaded) -> Result<(), String> {
    let Some(cfg) = &loaded.config.bucket else { return Ok(()) };
    let (reads, _) =
        crate::source::bucket::connect(cfg).map_err(|e| format!("bucket {}: {}", cfg.url, cause(e)))?;
    match crate::source::bucket::probe(reads.as_ref(), cfg).await {
        crate::source::bucket::Probe::Ready => Ok(()),
        crate::source::bucket::Probe::Refused(why) => Err(format!("bucket {} refused: {why}", cfg.url)),
        crate::source::bucket::Probe::Unreachable(why) => {
            Err(format!("bucket {} cannot be reached: {why}", cfg.url))
        }
    }
}

fn line_break_trimmed(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn as_set(s: &str) -> &str {
    s
}

/// Reads `secret` in place (the value replaces where it came from), or names why not.
fn read_secret(key: &str, secret: &mut SecretSource, trim: fn(&str) -> &str, problems: &mut Vec<String>) {
    match secret.read(trim) {
        Ok(value) => *secret = SecretSource::Value(value),
        Err(why) => problems.push(format!("{key}: {why}")),
    }
}

/// Reads the roots of `ca` in place, or names why not.
fn read_roots(key: &str, ca: &mut CaFile, problems: &mut Vec<String>) {
    match extra_roots(&ca.path) {
        Ok(roots) => ca.roots = Some(Arc::new(roots)),
        Err(e) => problems.push(format!("{key} {}", cause(e))),
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
        let loaded = parse(&with_ca_file(&ca)).ok().unwrap();
        // Read once, by the check: the client builds from the roots in memory.
        std::fs::remove_file(&ca).unwrap();
        let peers = loaded.config.peers.unwrap();
        assert!(crate::source::peers::Peers::new(&peers).is_ok());
        // A configuration the check did not load builds no client with its ca_file.
        let unloaded = crate::config::Config::parse(&with_ca_file(&ca)).unwrap().peers.unwrap();
        let err = crate::source::peers::Peers::new(&unloaded).err().unwrap().to_string();
        assert!(err.contains("used before check::load read it"), "{err}");
    }

    #[test]
    fn secrets_are_read_by_the_check_not_by_the_config_pass() {
        let text = format!(
            "[server]\nadmin_listen = \"0.0.0.0:5001\"\nadmin_token_env = \"BERTH_TEST_CHECK_ADMIN\"\n{BASE}"
        );
        std::env::remove_var("BERTH_TEST_CHECK_ADMIN");
        let parsed = Config::parse(&text).unwrap();
        assert_eq!(parsed.server.admin_token, Some(SecretSource::Env("BERTH_TEST_CHECK_ADMIN".into())));
        let err = load(&parsed).err().unwrap().to_string();
        assert!(err.contains("server.admin_token: variable BERTH_TEST_CHECK_ADMIN is not set"), "{err}");
        std::env::set_var("BERTH_TEST_CHECK_ADMIN", "  t0k\n");
        let loaded = load(&parsed).ok().unwrap();
        assert_eq!(loaded.config.server.admin_token.as_ref().unwrap().loaded().expose(), "t0k");
        std::env::set_var("BERTH_TEST_CHECK_ADMIN", " \n");
        let err = load(&parsed).err().unwrap().to_string();
        assert!(err.contains("server.admin_token: variable BERTH_TEST_CHECK_ADMIN is empty"), "{err}");
    }

    #[test]
    fn a_registry_password_is_read_by_the_check_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "hunter2 \n").unwrap();
        let text = format!(
            "[[registry]]\nhost = \"docker.io\"\nendpoint = \"https://registry-1.docker.io\"\nusername = \"bob\"\npassword_file = {:?}\n",
            file.display().to_string()
        );
        let loaded = parse(&text).ok().unwrap();
        let password = loaded.config.registries[0].password.as_ref().unwrap().loaded();
        assert_eq!(password.expose(), "hunter2 ", "a password file loses only its line break");
        assert!(!format!("{:?}", loaded.config).contains("hunter2"));
        std::fs::remove_file(&file).unwrap();
        let err = parse(&text).err().unwrap().to_string();
        assert!(err.contains("registry[0] (docker.io): password: file"), "{err}");
    }
}
