//! Human-readable rendering of the daemon's answers, fitting 80 columns (long model names are
//! shortened with an ellipsis; `--json` always has them whole).

use lancache_protocol::{HubRepoInfo, ModelInfo, PruneReport, Response, Stats};
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::style::Style;

pub fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

fn duration(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// `1,234,567`: counters are easier to read grouped.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "5m ago", "3h ago", "12d ago": the largest unit only.
pub fn ago(when: Option<u64>, now: u64) -> String {
    let Some(t) = when else {
        return "never".into();
    };
    let d = now.saturating_sub(t);
    match d {
        0..60 => "just now".into(),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Shortens `s` to `width` characters, marking the cut with an ellipsis.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

pub fn human(resp: &Response, ca_path: bool, st: Style) -> String {
    let mut o = String::new();
    match resp {
        Response::Export { models, bytes: n } => {
            let _ = writeln!(o, "bundle of {} model(s), {}", models.len(), bytes(*n));
        }
        Response::Imported(r) => {
            let _ = writeln!(
                o,
                "imported {} model(s), {} blob(s) ({}); already here: {} model(s), {} blob(s){}",
                r.models_imported.len(),
                r.blobs_imported,
                bytes(r.bytes_imported),
                r.models_skipped.len(),
                r.blobs_skipped,
                if r.local { " (kept as local)" } else { "" }
            );
            for m in &r.models_imported {
                let _ = writeln!(o, "  + {}", short(m));
            }
            if !r.repos_imported.is_empty() || !r.repos_skipped.is_empty() {
                let _ = writeln!(
                    o,
                    "Hugging Face: imported {} repo revision(s); already here: {}",
                    r.repos_imported.len(),
                    r.repos_skipped.len()
                );
                for m in &r.repos_imported {
                    let _ = writeln!(o, "  + {m}");
                }
            }
        }
        Response::Status(s) => {
            let _ = writeln!(
                o,
                "lancached {} (pid {}), up {}",
                s.version,
                s.pid,
                duration(s.uptime_secs)
            );
            let _ = writeln!(o, "config: {}", s.config);
            for sub in &s.subsystems {
                let health = if sub.healthy {
                    st.green(&format!("{:<8}", "healthy"))
                } else {
                    st.red(&format!("{:<8}", "FAILING"))
                };
                let _ = writeln!(o, "  {:<8} {health} restarts: {}", sub.name, sub.restarts);
                for l in &sub.listeners {
                    let _ = writeln!(o, "           {l}");
                }
                if let Some(e) = &sub.last_error {
                    let _ = writeln!(o, "           last error: {}", fit(e, 56));
                }
            }
            if let Some(c) = &s.cluster {
                let store = if c.store_reachable {
                    st.green("reachable")
                } else {
                    st.red("UNREACHABLE (serving local hits, filling alone)")
                };
                let _ = writeln!(o, "cluster: node {} of {}", c.node, c.nodes.join(", "));
                let _ = writeln!(o, "  store {} {store}", c.store);
                let _ = writeln!(o, "  healthy: {}", c.healthy_nodes.join(", "));
                let _ = writeln!(o, "  leases held: {}", c.leases_held.len());
                for d in &c.leases_held {
                    let _ = writeln!(o, "    {}", short(d));
                }
            }
        }
        Response::Stats(s) => stats(&mut o, s, st),
        Response::Reloaded(r) => {
            let _ = writeln!(o, "configuration reloaded");
            if !r.applied.is_empty() {
                let _ = writeln!(o, "  applied: {}", r.applied.join(", "));
            }
            if !r.needs_restart.is_empty() {
                let _ = writeln!(
                    o,
                    "  {}: {}",
                    st.yellow("needs a restart to take effect"),
                    r.needs_restart.join(", ")
                );
            }
        }
        Response::Models { models, hub } => {
            if models.is_empty() && hub.is_empty() {
                let _ = writeln!(o, "no models cached");
            } else {
                if !models.is_empty() {
                    models_table(&mut o, models, st);
                }
                if !hub.is_empty() {
                    hub_table(&mut o, hub, st);
                }
            }
        }
        Response::Pruned(p) => prune_table(&mut o, p, st),
        Response::Prefetch { fills } => {
            for (name, m) in crate::prefetch::group(fills) {
                let _ = writeln!(
                    o,
                    "{:<44} {:>10} of {:>10}  {}",
                    fit(&short(&name), 44),
                    bytes(m.landed),
                    bytes(m.size),
                    m.state()
                );
            }
        }
        Response::Ca(ca) => {
            if ca_path {
                let _ = writeln!(o, "{}", ca.path);
            } else {
                o.push_str(&ca.pem);
            }
        }
        Response::Error(e) => {
            let _ = writeln!(o, "error: {}", e.message);
        }
    }
    // Padding of the last column is not for anyone to see.
    let mut trimmed = String::with_capacity(o.len());
    for line in o.lines() {
        trimmed.push_str(line.trim_end());
        trimmed.push('\n');
    }
    trimmed
}

/// The name `ollama list` would show for a canonical `host/namespace/model:tag`.
pub fn short(canonical: &str) -> String {
    canonical
        .strip_prefix("registry.ollama.ai/library/")
        .or_else(|| canonical.strip_prefix("registry.ollama.ai/"))
        .unwrap_or(canonical)
        .to_string()
}

const LABEL: usize = 10;

fn label(st: Style, l: &str) -> String {
    st.bold(&format!("{l:<LABEL$}"))
}

fn stats(o: &mut String, s: &Stats, st: Style) {
    let pad = " ".repeat(LABEL);
    let _ = writeln!(o, "lancached up {}", duration(s.uptime_secs));
    if let Some(c) = &s.cache {
        let local = s
            .lifecycle
            .as_ref()
            .map(|l| format!(" ({} local)", count(l.local_models)))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "{}{} of {} ({:.0}%), {} models{local}, {} blobs",
            label(st, "cache"),
            bytes(c.usage_bytes),
            bytes(c.max_size),
            pct(c.usage_bytes, c.max_size),
            count(c.models),
            count(c.blobs)
        );
        if let Some(l) = &s.lifecycle {
            let _ = writeln!(
                o,
                "{pad}{} free on disk (min_free {}){}",
                bytes(l.free_bytes),
                bytes(l.min_free),
                if l.indexing {
                    "; indexing the directory"
                } else {
                    ""
                }
            );
        }
        let total = c.bytes_from_cache + c.bytes_from_upstream;
        let _ = writeln!(
            o,
            "{}{:.1}% of bytes served from cache",
            label(st, "hits"),
            pct(c.bytes_from_cache, total)
        );
        let _ = writeln!(
            o,
            "{pad}{} from cache (saved), {} fetched upstream",
            bytes(c.bytes_from_cache),
            bytes(c.bytes_from_upstream)
        );
        let rate = |b: u64| format!("{:.1} Mbit/s", b as f64 * 8.0 / 1e6);
        let _ = writeln!(
            o,
            "{pad}upstream rate {} (last 5 s), cap {}",
            rate(c.upstream_rate_bytes_per_second),
            match c.upstream_max_rate_bytes_per_second {
                0 => "none".to_string(),
                b => rate(b),
            }
        );
        let _ = writeln!(
            o,
            "{pad}manifests {} hits / {} misses, {} revalidated, {} offline",
            count(c.manifest_hits),
            count(c.manifest_misses),
            count(c.manifest_revalidations),
            count(c.manifest_offline_serves)
        );
        let failures: Vec<String> = c
            .failures
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {}", count(*n)))
            .collect();
        let _ = writeln!(
            o,
            "{pad}blobs {} hits / {} misses; fills {} done, {} failed",
            count(c.blob_hits),
            count(c.blob_misses),
            count(c.fills_completed),
            count(c.fills_failed),
        );
        if !failures.is_empty() {
            let _ = writeln!(
                o,
                "{pad}{}",
                fit(&format!("failures: {}", failures.join(", ")), 70)
            );
        }
        if !c.per_registry.is_empty() {
            let _ = writeln!(
                o,
                "{}{}",
                label(st, "registry"),
                st.dim(&format!(
                    "{:<24} {:>9} {:>9} {:>11} {:>11}",
                    "NAME", "HITS", "MISSES", "FROM CACHE", "UPSTREAM"
                ))
            );
            for (name, r) in &c.per_registry {
                let _ = writeln!(
                    o,
                    "{pad}{:<24} {:>9} {:>9} {:>11} {:>11}",
                    fit(name, 24),
                    count(r.manifest_hits + r.blob_hits),
                    count(r.manifest_misses + r.blob_misses),
                    bytes(r.bytes_from_cache),
                    bytes(r.bytes_from_upstream)
                );
            }
        }
        if let Some(l) = &s.lifecycle {
            let now = now();
            for (i, m) in l.top_models.iter().take(5).enumerate() {
                let _ = writeln!(
                    o,
                    "{}{:<34} {:>11} requests  {:>9}",
                    if i == 0 {
                        label(st, "top")
                    } else {
                        pad.clone()
                    },
                    fit(&m.name, 34),
                    count(m.hits),
                    ago(Some(m.last_used), now)
                );
            }
        }
        for (i, f) in c.fills.iter().enumerate() {
            let name = f.model.as_deref().map(short).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                o,
                "{}{:<22} {:<12} {:>5.1}% of {:>10} {:>3} waiting",
                if i == 0 {
                    label(st, "fills")
                } else {
                    pad.clone()
                },
                fit(&name, 22),
                fit(f.digest.strip_prefix("sha256:").unwrap_or(&f.digest), 12),
                pct(f.landed, f.size),
                bytes(f.size),
                f.waiters
            );
        }
    }
    if let Some(l) = &s.lifecycle {
        let _ = writeln!(
            o,
            "{}{} runs, {} models, {} freed; {} fills refused for room",
            label(st, "evictions"),
            count(l.evictions),
            count(l.evicted_models),
            bytes(l.evicted_bytes),
            count(l.no_space)
        );
        let _ = writeln!(
            o,
            "{}{} runs, {} models, {} freed",
            label(st, "prunes"),
            count(l.prunes),
            count(l.pruned_models),
            bytes(l.pruned_bytes)
        );
    }
    if let Some(d) = &s.dns {
        let _ = writeln!(
            o,
            "{}{} intercepted, {} forwarded, {} refused, {} failed",
            label(st, "dns"),
            count(d.intercepted),
            count(d.forwarded),
            count(d.refused),
            count(d.failed)
        );
        let _ = writeln!(
            o,
            "{pad}{} rate-limited ({} sent to TCP), {} malformed",
            count(d.rate_limited),
            count(d.slipped),
            count(d.malformed)
        );
        // Its own line: with the slip count beside the limit, both no longer fit in 80 columns.
        if let (Some(a), Some(b)) = (d.upstream_latency_ms_p50, d.upstream_latency_ms_p99) {
            let _ = writeln!(o, "{pad}upstream p50 {a:.1} ms, p99 {b:.1} ms");
        }
    }
    if let Some(t) = &s.tls {
        let _ = writeln!(
            o,
            "{}{} handshakes, {} failed, {} unknown SNI",
            label(st, "tls"),
            count(t.handshakes),
            count(t.handshake_failures + t.handshake_timeouts),
            count(t.unknown_sni + t.no_sni)
        );
        if !t.uncovered.is_empty() {
            let _ = writeln!(
                o,
                "{pad}outside the CA's name constraints (rotate the CA): {}",
                t.uncovered.join(", ")
            );
        }
        if !t.missing_constraints.is_empty() {
            let _ = writeln!(
                o,
                "{pad}the CA predates constraints for {} (run `lancachectl ca --rotate`)",
                t.missing_constraints.join(", ")
            );
        }
    }
    let classes: Vec<String> = s
        .http
        .responses
        .iter()
        .map(|(k, v)| format!("{k} {}", count(*v)))
        .collect();
    let _ = writeln!(
        o,
        "{}{} connections, {} requests",
        label(st, "http"),
        count(s.http.connections),
        count(s.http.requests)
    );
    let _ = writeln!(o, "{pad}{}", classes.join(", "));
    let _ = writeln!(
        o,
        "{}{} requests, {} refused, {} bad frames",
        label(st, "control"),
        count(s.control.requests),
        count(s.control.refused),
        count(s.control.bad_frames)
    );
}

fn models_table(o: &mut String, models: &[ModelInfo], st: Style) {
    let now = now();
    let _ = writeln!(
        o,
        "{}",
        st.bold(
            format!(
                "{:<36} {:>10}  {:<8}  {:<10}  {:<7}",
                "NAME", "SIZE", "STATE", "LAST USED", "SOURCE"
            )
            .trim_end()
        )
    );
    let mut total = 0;
    for m in models {
        total += m.size;
        let state = if m.complete {
            format!("{:<8}", "complete")
        } else {
            st.yellow(&format!("{:<8}", "partial"))
        };
        let _ = writeln!(
            o,
            "{:<36} {:>10}  {state}  {:<10}  {:<7}",
            fit(&m.short_name, 36),
            bytes(m.size),
            ago(m.last_used, now),
            if m.fetched { "fetched" } else { "local" }
        );
    }
    let _ = writeln!(
        o,
        "{} models, {} (shared blobs counted once per model)",
        models.len(),
        bytes(total)
    );
}

/// Hugging Face repos, one line per revision held (`hf:org/name@ref`, or `@<commit>`).
fn hub_table(o: &mut String, repos: &[HubRepoInfo], st: Style) {
    let now = now();
    let _ = writeln!(
        o,
        "{}",
        st.bold(
            format!(
                "{:<36} {:>10}  {:<8}  {:<10}  {:<7}",
                "HUGGING FACE", "SIZE", "STATE", "LAST USED", "SOURCE"
            )
            .trim_end()
        )
    );
    let mut total = 0;
    let mut revisions = 0;
    for r in repos {
        total += r.size;
        for v in &r.revisions {
            revisions += 1;
            let name = match v.refs.first() {
                Some(rf) => format!("{}@{rf}", r.name),
                None => format!("{}@{}", r.name, &v.commit[..v.commit.len().min(12)]),
            };
            let state = if v.complete {
                format!("{:<8}", "complete")
            } else {
                st.yellow(&format!("{:<8}", "partial"))
            };
            let _ = writeln!(
                o,
                "{:<36} {:>10}  {state}  {:<10}  {:<7}",
                fit(&name, 36),
                bytes(v.size),
                ago(v.last_used, now),
                if v.fetched { "fetched" } else { "local" }
            );
            let _ = writeln!(
                o,
                "  {} commit {} {} files",
                if r.kind == "dataset" {
                    "dataset"
                } else {
                    "model"
                },
                v.commit,
                v.files
            );
        }
    }
    let _ = writeln!(
        o,
        "{} repos, {} revisions, {} (files shared by revisions counted once)",
        repos.len(),
        revisions,
        bytes(total)
    );
}

fn prune_table(o: &mut String, p: &PruneReport, st: Style) {
    let verb = if p.dry_run { "would remove" } else { "removed" };
    let now = now();
    if !p.removed.is_empty() {
        let _ = writeln!(
            o,
            "{}",
            st.bold(
                format!(
                    "{:<52} {:>12}  {:<10}",
                    if p.dry_run { "WOULD REMOVE" } else { "REMOVED" },
                    "FREES",
                    "LAST USED"
                )
                .trim_end()
            )
        );
        for m in &p.removed {
            let _ = writeln!(
                o,
                "{:<52} {:>12}  {:<10}",
                fit(&m.name, 52),
                bytes(m.bytes),
                ago(m.last_used, now)
            );
        }
    }
    let _ = writeln!(
        o,
        "{verb} {} models, {} blobs, {} stale fills: {} {}",
        p.removed.len(),
        count(p.blobs_removed),
        count(p.partial_fills_removed),
        bytes(p.bytes_freed),
        if p.dry_run { "(dry run)" } else { "freed" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use lancache_protocol::{
        CacheStats, DnsStats, HubRevision, LifecycleStats, ModelUse, PrunedModel,
    };

    #[test]
    fn stats_fit_80_columns() {
        let mut s = Stats::default();
        let mut c = CacheStats {
            usage_bytes: 212 << 30,
            max_size: 500 << 30,
            bytes_from_cache: 1 << 40,
            bytes_from_upstream: 98 << 30,
            blob_hits: 123_456_789,
            ..Default::default()
        };
        c.failures.insert("digest_mismatch".into(), 3);
        c.failures.insert("upstream_status".into(), 12345);
        c.per_registry.insert(
            "a-very-long-registry-name.example.com".into(),
            Default::default(),
        );
        c.fills.push(lancache_protocol::FillProgress {
            model: Some("hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M".into()),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 4 << 30,
            landed: 1 << 30,
            waiters: 12,
            state: "filling".into(),
        });
        s.cache = Some(c);
        s.dns = Some(DnsStats {
            intercepted: u32::MAX as u64,
            upstream_latency_ms_p50: Some(1.5),
            upstream_latency_ms_p99: Some(25.0),
            ..Default::default()
        });
        s.lifecycle = Some(LifecycleStats {
            top_models: vec![ModelUse {
                name: "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M".into(),
                hits: 999_999_999,
                last_used: now() - 7200,
            }],
            ..Default::default()
        });
        s.http.responses.insert("2xx".into(), 10);
        let text = human(&Response::Stats(s), false, Style::plain());
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{} columns: {line}", line.len());
        }
        assert!(
            text.contains("hits      91.3% of bytes served from cache"),
            "{text}"
        );
    }

    #[test]
    fn tables_fit_80_columns() {
        let m = ModelInfo {
            name: "x".into(),
            short_name: "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M-extra-long".into(),
            size: 999 << 30,
            digest: String::new(),
            complete: false,
            last_used: Some(now() - 90000),
            fetched: true,
        };
        let text = human(
            &Response::Models {
                models: vec![m.clone(), m],
                hub: vec![HubRepoInfo {
                    name: "hf:datasets/some-organisation/a-long-dataset-name".into(),
                    kind: "dataset".into(),
                    size: 999 << 30,
                    last_used: None,
                    revisions: vec![HubRevision {
                        commit: "c".repeat(40),
                        refs: vec!["main".into()],
                        files: 12,
                        size: 999 << 30,
                        complete: true,
                        last_used: None,
                        fetched: false,
                    }],
                }],
            },
            false,
            Style::plain(),
        );
        let p = PruneReport {
            dry_run: true,
            removed: vec![PrunedModel {
                name: "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M-extra-long".into(),
                bytes: 999 << 30,
                last_used: None,
            }],
            blobs_removed: 12345,
            bytes_freed: 999 << 30,
            partial_fills_removed: 3,
        };
        let text = text + &human(&Response::Pruned(p), false, Style::plain());
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line}");
        }
        assert!(
            text.contains("1d ago") && text.contains("partial"),
            "{text}"
        );
        assert!(
            text.contains(
                "would remove 1 models, 12,345 blobs, 3 stale fills: 999.0 GiB (dry run)"
            ),
            "{text}"
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(ago(Some(100), 100 + 7200), "2h ago");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(short("registry.ollama.ai/library/llama3:8b"), "llama3:8b");
        assert_eq!(short("hf.co/u/r:q"), "hf.co/u/r:q");
    }
}
