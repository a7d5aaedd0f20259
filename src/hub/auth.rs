//! Who may be served a cached file of which repository. A public repo's files go to anyone; a
//! gated or private repo's go only to a request whose token upstream accepted for that repo
//! within `auth_ttl`. Tokens are never kept: only a keyed hash (SHA-256 over a per-process
//! random key and the token), in memory, so neither the disk nor a core dump of the map
//! yields a usable token, and a restart forgets every acceptance.
//!
//! "Public" is learnt from upstream (an answer to a request without a token, or the repo
//! info's `private`/`gated`), kept in memory with `revision_ttl` and as a marker file in the
//! daemon's state directory, so a public repo stays servable while upstream is down.

use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Access {
    key: [u8; 32],
    accepted: Mutex<HashMap<(String, [u8; 32]), Instant>>,
    public: Mutex<HashMap<String, Instant>>,
    /// `<state dir>/huggingface/public/`.
    markers: PathBuf,
}

impl Access {
    pub fn new(markers: PathBuf) -> Access {
        let mut key = [0u8; 32];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut key)
            .expect("the system's random source works");
        Access {
            key,
            accepted: Mutex::default(),
            public: Mutex::default(),
            markers,
        }
    }

    fn hash(&self, token: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(token.as_bytes());
        h.finalize().into()
    }

    /// Upstream answered `token` with the repo's content.
    pub fn accept(&self, repo: &str, token: &str) {
        let k = (repo.to_string(), self.hash(token));
        self.accepted.lock().unwrap().insert(k, Instant::now());
    }

    /// Upstream refused `token` for the repo.
    pub fn reject(&self, repo: &str, token: &str) {
        let k = (repo.to_string(), self.hash(token));
        self.accepted.lock().unwrap().remove(&k);
    }

    pub fn accepted_within(&self, repo: &str, token: &str, ttl: Duration) -> bool {
        let k = (repo.to_string(), self.hash(token));
        self.accepted
            .lock()
            .unwrap()
            .get(&k)
            .is_some_and(|t| t.elapsed() < ttl)
    }

    fn marker(&self, repo: &str) -> PathBuf {
        self.markers.join(repo.replace('/', "--"))
    }

    /// What upstream said about the repo's visibility.
    pub fn set_public(&self, repo: &str, public: bool) {
        if public {
            self.public
                .lock()
                .unwrap()
                .insert(repo.to_string(), Instant::now());
            let _ = std::fs::create_dir_all(&self.markers);
            let _ = std::fs::write(self.marker(repo), b"");
        } else {
            self.public.lock().unwrap().remove(repo);
            let _ = std::fs::remove_file(self.marker(repo));
        }
    }

    /// The operator vouched for the repo (imported it): servable to anyone while upstream is
    /// down, as a repo last seen public is. Upstream's own word, once asked, replaces this.
    pub fn vouch_offline(&self, repo: &str) {
        let _ = std::fs::create_dir_all(&self.markers);
        let _ = std::fs::write(self.marker(repo), b"");
    }

    /// Public, as upstream said within `ttl`.
    pub fn public_within(&self, repo: &str, ttl: Duration) -> bool {
        self.public
            .lock()
            .unwrap()
            .get(repo)
            .is_some_and(|t| t.elapsed() < ttl)
    }

    /// Public the last time upstream was asked, however long ago (for offline serving).
    pub fn was_public(&self, repo: &str) -> bool {
        self.public.lock().unwrap().contains_key(repo) || self.marker(repo).is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_judged_per_repo_and_expire() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Access::new(tmp.path().join("public"));
        a.accept("models/o/gated", "hf_good");
        let ttl = Duration::from_secs(60);
        assert!(a.accepted_within("models/o/gated", "hf_good", ttl));
        assert!(!a.accepted_within("models/o/gated", "hf_bad", ttl));
        assert!(!a.accepted_within("models/o/other", "hf_good", ttl));
        assert!(!a.accepted_within("models/o/gated", "hf_good", Duration::ZERO));
        a.reject("models/o/gated", "hf_good");
        assert!(!a.accepted_within("models/o/gated", "hf_good", ttl));
        a.set_public("models/o/pub", true);
        let b = Access::new(tmp.path().join("public"));
        assert!(b.was_public("models/o/pub") && !b.public_within("models/o/pub", ttl));
        b.set_public("models/o/pub", false);
        assert!(!b.was_public("models/o/pub"));
        // No token, hashed or not, is on disk.
        for e in std::fs::read_dir(tmp.path().join("public")).unwrap() {
            assert!(!e.unwrap().file_name().to_string_lossy().contains("hf_"));
        }
    }
}
