//! The cache's own certificate authority, kept in `[tls] ca_dir`: `ca.crt` (PEM, 0644, what
//! clients install) and `ca.key` (PKCS#8 PEM, 0600, never leaves the box). Created once, on first
//! use, and replaced only by `lancachectl ca --rotate`: every client trusts exactly this
//! certificate, so silently regenerating it would break every client at once.
//!
//! The key is ECDSA P-256 (accepted by Go's crypto/x509, every OS store and every TLS stack).
//! The CA is constrained with X.509 name constraints to the intercepted names at creation time,
//! so a leaked key can impersonate model registries only, never a bank (docs/tls.md explains the
//! trade-off). Its subject is derived from its public key, which lets the daemon rebuild the
//! issuer from `ca.key` alone without an X.509 parser: the stored certificate stays the one
//! source of truth and a leaf signed today chains to the file clients installed years ago.

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

use super::names::NameSet;

/// How long the CA is valid. Rotation is a manual, every-client event, so it should be rare; the
/// name constraints bound what a leaked key could do meanwhile.
pub const CA_LIFETIME: Duration = Duration::days(3650);

pub const CERT_FILE: &str = "ca.crt";
pub const KEY_FILE: &str = "ca.key";

/// A loaded CA: the certificate clients trust and the key that signs leaves.
pub struct Ca {
    pub dir: PathBuf,
    pub pem: String,
    pub der: CertificateDer<'static>,
    /// Lower-case hex SHA-256 of the DER certificate (what `sha256sum` of the DER prints).
    pub fingerprint: String,
    key: KeyPair,
    params: CertificateParams,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Ca {
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    /// The issuer to sign leaves with.
    pub fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// Loads the CA in `dir`, creating it (constrained to `names` when `constrain`) if the
    /// directory holds none yet. A half-present CA (certificate without key) is an error, never
    /// a reason to make a new one: clients may already trust the certificate.
    pub fn load_or_create(dir: &Path, names: &NameSet, constrain: bool) -> Result<Ca> {
        let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        match (cert.exists(), key.exists()) {
            (true, true) => Ca::load(dir),
            (true, false) => bail!(
                "{} exists but {} is missing: restore the key, or make a new CA with \
                 `lancachectl ca --rotate` (every client must then trust the new one)",
                cert.display(),
                key.display()
            ),
            // A key without its certificate was never published (the certificate is written
            // last), so no client can trust it: finishing the creation is safe.
            (false, _) => {
                let ca = Ca::generate(dir, names, constrain)?;
                tracing::info!(
                    path = %ca.cert_path().display(),
                    fingerprint = %ca.fingerprint,
                    "created the cache's CA; clients must trust it (see /setup.sh)"
                );
                Ok(ca)
            }
        }
    }

    pub fn load(dir: &Path) -> Result<Ca> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read {}", cert_path.display()))?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| anyhow!("{} is not a PEM certificate: {e}", cert_path.display()))?
            .into_owned();
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| anyhow!("{} is not a PEM private key: {e}", key_path.display()))?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            bail!("{} is not an ECDSA P-256 key", key_path.display());
        }
        if let Ok(meta) = std::fs::metadata(&key_path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    "{} is readable by others (mode {:o}); it should be 0600",
                    key_path.display(),
                    meta.permissions().mode() & 0o777
                );
            }
        }
        // Only the parts an issuer needs; validity and constraints live in the stored file.
        let params = ca_params(&key, &NameSet::default(), false);
        Ok(Ca::assemble(dir, pem, der, key, params))
    }

    /// The one place a `Ca` is put together, so the fingerprint always matches the DER.
    fn assemble(
        dir: &Path,
        pem: String,
        der: CertificateDer<'static>,
        key: KeyPair,
        params: CertificateParams,
    ) -> Ca {
        Ca {
            dir: dir.to_path_buf(),
            fingerprint: fingerprint(&der),
            pem,
            der,
            key,
            params,
        }
    }

    /// Makes a new CA and writes it to `dir`, replacing any CA there (each file atomically:
    /// key first, certificate last, so a crash in between leaves either the old certificate
    /// with a key that fails the start-up self-test, or a complete new pair).
    pub fn generate(dir: &Path, names: &NameSet, constrain: bool) -> Result<Ca> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| anyhow!("cannot generate the CA key: {e}"))?;
        let params = ca_params(&key, names, constrain);
        let cert = params
            .self_signed(&key)
            .map_err(|e| anyhow!("cannot sign the CA certificate: {e}"))?;
        let pem = cert.pem();
        let der = cert.der().clone().into_owned();
        create_dir(dir)?;
        write_atomic(&dir.join(KEY_FILE), key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&dir.join(CERT_FILE), pem.as_bytes(), 0o644)?;
        sync_dir(dir);
        Ok(Ca::assemble(dir, pem, der, key, params))
    }
}

