//! The configuration file: the shipped one, every problem named, secrets.

use super::*;

#[test]
fn shipped_config_parses() {
    let c = Config::parse(include_str!("../../mirror.toml")).unwrap();
    assert_eq!(c.storage.memory_capacity, 512 * 1024 * 1024);
    assert_eq!(c.storage.memory_max_object, 64 * 1024 * 1024);
    assert_eq!(c.tags.ttl, Duration::from_secs(300));
    assert_eq!(c.registries[0].host, "docker.io");
    assert_eq!(c.server.default_registry, "docker.io");
}

#[test]
fn fill_limits_and_rate_floors_parse_and_are_checked() {
    let c = Config::parse(
        r#"
        [[registry]]
        host = "docker.io"
        endpoint = "https://registry-1.docker.io"
        [[registry]]
        host = "ghcr.io"
        endpoint = "https://ghcr.io"
        max_fills = 8
        min_rate = "1MiB/s"
        rate_window = "10s"
        "#,
    )
    .unwrap();
    assert_eq!(c.storage.max_fills, 64);
    assert_eq!((c.storage.fill_connections, c.storage.fill_connections_above), (4, 64 << 20));
    assert_eq!(c.registries[0].max_fills, None, "the default is storage.max_fills");
    assert_eq!(
        c.registries[0].min_rate,
        MinRate { bytes_per_sec: 16 * 1024, window: Duration::from_secs(30) }
    );
    assert_eq!(c.registries[1].max_fills, Some(8));
    assert_eq!(c.registries[1].min_rate, MinRate { bytes_per_sec: 1 << 20, window: Duration::from_secs(10) });

    let err = Config::parse(
        r#"
        [storage]
        max_fills = 0
        fill_connections = 0
        fill_connections_above = "lots"
        [[registry]]
        host = "docker.io"
        endpoint = "https://registry-1.docker.io"
        max_fills = 0
        min_rate = "16KiB"
        rate_window = "0s"
        [[registry]]
        host = "ghcr.io"
        endpoint = "https://ghcr.io"
        max_fills = 1000000
        min_rate = "0B/s"
        "#,
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "storage.max_fills must be from 1",
        "storage.fill_connections must be from 1 to 16",
        "storage.fill_connections_above = \"lots\"",
        "registry[0] (docker.io).max_fills must be from 1",
        "registry[0] (docker.io).min_rate = \"16KiB\": expected a rate",
        "registry[0] (docker.io).rate_window must be more than 0",
        "registry[1] (ghcr.io).max_fills must be from 1",
        "registry[1] (ghcr.io).min_rate = \"0B/s\" must be at least 1B/s",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from:\n{err}");
    }
}

#[test]
fn every_problem_is_named() {
    let err = Config::parse(
        r#"
        [server]
        listen = "nope"
        colour = "blue"
        [storage]
        memory_capacity = "lots"
        [tags]
        ttl = "forever"
        [gc]
        high_watermark = 0.5
        low_watermark = 0.7
        [[registry]]
        host = "docker.io"
        endpoint = "https://registry-1.docker.io"
        [[registry]]
        host = "docker.io"
        endpoint = "ftp://x"
        "#,
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "server.listen",
        "unknown key `server.colour`",
        "storage.memory_capacity",
        "tags.ttl",
        "duplicate host",
        "low_watermark < high_watermark",
        "must be an http(s) URL",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn listener_timeouts_must_be_more_than_zero() {
    let base = "[[registry]]\nhost = \"docker.io\"\nendpoint = \"https://registry-1.docker.io\"\n";
    let err = Config::parse(&format!("[server]\nhead_timeout = \"0s\"\n{base}")).unwrap_err();
    assert!(err.to_string().contains("server.head_timeout must be more than 0"), "{err}");
    let err = Config::parse(&format!("[server]\nhead_timeout = \"soon\"\n{base}")).unwrap_err();
    assert_eq!(err.0.len(), 1, "one problem per bad value: {err}");
    let err = Config::parse(&format!("[server]\nidle_timeout = \"0s\"\n{base}")).unwrap_err();
    assert!(err.to_string().contains("server.idle_timeout must be more than 0"), "{err}");
    let c = Config::parse(base).unwrap();
    assert_eq!(c.server.head_timeout, Duration::from_secs(30));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(90));
}

#[test]
fn max_connections_is_at_least_one() {
    let base = "[[registry]]\nhost = \"docker.io\"\nendpoint = \"https://registry-1.docker.io\"\n";
    let err = Config::parse(&format!("[server]\nmax_connections = 0\n{base}")).unwrap_err();
    assert!(err.to_string().contains("server.max_connections must be at least 1"), "{err}");
    assert_eq!(Config::parse(base).unwrap().server.max_connections, 4096);
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    let base = "[[registry]]\nhost = \"docker.io\"\nendpoint = \"https://registry-1.docker.io\"\n";
    let err = Config::parse(&format!("[server]\nadmin_listen = \"0.0.0.0:5001\"\n{base}")).unwrap_err();
    assert!(err.to_string().contains("admin_token"), "{err}");
    let c = Config::parse(&format!(
        "[server]\nadmin_listen = \"0.0.0.0:5001\"\nadmin_token_env = \"BERTH_TEST_ADMIN_TOKEN\"\n{base}"
    ))
    .unwrap();
    assert_eq!(c.server.admin_token, Some(SecretSource::Env("BERTH_TEST_ADMIN_TOKEN".into())));
}
