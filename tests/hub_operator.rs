//! The operator's side of the Hugging Face Hub (issue 14 item 7), with the real
//! `huggingface_hub` against the stand-in (`util::hf_upstream`):
//!
//! - `lancachectl models` lists hub repos (models and datasets) beside Ollama models: name
//!   `hf:org/name` / `hf:datasets/org/name`, each revision's commit and refs, size, files,
//!   complete, last used, fetched; a snapshot whose blob went missing shows as partial, and
//!   the next download fetches it again;
//! - `/api/models` carries the repos with `"kind": "huggingface"` and `"type"`, after the
//!   Ollama entries, which keep their shape (no `kind`); `?kind=` keeps one of them;
//! - `prune --model hf:…[@rev]` (dry run, then for real) and `prune --older-than` remove
//!   snapshots, refs, the hub cache's hardlinks and `blobs/sha256-…` together (the disk's
//!   space comes back), never a repo whose file is being filled, and never a hub cache the
//!   daemon did not fetch unless `--include-local`;
//! - eviction (`max_size`): the least recently used repo goes with every link of its LFS
//!   blobs (the known bug: the hub hardlink used to keep the bytes), and asking for it again
//!   refills it, byte-exact;
//! - `lancachectl prefetch hf:org/name[@rev]` (and a dataset) fills every file of the
//!   revision at upstream's cost of 1.00x, after which a client gets the whole snapshot with
//!   upstream stopped; a gated repo is refused with upstream's answer; bad names are refused.

use crate::util::hf_client as hc;
use crate::util::hf_upstream::{sha256_hex, Access, HfUpstream, Kind};
use crate::util::models::{noise, prepared_dir, write_model};
use crate::util::upstream::raw_get;
use crate::util::Daemon;
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

fn files(seed: u64) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "config.json".into(),
            format!("{{\"seed\": {seed}}}").into_bytes(),
        ),
        ("model.safetensors".into(), noise(seed, 1_500_000)),
        ("sub/weights.bin".into(), noise(seed + 100, 300_000)),
    ]
}

fn add(up: &HfUpstream, kind: Kind, id: &str, access: Access, f: &[(String, Vec<u8>)]) -> String {
    up.add_repo(kind, id, access);
    let refs: Vec<(&str, Vec<u8>)> = f.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    up.commit(kind, id, &refs)
}

fn config(up: &HfUpstream, extra: &str) -> String {
    format!(
        "[upstream]\nresolvers = []\n{extra}\n[cache]\nslice_size = \"1MiB\"\nmin_free = \"0B\"\n[huggingface]\nupstream = \"{}\"\n",
        up.url()
    )
}

fn total(f: &[(String, Vec<u8>)]) -> u64 {
    f.iter().map(|(_, b)| b.len() as u64).sum()
}

fn snapshot(d: &Daemon, repo: &str, kind: Kind) -> serde_json::Value {
    let env = hc::env(
        &d.http_url("/hf"),
        tempfile::tempdir().unwrap().path(),
        false,
    );
    let mut op = json!({"op": "snapshot", "repo": repo});
    if kind == Kind::Dataset {
        op["repo_type"] = json!("dataset");
    }
    let r = hc::run(&op, &env);
    hc::ok(&r);
    r
}

fn hub_entry<'a>(models: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    models["hub"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
}

