//! The fleet's certificate authority: its key signs every certificate the
//! broker trusts (devices, the claim certificate, the broker, services)
//! and the revocation list the broker reads. `rcgen` makes and signs the
//! certificates and the list; the key stays in the directory given
//! (`ca.key`, readable by its owner only) and is never sent anywhere.

use std::fmt;
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;

/// The CA certificate's file in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// A CA that cannot be made, read or used.
#[derive(Debug)]
pub enum AuthorityError {
    /// A file could not be read or written.
    Io(PathBuf, std::io::Error),
    /// `create` found a CA there already (it never overwrites one).
    Exists(PathBuf),
    /// The certificate or key does not parse, or signing failed.
    Crypto(String),
}

impl fmt::Display for AuthorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthorityError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            AuthorityError::Exists(p) => write!(
                f,
                "{} holds a CA already; a fleet's CA is made once (remove it by hand to start over)",
                p.display()
            ),
            AuthorityError::Crypto(e) => write!(f, "certificate authority: {e}"),
        }
    }
}

impl std::error::Error for AuthorityError {}

fn crypto(e: rcgen::Error) -> AuthorityError {
    AuthorityError::Crypto(e.to_string())
}

/// A certificate this CA signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// PEM.
    pub pem: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Unix seconds it starts being valid (a minute before it was made,
    /// for clocks a little behind).
    pub not_before: u64,
    /// Unix seconds it stops being valid.
    pub not_after: u64,
}

/// A certificate and the new key it was made for (for pre-provisioned
/// devices, the claim certificate, the broker and services).
#[derive(Debug, Clone)]
pub struct IssuedWithKey {
    /// The certificate.
    pub cert: Issued,
    /// Its private key, PEM.
    pub key_pem: String,
}

/// The fleet's CA.
pub struct Authority {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn at(secs: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs.min(253_402_300_799) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A random positive serial number of 16 bytes (RFC 5280 allows 20).
fn new_serial() -> (SerialNumber, String) {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Positive, and no leading zero byte to be trimmed away.
    bytes[0] = (bytes[0] & 0x7f) | 0x10;
    (SerialNumber::from_slice(&bytes), crate::hex::to_hex(&bytes))
}

fn serial_bytes(hex: &str) -> Option<Vec<u8>> {
    crate::hex::parse_hex(hex).ok().filter(|b| !b.is_empty())
}

/// The parameters of a leaf certificate named `cn`: its common name, and
/// `names` (DNS names or addresses) as alternative names.
fn leaf(
    cn: &str,
    names: &[&str],
    lifetime_secs: u64,
) -> Result<(CertificateParams, Issued), AuthorityError> {
    let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).map_err(crypto)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    let now = now_secs();
    let not_before = now.saturating_sub(60);
    let not_after = now.saturating_add(lifetime_secs);
    params.not_before = at(not_before);
    params.not_after = at(not_after);
    let (serial_number, serial) = new_serial();
    params.serial_number = Some(serial_number);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok((
        params,
        Issued {
            pem: String::new(),
            serial,
            not_before,
            not_after,
        },
    ))
}

impl Authority {
    /// Makes a new CA in `dir` (created if missing) named `name`, valid for
    /// `years`: `ca.pem` and `ca.key` (mode 0600). Refuses to overwrite one.
    pub fn create(dir: &Path, name: &str, years: u32) -> Result<Self, AuthorityError> {
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        if key_path.exists() || cert_path.exists() {
            return Err(AuthorityError::Exists(dir.to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|e| AuthorityError::Io(dir.to_owned(), e))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let now = now_secs();
        params.not_before = at(now.saturating_sub(60));
        params.not_after = at(now.saturating_add(u64::from(years) * 365 * 86_400));
        let key = KeyPair::generate().map_err(crypto)?;
        let ca_pem = params.self_signed(&key).map_err(crypto)?.pem();
        crate::store::write_private(&key_path, key.serialize_pem().as_bytes())
            .map_err(|e| AuthorityError::Io(key_path.clone(), e))?;
        crate::store::write_atomic(&cert_path, ca_pem.as_bytes())
            .map_err(|e| AuthorityError::Io(cert_path.clone(), e))?;
        Ok(Authority {
            ca_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: &Path) -> Result<Self, AuthorityError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| AuthorityError::Io(p, e))
        };
        let ca_pem = read(CA_CERT_FILE)?;
        let key = KeyPair::from_pem(&read(CA_KEY_FILE)?).map_err(crypto)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(crypto)?;
        Ok(Authority { ca_pem, issuer })
    }

    /// The CA certificate, PEM: what the broker and every client trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Signs a certificate named `cn` for the key of a signing request that
    /// has been checked already (its signature, its name): the request's
    /// other wishes (names, usages, validity) are not taken, the CA sets
    /// them.
    pub fn sign_request(
        &self,
        csr: &CertificateSigningRequestParams,
        cn: &str,
        lifetime_secs: u64,
    ) -> Result<Issued, AuthorityError> {
        let (mut params, mut issued) = leaf(cn, &[], lifetime_secs)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key.clone(),
        };
        issued.pem = request.signed_by(&self.issuer).map_err(crypto)?.pem();
        Ok(issued)
    }

