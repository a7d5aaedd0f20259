//! Whether the cache directory can be written, for `/health`. A write that fails (read-only
//! remount, permissions, a missing mount) is the failure a monitor most needs to see, and the
//! only sure test is to write: create and remove a probe file in the daemon's own `.lancached/`
//! (never in `blobs/` or `manifests/`, which Ollama reads). The answer is kept for
//! [`PROBE_EVERY`] so a monitor polling hard costs nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::Layout;

pub const PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct WritableProbe {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl WritableProbe {
    /// `Ok` when the cache directory took a write within the last second, else why not.
    pub fn check(&self, layout: &Layout) -> Result<(), String> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, r)) = &*last {
            if t.elapsed() < PROBE_EVERY {
                return r.clone();
            }
        }
        let r = probe(layout);
        *last = Some((Instant::now(), r.clone()));
        r
    }
}

fn probe(layout: &Layout) -> Result<(), String> {
    let p = layout
        .state_dir()
        .join(format!(".health-probe-{}", std::process::id()));
    std::fs::write(&p, b"ok").map_err(|e| format!("cache directory not writable: {e}"))?;
    std::fs::remove_file(&p).map_err(|e| format!("cache directory not writable: {e}"))
}
