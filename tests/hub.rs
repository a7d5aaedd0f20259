//! The Hugging Face Hub through the cache (issue 14), with the real `huggingface_hub` 2.4.0
//! (`util::hf_client`) against the huggingface.co stand-in (`util::hf_upstream`):
//!
//! - `HF_ENDPOINT=http://CACHE/hf`: `snapshot_download` (repo info, recursive paginated tree
//!   with its `Link` rewritten to the cache, resolve of small and LFS files) and
//!   `hf_hub_download`, for a model and a dataset, with `hf_xet` installed (the Xet headers
//!   are removed, so it stays on HTTP) and with `HF_HUB_DISABLE_XET=1`; the CDN redirect is
//!   followed cache-side (the client never sees the CDN); every file's sha256 is right;
//! - `list_repo_tree` (sub-folder, recursive, across pages) and `get_paths_info` through the
//!   cache give what upstream gives, and the same again with upstream stopped; a tree page's
//!   `Link` names the cache's host and `/hf`;
//! - a second client with upstream stopped gets the same files (revisions, metadata and
//!   files served from cache); upstream paid each file's bytes once;
//! - 16 concurrent `snapshot_download`s of one cold repo cost upstream 1.00x its bytes, and
//!   the traffic shows in `/metrics` and `lancachectl stats` under `huggingface`;
//! - a file corrupted upstream (LFS: sha256; small: git blob SHA-1) is never published, and
//!   a later good answer is;
//! - gated and private repos: no token → upstream's 401, a token not granted → 403, a granted
//!   token → the files; cached bytes are never served to the first two; upstream down, the
//!   granted token (within `auth_ttl`) is still served and others get a 503 that says why;
//!   a gated repo asked for by its old (renamed) name fills with the token kept on the Hub;
//! - a moved branch (revision rename) is seen after `revision_ttl`; `refs%2Fpr%2F1`; a renamed
//!   repo still downloads by its old name (its redirect followed upstream-side for revisions,
//!   passed back on the cache for files);
//! - the cache dir's `huggingface/` is a hub cache: `HF_HUB_CACHE=<it> HF_HUB_OFFLINE=1` loads
//!   the snapshot, and an existing hub cache (made by the client itself) is served as is.

use crate::util::hf_client as hc;
use crate::util::hf_upstream::{sha256_hex, Access, HfFaults, HfUpstream, Kind};
use crate::util::models::noise;
use crate::util::upstream::raw_get;
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

#[test]
fn sixteen_concurrent_cold_snapshots_cost_upstream_the_repo_once() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let files = files();
    add(&up, Kind::Model, "org/model", Access::Public, &files);
    let d = cache(&up, "");
    let endpoint = d.http_url("/hf");
    let runs: Vec<_> = (0..16)
        .map(|i| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().unwrap();
                let env = hc::env(&endpoint, dir.path(), i % 2 == 0);
                hc::run(&json!({"op": "snapshot", "repo": "org/model"}), &env)
            })
        })
        .collect();
    for r in runs {
        let r = r.join().unwrap();
        hc::ok(&r);
        expect_files(&r, &files);
    }
    assert_eq!(up.bytes(), total(&files), "upstream bytes, 1.00x the repo");
    // Counted in the metrics and stats under the origin `huggingface`.
    let m = raw_get(d.http.unwrap(), "cache", "/metrics", &[]);
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.contains("registry=\"huggingface\""), "{text}");
    let stats = d.ctl_json(&["stats"]);
    assert!(stats.to_string().contains("huggingface"), "{stats:#}");
}

#[test]
fn a_file_corrupted_upstream_is_never_published() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let files = files();
    let commit = add(&up, Kind::Model, "org/model", Access::Public, &files);
    let d = cache(&up, "");
    let endpoint = d.http_url("/hf");
    let hub = d.path("cache/huggingface/models--org--model");
    for (name, at) in [("model.safetensors", 2_500_000), ("config.json", 3)] {
        up.set_file_faults(
            name,
            Some(HfFaults {
                corrupt_at: Some(at),
                ..Default::default()
            }),
        );
        let dir = tempfile::tempdir().unwrap();
        let env = hc::env(&endpoint, dir.path(), false);
        let r = hc::run(
            &json!({"op": "download", "repo": "org/model", "filename": name}),
            &env,
        );
        assert_eq!(
            r["ok"], false,
            "{name}: a corrupted file reached the client: {r:#}"
        );
        assert!(
            !hub.join("snapshots").join(&commit).join(name).exists(),
            "{name} was published"
        );
        let (_, b) = files.iter().find(|(p, _)| p == name).unwrap();
        assert!(!d
            .path(&format!("cache/blobs/sha256-{}", sha256_hex(b)))
            .exists());
        // Upstream heals: the next request fetches and publishes the good bytes.
        up.set_file_faults(name, None);
        let r = hc::run(
            &json!({"op": "download", "repo": "org/model", "filename": name}),
            &env,
        );
        hc::ok(&r);
        assert_eq!(r["files"][name], sha256_hex(b));
    }
}

