//! `mirror.toml`: parsed with serde, then validated in one pass that reports every problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

pub use crate::secret::{Secret, SecretSource};
pub use bucket::{Bucket, Upload};
pub use peers::Peers;

mod bucket;
mod peers;
mod registry;
mod validate;

use registry::MAX_FILLS;
pub(crate) use registry::{MinRate, Registry, WILDCARD_MAX_FILLS};

#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub storage: Storage,
    pub tags: Tags,
    pub preheat: Preheat,
    pub gc: Gc,
    /// `[[pin]] image = "..."`: images GC never evicts, normalised (`docker.io/library/alpine:3.20`).
    pub pins: Vec<String>,
    pub registries: Vec<Registry>,
    /// `[peers]`: other berths sharing fills, when configured.
    pub peers: Option<Peers>,
    /// `[auth]`: credentials the registry API requires, when configured.
    pub auth: Option<Auth>,
    /// `[bucket]`: the shared bucket below the disk tier, when configured.
    pub bucket: Option<Bucket>,
}

/// `[auth]`: an htpasswd file (bcrypt) and/or a file of bearer tokens, one a line.
#[derive(Debug, Clone)]
pub struct Auth {
    pub htpasswd_file: Option<PathBuf>,
    pub tokens_file: Option<PathBuf>,
}

/// `[gc]`: when the disk tier is collected (see `registry::gc`).
#[derive(Debug, Clone)]
pub struct Gc {
    pub(crate) high_watermark: f64,
    pub(crate) low_watermark: f64,
    pub(crate) interval: Duration,
    /// Blobs read within this window count as in use (lazy-pulling snapshotters read layers
    /// with Range requests for as long as a container runs).
    pub in_use_window: Duration,
    pub(crate) max_idle: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub default_registry: String,
    /// Bearer token the admin API requires (everything but `/healthz`); mandatory when
    /// `admin_listen` is not a loopback address.
    pub admin_token: Option<SecretSource>,
    /// How long in-flight responses may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// TLS on the registry listener: certificate chain and key, PEM files (reloaded on SIGHUP).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A client that takes no bytes for this long is dropped; an HTTP/2 peer that sends
    /// nothing for this long is pinged, and dropped if the answer takes as long again.
    pub client_idle_timeout: Duration,
    /// A client has this long to finish its TLS handshake, then to send its first bytes, and
    /// to send each HTTP/1 request head (so an idle HTTP/1 connection lasts this long).
    pub head_timeout: Duration,
    /// A connection with no request in flight (none waiting for its answer, no response body
    /// being sent) for this long is closed gracefully, and dropped if it is still open and
    /// idle after as long again (an HTTP/2 peer that never acknowledges the close). The
    /// default, 90 s, is no shorter than clients keep an idle connection for reuse (containerd
    /// 30 s, Go's default transport 90 s), so the client normally closes first and berth's
    /// close does not race its next request; and short enough that idle connections do not
    /// hold many of the `max_connections` for long. An idle HTTP/1 connection also ends when
    /// `head_timeout` passes without its next request head.
    pub idle_timeout: Duration,
    /// Connections open at once; past it, new ones wait to be accepted until one closes.
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct Storage {
    pub dir: PathBuf,
    pub memory_capacity: u64,
    pub memory_max_object: u64,
    pub disk_capacity: u64,
    /// Blob fills from each configured registry at once, unless its entry sets `max_fills`;
    /// also the fills from all the wildcard's hosts together. More wait for a turn.
    pub max_fills: usize,
    /// Blobs announced (or grown) larger than this are refused with 502.
    pub max_blob_size: u64,
    /// Connections one fill of a large blob may fetch ranges over at once (1: one stream).
    pub fill_connections: usize,
    /// Blobs at least this long are filled over `fill_connections`.
    pub fill_connections_above: u64,
}

#[derive(Debug, Clone)]
pub struct Tags {
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct Preheat {
    /// Platforms preheated when a request names none, as `os/arch[/variant]`.
    pub platforms: Vec<String>,
    /// Blobs fetched at once across all preheat jobs.
    pub concurrency: usize,
}

/// This machine's platform in OCI terms (`linux/amd64`).
pub(crate) fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

// The file as written: strings for sizes and durations, so that validation can name every
// bad value at once instead of stopping at the first.
#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    tags: RawTags,
    #[serde(default)]
    preheat: RawPreheat,
    #[serde(default)]
    gc: RawGc,
    #[serde(default)]
    pin: Vec<RawPin>,
    #[serde(default)]
    registry: Vec<registry::RawRegistry>,
    peers: Option<peers::RawPeers>,
    auth: Option<RawAuth>,
    bucket: Option<bucket::RawBucket>,
}

#[derive(Deserialize)]
struct RawAuth {
    htpasswd_file: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawPin {
    image: String,
}

#[derive(Deserialize, Default)]
struct RawGc {
    high_watermark: Option<f64>,
    low_watermark: Option<f64>,
    interval: Option<String>,
    in_use_window: Option<String>,
    max_idle: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawPreheat {
    platforms: Option<Vec<String>>,
    concurrency: Option<usize>,
}

#[derive(Deserialize, Default)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    default_registry: Option<String>,
    admin_token_file: Option<PathBuf>,
    admin_token_env: Option<String>,
    shutdown_grace: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    client_idle_timeout: Option<String>,
    head_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<u32>,
}

#[derive(Deserialize, Default)]
struct RawStorage {
    dir: Option<PathBuf>,
    memory_capacity: Option<String>,
    memory_max_object: Option<String>,
    disk_capacity: Option<String>,
    max_fills: Option<usize>,
    max_blob_size: Option<String>,
    fill_connections: Option<usize>,
    fill_connections_above: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawTags {
    ttl: Option<String>,
}

/// Every problem found in a config file, one per line.
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", path.display())]))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError(vec![e.to_string()]))?;
        let raw: RawConfig = serde_ignored::deserialize(de, |path| {
            problems.push(format!("unknown key `{path}`"));
        })
        .map_err(|e| ConfigError(vec![e.to_string()]))?;
        let config = validate::validate(raw, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(problems))
        }
    }
}

