//! Any SDK message as readable JSON, for `lanyard decode` and for logs.

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::{ConflictPolicy, Shadow};
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};
use serde_json::{Value as Json, json};

use crate::aws_json::tree_to_json;

type Up = ShadowUpdate<256, 16384>;
type Delta = ShadowDelta<256, 16384>;
type Doc = Shadow<256, 16384>;
/// Telemetry as large as a std device's agent sends it.
pub type Readings = Telemetry<64, 4096>;

fn config_json(c: &DeviceConfig) -> Json {
    let t = &c.thresholds;
    json!({
        "version": c.version,
        "heartbeat_ms": c.heartbeat_ms,
        "telemetry_ms": c.telemetry_ms,
        "health_ms": c.health_ms,
        "shadow_sync_ms": c.shadow_sync_ms,
        "battery_warn_pct": t.battery_warn_pct,
        "battery_crit_pct": t.battery_crit_pct,
        "link_warn_pct": t.link_warn_pct,
        "link_crit_pct": t.link_crit_pct,
        "hysteresis_pct": t.hysteresis_pct,
        "degraded_telemetry_factor": c.degraded_telemetry_factor,
    })
}

fn cbor_json(raw: &[u8]) -> Json {
    // Results and arguments are CBOR items: show maps of scalars, else hex.
    let mut e = minicbor::Encoder::new(Vec::new());
    let _ = e.array(1);
    let mut wrapped = e.into_writer();
    wrapped.extend_from_slice(raw);
    crate::aws_json::value_to_json(lanyard_core::shadow::Value::Array(
        lanyard_core::shadow::RawArray::from_cbor(&wrapped),
    ))
    .get(0)
    .cloned()
    .unwrap_or_else(|| Json::String(hex(raw)))
}

use crate::hex::to_hex as hex;

/// Decodes `bytes` as `kind`, or tries every message type when `kind` is
/// `None`. Returns the type name and the message as JSON.
pub fn describe(bytes: &[u8], kind: Option<MessageKind>) -> Result<(&'static str, Json), String> {
    let kinds: Vec<MessageKind> = match kind {
        Some(k) => vec![k],
        None => MessageKind::ALL.to_vec(),
    };
    let mut errors = Vec::new();
    for k in &kinds {
        match one(bytes, *k) {
            Ok(j) => return Ok((k.topic_suffix(), j)),
            Err(e) => errors.push(format!("{}: {e}", k.topic_suffix())),
        }
    }
    if kind.is_none() {
        if let Ok(doc) = Doc::decode(bytes, ConflictPolicy::CloudWins) {
            return Ok((
                "shadow-document",
                json!({
                    "version": doc.version(),
                    "desired": tree_to_json(doc.desired()),
                    "reported": tree_to_json(doc.reported()),
                    "in_sync": doc.in_sync(),
                    "parked": doc.parked().map(|(p, at)| json!([p.to_string(), at])).collect::<Vec<_>>(),
                }),
            ));
        }
    }
    Err(errors.join("; "))
}

fn one(bytes: &[u8], kind: MessageKind) -> Result<Json, String> {
    let e = |e: lanyard_core::Error| e.to_string();
    Ok(match kind {
        MessageKind::Register => {
            let m = Register::decode(bytes).map_err(e)?;
            json!({"device_id": m.device_id, "firmware": m.firmware, "config_version": m.config_version, "boot_count": m.boot_count, "time_ms": m.time_ms, "resumed": m.resumed})
        }
        MessageKind::RegisterAccepted => {
            let m = RegisterAccepted::decode(bytes).map_err(e)?;
            let config = match m.config {
                Some(raw) => Some(config_json(
                    &DeviceConfig::default()
                        .decode_update(&mut minicbor::Decoder::new(raw))
                        .map_err(|x| x.to_string())?,
                )),
                None => None,
            };
            json!({"device_id": m.device_id, "config": config, "time_ms": m.time_ms})
        }
        MessageKind::Lifecycle => {
            let m = LifecycleEvent::decode(bytes).map_err(e)?;
            json!({"from": m.from.name(), "to": m.to.name(), "cause": m.cause.name(), "time_ms": m.time_ms, "seq": m.seq})
        }
        MessageKind::Heartbeat => {
            let m = Heartbeat::decode(bytes).map_err(e)?;
            json!({"seq": m.seq, "time_ms": m.time_ms, "uptime_ms": m.uptime_ms, "state": m.state.name(), "health": format!("{:?}", m.health)})
        }
        MessageKind::Telemetry => {
            let m: Box<Readings> = Box::new(Telemetry::decode(bytes).map_err(e)?);
            json!({"seq": m.seq, "time_ms": m.time_ms, "readings": tree_to_json(&m.readings)})
        }
        MessageKind::Health => {
            let m = HealthMessage::decode(bytes).map_err(e)?;
            let x = m.report.metrics;
            json!({"time_ms": m.time_ms, "status": format!("{:?}", m.report.status), "reasons": m.report.reasons,
                   "battery_pct": x.battery_pct, "link_quality_pct": x.link_quality_pct, "sensor_failures": x.sensor_failures,
                   "data_age_ms": x.data_age_ms, "free_buffer_pct": x.free_buffer_pct, "uptime_ms": x.uptime_ms})
        }
        MessageKind::ShadowUpdate => {
            let mut up: Box<Up> = Box::new(ShadowUpdate::new(0));
            up.decode_into(bytes).map_err(e)?;
            json!({"desired": up.desired.as_ref().map(tree_to_json), "reported": up.reported.as_ref().map(tree_to_json),
                   "expected_version": up.expected_version, "timestamp_ms": up.timestamp_ms,
                   "client_token": up.client_token.as_ref().map(|t| t.as_str())})
        }
        MessageKind::ShadowDelta => {
            let d = Box::new(Delta::decode(bytes).map_err(e)?);
            json!({"version": d.version, "timestamp_ms": d.timestamp_ms, "state": tree_to_json(&d.state)})
        }
        MessageKind::Command => {
            let m = Command::decode(bytes).map_err(e)?;
            json!({"id": m.id, "name": m.name, "args": (!m.args.is_empty()).then(|| cbor_json(m.args)), "issued_ms": m.issued_ms, "expires_ms": m.expires_ms})
        }
        MessageKind::Ack => {
            let m = Ack::decode(bytes).map_err(e)?;
            json!({"command_id": m.command_id, "status": format!("{:?}", m.status), "reason": m.reason.map(|r| format!("{r:?}")),
                   "detail": m.detail, "result": m.result.map(cbor_json), "time_ms": m.time_ms})
        }
        MessageKind::Config => {
            let c = DeviceConfig::default()
                .decode_update(&mut minicbor::Decoder::new(bytes))
                .map_err(|x| x.to_string())?;
            config_json(&c)
        }
        MessageKind::ConfigAck => {
            let m = ConfigAck::decode(bytes).map_err(e)?;
            json!({"version": m.version, "outcome": format!("{:?}", m.outcome), "current_version": m.current_version,
                   "field": m.field, "reason": m.reason, "time_ms": m.time_ms})
        }
    })
}

pub use crate::hex::parse_hex;
