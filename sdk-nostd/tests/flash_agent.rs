//! The agent keeping its state in the flash store, across reboots and a
//! power cut in the middle of a save: what a board with `FlashStore` does,
//! on `RamFlash`.

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::health::{HealthMetrics, SlowTelemetryOnLowBattery};
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::agent::messages::*;
use lanyard_core::agent::platform::*;
use lanyard_core::agent::{Agent, AgentEvent, Identity};
use lanyard_core::shadow::{PathBuf, StateTree, Value};
use lanyard_core::wire::ShadowDelta;
use lanyard_nostd::flash::{FlashStore, RamFlash};

type Flash = RamFlash<4096>;
type DeviceAgent = Agent<SlowTelemetryOnLowBattery, 8, 256>;
const ID: &str = "ly-020000000001";

struct Board;
impl HealthProbe for Board {
    fn metrics(&mut self, _: u64) -> HealthMetrics {
        HealthMetrics {
            battery_pct: 90,
            link_quality_pct: 90,
            free_buffer_pct: 90,
            ..HealthMetrics::default()
        }
    }
}

/// Knows `blink_led`, finished at once.
struct FlashCommands;
impl CommandHandler for FlashCommands {
    fn execute(
        &mut self,
        _: u64,
        name: &str,
        _: Args<'_>,
        _: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>> {
        (name == "blink_led").then_some(Ok(Completion::Done(0)))
    }
}

/// A device: its agent and the flash it keeps its state in.
struct Device {
    agent: DeviceAgent,
    store: FlashStore<Flash>,
}

impl Device {
    /// Boots on `flash` (a power-up: the agent starts from nothing but
    /// what the flash holds).
    fn boot(flash: Flash, now_ms: u64) -> Device {
        let mut d = Device {
            agent: Agent::new(
                Identity {
                    mac: [2, 0, 0, 0, 0, 1],
                    device_id: None,
                    firmware: "1.0.0",
                },
                DeviceConfig::default(),
                SlowTelemetryOnLowBattery,
            ),
            store: FlashStore::new(flash, 0, 1024),
        };
        d.with_platform(|agent, p| agent.boot(now_ms, p))
            .expect("boot");
        d
    }

    fn with_platform<T>(&mut self, f: impl FnOnce(&mut DeviceAgent, &mut Platform<'_>) -> T) -> T {
        let (mut board, mut commands) = (Board, FlashCommands);
        let mut p = Platform {
            storage: &mut self.store,
            probe: &mut board,
            telemetry: &mut NoTelemetry,
            commands: &mut commands,
            desired: &mut lanyard_core::agent::platform::MirrorDesired,
        };
        f(&mut self.agent, &mut p)
    }

    /// Hands the agent the message `encode` writes.
    fn deliver(
        &mut self,
        now_ms: u64,
        kind: MessageKind,
        encode: impl FnOnce(&mut [u8]) -> Result<usize, lanyard_core::Error>,
    ) {
        let mut buf = [0u8; 512];
        let n = encode(&mut buf).unwrap();
        self.with_platform(|agent, p| agent.handle_inbound(now_ms, kind, &buf[..n], p))
            .unwrap();
    }

    /// The acknowledgements sent so far (and drops everything else).
    fn acks(&mut self) -> Vec<(AckStatus, Option<String>)> {
        let mut buf = [0u8; 256];
        let mut out = Vec::new();
        while let Some(t) = self.agent.poll_transmit(&mut buf).unwrap() {
            if t.kind == MessageKind::Ack {
                let ack = Ack::decode(&buf[..t.len]).unwrap();
                out.push((ack.status, ack.detail.map(str::to_owned)));
            }
        }
        out
    }

    fn reported(&self, key: &str) -> Option<i64> {
        let path = PathBuf::from_dotted(key).unwrap();
        match self.agent.reported().get(path.as_path()) {
            Some(e) => match e.value {
                Value::Int(i) => Some(i),
                _ => None,
            },
            None => None,
        }
    }

    fn power_off(self) -> Flash {
        self.store.into_inner()
    }
}

fn delta(version: u64, key: &str, value: i64) -> ShadowDelta<16, 512> {
    let mut state = StateTree::new();
    state
        .insert(&PathBuf::from_dotted(key).unwrap(), Value::Int(value))
        .unwrap();
    ShadowDelta {
        version,
        timestamp_ms: 1_700_000_000_000,
        state,
    }
}

fn blink(id: &str) -> Command<'_> {
    Command {
        id,
        name: "blink_led",
        // {"count": 1}
        args: &[0xa1, 0x65, b'c', b'o', b'u', b'n', b't', 0x01],
        issued_ms: 1_700_000_000_000,
        expires_ms: 1_800_000_000_000,
    }
}

/// A registered device with `target_c = 21` reported and one command run.
fn registered_device() -> Device {
    let mut d = Device::boot(Flash::new(), 0);
    let accepted = RegisterAccepted {
        device_id: ID,
        config: None,
        time_ms: 1_700_000_000_000,
    };
    d.deliver(10, MessageKind::RegisterAccepted, |b| accepted.encode(b));
    d.deliver(20, MessageKind::ShadowDelta, |b| {
        delta(1, "target_c", 21).encode(b)
    });
    d.deliver(30, MessageKind::Command, |b| blink("c-1").encode(b));
    d.with_platform(|agent, p| agent.handle_timeout(10_000, p));
    assert_eq!(d.agent.state(), LifecycleState::Active);
    assert_eq!(d.reported("target_c"), Some(21));
    d
}

#[test]
fn a_rebooted_device_resumes_from_flash() {
    let flash = registered_device().power_off();
    let mut d = Device::boot(flash, 0);
    assert_eq!(d.agent.state(), LifecycleState::Active);
    assert_eq!(d.agent.boot_count(), 2);
    assert_eq!(d.reported("target_c"), Some(21));
    // The command it ran before the reboot is not run again.
    d.acks();
    d.deliver(50, MessageKind::Command, |b| blink("c-1").encode(b));
    assert_eq!(
        d.acks(),
        vec![(AckStatus::Succeeded, Some("duplicate".to_owned()))]
    );
    assert_eq!(d.agent.stats().duplicate_commands, 1);
}

#[test]
fn a_power_cut_while_saving_leaves_the_state_saved_before_it() {
    let mut d = registered_device();
    // The next save (after this delta) loses power 40 bytes in.
    let flash = d.store.into_inner();
    let mut cut = flash;
    cut.cut_power_after(Some(40));
    d.store = FlashStore::new(cut, 0, 1024);
    d.deliver(40, MessageKind::ShadowDelta, |b| {
        delta(2, "target_c", 23).encode(b)
    });
    assert_eq!(d.reported("target_c"), Some(23), "applied in memory");
    let mut events = Vec::new();
    while let Some(e) = d.agent.poll_event() {
        events.push(e);
    }
    assert!(events.contains(&AgentEvent::StorageFailed), "{events:?}");

    // Power comes back: the flash holds the state from before the delta.
    let mut flash = d.power_off();
    flash.cut_power_after(None);
    let d = Device::boot(flash, 0);
    assert_eq!(d.agent.state(), LifecycleState::Active);
    assert_eq!(d.reported("target_c"), Some(21));
}