/// A PEM bundle of extra TLS roots (`ca_file`): the path mirror.toml names, and the roots
/// `check::load` read from it (DER, each a usable trust anchor), which every client built for
/// it adds. TLS is always verified; these are trusted besides the system's roots.
#[derive(Debug, Clone, PartialEq)]
pub struct CaFile {
    pub path: PathBuf,
    pub(crate) roots: Option<std::sync::Arc<Vec<Vec<u8>>>>,
}

impl CaFile {
    /// The bundle at `path`, not read yet.
    pub fn new(path: PathBuf) -> CaFile {
        CaFile { path, roots: None }
    }
}

fn placeholder_url() -> Url {
    Url::parse("http://invalid.invalid").expect("static URL")
}

struct Checker<'a>(&'a mut Vec<String>);

impl Checker<'_> {
    /// Where the secret `key` of the table `at` comes from: `<key>_file` or `<key>_env`, at
    /// most one. Nothing is read
    /// here (`check::load` reads it).
    fn secret(
        &mut self,
        at: &str,
        key: &str,
        file: Option<&Path>,
        env: Option<&str>,
    ) -> Option<SecretSource> {
        match (file, env) {
            (Some(_), Some(_)) => {
                self.0.push(format!("{at}: set {key}_file or {key}_env, not both"));
                None
            }
            (Some(f), None) => Some(SecretSource::File(f.to_owned())),
            (None, Some(var)) => Some(SecretSource::Env(var.to_owned())),
            (None, None) => None,
        }
    }

    fn addr(&mut self, key: &str, v: Option<String>, default: &str) -> SocketAddr {
        let v = v.unwrap_or_else(|| default.into());
        v.parse().unwrap_or_else(|e| {
            self.0.push(format!("{key} = {v:?}: {e} (expected host:port)"));
            default.parse().expect("default address")
        })
    }

    fn size(&mut self, key: &str, v: Option<String>, default: &str) -> u64 {
        let v = v.unwrap_or_else(|| default.into());
        match v.trim().parse::<bytesize::ByteSize>() {
            Ok(s) => s.as_u64(),
            Err(e) => {
                self.0.push(format!("{key} = {v:?}: {e} (expected a size such as \"512MiB\")"));
                0
            }
        }
    }

    fn duration(&mut self, key: &str, v: Option<String>, default: &str) -> Duration {
        let v = v.unwrap_or_else(|| default.into());
        humantime::parse_duration(&v).unwrap_or_else(|e| {
            self.0.push(format!("{key} = {v:?}: {e} (expected a duration such as \"5m\")"));
            Duration::ZERO
        })
    }

    /// A rate in bytes a second, written as a size per second (`"16KiB/s"`), at least 1 B/s.
    fn rate(&mut self, key: &str, v: Option<String>, default: &str) -> u64 {
        let v = v.unwrap_or_else(|| default.into());
        let size = v.trim().strip_suffix("/s").map(|s| s.trim().parse::<bytesize::ByteSize>());
        match size {
            Some(Ok(s)) if s.as_u64() > 0 => s.as_u64(),
            Some(Ok(_)) => {
                self.0.push(format!("{key} = {v:?} must be at least 1B/s"));
                1
            }
            Some(Err(e)) => {
                self.0.push(format!("{key} = {v:?}: {e} (expected a rate such as \"16KiB/s\")"));
                1
            }
            None => {
                self.0.push(format!("{key} = {v:?}: expected a rate such as \"16KiB/s\""));
                1
            }
        }
    }

    /// A number of fills at once, when given: from 1 to `MAX_FILLS`.
    fn fills(&mut self, key: &str, v: Option<usize>) {
        if v.is_some_and(|n| !(1..=MAX_FILLS).contains(&n)) {
            self.0.push(format!("{key} must be from 1 to {MAX_FILLS}"));
        }
    }

    /// A duration that must not be zero (a zero timeout or window would cut everything at once).
    fn timeout(&mut self, key: &str, v: Option<String>, default: &str) -> Duration {
        let problems = self.0.len();
        let d = self.duration(key, v, default);
        if d.is_zero() && self.0.len() == problems {
            self.0.push(format!("{key} must be more than 0"));
        }
        d
    }
}

#[cfg(test)]
mod tests;
