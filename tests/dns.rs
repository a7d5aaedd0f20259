//! The DNS interceptor, queried by real clients (`dig`, `kdig`) over UDP and TCP, forwarding to
//! a real upstream resolver (`dnsmasq` on another loopback address, with local records):
//! - intercepted names (registry hosts, exact and `*.suffix` intercepts, any letter case): A and
//!   AAAA answer the advertised addresses with AA set, HTTPS/SVCB/MX get NODATA, EDNS is
//!   answered (RFC 6891), ANY gets one HINFO "RFC8482" (RFC 8482); same over TCP (RFC 7766);
//! - other names are relayed: A/AAAA/MX/TXT as upstream answered, a big TXT arrives truncated
//!   over UDP and whole over TCP (the upstream leg falls back to TCP), repeats come from the
//!   cache with TTLs counted down;
//! - all upstreams down or silent: SERVFAIL well inside the per-resolver timeout budget; a
//!   resolver that is the daemon itself is skipped rather than looped through;
//! - a source outside `[dns] allow` gets REFUSED and is counted;
//! - the per-client rate limit (UDP only) answers what exceeds it with TC=1, no larger than the
//!   query (slip 1, as BIND's and Knot's RRL), and counts it; kdig and a client of our own retry
//!   over TCP and lose nothing at 10× the limit;
//! - garbage datagrams and TCP frames are dropped or FORMERR'd, the server keeps answering;
//! - `lancachectl reload` applies new intercepts, advertise addresses and allow lists;
//! - `lancachectl stats` shows the counters;
//! - IPv6 (`[::1]`) over UDP and TCP; idle TCP connections are closed (RFC 7766 6.2.3);
//! - with no `advertise`, intercepted names answer the default-route interface's addresses.

use crate::util::{require_program, Daemon};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A dnsmasq serving local records on its own loopback address, killed on drop.
struct Upstream {
    child: Child,
    addr: SocketAddr,
}