    /// A new key and a certificate for it named `cn`, with `names` as
    /// alternative names (a broker's host names and addresses).
    pub fn issue_with_key(
        &self,
        cn: &str,
        names: &[&str],
        lifetime_secs: u64,
    ) -> Result<IssuedWithKey, AuthorityError> {
        let (mut params, mut issued) = leaf(cn, names, lifetime_secs)?;
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let key = KeyPair::generate().map_err(crypto)?;
        issued.pem = params.signed_by(&key, &self.issuer).map_err(crypto)?.pem();
        Ok(IssuedWithKey {
            cert: issued,
            key_pem: key.serialize_pem(),
        })
    }

    /// The revocation list, PEM, of the certificates `revoked` names
    /// (serial in hex, Unix seconds revoked), numbered `number` (each list
    /// a higher number than the last), valid for `valid_secs`.
    pub fn revocation_list(
        &self,
        revoked: &[(String, u64)],
        number: u64,
        valid_secs: u64,
    ) -> Result<String, AuthorityError> {
        let now = now_secs();
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for (serial, when) in revoked {
            let bytes = serial_bytes(serial)
                .ok_or_else(|| AuthorityError::Crypto(format!("serial {serial:?} is not hex")))?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: at(*when),
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: at(now.saturating_sub(60)),
            next_update: at(now.saturating_add(valid_secs.max(60))),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .map_err(crypto)?
            .pem()
            .map_err(crypto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_is_made_once_and_signs_what_it_reopens_with() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create(dir.path(), "Test fleet CA", 10).unwrap();
        assert!(matches!(
            Authority::create(dir.path(), "again", 10),
            Err(AuthorityError::Exists(_))
        ));
        let again = Authority::open(dir.path()).unwrap();
        assert_eq!(again.ca_pem(), ca.ca_pem());
        let leaf = again.issue_with_key("ly-0a0b0c0d0e0f", &[], 3600).unwrap();
        let files = crate::tls::TlsFiles::from_pem(
            ca.ca_pem().as_bytes().to_vec(),
            Some((leaf.cert.pem.into_bytes(), leaf.key_pem.into_bytes())),
        )
        .unwrap();
        assert_eq!(files.client_identity().as_deref(), Some("ly-0a0b0c0d0e0f"));
        assert_eq!(leaf.cert.not_after - leaf.cert.not_before, 3660);
        let crl = ca
            .revocation_list(&[(leaf.cert.serial, 1)], 1, 3600)
            .unwrap();
        assert!(crl.starts_with("-----BEGIN X509 CRL-----"));
        assert!(ca.revocation_list(&[("xyz".into(), 1)], 2, 3600).is_err());
    }
}
