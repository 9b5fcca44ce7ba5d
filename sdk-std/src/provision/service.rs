//! The provisioning service: it answers the exchange of
//! [`messages`](super::messages), decides with the fleet's
//! [`ProvisionPolicy`], signs with the fleet's [`Authority`], and keeps
//! what it issued and revoked in SQLite (`provision.db`), so that a
//! restart forgets no token, certificate or revocation. The revocation
//! list it writes is what the broker reads (`crlfile`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use lanyard_core::topic::valid_device_id;
use rcgen::{CertificateSigningRequestParams, DnType, DnValue};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::authority::{Authority, AuthorityError};
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::agent::messages::{LifecycleEvent, MessageKind};

use super::messages::{
    Channel, ConfirmRequest, CsrAccepted, CsrRequest, Outcome, Refusal, RegisterAccepted,
    RegisterRequest, Rejected, RevokeAnswer, RevokeRequest, Step, parse_request,
    revoke_answer_topic,
};
use crate::audit::{AuditAction, AuditLog};
use crate::transport::{Qos, Transport, TransportError, TransportEvent};

/// Which hardware may provision itself, and the device id each becomes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    devices: HashMap<String, String>,
}

/// A line of an allow-list that does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAllowList {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: String,
}

impl fmt::Display for BadAllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "allow-list line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for BadAllowList {}

/// The device id a MAC (`0a:0b:0c:0d:0e:0f` or `0a0b0c0d0e0f`) gives, as
/// a device built on the agent names itself.
pub fn device_id_for_mac(mac: &str) -> Option<String> {
    let hex: String = mac.chars().filter(|c| *c != ':' && *c != '-').collect();
    if hex.len() != 12 {
        return None;
    }
    let mut bytes = [0u8; 6];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(
        lanyard_core::agent::device_id_from_mac(bytes)
            .as_str()
            .to_owned(),
    )
}

impl AllowList {
    /// Reads one entry a line: `hardware [device-id]`; without a device id
    /// the hardware id must be a MAC and the device id is the one the agent
    /// derives from it. `#` starts a comment.
    ///
    /// ```
    /// use lanyard_std::provision::AllowList;
    /// let list = AllowList::parse("0a:0b:0c:0d:0e:0f\nSN-1234 pump-7 # the pump\n").unwrap();
    /// assert_eq!(list.device_for("0a:0b:0c:0d:0e:0f"), Some("ly-0a0b0c0d0e0f"));
    /// assert_eq!(list.device_for("SN-1234"), Some("pump-7"));
    /// assert!(AllowList::parse("SN-1234\n").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, BadAllowList> {
        let mut devices = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |reason: String| BadAllowList {
                line: i + 1,
                reason,
            };
            let line = line.split('#').next().unwrap_or("").trim();
            let mut words = line.split_whitespace();
            let Some(hardware) = words.next() else {
                continue;
            };
            let device = match words.next() {
                Some(id) => id.to_owned(),
                None => device_id_for_mac(hardware).ok_or_else(|| {
                    bad(format!(
                        "{hardware:?} is not a MAC: give the device id after it"
                    ))
                })?,
            };
            if words.next().is_some() {
                return Err(bad("expected `hardware [device-id]`".into()));
            }
            if !valid_device_id(&device) {
                return Err(bad(format!("{device:?} is not a valid device id")));
            }
            if devices.insert(hardware.to_owned(), device).is_some() {
                return Err(bad(format!("{hardware:?} is listed twice")));
            }
        }
        Ok(AllowList { devices })
    }

    /// The device id `hardware` becomes, if it is listed.
    pub fn device_for(&self, hardware: &str) -> Option<&str> {
        self.devices.get(hardware).map(String::as_str)
    }

    /// How many are listed.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// What the fleet allows.
