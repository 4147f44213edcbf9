//! The bucket's client: `object_store`'s S3 client for `[bucket]`, speaking through a
//! connection built by the outbound policy (`outbound::bucket_client`), every request counted
//! (`counted`), and the startup probe that tells a bucket that refuses from one that cannot
//! be reached.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::client::{ClientOptions, HttpClient, HttpConnector};
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use super::outbound::bucket_client;
use counted::Counted;

mod counted;
use crate::config::Bucket;
use crate::error::Error;

/// The bucket's clients: for reads, and for uploads.
pub(crate) type Clients = (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>);

/// Two clients of the bucket `cfg` names: one for reads (each read within `timeout`) and one
/// for uploads (the store bounds each put by its length). Nothing is asked of it here.
pub(crate) fn connect(cfg: &Bucket) -> Result<Clients, Error> {
    Ok((client(cfg, true)?, client(cfg, false)?))
}

fn client(cfg: &Bucket, reads: bool) -> Result<Arc<dyn ObjectStore>, Error> {
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&cfg.name)
        .with_region(&cfg.region)
        .with_http_connector(Outbound(bucket_client(cfg, reads)?))
        // One retry at most, within the timeout: a slow bucket is left for the next source,
        // not waited for.
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 1,
            retry_timeout: cfg.timeout,
        });
    if let Some(endpoint) = &cfg.endpoint {
        builder = builder
            .with_endpoint(endpoint.as_str().trim_end_matches('/'))
            .with_allow_http(endpoint.scheme() == "http");
    }
    builder = match (&cfg.access_key_id, &cfg.secret_access_key) {
        (Some(key), Some(secret)) => {
            builder.with_access_key_id(key.loaded().expose()).with_secret_access_key(secret.loaded().expose())
        }
        // No keys: anonymous requests. Never the instance-metadata service, which the
        // builder would otherwise ask for credentials.
        _ => builder.with_skip_signature(true),
    };
    let store = builder.build().map_err(|e| Error::fault(format!("bucket {}", cfg.url), e))?;
    Ok(Arc::new(Counted(store)))
}

/// How the bucket answered the startup probe.
#[derive(Debug)]
pub(crate) enum Probe {
    Ready,
    /// It answered and refused (no such bucket, bad credentials): a configuration error.
    Refused(String),
    /// No answer (down, unreachable, timed out): berth runs without it until it answers.
    Unreachable(String),
}

/// Lists the prefix once: what a bucket that berth can use answers.
pub(crate) async fn probe(store: &dyn ObjectStore, cfg: &Bucket) -> Probe {
    let prefix = Path::from(cfg.prefix.as_str());
    let listed = tokio::time::timeout(cfg.timeout * 2, store.list_with_delimiter(Some(&prefix))).await;
    match listed {
        Ok(Ok(_)) => Probe::Ready,
        // A public bucket read anonymously usually allows GET but not LIST.
        Ok(Err(object_store::Error::PermissionDenied { .. })) if cfg.access_key_id.is_none() => Probe::Ready,
        Ok(Err(
            e @ (object_store::Error::NotFound { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }),
        )) => Probe::Refused(e.to_string()),
        Ok(Err(e)) => Probe::Unreachable(e.to_string()),
        Err(_) => Probe::Unreachable(format!("no answer within {:?}", cfg.timeout * 2)),
    }
}

/// Connects object_store's requests through berth's client.
#[derive(Debug)]
struct Outbound(reqwest_bucket::Client);

impl HttpConnector for Outbound {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.0.clone()))
    }
}
