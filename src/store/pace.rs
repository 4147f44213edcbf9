//! Holding a fill's source to a minimum transfer rate (`[[registry]] min_rate` over
//! `rate_window`): a body that brings less than the floor in a window counts as cut.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::time::Instant;

use crate::config::MinRate;
use crate::error::Error;

/// Holds a source to its floor: what it sent while the pump waited for it in the current
/// window, and how long the pump waited. Time the pump spends elsewhere (a writer or the disk
/// tier holding it back) is not counted against the source.
pub(crate) struct Pace {
    floor: Option<MinRate>,
    waited: Duration,
    bytes: u64,
}

impl Pace {
    pub(super) fn new(floor: Option<MinRate>) -> Pace {
        Pace { floor, waited: Duration::ZERO, bytes: 0 }
    }

    /// Starts a new window (a resumed body is judged on its own).
    pub(crate) fn restart(&mut self) {
        (self.waited, self.bytes) = (Duration::ZERO, 0);
    }

    /// The next item of `body`, or an error once a whole window has passed with fewer bytes
    /// than the floor asks for.
    pub(crate) async fn next(
        &mut self,
        body: &mut BoxStream<'static, Result<Bytes, Error>>,
    ) -> Option<Result<Bytes, Error>> {
        let Some(floor) = self.floor else { return body.next().await };
        loop {
            let started = Instant::now();
            let next = tokio::time::timeout(floor.window.saturating_sub(self.waited), body.next()).await;
            self.waited = self.waited.saturating_add(started.elapsed());
            let chunk = match next {
                Ok(Some(Ok(chunk))) => Some(chunk),
                // An end or an error is passed on, however slow the last window was.
                Ok(item) => return item,
                Err(_window_over) => None,
            };
            if let Some(chunk) = &chunk {
                self.bytes = self.bytes.saturating_add(chunk.len() as u64);
            }
            if self.waited >= floor.window {
                if self.bytes < bytes_in(floor) {
                    return Some(Err(Error::Unavailable(format!(
                        "source sent {} bytes in {:?}, below the floor of {} bytes a second",
                        self.bytes, self.waited, floor.bytes_per_sec
                    ))));
                }
                self.restart();
            }
            // Without a chunk, the window ended with the source above its floor: wait on.
            if let Some(chunk) = chunk {
                return Some(Ok(chunk));
            }
        }
    }
}

/// The bytes a source must send in one window of `floor`.
fn bytes_in(floor: MinRate) -> u64 {
    u128::from(floor.bytes_per_sec)
        .checked_mul(floor.window.as_millis())
        .map(|b| b / 1000)
        .map_or(u64::MAX, |b| u64::try_from(b).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Body = BoxStream<'static, Result<Bytes, Error>>;

    /// `n` chunks of `chunk` bytes, one every `every`.
    fn paced(chunk: usize, every: Duration, n: usize) -> Body {
        futures::stream::iter(0..n)
            .then(move |_| async move {
                tokio::time::sleep(every).await;
                Ok(Bytes::from(vec![0u8; chunk]))
            })
            .boxed()
    }

    /// Reads `body` to its end through `pace`: the bytes, or the first error.
    async fn drain(pace: &mut Pace, mut body: Body) -> Result<usize, Error> {
        let mut n = 0;
        while let Some(chunk) = pace.next(&mut body).await {
            n += chunk?.len();
        }
        Ok(n)
    }

    /// 2,000 bytes in each 200 ms window.
    const FLOOR: MinRate = MinRate { bytes_per_sec: 10_000, window: Duration::from_millis(200) };

    #[tokio::test]
    async fn a_source_above_its_floor_goes_on_and_one_below_it_is_cut_within_a_window() {
        // 50 KB/s over three windows.
        let kept = drain(&mut Pace::new(Some(FLOOR)), paced(1000, Duration::from_millis(20), 30)).await;
        assert_eq!(kept.unwrap(), 30_000);

        // 5 KB/s, never silent for long.
        let started = Instant::now();
        let slow = drain(&mut Pace::new(Some(FLOOR)), paced(100, Duration::from_millis(20), 100)).await;
        assert!(matches!(slow, Err(Error::Unavailable(_))), "{slow:?}");
        assert!(started.elapsed() < Duration::from_millis(400), "cut after {:?}", started.elapsed());

        // Silent: cut when the window ends.
        let started = Instant::now();
        let silent = drain(&mut Pace::new(Some(FLOOR)), futures::stream::pending().boxed()).await;
        assert!(silent.is_err());
        assert!(started.elapsed() < Duration::from_millis(400), "cut after {:?}", started.elapsed());

        // No floor: no cut.
        let unpaced = drain(&mut Pace::new(None), paced(1, Duration::from_millis(5), 50)).await;
        assert_eq!(unpaced.unwrap(), 50);
    }

    #[tokio::test]
    async fn time_the_pump_spends_away_from_the_source_is_not_counted_against_it() {
        // A fast source whose reader pauses longer than a window between chunks (a writer or
        // the disk tier holding the pump back).
        let mut pace = Pace::new(Some(FLOOR));
        let mut body = paced(1000, Duration::ZERO, 5);
        while let Some(chunk) = pace.next(&mut body).await {
            assert_eq!(chunk.unwrap().len(), 1000);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    #[test]
    fn the_bytes_a_window_asks_for_saturate() {
        assert_eq!(bytes_in(FLOOR), 2000);
        assert_eq!(bytes_in(MinRate { bytes_per_sec: u64::MAX, window: Duration::MAX }), u64::MAX);
    }
}
