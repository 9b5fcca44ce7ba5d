//! The AWS IoT shadow JSON request parser: never panics, and a request that
//! fails to apply leaves the document unchanged.
#![no_main]

use lanyard_core::shadow::{ConflictPolicy, Shadow};
use lanyard_std::aws_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = aws_json::parse_update::<16, 512>(data) else {
        return;
    };
    let mut doc: Shadow<16, 512> = Shadow::new(ConflictPolicy::CloudWins);
    let mut buf = vec![0u8; 8192];
    let n = doc.encode(&mut buf).unwrap();
    let before = buf[..n].to_vec();
    match req.apply_to(&mut doc, 1) {
        Ok(_) => {
            let _ = aws_json::get_document(&doc, 1, req.client_token.as_deref()).unwrap();
            let _ = aws_json::accepted_document(&req, doc.version(), 1);
        }
        Err(e) => {
            let n = doc.encode(&mut buf).unwrap();
            assert_eq!(&buf[..n], &before[..]);
            let _ = aws_json::error_document(&e, 1, None);
        }
    }
});
