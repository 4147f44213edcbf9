//! Coalesces concurrent work on one key: the first caller starts it in its own task (so a
//! caller that goes away does not cancel it), later callers wait for the same result.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::error::Error;

type Slot<T> = watch::Receiver<Option<Result<T, Error>>>;
type Calls<K, T> = Arc<Mutex<HashMap<K, Slot<T>>>>;

pub(crate) struct SingleFlight<K, T> {
    calls: Calls<K, T>,
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
    pub(crate) async fn run<F>(&self, key: K, work: impl FnOnce() -> F) -> (Result<T, Error>, bool)
    where
        F: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let (mut rx, led) = {
            let mut calls = lock(&self.calls);
            match calls.get(&key) {
                Some(rx) => (rx.clone(), false),
                None => {
                    let fut = work();
                    let (tx, rx) = watch::channel(None);
                    calls.insert(key.clone(), rx.clone());
                    let flight = Flight { calls: self.calls.clone(), key: key.clone(), tx };
                    tokio::spawn(async move {
                        let result = fut.await;
                        let _ = flight.tx.send(Some(result));
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

/// One run in flight: its key in the map and the sender of its result. Dropping it removes
/// the key however the run ends, a panic included, so the next call runs the work again;
/// the sender goes after the key, so a waiter that then sees no result and calls again finds
/// the key gone.
struct Flight<K: Eq + Hash, T> {
    calls: Calls<K, T>,
    key: K,
    tx: watch::Sender<Option<Result<T, Error>>>,
}

impl<K: Eq + Hash, T> Drop for Flight<K, T> {
    fn drop(&mut self) {
        lock(&self.calls).remove(&self.key);
    }
}

/// The map of runs in flight. A panic while it was held cannot leave it half changed (each
/// change is one insert or remove), so a poisoned lock is taken as it is; failing instead
/// would fail every later call, or abort when a `Flight` drops while unwinding.
fn lock<K, T>(calls: &Calls<K, T>) -> MutexGuard<'_, HashMap<K, Slot<T>>> {
    calls.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explode() -> Result<u32, Error> {
        panic!("the work panicked")
    }

    // On the current-thread test runtime the spawned work cannot start before both calls
    // below have joined it: the second call is a waiter, not a new run.
    #[tokio::test]
    async fn a_panicking_job_fails_its_callers_and_the_next_call_runs_again() {
        let flights = SingleFlight::<&str, u32>::default();
        let (leader, waiter) =
            tokio::join!(flights.run("k", || async { explode() }), flights.run("k", || async { Ok(1) }),);
        assert!(leader.0.is_err() && leader.1);
        assert!(waiter.0.is_err() && !waiter.1, "the waiter joined the run that panicked");
        let (result, led) = flights.run("k", || async { Ok(2) }).await;
        assert_eq!(result.ok(), Some(2));
        assert!(led, "the next call ran the work itself");
    }
}
