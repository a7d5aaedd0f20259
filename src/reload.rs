//! Applying a new configuration to a running daemon (`lancachectl reload`, `systemctl reload`,
//! SIGHUP). The new file is parsed and validated completely before anything changes: a bad
//! file is rejected with its error and the old configuration stays in force. Settings that are
//! read per request take effect at once; the ones bound to sockets or open files are reported
//! as needing a restart.

use lancache_protocol::ReloadReport;

use crate::config::Config;
use crate::notify;
use crate::state::State;

pub fn reload(state: &State) -> Result<ReloadReport, String> {
    notify::reloading();
    let result = state.source.load().map_err(|e| format!("{e:#}"));
    let report = match result {
        Ok(new) => {
            let old = state.config();
            let report = diff(&old, &new, state.listeners_activated());
            state.set_config(new);
            tracing::info!(applied = ?report.applied, needs_restart = ?report.needs_restart, "configuration reloaded");
            Ok(report)
        }
        Err(e) => {
            tracing::error!("reload rejected, previous configuration stays in force: {e}");
            Err(e)
        }
    };
    notify::ready(&state.status_line());
    report
}

/// Which sections changed, split by whether they apply live.
pub fn diff(old: &Config, new: &Config, activated: bool) -> ReloadReport {
    let mut applied = Vec::new();
    let mut needs_restart = Vec::new();
    let mut check = |name: &str, changed: bool, live: bool| {
        if changed {
            if live {
                applied.push(name.to_string())
            } else {
                needs_restart.push(name.to_string())
            }
        }
    };
    // Listen addresses are ignored under socket activation (systemd owns the sockets).
    let listen_live = activated;
    check("dns.listen", old.dns.listen != new.dns.listen, listen_live);
    check(
        "http.listen",
        old.http.listen != new.http.listen,
        listen_live,
    );
    check("tls.listen", old.tls.listen != new.tls.listen, listen_live);
    check(
        "control.socket",
        old.control.socket != new.control.socket,
        listen_live,
    );
    check("cache.dir", old.cache.dir != new.cache.dir, false);
    check("log.filter", old.log.filter != new.log.filter, false);
    check("tls.ca_dir", old.tls.ca_dir != new.tls.ca_dir, false);
    // Read when the CA is next created or rotated.
    check(
        "tls.name_constraints",
        old.tls.name_constraints != new.tls.name_constraints,
        true,
    );
    let mut cache = old.cache.clone();
    cache.dir = new.cache.dir.clone();
    check("cache", cache != new.cache, true);
    check("upstream", old.upstream != new.upstream, true);
    let (mut dns, mut http) = (old.dns.clone(), old.http.clone());
    dns.listen = new.dns.listen.clone();
    http.listen = new.http.listen.clone();
    check("dns", dns != new.dns, true);
    check("http", http != new.http, true);
    check(
        "control.group",
        old.control.group != new.control.group,
        true,
    );
    ReloadReport {
        applied,
        needs_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_splits_live_and_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.dns.intercept = vec![crate::config::NamePattern("hf.co".into())];
        new.http.listen = vec!["127.0.0.1:1".parse().unwrap()];
        new.cache.dir = "/elsewhere".into();
        let r = diff(&old, &new, false);
        assert_eq!(r.applied, vec!["dns"]);
        assert_eq!(r.needs_restart, vec!["http.listen", "cache.dir"]);
        assert!(diff(&old, &old, false).applied.is_empty());
    }
}