#[test]
fn gated_and_private_files_go_only_to_tokens_upstream_accepted() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let files = files();
    add(
        &up,
        Kind::Model,
        "org/gated",
        Access::Gated(vec!["hf_good".into()]),
        &files,
    );
    add(
        &up,
        Kind::Model,
        "org/private",
        Access::Private(vec!["hf_good".into()]),
        &files,
    );
    let d = cache(&up, "auth_ttl = \"1h\"\n");
    let endpoint = d.http_url("/hf");
    let addr = d.http.unwrap();
    for repo in ["org/gated", "org/private"] {
        let dir = tempfile::tempdir().unwrap();
        let env = hc::env(&endpoint, dir.path(), true);
        let r = hc::run(
            &json!({"op": "snapshot", "repo": repo, "token": "hf_good"}),
            &env,
        );
        hc::ok(&r);
        expect_files(&r, &files);
        // Cached now; still not for anyone else.
        let path = format!("/hf/{repo}/resolve/main/config.json");
        let no = raw_get(addr, "cache", &path, &[]);
        assert_eq!(no.status, 401, "{repo} without a token");
        assert_ne!(no.body, files[0].1);
        let bad = raw_get(addr, "cache", &path, &[("Authorization", "Bearer hf_bad")]);
        let want = if repo == "org/gated" { 403 } else { 401 };
        assert_eq!(bad.status, want, "{repo} with a token not granted");
        assert_ne!(bad.body, files[0].1);
        let r = hc::run(
            &json!({"op": "info", "repo": repo, "token": "hf_bad"}),
            &env,
        );
        assert_eq!(r["ok"], false, "{r:#}");
    }
    // A gated repo asked for by its old name: the token goes along the rename's same-host
    // redirect (and never to the CDN), and the repo's own LFS file fills.
    let renamed = vec![("big.bin".to_string(), noise(7, 2_500_000))];
    add(
        &up,
        Kind::Model,
        "org/gated-new",
        Access::Gated(vec!["hf_good".into()]),
        &renamed,
    );
    up.rename_repo(Kind::Model, "org/gated-old", "org/gated-new");
    let dir = tempfile::tempdir().unwrap();
    let env = hc::env(&endpoint, dir.path(), true);
    let r = hc::run(
        &json!({"op": "snapshot", "repo": "org/gated-old", "token": "hf_good"}),
        &env,
    );
    hc::ok(&r);
    expect_files(&r, &renamed);
    // Upstream down: the accepted token is still served, others are told why.
    let before = up.bytes();
    drop(up);
    let dir = tempfile::tempdir().unwrap();
    let env = hc::env(&endpoint, dir.path(), true);
    let r = hc::run(
        &json!({"op": "snapshot", "repo": "org/gated", "token": "hf_good"}),
        &env,
    );
    hc::ok(&r);
    expect_files(&r, &files);
    // The second repo's LFS files are the same sha256s: stored and fetched once.
    let small: u64 = files
        .iter()
        .map(|(_, b)| b.len() as u64)
        .filter(|&n| n < 64 * 1024)
        .sum();
    assert_eq!(before, total(&files) + small + total(&renamed));
    let other = raw_get(
        addr,
        "cache",
        "/hf/org/gated/resolve/main/config.json",
        &[("Authorization", "Bearer hf_other")],
    );
    assert_eq!(other.status, 503);
    let why = String::from_utf8_lossy(&other.body);
    assert!(
        why.contains("auth_ttl") && why.contains("gated or private"),
        "{why}"
    );
    let none = raw_get(
        addr,
        "cache",
        "/hf/org/private/resolve/main/config.json",
        &[],
    );
    assert_eq!(none.status, 503);
}

#[test]
fn a_moved_branch_is_seen_after_revision_ttl_and_pr_refs_resolve() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let v1 = vec![("config.json".to_string(), b"{\"v\": 1}".to_vec())];
    let c1 = add(&up, Kind::Model, "org/model", Access::Public, &v1);
    let d = cache(&up, "revision_ttl = \"1s\"\n");
    let endpoint = d.http_url("/hf");
    let dir = tempfile::tempdir().unwrap();
    let env = hc::env(&endpoint, dir.path(), false);
    let r = hc::run(&json!({"op": "snapshot", "repo": "org/model"}), &env);
    assert_eq!(hc::ok(&r)["commit"], c1.as_str());
    let v2 = vec![("config.json".to_string(), b"{\"v\": 2}".to_vec())];
    let refs: Vec<(&str, Vec<u8>)> = v2.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let c2 = up.commit(Kind::Model, "org/model", &refs);
    up.set_ref(Kind::Model, "org/model", "refs/pr/1", &c1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = hc::run(&json!({"op": "snapshot", "repo": "org/model"}), &env);
    assert_eq!(hc::ok(&r)["commit"], c2.as_str());
    expect_files(&r, &v2);
    let r = hc::run(
        &json!({"op": "info", "repo": "org/model", "revision": "refs/pr/1"}),
        &env,
    );
    assert_eq!(hc::ok(&r)["commit"], c1.as_str());
    // A renamed repo: the old name still downloads through the cache (the rename's redirect
    // is followed upstream-side for the revision, and passed back on the cache for files).
    up.rename_repo(Kind::Model, "org/old-name", "org/model");
    let fresh = tempfile::tempdir().unwrap();
    let env2 = hc::env(&endpoint, fresh.path(), false);
    let r = hc::run(&json!({"op": "snapshot", "repo": "org/old-name"}), &env2);
    assert_eq!(hc::ok(&r)["commit"], c2.as_str());
    expect_files(&r, &v2);
    let r = hc::run(
        &json!({"op": "download", "repo": "org/old-name", "filename": "config.json"}),
        &env2,
    );
    assert_eq!(hc::ok(&r)["files"]["config.json"], sha256_hex(&v2[0].1));
    // Upstream down: the last answer stands, however old.
    drop(up);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let dir = tempfile::tempdir().unwrap();
    let env = hc::env(&endpoint, dir.path(), false);
    let r = hc::run(&json!({"op": "snapshot", "repo": "org/model"}), &env);
    assert_eq!(hc::ok(&r)["commit"], c2.as_str());
}

