//! Credentials over a device's life, on the device's side: provisioning by
//! claim ([`claim`]), renewal before expiry ([`renew`], [`Renewal`]) and
//! the confirmation that revokes the old certificate ([`confirm`]). The
//! key pair is made here (`rcgen`, ECDSA P-256) and never leaves the
//! device; the service sees only the signing request.
//!
//! Every exchange runs on its own short connection to the broker's
//! provisioning listener (see [`crate::acl::BrokerFiles::provision_port`]),
//! where a client keeps its own client id: the device's main connection
//! and its persistent session are never touched, and a renewed
//! certificate is put to use on it with a
//! [`CredentialSwitch`](crate::mqtt::CredentialSwitch).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use minicbor::Encoder;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use lanyard_core::agent::platform::{StorageError, StorageSlot};

use crate::data_key::DataKey;
use crate::mqtt::{CredentialSwitch, MqttConfig, MqttTransport};
use crate::provision::messages::{
    Channel, ConfirmRequest, CsrAccepted, CsrRequest, Outcome, RegisterAccepted, RegisterRequest,
    Rejected, Step,
};
use crate::store::{FileStore, PENDING_CREDENTIALS_FILE};
use crate::text_map::read_text_map;
use crate::tls::{TlsError, TlsFiles};
use crate::transport::{Qos, Transport, TransportError, TransportEvent};

/// Why credentials could not be obtained, renewed or read.
#[derive(Debug)]
pub enum CredentialError {
    /// A certificate or key is unusable (an expired claim certificate, say).
    Tls(TlsError),
    /// The provisioning listener could not be reached or refused the
    /// connection.
    Connect(TransportError),
    /// The provisioning service refused a step, and why.
    Refused(Step, Rejected),
    /// No answer to a step in time.
    NoAnswer(Step),
    /// An answer that does not read, or a certificate that is not for this
    /// device's key or name.
    BadAnswer(String),
    /// The credentials file could not be read or written.
    Store(PathBuf, std::io::Error),
    /// The key pair or signing request could not be made.
    Crypto(String),
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialError::Tls(e) => e.fmt(f),
            CredentialError::Connect(e) => write!(f, "provisioning listener: {e}"),
            CredentialError::Refused(step, r) => write!(
                f,
                "the provisioning service refused the {} step ({}): {}",
                step.name(),
                r.reason,
                r.message
            ),
            CredentialError::NoAnswer(step) => write!(
                f,
                "no answer to the {} step: is `lanyard provision` running on this broker?",
                step.name()
            ),
            CredentialError::BadAnswer(e) => write!(f, "provisioning answer: {e}"),
            CredentialError::Store(p, e) => write!(f, "{}: {e}", p.display()),
            CredentialError::Crypto(e) => write!(f, "key pair: {e}"),
        }
    }
}

impl std::error::Error for CredentialError {}

/// A device's own key and certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The device id the certificate names.
    pub device: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
    /// The certificate's serial number, hex.
    pub serial: String,
    /// Unix seconds it expires.
    pub not_after: u64,
    /// Unix seconds from which to renew it.
    pub renew_at: u64,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Credentials")
            .field("device", &self.device)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("renew_at", &self.renew_at)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The TLS files for a connection with them, trusting `ca_pem`.
    pub fn tls(&self, ca_pem: &[u8]) -> Result<TlsFiles, TlsError> {
        TlsFiles::from_pem(
            ca_pem.to_vec(),
            Some((
                self.cert_pem.clone().into_bytes(),
                self.key_pem.clone().into_bytes(),
            )),
        )
    }

    /// What the service issued, as it sent it.
    fn issued(&self) -> RegisterAccepted {
        RegisterAccepted {
            device: self.device.clone(),
            certificate: self.cert_pem.clone(),
            serial: self.serial.clone(),
            not_after: self.not_after,
            renew_at: self.renew_at,
        }
    }

    fn with_key(issued: RegisterAccepted, key_pem: String) -> Self {
        Credentials {
            device: issued.device,
            cert_pem: issued.certificate,
            key_pem,
            serial: issued.serial,
            not_after: issued.not_after,
            renew_at: issued.renew_at,
        }
    }

    /// The stored record: `{"issued": register-accepted, "key": tstr}`.
    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        // Writing to a Vec cannot fail.
        let _ = e
            .map(2)
            .and_then(|e| e.str("issued")?.bytes(&self.issued().encode()))
            .and_then(|e| e.str("key")?.str(&self.key_pem));
        e.into_writer()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut issued, mut key_pem) = (None, None);
        read_text_map(bytes, |key, d| {
            match key {
                "issued" => issued = Some(RegisterAccepted::decode(d.bytes().ok()?)?),
                "key" => key_pem = Some(d.str().ok()?.to_owned()),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(Credentials::with_key(issued?, key_pem?))
    }
}

/// Where a device keeps its credentials: the credentials slot of its
/// state directory's [`FileStore`], encrypted under its data key (so that
/// decommissioning, which destroys the key, leaves them unreadable), and a
/// second file for renewed ones not confirmed yet. Each file is written
/// whole (a crash leaves the old one or the new one) and readable by its
/// owner only; a damaged one is an error, never silently replaced.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    files: FileStore,
}

