//! DNS counters for `lancachectl stats`: outcomes, queries per type, and upstream latency over
//! the most recent forwarded queries. Counting is a relaxed atomic add on the hot path; only
//! rare record types and latency samples (forwarded queries, already slow) take a lock.

use lancache_protocol::DnsStats;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const LATENCY_SAMPLES: usize = 1024;

pub struct Stats {
    pub intercepted: AtomicU64,
    pub forwarded: AtomicU64,
    pub cache_hits: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Rate-limited UDP queries answered with TC=1 (the client retries over TCP).
    pub slipped: AtomicU64,
    pub malformed: AtomicU64,
    by_qtype: Vec<AtomicU64>,
    rare_qtypes: Mutex<BTreeMap<u16, u64>>,
    latency: Mutex<VecDeque<f64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            intercepted: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            slipped: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            by_qtype: (0..256).map(|_| AtomicU64::new(0)).collect(),
            rare_qtypes: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(VecDeque::with_capacity(LATENCY_SAMPLES)),
        }
    }
}

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub fn qtype(&self, qtype: u16) {
        match self.by_qtype.get(qtype as usize) {
            Some(c) => bump(c),
            None => *self.rare_qtypes.lock().unwrap().entry(qtype).or_default() += 1,
        }
    }

    pub fn upstream_latency(&self, d: Duration) {
        let mut l = self.latency.lock().unwrap();
        if l.len() == LATENCY_SAMPLES {
            l.pop_front();
        }
        l.push_back(d.as_secs_f64() * 1000.0);
    }

    pub fn snapshot(&self) -> DnsStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut by_qtype = BTreeMap::new();
        let mut add = |t: u16, n: u64| {
            if n > 0 {
                let name = hickory_proto::rr::RecordType::from(t).to_string();
                *by_qtype.entry(name).or_insert(0) += n;
            }
        };
        for (t, c) in self.by_qtype.iter().enumerate() {
            add(t as u16, get(c));
        }
        for (t, n) in self.rare_qtypes.lock().unwrap().iter() {
            add(*t, *n);
        }
        let mut lat: Vec<f64> = self.latency.lock().unwrap().iter().copied().collect();
        lat.sort_by(f64::total_cmp);
        let pct =
            |p: f64| (!lat.is_empty()).then(|| lat[((lat.len() - 1) as f64 * p).round() as usize]);
        DnsStats {
            intercepted: get(&self.intercepted),
            forwarded: get(&self.forwarded),
            cache_hits: get(&self.cache_hits),
            refused: get(&self.refused),
            failed: get(&self.failed),
            rate_limited: get(&self.rate_limited),
            slipped: get(&self.slipped),
            malformed: get(&self.malformed),
            by_qtype,
            upstream_latency_ms_p50: pct(0.5),
            upstream_latency_ms_p99: pct(0.99),
        }
    }
}
