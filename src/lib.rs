//! berth: a container registry mirror.
//!
//! Data flows top to bottom through these modules:
//! - `api`: HTTP: the read-only distribution API and the admin listener; request log.
//! - `preheat`: admin jobs that resolve images and warm the tiers through the pull path.
//! - `registry`: registry semantics: routes to manifests (tag cache, revalidation) and blobs.
//! - `store`: the tiers: memory (moka) in front of disk, metadata (redb), and the one
//!   verified fill per digest that feeds both.
//! - `source`: where misses come from: the owning peer mirror, else the upstream registry
//!   (auth, redirects, status mapping).
//!
//! Shared vocabulary, below all of them: [`config`], `error`, [`oci`], `secret`. Loading what
//! a config names: [`check`]. Client commands: [`cli`]. `tests/it/architecture.rs` holds the direction.

#![cfg_attr(feature = "test-util", warn(unreachable_pub))]

mod api;
pub mod check;
pub mod cli;
pub mod config;
mod error;
pub mod oci;
mod preheat;
mod registry;
mod secret;
mod source;
mod store;
#[cfg(feature = "test-util")]
pub mod test_util;

pub use api::auth::htpasswd_line;
pub use error::Error;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use config::Config;
use preheat::Preheater;
use registry::Mirror;
use store::Store;

/// The shared bucket `[bucket]` names, asked once: one that answers and refuses (no such
/// bucket, bad credentials) is a startup error; one that cannot be reached is warned about
/// and used once it answers.
async fn open_bucket(config: &Config) -> Result<Option<store::bucket::Bucket>, Error> {
    let Some(cfg) = &config.bucket else { return Ok(None) };
    let clients = source::bucket::connect(cfg)?;
    match source::bucket::probe(clients.0.as_ref(), cfg).await {
        source::bucket::Probe::Ready => tracing::info!(bucket = %cfg.url, "bucket answers"),
        source::bucket::Probe::Refused(why) => {
            return Err(Error::fault(format!("bucket {}", cfg.url), format!("refused: {why}")))
        }
        source::bucket::Probe::Unreachable(why) => {
            tracing::warn!(bucket = %cfg.url, error = %why, "bucket cannot be reached: serving without it until it answers")
        }
    }
    // Who this berth is in a fleet-wide fill lease: its peer URL, else its host and port.
    let identity = match &config.peers {
        Some(p) => p.self_url.to_string(),
        None => format!(
            "{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "berth".into()),
            config.server.listen.port()
        ),
    };
    let bucket = store::bucket::Bucket::new(clients, cfg, &identity);
    Ok(Some(match &config.peers {
        Some(p) => bucket.with_lease_key(p.token.loaded().clone()),
        None => bucket,
    }))
}

/// A running berth: its bound addresses and the task serving them.
pub struct Server {
    pub registry_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    mirror: Arc<Mirror>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    grace: Duration,
    certs: Option<Arc<api::tls::Certs>>,
    auth: Option<Arc<api::auth::ClientAuth>>,
}

impl Server {
    /// Loads what `config` names (`check::load`), opens the store and binds both listeners
    /// (port 0 picks a free port).
    pub async fn start(config: &Config) -> Result<Server, Error> {
        let loaded = check::load(config).map_err(Error::internal)?;
        Self::start_loaded(loaded).await
    }

    /// Opens the store and binds both listeners, from what `check::load` loaded.
    pub async fn start_loaded(loaded: check::Loaded) -> Result<Server, Error> {
        let check::Loaded { config, certs, auth } = loaded;
        let config = &config;
        api::metrics::install();
        let store = Store::open_with(&config.storage, open_bucket(config).await?)?;
        store.spawn_flusher(Duration::from_secs(30));
        let mirror = Arc::new(Mirror::new(config, store)?);
        mirror.collector().spawn();
        if let Some(peers) = mirror.peers() {
            peers.spawn_discovery();
        }
        let preheater = Arc::new(Preheater::new(mirror.clone(), config.preheat.clone()));
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|e| Error::fault(format!("binding {addr}"), e))
        };
        let registry = bind(config.server.listen).await?;
        let admin = bind(config.server.admin_listen).await?;
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let registry_addr = registry.local_addr().map_err(Error::internal)?;
        let admin_addr = admin.local_addr().map_err(Error::internal)?;
        let options = api::serve::Options {
            tls: certs.as_ref().map(|c| c.acceptor()),
            client_idle_timeout: config.server.client_idle_timeout,
            head_timeout: config.server.head_timeout,
            idle_timeout: config.server.idle_timeout,
            max_connections: config.server.max_connections,
        };
        let admin_state = api::admin::Admin { mirror: mirror.clone(), preheater: preheater.clone() };
        let router = api::registry_router(admin_state, auth.clone());
        let tasks = vec![
            tokio::spawn(api::serve::serve(registry, router, options, rx.clone())),
            tokio::spawn(
                axum::serve(
                    admin,
                    api::admin::router(
                        api::admin::Admin { mirror: mirror.clone(), preheater },
                        config.server.admin_token.as_ref().map(|t| t.loaded().clone()),
                    ),
                )
                .with_graceful_shutdown(stop(rx))
                .into_future(),
            ),
        ];
        tracing::info!(%registry_addr, %admin_addr, tls = certs.is_some(), "berth is serving");
        Ok(Server {
            registry_addr,
            admin_addr,
            mirror,
            shutdown,
            tasks,
            grace: config.server.shutdown_grace,
            certs,
            auth,
        })
    }

    /// Reads the TLS certificate and key and the `[auth]` files again (SIGHUP): new
    /// connections use the new certificate, open ones keep theirs. What fails to load keeps
    /// its old contents, and the first error is returned.
    pub fn reload(&self) -> Result<(), Error> {
        let tls = self.certs.as_ref().map_or(Ok(()), |c| c.reload());
        let auth = self.auth.as_ref().map_or(Ok(()), |a| a.reload());
        tls.and(auth)
    }

    /// Stops accepting, lets in-flight responses finish for up to `shutdown_grace`, then
    /// drops the rest. Fills still running are abandoned with the process: their temp files
    /// are removed at the next start, and nothing unverified was ever published.
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.shutdown.send(true);
        let aborts: Vec<_> = self.tasks.iter().map(|t| t.abort_handle()).collect();
        let serving = futures::future::join_all(self.tasks);
        match tokio::time::timeout(self.grace, serving).await {
            Ok(done) => {
                for t in done {
                    t.map_err(Error::internal)?.map_err(Error::internal)?;
                }
            }
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "responses still in flight after the grace period: dropped");
                aborts.iter().for_each(|a| a.abort());
            }
        }
        self.mirror.store().flush_access().await
    }
}
