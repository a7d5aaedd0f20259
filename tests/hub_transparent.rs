//! The Hugging Face Hub transparently (issue 14, item 1): an unmodified `huggingface_hub`
//! (no `HF_ENDPOINT`, so `https://huggingface.co`) in a network namespace whose resolver is
//! the cache's DNS, with the cache's CA trusted through `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE`
//! (Python clients read certifi's bundle, not the system store):
//!
//! - DNS answers `huggingface.co` with the cache, whose certificate for it verifies;
//! - `snapshot_download` and `hf_hub_download` (with `hf_xet` installed) are served by the
//!   cache (upstream, the stand-in, pays each file once across two clients), the tree's
//!   `Link` pointing back at `https://huggingface.co`;
//! - a path the cache does not cache (a page) is relayed upstream unchanged.
//!
//! (`setup.sh` writing `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE` for login shells is checked with
//! the rest of `setup.sh` in tests/tls.rs.)

use crate::util::daemon::Activate;
use crate::util::hf_client as hc;
use crate::util::hf_upstream::{sha256_hex, Access, HfUpstream, Kind};
use crate::util::models::noise;
use crate::util::Daemon;
use serde_json::json;

#[test]
fn an_unmodified_client_is_cached_through_dns_and_the_ca() {
    if !crate::util::require_program("ip") || !hc::require() {
        return;
    }
    let ns = crate::util::netns::NetNs::new(&[]);
    ns.set_resolver("127.0.0.1");
    std::thread::spawn(move || {
        ns.enter();
        let up = HfUpstream::start();
        up.set_page_size(2);
        let files: Vec<(String, Vec<u8>)> = vec![
            ("config.json".into(), b"{}".to_vec()),
            ("a/b/c.txt".into(), b"small".to_vec()),
            ("model.safetensors".into(), noise(7, 1_500_000)),
        ];
        up.add_repo(Kind::Model, "org/model", Access::Public);
        let refs: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
        let commit = up.commit(Kind::Model, "org/model", &refs);
        let d = Daemon::builder()
            .activate(Activate::none())
            .config(&format!(
                "[upstream]\nresolvers = []\n[dns]\nlisten = [\"127.0.0.1:53\"]\nadvertise = [\"127.0.0.1\"]\n[http]\nlisten = [\"127.0.0.1:80\"]\n[tls]\nlisten = [\"127.0.0.1:443\"]\n[huggingface]\nupstream = \"{}\"\n",
                up.url()
            ))
            .start();
        let work = tempfile::tempdir().unwrap();
        let bundle = work.path().join("bundle.pem");
        let mut pem = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        pem.extend(std::fs::read(d.dir.join("ca/ca.crt")).unwrap());
        std::fs::write(&bundle, pem).unwrap();
        let run = |op: serde_json::Value, cache: &std::path::Path| {
            let mut cmd = ns.command("timeout");
            cmd.args([hc::LIMIT_SECS.to_string(), "python3".to_string()]);
            let b = bundle.display().to_string();
            hc::run_in(
                cmd,
                &op,
                &[
                    ("HF_HUB_CACHE", cache.display().to_string()),
                    ("HF_HOME", cache.join(".hf_home").display().to_string()),
                    ("SSL_CERT_FILE", b.clone()),
                    ("REQUESTS_CA_BUNDLE", b),
                ],
            )
        };
        for _ in 0..2 {
            let c = tempfile::tempdir().unwrap();
            let r = run(json!({"op": "snapshot", "repo": "org/model"}), c.path());
            hc::ok(&r);
            assert_eq!(r["hf_xet"], true);
            assert_eq!(r["commit"], commit.as_str());
            for (p, b) in &files {
                assert_eq!(r["files"][p], sha256_hex(b), "{p}");
            }
            let r = run(
                json!({"op": "download", "repo": "org/model", "filename": "a/b/c.txt"}),
                c.path(),
            );
            assert_eq!(hc::ok(&r)["files"]["a/b/c.txt"], sha256_hex(b"small"));
        }
        let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
        assert_eq!(up.bytes(), total, "each file once, for two clients");
        let m = run(
            json!({"op": "metadata", "repo": "org/model", "filename": "model.safetensors"}),
            work.path(),
        );
        hc::ok(&m);
        assert_eq!(m["xet"], false);
        assert!(m["location"]
            .as_str()
            .unwrap()
            .starts_with("https://huggingface.co/"));
        // Not cached, relayed: the stand-in's own answer for a page.
        let page = ns
            .command("curl")
            .args(["-sS", "--cacert"])
            .arg(&bundle)
            .arg("https://huggingface.co/org/model")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&page.stdout),
            "stand-in: no such page\n"
        );
    })
    .join()
    .unwrap();
}
