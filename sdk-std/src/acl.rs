//! Broker access control for a fleet, keyed on identity: a device is the
//! subject of its certificate, never the client id it claims.
//!
//! [`mosquitto_conf`] writes a mosquitto configuration that requires a
//! client certificate, takes the certificate's common name as the MQTT user
//! name (`use_identity_as_username`) and as the client id
//! (`use_username_as_clientid`, so that nobody can take over another
//! client's session by claiming its id), refuses messages over
//! [`MAX_PAYLOAD`](crate::MAX_PAYLOAD), and points to the ACL that
//! [`mosquitto_acl`] writes: each device may use only its own topics
//! (`%u`, its common name: its device id, or `{tenant}/{device-id}` in a
//! tenant's namespace), and the trusted identities (the twin host,
//! operators) every Lanyard topic. The twin host checks the same rules on
//! its side: it acts only on the device named in the topic, a registration
//! must name the device of its topic, and a device writes only reported
//! state, an app only desired state.
//!
//! Trusted identities must not be valid device ids (they start with
//! `lanyard`, which no device id may: see
//! [`valid_device_id`]), so that no
//! device can ever be issued a certificate that the ACL trusts.

use std::fmt;
use std::path::Path;

use lanyard_core::agent::messages::{MessageKind, TOPIC_PREFIX};
use lanyard_core::topic::{RESERVED_PREFIX, valid_device_id};

/// A trusted identity that could also name a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAServiceName(pub String);

impl fmt::Display for NotAServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trusted identity {:?} must start with {RESERVED_PREFIX:?} and contain no \
             space, '/', '+' or '#' (device ids never start with {RESERVED_PREFIX:?}, so \
             no device can be issued it)",
            self.0
        )
    }
}

impl std::error::Error for NotAServiceName {}

fn check_trusted(trusted: &[&str]) -> Result<(), NotAServiceName> {
    for t in trusted {
        let reserved = t
            .get(..RESERVED_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX));
        let plain = t
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'+' | b'#'));
        if !reserved || !plain || valid_device_id(t) {
            return Err(NotAServiceName(t.to_string()));
        }
    }
    Ok(())
}

/// The device patterns: each kind written or read by `%u`, the device's
/// identity, under its own address; its certificate's renewal on its own
/// channel; and for a claim certificate's holder, the claim channel under
/// its certificate's name and its client id (a device's own name there
/// is no claim identity, so the provisioning service ignores it).
fn device_patterns(out: &mut String, provisioning: bool) {
    for kind in MessageKind::ALL {
        let access = if kind.from_device() { "write" } else { "read" };
        out.push_str(&format!(
            "pattern {access} {TOPIC_PREFIX}%u/{}\n",
            kind.topic_suffix()
        ));
    }
    // Firmware updates: the device asks for blocks and reports; the
    // cloud offers jobs, sends blocks, cancels.
    for t in lanyard_core::update::messages::UpdateTopic::ALL {
        let access = if t.from_device() { "write" } else { "read" };
        out.push_str(&format!(
            "pattern {access} {TOPIC_PREFIX}%u/{}\n",
            t.suffix()
        ));
    }
    #[cfg(not(feature = "runtime"))]
    let _ = provisioning;
    #[cfg(feature = "runtime")]
    if provisioning {
        use crate::provision::messages::{Channel, Outcome, Step};
        for channel in [
            Channel::Device("%u"),
            Channel::Claim {
                identity: "%u",
                session: "%c",
            },
        ] {
            for step in Step::ALL {
                out.push_str(&format!("pattern write {}\n", channel.request(step)));
                for outcome in [Outcome::Accepted, Outcome::Rejected] {
                    out.push_str(&format!("pattern read {}\n", channel.answer(step, outcome)));
                }
            }
        }
    }
}

