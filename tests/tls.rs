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
//! - a reload that adds `[dns] intercept = ["models.example"]` re-issues leaves: the handshake
//!   for it works; a name-constrained CA does not cover it until rotation (curl refuses), an
//!   unconstrained one (`name_constraints = false`) does at once;
//! - `/ca.crt` equals `lancachectl ca`; `/setup.sh` is filled with the cache's URL and the CA
//!   fingerprint, passes `sh -n` and shellcheck, installs the CA into a fake root idempotently
//!   (Debian, Fedora and Arch layouts) and writes `/etc/profile.d/lancache-python.sh` (Python
//!   clients' `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE`), refuses a CA with the wrong fingerprint,
//!   `--uninstall` removes both; with a Debian-like fake root the real update-ca-certificates puts the CA into that
//!   root's bundle (curl then verifies the cache with it) and takes it out on --uninstall; a
//!   hostile Host header never reaches the script; `/setup.ps1` is filled the same way;
//! - `/setup.ps1` parses (tree-sitter PowerShell grammar; no pwsh here);
//! - a client that never sends a ClientHello is dropped after the 10 s handshake timeout;
//! - an unusable `ca_dir` stops a daemon with HTTPS (error names key and path) and makes
//!   `/ca.crt` 503 and `lancachectl ca` fail with the path otherwise;
//! - SIGTERM with an idle TLS connection open drains and exits 0;
//! - with `dns.advertise`, a client connecting by IP (no SNI) gets a leaf with that IP SAN, and
//!   the CA permits exactly that address (OpenSSL verifies it);
//! - issue 5's end-to-end proof: a LAN client in its own network namespace, resolv.conf naming
//!   lancached's DNS, the real Ollama client (Go's verifier, which enforces name constraints)
//!   with SSL_CERT_FILE = system bundle + our CA pulls `registry.ollama.ai/library/tiny`
//!   (default port, no `--insecure`) through the cache from a TLS upstream (test root via
//!   `[upstream] ca_file`); `ollama list` shows the upstream manifest ID; a second client pulls
//!   it with the upstream gone; a client without our CA fails with an x509 error.

use crate::util::daemon::Activate;
use crate::util::netns::NetNs;
use crate::util::ollama::Ollama;
use crate::util::tls_upstream::{dns_responder, TlsFront};
use crate::util::upstream::FakeUpstream;
use crate::util::wait_for;
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

