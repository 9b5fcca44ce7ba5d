//! The rollout service's messages on arbitrary bytes (what any client the
//! broker lets write the service's request topic can send it, and what an
//! operator's tool reads back): nothing panics, and whatever decodes
//! encodes back to bytes that decode to the same thing. A request that
//! decodes keeps the limits the service relies on (pieces, devices, a plan
//! whose stages grow to the whole fleet).
#![no_main]

use lanyard_std::ota_messages::{
    MAX_DEVICES, MAX_UPLOAD_CHUNK, ProgressReport, RolloutAction, RolloutAnswer, RolloutRequest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Some(r) = RolloutRequest::decode(bytes) {
                match &r.action {
                    RolloutAction::Upload { bytes, .. } => assert!(bytes.len() <= MAX_UPLOAD_CHUNK),
                    RolloutAction::Start { devices, plan, .. } => {
                        assert!(devices.len() <= MAX_DEVICES);
                        assert!(plan.stages.windows(2).all(|w| w[1] > w[0]));
                        assert_eq!(plan.stages.last(), Some(&1.0));
                    }
                    _ => {}
                }
                assert_eq!(RolloutRequest::decode(&r.encode()), Some(r));
            }
        }
        1 => {
            if let Some(a) = RolloutAnswer::decode(bytes) {
                assert_eq!(RolloutAnswer::decode(&a.encode()), Some(a));
            }
        }
        _ => {
            if let Some(p) = ProgressReport::decode(bytes) {
                assert_eq!(ProgressReport::decode(&p.encode()), Some(p));
            }
        }
    }
});
