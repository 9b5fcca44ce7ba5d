//! A simulated platform and scripted cloud for the agent tests: simulated
//! time, storage in memory, a battery that drains on a schedule.
#![allow(dead_code)]

use std::collections::HashMap;

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::health::{HealthMetrics, SlowTelemetryOnLowBattery};
use lanyard_core::agent::messages::*;
use lanyard_core::agent::platform::*;
use lanyard_core::agent::{Agent, Identity, InboundError};

pub type SimAgent = Agent<SlowTelemetryOnLowBattery, 16, 512>;

pub const MAC: [u8; 6] = [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f];
pub const DEVICE_ID: &str = "ly-0a1b2c3d4e5f";

#[derive(Default)]
pub struct SimStorage {
    pub slots: HashMap<&'static str, Vec<u8>>,
    pub fail: bool,
}

fn slot_name(s: StorageSlot) -> &'static str {
    match s {
        StorageSlot::AgentState => "state",
        StorageSlot::Credentials => "credentials",
        StorageSlot::UpdateRecord => "update",
    }
}

impl Storage for SimStorage {
    fn load(&mut self, slot: StorageSlot, buf: &mut [u8]) -> Result<usize, StorageError> {
        match self.slots.get(slot_name(slot)) {
            None => Ok(0),
            Some(v) if v.len() > buf.len() => Err(StorageError::TooLarge),
            Some(v) => {
                buf[..v.len()].copy_from_slice(v);
                Ok(v.len())
            }
        }
    }
    fn store(&mut self, slot: StorageSlot, data: &[u8]) -> Result<(), StorageError> {
        if self.fail {
            return Err(StorageError::Io);
        }
        self.slots.insert(slot_name(slot), data.to_vec());
        Ok(())
    }
    fn wipe(&mut self) -> Result<(), StorageError> {
        self.slots.clear();
        Ok(())
    }
}

impl SimStorage {
    pub fn load_len(&self, slot: StorageSlot) -> usize {
        self.slots.get(slot_name(slot)).map_or(0, Vec::len)
    }
}

/// Battery drains 1 % every `drain_every_ms` from 100 %.
#[derive(Clone)]
pub struct SimProbe {
    pub drain_every_ms: u64,
    pub sensor_fails: bool,
}

impl SimProbe {
    pub fn battery(&self, now_ms: u64) -> u8 {
        100u64.saturating_sub(now_ms / self.drain_every_ms) as u8
    }

    pub fn temperature(now_ms: u64) -> f64 {
        21.0 + (now_ms % 7_000) as f64 / 1_000.0
    }
}

impl HealthProbe for SimProbe {
    fn metrics(&mut self, now_ms: u64) -> HealthMetrics {
        HealthMetrics {
            battery_pct: self.battery(now_ms),
            link_quality_pct: 80,
            sensor_failures: 0,
            data_age_ms: 1_000,
            free_buffer_pct: 90,
            uptime_ms: now_ms,
        }
    }
}

/// The example board's telemetry: temperature, humidity and the battery
/// read now (a copy of the probe, refreshed by `Sim::platform`).
pub struct SimTelemetry(pub SimProbe);

impl TelemetrySource for SimTelemetry {
    fn read(&mut self, now_ms: u64, readings: &mut Readings) -> bool {
        if self.0.sensor_fails {
            return false;
        }
        let p = |k: &str| lanyard_core::shadow::PathBuf::from_dotted(k).unwrap();
        use lanyard_core::shadow::Value;
        readings
            .insert(
                &p("temperature_c"),
                Value::Float(SimProbe::temperature(now_ms)),
            )
            .unwrap();
        readings
            .insert(&p("humidity_pct"), Value::Float(45.0))
            .unwrap();
        readings
            .insert(
                &p("battery_pct"),
                Value::Int(i64::from(self.0.battery(now_ms))),
            )
            .unwrap();
        true
    }
}