fn stored(path: &Path) -> impl Fn(StorageError) -> CredentialError + '_ {
    move |e| {
        let why = match e {
            StorageError::Corrupt => "damaged, or sealed by a data key that is gone",
            _ => "cannot be read or written",
        };
        CredentialError::Store(path.to_owned(), std::io::Error::other(why))
    }
}

impl CredentialStore {
    /// Uses the state directory `dir` (created if missing) and `key`.
    pub fn open(dir: &Path, key: DataKey) -> Result<Self, CredentialError> {
        let files = FileStore::encrypted(dir, key)
            .map_err(|e| CredentialError::Store(dir.to_owned(), e))?;
        Ok(CredentialStore { files })
    }

    fn current_path(&self) -> PathBuf {
        self.files.path(StorageSlot::Credentials)
    }

    fn pending_path(&self) -> PathBuf {
        self.files.dir().join(PENDING_CREDENTIALS_FILE)
    }

    fn read(&self, path: &Path) -> Result<Option<Credentials>, CredentialError> {
        let Some(bytes) = self.files.read_record(path).map_err(stored(path))? else {
            return Ok(None);
        };
        Credentials::decode(&bytes).map(Some).ok_or_else(|| {
            CredentialError::Store(
                path.to_owned(),
                std::io::Error::other("not a credentials record"),
            )
        })
    }

    fn write(&self, path: &Path, c: &Credentials) -> Result<(), CredentialError> {
        self.files
            .write_record(path, &c.encode())
            .map_err(stored(path))
    }

    /// The credentials in use, if any.
    pub fn current(&self) -> Result<Option<Credentials>, CredentialError> {
        self.read(&self.current_path())
    }

    /// Renewed credentials not confirmed yet, if any.
    pub fn pending(&self) -> Result<Option<Credentials>, CredentialError> {
        self.read(&self.pending_path())
    }

    /// Keeps `c` as the credentials in use (after provisioning by claim).
    pub fn save_current(&self, c: &Credentials) -> Result<(), CredentialError> {
        self.write(&self.current_path(), c)?;
        self.drop_pending()
    }

    /// Keeps renewed credentials until they are confirmed.
    pub fn save_pending(&self, c: &Credentials) -> Result<(), CredentialError> {
        self.write(&self.pending_path(), c)
    }

    /// Forgets renewed credentials that did not work.
    pub fn drop_pending(&self) -> Result<(), CredentialError> {
        let path = self.pending_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CredentialError::Store(path, e)),
        }
    }

    /// The renewed credentials become the ones in use (one rename: a crash
    /// leaves one or the other).
    pub fn promote(&self) -> Result<(), CredentialError> {
        let (from, to) = (self.pending_path(), self.current_path());
        std::fs::rename(&from, &to).map_err(|e| CredentialError::Store(from, e))
    }
}

/// The broker's provisioning listener.
#[derive(Debug, Clone)]
pub struct ProvisionEndpoint {
    /// Host name (as the broker's certificate names it).
    pub host: String,
    /// The provisioning listener's port.
    pub port: u16,
    /// The fleet CA certificate, PEM.
    pub ca_pem: Vec<u8>,
    /// How long to wait for each answer.
    pub timeout: Duration,
}