#[test]
fn models_api_and_prune_cover_hub_repos() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let mf = files(1);
    let commit = add(&up, Kind::Model, "org/model", Access::Public, &mf);
    let df = vec![("data/train.bin".to_string(), noise(7, 400_000))];
    let dcommit = add(&up, Kind::Dataset, "org/data", Access::Public, &df);
    let dir = prepared_dir(|c| {
        write_model(c, "tiny:1b", &[1000]);
    });
    let d = Daemon::builder().dir(dir).config(&config(&up, "")).start();
    snapshot(&d, "org/model", Kind::Model);
    snapshot(&d, "org/data", Kind::Dataset);

    let m = d.ctl_json(&["models"]);
    assert_eq!(m["models"].as_array().unwrap().len(), 1, "{m:#}");
    let r = hub_entry(&m, "hf:org/model").unwrap_or_else(|| panic!("{m:#}"));
    assert_eq!(r["kind"], "model");
    assert_eq!(r["size"], total(&mf));
    let v = &r["revisions"][0];
    assert_eq!(v["commit"], commit.as_str());
    assert_eq!(v["refs"], json!(["main"]));
    assert_eq!(
        (v["files"].as_u64(), v["complete"].as_bool()),
        (Some(3), Some(true))
    );
    assert_eq!(v["fetched"], true);
    assert!(v["last_used"].as_u64().unwrap() > 0);
    let ds = hub_entry(&m, "hf:datasets/org/data").unwrap();
    assert_eq!(
        (ds["kind"].as_str(), ds["revisions"][0]["commit"].as_str()),
        (Some("dataset"), Some(dcommit.as_str()))
    );
    let text = String::from_utf8(d.ctl(&["models"]).stdout).unwrap();
    assert!(
        text.contains("hf:org/model@main") && text.contains("hf:datasets/org/data@main"),
        "{text}"
    );
    assert!(text.contains("tiny:1b"), "{text}");

    // /api/models: Ollama entries first and as before, then the repos, told apart by kind.
    let api = raw_get(d.http.unwrap(), "cache", "/api/models", &[]);
    let list: serde_json::Value = serde_json::from_slice(&api.body).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:#?}");
    assert_eq!(list[0]["short_name"], "tiny:1b");
    assert!(list[0].get("kind").is_none(), "{:#}", list[0]);
    let hf: Vec<_> = list.iter().filter(|e| e["kind"] == "huggingface").collect();
    assert_eq!(hf.len(), 2);
    assert!(hf
        .iter()
        .any(|e| e["type"] == "dataset" && e["name"] == "hf:datasets/org/data"));
    assert!(hf.iter().all(|e| e["complete"] == true));
    let only = raw_get(d.http.unwrap(), "cache", "/api/models?kind=ollama", &[]);
    let only: serde_json::Value = serde_json::from_slice(&only.body).unwrap();
    assert_eq!(only.as_array().unwrap().len(), 1);
    let text = raw_get(d.http.unwrap(), "cache", "/api/models?format=text", &[]);
    assert_eq!(String::from_utf8_lossy(&text.body).lines().count(), 1);

    // A blob gone from under the snapshot: partial, and the next download fetches it again.
    let sha = sha256_hex(&mf[1].1);
    let hub_blob = d.path(&format!("cache/huggingface/models--org--model/blobs/{sha}"));
    std::fs::remove_file(&hub_blob).unwrap();
    let m = d.ctl_json(&["models"]);
    assert_eq!(
        hub_entry(&m, "hf:org/model").unwrap()["revisions"][0]["complete"],
        false
    );
    up.reset_counters();
    std::fs::remove_file(d.path(&format!("cache/blobs/sha256-{sha}"))).unwrap();
    let r = snapshot(&d, "org/model", Kind::Model);
    assert_eq!(r["files"]["model.safetensors"], sha.as_str());
    assert_eq!(up.bytes(), mf[1].1.len() as u64, "{:#?}", up.log());
    assert!(hub_blob.exists());

    // prune --model: a dry run changes nothing, then the dataset goes with its blob.
    let dsha = sha256_hex(&df[0].1);
    let dry = d.ctl_json(&["prune", "--model", "hf:datasets/org/data", "--dry-run"]);
    assert_eq!(
        dry["removed"][0]["name"],
        "hf:datasets/org/data@main (".to_string() + &dcommit[..12] + ")",
        "{dry:#}"
    );
    assert_eq!(dry["bytes_freed"], df[0].1.len() as u64);
    assert!(d.path("cache/huggingface/datasets--org--data").exists());
    let real = d.ctl_json(&["prune", "--model", "hf:datasets/org/data@main"]);
    assert_eq!(real["bytes_freed"], dry["bytes_freed"], "{real:#}");
    assert!(!d.path("cache/huggingface/datasets--org--data").exists());
    assert!(!d.path(&format!("cache/blobs/sha256-{dsha}")).exists());
    let out = d.ctl(&["prune", "--model", "hf:datasets/org/data"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the cache"));
    let out = d.ctl(&["prune", "--model", "hf:org/a/b"]);
    assert_eq!(out.status.code(), Some(1));

    // --older-than: the model repo goes, the local Ollama model stays (it was found).
    std::thread::sleep(Duration::from_millis(2100));
    let r = d.ctl_json(&["prune", "--older-than", "1s"]);
    let names: Vec<&str> = r["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 1, "{r:#}");
    assert!(names[0].starts_with("hf:org/model@main"), "{r:#}");
    assert!(!d.path("cache/huggingface/models--org--model").exists());
    assert!(!d.path(&format!("cache/blobs/sha256-{sha}")).exists());
    assert!(d
        .path("cache/manifests/registry.ollama.ai/library/tiny/1b")
        .exists());
    let m = d.ctl_json(&["models"]);
    assert!(m.get("hub").is_none(), "{m:#}");
}

#[test]
fn a_hub_cache_found_in_the_directory_is_local() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let mf = files(2);
    add(&up, Kind::Model, "org/own", Access::Public, &mf);
    // The client's own hub cache, straight from upstream, named as `dir`.
    let own = tempfile::tempdir().unwrap();
    hc::ok(&hc::run(
        &json!({"op": "snapshot", "repo": "org/own"}),
        &hc::env(&up.url(), own.path(), false),
    ));
    let d = Daemon::builder()
        .config(&(config(&up, "") + &format!("dir = {:?}\n", own.path().display().to_string())))
        .start();
    let m = d.ctl_json(&["models"]);
    let r = hub_entry(&m, "hf:org/own").unwrap_or_else(|| panic!("{m:#}"));
    assert_eq!(r["revisions"][0]["fetched"], false);
    std::thread::sleep(Duration::from_millis(2100));
    let r = d.ctl_json(&["prune", "--older-than", "1s"]);
    assert!(r["removed"].as_array().unwrap().is_empty(), "{r:#}");
    let out = d.ctl(&["prune", "--model", "hf:org/own"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--include-local"));
    let r = d.ctl_json(&["prune", "--model", "hf:org/own", "--include-local"]);
    assert_eq!(r["bytes_freed"], total(&mf), "{r:#}");
    assert!(!own.path().join("models--org--own").exists());
}

#[test]
fn eviction_frees_every_link_and_the_repo_refills() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let a = files(3);
    let b = files(4);
    add(&up, Kind::Model, "org/a", Access::Public, &a);
    add(&up, Kind::Model, "org/b", Access::Public, &b);
    // Room for one repo (1.8 MB), not two.
    let d = Daemon::builder()
        .config(&config(&up, "").replace("[cache]\n", "[cache]\nmax_size = \"2500KB\"\n"))
        .start();
    snapshot(&d, "org/a", Kind::Model);
    let sha_a = sha256_hex(&a[1].1);
    let blob_a = d.path(&format!("cache/blobs/sha256-{sha_a}"));
    assert_eq!(std::fs::metadata(&blob_a).unwrap().nlink(), 2);
    std::thread::sleep(Duration::from_millis(1100));
    snapshot(&d, "org/b", Kind::Model);
    // The fill of b's big file made room: a went, every link of its blobs with it.
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        !d.path("cache/huggingface/models--org--a").exists()
    });
    assert!(gone, "{}", d.stderr());
    assert!(!blob_a.exists());
    let st = d.ctl_json(&["stats"]);
    assert!(
        st["lifecycle"]["evicted_models"].as_u64().unwrap() >= 1,
        "{st:#}"
    );
    assert!(
        st["cache"]["usage_bytes"].as_u64().unwrap() <= 2_500_000,
        "{st:#}"
    );
    // Asked again, it is fetched again, byte-exact.
    up.reset_counters();
    let r = snapshot(&d, "org/a", Kind::Model);
    for (p, bytes) in &a {
        assert_eq!(r["files"][p], sha256_hex(bytes), "{p}");
    }
    assert_eq!(up.bytes(), total(&a));
}

#[test]
fn prefetch_fills_a_revision_for_clients_that_come_with_upstream_down() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    up.set_page_size(2);
    let mf = files(5);
    let commit = add(&up, Kind::Model, "org/model", Access::Public, &mf);
    let df = vec![("data/x.bin".to_string(), noise(9, 200_000))];
    add(&up, Kind::Dataset, "org/data", Access::Public, &df);
    add(
        &up,
        Kind::Model,
        "org/gated",
        Access::Gated(vec!["hf_ok".into()]),
        &files(6),
    );
    let d = Daemon::builder().config(&config(&up, "")).start();

    let out = d.ctl(&["prefetch", "hf:org/model", "hf:datasets/org/data@main"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hf:org/model@main") && text.contains("done"),
        "{text}"
    );
    assert_eq!(up.bytes(), total(&mf) + total(&df), "{:#?}", up.log());
    let m = d.ctl_json(&["models"]);
    let r = hub_entry(&m, "hf:org/model").unwrap();
    assert_eq!(r["revisions"][0]["commit"], commit.as_str());
    assert_eq!(r["revisions"][0]["complete"], true);
    // Again: nothing more from upstream, and the progress says done.
    let again = d.ctl_json(&["prefetch", "hf:org/model"]);
    assert!(
        again["fills"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["state"] == "done"),
        "{again:#}"
    );

    // A gated repo without a token: upstream's refusal, named.
    let out = d.ctl(&["prefetch", "hf:org/gated"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hf:org/gated") && err.contains("401"), "{err}");
    let out = d.ctl(&["prefetch", "hf:../x"]);
    assert_eq!(out.status.code(), Some(1));

    // Upstream gone: a client gets the whole snapshot and the dataset from the cache.
    drop(up);
    let r = snapshot(&d, "org/model", Kind::Model);
    for (p, bytes) in &mf {
        assert_eq!(r["files"][p], sha256_hex(bytes), "{p}");
    }
    let r = snapshot(&d, "org/data", Kind::Dataset);
    assert_eq!(r["files"]["data/x.bin"], sha256_hex(&df[0].1));
}

#[test]
fn prune_never_removes_a_repo_being_filled() {
    if !hc::require() {
        return;
    }
    let up = HfUpstream::start();
    let mf = vec![
        ("config.json".to_string(), b"{}".to_vec()),
        ("big.bin".to_string(), noise(11, 3_000_000)),
    ];
    add(&up, Kind::Model, "org/slow", Access::Public, &mf);
    // 1 MB/s: the big file takes about three seconds.
    let d = Daemon::builder()
        .config(&config(&up, "max_rate = \"1MB\""))
        .start();
    let out = d.ctl(&["prefetch", "--no-wait", "hf:org/slow"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(1200));
    let r = d.ctl_json(&["prune", "--older-than", "0s"]);
    assert!(r["removed"].as_array().unwrap().is_empty(), "{r:#}");
    let out = d.ctl(&["prune", "--model", "hf:org/slow"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    let out = d.ctl(&["prefetch", "hf:org/slow"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = d.ctl_json(&["models"]);
    assert_eq!(
        hub_entry(&m, "hf:org/slow").unwrap()["revisions"][0]["complete"],
        true
    );
}
