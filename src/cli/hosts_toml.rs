//! `berth hosts-toml`: writes containerd's `certs.d/<registry>/hosts.toml` files that send
//! pulls to a berth mirror first and to the registry itself when the mirror fails.

use std::path::{Path, PathBuf};

use url::Url;

/// The registry containerd falls back to for `host`.
fn server_of(host: &str) -> String {
    match host {
        "docker.io" => "https://registry-1.docker.io".to_owned(),
        other => format!("https://{other}"),
    }
}

/// The contents of one hosts.toml; `host` None writes the `_default` file (no `server`:
/// containerd then falls back to the registry being pulled from).
pub fn hosts_toml(mirror: &Url, host: Option<&str>) -> String {
    let mirror = mirror.as_str().trim_end_matches('/');
    let mut out = String::from(
        "# Written by `berth hosts-toml`: pulls try the berth mirror first, then the registry.\n",
    );
    if let Some(h) = host {
        out.push_str(&format!("server = \"{}\"\n", server_of(h)));
    }
    out.push_str(&format!("\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"));
    out
}

/// How clients that send no `ns` reach the same registries through the mirror, by its path
/// prefix (`<mirror>/<registry>/<repository>`): docker, helm and oras by reference, podman and
/// CRI-O through `registries.conf` mirrors. Printed by `berth hosts-toml` beside the files.
pub fn other_clients(mirror: &str, registries: &[String]) -> Result<String, HostsTomlError> {
    let url = mirror_url(mirror)?;
    let at = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let insecure = url.scheme() == "http";
    let mut out = String::from(
        "# Clients that send no ns reach a registry by the mirror's path prefix:
",
    );
    for host in registries {
        out.push_str(&format!(
            "#   docker pull {at}/{host}/<repository>:<tag>    (helm: oci://{at}/{host}/<chart>; oras: {at}/{host}/<artifact>)
"
        ));
    }
    out.push_str(
        "# podman and CRI-O, in /etc/containers/registries.conf:
",
    );
    for host in registries {
        out.push_str(&format!(
            "[[registry]]\nprefix = \"{host}\"\nlocation = \"{host}\"\n[[registry.mirror]]\nlocation = \"{at}/{host}\"\n"
        ));
        if insecure {
            out.push_str("insecure = true\n");
        }
    }
    Ok(out)
}

/// The mirror's base URL, as `--mirror` gives it.
fn mirror_url(mirror: &str) -> Result<Url, HostsTomlError> {
    let url = Url::parse(mirror)
        .map_err(|source| HostsTomlError::MirrorUrl { mirror: mirror.to_owned(), source })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.path() != "/" {
        return Err(HostsTomlError::NotABaseUrl(mirror.to_owned()));
    }
    Ok(url)
}

/// Why the files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum HostsTomlError {
    #[error("--mirror {mirror:?}: {source}")]
    MirrorUrl {
        mirror: String,
        #[source]
        source: url::ParseError,
    },
    #[error("--mirror {0:?}: expected http(s)://host[:port]")]
    NotABaseUrl(String),
    #[error("name at least one --registry, or --default")]
    NoRegistry,
    #[error("--registry {0:?} is not a registry host")]
    NotAHost(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `<dir>/<host>/hosts.toml` for each registry (and `<dir>/_default/hosts.toml` when
/// asked); returns the files written.
pub fn write(
    dir: &Path,
    mirror: &str,
    registries: &[String],
    default: bool,
) -> Result<Vec<PathBuf>, HostsTomlError> {
    let url = mirror_url(mirror)?;
    let mut targets: Vec<(String, Option<&str>)> =
        registries.iter().map(|r| (r.clone(), Some(r.as_str()))).collect();
    if default {
        targets.push(("_default".into(), None));
    }
    if targets.is_empty() {
        return Err(HostsTomlError::NoRegistry);
    }
    let mut written = Vec::new();
    for (name, host) in targets {
        if name.is_empty() || name.contains(['/', ' ']) || name == ".." {
            return Err(HostsTomlError::NotAHost(name));
        }
        let folder = dir.join(&name);
        std::fs::create_dir_all(&folder)
            .map_err(|source| HostsTomlError::Io { path: folder.clone(), source })?;
        let file = folder.join("hosts.toml");
        std::fs::write(&file, hosts_toml(&url, host))
            .map_err(|source| HostsTomlError::Io { path: file.clone(), source })?;
        written.push(file);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_mirror_first_hosts_toml_that_parses() {
        let dir = tempfile::tempdir().unwrap();
        let files =
            write(dir.path(), "http://berth.example:5000/", &["docker.io".into(), "ghcr.io".into()], true)
                .unwrap();
        assert_eq!(files.len(), 3);
        let hub: toml::Table =
            std::fs::read_to_string(dir.path().join("docker.io/hosts.toml")).unwrap().parse().unwrap();
        assert_eq!(hub["server"].as_str(), Some("https://registry-1.docker.io"));
        let host = &hub["host"]["http://berth.example:5000"];
        assert_eq!(host["capabilities"].as_array().unwrap().len(), 2);
        let ghcr = std::fs::read_to_string(dir.path().join("ghcr.io/hosts.toml")).unwrap();
        assert!(ghcr.contains("server = \"https://ghcr.io\""));
        let default: toml::Table =
            std::fs::read_to_string(dir.path().join("_default/hosts.toml")).unwrap().parse().unwrap();
        assert!(default.get("server").is_none());
        assert!(write(dir.path(), "berth:5000", &["docker.io".into()], false).is_err());
        assert!(write(dir.path(), "http://b:5000/v2", &["docker.io".into()], false).is_err());
        assert!(write(dir.path(), "http://b:5000", &["../etc".into()], false).is_err());
    }

    #[test]
    fn other_clients_get_path_prefix_references_and_registries_conf_mirrors() {
        let out = other_clients("http://berth.example:5000/", &["ghcr.io".into()]).unwrap();
        assert!(out.contains("docker pull berth.example:5000/ghcr.io/<repository>:<tag>"), "{out}");
        let conf: toml::Table =
            out.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n").parse().unwrap();
        let registry = &conf["registry"][0];
        assert_eq!(registry["prefix"].as_str(), Some("ghcr.io"));
        assert_eq!(registry["mirror"][0]["location"].as_str(), Some("berth.example:5000/ghcr.io"));
        assert_eq!(registry["mirror"][0]["insecure"].as_bool(), Some(true));
        let tls = other_clients("https://berth.example/", &["ghcr.io".into()]).unwrap();
        assert!(tls.contains("location = \"berth.example/ghcr.io\"") && !tls.contains("insecure"), "{tls}");
        assert!(other_clients("berth:5000", &[]).is_err());
    }
}