fn session_id(prefix: &str) -> String {
    format!("{prefix}-{}", crate::hex::random_hex(8))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ProvisionEndpoint {
    async fn connect(
        &self,
        tls: &TlsFiles,
        client_id: &str,
    ) -> Result<MqttTransport, CredentialError> {
        let mut config = MqttConfig::new(self.host.clone(), self.port, client_id);
        config.tls = Some(tls.to_rumqttc());
        config.persistent_session = false;
        MqttTransport::connect_and_wait(config, self.timeout)
            .await
            .map_err(CredentialError::Connect)
    }
}

/// Sends `step` on `channel` and waits for its answer: the accepted
/// payload, or the refusal.
async fn exchange<T: Transport>(
    t: &mut T,
    channel: &Channel<'_>,
    step: Step,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CredentialError> {
    let accepted = channel.answer(step, Outcome::Accepted);
    let rejected = channel.answer(step, Outcome::Rejected);
    for f in [&accepted, &rejected] {
        t.subscribe(f).await.map_err(CredentialError::Connect)?;
    }
    t.publish(&channel.request(step), payload, Qos::AtLeastOnce)
        .await
        .map_err(CredentialError::Connect)?;
    let wait = async {
        loop {
            match t.recv().await {
                Ok(TransportEvent::Message { topic, payload }) if topic == accepted => {
                    return Ok(payload);
                }
                Ok(TransportEvent::Message { topic, payload }) if topic == rejected => {
                    let r = Rejected::decode(&payload).ok_or_else(|| {
                        CredentialError::BadAnswer("a refusal that does not read".into())
                    })?;
                    return Err(CredentialError::Refused(step, r));
                }
                Ok(_) => {}
                Err(e) => return Err(CredentialError::Connect(e)),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| CredentialError::NoAnswer(step))?
}

/// A new key pair, a signing request for `device`, and the two steps that
/// turn it into a certificate.
async fn obtain<T: Transport>(
    t: &mut T,
    channel: &Channel<'_>,
    device: &str,
    hardware: &str,
    timeout: Duration,
) -> Result<Credentials, CredentialError> {
    let key = KeyPair::generate().map_err(|e| CredentialError::Crypto(e.to_string()))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| CredentialError::Crypto(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, device);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CredentialError::Crypto(e.to_string()))?;
    let answer = exchange(
        t,
        channel,
        Step::Csr,
        &CsrRequest {
            csr: csr.der().to_vec(),
        }
        .encode(),
        timeout,
    )
    .await?;
    let token = CsrAccepted::decode(&answer)
        .ok_or_else(|| CredentialError::BadAnswer("csr/accepted does not read".into()))?;
    let answer = exchange(
        t,
        channel,
        Step::Register,
        &RegisterRequest {
            token: token.token,
            hardware: hardware.to_owned(),
        }
        .encode(),
        timeout,
    )
    .await?;
    let issued = RegisterAccepted::decode(&answer)
        .ok_or_else(|| CredentialError::BadAnswer("register/accepted does not read".into()))?;
    let creds = Credentials::with_key(issued, key.serialize_pem());
    // The certificate must be for this key (else TLS fails later, less
    // clearly) and this device.
    let named = crate::tls::check_pair(creds.cert_pem.as_bytes(), creds.key_pem.as_bytes())
        .map_err(|e| CredentialError::BadAnswer(format!("the certificate issued: {e}")))?;
    if named.as_deref() != Some(device) || creds.device != device {
        return Err(CredentialError::BadAnswer(format!(
            "the certificate issued is not for {device}"
        )));
    }
    Ok(creds)
}

/// Provisions a device by claim: connects to `endpoint` with the fleet's
/// claim certificate, asks for a certificate naming `device` for a new key
/// pair, and registers with `hardware` (its serial number or MAC, as the
/// fleet's allow-list names it). The caller keeps the result
/// ([`CredentialStore::save_current`]) and connects with it.
pub async fn claim(
    endpoint: &ProvisionEndpoint,
    claim: &TlsFiles,
    device: &str,
    hardware: &str,
) -> Result<Credentials, CredentialError> {
    let identity = claim.client_identity().ok_or_else(|| {
        CredentialError::Tls(TlsError::Malformed(
            "the claim certificate names no one".into(),
        ))
    })?;
    let session = session_id("c");
    let mut t = endpoint.connect(claim, &session).await?;
    let channel = Channel::Claim {
        identity: &identity,
        session: &session,
    };
    let out = obtain(&mut t, &channel, device, hardware, endpoint.timeout).await;
    t.disconnect().await;
    out
}

/// Whether credentials came from the store or were just obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Kept from before.
    Kept,
    /// Provisioned by claim now (none were kept, or they had expired).
    Claimed,
}

/// A device's credentials at start: those kept in `store` while they are
/// valid, else new ones by claim (kept in `store` before they are
/// returned).
pub async fn load_or_claim(
    endpoint: &ProvisionEndpoint,
    claim_files: &TlsFiles,
    store: &CredentialStore,
    device: &str,
    hardware: &str,
) -> Result<(Credentials, Origin), CredentialError> {
    if let Some(c) = store.current()? {
        if c.not_after > now_secs() && c.device == device {
            return Ok((c, Origin::Kept));
        }
    }
    let creds = claim(endpoint, claim_files, device, hardware).await?;
    store.save_current(&creds)?;
    // Connecting with it shows it works; the service records it in use. A
    // failure here is not the device's: it has its certificate, and the
    // first renewal confirms the next one.
    let _ = confirm(endpoint, &creds).await;
    Ok((creds, Origin::Claimed))
}

/// Renews `current` before it expires: a new key pair and certificate by
/// the same steps, on the device's own channel, over a short connection
/// with the current certificate. The old one stays valid until
/// [`confirm`].
pub async fn renew(
    endpoint: &ProvisionEndpoint,
    current: &Credentials,
) -> Result<Credentials, CredentialError> {
    let tls = current
        .tls(&endpoint.ca_pem)
        .map_err(CredentialError::Tls)?;
    let mut t = endpoint.connect(&tls, &session_id(&current.device)).await?;
    let channel = Channel::Device(&current.device);
    let out = obtain(&mut t, &channel, &current.device, "", endpoint.timeout).await;
    t.disconnect().await;
    out
}

/// Tells the service that `creds` are in use (connecting with them shows
/// they work): it revokes the device's older certificates.
pub async fn confirm(
    endpoint: &ProvisionEndpoint,
    creds: &Credentials,
) -> Result<(), CredentialError> {
    let tls = creds.tls(&endpoint.ca_pem).map_err(CredentialError::Tls)?;
    let mut t = endpoint.connect(&tls, &session_id(&creds.device)).await?;
    let channel = Channel::Device(&creds.device);
    let out = exchange(
        &mut t,
        &channel,
        Step::Confirm,
        &ConfirmRequest {
            serial: creds.serial.clone(),
        }
        .encode(),
        endpoint.timeout,
    )
    .await
    .map(|_| ());
    t.disconnect().await;
    out
}

/// What a renewal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewalEvent {
    /// New credentials are in use and confirmed (their serial).
    Renewed(String),
    /// A renewal failed; it is tried again later.
    Failed(String),
}

/// Keeps a running device's certificate fresh: at its renewal time it
/// renews it, switches the device's connection to the new one, confirms
/// it, and keeps it; on failure it keeps the old one and tries again
/// (every `retry`, until the old one expires).
#[derive(Debug)]
pub struct Renewal {
    /// The provisioning listener.
    pub endpoint: ProvisionEndpoint,
    /// Where the credentials are kept.
    pub store: CredentialStore,
    /// The running device's connection.
    pub switch: CredentialSwitch,
    /// How long to wait before trying a failed renewal again.
    pub retry: Duration,
}

impl Renewal {
    /// One renewal, now.
    pub async fn renew_now(&self) -> Result<Credentials, CredentialError> {
        let current = self.store.current()?.ok_or_else(|| {
            CredentialError::Store(
                self.store.current_path(),
                std::io::Error::other("no credentials to renew"),
            )
        })?;
        // One left from a renewal cut short is not trusted: make a new one.
        let fresh = renew(&self.endpoint, &current).await?;
        self.store.save_pending(&fresh)?;
        let tls = fresh
            .tls(&self.endpoint.ca_pem)
            .map_err(CredentialError::Tls)?;
        if !self
            .switch
            .switch(tls.to_rumqttc(), self.endpoint.timeout)
            .await
        {
            let old = current
                .tls(&self.endpoint.ca_pem)
                .map_err(CredentialError::Tls)?;
            self.switch
                .switch(old.to_rumqttc(), self.endpoint.timeout)
                .await;
            self.store.drop_pending()?;
            return Err(CredentialError::BadAnswer(
                "the broker did not take the renewed certificate: kept the old one".into(),
            ));
        }
        confirm(&self.endpoint, &fresh).await?;
        self.store.promote()?;
        Ok(fresh)
    }

    /// Renews whenever due until `stop`, telling `events` what happened.
    pub async fn run(
        self,
        events: tokio::sync::mpsc::UnboundedSender<RenewalEvent>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut failed = false;
        loop {
            let due = match self.store.current() {
                Ok(Some(c)) => c.renew_at,
                Ok(None) => return,
                Err(e) => {
                    let _ = events.send(RenewalEvent::Failed(e.to_string()));
                    return;
                }
            };
            let wait = if failed {
                self.retry
            } else {
                Duration::from_secs(due.saturating_sub(now_secs()))
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.renew_now().await {
                Ok(c) => {
                    failed = false;
                    let _ = events.send(RenewalEvent::Renewed(c.serial));
                }
                Err(e) => {
                    failed = true;
                    let _ = events.send(RenewalEvent::Failed(e.to_string()));
                }
            }
        }
    }
}
