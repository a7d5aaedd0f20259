//! The huggingface.co stand-in (`util::hf_upstream`) against the real `huggingface_hub`, with no
//! cache in between, so that the end-to-end tests rest on a stand-in the real client accepts:
//! - `snapshot_download` (repo_info + recursive paginated tree + resolve, LFS via the CDN 302)
//!   and `hf_hub_download` of a model and a dataset, with `HF_HUB_DISABLE_XET=1`: every file's
//!   sha256 is right, the snapshot folder is the commit;
//! - the API answers: `repo_info` at a percent-encoded revision (`refs/pr/1`), `list_repo_tree`
//!   on a sub-folder and across pages, `get_paths_info`, `get_hf_file_metadata` (commit, linked
//!   etag = sha256, linked size, CDN location, Xet data seen);
//! - with `hf_xet` installed and Xet headers present the client leaves HTTP for the Xet CAS (the
//!   stand-in has none, so it fails): what the cache's header stripping prevents; the same client
//!   with the Xet headers gone downloads over HTTP;
//! - gated: no token → 401, a token not granted → 403, a granted token → the bytes; private:
//!   401 to anyone else;
//! - a moved branch (revision rename) gives the new commit; a renamed repo's relative 307 is
//!   followed;
//! - a truncated LFS file is detected by the client; a corrupted one is NOT (2.4.0 checks no
//!   sha256), which is why the cache must verify before publishing;
//! - the CDN refuses a URL without its signature, and honours Ranges.

use crate::util::hf_client as hc;
use crate::util::hf_upstream::{sha256_hex, Access, HfFaults, HfUpstream, Kind};
use crate::util::models::noise;
use serde_json::json;

fn repo(up: &HfUpstream, kind: Kind, id: &str, access: Access) -> (String, Vec<(String, Vec<u8>)>) {
    up.add_repo(kind, id, access);
    let files: Vec<(String, Vec<u8>)> = vec![
        (
            "config.json".into(),
            br#"{"model_type": "standin"}"#.to_vec(),
        ),
        ("README.md".into(), b"# stand-in\n".to_vec()),
        ("model.safetensors".into(), noise(1, 300_000)),
        ("sub/dir/weights.bin".into(), noise(2, 200_000)),
        ("sub/tokenizer.json".into(), b"{}".to_vec()),
    ];
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let c = up.commit(kind, id, &refs);
    (c, files)
}

fn expect_files(r: &serde_json::Value, files: &[(String, Vec<u8>)]) {
    for (p, b) in files {
        assert_eq!(r["files"][p], sha256_hex(b), "{p} in {r:#}");
    }
}

#[test]
fn snapshot_and_download_without_xet() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    up.set_page_size(2);
    let (c, files) = repo(&up, Kind::Model, "org/model", Access::Public);
    let (dc, dfiles) = repo(&up, Kind::Dataset, "org/data", Access::Public);
    let dir = tempfile::tempdir().unwrap();
    let env = hc::env(&up.url(), dir.path(), false);
    let r = hc::run(&json!({"op": "snapshot", "repo": "org/model"}), &env);
    hc::ok(&r);
    assert_eq!(r["commit"], c);
    expect_files(&r, &files);
    assert_eq!(r["files"].as_object().unwrap().len(), files.len());
    // LFS bytes came from the CDN, after a 302.
    assert!(
        up.log().iter().any(|l| l.starts_with("cdn GET /repos/")),
        "{:?}",
        up.log()
    );
    let r = hc::run(
        &json!({"op": "snapshot", "repo": "org/data", "repo_type": "dataset"}),
        &env,
    );
    hc::ok(&r);
    assert_eq!(r["commit"], dc);
    expect_files(&r, &dfiles);
    let dir2 = tempfile::tempdir().unwrap();
    let env2 = hc::env(&up.url(), dir2.path(), false);
    let r = hc::run(
        &json!({"op": "download", "repo": "org/model", "filename": "model.safetensors"}),
        &env2,
    );
    hc::ok(&r);
    assert_eq!(r["files"]["model.safetensors"], sha256_hex(&files[2].1));
    assert_eq!(r["commit"], c);
}