/// A mosquitto `acl_file` for a fleet in the shared namespace. Each device
/// connects with its certificate, whose common name is its device id; the
/// broker takes it as user name ([`mosquitto_conf`]), so `%u` in a pattern
/// is the device's own id whatever client id it claims. `trusted` (the
/// twin host's and operators' certificate names) may read and write every
/// Lanyard and AWS shadow topic.
///
/// ```
/// let acl = lanyard_std::acl::mosquitto_acl(&["lanyard-twin"]).unwrap();
/// assert!(acl.contains("pattern write lanyard/v1/%u/shadow/update\n"));
/// assert!(lanyard_std::acl::mosquitto_acl(&["twin"]).is_err());
/// ```
pub fn mosquitto_acl(trusted: &[&str]) -> Result<String, NotAServiceName> {
    check_trusted(trusted)?;
    let mut out = String::from("# Generated by lanyard_std::acl::mosquitto_acl.\n");
    out.push_str("# Devices: their own topics only (user name = the certificate's\n");
    out.push_str("# common name = the device id).\n");
    device_patterns(&mut out, true);
    for user in trusted {
        out.push_str(&format!(
            "\nuser {user}\ntopic readwrite {TOPIC_PREFIX}#\ntopic readwrite $aws/things/#\n"
        ));
    }
    Ok(out)
}

/// Why a service that takes `what` only from `operators` refuses a write
/// by `writer` (the identity its topic names, see
/// [`lanyard_core::topic::split_writer`]), if it does; `topic` shows where
/// an operator's write goes. One rule for the twin host's writes and the
/// rollout service's requests.
pub fn operator_refusal(
    operators: &[String],
    writer: Option<&str>,
    what: &str,
    topic: &str,
) -> Option<String> {
    Some(match writer {
        Some(who) if operators.iter().any(|o| o == who) => return None,
        Some(who) => format!("{who} is not an operator of this fleet"),
        None => format!(
            "this fleet takes {what} only from its operators, on a topic that names them \
             ({topic})"
        ),
    })
}

/// [`mosquitto_acl`], with `operators` who may write only as themselves:
/// each reads every Lanyard topic, asks for shadows, the fleet's listing
/// and raw readings, asks the rollout service for rollouts, and writes
/// desired state, conflict resolutions,
/// re-provisionings, commands and configurations only on topics that name
/// it as their writer (`.../by/{its name}`, [`OPERATOR_WRITES`]). A twin
/// host with an operator list
/// ([`TwinHost::with_operators`](crate::twin::TwinHost::with_operators))
/// takes them from the operators it lists, refuses the others with the
/// reason, and passes commands and configurations on to the devices' own
/// topics, which no operator writes. No operator can write as another
/// one; `trusted` identities (the twin host) still may write everything.
///
/// [`OPERATOR_WRITES`]: lanyard_core::topic::OPERATOR_WRITES
///
/// ```
/// let acl = lanyard_std::acl::mosquitto_fleet_acl(&["lanyard-twin"], &["lanyard-ops"]).unwrap();
/// assert!(acl.contains("\nuser lanyard-ops\n"));
/// assert!(acl.contains("topic write lanyard/v1/+/shadow/desired/by/lanyard-ops\n"));
/// assert!(acl.contains("topic write lanyard/v1/+/cmd/by/lanyard-ops\n"));
/// assert!(!acl.contains("topic write lanyard/v1/+/cmd\n"));
/// assert!(acl.contains("topic write lanyard/v1/lanyard-fleet/ota/request/by/lanyard-ops\n"));
/// assert!(!acl.contains("topic write lanyard/v1/lanyard-fleet/ota/request\n"));
/// ```
pub fn mosquitto_fleet_acl(
    trusted: &[&str],
    operators: &[&str],
) -> Result<String, NotAServiceName> {
    check_trusted(operators)?;
    let mut out = mosquitto_acl(trusted)?;
    use lanyard_core::topic::{AppTopic, FLEET_KEY, Topic};
    for user in operators {
        out.push_str(&format!(
            "\n# An operator: reads everything, writes as itself.\nuser {user}\ntopic read {TOPIC_PREFIX}#\n"
        ));
        for t in [Topic::App(AppTopic::Get), Topic::App(AppTopic::RawReadings)] {
            out.push_str(&format!("topic write {TOPIC_PREFIX}+/{}\n", t.suffix()));
        }
        out.push_str(&format!(
            "topic write {TOPIC_PREFIX}{FLEET_KEY}/{}\n",
            AppTopic::List.suffix()
        ));
        // Rollouts are asked of the rollout service beside the twin host,
        // each request naming its writer, as the other writes do.
        out.push_str(&format!(
            "topic write {}\n",
            crate::ota_messages::RolloutTopic::request_by(user)
        ));
        for w in lanyard_core::topic::OPERATOR_WRITES {
            out.push_str(&format!(
                "topic write {TOPIC_PREFIX}+/{}/{}/{user}\n",
                w.suffix(),
                lanyard_core::topic::BY_LEVEL
            ));
        }
    }
    Ok(out)
}

