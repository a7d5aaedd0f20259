//! The cache's own CA and HTTPS for unmodified clients (issue 5), checked with real clients
//! (curl, Debian's openssl) against the real daemon:
//! - the CA is created on first start in `[tls] ca_dir` (ca.crt 0644, ca.key 0600), reused across
//!   restarts (same SHA-256 fingerprint), replaced only by `lancachectl ca --rotate`;
//! - X.509: the CA is ECDSA P-256, `CA:TRUE` with pathlen 0, and carries critical name
//!   constraints (permitted DNS = the intercepted names, every IP excluded); leaves carry the
//!   intercepted names as SANs, `serverAuth`, and are short-lived;
//! - TLS 1.3 with HTTP/1.1 and with h2 (ALPN) through the same router as plain HTTP
//!   (`/health` over `https://registry.ollama.ai:PORT`);
//! - an unknown SNI gets a handshake alert (RFC 8446 §6) and is counted; a client without the
//!   CA fails verification (we never weaken TLS);
//! - a reload that adds `[dns] intercept = ["hf.co"]` re-issues leaves: the handshake for hf.co
//!   works; a name-constrained CA does not cover it until rotation (curl refuses), an
//!   unconstrained one (`name_constraints = false`) does at once;
//! - `/ca.crt` equals `lancachectl ca`; `/setup.sh` is filled with the cache's URL and the CA
//!   fingerprint, passes `sh -n` and shellcheck, installs the CA into a fake root idempotently
//!   (Debian, Fedora and Arch layouts), refuses a CA with the wrong fingerprint, `--uninstall` removes
//!   it; with a Debian-like fake root the real update-ca-certificates puts the CA into that
//!   root's bundle (curl then verifies the cache with it) and takes it out on --uninstall; a
//!   hostile Host header never reaches the script; `/setup.ps1` is filled the same way;
//! - the real Ollama client trusts the CA via SSL_CERT_FILE (Go enforces name constraints) and
//!   fails with an x509 error without it;
//! - `/setup.ps1` parses (tree-sitter PowerShell grammar; no pwsh here);
//! - a client that never sends a ClientHello is dropped after the 10 s handshake timeout;
//! - an unusable `ca_dir` stops a daemon with HTTPS (error names key and path) and makes
//!   `/ca.crt` 503 and `lancachectl ca` fail with the path otherwise;
//! - SIGTERM with an idle TLS connection open drains and exits 0;
//! - with `dns.advertise`, a client connecting by IP (no SNI) gets a leaf with that IP SAN, and
//!   the CA permits exactly that address (OpenSSL verifies it);
//! - the LAN set-up: a client in its own network namespace, resolv.conf pointing at the cache,
//!   the real Ollama client pulling `registry.ollama.ai/library/tiny` (default port, no
//!   `--insecure`) reaches the cache over verified TLS; without the CA it gets an x509 error.

use crate::util::daemon::Activate;
use crate::util::{require_program, Daemon};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn https_daemon(extra: &str) -> Daemon {
    Daemon::builder()
        .activate(Activate {
            https: true,
            ..Default::default()
        })
        .config(extra)
        .start()
}

fn ca_path(d: &Daemon) -> std::path::PathBuf {
    d.dir.join("ca/ca.crt")
}