#[test]
fn api_answers_match_the_client() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    up.set_page_size(2);
    let (c, files) = repo(&up, Kind::Model, "org/model", Access::Public);
    let c2 = up.commit(Kind::Model, "org/model", &[("only.txt", b"pr".to_vec())]);
    up.set_ref(Kind::Model, "org/model", "main", &c);
    up.set_ref(Kind::Model, "org/model", "refs/pr/1", &c2);
    let dir = tempfile::tempdir().unwrap();
    let env = hc::env(&up.url(), dir.path(), false);
    let r = hc::run(
        &json!({"op": "info", "repo": "org/model", "revision": "refs/pr/1"}),
        &env,
    );
    hc::ok(&r);
    assert_eq!(r["commit"], c2);
    assert!(
        up.log()
            .iter()
            .any(|l| l.contains("/revision/refs%2Fpr%2F1")),
        "{:?}",
        up.log()
    );
    let r = hc::run(
        &json!({"op": "tree", "repo": "org/model", "recursive": true}),
        &env,
    );
    hc::ok(&r);
    let ents = r["entries"].as_array().unwrap();
    assert_eq!(
        ents.iter().filter(|e| e["type"] == "RepoFile").count(),
        files.len()
    );
    assert!(
        up.log().iter().filter(|l| l.contains("/tree/")).count() >= 3,
        "paginated"
    );
    let lfs = ents
        .iter()
        .find(|e| e["path"] == "model.safetensors")
        .unwrap();
    assert_eq!(lfs["lfs"], sha256_hex(&files[2].1));
    assert_eq!(lfs["size"], 300_000);
    let r = hc::run(
        &json!({"op": "tree", "repo": "org/model", "path": "sub"}),
        &env,
    );
    let paths: Vec<_> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].clone())
        .collect();
    assert_eq!(paths, vec![json!("sub/dir"), json!("sub/tokenizer.json")]);
    let r = hc::run(
        &json!({"op": "paths_info", "repo": "org/model", "paths": ["config.json", "sub", "nope"]}),
        &env,
    );
    hc::ok(&r);
    assert_eq!(r["entries"].as_array().unwrap().len(), 2, "{r:#}");
    assert_eq!(
        r["entries"][0]["blob_id"],
        crate::util::hf_upstream::git_blob_sha1(&files[0].1)
    );
    let r = hc::run(
        &json!({"op": "metadata", "repo": "org/model", "filename": "model.safetensors"}),
        &env,
    );
    hc::ok(&r);
    assert_eq!(r["commit"], c);
    assert_eq!(r["etag"], sha256_hex(&files[2].1));
    assert_eq!(r["size"], 300_000);
    assert!(r["location"]
        .as_str()
        .unwrap()
        .starts_with(&format!("http://{}/", up.cdn)));
    assert_eq!(r["xet"], true, "Xet headers are parsed by the client");
    let r = hc::run(
        &json!({"op": "metadata", "repo": "org/model", "filename": "config.json"}),
        &env,
    );
    assert_eq!(
        r["etag"],
        crate::util::hf_upstream::git_blob_sha1(&files[0].1)
    );
    assert_eq!(r["xet"], false);
}

#[test]
fn hf_xet_leaves_http_when_xet_headers_are_present() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let (_c, files) = repo(&up, Kind::Model, "org/model", Access::Public);
    let dir = tempfile::tempdir().unwrap();
    let env = hc::env(&up.url(), dir.path(), true);
    let r = hc::run(
        &json!({"op": "download", "repo": "org/model", "filename": "model.safetensors"}),
        &env,
    );
    eprintln!("hf_xet client against Xet headers with no CAS: {r:#}");
    assert_eq!(r["ok"], false, "no CAS here, the Xet path must fail: {r:#}");
    let log = up.log();
    assert!(
        log.iter().any(|l| l.contains("/xet-read-token/")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("cdn GET")), "{log:?}");
    // The same client, the same file, without the Xet headers: plain HTTP, cacheable.
    up.set_xet(false);
    let r = hc::run(
        &json!({"op": "download", "repo": "org/model", "filename": "model.safetensors"}),
        &env,
    );
    hc::ok(&r);
    assert_eq!(r["files"]["model.safetensors"], sha256_hex(&files[2].1));
}

