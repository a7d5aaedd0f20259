//! Leaf certificates: one per intercepted name (a `*.suffix` pattern gets a wildcard leaf), plus
//! one for clients that connect by IP address, all sharing one fresh P-256 key per issuance.
//! Issued in memory only (nothing to leak from disk, nothing to clean up), short-lived, and
//! re-issued well before expiry, on reload when the names change, and on CA rotation.
//!
//! After issuing, every leaf is verified against the CA certificate with webpki, the way a client
//! would. That catches a `ca.key` that does not belong to `ca.crt` (fatal) and names that the CA's
//! name constraints do not cover (served anyway, loudly logged: clients will reject them until
//! the CA is rotated). The reserved subtrees (names a new CA permits before they are
//! intercepted, see `names`) are probed the same way with a throwaway leaf, so a CA made by an
//! older release is reported before the day those names are served.

use anyhow::{anyhow, bail, Result};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use time::{Duration, OffsetDateTime};

use super::ca::{serial, Ca};
use super::names::{covering_pattern, NameSet};

/// Leaves live this long. Short enough that a leaked leaf key expires soon, long enough that a
/// daemon stopped over a holiday still serves valid certificates when it comes back.
pub const LEAF_LIFETIME: Duration = Duration::days(30);
/// Renewed when this much of the lifetime is left.
pub const RENEW_BEFORE: Duration = Duration::days(10);
/// Leaves issued on demand (names deeper than a wildcard covers) kept at most.
const ON_DEMAND_MAX: usize = 1024;

/// One issuance: the leaves for a name set, signed by one CA.
pub struct Leaves {
    pub ca: Arc<Ca>,
    pub names: NameSet,
    by_name: HashMap<String, Arc<CertifiedKey>>,
    /// For clients that send no SNI (they connected by IP address).
    by_ip: Option<Arc<CertifiedKey>>,
    /// Names below a `*.suffix` pattern by more than one label, issued when first asked for.
    on_demand: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Names the CA's name constraints reject (clients will refuse them).
    pub uncovered: Vec<String>,
    /// Reserved subtrees the CA's name constraints do not permit (a CA older than them).
    pub missing_constraints: Vec<String>,
}

