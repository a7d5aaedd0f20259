//! Side-loading proven with the real Ollama client (0.5.4): after `install.sh` (served by the
//! daemon, run as `curl | sh -s -- NAME...`) and, separately, after `curl /models/NAME | tar -x`
//! into a fresh models directory, `ollama serve` starts (running its start-up clean-up of
//! unreferenced blobs), `ollama list` shows each model with the cache's ID (manifest sha256),
//! and every blob is still there. Also for install.sh: a second run re-uses verified blobs and
//! replaces a corrupt one, an interrupted partial download resumes, and unknown models, an
//! unreachable server and `--help`/`--list` behave as documented (clear message, exit status).
//!
//! `install.sh` fetches blobs from the data plane `GET /blobs/sha256:<hex>`. Until that route
//! answers in this daemon, the test puts nginx in front (blobs straight from the cache directory,
//! everything else proxied to the daemon with the client's Host).

use crate::util::models::{prepared_dir, write_model, TestModel};
use crate::util::ollama::Ollama;
use crate::util::{require_program, Daemon};
use std::path::Path;
use std::process::{Command, Output};

fn models(cache: &Path) -> Vec<TestModel> {
    vec![
        write_model(cache, "qwen2.5:1.5b", &[300_000, 2_000]),
        write_model(cache, "someuser/my-model:v1.0", &[50_000]),
        write_model(
            cache,
            "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M",
            &[90_000],
        ),
    ]
}

/// A daemon over a cache holding [`models`], and those models.
fn daemon_with_models() -> (Daemon, Vec<TestModel>) {
    let tmp = prepared_dir(|c| {
        models(c);
    });
    let want = models(&tmp.path().join("cache"));
    (Daemon::builder().dir(tmp).start(), want)
}

/// The base URL clients use. The scripts fetch blobs from the daemon's own data plane, so it
/// must serve a blob the cache has, whole.
fn front(d: &Daemon, known: &TestModel) -> String {
    let (digest, size) = &known.blobs[0];
    let probe = crate::util::models::raw_get(d.http.unwrap(), &format!("/blobs/{digest}"), "");
    assert_eq!(probe.0, 200, "the data plane serves /blobs/{digest}");
    assert_eq!(probe.2.len() as u64, *size);
    d.http_url("")
}

fn sh(cmd: &str, models_dir: &Path) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("OLLAMA_MODELS", models_dir)
        .env_remove("LANCACHE_URL")
        .output()
        .unwrap()
}

fn assert_ollama_sees(dir: &Path, models: &[TestModel]) {
    let ollama = Ollama::serve_local(dir);
    let list = ollama.list();
    for m in models {
        let short = m.name.short_name();
        assert!(
            list.iter().any(|(n, id)| *n == short && *id == m.id()),
            "{short} (ID {}) not in `ollama list`: {list:?}\n{}",
            m.id(),
            ollama.log()
        );
    }
    // `ollama serve` has run its start-up clean-up: nothing of ours was pruned.
    for m in models {
        assert_eq!(std::fs::read(m.manifest_path(dir)).unwrap(), m.manifest);
        for (d, size) in &m.blobs {
            let meta = std::fs::metadata(TestModel::blob_path(dir, d))
                .unwrap_or_else(|e| panic!("{d} of {} gone after ollama serve: {e}", m.name));
            assert_eq!(meta.len(), *size);
        }
    }
}

