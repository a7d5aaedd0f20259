//! `GET /metrics`: the numbers of `lancachectl stats` in the OpenMetrics / Prometheus text
//! format, for any network listed in `[http] metrics_allow` (everyone else gets 403; the
//! decision uses the socket's peer address, never a header).
//!
//! The metrics are derived from the protocol's `Stats` (the very struct `lancachectl stats`
//! prints) by walking its JSON form, so a section or field added to `Stats` later is exported
//! without more wiring: `http.requests` becomes `lancache_http_requests_total`, maps become
//! labels (`lancache_http_responses_total{class="2xx"}`), lists of records (fills, top models)
//! become gauges labelled by their text fields. Fields are counters unless named in [`GAUGES`]
//! or inside a list; absent sections (`null`) export nothing.

use http::{header, HeaderValue, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use super::body::{self, Body};
use super::Peer;
use crate::state::State;

const PREFIX: &str = "lancache";

/// Fields that are levels, not running totals.
const GAUGES: &[&str] = &[
    "uptime_secs",
    "usage_bytes",
    "max_size",
    "models",
    "blobs",
    "free_bytes",
    "min_free",
    "partial_bytes",
    "local_models",
    "deferred_blobs",
    "indexing",
    "upstream_latency_ms_p50",
    "upstream_latency_ms_p99",
    "upstream_max_rate_bytes_per_second",
    "upstream_rate_bytes_per_second",
];

/// Map-valued fields and the label their keys become.
const MAP_LABELS: &[(&str, &str)] = &[
    ("responses", "class"),
    ("by_qtype", "qtype"),
    ("failures", "kind"),
    ("per_registry", "registry"),
];

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Samples {
    /// name -> (is_gauge, [(labels, value)])
    by_name: BTreeMap<String, (bool, Vec<(Labels, f64)>)>,
}

impl Samples {
    fn add(&mut self, name: String, gauge: bool, labels: Labels, value: f64) {
        let e = self.by_name.entry(name).or_insert((gauge, vec![]));
        e.0 |= gauge;
        e.1.push((labels, value));
    }
}

fn metric_name(parts: &[&str]) -> String {
    let mut s = String::from(PREFIX);
    for p in parts {
        s.push('_');
        s.extend(
            p.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    s
}

fn walk<'a>(
    path: &mut Vec<&'a str>,
    v: &'a Value,
    labels: &Labels,
    in_list: bool,
    out: &mut Samples,
) {
    match v {
        Value::Number(n) => {
            let leaf = path.last().copied().unwrap_or("");
            let gauge = in_list || GAUGES.contains(&leaf);
            out.add(
                metric_name(path),
                gauge,
                labels.clone(),
                n.as_f64().unwrap_or(0.0),
            );
        }
        Value::Bool(b) => out.add(
            metric_name(path),
            true,
            labels.clone(),
            if *b { 1.0 } else { 0.0 },
        ),
        Value::Object(map) => {
            let leaf = path.last().copied().unwrap_or("");
            if let Some((_, label)) = MAP_LABELS.iter().find(|(f, _)| *f == leaf) {
                for (k, v) in map {
                    let mut l = labels.clone();
                    l.push((label.to_string(), k.clone()));
                    match v {
                        // A map of records (per_registry): their fields are the metrics.
                        Value::Object(fields) => {
                            for (f, v) in fields {
                                path.push(f);
                                walk(path, v, &l, in_list, out);
                                path.pop();
                            }
                        }
                        _ => walk(path, v, &l, in_list, out),
                    }
                }
            } else {
                for (k, v) in map {
                    path.push(k);
                    walk(path, v, labels, in_list, out);
                    path.pop();
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let Value::Object(map) = item else { continue };
                let mut l = labels.clone();
                for (k, v) in map {
                    if let Value::String(s) = v {
                        l.push((k.clone(), s.clone()));
                    }
                }
                for (k, v) in map {
                    if matches!(v, Value::Number(_) | Value::Bool(_)) {
                        path.push(k);
                        walk(path, v, &l, true, out);
                        path.pop();
                    }
                }
            }
        }
        Value::String(_) | Value::Null => {}
    }
}

/// The exposition text for `stats`.
pub fn render(stats: &lancache_protocol::Stats) -> String {
    let json = serde_json::to_value(stats).unwrap_or(Value::Null);
    let mut samples = Samples::default();
    walk(&mut vec![], &json, &vec![], false, &mut samples);
    let mut registry = Registry::default();
    for (name, (gauge, values)) in samples.by_name {
        let name = name.strip_prefix("lancache_").unwrap_or(&name).to_string();
        let help = format!("lancachectl stats field {}", name.replace('_', " "));
        let sub = registry.sub_registry_with_prefix(PREFIX);
        let unlabelled = values.len() == 1 && values[0].0.is_empty();
        match (gauge, unlabelled) {
            (true, true) => {
                let g = Gauge::<f64, AtomicU64>::default();
                g.set(values[0].1);
                sub.register(name, help, g);
            }
            (true, false) => {
                let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
                for (labels, v) in values {
                    family.get_or_create(&labels).set(v);
                }
                sub.register(name, help, family);
            }
            (false, true) => {
                let c = Counter::<u64>::default();
                c.inc_by(values[0].1.max(0.0) as u64);
                sub.register(name, help, c);
            }
            (false, false) => {
                let family = Family::<Labels, Counter>::default();
                for (labels, v) in values {
                    family.get_or_create(&labels).inc_by(v.max(0.0) as u64);
                }
                sub.register(name, help, family);
            }
        }
    }
    let mut text = String::new();
    let _ = encode(&mut text, &registry);
    text
}

pub fn serve(peer: Peer, state: &State) -> Response<Body> {
    let ip = peer.addr.ip().to_canonical();
    let allowed = state
        .config()
        .http
        .metrics_allow
        .iter()
        .any(|net| net.contains(&ip));
    if !allowed {
        return body::text(
            StatusCode::FORBIDDEN,
            format!("/metrics is not open to {ip}: add its network to [http] metrics_allow"),
        );
    }
    let stats = crate::control::handler::stats(state);
    let mut r = Response::new(body::full(render(&stats)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use lancache_protocol::{CacheStats, FillProgress, RegistryStats, Stats};

    #[test]
    fn every_section_becomes_metrics() {
        let mut s = Stats::default();
        s.http.requests = 7;
        s.http.responses.insert("2xx".into(), 5);
        let mut c = CacheStats {
            usage_bytes: 1234,
            ..Default::default()
        };
        c.per_registry.insert(
            "registry.ollama.ai".into(),
            RegistryStats {
                blob_hits: 3,
                ..Default::default()
            },
        );
        c.fills.push(FillProgress {
            model: Some("registry.ollama.ai/library/x:latest".into()),
            digest: "sha256:ab".into(),
            size: 10,
            landed: 4,
            waiters: 1,
            state: "filling".into(),
        });
        s.cache = Some(c);
        let text = render(&s);
        for want in [
            "lancache_http_requests_total 7",
            "lancache_http_responses_total{class=\"2xx\"} 5",
            "# TYPE lancache_cache_usage_bytes gauge",
            "lancache_cache_usage_bytes 1234",
            "lancache_cache_per_registry_blob_hits_total{registry=\"registry.ollama.ai\"} 3",
            "lancache_cache_fills_landed{",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("lancache_dns"), "absent section exported");
    }
}