impl Leaves {
    /// Issues leaves for `names` with `ca`, and verifies each the way a client would.
    pub fn issue(ca: Arc<Ca>, names: NameSet) -> Result<Leaves> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| anyhow!("cannot generate a leaf key: {e}"))?;
        let signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        ))
        .map_err(|e| anyhow!("cannot load the leaf key: {e}"))?;
        let now = OffsetDateTime::now_utc();
        let mut leaves = Leaves {
            ca,
            names: NameSet::default(),
            by_name: HashMap::new(),
            by_ip: None,
            on_demand: Mutex::new(HashMap::new()),
            key,
            signing_key,
            // An hour of slack for clients whose clocks run a little behind.
            not_before: now - Duration::hours(1),
            not_after: now + LEAF_LIFETIME,
            uncovered: Vec::new(),
            missing_constraints: Vec::new(),
        };
        let anchor = webpki::anchor_from_trusted_cert(&leaves.ca.der)
            .map_err(|e| anyhow!("the CA certificate cannot be used as a trust anchor: {e}"))?
            .to_owned();
        for name in &names.dns {
            let der = leaves.sign(vec![name.clone()], vec![])?;
            // A wildcard leaf is checked with a name it covers.
            let probe = match name.strip_prefix("*.") {
                Some(suffix) => format!("lancache-probe.{suffix}"),
                None => name.clone(),
            };
            if !leaves.check(&anchor, &der, &probe, name)? {
                leaves.uncovered.push(name.clone());
            }
            leaves
                .by_name
                .insert(name.clone(), leaves.certified(der.clone()));
        }
        if !names.ips.is_empty() {
            let ips: Vec<IpAddr> = names.ips.iter().copied().collect();
            let der = leaves.sign(vec![], ips.clone())?;
            for ip in &ips {
                if !leaves.check(&anchor, &der, &ip.to_string(), &ip.to_string())? {
                    leaves.uncovered.push(ip.to_string());
                }
            }
            leaves.by_ip = Some(leaves.certified(der));
        }
        for subtree in &names.reserved {
            // The subtree's own name and one below it: a CDN host must be permitted too.
            let probe = format!("lancache-probe.{subtree}");
            let der = leaves.sign(vec![subtree.clone(), probe.clone()], vec![])?;
            if !leaves.check(&anchor, &der, &probe, subtree)? {
                leaves.missing_constraints.push(subtree.clone());
            }
        }
        leaves.names = names;
        Ok(leaves)
    }

    /// When these leaves must be replaced.
    pub fn renew_at(&self) -> SystemTime {
        SystemTime::from(self.not_after - RENEW_BEFORE)
    }

    /// The leaf for a TLS client hello's SNI (lower-cased by the caller), or for no SNI.
    pub fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = sni else {
            return self.by_ip.clone();
        };
        let (pattern, exact_needed) = covering_pattern(&self.names.dns, sni)?;
        if !exact_needed {
            return self.by_name.get(pattern).cloned();
        }
        let mut cache = self.on_demand.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(leaf) = cache.get(sni) {
            return Some(leaf.clone());
        }
        match self.sign(vec![sni.to_string()], vec![]) {
            Ok(der) => {
                let leaf = self.certified(der);
                if cache.len() >= ON_DEMAND_MAX {
                    cache.clear();
                }
                cache.insert(sni.to_string(), leaf.clone());
                tracing::debug!(name = sni, pattern, "issued a leaf on demand");
                Some(leaf)
            }
            Err(e) => {
                tracing::error!(name = sni, "cannot issue a leaf: {e:#}");
                None
            }
        }
    }

    fn certified(&self, der: CertificateDer<'static>) -> Arc<CertifiedKey> {
        Arc::new(CertifiedKey::new(vec![der], self.signing_key.clone()))
    }

    fn sign(&self, dns: Vec<String>, ips: Vec<IpAddr>) -> Result<CertificateDer<'static>> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "lancache");
        // No CN on the address leaf: OpenSSL checks a CN that looks like a host name (and
        // "10.0.0.5" does) against the CA's DNS name constraints when a leaf has no DNS SAN.
        if let Some(first) = dns.first() {
            dn.push(DnType::CommonName, first.clone());
        }
        params.distinguished_name = dn;
        for name in dns {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(|e| anyhow!("{name:?} cannot be a certificate name: {e}"))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params
            .subject_alt_names
            .extend(ips.into_iter().map(SanType::IpAddress));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.serial_number = Some(serial(self.key.public_key_raw()));
        let cert = params
            .signed_by(&self.key, &self.ca.issuer())
            .map_err(|e| anyhow!("cannot sign a leaf: {e}"))?;
        Ok(cert.der().clone().into_owned())
    }

    /// Verifies a leaf as a client would. Ok(false): valid chain, but the CA's name constraints
    /// (or the name) reject it. Err: the chain itself is broken (key and certificate mismatch).
    fn check(
        &self,
        anchor: &rustls_pki_types::TrustAnchor<'_>,
        der: &CertificateDer<'_>,
        probe: &str,
        name: &str,
    ) -> Result<bool> {
        let ee = webpki::EndEntityCert::try_from(der)
            .map_err(|e| anyhow!("issued an unparsable leaf for {name}: {e}"))?;
        let verified = ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(anchor),
            &[],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        );
        match verified {
            Ok(_) => {}
            Err(webpki::Error::NameConstraintViolation) => return Ok(false),
            Err(e) => bail!(
                "a leaf signed with {} does not verify against {} ({e:?}): the key does not \
                 belong to the certificate; restore the matching pair or run `lancachectl ca \
                 --rotate`",
                self.ca.dir.join(super::ca::KEY_FILE).display(),
                self.ca.cert_path().display()
            ),
        }
        let server_name = ServerName::try_from(probe.to_string())
            .map_err(|e| anyhow!("{probe:?} is not a server name: {e}"))?;
        Ok(ee.verify_is_valid_for_subject_name(&server_name).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> NameSet {
        NameSet {
            dns: list.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn issue_find_and_constraints() {
        let tmp = tempfile::tempdir().unwrap();
        let set = names(&["registry.ollama.ai", "*.r2.example"]);
        let ca = Arc::new(Ca::load_or_create(tmp.path(), &set, true).unwrap());
        let leaves = Leaves::issue(ca.clone(), set.clone()).unwrap();
        assert!(leaves.uncovered.is_empty(), "{:?}", leaves.uncovered);
        assert!(leaves.find(Some("registry.ollama.ai")).is_some());
        assert!(leaves.find(Some("a.r2.example")).is_some());
        assert!(leaves.find(Some("a.b.r2.example")).is_some());
        assert!(leaves.find(Some("evil.example")).is_none());
        assert!(leaves.find(None).is_none());
        // A name added after the CA was made is issued but reported as not covered.
        let wider = names(&["registry.ollama.ai", "hf.co"]);
        let leaves = Leaves::issue(ca, wider).unwrap();
        assert_eq!(leaves.uncovered, vec!["hf.co".to_string()]);
        // An unconstrained CA covers everything.
        let tmp2 = tempfile::tempdir().unwrap();
        let free = Arc::new(Ca::load_or_create(tmp2.path(), &set, false).unwrap());
        let leaves = Leaves::issue(free, names(&["hf.co"])).unwrap();
        assert!(leaves.uncovered.is_empty());
    }

    /// A CA made before the hub subtrees existed is reported (and not its served names); one
    /// made with them permits their CDN hosts too.
    #[test]
    fn reserved_subtrees_are_probed() {
        let tmp = tempfile::tempdir().unwrap();
        let old = names(&["registry.ollama.ai"]);
        let old_ca = Arc::new(Ca::load_or_create(tmp.path(), &old, true).unwrap());
        let mut today = old.clone();
        today.reserved = ["hf.co", "huggingface.co"].map(String::from).into();
        let leaves = Leaves::issue(old_ca, today.clone()).unwrap();
        assert!(leaves.uncovered.is_empty());
        assert_eq!(leaves.missing_constraints, ["hf.co", "huggingface.co"]);
        let tmp2 = tempfile::tempdir().unwrap();
        let new_ca = Arc::new(Ca::generate(tmp2.path(), &today, true).unwrap());
        let leaves = Leaves::issue(new_ca.clone(), today.clone()).unwrap();
        assert!(leaves.missing_constraints.is_empty());
        assert!(
            leaves.find(Some("huggingface.co")).is_none(),
            "permitted, not served"
        );
        // The CDN names the Hugging Face issue will meet, checked the way a client would.
        let anchor = webpki::anchor_from_trusted_cert(&new_ca.der).unwrap();
        for cdn in [
            "us.aws.cdn.hf.co",
            "cas-bridge.xethub.hf.co",
            "cdn-lfs.huggingface.co",
        ] {
            let der = leaves.sign(vec![cdn.to_string()], vec![]).unwrap();
            assert!(leaves.check(&anchor, &der, cdn, cdn).unwrap(), "{cdn}");
        }
        let der = leaves.sign(vec!["evil.example".into()], vec![]).unwrap();
        assert!(!leaves
            .check(&anchor, &der, "evil.example", "evil.example")
            .unwrap());
    }

    #[test]
    fn mismatched_key_is_fatal() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let set = names(&["registry.ollama.ai"]);
        Ca::load_or_create(a.path(), &set, true).unwrap();
        Ca::load_or_create(b.path(), &set, true).unwrap();
        std::fs::copy(b.path().join("ca.key"), a.path().join("ca.key")).unwrap();
        let ca = Arc::new(Ca::load(a.path()).unwrap());
        let err = Leaves::issue(ca, set).err().unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
