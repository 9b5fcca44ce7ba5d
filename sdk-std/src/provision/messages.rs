//! The provisioning exchange on the wire: its topics and messages.
//!
//! Two channels carry the same three steps. A device holding only the
//! fleet's claim certificate uses the claim channel,
//! `lanyard/v1/lanyard-provision/{claim-identity}/{session}/...`, where the
//! broker's ACL puts its certificate's name and its client id; a device
//! with its own certificate renews it on its own channel,
//! `lanyard/v1/{device-id}/cert/...`. Each step is a request on
//! `{channel}/{step}` answered on `{channel}/{step}/accepted` or
//! `{channel}/{step}/rejected`, in the shape of AWS IoT fleet
//! provisioning. Every message is a CBOR map with text keys; see
//! `docs/provisioning.md` and `docs/wire-format.md`.

use std::fmt;

use lanyard_core::topic::{TOPIC_PREFIX, valid_device_id};
use minicbor::Encoder;

use crate::text_map::read_text_map;

/// The address that stands where a device id would for the claim
/// channel: reserved, so no device can be given it.
pub const PROVISION_KEY: &str = "lanyard-provision";

/// Claim certificates name their holder with this prefix: reserved (no
/// device id may start with `lanyard`) and not trusted by the ACL.
pub const CLAIM_PREFIX: &str = "lanyard-claim";

/// The steps of the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A certificate signing request, answered with an ownership token.
    Csr,
    /// The token and the hardware's id, answered with the certificate.
    Register,
    /// The device says it is connected with its new certificate; the older
    /// ones are revoked.
    Confirm,
}

impl Step {
    /// Every step.
    pub const ALL: [Step; 3] = [Step::Csr, Step::Register, Step::Confirm];

    /// The topic level naming it.
    pub const fn name(self) -> &'static str {
        match self {
            Step::Csr => "csr",
            Step::Register => "register",
            Step::Confirm => "confirm",
        }
    }

    fn named(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|step| step.name() == s)
    }
}

/// How a step was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the answer's payload is the step's accepted message.
    Accepted,
    /// Refused: the payload is a [`Rejected`].
    Rejected,
}

impl Outcome {
    /// The topic level naming it.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Where an exchange runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel<'a> {
    /// A device with only the claim certificate.
    Claim {
        /// The claim certificate's common name (starts with
        /// [`CLAIM_PREFIX`]); the broker puts it in the topic.
        identity: &'a str,
        /// The device's MQTT client id on the provisioning listener.
        session: &'a str,
    },
    /// A device renewing its own certificate.
    Device(&'a str),
}

impl Channel<'_> {
    fn prefix(&self) -> String {
        match self {
            Channel::Claim { identity, session } => {
                format!("{TOPIC_PREFIX}{PROVISION_KEY}/{identity}/{session}")
            }
            Channel::Device(id) => format!("{TOPIC_PREFIX}{id}/cert"),
        }
    }

    /// Where the device sends `step`.
    pub fn request(&self, step: Step) -> String {
        format!("{}/{}", self.prefix(), step.name())
    }

    /// Where the service answers `step`.
    pub fn answer(&self, step: Step, outcome: Outcome) -> String {
        format!("{}/{}/{}", self.prefix(), step.name(), outcome.name())
    }
}

/// A request topic: its channel and step. `None` for anything else
/// (answers included).
///
/// ```
/// use lanyard_std::provision::messages::{parse_request, Channel, Step};
/// assert_eq!(
///     parse_request("lanyard/v1/ly-0a0b0c0d0e0f/cert/csr"),
///     Some((Channel::Device("ly-0a0b0c0d0e0f"), Step::Csr))
/// );
/// assert_eq!(
///     parse_request("lanyard/v1/lanyard-provision/lanyard-claim-acme/s1/register"),
///     Some((Channel::Claim { identity: "lanyard-claim-acme", session: "s1" }, Step::Register))
/// );
/// assert_eq!(parse_request("lanyard/v1/ly-0a0b0c0d0e0f/cert/csr/accepted"), None);
/// ```
pub fn parse_request(topic: &str) -> Option<(Channel<'_>, Step)> {
    let rest = topic.strip_prefix(TOPIC_PREFIX)?;
    let levels: Vec<&str> = rest.split('/').collect();
    match levels.as_slice() {
        [key, identity, session, step] if *key == PROVISION_KEY => {
            let claim = identity.starts_with(CLAIM_PREFIX) && !session.is_empty();
            claim.then_some(())?;
            Some((Channel::Claim { identity, session }, Step::named(step)?))
        }
        [id, "cert", step] if valid_device_id(id) => {
            Some((Channel::Device(id), Step::named(step)?))
        }
        _ => None,
    }
}

