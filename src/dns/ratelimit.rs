//! Per-client rate limit: a token bucket per source address holding one second's worth of
//! queries. Keeps the box from being used to flood a victim with answers (a spoofed source
//! gets at most `rate_limit` answers per second) and one client from starving the others.
//! IPv6 clients are counted per /64, the block one host usually has to itself, so rotating
//! through its addresses gains nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept at most; past this, buckets idle for a second (which are full again anyway)
/// are forgotten.
const MAX_CLIENTS: usize = 65_536;

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// Whether a query from `client` may be answered under a limit of `qps` (0 = unlimited).
    pub fn allow(&self, client: IpAddr, qps: u32) -> bool {
        if qps == 0 {
            return true;
        }
        let client = match client {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::from(u64::MAX))).into()),
            v4 => v4,
        };
        let now = Instant::now();
        let rate = f64::from(qps);
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            buckets.retain(|_, (_, last)| now.duration_since(*last).as_secs_f64() < 1.0);
        }
        let (tokens, last) = buckets.entry(client).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_zero_is_unlimited() {
        let rl = RateLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let passed = (0..50).filter(|_| rl.allow(ip, 10)).count();
        assert!((10..=11).contains(&passed), "{passed}");
        assert!(rl.allow("10.0.0.2".parse().unwrap(), 10));
        assert!((0..1000).all(|_| rl.allow(ip, 0)));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let passed = (0..50u16)
            .filter(|i| {
                let IpAddr::V6(v6) = a else { unreachable!() };
                let mut seg = v6.segments();
                seg[7] = *i;
                rl.allow(IpAddr::V6(seg.into()), 10)
            })
            .count();
        assert!(
            (10..=11).contains(&passed),
            "one /64 shares a bucket: {passed}"
        );
    }
}
