//! Puts the memory layout where cortex-m-rt's link.x looks for it, as
//! memory.x: memory/default.x, or memory/update.x with the `update`
//! feature (it keeps most of the SRAM as the update slot's stand-in
//! flash). Neither is called memory.x in the crate's directory, where the
//! linker would find it first. For the `update` feature, also the fleet's
//! public key (`LANYARD_FLEET_KEY`, 64 hex
//! digits, as `lanyard ota keygen` writes it in OUT.pub) where
//! `src/updates.rs` includes it.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let update = env::var_os("CARGO_FEATURE_UPDATE").is_some();
    let memory = if update {
        "memory/update.x"
    } else {
        "memory/default.x"
    };
    fs::copy(memory, out.join("memory.x")).expect("the memory layout is next to build.rs");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory");
    println!("cargo:rerun-if-env-changed=LANYARD_FLEET_KEY");
    if update {
        let hex = env::var("LANYARD_FLEET_KEY").unwrap_or_else(|_| {
            panic!(
                "the update feature needs the fleet's public key: set LANYARD_FLEET_KEY \
                 to the 64 hex digits of `lanyard ota keygen`'s OUT.pub"
            )
        });
        let hex = hex.trim();
        let bytes: Option<Vec<u8>> = (hex.len() == 64)
            .then(|| {
                (0..32)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                    .collect()
            })
            .flatten();
        let Some(bytes) = bytes else {
            panic!("LANYARD_FLEET_KEY is not 64 hex digits: {hex:?}");
        };
        let list: Vec<String> = bytes.iter().map(|b| format!("0x{b:02x}")).collect();
        fs::write(out.join("fleet_key.rs"), format!("[{}]", list.join(", ")))
            .expect("OUT_DIR is writable");
    }
}