/// The CA's parameters. Subject and key usages depend only on the key, so the issuer can be
/// rebuilt from `ca.key` alone (see the module note).
fn ca_params(key: &KeyPair, names: &NameSet, constrain: bool) -> CertificateParams {
    let mut params = CertificateParams::default();
    let id = hex::encode(&Sha256::digest(key.public_key_raw())[..4]);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "lancache");
    dn.push(DnType::CommonName, format!("lancache CA {id}"));
    params.distinguished_name = dn;
    // Path length 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    // A day of slack for clients whose clocks run behind.
    params.not_before = now - Duration::days(1);
    params.not_after = now + CA_LIFETIME;
    params.serial_number = Some(serial(key.public_key_raw()));
    if constrain {
        params.name_constraints = Some(name_constraints(names));
    }
    params
}

/// Permitted: the intercepted DNS subtrees and the cache's own addresses. With no own address,
/// every IP address is excluded (without that, RFC 5280 leaves IP SANs unconstrained).
fn name_constraints(names: &NameSet) -> NameConstraints {
    let mut permitted: Vec<GeneralSubtree> = names
        .constraint_subtrees()
        .into_iter()
        .map(GeneralSubtree::DnsName)
        .collect();
    let mut excluded = Vec::new();
    if names.ips.is_empty() {
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])));
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])));
    } else {
        for ip in &names.ips {
            permitted.push(GeneralSubtree::IpAddress(match ip {
                IpAddr::V4(v4) => CidrSubnet::V4(v4.octets(), [255; 4]),
                IpAddr::V6(v6) => CidrSubnet::V6(v6.octets(), [255; 16]),
            }));
        }
    }
    NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    }
}

/// A positive 127-bit serial, unique per certificate (public key + time + a counter).
pub fn serial(public_key: &[u8]) -> rcgen::SerialNumber {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(public_key);
    h.update(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_be_bytes(),
    );
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    h.update(std::process::id().to_be_bytes());
    let mut bytes = h.finalize()[..16].to_vec();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero byte, so the DER length is fixed
    rcgen::SerialNumber::from_slice(&bytes)
}

pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The CA directory: created 0755 (the certificate is public; the key file guards itself with
/// 0600, and the packaged unit's StateDirectory= already owns the parent).
fn create_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("tls.ca_dir: cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("tls.ca_dir: cannot set the mode of {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `bytes` to a temporary file created with `mode` (the key is never readable by others,
/// not even for a moment), fsyncs it and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode: 0644 must really be 0644 for the certificate.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow!("cannot write {}: {e}", path.display()));
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> NameSet {
        let mut n = NameSet::default();
        n.dns.insert("registry.ollama.ai".into());
        n
    }

    #[test]
    fn create_then_reload_same_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let a = Ca::load_or_create(&dir, &names(), true).unwrap();
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(CERT_FILE), 0o644);
        let b = Ca::load_or_create(&dir, &names(), true).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.params.distinguished_name, b.params.distinguished_name);
    }

    #[test]
    fn certificate_without_key_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        Ca::load_or_create(&dir, &names(), true).unwrap();
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let err = Ca::load_or_create(&dir, &names(), true).unwrap_err();
        assert!(err.to_string().contains("--rotate"), "{err}");
    }
}
