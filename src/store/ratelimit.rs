//! `upstream.max_rate`: one pacer shared by every fill's slice fetches. Each received chunk
//! books its share of the link (`len / rate`) on a virtual clock and waits until its booking
//! ends, so the average over any stretch longer than a few chunks is the cap. A chunk for a
//! slice a client is blocked on books ahead of read-ahead: read-ahead chunks wait while a
//! demand chunk waits. An idle link lends at most [`BURST`] of credit. The rate is read from
//! an atomic that the configuration (start, reload) sets: a new cap applies to the next chunk.
//! Manifests and relayed requests are small and not paced.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The most credit an idle link builds up.
const BURST: Duration = Duration::from_millis(50);
/// The window over which the rate in use is averaged.
const WINDOW_SECS: u64 = 5;

pub struct RateLimiter {
    /// Bytes per second; 0 = no cap.
    rate: AtomicU64,
    next: Mutex<Option<Instant>>,
    demand_waiting: AtomicUsize,
    /// Bytes that went through per whole second since `epoch`, for the rate in use.
    seconds: Mutex<VecDeque<(u64, u64)>>,
    epoch: std::time::Instant,
}

/// The daemon's limiter (its rate follows `upstream.max_rate`).
pub static UPSTREAM: std::sync::LazyLock<RateLimiter> = std::sync::LazyLock::new(RateLimiter::new);

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter {
            rate: AtomicU64::new(0),
            next: Mutex::new(None),
            demand_waiting: AtomicUsize::new(0),
            seconds: Mutex::new(VecDeque::new()),
            epoch: std::time::Instant::now(),
        }
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Bytes per second that went through over the last few seconds.
    pub fn rate_in_use(&self) -> u64 {
        let now = self.epoch.elapsed().as_secs();
        let secs = self.seconds.lock().unwrap();
        // The current second is partial: average over the whole ones before it (fewer than
        // the window's when traffic began more recently).
        let from = now.saturating_sub(WINDOW_SECS);
        let total: u64 = secs
            .iter()
            .filter(|(s, _)| *s < now && *s >= from)
            .map(|(_, b)| b)
            .sum();
        let first = secs.front().map_or(now, |(s, _)| *s).max(from);
        total / (now - first).max(1)
    }

    fn count(&self, n: u64) {
        let now = self.epoch.elapsed().as_secs();
        let mut secs = self.seconds.lock().unwrap();
        match secs.back_mut() {
            Some((s, b)) if *s == now => *b += n,
            _ => secs.push_back((now, n)),
        }
        while secs.front().is_some_and(|(s, _)| s + WINDOW_SECS + 1 < now) {
            secs.pop_front();
        }
    }

    /// Waits until `n` more bytes fit under the cap. `demand`: a client is blocked on them.
    pub async fn take(&self, n: u64, demand: bool) {
        self.count(n);
        if self.rate() == 0 {
            return;
        }
        if !demand {
            while self.demand_waiting.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let _guard = demand.then(|| {
            self.demand_waiting.fetch_add(1, Ordering::AcqRel);
            DemandGuard(&self.demand_waiting)
        });
        let rate = self.rate();
        if rate == 0 {
            return;
        }
        let until = {
            let mut next = self.next.lock().unwrap();
            let now = Instant::now();
            let floor = now.checked_sub(BURST).unwrap_or(now);
            let start = next.map_or(floor, |t| t.max(floor));
            let end = start + Duration::from_secs_f64(n as f64 / rate as f64);
            *next = Some(end);
            end
        };
        tokio::time::sleep_until(until).await;
    }
}

struct DemandGuard<'a>(&'a AtomicUsize);

impl Drop for DemandGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_to_the_rate() {
        let l = RateLimiter::new();
        l.set_rate(1_000_000);
        let t = Instant::now();
        for _ in 0..50 {
            l.take(10_000, false).await;
        }
        let secs = t.elapsed().as_secs_f64();
        // 500 kB at 1 MB/s, less the burst credit.
        assert!((0.40..0.6).contains(&secs), "{secs}");
    }

    #[tokio::test]
    async fn demand_goes_before_read_ahead() {
        let l = std::sync::Arc::new(RateLimiter::new());
        l.set_rate(1_000_000);
        let ahead = {
            let l = l.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                for _ in 0..20 {
                    l.take(10_000, false).await;
                }
                t.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        for _ in 0..20 {
            l.take(10_000, true).await;
        }
        let demand = t.elapsed();
        let ahead = ahead.await.unwrap();
        // The demand taker got the link: its 200 kB took about 0.2 s, read-ahead waited.
        assert!(demand < Duration::from_millis(300), "{demand:?}");
        assert!(ahead > demand, "{ahead:?} vs {demand:?}");
    }
}