/// A mosquitto `acl_file` for a broker shared by tenants: a device's
/// certificate names it `{tenant}/{device-id}`, so `%u` in a pattern is
/// its own address in its tenant's namespace, and a device can reach
/// neither another device's topics nor another tenant's (holding a
/// tenant's certificate makes no one any device of that tenant). `trusted`
/// may read and write every tenant's topics.
pub fn mosquitto_tenant_acl(trusted: &[&str]) -> Result<String, NotAServiceName> {
    check_trusted(trusted)?;
    let mut out = String::from("# Generated by lanyard_std::acl::mosquitto_tenant_acl.\n");
    out.push_str("# Devices: their own topics in their tenant's namespace only\n");
    out.push_str("# (user name = the certificate's common name = {tenant}/{device-id}).\n");
    // Provisioning by claim and renewal serve the shared namespace only.
    device_patterns(&mut out, false);
    for user in trusted {
        out.push_str(&format!("\nuser {user}\ntopic readwrite {TOPIC_PREFIX}#\n"));
    }
    Ok(out)
}

/// Where a broker listens and the files it reads.
#[derive(Debug, Clone, Copy)]
pub struct BrokerFiles<'a> {
    /// Address to listen on (`0.0.0.0` for every interface).
    pub bind: &'a str,
    /// Port (8883 is MQTT over TLS).
    pub port: u16,
    /// The fleet CA that signs device and service certificates (PEM).
    pub ca: &'a Path,
    /// The broker's own certificate and key (PEM).
    pub cert: &'a Path,
    /// The broker's key.
    pub key: &'a Path,
    /// The ACL from [`mosquitto_acl`] or [`mosquitto_tenant_acl`].
    pub acl: &'a Path,
    /// A second listener for provisioning: there a client keeps the client
    /// id it gives (devices sharing the claim certificate share its name,
    /// which as client id would knock each other off), while the ACL still
    /// keys on the certificate's name.
    pub provision_port: Option<u16>,
    /// The fleet's revocation list (PEM, `lanyard ca init` writes an empty
    /// one, the provisioning service keeps it): revoked certificates are
    /// refused at the handshake. Mosquitto reads it again on SIGHUP.
    pub crl: Option<&'a Path>,
    /// Where mosquitto writes its process id, for the provisioning
    /// service's `--broker-pid-file` (SIGHUP after a revocation).
    pub pid_file: Option<&'a Path>,
}

/// A mosquitto configuration for a Lanyard fleet: mutual TLS only, the
/// certificate's common name as user name and client id, the ACL, and
/// messages over [`MAX_PAYLOAD`](crate::MAX_PAYLOAD) refused at the
/// broker.
///
/// ```
/// use std::path::Path;
/// let conf = lanyard_std::acl::mosquitto_conf(&lanyard_std::acl::BrokerFiles {
///     bind: "0.0.0.0",
///     port: 8883,
///     ca: Path::new("/etc/lanyard/ca.pem"),
///     cert: Path::new("/etc/lanyard/broker.pem"),
///     key: Path::new("/etc/lanyard/broker.key"),
///     acl: Path::new("/etc/lanyard/acl"),
///     provision_port: Some(8884),
///     crl: Some(Path::new("/etc/lanyard/crl.pem")),
///     pid_file: None,
/// });
/// assert!(conf.contains("listener 8884 0.0.0.0\n"));
/// assert!(conf.contains("crlfile /etc/lanyard/crl.pem\n"));
/// assert!(conf.contains("use_identity_as_username true\n"));
/// ```
pub fn mosquitto_conf(files: &BrokerFiles<'_>) -> String {
    // The largest packet: the largest payload, its topic and the header.
    let max_packet = crate::MAX_PAYLOAD + 1024;
    let crl = files
        .crl
        .map(|p| format!("crlfile {}\n", p.display()))
        .unwrap_or_default();
    let tls = format!(
        "cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         {crl}\
         require_certificate true\n\
         use_identity_as_username true\n",
        ca = files.ca.display(),
        cert = files.cert.display(),
        key = files.key.display(),
    );
    let provision = files
        .provision_port
        .map(|port| {
            format!(
                "# Provisioning and renewal: the client id is the client's own.\n\
                 listener {port} {bind}\n\
                 {tls}",
                bind = files.bind
            )
        })
        .unwrap_or_default();
    let pid = files
        .pid_file
        .map(|p| format!("pid_file {}\n", p.display()))
        .unwrap_or_default();
    format!(
        "# Generated by lanyard_std::acl::mosquitto_conf.\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         {pid}\
         listener {port} {bind}\n\
         {tls}\
         # A client is the subject of its certificate, not the id it claims.\n\
         use_username_as_clientid true\n\
         {provision}\
         acl_file {acl}\n\
         # Larger messages are refused here; clients drop them too.\n\
         max_packet_size {max_packet}\n\
         {BROKER_LIMITS}",
        port = files.port,
        bind = files.bind,
        acl = files.acl.display(),
    )
}

