//! The decoders of firmware updates (jobs, blocks, block requests,
//! reports, and the download record read back at boot) and of the
//! provisioning exchange, on arbitrary bytes: nothing panics, and whatever
//! decodes encodes back to bytes that decode to the same thing. A download
//! record that is taken is consistent: saved again, it reads back the same.
//! A device's update session fed a run of arbitrary messages on the
//! update topics neither panics nor sends more than its window of
//! requests and its reports.
#![no_main]

use lanyard_core::update::messages::UpdateTopic;
use lanyard_core::update::messages::{Block, BlockRequest, UpdateJob, UpdateReport};
use lanyard_core::update::{RECORD_MAX, Running, SlotError, UpdateSession, UpdateSlot, Updater};
use lanyard_std::provision::messages as p;
use libfuzzer_sys::fuzz_target;

/// Decodes, re-encodes, decodes again: the same value.
macro_rules! round_trip {
    ($t:ty, $bytes:expr) => {
        if let Ok(v) = <$t>::decode($bytes) {
            let mut out = vec![0u8; $bytes.len() + 64];
            let n = v.encode(&mut out).expect("re-encodes");
            assert_eq!(<$t>::decode(&out[..n]).expect("decodes again"), v);
        }
    };
}

/// The same for the provisioning messages (they encode into a Vec).
macro_rules! round_trip_vec {
    ($t:ty, $bytes:expr) => {
        if let Some(v) = <$t>::decode($bytes) {
            assert_eq!(<$t>::decode(&v.encode()), Some(v));
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    match mode % 14 {
        0 => round_trip!(UpdateJob, bytes),
        1 => round_trip!(Block, bytes),
        2 => round_trip!(BlockRequest, bytes),
        3 => round_trip!(UpdateReport, bytes),
        4 => {
            let mut up = Updater::new([9; 32]);
            if up.resume(bytes).is_ok() {
                let mut out = [0u8; RECORD_MAX];
                let n = up.save(&mut out).expect("a taken record saves");
                let mut again = Updater::new([9; 32]);
                again.resume(&out[..n]).expect("a saved record is taken");
                assert_eq!(again.state(), up.state());
                assert_eq!(again.report(0), up.report(0));
            } else {
                assert_eq!(up.state(), None);
            }
        }
        5 => round_trip_vec!(p::CsrRequest, bytes),
        6 => round_trip_vec!(p::CsrAccepted, bytes),
        7 => round_trip_vec!(p::RegisterRequest, bytes),
        8 => round_trip_vec!(p::RegisterAccepted, bytes),
        9 => round_trip_vec!(p::ConfirmRequest, bytes),
        10 => round_trip_vec!(p::Rejected, bytes),
        11 => round_trip_vec!(p::RevokeRequest, bytes),
        12 => session(bytes),
        _ => round_trip_vec!(p::RevokeAnswer, bytes),
    }
});

/// A slot in memory.
struct Ram(Vec<u8>);

impl UpdateSlot for Ram {
    fn capacity(&self) -> u32 {
        4096
    }
    fn erase(&mut self) -> Result<(), SlotError> {
        self.0 = vec![0xff; 4096];
        Ok(())
    }
    fn write(&mut self, at: u32, data: &[u8]) -> Result<(), SlotError> {
        let end = at as usize + data.len();
        self.0
            .get_mut(at as usize..end)
            .ok_or(SlotError)?
            .copy_from_slice(data);
        Ok(())
    }
    fn read(&mut self, at: u32, buf: &mut [u8]) -> Result<(), SlotError> {
        let end = at as usize + buf.len();
        buf.copy_from_slice(self.0.get(at as usize..end).ok_or(SlotError)?);
        Ok(())
    }
    fn mark_trial(&mut self) -> Result<(), SlotError> {
        Ok(())
    }
    fn confirm(&mut self) -> Result<(), SlotError> {
        Ok(())
    }
    fn revert(&mut self) -> Result<(), SlotError> {
        Ok(())
    }
}

/// Messages split at each 0xff byte, the byte after it picking the topic.
fn session(bytes: &[u8]) {
    let mut s = UpdateSession::new([9; 32], Ram(Vec::new())).with_max_block_size(512);
    let running = Running {
        version: "1.0.0",
        degraded: false,
    };
    for (i, msg) in bytes.split(|b| *b == 0xff).enumerate() {
        let Some((&which, payload)) = msg.split_first() else {
            continue;
        };
        let topic = UpdateTopic::ALL[usize::from(which) % UpdateTopic::ALL.len()];
        let _ = s.handle(topic, payload, running);
        let mut out = [0u8; 512];
        let mut sent = 0;
        while let Ok(Some(_)) = s.poll_transmit(i as u64 * 1_000, &mut out) {
            sent += 1;
            // A report or two (refusal, state, verification) and a window
            // of requests at most.
            assert!(sent <= 3 + lanyard_core::update::WINDOW, "{sent} messages");
            if let Some(r) = s.take_record(&mut [0u8; RECORD_MAX]) {
                r.expect("the record fits RECORD_MAX");
            }
        }
    }
}
