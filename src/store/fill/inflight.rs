//! The in-flight map (one fill per digest, checked and filled under one lock) and the leader
//! task's guard, which ends a fill however its task ends.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::lead::lead;
use super::{Fill, FillState, FromHolder, Source};
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::Store;

impl Store {
    /// Joins the in-flight fill of `digest`, or starts one labelled `origin` that fetches with
    /// `fetch`. Returns the fill and whether this call started it.
    pub fn fill(
        self: &Arc<Self>,
        digest: &Digest,
        origin: &str,
        fetch: BoxFuture<'static, Result<Source, Error>>,
    ) -> (Arc<Fill>, bool) {
        self.fill_with(digest, origin, fetch, None)
    }

    /// Like [`Store::fill`], for a fetch that asks upstream: with a bucket, a new fill first
    /// claims the digest fleet-wide (`bucket::lease`), and one that loses waits for the
    /// winner's upload instead of fetching, or streams from the winner with `holder` when
    /// the winner's lease says it can be asked as a peer.
    pub(crate) fn fill_from_upstream(
        self: &Arc<Self>,
        digest: &Digest,
        origin: &str,
        fetch: BoxFuture<'static, Result<Source, Error>>,
        holder: Option<FromHolder>,
    ) -> (Arc<Fill>, bool) {
        self.fill_with(digest, origin, fetch, Some(holder))
    }

    fn fill_with(
        self: &Arc<Self>,
        digest: &Digest,
        origin: &str,
        fetch: BoxFuture<'static, Result<Source, Error>>,
        claim: Option<Option<FromHolder>>,
    ) -> (Arc<Fill>, bool) {
        let mut inflight = self.inflight.lock().expect("inflight lock");
        // A fill that has failed but not yet left the map is not joined: it is replaced (its
        // leader removes only its own entry).
        let live = inflight.get(digest).filter(|f| !matches!(*f.state.borrow(), FillState::Failed(_)));
        if let Some(fill) = live {
            metrics::counter!("berth_fill_followers_total").increment(1);
            fill.clients.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return (fill.clone(), false);
        }
        let (state, _) = watch::channel(FillState::Pending);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            origin: origin.into(),
            claims: claim.is_some(),
            clients: std::sync::atomic::AtomicU64::new(1),
            ahead: std::sync::atomic::AtomicU64::new(0),
            state,
            settled: watch::channel(false).0,
        });
        inflight.insert(digest.clone(), fill.clone());
        drop(inflight);
        let store = self.clone();
        let leader = fill.clone();
        tokio::spawn(async move {
            let guard = LeadGuard { store: &store, fill: &leader };
            let result = lead(&store, &leader, fetch, claim.flatten()).await;
            if let Err(e) = &result {
                metrics::counter!("berth_fills_total", "outcome" => "failed").increment(1);
                tracing::warn!(digest = %leader.digest, error = %e, "fill failed");
                leader.state.send_replace(FillState::Failed(e.clone()));
            }
            drop(guard);
        });
        (fill, true)
    }

    /// The fill of `digest` in flight, if any.
    pub(crate) fn inflight(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.inflight.lock().expect("inflight lock").get(digest).cloned()
    }

    /// Digests being filled now.
    pub(crate) fn inflight_digests(&self) -> Vec<Digest> {
        self.inflight.lock().expect("inflight lock").keys().cloned().collect()
    }

    /// Number of fills in flight.
    pub fn fills_in_flight(&self) -> usize {
        self.inflight.lock().expect("inflight lock").len()
    }
}

/// Ends a fill however its task ends (including a panic): a fill that did not reach a final
/// state is failed, and the fill leaves the in-flight map.
struct LeadGuard<'a> {
    store: &'a Store,
    fill: &'a Arc<Fill>,
}

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        self.fill.state.send_if_modified(|s| match s {
            FillState::Pending | FillState::Streaming { .. } => {
                *s = FillState::Failed(Error::Internal("fill aborted".into()));
                true
            }
            _ => false,
        });
        let mut inflight = self.store.inflight.lock().expect("inflight lock");
        if inflight.get(&self.fill.digest).is_some_and(|f| Arc::ptr_eq(f, self.fill)) {
            inflight.remove(&self.fill.digest);
        }
        drop(inflight);
        let clients = self.fill.clients.load(std::sync::atomic::Ordering::Relaxed);
        metrics::histogram!("berth_fill_clients").record(clients as f64);
        self.fill.settled.send_replace(true);
    }
}

/// References to a fill that are not its clients': the in-flight map's and the leader
/// task's own.
const OWN_REFERENCES: usize = 2;

/// Resolves once nobody but the fill itself holds it: every client (a request, a preheat)
/// has gone. Checked every 100 ms.
pub(super) async fn every_client_left(fill: &Arc<Fill>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if Arc::strong_count(fill) <= OWN_REFERENCES {
            return;
        }
    }
}
