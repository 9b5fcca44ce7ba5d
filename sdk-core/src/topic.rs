//! Topics, in one place: every message of a device and of the app side
//! travels on `lanyard/v1/{device-id}/{suffix}`, or on
//! `lanyard/v1/{tenant}/{device-id}/{suffix}` in a tenant's namespace. The
//! device's messages are [`MessageKind`]s; the app side's conversation with
//! the twin host is [`AppTopic`]; both are a [`Topic`]. Format, parse and
//! subscription filters are here, for the drivers, the bridge, the twin
//! host and the app client alike.

use crate::agent::messages::{MAX_DEVICE_ID_LEN, MessageKind};

/// Longest topic: the prefix, a tenant, a device id and the longest suffix.
pub const MAX_TOPIC_LEN: usize = 160;

/// A topic's text, without an allocator.
pub type TopicString = heapless::String<MAX_TOPIC_LEN>;

/// The app side's topics (app and twin host), under a device's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppTopic {
    /// App → host: a `shadow-update` whose desired part the host applies.
    SetDesired,
    /// Host → app: the answer to a desired-state update that carried a
    /// client token.
    DesiredAnswer,
    /// App → host: ask for the whole document.
    Get,
    /// Host → app: the whole `shadow-document`.
    Document,
    /// Host → app: the reason an update was refused (UTF-8 text).
    Rejected,
    /// Operator → host: accept a decommissioned device again (a client
    /// token as CBOR text; answered on [`AppTopic::DesiredAnswer`]).
    Reprovision,
    /// Host → app: something the host noticed about the device (online,
    /// offline, a lifecycle or health change): a CBOR map with text keys.
    Event,
    /// Operator → host: settle a conflict parked for an operator (a
    /// resolve-request; answered on [`AppTopic::DesiredAnswer`]).
    Resolve,
    /// Operator → host, addressed to [`FLEET_KEY`]: list the fleet's
    /// devices (a client token as CBOR text).
    List,
    /// Host → operator, on [`FLEET_KEY`]'s address: the fleet's devices
    /// (a listing).
    Listing,
    /// App → the device's gateway: pass its telemetry on unsummarised for
    /// a while (seconds, a CBOR unsigned integer), bypassing the fog
    /// tier's aggregation.
    RawReadings,
}

/// The level before a writer's identity at the end of an operator's write
/// ([`OPERATOR_WRITES`]): `{prefix}{device}/shadow/desired/by/{identity}`.
/// The broker's ACL lets a client write there only under its own identity,
/// so a twin host knows who wrote.
pub const BY_LEVEL: &str = "by";

/// Longest writer identity a topic may name.
pub const MAX_WRITER_LEN: usize = 128;

/// Whether `identity` can name a writer at the end of a topic: one topic
/// level (no `/`, `+` or `#`) of 1 to [`MAX_WRITER_LEN`] bytes.
pub fn valid_writer(identity: &str) -> bool {
    !identity.is_empty() && identity.len() <= MAX_WRITER_LEN && !identity.contains(['/', '+', '#'])
}

/// Splits a topic (or its suffix) that ends with `/by/{identity}` into
/// what comes before and the writer; any other, whole and with no writer.
///
/// ```
/// use lanyard_core::topic::split_writer;
/// assert_eq!(split_writer("a/shadow/desired/by/ops"), ("a/shadow/desired", Some("ops")));
/// assert_eq!(split_writer("a/shadow/desired"), ("a/shadow/desired", None));
/// assert_eq!(split_writer("a/by/o+"), ("a/by/o+", None));
/// ```
pub fn split_writer(topic: &str) -> (&str, Option<&str>) {
    let named = topic.rsplit_once('/').and_then(|(rest, who)| {
        let (before, by) = rest.rsplit_once('/')?;
        (by == BY_LEVEL && valid_writer(who)).then_some((before, who))
    });
    match named {
        Some((before, who)) => (before, Some(who)),
        None => (topic, None),
    }
}

/// An operator's writes, which may name their writer ([`BY_LEVEL`]). A twin
/// host with an operator list takes those it handles (desired state,
/// resolutions, re-provisionings) only from a listed writer, and passes
/// commands and configurations named by one on to the device's own topic
/// (which only it and other trusted identities write).
pub const OPERATOR_WRITES: [Topic; 5] = [
    Topic::App(AppTopic::SetDesired),
    Topic::App(AppTopic::Resolve),
    Topic::App(AppTopic::Reprovision),
    Topic::Device(MessageKind::Command),
    Topic::Device(MessageKind::Config),
];

impl AppTopic {
    /// Every app topic.
    pub const ALL: [AppTopic; 11] = [
        AppTopic::SetDesired,
        AppTopic::DesiredAnswer,
        AppTopic::Get,
        AppTopic::Document,
        AppTopic::Rejected,
        AppTopic::Reprovision,
        AppTopic::Event,
        AppTopic::Resolve,
        AppTopic::List,
        AppTopic::Listing,
        AppTopic::RawReadings,
    ];

