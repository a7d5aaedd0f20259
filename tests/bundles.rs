//! Bundles (`lancachectl export` / `import`, `GET /models/a,b`), against the real binaries:
//! - export of two models → one tar, every blob once, manifests last; imported into a second
//!   daemon, manifests and blobs are byte-identical; the same tar `tar -x`'d into a fresh
//!   `OLLAMA_MODELS` is listed by the real ollama 0.5.4 (when installed) with the cache's IDs;
//! - `GET /models/a:1,b:2`: one tar, `Content-Length` exact, same members as the export; two
//!   tags sharing their blobs put each blob in the bundle once;
//! - the second daemon's cache (an Ollama models dir) is listed by the real client too;
//! - import of an Ollama models directory; `--local` vs fetched in `lancachectl models --json`;
//!   a re-import skips everything and reports it; a blob the cache already has is not copied;
//!   a directory whose manifest lacks a blob imports nothing and names that manifest;
//! - a truncated bundle, a flipped byte in a blob, a manifest referencing a missing blob, and
//!   hostile members (`..`, absolute, symlink, hard link, device): exit 1, the error names the
//!   member, and nothing at all is published.

use crate::util::models::refused_imports;
use crate::util::models::{prepared_dir, write_model, TestModel};
use crate::util::Daemon;
use std::io::Read;
use std::path::{Path, PathBuf};

fn two_models(cache: &Path) -> Vec<TestModel> {
    vec![
        write_model(cache, "qwen2.5:1.5b", &[300_000, 2_000]),
        write_model(cache, "someuser/my-model:v1.0", &[50_000]),
    ]
}

fn source() -> (Daemon, Vec<TestModel>) {
    let tmp = prepared_dir(|c| {
        two_models(c);
    });
    let want = two_models(&tmp.path().join("cache"));
    (Daemon::builder().dir(tmp).start(), want)
}