#[derive(Debug, Clone)]
pub struct ProvisionPolicy {
    /// Who may provision by claim.
    pub allow: AllowList,
    /// How long a certificate is valid (90 days by default).
    pub lifetime_secs: u64,
    /// How far into its life a certificate is renewed, in percent (67:
    /// two thirds).
    pub renew_at_percent: u8,
    /// How long an ownership token stands (5 minutes).
    pub token_secs: u64,
    /// Whether a device that has credentials already may get new ones
    /// through the claim path (one offline past its certificate's expiry
    /// recovers this way).
    pub reclaim: bool,
    /// The configuration a device provisioned by claim starts with: sent
    /// once, when the twin host first accepts its registration (its
    /// version must be newer than the device's own, 1 for the defaults).
    pub initial_config: Option<lanyard_core::agent::config::ConfigPatch>,
}

impl ProvisionPolicy {
    /// 90-day certificates renewed at two thirds, 5-minute tokens, no
    /// reclaim.
    pub fn new(allow: AllowList) -> Self {
        ProvisionPolicy {
            allow,
            lifetime_secs: 90 * 86_400,
            renew_at_percent: 67,
            token_secs: 300,
            reclaim: false,
            initial_config: None,
        }
    }
}

/// The state of a certificate the service issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    /// Issued, not confirmed in use yet.
    Issued,
    /// The device confirmed it connects with it.
    InUse,
    /// Revoked: in the revocation list.
    Revoked,
}

impl CertState {
    /// Its name in the records and listings.
    pub fn name(self) -> &'static str {
        match self {
            CertState::Issued => "issued",
            CertState::InUse => "in_use",
            CertState::Revoked => "revoked",
        }
    }

    fn named(s: &str) -> CertState {
        match s {
            "in_use" => CertState::InUse,
            "revoked" => CertState::Revoked,
            _ => CertState::Issued,
        }
    }
}

/// A certificate in the service's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// Serial number, hex.
    pub serial: String,
    /// The device it names.
    pub device: String,
    /// Unix seconds it was issued.
    pub issued_at: u64,
    /// Unix seconds it expires.
    pub not_after: u64,
    /// Its state.
    pub state: CertState,
}

/// The service failed (its store, its CA): not a device's fault.
#[derive(Debug)]
pub enum ServiceError {
    /// The SQLite store.
    Store(rusqlite::Error),
    /// The CA.
    Authority(AuthorityError),
    /// A file (the revocation list, the audit log).
    Io(PathBuf, std::io::Error),
    /// The broker.
    Transport(TransportError),
    /// No such device in the records.
    UnknownDevice(String),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::Store(e) => write!(f, "provisioning store: {e}"),
            ServiceError::Authority(e) => e.fmt(f),
            ServiceError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            ServiceError::Transport(e) => write!(f, "provisioning service: {e}"),
            ServiceError::UnknownDevice(d) => write!(f, "no certificate was issued to {d:?}"),
        }
    }
}

impl std::error::Error for ServiceError {}

impl From<rusqlite::Error> for ServiceError {
    fn from(e: rusqlite::Error) -> Self {
        ServiceError::Store(e)
    }
}

impl From<AuthorityError> for ServiceError {
    fn from(e: AuthorityError) -> Self {
        ServiceError::Authority(e)
    }
}

/// Outstanding tokens at most: a peer sending signing requests without end
/// is refused past this, rather than growing the store.
pub const MAX_OPEN_TOKENS: u64 = 10_000;

/// How long a revocation list is valid: the service writes a new one at
/// start and every day, well before. A broker holding an expired list
/// refuses every client, so this is generous.
const CRL_VALID_SECS: u64 = 30 * 86_400;

/// What handling one message did.
#[derive(Debug, Default)]
pub struct Handled {
    /// Answers to publish: topic and payload.
    pub answers: Vec<(String, Vec<u8>)>,
    /// Whether certificates were revoked: the revocation list was written
    /// again and the broker should reload it.
    pub revoked: bool,
}

/// The provisioning service's state.
pub struct Provisioner {
    ca: Authority,
    policy: ProvisionPolicy,
    db: Connection,
    crl_path: PathBuf,
    audit: AuditLog,
}