/// Where an operator asks for a device's certificates to be revoked
/// (only trusted identities may write it: the ACL gives devices no such
/// topic).
pub fn revoke_topic(device: &str) -> String {
    format!("{TOPIC_PREFIX}{device}/cert/revoke")
}

/// Where the service answers a revocation.
pub fn revoke_answer_topic(device: &str) -> String {
    format!("{TOPIC_PREFIX}{device}/cert/revoke/answer")
}

/// The device a revocation request's topic names.
pub fn parse_revoke(topic: &str) -> Option<&str> {
    let id = topic
        .strip_prefix(TOPIC_PREFIX)?
        .strip_suffix("/cert/revoke")?;
    valid_device_id(id).then_some(id)
}

/// The subscriptions a provisioning service needs: the exchange on both
/// channels, operators' revocations, devices' lifecycle events (a device
/// that decommissions itself has its certificates revoked) and the twin
/// host's acceptances of registrations (when a device provisioned by
/// claim gets its initial configuration).
pub fn service_filters() -> Vec<String> {
    let mut out = Vec::new();
    for step in Step::ALL {
        out.push(format!("{TOPIC_PREFIX}{PROVISION_KEY}/+/+/{}", step.name()));
        out.push(format!("{TOPIC_PREFIX}+/cert/{}", step.name()));
    }
    out.push(format!("{TOPIC_PREFIX}+/cert/revoke"));
    use lanyard_core::agent::messages::MessageKind;
    for kind in [MessageKind::Lifecycle, MessageKind::RegisterAccepted] {
        out.push(format!("{TOPIC_PREFIX}+/{}", kind.topic_suffix()));
    }
    out
}

/// An operator's revocation: `{"token": tstr, "reason": tstr,
/// "decommission": bool}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeRequest {
    /// Names the answer.
    pub token: String,
    /// Why, for the audit log (`compromised`, `decommissioned`...).
    pub reason: String,
    /// Also refuse the device any new certificate.
    pub decommission: bool,
}

impl RevokeRequest {
    /// The CBOR map.
    pub fn encode(&self) -> Vec<u8> {
        encode(3, |e| {
            e.str("token")?.str(&self.token)?;
            e.str("reason")?.str(&self.reason)?;
            e.str("decommission")?.bool(self.decommission)?;
            Ok(())
        })
    }

    /// Reads what [`RevokeRequest::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut token, mut reason, mut decommission) = (None, None, None);
        read_text_map(bytes, |key, d| {
            match key {
                "token" => token = Some(d.str().ok()?.to_owned()),
                "reason" => reason = Some(d.str().ok()?.to_owned()),
                "decommission" => decommission = Some(d.bool().ok()?),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(RevokeRequest {
            token: token?,
            reason: reason?,
            decommission: decommission?,
        })
    }
}

/// The answer to a [`RevokeRequest`]: `{"token": tstr, ? "revoked": uint,
/// ? "refused": tstr}` (exactly one of the two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeAnswer {
    /// The request's token.
    pub token: String,
    /// How many certificates were revoked, or why none could be.
    pub outcome: Result<u64, String>,
}

impl RevokeAnswer {
    /// The CBOR map.
    pub fn encode(&self) -> Vec<u8> {
        encode(2, |e| {
            e.str("token")?.str(&self.token)?;
            match &self.outcome {
                Ok(n) => e.str("revoked")?.u64(*n)?,
                Err(why) => e.str("refused")?.str(why)?,
            };
            Ok(())
        })
    }

    /// Reads what [`RevokeAnswer::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut token, mut revoked, mut refused) = (None, None, None);
        read_text_map(bytes, |key, d| {
            match key {
                "token" => token = Some(d.str().ok()?.to_owned()),
                "revoked" => revoked = Some(d.u64().ok()?),
                "refused" => refused = Some(d.str().ok()?.to_owned()),
                _ => return Some(false),
            }
            Some(true)
        })?;
        let outcome = match (revoked, refused) {
            (Some(n), None) => Ok(n),
            (None, Some(why)) => Err(why),
            _ => return None,
        };
        Some(RevokeAnswer {
            token: token?,
            outcome,
        })
    }
}

/// Why a step was refused. Each is counted by the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The message does not read.
    Malformed,
    /// The CSR does not parse, its signature is wrong, or it names no valid
    /// device id.
    BadCsr,
    /// The hardware id is not on the fleet's allow-list.
    NotAllowed,
    /// The CSR names another device than the one asking (or than the
    /// allow-list gives this hardware).
    WrongName,
    /// No such ownership token (or one issued on another channel).
    UnknownToken,
    /// The token was used already: a replay.
    TokenUsed,
    /// The token is past its expiry.
    TokenExpired,
    /// The device has credentials already and the fleet does not let the
    /// claim path give it new ones.
    AlreadyProvisioned,
    /// The device was decommissioned: it gets no certificate again.
    Decommissioned,
    /// A confirmation for a certificate the service did not issue to this
    /// device.
    UnknownCertificate,
    /// The service could not do it (its store, its CA): try again later.
    Internal,
}

