//! Hugging Face repos in bundles (issue 16, with issue 14's hub cache), the real
//! `huggingface_hub` against the stand-in (`util::hf_upstream`):
//!
//! - `lancachectl export hf:org/model hf:datasets/org/data -o F`: members under `hub/` in the
//!   hub cache's layout: each blob once, snapshot entries as symlinks `../../blobs/<hash>` (one
//!   `../` more per folder), refs after the links; `tar -x -C D` and then
//!   `HF_HUB_CACHE=D/hub HF_HUB_OFFLINE=1` loads every file with the real client, no lancache;
//! - `GET /models/hf:org/model` is the same repo as a tar, `Content-Length` exact;
//! - import into a second daemon whose upstream is down: the real client's `snapshot_download`
//!   through it gets every file, byte-exact (repo info and tree answered from the snapshot);
//!   `lancachectl models` lists the repos as fetched; a re-import skips everything;
//! - import of a hub cache directory the real client made itself (with its `.locks/`), with
//!   `--local`: listed as local, served through the cache;
//! - a flipped byte in an LFS blob or in a small file, a truncated bundle, a snapshot link out
//!   of its repo folder or absolute, a regular file in `snapshots/`, a ref to a commit with no
//!   snapshot, a folder that is not a repo folder: exit 1, the member named, nothing at all
//!   published, no staging left behind; the good bundle imports afterwards.

use crate::util::hf_client as hc;
use crate::util::hf_upstream::{git_blob_sha1, sha256_hex, HfUpstream, Kind};
use crate::util::models::noise;
use crate::util::models::refused_imports;
use crate::util::upstream::raw_get;
use crate::util::Daemon;
use serde_json::json;
use std::path::{Path, PathBuf};

fn files(seed: u64) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "config.json".into(),
            format!("{{\"seed\": {seed}}}").into_bytes(),
        ),
        ("model.safetensors".into(), noise(seed, 1_500_000)),
        ("sub/dir/weights.bin".into(), noise(seed + 100, 300_000)),
    ]
}

fn add(up: &HfUpstream, kind: Kind, id: &str, f: &[(String, Vec<u8>)]) -> String {
    up.add_repo(kind, id, crate::util::hf_upstream::Access::Public);
    let refs: Vec<(&str, Vec<u8>)> = f.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    up.commit(kind, id, &refs)
}

fn config(upstream: &str) -> String {
    format!(
        "[upstream]\nresolvers = []\n[cache]\nslice_size = \"1MiB\"\nmin_free = \"0B\"\n[huggingface]\nupstream = \"{upstream}\"\n"
    )
}

/// A daemon whose Hub upstream is a port nobody listens on.
fn offline_daemon() -> Daemon {
    Daemon::builder()
        .config(&config("http://127.0.0.1:9"))
        .start()
}

fn download(
    endpoint: &str,
    repo: &str,
    kind: Kind,
    cache: &Path,
    offline: bool,
) -> serde_json::Value {
    let mut env = hc::env(endpoint, cache, false);
    if offline {
        env.push(("HF_HUB_OFFLINE", "1".into()));
    }
    let mut op = json!({"op": "snapshot", "repo": repo});
    if kind == Kind::Dataset {
        op["repo_type"] = json!("dataset");
    }
    hc::run(&op, &env)
}

fn expect_files(r: &serde_json::Value, f: &[(String, Vec<u8>)]) {
    hc::ok(r);
    for (p, b) in f {
        assert_eq!(r["files"][p], sha256_hex(b).as_str(), "{p}: {r:#}");
    }
    assert_eq!(r["files"].as_object().unwrap().len(), f.len(), "{r:#}");
}

/// (path, entry type, link target) of every member.
fn members(bytes: &[u8]) -> Vec<(String, tar::EntryType, String)> {
    let mut a = tar::Archive::new(bytes);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            (
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
                link,
            )
        })
        .collect()
}

fn hub_entry<'a>(models: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    models["hub"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
}

