//! Configuration errors at start-up and `--check-config` (the contract in DESIGN.md):
//! - an unknown key, a bad value and an unreadable file each fail with a message naming the
//!   file, the key and the line, and a non-zero exit status (78, EX_CONFIG);
//! - `--check-config` exits 0 on a valid file without binding anything;
//! - `--print-default-config` prints a file that itself checks clean;
//! - an `[upstream.registries]` key with a trailing dot is the same host without it; two keys
//!   naming one host that way are refused, naming the key.

use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lancached.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(crate::util::lancached_bin())
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(78), "{all}");
        assert!(
            all.contains(&path.display().to_string()),
            "names the file: {all}"
        );
    }
    (out.status.success(), all)
}

#[test]
fn valid_file_checks_clean() {
    let (ok, out) = check("[cache]\nmax_size = \"1TiB\"\n[upstream]\nmanifest_ttl = \"5m\"\n");
    assert!(ok, "{out}");
    assert!(out.contains("configuration is valid"));
}

#[test]
fn unknown_key() {
    let (ok, out) = check("[cache]\nmax_size = \"1TiB\"\nmax_sizes = \"1TiB\"\n");
    assert!(!ok);
    assert!(out.contains("max_sizes") && out.contains("line 3"), "{out}");
}

#[test]
fn bad_values_name_key_and_line() {
    for (text, key, line) in [
        ("[cache]\nmin_free = \"some\"\n", "cache.min_free", "line 2"),
        (
            "\n[upstream]\nresolvers = [\"1.1.1.1\"]\n",
            "upstream.resolvers",
            "line 3",
        ),
        ("[dns]\nttl = \"forever\"\n", "dns.ttl", "line 2"),
        (
            "[http]\npublic_url = \"cache.lan\"\n",
            "http.public_url",
            "line 2",
        ),
        ("[dns]\nrate_limit = -1\n", "dns.rate_limit", "line 2"),
    ] {
        let (ok, out) = check(text);
        assert!(!ok, "{text}");
        assert!(
            out.contains(key) && out.contains(line),
            "expected {key} and {line} in: {out}"
        );
    }
}

#[test]
fn unreadable_file() {
    let out = Command::new(crate::util::lancached_bin())
        .args(["--check-config", "--config", "/nonexistent/lancached.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/lancached.toml") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn default_config_is_valid() {
    let out = Command::new(crate::util::lancached_bin())
        .arg("--print-default-config")
        .output()
        .unwrap();
    let (ok, msg) = check(&String::from_utf8_lossy(&out.stdout));
    assert!(ok, "{msg}");
}

#[test]
fn registry_key_with_a_trailing_dot() {
    let (ok, out) =
        check("[upstream.registries]\n\"registry.ollama.ai.\" = \"https://registry.ollama.ai\"\n");
    assert!(ok, "{out}");
    let (ok, out) = check(
        "[upstream.registries]\n\"hf.co\" = \"https://hf.co\"\n\"hf.co.\" = \"http://127.0.0.1:1\"\n",
    );
    assert!(!ok);
    assert!(
        out.contains("upstream.registries") && out.contains("\"hf.co\" is listed twice"),
        "{out}"
    );
}
