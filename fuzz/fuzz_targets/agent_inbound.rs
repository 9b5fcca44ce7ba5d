//! Every inbound decoder of the device agent, and the agent itself fed
//! arbitrary messages: nothing panics, refused input changes nothing that is
//! persisted, and the lifecycle only moves along the table.
#![no_main]

mod common;

use common::{Commands, Probe, new_agent};
use lanyard_core::agent::AgentEvent;
use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::lifecycle::TRANSITIONS;
use lanyard_core::agent::messages::*;
use lanyard_core::agent::platform::*;
use libfuzzer_sys::fuzz_target;

#[derive(Default)]
struct Mem(Vec<u8>);
impl Storage for Mem {
    fn load(&mut self, _: StorageSlot, buf: &mut [u8]) -> Result<usize, StorageError> {
        let n = self.0.len().min(buf.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        Ok(n)
    }
    fn store(&mut self, slot: StorageSlot, data: &[u8]) -> Result<(), StorageError> {
        if slot == StorageSlot::AgentState {
            self.0 = data.to_vec();
        }
        Ok(())
    }
    fn wipe(&mut self) -> Result<(), StorageError> {
        self.0.clear();
        Ok(())
    }
}
fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // The decoders on their own.
    let _ = RegisterAccepted::decode(rest);
    let _ = Command::decode(rest).map(|c| {
        let a = c.args();
        (
            a.u64("count"),
            a.i64("n"),
            a.f64("x"),
            a.str("s"),
            a.bool("b"),
        )
    });
    let _ = DeviceConfig::default().decode_update(&mut minicbor::Decoder::new(rest));
    let _ = lanyard_core::wire::ShadowDelta::<16, 512>::decode(rest);
    let _ = Ack::decode(rest);
    let _ = ConfigAck::decode(rest);
    let _ = Telemetry::<16, 512>::decode(rest);

    // The agent, registered, fed the message.
    let (mut storage, mut probe, mut telemetry, mut cmds) =
        (Mem::default(), Probe, Probe, Commands);
    let mut p = Platform {
        storage: &mut storage,
        probe: &mut probe,
        telemetry: &mut telemetry,
        commands: &mut cmds,
        desired: &mut lanyard_core::agent::platform::MirrorDesired,
    };
    let mut agent = new_agent();
    let _ = agent.boot(0, &mut p);
    let mut buf = [0u8; 512];
    let accept = RegisterAccepted {
        device_id: "ly-010203040506",
        config: None,
        time_ms: 1,
    };
    let n = accept.encode(&mut buf).unwrap();
    agent
        .handle_inbound(1, MessageKind::RegisterAccepted, &buf[..n], &mut p)
        .unwrap();
    while agent.poll_event().is_some() {}
    let kind = MessageKind::ALL[selector as usize % MessageKind::ALL.len()];
    let state = agent.state();
    let persisted = p.storage_snapshot();
    match agent.handle_inbound(2, kind, rest, &mut p) {
        Err(_) => {
            assert_eq!(agent.state(), state);
            assert_eq!(p.storage_snapshot(), persisted);
        }
        Ok(()) => {
            while let Some(e) = agent.poll_event() {
                if let AgentEvent::StateChanged { from, to, cause } = e {
                    assert!(TRANSITIONS.contains(&(from, cause, to)));
                }
            }
        }
    }
    agent.handle_timeout(100_000, &mut p);
    while agent.poll_transmit(&mut buf).unwrap().is_some() {}
});

trait Snapshot {
    fn storage_snapshot(&mut self) -> Vec<u8>;
}
impl Snapshot for Platform<'_> {
    fn storage_snapshot(&mut self) -> Vec<u8> {
        let mut b = vec![0u8; 2048];
        let n = self.storage.load(StorageSlot::AgentState, &mut b).unwrap();
        b.truncate(n);
        b
    }
}
