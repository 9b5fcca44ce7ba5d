//! The device's persisted state as it comes back from flash after a reboot:
//! arbitrary flash images (the store's record headers) and arbitrary
//! records inside well-formed headers (the agent's state decoder).
//! Nothing panics, the agent boots into a state of the lifecycle, and
//! whatever it then writes, a second boot reads back to the same state.
#![no_main]

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::health::{HealthMetrics, SlowTelemetryOnLowBattery};
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::agent::platform::*;
use lanyard_core::agent::{Agent, Identity};
use lanyard_nostd::flash::{FlashStore, RamFlash};
use libfuzzer_sys::fuzz_target;

/// Two slots of two 1 KiB sectors.
type Flash = RamFlash<4096>;
const SECTOR: u32 = 1024;

struct Probe;
impl HealthProbe for Probe {
    fn metrics(&mut self, _: u64) -> HealthMetrics {
        HealthMetrics {
            battery_pct: 80,
            link_quality_pct: 80,
            free_buffer_pct: 80,
            ..HealthMetrics::default()
        }
    }
    fn read_sensors(&mut self, _: u64) -> Option<SensorReading> {
        None
    }
}
struct Led;
impl Actuators for Led {
    fn blink(&mut self, _: u32, _: u32) {}
}

/// Boots an agent on `store`; returns its state and boot count.
fn boot(store: &mut FlashStore<Flash>) -> (LifecycleState, u64) {
    let (mut probe, mut led, mut commands) = (Probe, Led, NoCommands);
    let mut platform = Platform {
        storage: store,
        probe: &mut probe,
        actuators: &mut led,
        commands: &mut commands,
    };
    let mut agent: Agent<SlowTelemetryOnLowBattery, 4, 256> = Agent::new(
        Identity {
            mac: [1, 2, 3, 4, 5, 6],
            device_id: None,
            firmware: "fuzz",
        },
        DeviceConfig::default(),
        SlowTelemetryOnLowBattery::default(),
    );
    agent
        .boot(0, &mut platform)
        .expect("boot never fails on stored data");
    (agent.state(), agent.boot_count())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let mut flash = Flash::new();
    if mode & 1 == 0 {
        // The bytes are the flash image itself.
        let n = bytes.len().min(flash.bytes().len());
        flash.bytes_mut()[..n].copy_from_slice(&bytes[..n]);
    }
    let mut store = FlashStore::new(flash, 0, SECTOR);
    if mode & 1 == 1 {
        // The bytes are a record, written by the store (valid header, CRC).
        if store.store(StorageSlot::AgentState, bytes).is_err() {
            return;
        }
    }
    let (first, boots) = boot(&mut store);
    let (second, boots_after) = boot(&mut store);
    assert_eq!(second, first, "a second boot resumes where the first was");
    if first != LifecycleState::Decommissioned {
        // Decommissioned devices keep nothing; others count their boots.
        assert_eq!(boots_after, boots + 1);
    }
});