impl fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provisioner")
            .field("crl_path", &self.crl_path)
            .finish_non_exhaustive()
    }
}

/// Its name as the service's audit entries give it.
const ACTOR: &str = "lanyard-provision";

fn refusal(reason: Refusal, message: impl Into<String>) -> Rejected {
    Rejected {
        reason,
        message: message.into(),
    }
}

fn common_name(csr: &CertificateSigningRequestParams) -> Option<String> {
    match csr.params.distinguished_name.get(&DnType::CommonName)? {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn channel_key(c: &Channel<'_>) -> String {
    match c {
        Channel::Claim { identity, session } => format!("claim:{identity}:{session}"),
        Channel::Device(id) => format!("device:{id}"),
    }
}

impl Provisioner {
    /// Opens (or makes) the records in `state_dir` (`provision.db`,
    /// `audit.log`) and writes the revocation list to `crl_path`.
    pub fn open(
        ca: Authority,
        policy: ProvisionPolicy,
        state_dir: &Path,
        crl_path: &Path,
    ) -> Result<Self, ServiceError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| ServiceError::Io(state_dir.to_owned(), e))?;
        let db = Connection::open(state_dir.join("provision.db"))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS certificates(
                serial TEXT PRIMARY KEY, device TEXT NOT NULL, issued_at INTEGER NOT NULL,
                not_after INTEGER NOT NULL, state TEXT NOT NULL, revoked_at INTEGER);
             CREATE INDEX IF NOT EXISTS certificates_device ON certificates(device);
             CREATE TABLE IF NOT EXISTS devices(
                device TEXT PRIMARY KEY, hardware TEXT NOT NULL, provisioned_at INTEGER NOT NULL,
                decommissioned INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS tokens(
                token TEXT PRIMARY KEY, channel TEXT NOT NULL, device TEXT NOT NULL,
                csr BLOB NOT NULL, expires INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS refusals(code TEXT PRIMARY KEY, count INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS pending_config(device TEXT PRIMARY KEY);
             CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )?;
        let audit_path = state_dir.join("audit.log");
        let audit = AuditLog::open(&audit_path)
            .map_err(|e| ServiceError::Io(audit_path, std::io::Error::other(e.to_string())))?;
        let p = Provisioner {
            ca,
            policy,
            db,
            crl_path: crl_path.to_owned(),
            audit,
        };
        p.write_crl()?;
        Ok(p)
    }

    /// Handles one message on a provisioning topic at `now` (Unix
    /// seconds). Anything else is ignored (no answer).
    pub fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: u64,
    ) -> Result<Handled, ServiceError> {
        if let Some(device) = super::messages::parse_revoke(topic) {
            return self.operator_revoke(device, payload, now);
        }
        match lanyard_core::topic::parse_topic_in(None, topic) {
            Some((device, MessageKind::Lifecycle)) => return self.lifecycle(device, payload, now),
            Some((device, MessageKind::RegisterAccepted)) => return self.registered(device),
            _ => {}
        }
        let Some((channel, step)) = parse_request(topic) else {
            return Ok(Handled::default());
        };
        let mut revoked = false;
        let outcome = match step {
            Step::Csr => self.csr(&channel, payload, now)?.map(|a| a.encode()),
            Step::Register => self.register(&channel, payload, now)?.map(|a| a.encode()),
            Step::Confirm => match self.confirm(&channel, payload, now)? {
                Ok((req, n)) => {
                    revoked = n > 0;
                    Ok(req.encode())
                }
                Err(r) => Err(r),
            },
        };
        let answer = match outcome {
            Ok(bytes) => (channel.answer(step, Outcome::Accepted), bytes),
            Err(rejected) => {
                self.count(rejected.reason)?;
                (channel.answer(step, Outcome::Rejected), rejected.encode())
            }
        };
        if revoked {
            self.write_crl()?;
        }
        Ok(Handled {
            answers: vec![answer],
            revoked,
        })
    }

    /// An operator's revocation (the broker lets only trusted identities
    /// write its topic).
    fn operator_revoke(
        &mut self,
        device: &str,
        payload: &[u8],
        now: u64,
    ) -> Result<Handled, ServiceError> {
        let Some(req) = RevokeRequest::decode(payload) else {
            self.count(Refusal::Malformed)?;
            return Ok(Handled::default());
        };
        let outcome = match self.revoke_device(device, &req.reason, req.decommission, now) {
            Ok(n) => Ok(n as u64),
            Err(ServiceError::UnknownDevice(d)) => Err(format!("no certificate was issued to {d}")),
            Err(e) => return Err(e),
        };
        let revoked = matches!(outcome, Ok(n) if n > 0);
        let answer = RevokeAnswer {
            token: req.token,
            outcome,
        };
        Ok(Handled {
            answers: vec![(revoke_answer_topic(device), answer.encode())],
            revoked,
        })
    }

    /// A device that decommissions itself (an operator's command) has its
    /// certificates revoked and gets no new one.
    fn lifecycle(
        &mut self,
        device: &str,
        payload: &[u8],
        now: u64,
    ) -> Result<Handled, ServiceError> {
        let decommissioned =
            LifecycleEvent::decode(payload).is_ok_and(|e| e.to == LifecycleState::Decommissioned);
        if !decommissioned || self.decommissioned(device)? {
            return Ok(Handled::default());
        }
        let revoked = match self.revoke_device(device, "decommissioned", true, now) {
            Ok(n) => n > 0,
            // Not one of ours (made outside the service and not recorded).
            Err(ServiceError::UnknownDevice(_)) => false,
            Err(e) => return Err(e),
        };
        Ok(Handled {
            answers: Vec::new(),
            revoked,
        })
    }

    /// The twin host accepted a device's registration: one provisioned by
    /// claim gets the fleet's initial configuration now (before, it would
    /// refuse it as unregistered).
    fn registered(&mut self, device: &str) -> Result<Handled, ServiceError> {
        let Some(patch) = &self.policy.initial_config else {
            return Ok(Handled::default());
        };
        let taken = self.db.execute(
            "DELETE FROM pending_config WHERE device = ?1",
            params![device],
        )?;
        if taken == 0 {
            return Ok(Handled::default());
        }
        let mut e = minicbor::Encoder::new(Vec::new());
        // Encoding into a Vec cannot fail.
        let _ = patch.encode_cbor(&mut e);
        let topic = lanyard_core::topic::topic(device, MessageKind::Config).to_string();
        Ok(Handled {
            answers: vec![(topic, e.into_writer())],
            revoked: false,
        })
    }

    fn count(&self, r: Refusal) -> Result<(), ServiceError> {
        self.db.execute(
            "INSERT INTO refusals(code, count) VALUES (?1, 1)
             ON CONFLICT(code) DO UPDATE SET count = count + 1",
            params![r.code()],
        )?;
        Ok(())
    }

    fn decommissioned(&self, device: &str) -> Result<bool, ServiceError> {
        Ok(self
            .db
            .query_row(
                "SELECT decommissioned FROM devices WHERE device = ?1",
                params![device],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some_and(|d| d != 0))
    }

    fn csr(
        &mut self,
        channel: &Channel<'_>,
        payload: &[u8],
        now: u64,
    ) -> Result<Result<CsrAccepted, Rejected>, ServiceError> {
        let Some(req) = CsrRequest::decode(payload) else {
            return Ok(Err(refusal(
                Refusal::Malformed,
                "not a signing request message",
            )));
        };
        let csr = match CertificateSigningRequestParams::from_der(&req.csr.as_slice().into()) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(refusal(
                    Refusal::BadCsr,
                    format!("signing request: {e}"),
                )));
            }
        };
        let Some(name) = common_name(&csr).filter(|n| valid_device_id(n)) else {
            return Ok(Err(refusal(
                Refusal::BadCsr,
                "the signing request's common name must be a valid device id",
            )));
        };
        if let Channel::Device(id) = channel {
            if name != *id {
                return Ok(Err(refusal(
                    Refusal::WrongName,
                    format!("device {id} asked for a certificate for {name}"),
                )));
            }
        }
        if self.decommissioned(&name)? {
            return Ok(Err(refusal(
                Refusal::Decommissioned,
                format!("{name} is decommissioned"),
            )));
        }
        // Tokens that can no longer be used go; a replay of one is then
        // refused as unknown.
        self.db
            .execute("DELETE FROM tokens WHERE expires < ?1", params![now as i64])?;
        let open: i64 = self
            .db
            .query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))?;
        if open as u64 >= MAX_OPEN_TOKENS {
            return Ok(Err(refusal(
                Refusal::Internal,
                "too many provisioning requests in progress: try again later",
            )));
        }
        let token = crate::hex::random_hex(16);
        let expires = now.saturating_add(self.policy.token_secs);
        self.db.execute(
            "INSERT INTO tokens(token, channel, device, csr, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token, channel_key(channel), name, req.csr, expires as i64],
        )?;
        Ok(Ok(CsrAccepted { token, expires }))
    }

    fn register(
        &mut self,
        channel: &Channel<'_>,
        payload: &[u8],
        now: u64,
    ) -> Result<Result<RegisterAccepted, Rejected>, ServiceError> {
        let Some(req) = RegisterRequest::decode(payload) else {
            return Ok(Err(refusal(Refusal::Malformed, "not a register message")));
        };
        let row = self
            .db
            .query_row(
                "SELECT channel, device, csr, expires, used FROM tokens WHERE token = ?1",
                params![req.token],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((token_channel, name, csr_der, expires, used)) = row else {
            return Ok(Err(refusal(
                Refusal::UnknownToken,
                "no such ownership token",
            )));
        };
        if token_channel != channel_key(channel) {
            return Ok(Err(refusal(
                Refusal::UnknownToken,
                "this ownership token was issued to another requester",
            )));
        }
        if used != 0 {
            return Ok(Err(refusal(
                Refusal::TokenUsed,
                "this ownership token was used already",
            )));
        }
        if (expires as u64) < now {
            return Ok(Err(refusal(
                Refusal::TokenExpired,
                "this ownership token has expired",
            )));
        }
        // Spent whatever the answer: a token serves once.
        self.db.execute(
            "UPDATE tokens SET used = 1 WHERE token = ?1",
            params![req.token],
        )?;
        let hardware = match channel {
            Channel::Claim { .. } => {
                let Some(allowed) = self.policy.allow.device_for(&req.hardware) else {
                    return Ok(Err(refusal(
                        Refusal::NotAllowed,
                        format!(
                            "hardware {:?} is not on the fleet's allow-list",
                            req.hardware
                        ),
                    )));
                };
                if allowed != name {
                    return Ok(Err(refusal(
                        Refusal::WrongName,
                        format!(
                            "hardware {:?} is device {allowed}, but its signing request names {name}",
                            req.hardware
                        ),
                    )));
                }
                // Once a device has had a certificate, the claim path is
                // closed to it unless the fleet reopens it (`reclaim`): a
                // valid one renews on its own channel, and one that
                // expired while offline comes back only if allowed.
                let (issued, valid): (i64, i64) = self.db.query_row(
                    "SELECT COUNT(*), COALESCE(SUM(state != 'revoked' AND not_after > ?2), 0)
                     FROM certificates WHERE device = ?1",
                    params![name, now as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if issued > 0 && !self.policy.reclaim {
                    let why = if valid > 0 {
                        format!(
                            "{name} has a valid certificate already; it renews it on its own channel"
                        )
                    } else {
                        format!(
                            "{name} was provisioned before and the fleet does not let it claim again \
                             (the provisioning service's --reclaim)"
                        )
                    };
                    return Ok(Err(refusal(Refusal::AlreadyProvisioned, why)));
                }
                req.hardware.clone()
            }
            Channel::Device(_) => String::new(),
        };
        if self.decommissioned(&name)? {
            return Ok(Err(refusal(
                Refusal::Decommissioned,
                format!("{name} is decommissioned"),
            )));
        }
        let csr = match CertificateSigningRequestParams::from_der(&csr_der.as_slice().into()) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(refusal(
                    Refusal::BadCsr,
                    format!("signing request: {e}"),
                )));
            }
        };
        let issued = self
            .ca
            .sign_request(&csr, &name, self.policy.lifetime_secs)?;
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT INTO certificates(serial, device, issued_at, not_after, state) VALUES (?1, ?2, ?3, ?4, 'issued')",
            params![issued.serial, name, now as i64, issued.not_after as i64],
        )?;
        tx.execute(
            "INSERT INTO devices(device, hardware, provisioned_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(device) DO UPDATE SET hardware = CASE WHEN ?2 = '' THEN hardware ELSE ?2 END",
            params![name, hardware, now as i64],
        )?;
        if matches!(channel, Channel::Claim { .. }) && self.policy.initial_config.is_some() {
            tx.execute(
                "INSERT OR IGNORE INTO pending_config(device) VALUES (?1)",
                params![name],
            )?;
        }
        tx.commit()?;
        let channel_name = match channel {
            Channel::Claim { .. } => "claim",
            Channel::Device(_) => "renewal",
        };
        self.audit.record(
            now * 1000,
            ACTOR,
            AuditAction::CertificateIssued,
            Some(&name),
            json!({"serial": issued.serial, "not_after": issued.not_after, "via": channel_name}),
        );
        self.audit
            .commit()
            .map_err(|e| ServiceError::Io(self.audit.path().to_owned(), e))?;
        // From when it was made, not from its start (a minute earlier for
        // clocks behind): a short lifetime is not due at once.
        let renew_at = now
            + self.policy.lifetime_secs * u64::from(self.policy.renew_at_percent.min(100)) / 100;
        Ok(Ok(RegisterAccepted {
            device: name,
            certificate: issued.pem,
            serial: issued.serial,
            not_after: issued.not_after,
            renew_at,
        }))
    }

    fn confirm(
        &mut self,
        channel: &Channel<'_>,
        payload: &[u8],
        now: u64,
    ) -> Result<Result<(ConfirmRequest, usize), Rejected>, ServiceError> {
        let Some(req) = ConfirmRequest::decode(payload) else {
            return Ok(Err(refusal(Refusal::Malformed, "not a confirm message")));
        };
        let Channel::Device(device) = channel else {
            return Ok(Err(refusal(
                Refusal::UnknownCertificate,
                "a device confirms its certificate on its own channel, connected with it",
            )));
        };
        let found = self
            .db
            .query_row(
                "SELECT issued_at, state FROM certificates WHERE serial = ?1 AND device = ?2",
                params![req.serial, device],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?;
        let Some((issued_at, state)) = found else {
            return Ok(Err(refusal(
                Refusal::UnknownCertificate,
                format!("no certificate {} was issued to {device}", req.serial),
            )));
        };
        if CertState::named(&state) == CertState::Revoked {
            return Ok(Err(refusal(
                Refusal::UnknownCertificate,
                format!("certificate {} is revoked", req.serial),
            )));
        }
        let older = self.older_than(device, &req.serial, issued_at)?;
        let tx = self.db.transaction()?;
        tx.execute(
            "UPDATE certificates SET state = 'in_use' WHERE serial = ?1",
            params![req.serial],
        )?;
        for serial in &older {
            tx.execute(
                "UPDATE certificates SET state = 'revoked', revoked_at = ?2 WHERE serial = ?1",
                params![serial, now as i64],
            )?;
        }
        tx.commit()?;
        for serial in &older {
            self.audit.record(
                now * 1000,
                ACTOR,
                AuditAction::CertificateRevoked,
                Some(device),
                json!({"serial": serial, "reason": "superseded", "by": req.serial}),
            );
        }
        self.audit
            .commit()
            .map_err(|e| ServiceError::Io(self.audit.path().to_owned(), e))?;
        Ok(Ok((req, older.len())))
    }

    /// The device's certificates issued before `issued_at` (or at the same
    /// second, but not `serial`) and not revoked yet.
    fn older_than(
        &self,
        device: &str,
        serial: &str,
        issued_at: i64,
    ) -> Result<Vec<String>, ServiceError> {
        let mut stmt = self.db.prepare(
            "SELECT serial FROM certificates WHERE device = ?1 AND serial != ?2
             AND state != 'revoked' AND issued_at <= ?3",
        )?;
        let rows = stmt.query_map(params![device, serial, issued_at], |r| {
            r.get::<_, String>(0)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes every certificate of `device` (decommissioning, compromise)
    /// and, with `decommission`, refuses it any new one. Writes the
    /// revocation list; the caller makes the broker reload it. Returns how
    /// many were revoked.
    pub fn revoke_device(
        &mut self,
        device: &str,
        reason: &str,
        decommission: bool,
        now: u64,
    ) -> Result<usize, ServiceError> {
        let known: i64 = self.db.query_row(
            "SELECT COUNT(*) FROM certificates WHERE device = ?1",
            params![device],
            |r| r.get(0),
        )?;
        if known == 0 {
            return Err(ServiceError::UnknownDevice(device.to_owned()));
        }
        let serials: Vec<String> = {
            let mut stmt = self.db.prepare(
                "SELECT serial FROM certificates WHERE device = ?1 AND state != 'revoked'",
            )?;
            let rows = stmt.query_map(params![device], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let tx = self.db.transaction()?;
        tx.execute(
            "UPDATE certificates SET state = 'revoked', revoked_at = ?2 WHERE device = ?1 AND state != 'revoked'",
            params![device, now as i64],
        )?;
        if decommission {
            tx.execute(
                "INSERT INTO devices(device, hardware, provisioned_at, decommissioned) VALUES (?1, '', ?2, 1)
                 ON CONFLICT(device) DO UPDATE SET decommissioned = 1",
                params![device, now as i64],
            )?;
        }
        tx.commit()?;
        for serial in &serials {
            self.audit.record(
                now * 1000,
                ACTOR,
                AuditAction::CertificateRevoked,
                Some(device),
                json!({"serial": serial, "reason": reason}),
            );
        }
        self.audit
            .commit()
            .map_err(|e| ServiceError::Io(self.audit.path().to_owned(), e))?;
        self.write_crl()?;
        Ok(serials.len())
    }

    /// Records a certificate issued outside the exchange (`lanyard ca
    /// issue` for a device made at the factory), so that it can be revoked
    /// by device and superseded on renewal.
    pub fn record_issued(
        &mut self,
        device: &str,
        serial: &str,
        not_after: u64,
        now: u64,
    ) -> Result<(), ServiceError> {
        self.db.execute(
            "INSERT OR IGNORE INTO certificates(serial, device, issued_at, not_after, state)
             VALUES (?1, ?2, ?3, ?4, 'in_use')",
            params![serial, device, now as i64, not_after as i64],
        )?;
        Ok(())
    }

    /// Every certificate issued to `device`, oldest first.
    pub fn certificates(&self, device: &str) -> Result<Vec<CertRecord>, ServiceError> {
        let mut stmt = self.db.prepare(
            "SELECT serial, device, issued_at, not_after, state FROM certificates
             WHERE device = ?1 ORDER BY issued_at, rowid",
        )?;
        let rows = stmt.query_map(params![device], |r| {
            Ok(CertRecord {
                serial: r.get(0)?,
                device: r.get(1)?,
                issued_at: r.get::<_, i64>(2)? as u64,
                not_after: r.get::<_, i64>(3)? as u64,
                state: CertState::named(&r.get::<_, String>(4)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many requests were refused, by reason, since the records began.
    pub fn refusals(&self) -> Result<HashMap<Refusal, u64>, ServiceError> {
        let mut stmt = self.db.prepare("SELECT code, count FROM refusals")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = HashMap::new();
        for row in rows {
            let (code, n) = row?;
            if let Some(r) = Refusal::from_code(&code) {
                out.insert(r, n as u64);
            }
        }
        Ok(out)
    }

    /// Writes the revocation list of every revoked certificate not expired
    /// yet, numbered one above the last.
    pub fn write_crl(&self) -> Result<(), ServiceError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let revoked: Vec<(String, u64)> = {
            let mut stmt = self.db.prepare(
                "SELECT serial, revoked_at FROM certificates WHERE state = 'revoked' AND not_after >= ?1",
            )?;
            let rows = stmt.query_map(params![now as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64,
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let number: i64 = self.db.query_row(
            "INSERT INTO meta(key, value) VALUES ('crl_number', 1)
             ON CONFLICT(key) DO UPDATE SET value = value + 1 RETURNING value",
            [],
            |r| r.get(0),
        )?;
        let pem = self
            .ca
            .revocation_list(&revoked, number as u64, CRL_VALID_SECS)?;
        crate::store::write_atomic(&self.crl_path, pem.as_bytes())
            .map_err(|e| ServiceError::Io(self.crl_path.clone(), e))
    }
}

/// How the broker is told to read the revocation list again.
#[derive(Debug, Clone)]
pub enum BrokerReload {
    /// It is not (the operator reloads it).
    Manual,
    /// SIGHUP to the process whose id this file holds (mosquitto's
    /// `pid_file`): mosquitto reads its CRL again on SIGHUP.
    PidFile(PathBuf),
}

impl BrokerReload {
    /// Does it; an error says why not.
    pub fn reload(&self) -> Result<(), String> {
        match self {
            BrokerReload::Manual => Ok(()),
            BrokerReload::PidFile(p) => {
                let pid =
                    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let pid = pid.trim();
                if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("{}: not a process id", p.display()));
                }
                let status = std::process::Command::new("kill")
                    .args(["-HUP", pid])
                    .status()
                    .map_err(|e| format!("kill -HUP {pid}: {e}"))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("kill -HUP {pid}: {status}"))
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves the exchange on `transport` until `stop`: subscribes, answers
/// each request, makes the broker reload the revocation list after a
/// revocation, and writes a fresh list every day. `ready` is told once the
/// broker delivers the service's subscriptions (a request of its own came
/// back), so that devices started after it are not missed.
pub async fn run_provision<T: Transport>(
    service: &mut Provisioner,
    transport: &mut T,
    reload: &BrokerReload,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServiceError> {
    for f in super::messages::service_filters() {
        transport
            .subscribe(&f)
            .await
            .map_err(ServiceError::Transport)?;
    }
    // A claim channel no device can use (the broker puts a claim
    // certificate's name there, and none is this).
    let probe = Channel::Claim {
        identity: &format!("{}-probe", super::messages::CLAIM_PREFIX),
        session: &crate::hex::random_hex(8),
    }
    .request(Step::Confirm);
    transport
        .publish(&probe, b"", Qos::AtLeastOnce)
        .await
        .map_err(ServiceError::Transport)?;
    let mut ready = ready;
    tokio::pin!(stop);
    let mut daily = tokio::time::interval(std::time::Duration::from_secs(86_400));
    daily.tick().await;
    loop {
        let event = tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = daily.tick() => {
                service.write_crl()?;
                if let Err(e) = reload.reload() {
                    tracing::warn!(error = %e, "broker not reloaded");
                }
                continue;
            }
            ev = transport.recv() => ev.map_err(ServiceError::Transport)?,
        };
        let TransportEvent::Message { topic, payload } = event else {
            continue;
        };
        if topic == probe {
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            continue;
        }
        let handled = service.handle(&topic, &payload, unix_now())?;
        for (topic, bytes) in handled.answers {
            transport
                .publish(&topic, &bytes, Qos::AtLeastOnce)
                .await
                .map_err(ServiceError::Transport)?;
        }
        if handled.revoked {
            if let Err(e) = reload.reload() {
                tracing::warn!(error = %e, "broker not reloaded: revoked certificates are still accepted");
            }
        }
    }
}