    /// The last levels of its topic.
    pub const fn suffix(self) -> &'static str {
        match self {
            AppTopic::SetDesired => "shadow/desired",
            AppTopic::DesiredAnswer => "shadow/desired/answer",
            AppTopic::Get => "shadow/get",
            AppTopic::Document => "shadow/document",
            AppTopic::Rejected => "shadow/rejected",
            AppTopic::Reprovision => "operator/reprovision",
            AppTopic::Event => "fleet/event",
            AppTopic::Resolve => "operator/resolve",
            AppTopic::List => "operator/list",
            AppTopic::Listing => "operator/list/answer",
            AppTopic::RawReadings => "fog/raw",
        }
    }
}

/// Any topic under a device's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A device's message.
    Device(MessageKind),
    /// The app side's.
    App(AppTopic),
}

impl Topic {
    /// The last levels of its topic.
    pub fn suffix(self) -> &'static str {
        match self {
            Topic::Device(k) => k.topic_suffix(),
            Topic::App(a) => a.suffix(),
        }
    }

    /// The topic a suffix names.
    pub fn from_suffix(suffix: &str) -> Option<Topic> {
        MessageKind::from_suffix(suffix)
            .map(Topic::Device)
            .or_else(|| {
                AppTopic::ALL
                    .into_iter()
                    .find(|a| a.suffix() == suffix)
                    .map(Topic::App)
            })
    }

    /// Whether it needs at-least-once delivery (MQTT QoS 1): the app
    /// side's always do; a device's as [`MessageKind::needs_ack`] says.
    pub fn needs_ack(self) -> bool {
        match self {
            Topic::Device(k) => k.needs_ack(),
            Topic::App(_) => true,
        }
    }
}

/// The topic of `t` for the device known as `key`: its id, or
/// `{tenant}/{device-id}` in a tenant's namespace (the name the twin host
/// and the app client use). `None` when `key` does not fit a topic.
///
/// ```
/// use lanyard_core::topic::{AppTopic, Topic, topic_of_key};
/// assert_eq!(
///     topic_of_key("acme/dev-1", Topic::App(AppTopic::Get)).unwrap().as_str(),
///     "lanyard/v1/acme/dev-1/shadow/get"
/// );
/// ```
pub fn topic_of_key(key: &str, t: Topic) -> Option<TopicString> {
    let mut s = TopicString::new();
    s.push_str(TOPIC_PREFIX).ok()?;
    s.push_str(key).ok()?;
    s.push('/').ok()?;
    s.push_str(t.suffix()).ok()?;
    Some(s)
}

/// The subscription filter for `t` of every device: `lanyard/v1/+/{suffix}`,
/// or `lanyard/v1/+/+/{suffix}` across tenants' namespaces.
///
/// ```
/// use lanyard_core::topic::{Topic, filter};
/// use lanyard_core::agent::messages::MessageKind;
/// assert_eq!(filter(true, Topic::Device(MessageKind::Ack)).as_str(), "lanyard/v1/+/+/ack");
/// ```
pub fn filter(tenants: bool, t: Topic) -> TopicString {
    let levels = if tenants { "+/+" } else { "+" };
    // 11 + 3 + 1 + 21 bytes at most: always fits.
    topic_of_key(levels, t).unwrap_or_default()
}

/// Splits `s` at its first `/`.
pub(crate) fn split_at_slash(s: &str) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == b'/')?;
    let (head, tail) = s.split_at_checked(at)?;
    Some((head, tail.get(1..)?))
}