#[test]
fn gated_and_private_need_the_right_token() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    up.set_xet(false);
    let (_c, files) = repo(
        &up,
        Kind::Model,
        "org/gated",
        Access::Gated(vec!["hf_good".into()]),
    );
    repo(
        &up,
        Kind::Model,
        "org/private",
        Access::Private(vec!["hf_good".into()]),
    );
    let dir = tempfile::tempdir().unwrap();
    let env = hc::env(&up.url(), dir.path(), false);
    let get = |repo: &str, token: Option<&str>| {
        hc::run(
            &json!({"op": "download", "repo": repo, "filename": "model.safetensors", "token": token}),
            &env,
        )
    };
    let r = get("org/gated", None);
    assert_eq!(
        (r["ok"].clone(), r["error"].clone()),
        (json!(false), json!("GatedRepoError")),
        "{r:#}"
    );
    assert_eq!(r["status"], 401);
    let r = get("org/gated", Some("hf_bad"));
    assert_eq!(r["error"], "GatedRepoError", "{r:#}");
    assert_eq!(r["status"], 403);
    let r = get("org/gated", Some("hf_good"));
    hc::ok(&r);
    assert_eq!(r["files"]["model.safetensors"], sha256_hex(&files[2].1));
    let r = get("org/private", Some("hf_bad"));
    assert_eq!(r["error"], "RepositoryNotFoundError", "{r:#}");
    assert_eq!(r["status"], 401);
    hc::ok(&get("org/private", Some("hf_good")));
    // The token went to the Hub, never to the CDN (the presigned URL is the CDN's credential).
    assert!(up
        .log()
        .iter()
        .filter(|l| l.starts_with("cdn"))
        .all(|l| l.ends_with("token=no")));
}

#[test]
fn moved_branch_and_renamed_repo() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let (c1, _) = repo(&up, Kind::Model, "org/model", Access::Public);
    let c2 = up.commit(
        Kind::Model,
        "org/model",
        &[("config.json", b"{\"v\": 2}".to_vec())],
    );
    assert_ne!(c1, c2);
    let dir = tempfile::tempdir().unwrap();
    let env = hc::env(&up.url(), dir.path(), false);
    let get = |repo: &str, rev: &str| {
        hc::run(
            &json!({"op": "download", "repo": repo, "filename": "config.json", "revision": rev}),
            &env,
        )
    };
    up.set_ref(Kind::Model, "org/model", "v1", &c1);
    let r = get("org/model", "main");
    hc::ok(&r);
    assert_eq!(r["commit"], c2);
    assert_eq!(r["files"]["config.json"], sha256_hex(b"{\"v\": 2}"));
    up.set_ref(Kind::Model, "org/model", "main", &c1);
    let r = get("org/model", "main");
    assert_eq!(r["commit"], c1, "the moved branch is seen: {r:#}");
    up.rename_repo(Kind::Model, "org/old-name", "org/model");
    let r = get("org/old-name", "v1");
    hc::ok(&r);
    assert_eq!(
        r["files"]["config.json"],
        sha256_hex(br#"{"model_type": "standin"}"#)
    );
}

#[test]
fn corrupted_and_truncated_files_are_detected() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    up.set_xet(false);
    let (_c, files) = repo(&up, Kind::Model, "org/model", Access::Public);
    let dir = tempfile::tempdir().unwrap();
    let env = hc::env(&up.url(), dir.path(), false);
    let get = || {
        hc::run(
            &json!({"op": "download", "repo": "org/model", "filename": "model.safetensors"}),
            &env,
        )
    };
    up.set_file_faults(
        "model.safetensors",
        Some(HfFaults {
            corrupt_at: Some(123_456),
            ..Default::default()
        }),
    );
    // huggingface_hub 2.4.0 does not check a download's sha256: it takes the flipped byte.
    // That is what the cache's verification before publish is for.
    let r = get();
    hc::ok(&r);
    assert_ne!(r["files"]["model.safetensors"], sha256_hex(&files[2].1));
    std::fs::remove_dir_all(dir.path().join("models--org--model")).unwrap();
    up.set_file_faults(
        "model.safetensors",
        Some(HfFaults {
            truncate_at: Some(100_000),
            ..Default::default()
        }),
    );
    let r = get();
    assert_eq!(r["ok"], false, "a short body must be caught: {r:#}");
    up.set_file_faults("model.safetensors", None);
    let r = get();
    hc::ok(&r);
    assert_eq!(r["files"]["model.safetensors"], sha256_hex(&files[2].1));
}

#[test]
fn cdn_wants_its_signature_and_serves_ranges() {
    let up = HfUpstream::start();
    up.set_xet(false);
    let (_c, files) = repo(&up, Kind::Model, "org/model", Access::Public);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .head(&format!(
            "{}/org/model/resolve/main/model.safetensors",
            up.url()
        ))
        .call()
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let sha = sha256_hex(&files[2].1);
    assert_eq!(
        r.headers().get("x-linked-etag").unwrap(),
        &format!("\"{sha}\"")
    );
    let r = agent
        .get(&loc)
        .header("Range", "bytes=10-19")
        .call()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.into_body().read_to_vec().unwrap(),
        files[2].1[10..20].to_vec()
    );
    let bare = loc.split('?').next().unwrap();
    assert_eq!(agent.get(bare).call().unwrap().status(), 403);
    assert_eq!(up.file_bytes("org/model/model.safetensors"), 10);
}
