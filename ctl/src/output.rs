//! Human-readable rendering of the daemon's answers, fitting 80 columns.

use lancache_protocol::Response;
use std::fmt::Write;

fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

fn duration(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

pub fn human(resp: &Response, ca_path: bool) -> String {
    let mut o = String::new();
    match resp {
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
                let health = if sub.healthy { "healthy" } else { "FAILING" };
                let _ = writeln!(
                    o,
                    "  {:<8} {health:<8} restarts: {}",
                    sub.name, sub.restarts
                );
                for l in &sub.listeners {
                    let _ = writeln!(o, "           {l}");
                }
                if let Some(e) = &sub.last_error {
                    let _ = writeln!(o, "           last error: {e}");
                }
            }
        }
        Response::Stats(s) => {
            let _ = writeln!(o, "uptime {}", duration(s.uptime_secs));
            let _ = writeln!(
                o,
                "http: {} connections, {} requests",
                s.http.connections, s.http.requests
            );
            let classes: Vec<String> = s
                .http
                .responses
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(o, "      responses: {}", classes.join(", "));
            if let Some(c) = &s.cache {
                let total = c.bytes_from_cache + c.bytes_from_upstream;
                let ratio = if total == 0 {
                    0.0
                } else {
                    c.bytes_from_cache as f64 * 100.0 / total as f64
                };
                let _ = writeln!(
                    o,
                    "cache: {} of {} used, {} models, {} blobs",
                    bytes(c.usage_bytes),
                    bytes(c.max_size),
                    c.models,
                    c.blobs
                );
                let _ = writeln!(
                    o,
                    "       served {} from cache, fetched {} upstream ({ratio:.1}% hit by bytes)",
                    bytes(c.bytes_from_cache),
                    bytes(c.bytes_from_upstream)
                );
                let _ = writeln!(
                    o,
                    "       manifests: {} hits, {} misses, {} revalidated, {} served offline",
                    c.manifest_hits,
                    c.manifest_misses,
                    c.manifest_revalidations,
                    c.manifest_offline_serves
                );
                let _ = writeln!(
                    o,
                    "       blobs: {} hits, {} misses; fills {} done, {} failed",
                    c.blob_hits, c.blob_misses, c.fills_completed, c.fills_failed
                );
                for f in &c.fills {
                    let pct = if f.size == 0 {
                        0.0
                    } else {
                        f.landed as f64 * 100.0 / f.size as f64
                    };
                    let _ = writeln!(
                        o,
                        "       fill {}… {pct:5.1}% of {} ({} waiting)",
                        &f.digest[..f.digest.len().min(19)],
                        bytes(f.size),
                        f.waiters
                    );
                }
            }
            if let Some(d) = &s.dns {
                let _ = writeln!(
                    o,
                    "dns: {} intercepted, {} forwarded ({} from cache), {} refused, {} failed, {} rate-limited, {} malformed",
                    d.intercepted,
                    d.forwarded,
                    d.cache_hits,
                    d.refused,
                    d.failed,
                    d.rate_limited,
                    d.malformed
                );
                if let (Some(p50), Some(p99)) =
                    (d.upstream_latency_ms_p50, d.upstream_latency_ms_p99)
                {
                    let _ = writeln!(o, "     upstream latency p50 {p50:.1} ms, p99 {p99:.1} ms");
                }
                if !d.by_qtype.is_empty() {
                    let types: Vec<String> =
                        d.by_qtype.iter().map(|(t, n)| format!("{t} {n}")).collect();
                    let _ = writeln!(o, "     by type: {}", types.join(", "));
                }
            }
            let _ = writeln!(
                o,
                "control: {} requests, {} refused, {} bad frames",
                s.control.requests, s.control.refused, s.control.bad_frames
            );
        }
        Response::Reloaded(r) => {
            let _ = writeln!(o, "configuration reloaded");
            if !r.applied.is_empty() {
                let _ = writeln!(o, "  applied: {}", r.applied.join(", "));
            }
            if !r.needs_restart.is_empty() {
                let _ = writeln!(
                    o,
                    "  needs a restart to take effect: {}",
                    r.needs_restart.join(", ")
                );
            }
        }
        Response::Models { models } => {
            if models.is_empty() {
                let _ = writeln!(o, "no models cached");
            }
            for m in models {
                let state = if m.complete { "complete" } else { "partial" };
                let _ = writeln!(o, "{:<40} {:>10}  {state}", m.short_name, bytes(m.size));
            }
        }
        Response::Pruned(p) => {
            let verb = if p.dry_run { "would remove" } else { "removed" };
            for m in &p.removed {
                let _ = writeln!(o, "{verb} {:<40} {:>10}", m.name, bytes(m.bytes));
            }
            let _ = writeln!(
                o,
                "{verb} {} models, {} blobs, {} freed",
                p.removed.len(),
                p.blobs_removed,
                bytes(p.bytes_freed)
            );
        }
        Response::Prefetch { fills } => {
            for f in fills {
                let _ = writeln!(
                    o,
                    "{} {} {}/{}",
                    f.model.as_deref().unwrap_or("-"),
                    f.state,
                    bytes(f.landed),
                    bytes(f.size)
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
    o
}
