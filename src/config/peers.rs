//! `[peers]`: the other berth instances this one shares fills with.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{CaFile, Checker, SecretSource};

#[derive(Debug, Clone)]
pub struct Peers {
    /// This instance as its peers reach it (`http://10.0.0.7:5000`): its identity in the
    /// ownership hash, so it must be spelled as the others list it. `${NAME}` in it is
    /// replaced by that environment variable.
    pub self_url: Url,
    /// Peers listed by URL; this instance may be among them.
    pub static_peers: Vec<Url>,
    /// `name:port` whose A/AAAA records are the peers (a Kubernetes headless Service),
    /// resolved again every `dns_interval`. They are reached with the scheme of `self`.
    pub dns: Option<String>,
    pub dns_interval: Duration,
    /// Connect timeout for a peer: past it, the peer is skipped for upstream.
    pub timeout: Duration,
    /// A peer that stops sending for this long is cut, and the fill resumes from upstream.
    pub read_timeout: Duration,
    /// How long a peer that failed is left out of ownership before it is tried again.
    pub backoff: Duration,
    /// Shared secret every peer request carries (required): a request is a peer's only when
    /// it presents this token, and only a peer's request may use the peer API or skip `[auth]`.
    pub token: SecretSource,
    /// A PEM bundle of roots trusted for peers besides the system's; peer TLS is always
    /// verified.
    pub ca_file: Option<CaFile>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawPeers {
    #[serde(rename = "self")]
    self_url: Option<String>,
    #[serde(rename = "static", default)]
    static_peers: Vec<String>,
    dns: Option<String>,
    dns_interval: Option<String>,
    timeout: Option<String>,
    read_timeout: Option<String>,
    backoff: Option<String>,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    ca_file: Option<PathBuf>,
}

pub(super) fn validate(raw: Option<RawPeers>, p: &mut Checker) -> Option<Peers> {
    let raw = raw?;
    let url = |p: &mut Checker, key: &str, v: &str| match Url::parse(v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path() == "/" => Some(u),
        _ => {
            p.0.push(format!("{key} = {v:?}: expected a base URL such as \"http://10.0.0.7:5000\""));
            None
        }
    };
    let self_url = match raw.self_url.as_deref().map(expand_env) {
        Some(Ok(v)) => url(p, "peers.self", &v),
        Some(Err(e)) => {
            p.0.push(format!("peers.self: {e}"));
            None
        }
        None => {
            p.0.push("peers.self is required: this instance's URL as its peers reach it".into());
            None
        }
    };
    let static_peers: Vec<Url> = raw
        .static_peers
        .iter()
        .enumerate()
        .filter_map(|(i, v)| url(p, &format!("peers.static[{i}]"), v))
        .collect();
    if let Some(dns) = &raw.dns {
        let port = dns.rsplit_once(':').and_then(|(h, port)| (!h.is_empty()).then_some(port));
        if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
            p.0.push(format!("peers.dns = {dns:?}: expected name:port"));
        }
    }
    if raw.static_peers.is_empty() && raw.dns.is_none() {
        p.0.push("peers: list the peers in `static` or name them with `dns`".into());
    }
    let dns_interval = p.duration("peers.dns_interval", raw.dns_interval, "30s");
    let timeout = p.duration("peers.timeout", raw.timeout, "200ms");
    let read_timeout = p.duration("peers.read_timeout", raw.read_timeout, "10s");
    let backoff = p.duration("peers.backoff", raw.backoff, "30s");
    let token = p.secret("peers", "token", raw.token_file.as_deref(), raw.token_env.as_deref());
    if raw.token_file.is_none() && raw.token_env.is_none() {
        p.0.push("peers: set token_file or token_env: peers prove who they are with a shared token".into());
    }
    Some(Peers {
        self_url: self_url?,
        static_peers,
        dns: raw.dns,
        dns_interval,
        timeout,
        read_timeout,
        backoff,
        token: token?,
        ca_file: raw.ca_file.map(CaFile::new),
    })
}

/// Why `${NAME}` in a value could not be replaced.
#[derive(Debug, thiserror::Error)]
enum EnvError {
    #[error("{0:?}: unclosed ${{")]
    Unclosed(String),
    #[error("environment variable {name} is not set")]
    Unset {
        name: String,
        #[source]
        source: std::env::VarError,
    },
}

/// `${NAME}` replaced by the environment variable NAME (a pod's IP in Kubernetes).
fn expand_env(v: &str) -> Result<String, EnvError> {
    let mut out = String::new();
    let mut rest = v;
    while let Some(start) = rest.find("${") {
        let end = rest[start..].find('}').ok_or_else(|| EnvError::Unclosed(v.to_owned()))? + start;
        let name = &rest[start + 2..end];
        let value =
            std::env::var(name).map_err(|source| EnvError::Unset { name: name.to_owned(), source })?;
        out.push_str(&rest[..start]);
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[[registry]]\nhost = \"docker.io\"\nendpoint = \"https://registry-1.docker.io\"\n";
    /// A peer token every `[peers]` table here takes from the environment.
    const TOKEN: &str = "token_env = \"BERTH_TEST_PEER_TOKEN\"\n";

    #[test]
    fn peers_parse_with_defaults() {
        let c = Config::parse(&format!(
            "[peers]\nself = \"http://10.0.0.1:5000\"\nstatic = [\"http://10.0.0.1:5000\", \"http://10.0.0.2:5000\"]\n{TOKEN}{BASE}"
        ))
        .unwrap();
        let peers = c.peers.unwrap();
        assert_eq!(peers.self_url.as_str(), "http://10.0.0.1:5000/");
        assert_eq!(peers.static_peers.len(), 2);
        assert_eq!(peers.timeout, std::time::Duration::from_millis(200));
        assert_eq!(peers.token, crate::secret::SecretSource::Env("BERTH_TEST_PEER_TOKEN".into()));
        assert!(Config::parse(BASE).unwrap().peers.is_none());
    }

    #[test]
    fn self_may_name_an_environment_variable() {
        std::env::set_var("BERTH_TEST_POD_IP", "10.1.2.3");
        let c = Config::parse(&format!(
            "[peers]\nself = \"http://${{BERTH_TEST_POD_IP}}:5000\"\ndns = \"berth-peers:5000\"\n{TOKEN}{BASE}"
        ))
        .unwrap();
        assert_eq!(c.peers.unwrap().self_url.as_str(), "http://10.1.2.3:5000/");
        let err = Config::parse(&format!(
            "[peers]\nself = \"http://${{BERTH_TEST_UNSET}}:5000\"\ndns = \"berth-peers:5000\"\n{BASE}"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("BERTH_TEST_UNSET is not set"), "{err}");
    }

    #[test]
    fn bad_peers_are_named() {
        let err = Config::parse(&format!(
            "[peers]\nstatic = [\"10.0.0.2\", \"http://a:1/path\"]\ndns = \"nope\"\ntimeout = \"soon\"\n{BASE}"
        ))
        .unwrap_err()
        .to_string();
        for needle in [
            "peers.self is required",
            "peers.static[0]",
            "peers.static[1]",
            "peers.dns",
            "peers.timeout",
            "set token_file or token_env",
        ] {
            assert!(err.contains(needle), "{needle:?} missing from:\n{err}");
        }
    }
}