/// Every file under the cache dir (what an import may have published).
fn published(cache: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            if path.ends_with(".lancached") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut v = Vec::new();
    walk(cache, &mut v);
    v.sort();
    v
}

#[test]
fn export_import_and_serve_offline_with_the_real_client() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let mf = files(1);
    let commit = add(&up, Kind::Model, "org/model", &mf);
    let df = vec![("data/train.bin".to_string(), noise(7, 400_000))];
    add(&up, Kind::Dataset, "org/data", &df);
    let a = Daemon::builder().config(&config(&up.url())).start();
    let tmp = tempfile::tempdir().unwrap();
    expect_files(
        &download(
            &a.http_url("/hf"),
            "org/model",
            Kind::Model,
            &tmp.path().join("c1"),
            false,
        ),
        &mf,
    );
    expect_files(
        &download(
            &a.http_url("/hf"),
            "org/data",
            Kind::Dataset,
            &tmp.path().join("c2"),
            false,
        ),
        &df,
    );

    let file = tmp.path().join("hub.tar");
    let r = a.ctl_json(&[
        "export",
        "hf:org/model",
        "hf:datasets/org/data@main",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        r["models"],
        json!(["hf:org/model@main", "hf:datasets/org/data@main"]),
        "{r:#}"
    );
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(r["bytes"], bytes.len() as u64);
    let m = members(&bytes);
    let base = "hub/models--org--model";
    let lfs = sha256_hex(&mf[1].1);
    let deep = sha256_hex(&mf[2].1);
    let small = git_blob_sha1(&mf[0].1);
    let pos = |p: &str| {
        m.iter()
            .position(|(n, _, _)| n == p)
            .unwrap_or_else(|| panic!("{p} not in {m:#?}"))
    };
    for h in [&lfs, &deep, &small] {
        assert_eq!(
            m[pos(&format!("{base}/blobs/{h}"))].1,
            tar::EntryType::Regular
        );
    }
    let link = &m[pos(&format!("{base}/snapshots/{commit}/model.safetensors"))];
    assert_eq!(
        (link.1, link.2.as_str()),
        (
            tar::EntryType::Symlink,
            format!("../../blobs/{lfs}").as_str()
        )
    );
    let link = &m[pos(&format!("{base}/snapshots/{commit}/sub/dir/weights.bin"))];
    assert_eq!(link.2, format!("../../../../blobs/{deep}"));
    let refs = pos(&format!("{base}/refs/main"));
    assert!(refs > pos(&format!("{base}/snapshots/{commit}/config.json")));
    assert!(m
        .iter()
        .any(|(n, _, _)| n.starts_with("hub/datasets--org--data/blobs/")));

    // The same repo over HTTP.
    let resp = raw_get(a.http.unwrap(), "cache", "/models/hf:org/model", &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers["content-length"], resp.body.len().to_string());
    let hm = members(&resp.body);
    assert!(hm.iter().all(|(n, _, _)| n.starts_with(base)), "{hm:#?}");
    assert_eq!(
        hm.len(),
        m.iter().filter(|(n, _, _)| n.starts_with(base)).count()
    );
    let missing = raw_get(a.http.unwrap(), "cache", "/models/hf:org/nothing", &[]);
    assert_eq!(
        missing.status,
        409,
        "{}",
        String::from_utf8_lossy(&missing.body)
    );

    // Plain tar, then the real client offline, no lancache.
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let st = std::process::Command::new("tar")
        .args([
            "-x",
            "-C",
            x.to_str().unwrap(),
            "-f",
            file.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    expect_files(
        &download(
            "http://127.0.0.1:9",
            "org/model",
            Kind::Model,
            &x.join("hub"),
            true,
        ),
        &mf,
    );
    expect_files(
        &download(
            "http://127.0.0.1:9",
            "org/data",
            Kind::Dataset,
            &x.join("hub"),
            true,
        ),
        &df,
    );

    // Into a cache whose upstream is down; the client downloads through it.
    let b = offline_daemon();
    let r = b.ctl_json(&["import", file.to_str().unwrap()]);
    assert_eq!(r["repos_imported"].as_array().unwrap().len(), 2, "{r:#}");
    let ms = b.ctl_json(&["models"]);
    let e = hub_entry(&ms, "hf:org/model").unwrap_or_else(|| panic!("{ms:#}"));
    assert_eq!(
        (
            e["revisions"][0]["fetched"].as_bool(),
            e["revisions"][0]["complete"].as_bool()
        ),
        (Some(true), Some(true))
    );
    assert!(hub_entry(&ms, "hf:datasets/org/data").is_some());
    expect_files(
        &download(
            &b.http_url("/hf"),
            "org/model",
            Kind::Model,
            &tmp.path().join("c3"),
            false,
        ),
        &mf,
    );
    expect_files(
        &download(
            &b.http_url("/hf"),
            "org/data",
            Kind::Dataset,
            &tmp.path().join("c4"),
            false,
        ),
        &df,
    );
    // The LFS blob is stored once, shared with blobs/.
    use std::os::unix::fs::MetadataExt;
    let hub_blob = b.path(&format!("cache/huggingface/models--org--model/blobs/{lfs}"));
    let store_blob = b.path(&format!("cache/blobs/sha256-{lfs}"));
    assert_eq!(
        std::fs::metadata(&hub_blob).unwrap().ino(),
        std::fs::metadata(&store_blob).unwrap().ino()
    );

    // Again: nothing new.
    let r = b.ctl_json(&["import", file.to_str().unwrap()]);
    assert_eq!(r["repos_skipped"].as_array().unwrap().len(), 2, "{r:#}");
    assert!(r.get("repos_imported").is_none(), "{r:#}");
    assert_eq!(r["bytes_imported"], 0);
}

#[test]
fn a_hub_cache_the_client_made_imports_as_local() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let mf = files(3);
    add(&up, Kind::Model, "org/own", &mf);
    let tmp = tempfile::tempdir().unwrap();
    // Straight from the stand-in: a hub cache of the client's own making.
    let own = tmp.path().join("hf-home");
    expect_files(
        &download(&up.url(), "org/own", Kind::Model, &own.join("hub"), false),
        &mf,
    );
    assert!(own.join("hub/.locks").exists(), "the client keeps .locks/");
    drop(up);
    let b = offline_daemon();
    // ~/.cache/huggingface (the folder above hub/) is taken as well as hub/ itself.
    let r = b.ctl_json(&["import", own.to_str().unwrap(), "--local"]);
    assert_eq!(r["repos_imported"].as_array().unwrap().len(), 1, "{r:#}");
    assert_eq!(r["local"], true);
    let ms = b.ctl_json(&["models"]);
    let e = hub_entry(&ms, "hf:org/own").unwrap_or_else(|| panic!("{ms:#}"));
    assert_eq!(e["revisions"][0]["fetched"], false);
    expect_files(
        &download(
            &b.http_url("/hf"),
            "org/own",
            Kind::Model,
            &tmp.path().join("c"),
            false,
        ),
        &mf,
    );
    let r = b.ctl_json(&["import", own.join("hub").to_str().unwrap()]);
    assert_eq!(r["repos_skipped"].as_array().unwrap().len(), 1, "{r:#}");
}

/// A tar of (path, type, data, link) members, with the end blocks.
fn raw_tar(entries: &[(&str, tar::EntryType, Vec<u8>, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if *kind == tar::EntryType::Symlink {
            b.append_link(&mut h, path, link).unwrap();
        } else {
            b.append_data(&mut h, path, data.as_slice()).unwrap();
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn bad_hub_bundles_publish_nothing_and_name_the_member() {
    use tar::EntryType::{Regular as F, Symlink as L};
    let b = offline_daemon();
    let before = published(&b.path("cache"));
    let base = "hub/models--o--m";
    let c = "c".repeat(40);
    let big = noise(5, 200_000);
    let sha = sha256_hex(&big);
    let text = b"{\"a\": 1}".to_vec();
    let sha1 = git_blob_sha1(&text);
    let good: Vec<(String, tar::EntryType, Vec<u8>, String)> = vec![
        (format!("{base}/blobs/{sha}"), F, big.clone(), String::new()),
        (
            format!("{base}/blobs/{sha1}"),
            F,
            text.clone(),
            String::new(),
        ),
        (
            format!("{base}/snapshots/{c}/w.bin"),
            L,
            vec![],
            format!("../../blobs/{sha}"),
        ),
        (
            format!("{base}/snapshots/{c}/d/c.json"),
            L,
            vec![],
            format!("../../../blobs/{sha1}"),
        ),
        (
            format!("{base}/refs/main"),
            F,
            c.clone().into_bytes(),
            String::new(),
        ),
    ];
    let build = |v: &[(String, tar::EntryType, Vec<u8>, String)]| {
        let refs: Vec<(&str, tar::EntryType, Vec<u8>, &str)> = v
            .iter()
            .map(|(p, t, d, l)| (p.as_str(), *t, d.clone(), l.as_str()))
            .collect();
        raw_tar(&refs)
    };
    let with = |i: usize, e: (String, tar::EntryType, Vec<u8>, String)| {
        let mut v = good.clone();
        v[i] = e;
        build(&v)
    };
    let mut flipped = big.clone();
    flipped[1000] ^= 1;
    let good_tar = build(&good);
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "flipped LFS byte",
            with(0, (good[0].0.clone(), F, flipped, String::new())),
            good[0].0.clone(),
        ),
        (
            "flipped small byte",
            with(
                1,
                (good[1].0.clone(), F, b"{\"a\": 2}".to_vec(), String::new()),
            ),
            good[1].0.clone(),
        ),
        (
            "truncated",
            good_tar[..good_tar.len() / 2].to_vec(),
            "truncated: the archive ends after".into(),
        ),
        (
            "link out",
            with(
                2,
                (
                    good[2].0.clone(),
                    L,
                    vec![],
                    "../../../../../etc/passwd".into(),
                ),
            ),
            good[2].0.clone(),
        ),
        (
            "absolute link",
            with(2, (good[2].0.clone(), L, vec![], "/etc/passwd".into())),
            good[2].0.clone(),
        ),
        (
            "link one up short",
            with(
                3,
                (good[3].0.clone(), L, vec![], format!("../../blobs/{sha1}")),
            ),
            good[3].0.clone(),
        ),
        (
            "file in snapshots",
            with(2, (good[2].0.clone(), F, big.clone(), String::new())),
            good[2].0.clone(),
        ),
        (
            "ref to nothing",
            with(
                4,
                (
                    good[4].0.clone(),
                    F,
                    "d".repeat(40).into_bytes(),
                    String::new(),
                ),
            ),
            good[4].0.clone(),
        ),
        (
            "not a repo folder",
            with(
                4,
                (
                    "hub/evil/refs/main".into(),
                    F,
                    c.clone().into_bytes(),
                    String::new(),
                ),
            ),
            "hub/evil".into(),
        ),
        (
            "link to a blob not there",
            {
                let mut v = good.clone();
                v.push((
                    format!("{base}/snapshots/{c}/x.bin"),
                    L,
                    vec![],
                    format!("../../blobs/{}", "e".repeat(64)),
                ));
                build(&v)
            },
            format!("{base}/snapshots/{c}/x.bin"),
        ),
    ];
    let work = tempfile::tempdir().unwrap();
    refused_imports(
        &b,
        work.path(),
        cases,
        || published(&b.path("cache")),
        &before,
    );
    let f = work.path().join("good.tar");
    std::fs::write(&f, &good_tar).unwrap();
    let r = b.ctl_json(&["import", f.to_str().unwrap()]);
    assert_eq!(r["repos_imported"], json!([format!("hf:o/m@{c}")]), "{r:#}");
    let snap = b.path(&format!("cache/huggingface/models--o--m/snapshots/{c}"));
    assert_eq!(std::fs::read(snap.join("w.bin")).unwrap(), big);
    assert_eq!(std::fs::read(snap.join("d/c.json")).unwrap(), text);
}