#[test]
fn the_cache_dir_is_a_hub_cache_both_ways() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let files = files();
    let commit = add(&up, Kind::Model, "org/model", Access::Public, &files);
    let d = cache(&up, "");
    let r = hc::run(
        &json!({"op": "snapshot", "repo": "org/model"}),
        &hc::env(
            &d.http_url("/hf"),
            tempfile::tempdir().unwrap().path(),
            false,
        ),
    );
    hc::ok(&r);
    // The cache's own hub cache, loaded by the client offline.
    let mut env = hc::env("http://127.0.0.1:9", &d.path("cache/huggingface"), false);
    env.push(("HF_HUB_OFFLINE", "1".into()));
    let r = hc::run(&json!({"op": "snapshot", "repo": "org/model"}), &env);
    assert_eq!(hc::ok(&r)["commit"], commit.as_str());
    expect_files(&r, &files);
    // LFS blobs are stored once: the hub cache's blob is the Ollama half's file.
    use std::os::unix::fs::MetadataExt;
    let sha = sha256_hex(&files[2].1);
    let a = std::fs::metadata(d.path(&format!("cache/blobs/sha256-{sha}"))).unwrap();
    let b = std::fs::metadata(d.path(&format!("cache/huggingface/models--org--model/blobs/{sha}")))
        .unwrap();
    assert_eq!((a.ino(), a.dev()), (b.ino(), b.dev()));
    assert_eq!(a.nlink(), 2);

    // A hub cache the client made itself, straight from upstream, served as it is.
    let own = tempfile::tempdir().unwrap();
    let r = hc::run(
        &json!({"op": "snapshot", "repo": "org/model"}),
        &hc::env(&up.url(), own.path(), false),
    );
    hc::ok(&r);
    let d2 = cache(
        &up,
        &format!("dir = {:?}\n", own.path().display().to_string()),
    );
    up.reset_counters();
    let r = hc::run(
        &json!({"op": "snapshot", "repo": "org/model"}),
        &hc::env(
            &d2.http_url("/hf"),
            tempfile::tempdir().unwrap().path(),
            false,
        ),
    );
    hc::ok(&r);
    expect_files(&r, &files);
    assert_eq!(up.bytes(), 0, "every file came from the existing hub cache");
}

#[test]
fn tree_and_paths_info_answer_through_the_cache_and_from_it() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    up.set_page_size(2);
    let files = files();
    add(&up, Kind::Model, "org/model", Access::Public, &files);
    let d = cache(&up, "");
    let env = hc::env(
        &d.http_url("/hf"),
        tempfile::tempdir().unwrap().path(),
        false,
    );
    let tree = json!({"op": "tree", "repo": "org/model", "path": "sub", "recursive": true});
    let paths = json!({"op": "paths_info", "repo": "org/model", "paths": ["config.json", "sub", "model.safetensors"]});
    let direct = hc::env(&up.url(), tempfile::tempdir().unwrap().path(), false);
    let want_tree = hc::run(&tree, &direct);
    let want_paths = hc::run(&paths, &direct);
    hc::ok(&want_tree);
    hc::ok(&want_paths);
    // A page's Link names the cache, not upstream.
    let r = raw_get(
        d.http.unwrap(),
        "cache.lan",
        "/hf/api/models/org/model/tree/main?recursive=true",
        &[],
    );
    assert_eq!(r.status, 200);
    let link = &r.headers["link"];
    assert!(
        link.starts_with("<http://cache.lan/hf/api/models/org/model/tree/"),
        "{link}"
    );
    let check = || {
        let t = hc::run(&tree, &env);
        assert_eq!(hc::ok(&t)["entries"], want_tree["entries"]);
        let p = hc::run(&paths, &env);
        assert_eq!(hc::ok(&p)["entries"], want_paths["entries"]);
    };
    check();
    // Upstream stopped: the same answers, from the cache.
    drop(up);
    check();
}