/// Broker settings every Lanyard broker wants, development or not (see
/// `docs/broker.md`): no Nagle delay for its small messages, and room to
/// queue a burst for a client that fell behind.
const BROKER_LIMITS: &str = "# Small messages: no Nagle delay.\n\
     set_tcp_nodelay true\n\
     # A burst (a site rebooting at once) is queued for a client behind, not dropped.\n\
     max_queued_messages 100000\n";

/// A mosquitto configuration for development on one machine: loopback
/// only, anonymous, no TLS (`lanyard broker-config --dev`).
///
/// ```
/// let conf = lanyard_std::acl::mosquitto_dev_conf(1883);
/// assert!(conf.contains("listener 1883 127.0.0.1\n"));
/// assert!(conf.contains("set_tcp_nodelay true\n"));
/// ```
pub fn mosquitto_dev_conf(port: u16) -> String {
    format!(
        "# Generated by lanyard_std::acl::mosquitto_dev_conf: for development on\n\
         # this machine only (anonymous, no TLS).\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         {BROKER_LIMITS}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_devices_are_confined_to_their_own_address() {
        let acl = mosquitto_tenant_acl(&["lanyard-twin"]).unwrap();
        assert!(acl.contains("pattern write lanyard/v1/%u/ack\n"));
        assert!(acl.contains("pattern read lanyard/v1/%u/cmd\n"));
        assert!(!acl.contains("pattern write lanyard/v1/%u/cmd"));
        assert!(!acl.contains("%c"));
        assert!(!acl.contains("$aws"));
        assert!(acl.contains("user lanyard-twin\ntopic readwrite lanyard/v1/#\n"));
    }

    #[test]
    fn devices_write_what_they_send_and_read_what_they_receive() {
        let acl = mosquitto_acl(&["lanyard-twin"]).unwrap();
        assert!(acl.contains("pattern write lanyard/v1/%u/ack\n"));
        assert!(acl.contains("pattern read lanyard/v1/%u/cmd\n"));
        assert!(acl.contains("pattern read lanyard/v1/%u/shadow/delta\n"));
        assert!(acl.contains("user lanyard-twin\ntopic readwrite lanyard/v1/#\n"));
        assert!(!acl.contains("pattern write lanyard/v1/%u/cmd"));
        // A client id chosen by the client names nothing but a claim
        // session, under the claim certificate's own name.
        for line in acl.lines().filter(|l| l.contains("%c")) {
            assert!(
                line.contains("lanyard/v1/lanyard-provision/%u/%c/"),
                "{line}"
            );
        }
        assert!(acl.contains("pattern write lanyard/v1/%u/cert/csr\n"));
        assert!(acl.contains("pattern read lanyard/v1/%u/cert/register/accepted\n"));
        assert!(!acl.contains("pattern write lanyard/v1/%u/cert/csr/accepted"));
    }

    #[test]
    fn trusted_names_a_device_could_have_are_refused() {
        for bad in [
            "twin",
            "ly-0a1b2c3d4e5f",
            "lanyard twin",
            "lanyard/x",
            "lanyard-#",
            "",
        ] {
            assert!(mosquitto_acl(&[bad]).is_err(), "{bad:?} accepted");
        }
        assert!(mosquitto_acl(&["lanyard-twin", "lanyard-ops.alice"]).is_ok());
    }
}