/// Runs `cmd` with `input` on its stdin; returns what it printed.
fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `openssl x509 -text` of the first certificate in `pem`.
fn x509_text(pem: &str) -> String {
    let out = with_stdin(
        Command::new("openssl").args(["x509", "-noout", "-text"]),
        pem,
    );
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
    assert!(
        !s_client(&d, "models.example").0,
        "models.example is not intercepted yet"
    );
    d.write_config("[dns]\nintercept = [\"models.example\"]\n");
    assert_eq!(d.ctl_json(&["reload"])["response"], "reloaded");
    wait_for("a leaf for models.example", Duration::from_secs(10), || {
        s_client(&d, "models.example").0
    });
    assert!(leaf_text(&d, "models.example").contains("DNS:models.example"));
    // The CA was constrained to the names it was made for: clients refuse models.example...
    let refused = curl_https(&d, "models.example", Some(&ca_path(&d)), &[]);
    assert_eq!(refused.status.code(), Some(60), "{}", text(&refused));
    let stats = d.ctl_json(&["stats"]);
    assert_eq!(
        stats["tls"]["uncovered"],
        serde_json::json!(["models.example"])
    );
    assert!(d.stderr().contains("do not cover these names"));
    // ...until the CA is rotated, which constrains the new CA to today's names.
    d.ctl_json(&["ca", "--rotate"]);
    for name in ["models.example", "registry.ollama.ai"] {
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
    d.write_config("[dns]\nintercept = [\"models.example\"]\n");
    d.ctl_json(&["reload"]);
    wait_for("a leaf for models.example", Duration::from_secs(10), || {
        s_client(&d, "models.example").0
    });
    let ok = curl_https(&d, "models.example", Some(&ca_path(&d)), &["--http2"]);
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
        // Python clients (huggingface_hub) are pointed at the system bundle for login shells.
        let py = root.path().join("etc/profile.d/lancache-python.sh");
        let env = std::fs::read_to_string(&py).unwrap();
        assert!(
            env.contains("export SSL_CERT_FILE=") && env.contains("export REQUESTS_CA_BUNDLE="),
            "{env}"
        );
        assert!(text(&first).contains("SSL_CERT_FILE"), "{}", text(&first));
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
        assert!(
            !py.exists(),
            "{os}: --uninstall removes the Python environment"
        );
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
    let out = with_stdin(Command::new("python3").args(["-c", check]), script);
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
    wait_for("the handshake", Duration::from_secs(10), || {
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

/// Issue 5's end-to-end proof. A "LAN client" network namespace (veth to the root namespace)
/// whose resolv.conf names lancached's own DNS; lancached in the root namespace on the client's
/// side of the veth, ports 53, 80 and 443 bound from its config (no activation); an upstream
/// playing registry.ollama.ai over TLS (nginx with a leaf from a test root, trusted by
/// lancached only through `[upstream] ca_file`, its name known only to `[upstream] resolvers`)
/// whose blobs 307 to a "CDN" on another loopback address. The real Ollama client, with
/// `SSL_CERT_FILE` = system bundle + the cache's CA, pulls
/// `registry.ollama.ai/library/tiny` with the default port and no `--insecure`.
#[test]
fn lan_client_pulls_through_the_cache_over_verified_tls() {
    for p in ["ip", "nginx", "openssl"] {
        if !require_program(p) {
            return;
        }
    }
    if !crate::util::require_ollama() {
        return;
    }
    let started = Instant::now();
    let lan = NetNs::new(&[]);
    let (ip, _client_ip) = lan.veth();
    lan.set_resolver(&ip);

    let up = FakeUpstream::start();
    let layer = crate::util::upstream::blob_bytes(3 << 20, 5);
    let manifest = up.add_model("library/tiny", "latest", &[&layer[..]]);
    let manifest_id = crate::util::upstream::digest(&manifest)[7..19].to_string();
    const UPSTREAM: &str = "registry.upstream.lancache-test";
    let front = TlsFront::start(UPSTREAM, &up.url());
    let (resolver, _) = dns_responder();

    // The cache listens on the LAN address, default ports (what an unmodified client uses).
    let d = Daemon::builder()
        .activate(Activate::none())
        .config(&format!(
            "[tls]\nlisten = [\"{ip}:443\"]\n\
             [http]\nlisten = [\"{ip}:80\"]\npublic_url = \"http://{ip}\"\n\
             [dns]\nlisten = [\"{ip}:53\"]\nadvertise = [\"{ip}\"]\n\
             [upstream]\nresolvers = [\"{resolver}\"]\nca_file = {ca:?}\n\
             [upstream.registries]\n\"registry.ollama.ai\" = \"https://{UPSTREAM}:{port}\"\n",
            ca = front.ca_file().display().to_string(),
            port = front.port,
        ))
        .start();
    // The client's resolver is the cache: registry.ollama.ai is the cache's LAN address.
    let resolved = lan
        .command("getent")
        .args(["ahostsv4", "registry.ollama.ai"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&resolved.stdout).starts_with(&format!("{ip} ")),
        "{}",
        text(&resolved)
    );

    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle.pem");
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
    let mut pem = std::fs::read(system).unwrap_or_default();
    pem.extend(std::fs::read(ca_path(&d)).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let client = |name: &str, certs: &Path| {
        let models = work.path().join(name).join("models");
        std::fs::create_dir_all(&models).unwrap();
        Ollama::serve(
            &models,
            11434,
            Some(&lan),
            &[("SSL_CERT_FILE", certs.to_str().unwrap())],
        )
    };
    let pull = |o: &Ollama| o.cli(&["pull", "registry.ollama.ai/library/tiny"]);
    let pulled = |o: &Ollama| {
        let out = pull(o);
        assert!(
            out.status.success(),
            "ollama pull: {}\nserve log:\n{}\ndaemon:\n{}",
            text(&out),
            o.log(),
            d.stderr()
        );
        o.list()
    };

    // The first client fills the cache from upstream.
    let a = client("a", &bundle);
    let list = pulled(&a);
    assert!(
        // Ollama shows the default registry's models by their short name.
        list.iter()
            .any(|(n, id)| n == "tiny:latest" && *id == manifest_id),
        "ollama list shows the upstream manifest's ID {manifest_id}: {list:?}"
    );
    assert_eq!(up.cdn_bytes(), up.blob_total(), "every blob came once");
    let stats = d.ctl_json(&["stats"]);
    assert!(stats["tls"]["handshakes"].as_u64().unwrap() >= 1, "{stats}");
    drop(a);

    // Upstream gone: a second client (its own models directory) pulls from the cache alone.
    drop(front);
    drop(up);
    let b = client("b", &bundle);
    assert!(pulled(&b).iter().any(|(_, id)| *id == manifest_id));
    drop(b);

    // A client that does not trust our CA is refused: we never weaken TLS.
    let c = client("c", system);
    let out = pull(&c);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("x509: certificate signed by unknown authority"),
        "{}",
        text(&out)
    );
    eprintln!("end-to-end proof took {:?}", started.elapsed());
}
