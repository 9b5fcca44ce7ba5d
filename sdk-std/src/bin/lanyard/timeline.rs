//! One line of a device's timeline per driver event.

use super::*;

/// One human line for the timeline, or `None` for events not worth a line.
pub(crate) fn timeline_line(e: &DriverEvent) -> Option<String> {
    Some(match e {
        DriverEvent::Sent { kind, payload, .. } => match kind {
            MessageKind::Register => "-> register".into(),
            MessageKind::Heartbeat => {
                let h = Heartbeat::decode(payload).ok()?;
                format!(
                    "-> heartbeat #{} ({}, health {:?})",
                    h.seq, h.state, h.health
                )
            }
            MessageKind::Telemetry => {
                let t: Box<lanyard_std::describe::Readings> =
                    Box::new(Telemetry::decode(payload).ok()?);
                format!(
                    "-> telemetry #{}: {}",
                    t.seq,
                    lanyard_std::aws_json::tree_to_json(&t.readings)
                )
            }
            MessageKind::Health => {
                let h = HealthMessage::decode(payload).ok()?;
                format!(
                    "-> health check: {:?} (battery {} %)",
                    h.report.status, h.report.metrics.battery_pct
                )
            }
            MessageKind::ShadowUpdate => "-> shadow sync (reported state)".into(),
            MessageKind::Lifecycle => {
                let l = LifecycleEvent::decode(payload).ok()?;
                format!("-> lifecycle {} -> {} ({})", l.from, l.to, l.cause.name())
            }
            MessageKind::Ack => {
                let a = Ack::decode(payload).ok()?;
                format!(
                    "-> ack {} {:?}{}",
                    a.command_id,
                    a.status,
                    a.reason.map(|r| format!(" ({r:?})")).unwrap_or_default()
                )
            }
            MessageKind::ConfigAck => {
                let a = ConfigAck::decode(payload).ok()?;
                format!("-> config v{} {:?}", a.version, a.outcome)
            }
            _ => return None,
        },
        DriverEvent::Received { kind, .. } => format!("<- {}", kind.topic_suffix()),
        DriverEvent::Refused { why, .. } => format!("<- refused: {why}"),
        DriverEvent::Agent {
            event: AgentEvent::StateChanged { from, to, .. },
            ..
        } => format!("   state {from} -> {to}"),
        DriverEvent::Agent {
            event: AgentEvent::ConfigApplied(v),
            ..
        } => format!("   configuration v{v} applied"),
        DriverEvent::Reconnected { .. } => "   reconnected".into(),
        _ => return None,
    })
}