/// Whether `id` can name a device: 1 to [`MAX_DEVICE_ID_LEN`] ASCII
/// letters, digits, `-`, `_` and `:` (the characters of an AWS IoT thing
/// name), not starting with `lanyard` in any case.
///
/// One syntax everywhere an id enters (the agent, the twin host, the app
/// client, the CLI, the bindings), because an id becomes a topic level, a
/// broker user name (the device certificate's subject) and a file name:
/// nothing here is special in any of them (no `/`, `+`, `#`, `$`, `%`,
/// `.` or `..`, spaces, control or bidirectional characters). Names
/// starting with `lanyard` are kept for Lanyard's own services (the twin
/// host's and operators' identities), so that no device can be issued one.
///
/// ```
/// use lanyard_core::topic::valid_device_id;
/// assert!(valid_device_id("ly-0a1b2c3d4e5f") && valid_device_id("pump:7_B"));
/// assert!(!valid_device_id("+") && !valid_device_id("a/b") && !valid_device_id(""));
/// assert!(!valid_device_id("..") && !valid_device_id("%c") && !valid_device_id("$SYS"));
/// assert!(!valid_device_id("a b") && !valid_device_id("a\u{200f}b"));
/// assert!(!valid_device_id("lanyard-twin") && !valid_device_id("Lanyard"));
/// ```
pub fn valid_device_id(id: &str) -> bool {
    (1..=MAX_DEVICE_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'))
        && !id
            .get(..RESERVED_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
}

/// Ids starting with this (in any case) name Lanyard's own services, never
/// a device.
pub const RESERVED_PREFIX: &str = "lanyard";

/// The address of requests about the whole fleet (or, in a tenant's
/// namespace, the whole tenant): `lanyard/v1/lanyard-fleet/operator/list`.
/// It starts with [`RESERVED_PREFIX`], so no device can have it.
pub const FLEET_KEY: &str = "lanyard-fleet";

/// Longest tenant name.
pub const MAX_TENANT_LEN: usize = 32;

/// Whether `name` can name a tenant: 1 to [`MAX_TENANT_LEN`] lowercase
/// ASCII letters, digits, `-` and `_` (nothing that is special in a topic
/// or a file name).
pub fn valid_tenant(name: &str) -> bool {
    (1..=MAX_TENANT_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The topic of `kind` for `device_id` of `tenant`:
/// `lanyard/v1/{tenant}/{device-id}/{suffix}`. `None` when the tenant name
/// is not valid.
///
/// ```
/// use lanyard_core::{topic::tenant_topic, agent::messages::MessageKind};
/// assert_eq!(
///     tenant_topic("acme", "ly-0a1b2c3d4e5f", MessageKind::Ack).unwrap().as_str(),
///     "lanyard/v1/acme/ly-0a1b2c3d4e5f/ack"
/// );
/// ```
pub fn tenant_topic(
    tenant: &str,
    device_id: &str,
    kind: MessageKind,
) -> Option<heapless::String<128>> {
    if !valid_tenant(tenant) {
        return None;
    }
    let mut s = heapless::String::new();
    // 11 + 32 + 1 + 64 + 1 + 17 = 126 bytes at most: always fits.
    let _ = s.push_str(TOPIC_PREFIX);
    let _ = s.push_str(tenant);
    let _ = s.push('/');
    let _ = s.push_str(device_id);
    let _ = s.push('/');
    let _ = s.push_str(kind.topic_suffix());
    Some(s)
}

/// Every topic starts with this.
pub const TOPIC_PREFIX: &str = "lanyard/v1/";

/// The topic of `kind` for `device_id`.
///
/// ```
/// use lanyard_core::{topic::topic, agent::messages::MessageKind};
/// assert_eq!(topic("ly-0a1b2c3d4e5f", MessageKind::Ack).as_str(), "lanyard/v1/ly-0a1b2c3d4e5f/ack");
/// ```
pub fn topic(device_id: &str, kind: MessageKind) -> heapless::String<128> {
    let mut s = heapless::String::new();
    // 11 + 64 + 1 + 17 bytes at most: always fits.
    let _ = s.push_str(TOPIC_PREFIX);
    let _ = s.push_str(device_id);
    let _ = s.push('/');
    let _ = s.push_str(kind.topic_suffix());
    s
}

/// The topic of `kind` for `device_id` in `tenant`'s namespace, or in the
/// shared one when `tenant` is `None`: what every driver and the bridge
/// publish and subscribe to. `None` when the tenant name is not valid.
pub fn topic_in(
    tenant: Option<&str>,
    device_id: &str,
    kind: MessageKind,
) -> Option<heapless::String<128>> {
    match tenant {
        Some(t) => tenant_topic(t, device_id, kind),
        None => Some(topic(device_id, kind)),
    }
}

/// Parses a topic of `tenant`'s namespace (or of the shared one when
/// `tenant` is `None`) into its device id and kind; a topic of any other
/// namespace is `None`.
///
/// ```
/// use lanyard_core::{topic::parse_topic_in, agent::messages::MessageKind};
/// let t = "lanyard/v1/acme/dev-1/cmd";
/// assert_eq!(parse_topic_in(Some("acme"), t), Some(("dev-1", MessageKind::Command)));
/// assert_eq!(parse_topic_in(Some("globex"), t), None);
/// assert_eq!(parse_topic_in(None, "lanyard/v1/dev-1/cmd"), Some(("dev-1", MessageKind::Command)));
/// ```
pub fn parse_topic_in<'t>(tenant: Option<&str>, topic: &'t str) -> Option<(&'t str, MessageKind)> {
    match tenant {
        Some(want) => MessageKind::parse_tenant_topic(topic)
            .filter(|(t, _, _)| *t == want)
            .map(|(_, id, kind)| (id, kind)),
        None => MessageKind::parse_topic(topic),
    }
}