#[test]
fn install_sh_sideloads_into_real_ollama() {
    if !require_program("curl") {
        return;
    }
    let (d, want) = daemon_with_models();
    let url = front(&d, &want[0]);
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("models");

    let out = sh(
        &format!(
            "curl -fsSL {url}/install.sh | sh -s -- qwen2.5:1.5b someuser/my-model:v1.0 hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M"
        ),
        &dir,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "install.sh failed: {err}");
    assert!(err.contains(&format!("ID {}", want[0].id())), "{err}");
    // Nothing but blobs in blobs/ (the partial area is outside it).
    for e in std::fs::read_dir(dir.join("blobs")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(name.starts_with("sha256-") && name.len() == 71, "{name}");
    }
    assert_ollama_sees(&dir, &want);

    // Again: verified blobs are kept, a corrupt one (right name, wrong bytes) is replaced.
    let corrupt = TestModel::blob_path(&dir, &want[1].blobs[1].0);
    std::fs::write(&corrupt, vec![0u8; 50_000]).unwrap();
    let out = sh(
        &format!("curl -fsSL {url}/install.sh | sh -s -- someuser/my-model:v1.0"),
        &dir,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("already present") && err.contains("downloading"),
        "{err}"
    );
    assert_eq!(
        lancached::store::Digest::of(&std::fs::read(&corrupt).unwrap()),
        want[1].blobs[1].0
    );

    // A partial download left by an interrupted run resumes (curl -C -) and verifies.
    let big = &want[0].blobs[1];
    std::fs::remove_file(TestModel::blob_path(&dir, &big.0)).unwrap();
    let part = dir.join(".lancache-partial");
    assert!(!part.exists(), "an empty work area is removed");
    std::fs::create_dir_all(&part).unwrap();
    let full = std::fs::read(TestModel::blob_path(&d.cache_dir, &big.0)).unwrap();
    std::fs::write(part.join(big.0.file_name()), &full[..100_000]).unwrap();
    let out = sh(
        &format!("curl -fsSL {url}/install.sh | sh -s -- qwen2.5:1.5b"),
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(TestModel::blob_path(&dir, &big.0)).unwrap(),
        full
    );
}

#[test]
fn install_sh_errors_and_listing() {
    let (d, want) = daemon_with_models();
    let url = front(&d, &want[0]);
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("models");
    let script = format!("curl -fsSL {url}/install.sh | sh -s --");

    let out = sh(&format!("{script} --help"), &dir);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));

    let out = sh(&format!("{script} --list"), &dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("qwen2.5:1.5b") && text.contains("complete"),
        "{text}"
    );
    assert!(text.contains("hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M"));

    let out = sh(&format!("{script} nosuchmodel:7b"), &dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no model nosuchmodel:7b"), "{err}");
    assert!(!dir
        .join("manifests/registry.ollama.ai/library/nosuchmodel")
        .exists());

    let out = sh(&format!("{script} '../../etc:x'"), &dir);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid model name"));

    // The server goes away: a clear message and a non-zero exit.
    let installer =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh")).unwrap();
    let saved = target.path().join("install.sh");
    std::fs::write(&saved, installer).unwrap();
    let port = crate::util::ollama::free_port();
    let out = sh(
        &format!(
            "sh {} --server http://127.0.0.1:{port} qwen2.5:1.5b",
            saved.display()
        ),
        &dir,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the cache"), "{err}");
    // Unfilled placeholder and no --server: says what to do.
    let out = sh(&format!("sh {} qwen2.5:1.5b", saved.display()), &dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--server"));
}

#[test]
fn tar_route_sideloads_into_real_ollama() {
    let (d, want) = daemon_with_models();
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("models");
    std::fs::create_dir_all(&dir).unwrap();
    for m in &want {
        let out = sh(
            &format!(
                "curl -fsS {} | tar -x -C \"$OLLAMA_MODELS\"",
                d.http_url(&format!("/models/{}", m.name.short_name()))
            ),
            &dir,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_ollama_sees(&dir, &want);
}

#[test]
fn install_sh_passes_shellcheck() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh");
    for shell in ["sh", "dash"] {
        if require_program(shell) {
            let out = Command::new(shell).arg("-n").arg(&script).output().unwrap();
            assert!(out.status.success(), "{shell} -n: {:?}", out);
        }
    }
    if require_program("shellcheck") {
        let out = Command::new("shellcheck")
            .args(["-s", "sh"])
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