impl Refusal {
    /// Every refusal.
    pub const ALL: [Refusal; 11] = [
        Refusal::Malformed,
        Refusal::BadCsr,
        Refusal::NotAllowed,
        Refusal::WrongName,
        Refusal::UnknownToken,
        Refusal::TokenUsed,
        Refusal::TokenExpired,
        Refusal::AlreadyProvisioned,
        Refusal::Decommissioned,
        Refusal::UnknownCertificate,
        Refusal::Internal,
    ];

    /// Its name on the wire and in metrics.
    pub const fn code(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::BadCsr => "bad_csr",
            Refusal::NotAllowed => "not_allowed",
            Refusal::WrongName => "wrong_name",
            Refusal::UnknownToken => "unknown_token",
            Refusal::TokenUsed => "token_used",
            Refusal::TokenExpired => "token_expired",
            Refusal::AlreadyProvisioned => "already_provisioned",
            Refusal::Decommissioned => "decommissioned",
            Refusal::UnknownCertificate => "unknown_certificate",
            Refusal::Internal => "internal",
        }
    }

    /// The refusal `code` names.
    pub fn from_code(code: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

fn encode(
    fields: usize,
    write: impl FnOnce(
        &mut Encoder<Vec<u8>>,
    ) -> Result<(), minicbor::encode::Error<std::convert::Infallible>>,
) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = e
        .map(fields as u64)
        .map(|_| ())
        .and_then(|()| write(&mut e));
    e.into_writer()
}

/// A refusal: `{"reason": tstr, "message": tstr}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why, as a code.
    pub reason: Refusal,
    /// Why, for people.
    pub message: String,
}

impl Rejected {
    /// The CBOR map.
    pub fn encode(&self) -> Vec<u8> {
        encode(2, |e| {
            e.str("reason")?.str(self.reason.code())?;
            e.str("message")?.str(&self.message)?;
            Ok(())
        })
    }

    /// Reads what [`Rejected::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut reason, mut message) = (None, None);
        read_text_map(bytes, |key, d| {
            match key {
                "reason" => reason = Refusal::from_code(d.str().ok()?),
                "message" => message = Some(d.str().ok()?.to_owned()),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(Rejected {
            reason: reason?,
            message: message?,
        })
    }
}

/// The first step: `{"csr": bstr}`, a PKCS#10 request (DER) whose subject's
/// common name is the device id asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrRequest {
    /// The request, DER.
    pub csr: Vec<u8>,
}

impl CsrRequest {
    /// The CBOR map.
    pub fn encode(&self) -> Vec<u8> {
        encode(1, |e| {
            e.str("csr")?.bytes(&self.csr)?;
            Ok(())
        })
    }

    /// Reads what [`CsrRequest::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut csr = None;
        read_text_map(bytes, |key, d| {
            match key {
                "csr" => csr = Some(d.bytes().ok()?.to_vec()),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(CsrRequest { csr: csr? })
    }
}

/// The CSR was good: `{"token": tstr, "expires": uint}`. The token stands
/// for the CSR until `expires` (Unix seconds) and serves once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrAccepted {
    /// The ownership token.
    pub token: String,
    /// Unix seconds after which it is refused.
    pub expires: u64,
}

impl CsrAccepted {
    /// The CBOR map.
    pub fn encode(&self) -> Vec<u8> {
        encode(2, |e| {
            e.str("token")?.str(&self.token)?;
            e.str("expires")?.u64(self.expires)?;
            Ok(())
        })
    }

    /// Reads what [`CsrAccepted::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut token, mut expires) = (None, None);
        read_text_map(bytes, |key, d| {
            match key {
                "token" => token = Some(d.str().ok()?.to_owned()),
                "expires" => expires = Some(d.u64().ok()?),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(CsrAccepted {
            token: token?,
            expires: expires?,
        })
    }
}

/// The second step: `{"token": tstr, "hardware": tstr}`. The hardware id
/// (a serial number or a MAC) is what the fleet's allow-list names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// The ownership token from [`CsrAccepted`].
    pub token: String,
    /// The device's serial number or MAC.
    pub hardware: String,
}

impl RegisterRequest {
    /// The CBOR map.
    pub fn encode(&self) -> Vec<u8> {
        encode(2, |e| {
            e.str("token")?.str(&self.token)?;
            e.str("hardware")?.str(&self.hardware)?;
            Ok(())
        })
    }

