//! Blobs that must not be deleted right now: being filled, or being streamed to a client.
//! Prune and eviction skip a pinned blob (a streaming client keeps its bytes); the serving and
//! filling paths hold a [`Pin`] for as long as they use the blob.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::names::Digest;

#[derive(Default, Clone)]
pub struct Pins {
    inner: Arc<Mutex<HashMap<Digest, usize>>>,
}

/// Held while a blob is in use; unpins on drop.
pub struct Pin {
    pins: Pins,
    digest: Digest,
}

impl Pins {
    pub fn pin(&self, digest: &Digest) -> Pin {
        *self
            .inner
            .lock()
            .unwrap()
            .entry(digest.clone())
            .or_insert(0) += 1;
        Pin {
            pins: self.clone(),
            digest: digest.clone(),
        }
    }

    pub fn is_pinned(&self, digest: &Digest) -> bool {
        self.inner.lock().unwrap().contains_key(digest)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut map = self.pins.inner.lock().unwrap();
        if let Some(n) = map.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_counts() {
        let pins = Pins::default();
        let d = Digest::of(b"x");
        let a = pins.pin(&d);
        let b = pins.pin(&d);
        drop(a);
        assert!(pins.is_pinned(&d));
        drop(b);
        assert!(!pins.is_pinned(&d));
    }
}
