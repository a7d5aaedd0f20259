//! Client downloads in progress, for `/api/sessions` and the web UI. It lives in the HTTP layer,
//! below both of its feeders (the proxy's blob bodies and distribution's tar route). Whoever
//! streams bytes to a client calls [`Sessions::start`] when the response starts, [`SessionGuard::add`] as bytes go out, and drops the guard when the
//! response ends, completes or is abandoned: a session can never outlive its response.
//!
//! The rate is the average since the first byte (cheap, monotone, honest for the short-lived
//! downloads this shows); the ETA follows from it.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Default, Clone)]
pub struct Sessions {
    inner: Arc<Mutex<BTreeMap<u64, Arc<Entry>>>>,
    next_id: Arc<AtomicU64>,
}

struct Entry {
    client: SocketAddr,
    what: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    started_unix: u64,
}

/// Held for as long as one response streams; removes its session on drop.
pub struct SessionGuard {
    sessions: Sessions,
    id: u64,
    entry: Arc<Entry>,
}

/// One session as `/api/sessions` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: u64,
    /// The client's address (from the socket, or from `X-Forwarded-For` of a trusted proxy).
    pub client: String,
    /// What is being downloaded: a model name or a blob digest.
    pub model: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub started: u64,
    pub elapsed_secs: f64,
    pub rate_bytes_per_sec: f64,
    pub eta_secs: Option<f64>,
}

impl Sessions {
    /// Registers a download of `total` bytes of `what` to `client`.
    pub fn start(&self, client: SocketAddr, what: impl Into<String>, total: u64) -> SessionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            client,
            what: what.into(),
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        });
        self.lock().insert(id, entry.clone());
        SessionGuard {
            sessions: self.clone(),
            id,
            entry,
        }
    }

    /// Every session in progress, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        self.lock()
            .iter()
            .map(|(&id, e)| {
                let done = e.done.load(Ordering::Relaxed);
                let elapsed = e.started.elapsed().as_secs_f64();
                let rate = if elapsed > 0.0 {
                    done as f64 / elapsed
                } else {
                    0.0
                };
                let left = e.total.saturating_sub(done) as f64;
                SessionInfo {
                    id,
                    client: e.client.to_string(),
                    model: e.what.clone(),
                    bytes_done: done,
                    bytes_total: e.total,
                    started: e.started_unix,
                    elapsed_secs: elapsed,
                    rate_bytes_per_sec: rate,
                    eta_secs: (rate > 0.0).then(|| left / rate),
                }
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Entry>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SessionGuard {
    /// Counts `bytes` more sent to the client.
    pub fn add(&self, bytes: u64) {
        self.entry.done.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_lifecycle() {
        let s = Sessions::default();
        let g = s.start("10.0.0.5:4000".parse().unwrap(), "llama3:8b", 100);
        g.add(40);
        let l = s.list();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].client, "10.0.0.5:4000");
        assert_eq!(l[0].bytes_done, 40);
        assert_eq!(l[0].bytes_total, 100);
        drop(g);
        assert!(s.is_empty());
    }
}
