//! The TLS state every part of the daemon shares (`state.tls`): the CA (loaded or created on
//! first use), the leaves in force (swapped atomically, so a handshake never sees half an
//! update), and the counters behind `lancachectl stats`. The HTTPS listener, the control socket
//! (`lancachectl ca`) and the `/ca.crt` route all go through here, so there is one CA per process.

use anyhow::Result;
use arc_swap::ArcSwapOption;
use lancache_protocol::TlsStats;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::ca::Ca;
use super::leaves::Leaves;
use super::names::NameSet;
use crate::config::Config;

#[derive(Default)]
pub struct TlsState {
    /// The CA and the directory it came from (`tls.ca_dir` needs a restart to change).
    ca: Mutex<Option<Arc<Ca>>>,
    leaves: ArcSwapOption<Leaves>,
    /// Serialises issuance, so a renewal racing a rotation cannot install leaves signed by the
    /// CA that was just replaced.
    issuing: Mutex<()>,
    pub counters: TlsCounters,
}

#[derive(Default)]
pub struct TlsCounters {
    pub handshakes: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub unknown_sni: AtomicU64,
    pub no_sni: AtomicU64,
}

impl TlsState {
    /// The CA, loaded from (or created in) `tls.ca_dir` on first use.
    pub fn ca(&self, config: &Config) -> Result<Arc<Ca>> {
        let mut slot = self.ca.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ca) = slot.as_ref() {
            return Ok(ca.clone());
        }
        let ca = Arc::new(Ca::load_or_create(
            &config.tls.ca_dir,
            &NameSet::from_config(config),
            config.tls.name_constraints,
        )?);
        *slot = Some(ca.clone());
        Ok(ca)
    }

    /// Where the CA certificate is (or will be) stored.
    pub fn ca_path(&self, config: &Config) -> PathBuf {
        match self.ca.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(ca) => ca.cert_path(),
            None => config.tls.ca_dir.join(super::ca::CERT_FILE),
        }
    }

    /// Replaces the CA with a new one (constrained to today's names) and re-issues the leaves,
    /// so the next handshake already uses the new chain.
    pub fn rotate(&self, config: &Config) -> Result<Arc<Ca>> {
        let _issuing = self.issuing.lock().unwrap_or_else(|p| p.into_inner());
        let mut slot = self.ca.lock().unwrap_or_else(|p| p.into_inner());
        let dir = slot
            .as_ref()
            .map(|ca| ca.dir.clone())
            .unwrap_or_else(|| config.tls.ca_dir.clone());
        let names = NameSet::from_config(config);
        let ca = Arc::new(Ca::generate(&dir, &names, config.tls.name_constraints)?);
        let old = slot.replace(ca.clone());
        drop(slot);
        tracing::warn!(
            old = old.as_ref().map(|c| c.fingerprint.as_str()).unwrap_or("none"),
            new = %ca.fingerprint,
            "rotated the cache's CA: every client must trust the new one (/setup.sh)"
        );
        if self.leaves.load().is_some() {
            self.install(Leaves::issue(ca.clone(), names)?);
        }
        Ok(ca)
    }

    /// The leaves in force, if any were issued.
    pub fn leaves(&self) -> Option<Arc<Leaves>> {
        self.leaves.load_full()
    }

    /// Issues leaves when none exist, the names changed, the CA changed, or renewal is due.
    /// Returns whether new leaves were put in force.
    pub fn refresh(&self, config: &Config) -> Result<bool> {
        self.refresh_at(config, std::time::SystemTime::now())
    }

    /// [`refresh`](Self::refresh) as if the time were `now` (tests of renewal).
    pub fn refresh_at(&self, config: &Config, now: std::time::SystemTime) -> Result<bool> {
        let _issuing = self.issuing.lock().unwrap_or_else(|p| p.into_inner());
        let ca = self.ca(config)?;
        let names = NameSet::from_config(config);
        let reason = match self.leaves.load_full() {
            None => "first issue".to_string(),
            Some(cur) if !Arc::ptr_eq(&cur.ca, &ca) => "the CA changed".to_string(),
            Some(cur) if cur.names != names => {
                let added = names.added_since(&cur.names);
                format!("the names changed (added: {added:?})")
            }
            Some(cur) if now >= cur.renew_at() => "renewal is due".to_string(),
            Some(_) => return Ok(false),
        };
        let leaves = Leaves::issue(ca, names)?;
        tracing::info!(
            names = ?leaves.names.dns,
            ips = ?leaves.names.ips,
            not_after = %leaves.not_after,
            "issued leaf certificates: {reason}"
        );
        self.install(leaves);
        Ok(true)
    }

    fn install(&self, leaves: Leaves) {
        if !leaves.uncovered.is_empty() {
            tracing::warn!(
                names = ?leaves.uncovered,
                "the CA's name constraints do not cover these names, so clients will reject their \
                 certificates: run `lancachectl ca --rotate` (and re-trust the new CA on clients), \
                 or set `[tls] name_constraints = false` before rotating"
            );
        }
        if !leaves.missing_constraints.is_empty() {
            tracing::warn!(
                missing = ?leaves.missing_constraints,
                ca = %leaves.ca.cert_path().display(),
                "the cache's CA was made before its name constraints permitted {}: names below \
                 them cannot be served over HTTPS with this CA. Fix: `lancachectl ca --rotate`, \
                 then re-trust the new CA on every client (/setup.sh); see docs/tls.md, \"Upgrading\"",
                leaves.missing_constraints.join(", ")
            );
        }
        self.leaves.store(Some(Arc::new(leaves)));
    }

    pub fn stats(&self) -> TlsStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let leaves = self.leaves();
        let ca = self.ca.lock().unwrap_or_else(|p| p.into_inner()).clone();
        TlsStats {
            handshakes: get(&c.handshakes),
            handshake_failures: get(&c.handshake_failures),
            handshake_timeouts: get(&c.handshake_timeouts),
            unknown_sni: get(&c.unknown_sni),
            no_sni: get(&c.no_sni),
            ca_fingerprint_sha256: ca.map(|c| c.fingerprint.clone()),
            leaf_names: leaves
                .as_ref()
                .map(|l| {
                    l.names
                        .dns
                        .iter()
                        .cloned()
                        .chain(l.names.ips.iter().map(|ip| ip.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            leaf_not_after: leaves
                .as_ref()
                .map(|l| l.not_after.unix_timestamp().max(0) as u64),
            uncovered: leaves
                .as_ref()
                .map(|l| l.uncovered.clone())
                .unwrap_or_default(),
            missing_constraints: leaves
                .map(|l| l.missing_constraints.clone())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn refresh_issues_once_renews_when_due_and_follows_names() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.tls.ca_dir = tmp.path().join("ca");
        let tls = TlsState::default();
        let now = SystemTime::now();
        assert!(tls.refresh_at(&config, now).unwrap(), "first issue");
        let first = tls.leaves().unwrap();
        assert!(!tls.refresh_at(&config, now).unwrap(), "nothing changed");
        // 19 days on: still 11 days left, not yet due.
        let day = Duration::from_secs(86400);
        assert!(!tls.refresh_at(&config, now + 19 * day).unwrap());
        // 21 days on: fewer than 10 days left, renewed.
        assert!(tls.refresh_at(&config, now + 21 * day).unwrap());
        let renewed = tls.leaves().unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert!(Arc::ptr_eq(&first.ca, &renewed.ca), "same CA");
        // A new name: re-issued, and reported as outside the CA's constraints.
        config.dns.intercept = vec![crate::config::NamePattern("models.example".into())];
        assert!(tls.refresh_at(&config, now).unwrap());
        assert_eq!(tls.stats().uncovered, vec!["models.example".to_string()]);
        // Rotation constrains the new CA to today's names and replaces the leaves at once.
        let old_ca = tls.ca(&config).unwrap();
        let new_ca = tls.rotate(&config).unwrap();
        assert_ne!(old_ca.fingerprint, new_ca.fingerprint);
        let leaves = tls.leaves().unwrap();
        assert!(Arc::ptr_eq(&leaves.ca, &new_ca));
        assert!(leaves.uncovered.is_empty());
        assert!(!tls.refresh_at(&config, now).unwrap());
    }
}