/// The example board's commands: `reboot_modem` (counts runs, result
/// `true`), `blink_led` (runs for count * period: finished later, by
/// `Sim::finish_blink`), `read_sensor` (result `{temperature_c,
/// humidity_pct}`).
#[derive(Default)]
pub struct SimCommands {
    pub runs: u32,
    /// `(count, period_ms)` of every blink started.
    pub blinks: Vec<(u32, u32)>,
    /// When the running blink ends.
    pub blink_ends_ms: Option<u64>,
}

impl CommandHandler for SimCommands {
    fn execute(
        &mut self,
        now_ms: u64,
        name: &str,
        args: Args<'_>,
        result: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>> {
        match name {
            "reboot_modem" => {
                self.runs += 1;
                result[0] = 0xf5; // true
                Some(Ok(Completion::Done(1)))
            }
            "blink_led" => Some((|| {
                let count = args.u64("count")?.ok_or(CommandFailure::BadArguments)?;
                let period = args.u64("period_ms")?.unwrap_or(500);
                if !(1..=100).contains(&count) || !(50..=5_000).contains(&period) {
                    return Err(CommandFailure::BadArguments);
                }
                self.blinks.push((count as u32, period as u32));
                self.blink_ends_ms = Some(now_ms + count * period);
                Ok(Completion::Later)
            })()),
            // Fails (or refuses, with `refuse`) saying why in its own words.
            "explain" => Some((|| {
                let (text, refuse) = match (args.str("fail")?, args.str("refuse")?) {
                    (Some(t), _) => (t, false),
                    (None, Some(t)) => (t, true),
                    (None, None) => return Err(CommandFailure::BadArguments),
                };
                let n = text.len().min(result.len());
                result[..n].copy_from_slice(&text.as_bytes()[..n]);
                Err(if refuse {
                    CommandFailure::BadArgumentsBecause(n)
                } else {
                    CommandFailure::FailedBecause(n)
                })
            })()),
            "read_sensor" => {
                let t = SimProbe::temperature(now_ms);
                let n = lanyard_core::wire::encode_into(result, |e| {
                    e.map(2)?
                        .str("temperature_c")?
                        .f64(t)?
                        .str("humidity_pct")?
                        .f64(45.0)?;
                    Ok(())
                })
                .unwrap();
                Some(Ok(Completion::Done(n)))
            }
            _ => None,
        }
    }
}

pub struct Sim {
    pub storage: SimStorage,
    pub probe: SimProbe,
    pub telemetry: SimTelemetry,
    pub commands: SimCommands,
    /// What becomes of desired state: mirrored unless a test sets its own.
    pub desired: Box<dyn DesiredState>,
}

impl Sim {
    pub fn new(drain_every_ms: u64) -> Self {
        Sim {
            storage: SimStorage::default(),
            probe: SimProbe {
                drain_every_ms,
                sensor_fails: false,
            },
            telemetry: SimTelemetry(SimProbe {
                drain_every_ms,
                sensor_fails: false,
            }),
            commands: SimCommands::default(),
            desired: Box::new(MirrorDesired),
        }
    }

    pub fn platform(&mut self) -> Platform<'_> {
        // Telemetry reads the same model as the probe, as a board would.
        self.telemetry.0 = self.probe.clone();
        Platform {
            storage: &mut self.storage,
            probe: &mut self.probe,
            telemetry: &mut self.telemetry,
            commands: &mut self.commands,
            desired: &mut *self.desired,
        }
    }
}

/// Finishes the running blink if it has ended by `now_ms`, as the board
/// would (Succeeded).
pub fn finish_blink(agent: &mut SimAgent, sim: &mut Sim, now_ms: u64) {
    if sim.commands.blink_ends_ms.is_some_and(|end| end <= now_ms) {
        sim.commands.blink_ends_ms = None;
        agent
            .complete_command(now_ms, Ok(&[]), &mut sim.platform())
            .unwrap();
    }
}

pub fn new_agent() -> SimAgent {
    Agent::new(
        Identity {
            mac: MAC,
            device_id: None,
            firmware: "1.0.0",
        },
        DeviceConfig::default(),
        SlowTelemetryOnLowBattery,
    )
}

/// One message the device sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub at: u64,
    pub kind: MessageKind,
    pub bytes: Vec<u8>,
}