fn fingerprint(d: &Daemon) -> String {
    let ca = d.ctl_json(&["ca"]);
    ca["fingerprint_sha256"].as_str().unwrap().to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// curl to `https://NAME:PORT/health`, with NAME resolved to the daemon's HTTPS socket.
fn curl_https(d: &Daemon, name: &str, cacert: Option<&Path>, extra: &[&str]) -> Output {
    let port = d.https.unwrap().port();
    let mut c = Command::new("curl");
    c.args(["-sS", "-v", "--max-time", "10", "--resolve"])
        .arg(format!("{name}:{port}:127.0.0.1"))
        .args(extra);
    if let Some(ca) = cacert {
        c.arg("--cacert").arg(ca);
    } else {
        // Only the system roots: our CA is not among them.
        c.args(["--cacert", "/etc/ssl/certs/ca-certificates.crt"]);
    }
    c.arg(format!("https://{name}:{port}/health"));
    c.output().unwrap()
}

/// `openssl s_client` handshake with SNI `name`; returns (success, output with the leaf PEM).
fn s_client(d: &Daemon, name: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(d.https.unwrap().to_string())
        .args(["-servername", name, "-showcerts"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"),
        text(&out),
    )
}

/// `openssl x509 -text` of the first certificate in `pem`.
fn x509_text(pem: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn leaf_text(d: &Daemon, name: &str) -> String {
    let (ok, out) = s_client(d, name);
    assert!(ok, "handshake for {name} failed:\n{out}");
    x509_text(&out)
}

fn http_get(d: &Daemon, path: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "--max-time", "10"])
        .arg(d.http_url(path))
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn ca_is_created_once_reused_and_rotated_only_on_request() {
    let d = https_daemon("");
    let ca_dir = d.dir.join("ca");
    assert_eq!(mode(&ca_dir.join("ca.crt")), 0o644);
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    assert_eq!(mode(&ca_dir), 0o755);
    let first = fingerprint(&d);
    assert_eq!(first.len(), 64);
    let pem = std::fs::read_to_string(ca_path(&d)).unwrap();
    assert_eq!(d.ctl_json(&["ca"])["pem"].as_str().unwrap(), pem);
    let path = d.ctl(&["ca", "--path"]);
    assert_eq!(
        String::from_utf8_lossy(&path.stdout).trim(),
        ca_path(&d).display().to_string()
    );

    // Restart over the same directory: the very same CA.
    let tmp = d.into_dir();
    // kill -9 left the harness's control socket behind; the harness binds a fresh one.
    std::fs::remove_file(tmp.path().join("control.sock")).unwrap();
    let d = Daemon::builder()
        .activate(Activate {
            https: true,
            ..Default::default()
        })
        .dir(tmp)
        .start();
    assert_eq!(fingerprint(&d), first);
    assert_eq!(std::fs::read_to_string(ca_path(&d)).unwrap(), pem);
    assert!(
        curl_https(&d, "registry.ollama.ai", Some(&ca_path(&d)), &[])
            .status
            .success()
    );

    // Rotation: a new CA on disk and in use at once; the old one no longer verifies.
    let old_ca = d.dir.join("old-ca.crt");
    std::fs::copy(ca_path(&d), &old_ca).unwrap();
    let rotated = d.ctl_json(&["ca", "--rotate"]);
    assert_eq!(rotated["rotated"], true);
    let second = rotated["fingerprint_sha256"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(fingerprint(&d), second);
    assert_eq!(mode(&d.dir.join("ca/ca.key")), 0o600);
    assert_eq!(mode(&ca_path(&d)), 0o644);
    let new = curl_https(&d, "registry.ollama.ai", Some(&ca_path(&d)), &[]);
    assert!(new.status.success(), "{}", text(&new));
    let old = curl_https(&d, "registry.ollama.ai", Some(&old_ca), &[]);
    assert_eq!(old.status.code(), Some(60), "{}", text(&old));
    assert!(
        d.stderr().contains("rotated the cache's CA"),
        "rotation is logged"
    );
    assert!(
        d.stderr()
            .lines()
            .any(|l| l.contains("control action") && l.contains("\"ca\"")),
        "rotation is audited"
    );
}

#[test]
fn https_serves_tls13_with_http1_and_h2() {
    if !require_program("curl") {
        return;
    }
    let d = https_daemon("");
    let ca = ca_path(&d);
    let h1 = curl_https(&d, "registry.ollama.ai", Some(&ca), &["--http1.1"]);
    let t = text(&h1);
    assert!(h1.status.success(), "{t}");
    assert!(t.contains("TLSv1.3"), "{t}");
    assert!(t.contains("ALPN: server accepted http/1.1"), "{t}");
    assert!(t.contains("\"status\":\"ok\""), "{t}");
    let h2 = curl_https(&d, "registry.ollama.ai", Some(&ca), &["--http2"]);
    let t = text(&h2);
    assert!(h2.status.success(), "{t}");
    assert!(t.contains("ALPN: server accepted h2"), "{t}");
    assert!(t.contains("HTTP/2 200"), "{t}");
    let stats = d.ctl_json(&["stats"]);
    assert!(stats["tls"]["handshakes"].as_u64().unwrap() >= 2, "{stats}");
}

#[test]
fn unknown_sni_and_untrusting_client_fail() {
    if !require_program("openssl") || !require_program("curl") {
        return;
    }
    let d = https_daemon("");
    let (ok, out) = s_client(&d, "www.example.com");
    assert!(!ok, "unknown SNI must fail the handshake:\n{out}");
    assert!(out.contains("alert"), "{out}");
    let stats = d.ctl_json(&["stats"]);
    assert_eq!(stats["tls"]["unknown_sni"], 1, "{stats}");
    assert!(
        d.stderr().contains("www.example.com"),
        "unknown SNI is logged"
    );

    // The right name, but a client that does not trust our CA: verification fails.
    let no_ca = curl_https(&d, "registry.ollama.ai", None, &[]);
    assert_eq!(no_ca.status.code(), Some(60), "{}", text(&no_ca));
    // The daemon lives on.
    assert!(
        curl_https(&d, "registry.ollama.ai", Some(&ca_path(&d)), &[])
            .status
            .success()
    );
}

#[test]
fn ca_and_leaf_x509_contents() {
    if !require_program("openssl") {
        return;
    }
    let d = https_daemon("[dns]\nintercept = [\"*.r2.example\"]\n");
    let ca = x509_text(&std::fs::read_to_string(ca_path(&d)).unwrap());
    assert!(ca.contains("ASN1 OID: prime256v1"), "{ca}");
    assert!(ca.contains("ecdsa-with-SHA256"), "{ca}");
    assert!(ca.contains("CA:TRUE, pathlen:0"), "{ca}");
    assert!(ca.contains("Certificate Sign"), "{ca}");
    assert!(ca.contains("X509v3 Name Constraints: critical"), "{ca}");
    assert!(ca.contains("DNS:registry.ollama.ai"), "{ca}");
    assert!(ca.contains("DNS:r2.example"), "{ca}");
    assert!(ca.contains("IP:0.0.0.0/0.0.0.0"), "{ca}");
    assert!(
        ca.contains("Subject: O = lancache, CN = lancache CA"),
        "{ca}"
    );

    let leaf = leaf_text(&d, "registry.ollama.ai");
    assert!(leaf.contains("DNS:registry.ollama.ai"), "{leaf}");
    assert!(!leaf.contains("CA:TRUE"), "{leaf}");
    assert!(leaf.contains("TLS Web Server Authentication"), "{leaf}");
    assert!(
        leaf.contains("Issuer: O = lancache, CN = lancache CA"),
        "{leaf}"
    );
    let wild = leaf_text(&d, "bucket.r2.example");
    assert!(wild.contains("DNS:*.r2.example"), "{wild}");
    let deep = leaf_text(&d, "a.bucket.r2.example");
    assert!(deep.contains("DNS:a.bucket.r2.example"), "{deep}");
    let curl = curl_https(&d, "a.bucket.r2.example", Some(&ca_path(&d)), &[]);
    assert!(curl.status.success(), "{}", text(&curl));
    let stats = d.ctl_json(&["stats"]);
    let not_after = stats["tls"]["leaf_not_after"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let days = (not_after - now) / 86400;
    assert!((29..=30).contains(&days), "leaf lifetime {days} days");
}

#[test]
fn reload_adds_names_and_constraints_follow_rotation() {
    if !require_program("openssl") || !require_program("curl") {
        return;
    }
    let d = https_daemon("");
    assert!(!s_client(&d, "hf.co").0, "hf.co is not intercepted yet");
    d.write_config("[dns]\nintercept = [\"hf.co\"]\n");
    assert_eq!(d.ctl_json(&["reload"])["response"], "reloaded");
    wait_for("a leaf for hf.co", || s_client(&d, "hf.co").0);
    assert!(leaf_text(&d, "hf.co").contains("DNS:hf.co"));
    // The CA was constrained to the names it was made for: clients refuse hf.co...
    let refused = curl_https(&d, "hf.co", Some(&ca_path(&d)), &[]);
    assert_eq!(refused.status.code(), Some(60), "{}", text(&refused));
    let stats = d.ctl_json(&["stats"]);
    assert_eq!(stats["tls"]["uncovered"], serde_json::json!(["hf.co"]));
    assert!(d.stderr().contains("do not cover these names"));
    // ...until the CA is rotated, which constrains the new CA to today's names.
    d.ctl_json(&["ca", "--rotate"]);
    for name in ["hf.co", "registry.ollama.ai"] {
        let ok = curl_https(&d, name, Some(&ca_path(&d)), &[]);
        assert!(ok.status.success(), "{name}: {}", text(&ok));
    }
    assert_eq!(
        d.ctl_json(&["stats"])["tls"]["uncovered"],
        serde_json::json!([])
    );
}

#[test]
fn unconstrained_ca_covers_names_added_later() {
    if !require_program("openssl") || !require_program("curl") {
        return;
    }
    let d = https_daemon("[tls]\nname_constraints = false\n");
    let ca = x509_text(&std::fs::read_to_string(ca_path(&d)).unwrap());
    assert!(!ca.contains("Name Constraints"), "{ca}");
    d.write_config("[dns]\nintercept = [\"hf.co\"]\n");
    d.ctl_json(&["reload"]);
    wait_for("a leaf for hf.co", || s_client(&d, "hf.co").0);
    let ok = curl_https(&d, "hf.co", Some(&ca_path(&d)), &["--http2"]);
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn ca_crt_route_matches_lancachectl() {
    let d = https_daemon("");
    let (status, head, body) = http_get(&d, "/ca.crt");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-pem-file"),
        "{head}"
    );
    let ctl = d.ctl(&["ca"]);
    assert!(ctl.status.success());
    assert_eq!(body, String::from_utf8_lossy(&ctl.stdout));
    assert!(body.starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn ca_route_works_without_https_listener() {
    // /ca.crt and lancachectl ca make the CA on first use even where HTTPS is served elsewhere.
    let d = Daemon::start();
    let (status, _, body) = http_get(&d, "/ca.crt");
    assert_eq!(status, 200);
    assert_eq!(body, String::from_utf8_lossy(&d.ctl(&["ca"]).stdout));
    assert!(d.dir.join("ca/ca.key").exists());
}

fn run_setup(script: &Path, root: &Path, os: &str, args: &[&str]) -> Output {
    Command::new("sh")
        .arg(script)
        .args(args)
        .env("LANCACHE_SETUP_ROOT", root)
        .env("LANCACHE_SETUP_OS", os)
        .output()
        .unwrap()
}

#[test]
fn setup_sh_is_filled_checked_and_installs_idempotently() {
    if !require_program("shellcheck") || !require_program("curl") {
        return;
    }
    let d = https_daemon("");
    let (status, head, script) = http_get(&d, "/setup.sh");
    assert_eq!(status, 200, "{head}");
    let fp = fingerprint(&d);
    let url = format!("http://{}", d.http.unwrap());
    assert!(script.contains(&format!("DEFAULT_URL='{url}'")), "{script}");
    assert!(script.contains(&format!("DEFAULT_SHA256='{fp}'")));
    assert!(
        !script.contains("@@LANCACHE"),
        "every placeholder is filled"
    );
    let path = d.dir.join("setup.sh");
    std::fs::write(&path, &script).unwrap();
    let syntax = Command::new("sh").arg("-n").arg(&path).output().unwrap();
    assert!(syntax.status.success(), "{}", text(&syntax));
    let lint = Command::new("shellcheck").arg(&path).output().unwrap();
    assert!(lint.status.success(), "{}", text(&lint));
    let help = Command::new("sh")
        .arg(&path)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success() && text(&help).contains("--uninstall"));

    let pem = std::fs::read(ca_path(&d)).unwrap();
    for (os, dest) in [
        ("debian", "usr/local/share/ca-certificates/lancache-ca.crt"),
        ("fedora", "etc/pki/ca-trust/source/anchors/lancache-ca.crt"),
        (
            "arch",
            "etc/ca-certificates/trust-source/anchors/lancache-ca.crt",
        ),
    ] {
        let root = tempfile::tempdir().unwrap();
        let installed = root.path().join(dest);
        let first = run_setup(&path, root.path(), os, &[]);
        assert!(first.status.success(), "{os}: {}", text(&first));
        assert!(text(&first).contains(&fp), "{}", text(&first));
        assert_eq!(std::fs::read(&installed).unwrap(), pem, "{os}");
        assert_eq!(mode(&installed), 0o644);
        let again = run_setup(&path, root.path(), os, &[]);
        assert!(again.status.success(), "{}", text(&again));
        assert!(
            text(&again).contains("already installed"),
            "{}",
            text(&again)
        );
        assert_eq!(std::fs::read(&installed).unwrap(), pem);
        let gone = run_setup(&path, root.path(), os, &["--uninstall"]);
        assert!(gone.status.success(), "{}", text(&gone));
        assert!(!installed.exists(), "{os}: --uninstall removes the CA");
        let gone_again = run_setup(&path, root.path(), os, &["--uninstall"]);
        assert!(gone_again.status.success(), "{}", text(&gone_again));
    }

    // A CA whose fingerprint is not the one the script was served with is refused.
    let root = tempfile::tempdir().unwrap();
    let wrong = run_setup(&path, root.path(), "debian", &["--sha256", &"0".repeat(64)]);
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(text(&wrong).contains("not installing"), "{}", text(&wrong));
    assert!(!root
        .path()
        .join("usr/local/share/ca-certificates/lancache-ca.crt")
        .exists());

    // The template itself (as shipped in the repository) also passes the linters.
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh");
    let lint = Command::new("shellcheck").arg(&template).output().unwrap();
    assert!(lint.status.success(), "{}", text(&lint));
}

/// Sends a raw request with a chosen Host header and returns the body.
fn raw_get(d: &Daemon, path: &str, host: &str) -> String {
    let mut s = std::net::TcpStream::connect(d.http.unwrap()).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn setup_scripts_never_reflect_a_hostile_host_header() {
    let d = https_daemon("");
    let port = d.http.unwrap().port();
    let good = raw_get(&d, "/setup.sh", "cache.lan:8080");
    assert!(
        good.contains("DEFAULT_URL='http://cache.lan:8080'"),
        "{good}"
    );
    let evil = raw_get(&d, "/setup.sh", "x'$(touch /tmp/pwned)'");
    assert!(!evil.contains("pwned"), "{evil}");
    assert!(
        evil.contains(&format!("DEFAULT_URL='http://127.0.0.1:{port}'")),
        "{evil}"
    );
    // public_url wins over everything.
    d.write_config("[http]\npublic_url = \"http://cache.example:8080\"\n");
    d.ctl_json(&["reload"]);
    let public = raw_get(&d, "/setup.ps1", "cache.lan");
    assert!(
        public.contains("[string]$Url = 'http://cache.example:8080'"),
        "{public}"
    );
    assert!(public.contains(&format!("[string]$Sha256 = '{}'", fingerprint(&d))));
    assert!(public.contains("Cert:\\LocalMachine\\Root"));
    assert!(public.contains("$ProgressPreference = 'SilentlyContinue'"));
    assert!(!public.contains("@@LANCACHE"));
}

/// The real Ollama client (`../shared/tools/get-ollama.sh`, installed by scripts/test-deps.sh).
fn ollama_bin() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("LANCACHE_OLLAMA")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/lancache-test/ollama/ollama"))
        })?;
    if path.exists() {
        return Some(path);
    }
    if std::env::var("LANCACHE_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIP: the real Ollama client is not installed");
        return None;
    }
    panic!(
        "{} is missing: run scripts/test-deps.sh (or set LANCACHE_ALLOW_SKIP=1)",
        path.display()
    );
}

/// Runs `ollama serve` + `ollama pull MODEL` in a private mount namespace whose /etc/hosts
/// sends registry.ollama.ai to 127.0.0.1 (standing in for the cache's DNS, issue 4), with
/// `SSL_CERT_FILE` = `bundle`. Returns the pull's exit status and output.
fn ollama_pull(ollama: &Path, work: &Path, bundle: &Path, model: &str) -> (bool, String) {
    let hosts = work.join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.1 registry.ollama.ai\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = r#"set -e
mount --bind "$HOSTS" /etc/hosts
"$OLLAMA" serve >"$WORK/serve.log" 2>&1 &
pid=$!
trap 'kill $pid; wait $pid 2>/dev/null || true' EXIT
i=0
until curl -fsS "http://$OLLAMA_HOST/" >/dev/null 2>&1; do
  i=$((i+1)); [ $i -lt 200 ] || { echo "ollama serve did not start"; exit 99; }; sleep 0.1
done
"$OLLAMA" pull "$MODEL"
"#;
    let out = Command::new("timeout")
        .args([
            "120",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(script)
        .current_dir(work)
        .env("HOSTS", &hosts)
        .env("OLLAMA", ollama)
        .env("WORK", work)
        .env("MODEL", model)
        .env("OLLAMA_HOST", format!("127.0.0.1:{port}"))
        .env("OLLAMA_MODELS", work.join("models"))
        .env("HOME", work)
        .env("SSL_CERT_FILE", bundle)
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

/// The real Ollama client (Go's crypto/x509, which enforces name constraints) accepts the
/// cache's constrained CA through SSL_CERT_FILE, reaches the cache's router over TLS and gets
/// its answer (404 here: the registry proxy is issue 3); without the CA it fails with a
/// certificate error. The full pull through the proxy and DNS is in docs/tls.md ("End-to-end").
#[test]
fn real_ollama_client_trusts_the_ca() {
    if !require_program("unshare") || !require_program("curl") {
        return;
    }
    let Some(ollama) = ollama_bin() else {
        return;
    };
    let d = https_daemon("");
    let port = d.https.unwrap().port();
    let model = format!("registry.ollama.ai:{port}/library/tiny");
    let work = tempfile::tempdir().unwrap();
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
    let bundle = work.path().join("bundle.pem");
    let mut pem = std::fs::read(system).unwrap_or_default();
    pem.extend(std::fs::read(ca_path(&d)).unwrap());
    std::fs::write(&bundle, pem).unwrap();

    let (ok, out) = ollama_pull(&ollama, work.path(), &bundle, &model);
    eprintln!("ollama pull with the CA: {out}");
    assert!(!ok, "nothing to pull yet: {out}");
    assert!(
        !out.contains("x509") && !out.contains("tls:"),
        "TLS must verify: {out}"
    );
    assert!(out.contains("file does not exist"), "{out}");
    let stats = d.ctl_json(&["stats"]);
    assert!(stats["tls"]["handshakes"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        stats["http"]["responses"]["4xx"].as_u64().unwrap() >= 1,
        "{stats}"
    );

    let (ok, out) = ollama_pull(&ollama, work.path(), system, &model);
    eprintln!("ollama pull without the CA: {out}");
    assert!(!ok);
    assert!(
        out.contains("x509: certificate signed by unknown authority"),
        "{out}"
    );
}

/// Syntax-checks PowerShell with the tree-sitter grammar (PyPI `tree-sitter-powershell`, from
/// scripts/test-deps.sh); there is no pwsh to run it. Returns None when the grammar is missing
/// and skipping is allowed.
fn powershell_syntax_ok(script: &str) -> Option<bool> {
    let check = r#"
import sys, tree_sitter, tree_sitter_powershell as tsp
parser = tree_sitter.Parser(tree_sitter.Language(tsp.language()))
tree = parser.parse(sys.stdin.buffer.read())
def first_error(n):
    if n.type == "ERROR" or n.is_missing:
        return n
    for c in n.children:
        e = first_error(c)
        if e is not None:
            return e
e = first_error(tree.root_node)
if e is not None:
    print("syntax error at line", e.start_point[0] + 1, "column", e.start_point[1] + 1)
    sys.exit(1)
"#;
    let probe = Command::new("python3")
        .args(["-c", "import tree_sitter, tree_sitter_powershell"])
        .output()
        .unwrap();
    if !probe.status.success() {
        if std::env::var("LANCACHE_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIP: tree-sitter-powershell is not installed");
            return None;
        }
        panic!("tree-sitter-powershell is not installed: run scripts/test-deps.sh (or set LANCACHE_ALLOW_SKIP=1)");
    }
    let mut child = Command::new("python3")
        .args(["-c", check])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Some(out.status.success())
}

#[test]
fn setup_ps1_parses() {
    let d = https_daemon("");
    let (status, _, served) = http_get(&d, "/setup.ps1");
    assert_eq!(status, 200);
    let Some(ok) = powershell_syntax_ok(&served) else {
        return;
    };
    assert!(ok, "served setup.ps1 has a syntax error");
    // The checker does catch errors.
    assert_eq!(powershell_syntax_ok("if ($x { Write-Host }}"), Some(false));
    assert!(served.contains(&format!("'{}'", fingerprint(&d))));
}

#[test]
fn silent_client_is_dropped_after_handshake_timeout() {
    let d = https_daemon("");
    let mut s = std::net::TcpStream::connect(d.https.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    // Sends nothing: the server gives up on the handshake and closes.
    let n = s.read(&mut buf).unwrap_or(0);
    let waited = start.elapsed();
    assert_eq!(n, 0, "closed without a byte");
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(18),
        "{waited:?}"
    );
    let stats = d.ctl_json(&["stats"]);
    assert_eq!(stats["tls"]["handshake_timeouts"], 1, "{stats}");
}

/// The real `update-ca-certificates`, run by setup.sh against a Debian-like fake root, puts the
/// CA into that root's bundle (which then verifies the cache) and takes it out again.
#[test]
fn setup_sh_with_real_update_ca_certificates() {
    if !require_program("update-ca-certificates") || !require_program("curl") {
        return;
    }
    let d = https_daemon("");
    let (_, _, script) = http_get(&d, "/setup.sh");
    let path = d.dir.join("setup.sh");
    std::fs::write(&path, &script).unwrap();
    // A fake Debian root holding one "system" CA (the real package's first certificate).
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let mozilla = Path::new("/usr/share/ca-certificates/mozilla");
    let system = std::fs::read_dir(mozilla)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".crt"))
        .min()
        .expect("Debian's ca-certificates is installed");
    for dir in [
        "etc/ssl/certs",
        "usr/share/ca-certificates/mozilla",
        "etc/ca-certificates/update.d",
    ] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::fs::copy(
        mozilla.join(&system),
        r.join("usr/share/ca-certificates/mozilla").join(&system),
    )
    .unwrap();
    std::fs::write(
        r.join("etc/ca-certificates.conf"),
        format!("mozilla/{system}\n"),
    )
    .unwrap();
    let bundle = r.join("etc/ssl/certs/ca-certificates.crt");
    let ours = std::fs::read_to_string(ca_path(&d)).unwrap();
    let count = |s: &str| s.matches("BEGIN CERTIFICATE").count();

    let out = run_setup(&path, r, "debian", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let b = std::fs::read_to_string(&bundle).unwrap();
    assert!(b.contains(ours.trim()), "our CA is in the bundle");
    assert_eq!(count(&b), 2);
    assert!(r.join("etc/ssl/certs/lancache-ca.pem").exists());
    let ok = curl_https(&d, "registry.ollama.ai", Some(&bundle), &[]);
    assert!(ok.status.success(), "{}", text(&ok));
    // Again: nothing changes.
    assert!(run_setup(&path, r, "debian", &[]).status.success());
    assert_eq!(std::fs::read_to_string(&bundle).unwrap(), b);

    let out = run_setup(&path, r, "debian", &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    let b = std::fs::read_to_string(&bundle).unwrap();
    assert!(!b.contains(ours.trim()), "our CA left the bundle");
    assert_eq!(count(&b), 1);
    assert!(!r.join("etc/ssl/certs/lancache-ca.pem").exists());
    let refused = curl_https(&d, "registry.ollama.ai", Some(&bundle), &[]);
    assert_eq!(refused.status.code(), Some(60), "{}", text(&refused));
}

#[test]
fn unusable_ca_dir_is_a_clear_error() {
    // HTTPS on: the daemon refuses to start, naming the key and the path.
    let mut d = Daemon::builder()
        .activate(Activate {
            https: true,
            ..Default::default()
        })
        .config("[tls]\nca_dir = \"/dev/null/ca\"\n")
        .spawn();
    let status = d.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    let err = d.stderr();
    assert!(
        err.contains("tls.ca_dir") && err.contains("/dev/null/ca"),
        "{err}"
    );
    // HTTPS off: the daemon runs; /ca.crt and `lancachectl ca` say what is wrong.
    let d = Daemon::builder()
        .config("[tls]\nca_dir = \"/dev/null/ca\"\n")
        .start();
    let (status, _, body) = http_get(&d, "/ca.crt");
    assert_eq!(status, 503);
    assert!(body.contains("/dev/null/ca"), "{body}");
    let out = d.ctl(&["ca"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("/dev/null/ca"), "{}", text(&out));
}

#[test]
fn sigterm_with_open_tls_connection_exits_cleanly() {
    if !require_program("openssl") {
        return;
    }
    let mut d = https_daemon("");
    // An established TLS connection, idle (openssl waits on its stdin).
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(d.https.unwrap().to_string())
        .args(["-servername", "registry.ollama.ai", "-CAfile"])
        .arg(ca_path(&d))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the handshake", || {
        d.ctl_json(&["stats"])["tls"]["handshakes"].as_u64() == Some(1)
    });
    let start = Instant::now();
    let status = d.stop(Duration::from_secs(25)).expect("exits");
    assert!(status.success(), "{status:?}\n{}", d.stderr());
    assert!(
        start.elapsed() < Duration::from_secs(21),
        "{:?}",
        start.elapsed()
    );
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn clients_by_ip_get_the_address_leaf() {
    if !require_program("curl") || !require_program("openssl") {
        return;
    }
    // dns.advertise is the cache's own address: a leaf with it as IP SAN answers clients that
    // connect by address (they send no SNI), and the CA's constraints permit exactly it.
    let d = https_daemon("[dns]\nadvertise = [\"127.0.0.1\"]\n");
    let ca = x509_text(&std::fs::read_to_string(ca_path(&d)).unwrap());
    assert!(ca.contains("IP:127.0.0.1/255.255.255.255"), "{ca}");
    assert!(!ca.contains("Excluded"), "{ca}");
    let port = d.https.unwrap().port();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca_path(&d))
        .arg(format!("https://127.0.0.1:{port}/health"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.ctl_json(&["stats"])["tls"]["no_sni"], 0);
}

/// A "LAN client" network namespace joined to the root namespace by a veth pair, with its own
/// resolv.conf; removed (with its veth, its /etc/netns entry and its processes) on drop.
struct LanClient {
    ns: String,
    /// The cache's address as the client sees it (the root side of the veth).
    cache_ip: String,
    children: Vec<std::process::Child>,
}

impl LanClient {
    fn new() -> LanClient {
        let id = std::process::id() % 60000;
        let ns = format!("lc-lan-{id}");
        let (host_if, ns_if) = (format!("lcv{id}a"), format!("lcv{id}b"));
        let (a, b) = ((id / 64) % 250 + 1, (id % 64) * 4);
        let cache_ip = format!("10.213.{a}.{}", b + 1);
        let client_ip = format!("10.213.{a}.{}", b + 2);
        let sh = |cmd: &str| {
            let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
            assert!(out.status.success(), "{cmd}: {}", text(&out));
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(&format!("ip netns add {ns}"));
        let client = LanClient {
            ns: ns.clone(),
            cache_ip: cache_ip.clone(),
            children: vec![],
        };
        sh(&format!(
            "ip link add {host_if} type veth peer name {ns_if} netns {ns} && \
             ip addr add {cache_ip}/30 dev {host_if} && ip link set {host_if} up && \
             ip -n {ns} addr add {client_ip}/30 dev {ns_if} && ip -n {ns} link set {ns_if} up && \
             ip -n {ns} link set lo up && ip -n {ns} route add default via {cache_ip}"
        ));
        std::fs::create_dir_all(format!("/etc/netns/{ns}")).unwrap();
        std::fs::write(
            format!("/etc/netns/{ns}/resolv.conf"),
            format!("nameserver {cache_ip}\n"),
        )
        .unwrap();
        client
    }

    /// Runs `cmd` inside the namespace with `env`, returning its output.
    fn run(&self, env: &[(&str, &Path)], cmd: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(cmd);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

impl Drop for LanClient {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.ns));
    }
}

/// The LAN set-up of issue 5's end-to-end proof, as far as it exists without the registry proxy
/// (issue 3) and the DNS interceptor (issue 4): a client in its own network namespace, whose
/// resolv.conf points at the cache's address, runs the real Ollama client with
/// `SSL_CERT_FILE` = system bundle + our CA and pulls `registry.ollama.ai/library/tiny` with no
/// port and no `--insecure`: DNS (dnsmasq standing in for lancached's interceptor) sends it to the
/// cache's 443, TLS verifies, and the cache's router answers (404: no proxy yet). Without the CA
/// the same pull fails with a certificate error. docs/tls.md lists what the full proof adds.
#[test]
fn lan_client_in_a_namespace_reaches_the_cache_over_verified_tls() {
    for p in ["ip", "dnsmasq", "curl"] {
        if !require_program(p) {
            return;
        }
    }
    let Some(ollama) = ollama_bin() else {
        return;
    };
    let mut lan = LanClient::new();
    let ip = lan.cache_ip.clone();
    // The cache listens on the LAN address, default ports (what an unmodified client uses).
    let d = Daemon::builder()
        .activate(Activate {
            dns: false,
            http: false,
            https: false,
            // Nothing socket-activated, so the daemon binds the listen addresses itself.
            control: false,
        })
        .config(&format!(
            "[tls]\nlisten = [\"{ip}:443\"]\n[http]\nlisten = [\"{ip}:80\"]\n[dns]\nadvertise = [\"{ip}\"]\n"
        ))
        .start();
    // Stand-in for lancached's DNS interceptor: registry.ollama.ai -> the cache.
    lan.children.push(
        Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--except-interface=lo",
                "--port=53",
            ])
            .arg(format!("--listen-address={ip}"))
            .arg(format!("--address=/registry.ollama.ai/{ip}"))
            .arg(format!(
                "--pid-file={}",
                d.dir.join("dnsmasq.pid").display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle.pem");
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
    let mut pem = std::fs::read(system).unwrap_or_default();
    pem.extend(std::fs::read(ca_path(&d)).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    wait_for("dnsmasq", || {
        lan.run(&[], &["sh", "-c", "getent hosts registry.ollama.ai"])
            .status
            .success()
    });

    let pull = |certs: &Path| -> String {
        let models = tempfile::tempdir().unwrap();
        let script = r#"set -e
"$OLLAMA" serve >"$MODELS/serve.log" 2>&1 &
pid=$!
trap 'kill $pid; wait $pid 2>/dev/null || true' EXIT
i=0
until curl -fsS http://127.0.0.1:11434/ >/dev/null 2>&1; do
  i=$((i+1)); [ $i -lt 200 ] || { echo "ollama serve did not start"; exit 99; }; sleep 0.1
done
"$OLLAMA" pull registry.ollama.ai/library/tiny
"#;
        let out = lan.run(
            &[
                ("OLLAMA", &ollama),
                ("MODELS", models.path()),
                ("OLLAMA_MODELS", models.path()),
                ("HOME", models.path()),
                ("SSL_CERT_FILE", certs),
            ],
            &["timeout", "120", "sh", "-c", script],
        );
        text(&out)
    };
    let trusted = pull(&bundle);
    eprintln!("with the CA: {trusted}");
    assert!(
        !trusted.contains("x509") && !trusted.contains("tls:"),
        "TLS must verify: {trusted}"
    );
    assert!(trusted.contains("file does not exist"), "{trusted}");
    let stats = d.ctl_json(&["stats"]);
    assert!(stats["tls"]["handshakes"].as_u64().unwrap() >= 1, "{stats}");
    let untrusted = pull(system);
    eprintln!("without the CA: {untrusted}");
    assert!(
        untrusted.contains("x509: certificate signed by unknown authority"),
        "{untrusted}"
    );
}
