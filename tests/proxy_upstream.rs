//! The upstream client: the registry is named by a host name that only the configured
//! `[upstream] resolvers` know (a DNS responder of the test's own; the system resolver would
//! fail), reached over HTTPS (nginx terminating TLS with a certificate from a test CA, trusted
//! only through `[upstream] ca_file`), and its 307 to the CDN host is followed by the cache.
//! Without the CA the TLS handshake is refused and nothing is served as if it worked.

use std::sync::atomic::Ordering;

use crate::util::tls_upstream::{dns_responder, TlsFront};
use crate::util::upstream::{blob_bytes, digest, raw_get, FakeUpstream};
use crate::util::{require_program, Daemon};

const NAME: &str = "upstream.lancache-test";

#[test]
fn upstream_over_tls_via_configured_resolvers() {
    if !require_program("nginx") || !require_program("openssl") {
        return;
    }
    let up = FakeUpstream::start();
    let layer = blob_bytes(2 << 20, 21);
    let manifest = up.add_model("library/tls", "latest", &[&layer[..]]);

    let front = TlsFront::start(NAME, &up.url());
    let port = front.port;
    let (dns, queries) = dns_responder();
    let config = |ca: &str| {
        format!(
            "[upstream]\nresolvers = [\"{dns}\"]\nca_file = \"{ca}\"\n[upstream.registries]\n\"registry.ollama.ai\" = \"https://{NAME}:{port}\"\n[cache]\nslice_size = \"1MiB\"\n"
        )
    };

    // Without the CA: the handshake fails and the client gets a clear 502, not a manifest.
    let d0 = Daemon::builder().config(&config("")).start();
    let r = raw_get(
        d0.http.unwrap(),
        "registry.ollama.ai",
        "/v2/library/tls/manifests/latest",
        &[],
    );
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        queries.load(Ordering::SeqCst) >= 1,
        "the configured resolver was asked"
    );
    drop(d0);

    let d = Daemon::builder()
        .config(&config(&front.ca_file().display().to_string()))
        .start();
    let addr = d.http.unwrap();
    let r = raw_get(
        addr,
        "registry.ollama.ai",
        "/v2/library/tls/manifests/latest",
        &[],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, manifest);
    let dg = digest(&layer);
    let r = raw_get(
        addr,
        "registry.ollama.ai",
        &format!("/v2/library/tls/blobs/{dg}"),
        &[],
    );
    let loc = &r.headers["location"];
    let r = raw_get(
        addr,
        &addr.to_string(),
        &loc[loc.find("/blobs/").unwrap()..],
        &[],
    );
    assert!(r.complete && r.body == layer);
    assert_eq!(up.cdn_bytes(), layer.len() as u64);
}