pub fn drain(agent: &mut SimAgent, now: u64, out: &mut Vec<Sent>) {
    let mut buf = [0u8; 1024];
    while let Some(t) = agent.poll_transmit(&mut buf).unwrap() {
        out.push(Sent {
            at: now,
            kind: t.kind,
            bytes: buf[..t.len].to_vec(),
        });
    }
    while agent.poll_event().is_some() {}
}

pub fn encode<T: Encodable>(m: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let n = m.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// A shadow delta of `leaves` (dotted path, value) at `version`, as the
/// twin host sends it.
pub fn delta_bytes(
    version: u64,
    timestamp_ms: u64,
    leaves: &[(&str, lanyard_core::shadow::Value<'_>)],
) -> Vec<u8> {
    let mut state: lanyard_core::shadow::StateTree<16, 512> =
        lanyard_core::shadow::StateTree::new();
    for (path, v) in leaves {
        state
            .insert(
                &lanyard_core::shadow::PathBuf::from_dotted(path).unwrap(),
                *v,
            )
            .unwrap();
    }
    let d = lanyard_core::wire::ShadowDelta {
        version,
        timestamp_ms,
        state,
    };
    let mut buf = vec![0u8; 2048];
    let n = d.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

pub fn config_bytes(c: &DeviceConfig) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    c.encode_cbor(&mut e).unwrap();
    e.into_writer()
}

pub fn command(id: &str, name: &str, args: &[u8], at: u64) -> Vec<u8> {
    encode(&Command {
        id,
        name,
        args,
        issued_ms: at,
        expires_ms: at + 30_000,
    })
}

/// `{"count": c, "period_ms": p}`
pub fn blink_args(count: u64, period: u64) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    e.map(2).unwrap().str("count").unwrap().u64(count).unwrap();
    e.str("period_ms").unwrap().u64(period).unwrap();
    e.into_writer()
}

/// The cloud's answer to a registration, handed to the agent at `at` on
/// its own clock, saying the cloud's clock reads `cloud_ms`.
pub fn answer_registration(
    agent: &mut SimAgent,
    sim: &mut Sim,
    at: u64,
    cloud_ms: u64,
) -> Result<(), InboundError> {
    let bytes = encode(&RegisterAccepted {
        device_id: DEVICE_ID,
        config: None,
        time_ms: cloud_ms,
    });
    agent.handle_inbound(
        at,
        MessageKind::RegisterAccepted,
        &bytes,
        &mut sim.platform(),
    )
}

/// Accepts the registration at `at`, on a clock that is the cloud's.
pub fn accept(agent: &mut SimAgent, sim: &mut Sim, at: u64) {
    answer_registration(agent, sim, at, at).unwrap();
}

/// Boots and registers a device at t = 0 / 100; returns what it sent.
pub fn registered(sim: &mut Sim) -> (SimAgent, Vec<Sent>) {
    let mut agent = new_agent();
    let mut sent = Vec::new();
    agent.boot(0, &mut sim.platform()).expect("boot");
    accept(&mut agent, sim, 100);
    drain(&mut agent, 100, &mut sent);
    (agent, sent)
}

/// One acknowledgement the agent sent, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct SentAck {
    pub status: AckStatus,
    pub reason: Option<AckReason>,
    pub detail: Option<String>,
}

/// Hands the agent an encoded command at `at`; returns the acks it sent.
pub fn command_acks(
    agent: &mut SimAgent,
    platform: &mut Platform<'_>,
    at: u64,
    bytes: &[u8],
) -> Vec<SentAck> {
    agent
        .handle_inbound(at, MessageKind::Command, bytes, platform)
        .unwrap();
    let mut sent = Vec::new();
    drain(agent, at, &mut sent);
    sent.iter()
        .filter(|s| s.kind == MessageKind::Ack)
        .map(|s| {
            let a = Ack::decode(&s.bytes).unwrap();
            SentAck {
                status: a.status,
                reason: a.reason,
                detail: a.detail.map(str::to_string),
            }
        })
        .collect()
}
