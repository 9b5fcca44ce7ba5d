//! The device's persisted state as it comes back from flash after a reboot:
//! arbitrary flash images (the store's record headers) and arbitrary
//! records inside well-formed headers (the agent's state decoder).
//! Nothing panics; the agent boots into a state of the lifecycle, and
//! whatever it then writes, a second boot reads back to the same state; or
//! it refuses to boot (a record it cannot read, a decommissioned device),
//! writes nothing, and a second boot refuses the same way.
#![no_main]

mod common;

use common::{Commands, Probe, new_agent};
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::agent::platform::*;
use lanyard_nostd::flash::{FlashStore, RamFlash};
use libfuzzer_sys::fuzz_target;

/// Two slots of two 1 KiB sectors.
type Flash = RamFlash<4096>;
const SECTOR: u32 = 1024;

/// Boots an agent on `store`; returns its state, boot count and whether it
/// booted.
fn boot(store: &mut FlashStore<Flash>) -> (LifecycleState, u64, bool) {
    let (mut probe, mut telemetry, mut commands) = (Probe, Probe, Commands);
    let mut platform = Platform {
        storage: store,
        probe: &mut probe,
        telemetry: &mut telemetry,
        commands: &mut commands,
        desired: &mut lanyard_core::agent::platform::MirrorDesired,
    };
    let mut agent = new_agent();
    let booted = agent.boot(0, &mut platform).is_ok();
    (agent.state(), agent.boot_count(), booted)
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
    let (first, boots, booted) = boot(&mut store);
    let (second, boots_after, booted_again) = boot(&mut store);
    assert_eq!(second, first, "a second boot resumes where the first was");
    assert_eq!(booted_again, booted, "a refused boot is refused again");
    if booted {
        assert_eq!(boots_after, boots.wrapping_add(1));
    } else {
        // Refused: nothing was written.
        assert_eq!(boots_after, boots);
    }
});
