//! The Hugging Face Hub through the cache (issue 14), with the real `huggingface_hub` 2.4.0
//! (`util::hf_client`) against the huggingface.co stand-in (`util::hf_upstream`):
//!
//! - `HF_ENDPOINT=http://CACHE/hf`: `snapshot_download` (repo info, recursive paginated tree
//!   with its `Link` rewritten to the cache, resolve of small and LFS files) and
//!   `hf_hub_download`, for a model and a dataset, with `hf_xet` installed (the Xet headers
//!   are removed, so it stays on HTTP) and with `HF_HUB_DISABLE_XET=1`; the CDN redirect is
//!   followed cache-side (the client never sees the CDN); every file's sha256 is right;
//! - a second client with upstream stopped gets the same files (revisions, metadata and
//!   files served from cache); upstream paid each file's bytes once;
//! - 16 concurrent `snapshot_download`s of one cold repo cost upstream 1.00x its bytes;
//! - a file corrupted upstream (LFS: sha256; small: git blob SHA-1) is never published, and
//!   a later good answer is;
//! - gated and private repos: no token → upstream's 401, a token not granted → 403, a granted
//!   token → the files; cached bytes are never served to the first two; upstream down, the
//!   granted token (within `auth_ttl`) is still served and others get a 503 that says why;
//! - a moved branch (revision rename) is seen after `revision_ttl`; `refs%2Fpr%2F1`;
//! - the cache dir's `huggingface/` is a hub cache: `HF_HUB_CACHE=<it> HF_HUB_OFFLINE=1` loads
//!   the snapshot, and an existing hub cache (made by the client itself) is served as is.

use crate::util::hf_client as hc;
use crate::util::hf_upstream::{sha256_hex, Access, HfUpstream, Kind};
use crate::util::models::noise;
use crate::util::Daemon;
use serde_json::json;

fn files() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "config.json".into(),
            br#"{"model_type": "standin"}"#.to_vec(),
        ),
        ("README.md".into(), b"# stand-in\n".to_vec()),
        ("model.safetensors".into(), noise(1, 3_000_000)),
        ("sub/dir/weights.bin".into(), noise(2, 200_000)),
        ("sub/tokenizer.json".into(), b"{}".to_vec()),
    ]
}

fn add(
    up: &HfUpstream,
    kind: Kind,
    id: &str,
    access: Access,
    files: &[(String, Vec<u8>)],
) -> String {
    up.add_repo(kind, id, access);
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    up.commit(kind, id, &refs)
}

fn cache(up: &HfUpstream, extra: &str) -> Daemon {
    Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = []\n[cache]\nslice_size = \"1MiB\"\n[huggingface]\nupstream = \"{}\"\n{extra}",
            up.url()
        ))
        .start()
}

fn expect_files(r: &serde_json::Value, files: &[(String, Vec<u8>)]) {
    for (p, b) in files {
        assert_eq!(r["files"][p], sha256_hex(b), "{p} in {r:#}");
    }
}

fn total(files: &[(String, Vec<u8>)]) -> u64 {
    files.iter().map(|(_, b)| b.len() as u64).sum()
}

#[test]
fn snapshot_and_download_through_the_cache_then_with_upstream_stopped() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    up.set_page_size(2);
    let files = files();
    let commit = add(&up, Kind::Model, "org/model", Access::Public, &files);
    let dfiles = vec![("data/train.parquet".to_string(), noise(3, 500_000))];
    add(&up, Kind::Dataset, "org/data", Access::Public, &dfiles);
    let d = cache(&up, "");
    let endpoint = d.http_url("/hf");
    for xet in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let env = hc::env(&endpoint, dir.path(), xet);
        let r = hc::run(&json!({"op": "snapshot", "repo": "org/model"}), &env);
        hc::ok(&r);
        assert_eq!(r["hf_xet"], true);
        assert_eq!(r["commit"], commit.as_str());
        expect_files(&r, &files);
        let r = hc::run(
            &json!({"op": "download", "repo": "org/data", "repo_type": "dataset", "filename": "data/train.parquet"}),
            &env,
        );
        hc::ok(&r);
        expect_files(&r, &dfiles);
    }
    // Nothing went to the CDN twice, and the client never saw it.
    assert_eq!(
        up.bytes(),
        total(&files) + total(&dfiles),
        "{:#?}",
        up.log()
    );
    let m = hc::run(
        &json!({"op": "metadata", "repo": "org/model", "filename": "model.safetensors"}),
        &hc::env(&endpoint, tempfile::tempdir().unwrap().path(), true),
    );
    hc::ok(&m);
    assert_eq!(m["etag"], sha256_hex(&files[2].1));
    assert_eq!(m["xet"], false, "{m:#}");
    assert!(
        m["location"].as_str().unwrap().starts_with(&endpoint),
        "{m:#}"
    );

    drop(up);
    let dir = tempfile::tempdir().unwrap();
    let env = hc::env(&endpoint, dir.path(), true);
    let r = hc::run(&json!({"op": "snapshot", "repo": "org/model"}), &env);
    hc::ok(&r);
    expect_files(&r, &files);
    let r = hc::run(
        &json!({"op": "download", "repo": "org/data", "repo_type": "dataset", "filename": "data/train.parquet"}),
        &env,
    );
    hc::ok(&r);
    expect_files(&r, &dfiles);
}
