//! Coalesces concurrent work on one key: the first caller starts it in its own task (so a
//! caller that goes away does not cancel it), later callers wait for the same result.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::error::Error;

type Slot<T> = watch::Receiver<Option<Result<T, Error>>>;

pub struct SingleFlight<K, T> {
    calls: Arc<Mutex<HashMap<K, Slot<T>>>>,
}

impl<K, T> Default for SingleFlight<K, T> {
    fn default() -> Self {
        SingleFlight { calls: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<K, T> SingleFlight<K, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key` unless a run is in flight; returns its result and whether this
    /// call started it.
    pub async fn run<F>(&self, key: K, work: impl FnOnce() -> F) -> (Result<T, Error>, bool)
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let (mut rx, led) = {
            let mut calls = self.calls.lock().expect("singleflight lock");
            match calls.get(&key) {
                Some(rx) => (rx.clone(), false),
                None => {
                    let (tx, rx) = watch::channel(None);
                    calls.insert(key.clone(), rx.clone());
                    let calls = self.calls.clone();
                    let fut = work();
                    tokio::spawn(async move {
                        let result = fut.await;
                        calls.lock().expect("singleflight lock").remove(&key);
                        let _ = tx.send(Some(result));
                    });
                    (rx, true)
                }
            }
        };
        let result = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().expect("waited for a result"),
            Err(_) => Err(Error::Internal("coalesced request abandoned".into())),
        };
        (result, led)
    }
}
