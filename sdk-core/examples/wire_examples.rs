//! Prints a hex example of each shadow message; `docs/wire-format.md`
//! carries these, and `tests/wire_format_doc.rs` decodes them.

use lanyard_core::shadow::{ConflictPolicy, PathBuf, Shadow, StateTree, Value};
use lanyard_core::wire::{ShadowDelta, ShadowUpdate};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() -> Result<(), lanyard_core::Error> {
    let mut buf = [0u8; 1024];
    let p = |s: &str| PathBuf::from_dotted(s).unwrap();

    // A device reports a temperature and its LED; the LED period is deleted.
    let mut reported: StateTree<8, 256> = StateTree::new();
    reported.insert(&p("temp"), Value::Float(21.5))?;
    reported.insert(&p("led.on"), Value::Bool(true))?;
    reported.insert(&p("led.period_ms"), Value::Null)?;
    let mut up: ShadowUpdate<8, 256> = ShadowUpdate::new(1_700_000_000_000);
    up.reported = Some(reported);
    up.expected_version = Some(7);
    up.client_token = Some(heapless::String::try_from("c1").unwrap());
    let n = up.encode(&mut buf)?;
    println!("shadow-update {}", hex(&buf[..n]));

    // The cloud asks for a new interval; the delta a device receives.
    let mut shadow: Shadow<8, 256> = Shadow::new(ConflictPolicy::CloudWins);
    let mut desired: StateTree<8, 256> = StateTree::new();
    desired.insert(&p("config.interval_ms"), Value::Int(30_000))?;
    shadow.apply_desired(&desired, None, 1_700_000_000_000)?;
    let delta: ShadowDelta<8, 256> = ShadowDelta::of(&shadow, 1_700_000_000_500)?;
    let n = delta.encode(&mut buf)?;
    println!("shadow-delta {}", hex(&buf[..n]));

    // The whole document after the device reports it applied the change.
    let mut rep: StateTree<8, 256> = StateTree::new();
    rep.insert(&p("config.interval_ms"), Value::Int(30_000))?;
    shadow.apply_reported(&rep, None, 1_700_000_001_000)?;
    let _ = shadow.sync(1_700_000_001_000, 0, |_| {})?;
    let n = shadow.encode(&mut buf)?;
    println!("shadow-document {}", hex(&buf[..n]));
    Ok(())
}
