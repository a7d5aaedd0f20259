//! `/metrics` (OpenMetrics 1.0 text format, which Prometheus scrapes):
//! - the exposition parses with an independent parser (Python `prometheus_client`'s
//!   OpenMetrics parser) and has the families `lancachectl stats` shows (http, control, cache
//!   usage, lifecycle: evictions, prunes), with counters typed as counters and levels as gauges;
//! - the values agree with `lancachectl stats --json`;
//! - a source outside `[http] metrics_allow` gets 403 (decided by the socket's peer address:
//!   the test connects from 127.0.0.2 with only 127.0.0.1/32 allowed), an allowed one 200.

use crate::util::Daemon;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

/// Parses `text` with prometheus_client and prints "name type value-of-first-sample" lines.
const PARSER: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(fam.name, fam.type, s.name, labels, s.value)
"#;

fn parse(text: &str) -> Vec<(String, String, String, String, f64)> {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PARSER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                f[4].parse().unwrap(),
            )
        })
        .collect()
}

fn have_parser() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("LANCACHE_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIP: python3 prometheus_client is not installed");
            return false;
        }
        panic!("python3 prometheus_client is missing: run scripts/test-deps.sh");
    }
    true
}

/// A raw GET from a chosen local address.
fn get_from(source: IpAddr, to: SocketAddr, path: &str) -> String {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(source, 0).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: cache\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

#[test]
fn metrics_parse_and_match_stats() {
    if !have_parser() {
        return;
    }
    let d = Daemon::start();
    // Some traffic so counters are not all zero.
    let _ = ureq::get(&d.http_url("/health")).call();
    let _ = d.ctl(&["status"]);
    let resp = ureq::get(&d.http_url("/metrics")).call().unwrap();
    let ctype = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = resp.into_body().read_to_string().unwrap();
    let samples = parse(&text);
    let find = |family: &str| {
        samples
            .iter()
            .find(|s| s.0 == family)
            .unwrap_or_else(|| panic!("no family {family} in\n{text}"))
    };
    let requests = find("lancache_http_requests");
    assert_eq!(requests.1, "counter");
    assert_eq!(requests.2, "lancache_http_requests_total");
    assert!(requests.4 >= 2.0, "{requests:?}");
    assert!(samples
        .iter()
        .any(|s| s.0 == "lancache_http_responses" && s.3 == "class=2xx" && s.4 >= 1.0));
    assert_eq!(find("lancache_cache_usage_bytes").1, "gauge");
    // The DNS section (the harness always gives the daemon DNS sockets) and the cache's fill
    // and traffic counters, both built from the same stats as `lancachectl stats`.
    assert_eq!(find("lancache_dns_intercepted").1, "counter");
    assert_eq!(
        find("lancache_dns_forwarded").2,
        "lancache_dns_forwarded_total"
    );
    assert_eq!(find("lancache_cache_blobs").1, "gauge");
    assert_eq!(find("lancache_cache_max_size").1, "gauge");
    assert_eq!(find("lancache_lifecycle_evictions").1, "counter");
    assert_eq!(find("lancache_lifecycle_prunes").1, "counter");
    assert_eq!(find("lancache_lifecycle_free_bytes").1, "gauge");
    assert!(find("lancache_control_requests").4 >= 1.0);
    assert_eq!(find("lancache_uptime_secs").1, "gauge");

    // Same numbers as the control socket (max_size does not move).
    let stats = d.ctl_json(&["stats"]);
    assert_eq!(
        find("lancache_cache_max_size").4 as u64,
        stats["cache"]["max_size"].as_u64().unwrap()
    );
}

#[test]
fn metrics_forbidden_outside_metrics_allow() {
    let d = Daemon::builder()
        .config("[http]\nmetrics_allow = [\"127.0.0.1/32\"]\n")
        .start();
    let addr = d.http.unwrap();
    let denied = get_from("127.0.0.2".parse().unwrap(), addr, "/metrics");
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert!(denied.contains("metrics_allow"), "{denied}");
    assert!(!denied.contains("lancache_http_requests"), "{denied}");
    let allowed = get_from("127.0.0.1".parse().unwrap(), addr, "/metrics");
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert!(allowed.contains("lancache_http_requests_total"));
    // Other routes are not restricted by metrics_allow.
    let health = get_from("127.0.0.2".parse().unwrap(), addr, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}
