//! One validation pass over the parsed file, section by section, naming every problem.

use super::{
    bucket, host_platform, peers, registry, Auth, Checker, Config, Gc, Preheat, RawConfig, RawGc, RawPin,
    RawPreheat, RawServer, RawStorage, Server, Storage, Tags,
};
use crate::oci::image_ref::ImageRef;
use crate::oci::platform::Platform;

pub(super) fn validate(raw: RawConfig, problems: &mut Vec<String>) -> Config {
    let mut p = Checker(problems);
    let server = server(raw.server, &mut p);
    let storage = storage(raw.storage, &mut p);
    let tags = Tags { ttl: p.duration("tags.ttl", raw.tags.ttl, "5m") };
    let preheat = preheat(raw.preheat, &mut p);
    let gc = gc(raw.gc, &mut p);
    let (registries, hosts) = registry::validate(raw.registry, &mut p);
    if registries.is_empty() {
        p.0.push("no [[registry]] is configured".into());
    }
    if !hosts.contains(&server.default_registry) {
        p.0.push(format!(
            "server.default_registry {:?} is not a configured [[registry]] host",
            server.default_registry
        ));
    }
    let pins = pins(&raw.pin, &hosts, &mut p);
    let peers = peers::validate(raw.peers, &mut p);
    let auth = raw.auth.map(|a| Auth { htpasswd_file: a.htpasswd_file, tokens_file: a.tokens_file });
    let bucket = bucket::validate(raw.bucket, &mut p);
    Config { server, storage, tags, preheat, gc, pins, registries, peers, auth, bucket }
}

fn server(raw: RawServer, p: &mut Checker<'_>) -> Server {
    let admin_token =
        p.secret("server", "admin_token", raw.admin_token_file.as_deref(), raw.admin_token_env.as_deref());
    let server = Server {
        listen: p.addr("server.listen", raw.listen, "0.0.0.0:5000"),
        admin_listen: p.addr("server.admin_listen", raw.admin_listen, "127.0.0.1:5001"),
        default_registry: raw.default_registry.unwrap_or_else(|| "docker.io".into()),
        admin_token,
        shutdown_grace: p.duration("server.shutdown_grace", raw.shutdown_grace, "30s"),
        tls: match (raw.tls_cert_file, raw.tls_key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                p.0.push("server: tls_cert_file and tls_key_file go together".into());
                None
            }
        },
        client_idle_timeout: p.duration("server.client_idle_timeout", raw.client_idle_timeout, "60s"),
        head_timeout: p.timeout("server.head_timeout", raw.head_timeout, "30s"),
        idle_timeout: p.timeout("server.idle_timeout", raw.idle_timeout, "90s"),
        max_connections: raw.max_connections.unwrap_or(4096),
    };
    if server.max_connections == 0 {
        p.0.push("server.max_connections must be at least 1".into());
    }
    if !server.admin_listen.ip().is_loopback() && server.admin_token.is_none() {
        p.0.push(format!(
            "server.admin_listen {} is not a loopback address: set admin_token_file or admin_token_env",
            server.admin_listen
        ));
    }
    server
}

/// Connections one fill may use: more buys nothing from one upstream and holds its turns.
const MAX_FILL_CONNECTIONS: usize = 16;

fn storage(raw: RawStorage, p: &mut Checker<'_>) -> Storage {
    let storage = Storage {
        dir: raw.dir.unwrap_or_else(|| "./berth-data".into()),
        memory_capacity: p.size("storage.memory_capacity", raw.memory_capacity, "512MiB"),
        memory_max_object: p.size("storage.memory_max_object", raw.memory_max_object, "64MiB"),
        disk_capacity: p.size("storage.disk_capacity", raw.disk_capacity, "20GiB"),
        max_fills: raw.max_fills.unwrap_or(64),
        max_blob_size: p.size("storage.max_blob_size", raw.max_blob_size, "1TiB"),
        fill_connections: raw.fill_connections.unwrap_or(4),
        fill_connections_above: p.size("storage.fill_connections_above", raw.fill_connections_above, "64MiB"),
    };
    if !(1..=MAX_FILL_CONNECTIONS).contains(&storage.fill_connections) {
        p.0.push(format!("storage.fill_connections must be from 1 to {MAX_FILL_CONNECTIONS}"));
    }
    p.fills("storage.max_fills", Some(storage.max_fills));
    if storage.memory_max_object > storage.memory_capacity {
        p.0.push("storage.memory_max_object is larger than storage.memory_capacity".into());
    }
    storage
}

fn preheat(raw: RawPreheat, p: &mut Checker<'_>) -> Preheat {
    let preheat = Preheat {
        platforms: raw.platforms.unwrap_or_else(|| vec![host_platform()]),
        concurrency: raw.concurrency.unwrap_or(4),
    };
    for platform in &preheat.platforms {
        if let Err(e) = Platform::parse(platform) {
            p.0.push(format!("preheat.platforms: {e}"));
        }
    }
    if preheat.concurrency == 0 {
        p.0.push("preheat.concurrency must be at least 1".into());
    }
    preheat
}

fn gc(raw: RawGc, p: &mut Checker<'_>) -> Gc {
    let gc = Gc {
        high_watermark: raw.high_watermark.unwrap_or(0.90),
        low_watermark: raw.low_watermark.unwrap_or(0.80),
        interval: p.duration("gc.interval", raw.interval, "1m"),
        in_use_window: p.duration("gc.in_use_window", raw.in_use_window, "1h"),
        max_idle: raw.max_idle.map(|v| p.duration("gc.max_idle", Some(v), "0s")),
    };
    if !(0.0 < gc.low_watermark && gc.low_watermark < gc.high_watermark && gc.high_watermark <= 1.0) {
        p.0.push(format!(
            "gc: need 0 < low_watermark < high_watermark <= 1 (got {} and {})",
            gc.low_watermark, gc.high_watermark
        ));
    }
    gc
}

/// Pinned images, normalised; each must name a configured registry (or the wildcard's).
fn pins(raw: &[RawPin], hosts: &std::collections::HashSet<String>, p: &mut Checker<'_>) -> Vec<String> {
    let mut pins = Vec::new();
    for (i, pin) in raw.iter().enumerate() {
        match ImageRef::parse(&pin.image) {
            Ok(r) if hosts.contains(&r.host) || hosts.contains("*") => pins.push(r.to_string()),
            Ok(r) => p.0.push(format!("pin[{i}]: {r}: registry {:?} is not configured", r.host)),
            Err(e) => p.0.push(format!("pin[{i}]: {e}")),
        }
    }
    pins
}