    /// Reads what [`RegisterRequest::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut token, mut hardware) = (None, None);
        read_text_map(bytes, |key, d| {
            match key {
                "token" => token = Some(d.str().ok()?.to_owned()),
                "hardware" => hardware = Some(d.str().ok()?.to_owned()),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(RegisterRequest {
            token: token?,
            hardware: hardware?,
        })
    }
}

/// The certificate: `{"device": tstr, "certificate": tstr, "serial": tstr,
/// "not_after": uint, "renew_at": uint}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterAccepted {
    /// The device id the certificate names.
    pub device: String,
    /// The certificate, PEM.
    pub certificate: String,
    /// Its serial number, hex: what [`ConfirmRequest`] names.
    pub serial: String,
    /// Unix seconds when it expires.
    pub not_after: u64,
    /// Unix seconds from which the device should renew it.
    pub renew_at: u64,
}

impl RegisterAccepted {
    /// The CBOR map.
    pub fn encode(&self) -> Vec<u8> {
        encode(5, |e| {
            e.str("device")?.str(&self.device)?;
            e.str("certificate")?.str(&self.certificate)?;
            e.str("serial")?.str(&self.serial)?;
            e.str("not_after")?.u64(self.not_after)?;
            e.str("renew_at")?.u64(self.renew_at)?;
            Ok(())
        })
    }

    /// Reads what [`RegisterAccepted::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (mut device, mut certificate, mut serial) = (None, None, None);
        let (mut not_after, mut renew_at) = (None, None);
        read_text_map(bytes, |key, d| {
            match key {
                "device" => device = Some(d.str().ok()?.to_owned()),
                "certificate" => certificate = Some(d.str().ok()?.to_owned()),
                "serial" => serial = Some(d.str().ok()?.to_owned()),
                "not_after" => not_after = Some(d.u64().ok()?),
                "renew_at" => renew_at = Some(d.u64().ok()?),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(RegisterAccepted {
            device: device?,
            certificate: certificate?,
            serial: serial?,
            not_after: not_after?,
            renew_at: renew_at?,
        })
    }
}

/// The third step: `{"serial": tstr}`, the certificate the device is now
/// connected with. Answered on `confirm/accepted` with the same map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmRequest {
    /// The serial number, hex, from [`RegisterAccepted`].
    pub serial: String,
}

impl ConfirmRequest {
    /// The CBOR map.
    pub fn encode(&self) -> Vec<u8> {
        encode(1, |e| {
            e.str("serial")?.str(&self.serial)?;
            Ok(())
        })
    }

    /// Reads what [`ConfirmRequest::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut serial = None;
        read_text_map(bytes, |key, d| {
            match key {
                "serial" => serial = Some(d.str().ok()?.to_owned()),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(ConfirmRequest { serial: serial? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_and_refuse_trailing_bytes() {
        let r = RegisterAccepted {
            device: "ly-0a0b0c0d0e0f".into(),
            certificate: "-----BEGIN CERTIFICATE-----".into(),
            serial: "7f01".into(),
            not_after: 1_900_000_000,
            renew_at: 1_890_000_000,
        };
        assert_eq!(RegisterAccepted::decode(&r.encode()), Some(r.clone()));
        let mut long = r.encode();
        long.push(0);
        assert_eq!(RegisterAccepted::decode(&long), None);
        let rej = Rejected {
            reason: Refusal::TokenUsed,
            message: "used".into(),
        };
        assert_eq!(Rejected::decode(&rej.encode()), Some(rej));
        assert_eq!(
            CsrRequest::decode(
                &RegisterRequest {
                    token: "t".into(),
                    hardware: "h".into()
                }
                .encode()
            ),
            None
        );
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_code(r.code()), Some(r));
        }
    }

    #[test]
    fn the_refusal_in_the_wire_format_document_is_what_is_sent() {
        let r = Rejected {
            reason: Refusal::TokenUsed,
            message: "this ownership token was used already".into(),
        };
        let hex: String = r.encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "a266726561736f6e6a746f6b656e5f75736564676d657373616765782574686973206f776e6572\
             7368697020746f6b656e20776173207573656420616c7265616479"
        );
    }

    #[test]
    fn topics_parse_back_and_others_do_not() {
        let claim = Channel::Claim {
            identity: "lanyard-claim-acme",
            session: "c1",
        };
        for step in Step::ALL {
            assert_eq!(parse_request(&claim.request(step)), Some((claim, step)));
            let dev = Channel::Device("ly-0a0b0c0d0e0f");
            assert_eq!(parse_request(&dev.request(step)), Some((dev, step)));
            assert_eq!(parse_request(&dev.answer(step, Outcome::Accepted)), None);
        }
        // Only claim identities use the claim channel; only devices their own.
        assert_eq!(
            parse_request("lanyard/v1/lanyard-provision/ly-1/c1/csr"),
            None
        );
        assert_eq!(parse_request("lanyard/v1/lanyard-twin/cert/csr"), None);
        assert_eq!(parse_request("lanyard/v1/ly-1/cert/renew"), None);
    }
}