impl Upstream {
    fn start(ip: &str) -> Upstream {
        let big = vec!["x".repeat(200); 8].join(",");
        for _ in 0..20 {
            let port = {
                let udp = UdpSocket::bind(format!("{ip}:0")).unwrap();
                let port = udp.local_addr().unwrap().port();
                if TcpListener::bind(format!("{ip}:{port}")).is_err() {
                    continue;
                }
                port
            };
            let child = Command::new("dnsmasq")
                .args([
                    "-k",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--pid-file=",
                    "--user=root",
                    &format!("--listen-address={ip}"),
                    &format!("--port={port}"),
                    // Local records default to TTL 0, which nobody may cache.
                    "--local-ttl=300",
                    "--address=/fwd.test/192.0.2.7",
                    "--mx-host=fwd.test,mail.fwd.test,10",
                    "--txt-record=txt.fwd.test,hello",
                    &format!("--txt-record=big.fwd.test,{big}"),
                    // The name a reload turns into an intercept.
                    "--address=/later.test/192.0.2.8",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dnsmasq");
            let mut up = Upstream {
                child,
                addr: format!("{ip}:{port}").parse().unwrap(),
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if raw_query(
                    up.addr,
                    &query_bytes(1, "fwd.test.", 1),
                    Duration::from_millis(200),
                )
                .is_some()
                {
                    return up;
                }
                if up.child.try_wait().unwrap().is_some() {
                    break;
                }
            }
            let _ = up.child.kill();
        }
        panic!("dnsmasq did not start on {ip}");
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn query_bytes(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

fn raw_query(server: SocketAddr, q: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.send_to(q, server).unwrap();
    let mut buf = [0u8; 4096];
    s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

fn run(program: &str, args: &[String]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `dig` against the daemon; `extra` are further dig arguments.
fn dig(d: &Daemon, extra: &[&str]) -> String {
    let dns = d.dns.unwrap();
    let mut args = vec![
        format!("@{}", dns.ip()),
        "-p".into(),
        dns.port().to_string(),
        "+tries=1".into(),
        "+time=3".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run("dig", &args)
}

fn kdig(d: &Daemon, extra: &[&str]) -> String {
    let dns = d.dns.unwrap();
    let mut args = vec![
        format!("@{}", dns.ip()),
        "-p".into(),
        dns.port().to_string(),
        "+retry=0".into(),
        "+time=3".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run("kdig", &args)
}

fn short(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(|l| l.trim().to_string())
        .collect()
}

fn programs() -> bool {
    require_program("dig") && require_program("kdig") && require_program("dnsmasq")
}

fn daemon(upstream: &Upstream, extra: &str) -> Daemon {
    Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = [\"{}\"]\n\n[dns]\nadvertise = [\"192.0.2.10\", \"2001:db8::10\"]\nintercept = [\"*.wild.test\", \"hf.co\"]\n{extra}",
            upstream.addr
        ))
        .start()
}

#[test]
fn intercepted_names_answer_with_the_cache_over_udp_and_tcp() {
    if !programs() {
        return;
    }
    let up = Upstream::start("127.0.0.53");
    let d = daemon(&up, "");
    for transport in ["+notcp", "+tcp"] {
        let a = dig(&d, &[transport, "registry.ollama.ai", "A"]);
        assert!(
            a.contains("status: NOERROR") && a.contains("flags: qr aa rd ra"),
            "{a}"
        );
        assert!(
            a.contains("registry.ollama.ai.\t60\tIN\tA\t192.0.2.10"),
            "{a}"
        );
        assert!(
            a.contains("OPT PSEUDOSECTION") && a.contains("udp: 1232"),
            "{a}"
        );
        let aaaa = dig(&d, &[transport, "+short", "REGISTRY.Ollama.AI", "AAAA"]);
        assert_eq!(short(&aaaa), ["2001:db8::10"], "{aaaa}");
        for qtype in ["HTTPS", "SVCB", "MX", "TXT"] {
            let out = dig(&d, &[transport, "registry.ollama.ai", qtype]);
            assert!(
                out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
                "{qtype}: {out}"
            );
            assert!(out.contains("flags: qr aa rd ra"), "{out}");
        }
        let wild = dig(&d, &[transport, "+short", "a.b.wild.test", "A"]);
        assert_eq!(short(&wild), ["192.0.2.10"], "{wild}");
        let exact = dig(&d, &[transport, "+short", "hf.co", "AAAA"]);
        assert_eq!(short(&exact), ["2001:db8::10"], "{exact}");
        let any = dig(&d, &[transport, "registry.ollama.ai", "ANY"]);
        assert!(any.contains("HINFO\t\"RFC8482\""), "{any}");
    }
    // kdig: another implementation, also without EDNS.
    for transport in ["+notcp", "+tcp"] {
        let out = kdig(&d, &[transport, "+noedns", "registry.ollama.ai", "A"]);
        assert!(
            out.contains("NOERROR") && out.contains("192.0.2.10"),
            "{out}"
        );
        assert!(!out.contains("EDNS PSEUDOSECTION"), "{out}");
        let out = kdig(&d, &[transport, "+edns", "x.wild.test", "AAAA"]);
        assert!(
            out.contains("2001:db8::10") && out.contains("EDNS PSEUDOSECTION"),
            "{out}"
        );
    }
    let stats = d.ctl_json(&["stats"]);
    assert!(
        stats["dns"]["intercepted"].as_u64().unwrap() >= 20,
        "{stats}"
    );
    assert!(
        stats["dns"]["by_qtype"]["AAAA"].as_u64().unwrap() >= 4,
        "{stats}"
    );
}

#[test]
fn other_names_are_relayed_with_tcp_fallback_and_cache() {
    if !programs() {
        return;
    }
    let up = Upstream::start("127.0.0.54");
    let d = daemon(&up, "");
    for transport in ["+notcp", "+tcp"] {
        let a = dig(&d, &[transport, "+short", "fwd.test", "A"]);
        assert_eq!(short(&a), ["192.0.2.7"], "{a}");
        let mx = dig(&d, &[transport, "+short", "fwd.test", "MX"]);
        assert_eq!(short(&mx), ["10 mail.fwd.test."], "{mx}");
        let txt = kdig(&d, &[transport, "+short", "txt.fwd.test", "TXT"]);
        assert_eq!(short(&txt), ["\"hello\""], "{txt}");
        // Whatever upstream says is passed on untouched: for HTTPS dnsmasq's REFUSED with its
        // extended error (RFC 8914), for AAAA of an IPv4-only name its NODATA.
        let gist = |out: &str| {
            out.lines()
                .filter(|l| {
                    l.contains("status:")
                        || l.contains("EDE:")
                        || l.contains("flags:")
                        || l.contains("\tIN\t")
                })
                .map(|l| l.split(", id:").next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        for qtype in ["HTTPS", "AAAA"] {
            let relayed = dig(&d, &[transport, "fwd.test", qtype]);
            let direct = run(
                "dig",
                &[
                    format!("@{}", up.addr.ip()),
                    "-p".into(),
                    up.addr.port().to_string(),
                    transport.into(),
                    "fwd.test".into(),
                    qtype.into(),
                ],
            );
            assert_eq!(gist(&relayed), gist(&direct), "{relayed}\n{direct}");
        }
    }
    // Over UDP the big answer comes back truncated and dig retries over TCP; over TCP our
    // upstream leg falls back to TCP itself.
    let big = dig(&d, &["big.fwd.test", "TXT"]);
    assert!(big.contains("Truncated, retrying in TCP mode"), "{big}");
    assert!(
        big.contains("ANSWER: 1") && big.matches(&"x".repeat(200)).count() == 8,
        "{big}"
    );
    let big_tcp = kdig(&d, &["+tcp", "big.fwd.test", "TXT"]);
    assert_eq!(big_tcp.matches(&"x".repeat(200)).count(), 8, "{big_tcp}");
    let noedns = dig(&d, &["+noedns", "+ignore", "big.fwd.test", "TXT"]);
    assert!(
        noedns
            .lines()
            .any(|l| l.contains("flags:") && l.contains(" tc")),
        "{noedns}"
    );
    // A cached answer's TTLs count down.
    let ttl = |out: String| -> u32 {
        let line = short(&out).pop().unwrap_or_default();
        line.split_whitespace()
            .nth(1)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    };
    let first = ttl(dig(&d, &["+noall", "+answer", "txt.fwd.test", "TXT"]));
    std::thread::sleep(Duration::from_millis(2100));
    let later = ttl(dig(&d, &["+noall", "+answer", "txt.fwd.test", "TXT"]));
    assert!(
        first >= 299 && later <= first - 2 && later >= first - 3,
        "{first} -> {later}"
    );
    let stats = d.ctl_json(&["stats"]);
    let dns = &stats["dns"];
    assert!(dns["forwarded"].as_u64().unwrap() >= 10, "{stats}");
    assert!(dns["cache_hits"].as_u64().unwrap_or(0) >= 1, "{stats}");
    assert!(dns["upstream_latency_ms_p50"].as_f64().is_some(), "{stats}");
}

#[test]
fn upstream_down_is_servfail_quickly() {
    if !programs() {
        return;
    }
    // One resolver that refuses (nothing listening: ICMP port unreachable) and one that
    // swallows queries without answering.
    let silent = UdpSocket::bind("127.0.0.55:0").unwrap();
    let closed = {
        let s = UdpSocket::bind("127.0.0.55:0").unwrap();
        s.local_addr().unwrap()
    };
    let d = Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = [\"{closed}\", \"{}\"]\n\n[dns]\nupstream_timeout = \"700ms\"\n",
            silent.local_addr().unwrap()
        ))
        .start();
    let started = Instant::now();
    let out = dig(&d, &["+time=5", "down.test", "A"]);
    let took = started.elapsed();
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(took < Duration::from_millis(1600), "took {took:?}");
    let stats = d.ctl_json(&["stats"]);
    assert!(stats["dns"]["failed"].as_u64().unwrap() >= 1, "{stats}");
}

#[test]
fn sources_outside_allow_are_refused() {
    if !programs() {
        return;
    }
    let up = Upstream::start("127.0.0.56");
    let d = daemon(&up, "allow = [\"127.0.0.1/32\"]\n");
    for transport in ["+notcp", "+tcp"] {
        let out = dig(
            &d,
            &[transport, "-b", "127.0.0.2", "registry.ollama.ai", "A"],
        );
        assert!(out.contains("status: REFUSED"), "{out}");
        let out = dig(&d, &[transport, "-b", "127.0.0.2", "fwd.test", "A"]);
        assert!(out.contains("status: REFUSED"), "{out}");
        let ok = dig(
            &d,
            &[transport, "-b", "127.0.0.1", "+short", "fwd.test", "A"],
        );
        assert_eq!(short(&ok), ["192.0.2.7"], "{ok}");
    }
    let stats = d.ctl_json(&["stats"]);
    assert!(stats["dns"]["refused"].as_u64().unwrap() >= 4, "{stats}");
}

#[test]
fn reload_applies_intercepts_advertise_and_allow() {
    if !programs() {
        return;
    }
    let up = Upstream::start("127.0.0.57");
    let d = daemon(&up, "");
    let before = dig(&d, &["later.test", "A"]);
    assert!(before.contains("192.0.2.8"), "{before}");
    d.write_config(
        "[dns]\nintercept = [\"later.test\"]\nadvertise = [\"192.0.2.99\"]\nallow = [\"127.0.0.1/32\"]\n",
    );
    let r = d.ctl_json(&["reload"]);
    assert_eq!(r["response"], "reloaded", "{r}");
    let after = dig(&d, &["later.test", "A"]);
    assert!(
        after.contains("flags: qr aa rd ra") && after.contains("192.0.2.99"),
        "{after}"
    );
    let reg = dig(&d, &["+short", "registry.ollama.ai", "A"]);
    assert_eq!(short(&reg), ["192.0.2.99"], "{reg}");
    let v6 = dig(&d, &["registry.ollama.ai", "AAAA"]);
    assert!(v6.contains("ANSWER: 0") && v6.contains("NOERROR"), "{v6}");
    let refused = dig(&d, &["-b", "127.0.0.2", "later.test", "A"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
}

#[test]
fn rate_limit_slips_to_tcp() {
    if !programs() {
        return;
    }
    let d = Daemon::builder()
        .config("[dns]\nrate_limit = 5\nadvertise = [\"192.0.2.10\"]\n")
        .start();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let q = query_bytes(0, "registry.ollama.ai.", 1);
    for id in 0..40u16 {
        s.send_to(&query_bytes(id, "registry.ollama.ai.", 1), d.dns.unwrap())
            .unwrap();
    }
    let (mut answered, mut truncated) = (0, 0);
    let mut buf = [0u8; 512];
    while let Ok(n) = s.recv(&mut buf) {
        let r = &buf[..n];
        if r[2] & 0x02 != 0 {
            truncated += 1;
            // Header and question only, never longer than the query: no amplification.
            assert_eq!(&r[6..12], &[0; 6], "no records in a slip: {r:?}");
            assert!(
                n <= q.len(),
                "slip of {n} bytes to a {}-byte query",
                q.len()
            );
        } else {
            answered += 1;
        }
    }
    assert!((5..=8).contains(&answered), "{answered} answered");
    assert_eq!(answered + truncated, 40, "every query gets a reply");
    let stats = d.ctl_json(&["stats"]);
    assert!(
        stats["dns"]["rate_limited"].as_u64().unwrap() >= 30,
        "{stats}"
    );
    assert_eq!(stats["dns"]["slipped"], stats["dns"]["rate_limited"]);

    // kdig follows TC=1 over TCP: with the bucket empty it still gets its answer.
    for _ in 0..10 {
        s.send_to(&q, d.dns.unwrap()).unwrap();
    }
    let out = kdig(&d, &["registry.ollama.ai", "A"]);
    assert!(out.contains("192.0.2.10"), "{out}");
}

/// One source at 10× `rate_limit` over UDP, retrying over TCP whenever it gets TC=1 (what a
/// stub resolver or a forwarder does): every query is answered.
#[test]
fn a_source_at_ten_times_the_limit_loses_nothing() {
    if !programs() {
        return;
    }
    let d = Daemon::builder()
        .config("[dns]\nrate_limit = 100\nadvertise = [\"192.0.2.10\"]\n")
        .start();
    let dns = d.dns.unwrap();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (total, mut udp, mut tcp) = (1000u16, 0, 0);
    let start = Instant::now();
    let mut buf = [0u8; 512];
    for id in 0..total {
        // 1000 queries over one second: ten times the limit.
        let due = Duration::from_millis(u64::from(id));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let q = query_bytes(id, "registry.ollama.ai.", 1);
        s.send_to(&q, dns).unwrap();
        let n = s.recv(&mut buf).expect("every UDP query gets a reply");
        assert_eq!(&buf[..2], &id.to_be_bytes());
        if buf[2] & 0x02 == 0 {
            assert_eq!(u16::from_be_bytes([buf[6], buf[7]]), 1, "{:?}", &buf[..n]);
            udp += 1;
            continue;
        }
        let mut t = TcpStream::connect(dns).unwrap();
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        t.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        t.read_exact(&mut len).unwrap();
        let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
        t.read_exact(&mut r).unwrap();
        assert_eq!(
            u16::from_be_bytes([r[6], r[7]]),
            1,
            "answered over TCP: {r:?}"
        );
        tcp += 1;
    }
    assert_eq!(udp + tcp, total as usize);
    assert!(tcp > 500, "most went over TCP ({udp} UDP, {tcp} TCP)");
    eprintln!("1000 queries at 10x the limit: {udp} answered over UDP, {tcp} after TC=1 over TCP");
}

#[test]
fn garbage_is_survived() {
    if !programs() {
        return;
    }
    let d = Daemon::builder()
        .config("[dns]\nadvertise = [\"192.0.2.10\"]\n")
        .start();
    let dns = d.dns.unwrap();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut junk: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0; 12], vec![0xff; 12], vec![0; 9000]];
    // A query whose name is a compression pointer to itself.
    junk.push(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01".to_vec());
    for len in [13, 40, 300, 1500] {
        junk.push(crate::util::models::noise(
            0x2545_f491_4f6c_dd1d ^ len as u64,
            len,
        ));
    }
    for j in &junk {
        s.send_to(j, dns).unwrap();
    }
    let mut formerr = 0;
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.recv(&mut buf) {
        if n >= 4 && buf[3] & 0x0f == 1 {
            formerr += 1;
        }
    }
    assert!(formerr >= 1, "the self-pointing query gets FORMERR");
    // Garbage over TCP: a frame of junk, then a truncated frame and a hang-up.
    let mut t = TcpStream::connect(dns).unwrap();
    t.write_all(&[0, 5, 1, 2, 3, 4, 5, 0, 200, 1]).unwrap();
    drop(t);
    let out = dig(&d, &["+short", "registry.ollama.ai", "A"]);
    assert_eq!(short(&out), ["192.0.2.10"], "{out}");
    let out = dig(&d, &["+tcp", "+short", "registry.ollama.ai", "A"]);
    assert_eq!(short(&out), ["192.0.2.10"], "{out}");
    let stats = d.ctl_json(&["stats"]);
    assert!(stats["dns"]["malformed"].as_u64().unwrap() >= 5, "{stats}");
    // The daemon's own answer to a junk TCP frame must not be a crash either.
    let mut t = TcpStream::connect(dns).unwrap();
    t.write_all(&[0, 12]).unwrap();
    t.write_all(&[0xab; 12]).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reply = Vec::new();
    let _ = t.read_to_end(&mut reply);
}

#[test]
fn tcp_idle_connections_are_closed() {
    if !programs() {
        return;
    }
    let d = Daemon::builder()
        .config("[dns]\ntcp_idle_timeout = \"300ms\"\n")
        .start();
    let mut t = TcpStream::connect(d.dns.unwrap()).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(t.read(&mut buf).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn ipv6_over_udp_and_tcp() {
    if !programs() {
        return;
    }
    let port = loop {
        let udp = UdpSocket::bind("[::1]:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("::1", port)).is_ok() {
            break port;
        }
    };
    let mut d = Daemon::builder()
        // Nothing activated: the daemon binds its own sockets from `listen`.
        .activate(crate::util::daemon::Activate::none())
        .config(&format!(
            "[dns]\nlisten = [\"[::1]:{port}\"]\nadvertise = [\"192.0.2.10\", \"2001:db8::10\"]\n"
        ))
        .start();
    d.dns = Some(format!("[::1]:{port}").parse().unwrap());
    for transport in ["+notcp", "+tcp"] {
        let out = dig(&d, &[transport, "+short", "registry.ollama.ai", "AAAA"]);
        assert_eq!(short(&out), ["2001:db8::10"], "{out}\n{}", d.stderr());
        let out = dig(&d, &[transport, "+short", "registry.ollama.ai", "A"]);
        assert_eq!(short(&out), ["192.0.2.10"], "{out}");
    }
}

/// The addresses of the interface with the default route, as `ip` reports them.
fn default_route_addresses() -> Option<Vec<String>> {
    let route = run(
        "ip",
        &["-4".into(), "route".into(), "show".into(), "default".into()],
    );
    let dev = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)?
        .to_string();
    let addrs = run(
        "ip",
        &[
            "-o".into(),
            "-4".into(),
            "addr".into(),
            "show".into(),
            "dev".into(),
            dev,
        ],
    );
    Some(
        addrs
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(3)?
                    .split('/')
                    .next()
                    .map(String::from)
            })
            .collect(),
    )
}

#[test]
fn default_advertise_is_the_default_route_interface() {
    if !programs() {
        return;
    }
    let d = Daemon::start();
    let out = dig(&d, &["+short", "registry.ollama.ai", "A"]);
    // Without a default route the answer is the address the query arrived on.
    let want = default_route_addresses().unwrap_or_else(|| vec!["127.0.0.1".into()]);
    assert_eq!(short(&out), want, "{out}");
}

#[test]
fn resolver_pointing_at_itself_is_not_a_loop() {
    if !programs() {
        return;
    }
    let d = Daemon::start();
    d.write_config(&format!(
        "[upstream]\nresolvers = [\"{}\"]\n",
        d.dns.unwrap()
    ));
    assert_eq!(d.ctl_json(&["reload"])["response"], "reloaded");
    let started = Instant::now();
    let out = dig(&d, &["loop.test", "A"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
