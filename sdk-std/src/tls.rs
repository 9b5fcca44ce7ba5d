//! TLS with mutual authentication for the MQTT transport (rustls through
//! rumqttc). Certificates are checked when loaded, so an expired client
//! certificate or a key that does not belong to it is a clear error before
//! any connection is tried, not a handshake failure from the broker.

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// A certificate or key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// A file could not be read.
    Read(String),
    /// Not PEM, or not a certificate or key.
    Malformed(String),
    /// The client certificate is outside its validity period.
    Expired {
        /// When it stopped (or starts) being valid, as text.
        not_after: String,
    },
    /// The client certificate is not valid yet.
    NotYetValid {
        /// When it becomes valid, as text.
        not_before: String,
    },
    /// The private key does not belong to the certificate.
    KeyMismatch,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read(e) => write!(f, "cannot read TLS file: {e}"),
            TlsError::Malformed(e) => write!(f, "malformed TLS file: {e}"),
            TlsError::Expired { not_after } => {
                write!(f, "client certificate expired on {not_after}")
            }
            TlsError::NotYetValid { not_before } => {
                write!(f, "client certificate not valid before {not_before}")
            }
            TlsError::KeyMismatch => {
                f.write_str("the private key does not match the client certificate")
            }
        }
    }
}

impl std::error::Error for TlsError {}

/// CA, and optionally a client certificate and key, all PEM.
#[derive(Clone)]
pub struct TlsFiles {
    ca_pem: Vec<u8>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("TlsFiles")
            .field("client_auth", &self.client.is_some())
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read(format!("{}: {e}", path.display())))
}

impl TlsFiles {
    /// Loads and checks the files.
    pub fn load(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let client = match client {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        Self::from_pem(read(ca)?, client)
    }

    /// Checks PEM already in memory: the CA parses, the client certificate
    /// is within its validity period and the key belongs to it.
    pub fn from_pem(ca_pem: Vec<u8>, client: Option<(Vec<u8>, Vec<u8>)>) -> Result<Self, TlsError> {
        x509_parser::pem::parse_x509_pem(&ca_pem)
            .map_err(|e| TlsError::Malformed(format!("CA certificate: {e}")))?;
        if let Some((cert, key)) = &client {
            check_client(cert, key)?;
        }
        Ok(TlsFiles { ca_pem, client })
    }

    /// The common name in the client certificate's subject: the identity a
    /// broker configured by [`crate::acl::mosquitto_conf`] knows this
    /// client by (a device's id, or `{tenant}/{device-id}`). `None`
    /// without a client certificate or a common name.
    pub fn client_identity(&self) -> Option<String> {
        let (cert, _) = self.client.as_ref()?;
        common_name(cert)
    }

    /// The rumqttc configuration.
    pub fn to_rumqttc(&self) -> rumqttc::TlsConfiguration {
        rumqttc::TlsConfiguration::Simple {
            ca: self.ca_pem.clone(),
            alpn: None,
            client_auth: self.client.clone(),
        }
    }
}

fn common_name(cert_pem: &[u8]) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Checks a client certificate and key as [`TlsFiles::from_pem`] does
/// (valid now, the key its own) and returns the common name it gives.
pub fn check_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<Option<String>, TlsError> {
    check_client(cert_pem, key_pem)?;
    Ok(common_name(cert_pem))
}

fn check_client(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem)
        .map_err(|e| TlsError::Malformed(format!("client certificate: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| TlsError::Malformed(format!("client certificate: {e}")))?;
    let validity = cert.validity();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if now > validity.not_after.timestamp() {
        return Err(TlsError::Expired {
            not_after: validity.not_after.to_string(),
        });
    }
    if now < validity.not_before.timestamp() {
        return Err(TlsError::NotYetValid {
            not_before: validity.not_before.to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Malformed(format!("private key: {e}")))?;
    let signer = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Malformed(format!("private key: {e}")))?;
    match signer.public_key() {
        Some(spki) if spki.as_ref() == cert.public_key().raw => Ok(()),
        Some(_) => Err(TlsError::KeyMismatch),
        // A key type that cannot say its public key: leave it to the handshake.
        None => Ok(()),
    }
}
