//! The decoders of firmware updates (jobs, blocks, block requests,
//! reports, and the download record read back at boot) and of the
//! provisioning exchange, on arbitrary bytes: nothing panics, and whatever
//! decodes encodes back to bytes that decode to the same thing. A download
//! record that is taken is consistent: saved again, it reads back the same.
#![no_main]

use lanyard_core::update::messages::{Block, BlockRequest, UpdateJob, UpdateReport};
use lanyard_core::update::{RECORD_MAX, Updater};
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
    match mode % 13 {
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
        _ => round_trip_vec!(p::RevokeAnswer, bytes),
    }
});
