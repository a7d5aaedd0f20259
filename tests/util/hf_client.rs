//! The real `huggingface_hub` (from PyPI, installed by `scripts/test-deps.sh`) driven from the
//! tests: one Python script, one JSON line of result. Each call runs `python3` with the
//! environment given (`HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HUB_DISABLE_XET`, `HF_HUB_OFFLINE`,
//! `REQUESTS_CA_BUNDLE`/`SSL_CERT_FILE`, ...) and, when a `Command` is passed in, inside a netns.
//!
//! Result: `{"ok": true, "path": ..., "files": {"rel/path": "<sha256>"}, "commit": ...}` or
//! `{"ok": false, "error": "<ExceptionClass>", "message": ..., "status": <http status|null>}`.

use std::path::Path;
use std::process::Command;

pub const DRIVER: &str = r#"
import hashlib, json, os, sys, traceback
op = json.loads(sys.argv[1])
def digest(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()
def tree(root):
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)
            if rel.startswith(".cache"):
                continue
            out[rel] = digest(p)
    return out
try:
    import huggingface_hub as hh
    kw = dict(repo_type=op.get("repo_type", "model"))
    if op.get("revision"): kw["revision"] = op["revision"]
    if op.get("token"): kw["token"] = op["token"]
    else: kw["token"] = False
    res = {"ok": True, "version": hh.__version__}
    try:
        import hf_xet  # noqa
        res["hf_xet"] = True
    except ImportError:
        res["hf_xet"] = False
    what = op["op"]
    if what == "snapshot":
        if op.get("max_workers"): kw["max_workers"] = op["max_workers"]
        p = hh.snapshot_download(op["repo"], **kw)
        res["path"] = p
        res["files"] = tree(p)
        res["commit"] = os.path.basename(p)
    elif what == "download":
        p = hh.hf_hub_download(op["repo"], op["filename"], **kw)
        res["path"] = p
        res["files"] = {op["filename"]: digest(p)}
        res["commit"] = os.path.basename(os.path.dirname(p)) if "/" not in op["filename"] else None
    elif what == "info":
        api = hh.HfApi()
        i = api.repo_info(op["repo"], **kw)
        res["commit"] = i.sha
        res["siblings"] = sorted(s.rfilename for s in (i.siblings or []))
    elif what == "tree":
        api = hh.HfApi()
        ents = list(api.list_repo_tree(op["repo"], path_in_repo=op.get("path"), recursive=op.get("recursive", False), **kw))
        res["entries"] = sorted([{"path": e.path, "type": type(e).__name__, "size": getattr(e, "size", None), "lfs": (e.lfs.sha256 if getattr(e, "lfs", None) else None)} for e in ents], key=lambda e: e["path"])
    elif what == "paths_info":
        api = hh.HfApi()
        ents = api.get_paths_info(op["repo"], op["paths"], **kw)
        res["entries"] = sorted([{"path": e.path, "type": type(e).__name__, "blob_id": getattr(e, "blob_id", None), "lfs": (e.lfs.sha256 if getattr(e, "lfs", None) else None)} for e in ents], key=lambda e: e["path"])
    elif what == "metadata":
        m = hh.get_hf_file_metadata(hh.hf_hub_url(op["repo"], op["filename"], repo_type=kw["repo_type"], revision=op.get("revision")), token=kw["token"])
        res.update(commit=m.commit_hash, etag=m.etag, size=m.size, location=m.location, xet=(m.xet_file_data is not None))
    else:
        raise ValueError("unknown op " + what)
except BaseException as e:
    st = None
    r = getattr(e, "response", None)
    if r is not None:
        st = getattr(r, "status_code", None)
    cause = e
    chain = []
    while cause is not None and len(chain) < 6:
        chain.append(type(cause).__name__)
        cause = cause.__cause__ or cause.__context__
    res = {"ok": False, "error": type(e).__name__, "chain": chain, "message": str(e)[:2000], "status": st,
           "trace": traceback.format_exc()[-3000:]}
print("HFRESULT " + json.dumps(res))
"#;

/// Whether the real client is importable; panics (or skips with `LANCACHE_ALLOW_SKIP=1`) if not.
pub fn require() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import huggingface_hub, hf_xet"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("LANCACHE_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIP: huggingface_hub (with hf_xet) is not installed");
            return false;
        }
        panic!("huggingface_hub is not installed: run scripts/test-deps.sh");
    }
    true
}

/// Runs one operation (`op` is the JSON the driver reads) with `env` added to a clean-ish
/// environment; `cmd` is `python3` or a netns's `command("python3")`.
pub fn run_in(
    mut cmd: Command,
    op: &serde_json::Value,
    env: &[(&str, String)],
) -> serde_json::Value {
    // Nothing from the test runner's own environment steers the client.
    for k in [
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_HUB_CACHE",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_XET",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("HF_HUB_ETAG_TIMEOUT", "20")
        .env("HF_HUB_DOWNLOAD_TIMEOUT", "20");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .arg("-c")
        .arg(DRIVER)
        .arg(op.to_string())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("HFRESULT "))
    {
        Some(line) => serde_json::from_str(line).unwrap(),
        // Killed by `timeout` (a client stuck retrying) or crashed.
        None => serde_json::json!({
            "ok": false,
            "error": "NoResult",
            "exit": out.status.code(),
            "stderr": String::from_utf8_lossy(&out.stderr).chars().rev().take(2000).collect::<String>().chars().rev().collect::<String>(),
        }),
    }
}

/// Seconds a client run may take before it is killed (each test stays under ~30 s).
pub const LIMIT_SECS: u32 = 25;

/// `python3` under `timeout`, so a client that retries forever fails the test instead of hanging it.
pub fn python() -> Command {
    let mut c = Command::new("timeout");
    c.args([format!("{LIMIT_SECS}"), "python3".to_string()]);
    c
}

pub fn run(op: &serde_json::Value, env: &[(&str, String)]) -> serde_json::Value {
    run_in(python(), op, env)
}

/// The usual environment: endpoint, a hub cache dir, Xet on or off.
pub fn env(endpoint: &str, cache: &Path, xet: bool) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("HF_ENDPOINT", endpoint.to_string()),
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_HOME", cache.join(".hf_home").display().to_string()),
    ];
    if !xet {
        v.push(("HF_HUB_DISABLE_XET", "1".to_string()));
    }
    v
}

/// Asserts a driver result succeeded, showing the client's error otherwise.
pub fn ok(r: &serde_json::Value) -> &serde_json::Value {
    assert_eq!(r["ok"], true, "huggingface_hub failed: {r:#}");
    r
}