/// Member paths of a tar, in order.
fn members(bytes: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(bytes);
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

fn export(d: &Daemon, names: &[&str], out: &Path) -> serde_json::Value {
    let mut args = vec!["export"];
    args.extend_from_slice(names);
    args.extend_from_slice(&["-o", out.to_str().unwrap()]);
    d.ctl_json(&args)
}

fn assert_same(cache: &Path, models: &[TestModel]) {
    for m in models {
        assert_eq!(std::fs::read(m.manifest_path(cache)).unwrap(), m.manifest);
        for (dg, size) in &m.blobs {
            let b = std::fs::read(TestModel::blob_path(cache, dg)).unwrap();
            assert_eq!(b.len() as u64, *size);
            assert_eq!(lancached::store::Digest::of(&b), *dg);
        }
    }
}

fn fetched(d: &Daemon) -> Vec<(String, bool)> {
    let v = d.ctl_json(&["models"]);
    v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["short_name"].as_str().unwrap().to_string(),
                m["fetched"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// What a cache directory holds under blobs/ and manifests/ (paths).
fn published(cache: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&cache.join("blobs"), &mut out);
    walk(&cache.join("manifests"), &mut out);
    out.sort();
    out
}

#[test]
fn export_import_round_trip_and_real_ollama() {
    let (a, want) = source();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("bundle.tar");
    let out = export(&a, &["qwen2.5:1.5b", "someuser/my-model:v1.0"], &file);
    assert_eq!(out["models"].as_array().unwrap().len(), 2);
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(out["bytes"].as_u64().unwrap(), bytes.len() as u64);
    let names = members(&bytes);
    let blobs: Vec<_> = names.iter().filter(|n| n.starts_with("blobs/")).collect();
    let uniq: std::collections::HashSet<_> = blobs.iter().collect();
    assert_eq!(blobs.len(), uniq.len(), "every blob once: {names:?}");
    assert!(names[names.len() - 2..]
        .iter()
        .all(|n| n.starts_with("manifests/")));

    // `-o -`: the same bytes on stdout.
    let piped = a.ctl(&[
        "export",
        "qwen2.5:1.5b",
        "someuser/my-model:v1.0",
        "-o",
        "-",
    ]);
    assert!(piped.status.success());
    assert_eq!(piped.stdout, bytes);

    let b = Daemon::start();
    let r = b.ctl_json(&["import", file.to_str().unwrap()]);
    assert_eq!(r["models_imported"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["blobs_imported"].as_u64().unwrap(), 5, "{r}");
    assert_same(&b.path("cache"), &want);
    assert!(fetched(&b).iter().all(|(_, f)| *f), "{:?}", fetched(&b));

    if crate::util::ollama::binary().is_some() {
        let ollama = crate::util::ollama::Ollama::serve_local(&b.path("cache"));
        let list = ollama.list();
        for m in &want {
            assert!(
                list.iter()
                    .any(|(n, id)| *n == m.name.short_name() && *id == m.id()),
                "{} not in `ollama list` of the importing cache: {list:?}",
                m.name
            );
        }
    }

    // Again: everything is skipped.
    let r = b.ctl_json(&["import", file.to_str().unwrap()]);
    assert_eq!(r["models_imported"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["models_skipped"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["blobs_skipped"].as_u64().unwrap(), 5, "{r}");

    // Without us: tar -x into a fresh models directory, listed by the real client.
    let plain = work.path().join("models");
    std::fs::create_dir_all(&plain).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-x")
        .arg("-f")
        .arg(&file)
        .arg("-C")
        .arg(&plain)
        .status()
        .unwrap();
    assert!(st.success());
    assert_same(&plain, &want);
    if crate::util::ollama::binary().is_some() {
        let ollama = crate::util::ollama::Ollama::serve_local(&plain);
        let list = ollama.list();
        eprintln!("ollama list after tar -x of the bundle: {list:?}");
        for m in &want {
            let short = m.name.short_name();
            assert!(
                list.iter().any(|(n, id)| *n == short && *id == m.id()),
                "{short} not in `ollama list`: {list:?}"
            );
        }
        drop(ollama);
        assert_same(&plain, &want);
    } else {
        eprintln!(
            "ollama 0.5.4 not installed (../shared/tools/get-ollama.sh): tar -x checked only"
        );
    }
}

#[test]
fn http_route_serves_several_models_as_one_tar() {
    let (a, want) = source();
    // A second tag of the same model: same blobs.
    let alias = a.path("cache/manifests/registry.ollama.ai/library/qwen2.5/latest");
    std::fs::write(&alias, &want[0].manifest).unwrap();
    let (status, _, body) =
        crate::util::models::raw_get(a.http.unwrap(), "/models/qwen2.5:1.5b,qwen2.5", "");
    assert_eq!(status, 200);
    let names = members(&body);
    assert_eq!(
        names.len(),
        want[0].blobs.len() + 2,
        "each blob once: {names:?}"
    );
    let (status, headers, body) = crate::util::models::raw_get(
        a.http.unwrap(),
        "/models/qwen2.5:1.5b,someuser/my-model:v1.0",
        "",
    );
    assert_eq!(status, 200, "{headers}");
    let len: u64 = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Content-Length");
    assert_eq!(len, body.len() as u64);
    let names = members(&body);
    for m in &want {
        let p = format!(
            "manifests/{}/{}/{}/{}",
            m.name.host, m.name.namespace, m.name.model, m.name.tag
        );
        assert!(names.contains(&p), "{p} in {names:?}");
        for (d, _) in &m.blobs {
            assert!(names.contains(&format!("blobs/{}", d.file_name())));
        }
    }
    // The same bundle as the CLI's export.
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("b.tar");
    export(&a, &["qwen2.5:1.5b", "someuser/my-model:v1.0"], &file);
    assert_eq!(members(&std::fs::read(&file).unwrap()), names);
    // A bad name in the list: 400, nothing served.
    let (status, _, _) =
        crate::util::models::raw_get(a.http.unwrap(), "/models/qwen2.5:1.5b,..%2fx", "");
    assert_eq!(status, 400);
}

#[test]
fn import_of_a_models_dir_local_or_fetched() {
    let laptop = tempfile::tempdir().unwrap();
    let want = two_models(laptop.path());
    // A stray partial download is not part of any model: ignored.
    std::fs::write(laptop.path().join("blobs/sha256-abc-partial"), b"x").unwrap();
    let b = Daemon::start();
    let r = b.ctl_json(&["import", laptop.path().to_str().unwrap(), "--local"]);
    assert_eq!(r["models_imported"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["local"], true);
    assert_same(&b.path("cache"), &want);
    assert!(fetched(&b).iter().all(|(_, f)| !*f), "{:?}", fetched(&b));

    let c = Daemon::start();
    // One blob is already in c's cache: not copied again.
    let (d0, _) = &want[0].blobs[1];
    std::fs::copy(
        TestModel::blob_path(laptop.path(), d0),
        TestModel::blob_path(&c.path("cache"), d0),
    )
    .unwrap();
    let r = c.ctl_json(&["import", laptop.path().to_str().unwrap()]);
    assert_eq!(r["blobs_skipped"].as_u64().unwrap(), 1, "{r}");
    assert_eq!(r["blobs_imported"].as_u64().unwrap(), 4, "{r}");
    assert!(fetched(&c).iter().all(|(_, f)| *f), "{:?}", fetched(&c));

    // A models dir whose manifest lacks a blob: nothing imported, the manifest named.
    let broken = tempfile::tempdir().unwrap();
    let m = write_model(broken.path(), "other:1", &[1000]);
    write_model(broken.path(), "fine:1", &[1000]);
    std::fs::remove_file(TestModel::blob_path(broken.path(), &m.blobs[1].0)).unwrap();
    let e = Daemon::start();
    let before = published(&e.path("cache"));
    let out = e.ctl(&["import", broken.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("manifests/registry.ollama.ai/library/other/1")
            && err.contains(m.blobs[1].0.as_str()),
        "{err}"
    );
    assert_eq!(published(&e.path("cache")), before);
}

/// A tar built by hand: (path bytes, entry type, data, link name).
fn raw_tar(entries: &[(&[u8], tar::EntryType, Vec<u8>, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn bad_bundles_publish_nothing_and_name_the_member() {
    let (a, want) = source();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("good.tar");
    export(&a, &["qwen2.5:1.5b", "someuser/my-model:v1.0"], &file);
    let good = std::fs::read(&file).unwrap();
    let b = Daemon::start();
    let before = published(&b.path("cache"));
    let big = &want[0].blobs[1].0;
    let big_member = format!("blobs/{}", big.file_name());
    // Where the big blob's data starts in the tar.
    let offset = {
        let mut ar = tar::Archive::new(good.as_slice());
        ar.entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().display().to_string() == big_member)
            .unwrap()
            .raw_file_position() as usize
    };

    let mut cases: Vec<(&str, Vec<u8>, String)> = Vec::new();
    cases.push((
        "truncated in a blob",
        good[..offset + 1000].to_vec(),
        big_member.clone(),
    ));
    cases.push((
        "truncated before the end blocks",
        good[..good.len() - 1024].to_vec(),
        "truncated".into(),
    ));
    let mut flipped = good.clone();
    flipped[offset + 100] ^= 1;
    cases.push(("flipped byte", flipped, big_member.clone()));
    // A manifest whose layer is not in the bundle (nor in the cache).
    let m = &want[1];
    let mpath = format!(
        "manifests/{}/{}/{}/{}",
        m.name.host, m.name.namespace, m.name.model, m.name.tag
    );
    cases.push((
        "missing blob",
        raw_tar(&[(
            mpath.as_bytes(),
            tar::EntryType::Regular,
            m.manifest.clone(),
            "",
        )]),
        mpath.clone(),
    ));
    for (what, path, kind, link) in [
        (
            "dotdot",
            &b"blobs/../../etc/x"[..],
            tar::EntryType::Regular,
            "",
        ),
        ("absolute", &b"/etc/passwd"[..], tar::EntryType::Regular, ""),
        (
            "symlink",
            &b"blobs/sha256-aaaa"[..],
            tar::EntryType::Symlink,
            "/etc/passwd",
        ),
        (
            "hardlink",
            &b"blobs/evil"[..],
            tar::EntryType::Link,
            "/etc/passwd",
        ),
        ("device", &b"blobs/dev"[..], tar::EntryType::Char, ""),
    ] {
        let mut t = good[..good.len() - 1024].to_vec();
        t.extend(raw_tar(&[(path, kind, vec![], link)]));
        cases.push((what, t, String::from_utf8_lossy(path).into_owned()));
    }
    refused_imports(
        &b,
        work.path(),
        cases,
        || published(&b.path("cache")),
        &before,
    );
    // The good bundle still imports after all that.
    let r = b.ctl_json(&["import", file.to_str().unwrap()]);
    assert_eq!(r["models_imported"].as_array().unwrap().len(), 2);
    let mut buf = Vec::new();
    std::fs::File::open(want[0].manifest_path(&b.path("cache")))
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    assert_eq!(buf, want[0].manifest);
}
