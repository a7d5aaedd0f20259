//! The registry's version gate survives the cache (issue 13, item 4). registry.ollama.ai answers
//! 412 "requires a newer version of Ollama" by the client's `User-Agent`; the fake upstream here
//! does the same for `ollama/<v>` below 0.6.0. Checked:
//!
//! - the client's `User-Agent` reaches upstream on a manifest fetch;
//! - a manifest cached for one client version is not served to a version upstream has not yet
//!   answered: that client is checked with upstream first, and its 412 reaches it as a 412 with
//!   upstream's message, while the cached copy stays for the versions that passed;
//! - the key is the `ollama/<version>` token only: another OS, arch or Go version of a version
//!   that passed is a hit with no upstream request;
//! - a TTL revalidation carries the asking client's `User-Agent`;
//! - with upstream down, a version that was never checked is served the cached copy, and the
//!   log says it went unchecked.

use crate::util::upstream::{blob_bytes, raw_get, FakeUpstream, Faults, MANIFEST_TYPE};
use crate::util::Daemon;

const REG: &str = "registry.ollama.ai";
const NEW: &str = "ollama/0.34.2 (amd64 linux) Go/go1.24.1";
const NEW_MAC: &str = "ollama/0.34.2 (arm64 darwin) Go/go1.24.0";
const OLD: &str = "ollama/0.5.4 (amd64 linux) Go/go1.22.5";
const NEVER_SEEN: &str = "ollama/0.20.0 (amd64 linux) Go/go1.23.0";

fn get(d: &Daemon, agent: &str) -> crate::util::upstream::RawResponse {
    raw_get(
        d.http.unwrap(),
        REG,
        "/v2/library/gated/manifests/latest",
        &[("Accept", MANIFEST_TYPE), ("User-Agent", agent)],
    )
}

fn daemon(up: &FakeUpstream, ttl: &str) -> Daemon {
    Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = []\nmanifest_ttl = \"{ttl}\"\n[upstream.registries]\n\"registry.ollama.ai\" = \"{}\"\n",
            up.url()
        ))
        .start()
}

#[test]
fn a_cached_manifest_never_skips_the_version_gate() {
    let up = FakeUpstream::start();
    let manifest = up.add_model("library/gated", "latest", &[&blob_bytes(1000, 3)[..]]);
    up.require_ollama(Some("0.6.0"));
    let d = daemon(&up, "10m");

    let r = get(&d, NEW);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, manifest);
    assert_eq!(
        up.manifest_agents().last().map(String::as_str),
        Some(NEW),
        "the client's User-Agent reaches upstream"
    );

    let n = up.manifest_requests();
    let r = get(&d, OLD);
    assert_eq!(
        up.manifest_requests(),
        n + 1,
        "an unseen version is checked"
    );
    assert_eq!(r.status, 412, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains("requires a newer version of Ollama"),
        "upstream's message reaches the client"
    );
    // Asking again is checked again: a 412 is never remembered as a pass.
    assert_eq!(get(&d, OLD).status, 412);

    let n = up.manifest_requests();
    assert_eq!(
        get(&d, NEW).body,
        manifest,
        "the passing version still hits"
    );
    assert_eq!(get(&d, NEW_MAC).body, manifest, "keyed on ollama/<v> only");
    assert_eq!(up.manifest_requests(), n, "no upstream request for either");

    // Upstream down: a version never checked gets the cached copy, and the log says so.
    up.faults(Faults {
        status: Some(503),
        ..Default::default()
    });
    let r = get(&d, NEVER_SEEN);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, manifest);
    // The log line is written before the answer, but read from the daemon's stderr by a
    // thread of the harness: wait for it rather than race it.
    crate::util::wait_for(
        "the log to say the version went unchecked",
        std::time::Duration::from_secs(5),
        || {
            d.stderr()
                .contains("without upstream's version check for this client")
        },
    );
}

#[test]
fn revalidation_carries_the_asking_clients_user_agent() {
    let up = FakeUpstream::start();
    up.add_model("library/gated", "latest", &[&blob_bytes(1000, 4)[..]]);
    let d = daemon(&up, "1s");
    assert_eq!(get(&d, NEW).status, 200);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    up.require_ollama(Some("0.6.0"));
    // Past the TTL, the revalidation is the old client's own request, and upstream refuses it.
    assert_eq!(get(&d, OLD).status, 412);
    assert_eq!(up.manifest_agents().last().map(String::as_str), Some(OLD));
    assert_eq!(get(&d, NEW).status, 200);
}
