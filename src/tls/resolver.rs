//! Picks the leaf for each TLS client hello by its SNI: the exact name, else the wildcard above
//! it. A name the cache holds no certificate for (or no SNI, unless the cache has a leaf for its
//! own address) gets no certificate, which makes rustls end the handshake with an alert: the
//! cache never presents a certificate for a name it was not asked to intercept.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

use crate::state::{Counters, State};

pub struct SniResolver {
    pub state: Arc<State>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let tls = &self.state.tls;
        let sni = hello
            .server_name()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let found = tls.leaves().and_then(|l| l.find(sni.as_deref()));
        if found.is_none() {
            match &sni {
                Some(name) => {
                    Counters::bump(&tls.counters.unknown_sni);
                    tracing::warn!(
                        sni = %name,
                        "TLS handshake refused: not an intercepted name (add it to `[dns] intercept`?)"
                    );
                }
                None => {
                    Counters::bump(&tls.counters.no_sni);
                    tracing::debug!(
                        "TLS handshake refused: no SNI and no certificate for the cache's address"
                    );
                }
            }
        }
        found
    }
}
