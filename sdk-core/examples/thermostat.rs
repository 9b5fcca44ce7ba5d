//! The seed chapter's thermostat conflict, under each policy: the app sets
//! 72 °F while someone presses the button for 68 °F. Prints what the shadow
//! decides, the delta the device gets, and the sync backoff.

use lanyard_core::shadow::{ConflictPolicy, PathBuf, Shadow, Source, StateTree, Value};

type Doc = Shadow<16, 512>;
type Tree = StateTree<16, 512>;

fn one(key: &str, v: i64) -> Tree {
    let mut t = Tree::new();
    t.insert(
        &PathBuf::from_dotted(key).expect("valid path"),
        Value::Int(v),
    )
    .expect("fits");
    t
}

fn delta_text(doc: &Doc) -> String {
    let mut d = Tree::new();
    doc.delta_into(&mut d).expect("fits");
    if d.is_empty() {
        "{}".into()
    } else {
        format!("{d:?}")
    }
}

fn main() -> Result<(), lanyard_core::Error> {
    let scenarios = [
        (ConflictPolicy::CloudWins, 10_500),
        (ConflictPolicy::DeviceWins, 10_500),
        (ConflictPolicy::LatestWins, 12_000),
        (ConflictPolicy::LatestWins, 10_900),
        (ConflictPolicy::ManualResolve, 10_500),
    ];
    for (policy, button_at) in scenarios {
        println!(
            "== {} (button pressed at t={:.1}s) ==",
            policy.name(),
            button_at as f64 / 1e3
        );
        let mut doc = Doc::new(policy);
        doc.apply_desired(&one("temp", 70), None, 0)?;
        doc.apply_reported(&one("temp", 70), None, 0)?;
        let _ = doc.sync(0, 0, |_| {})?;
        println!("t= 0.0s agreed on 70");
        doc.apply_desired(&one("temp", 72), None, 10_000)?;
        println!(
            "t=10.0s app sets desired 72           (version {})",
            doc.version()
        );
        doc.apply_reported(&one("temp", 68), None, button_at)?;
        println!(
            "t={:4.1}s button: device reports 68     (version {})",
            button_at as f64 / 1e3,
            doc.version()
        );

        let report = doc.sync(13_000, u32::MAX, |c| {
            let winner = match c.winner {
                Some(Source::Cloud) => "cloud",
                Some(Source::Device) => "device",
                None => "parked for an operator",
            };
            println!(
                "t=13.0s conflict at {}: cloud {:?} @{}ms vs device {:?} @{}ms -> {winner}",
                c.path, c.cloud, c.cloud_ts_ms, c.device, c.device_ts_ms
            );
        })?;
        println!(
            "        next sync not before t={:.1}s; desired now {:?}; delta {}",
            report.next_sync_not_before_ms as f64 / 1e3,
            doc.desired().get_dotted("temp").map(|e| e.value),
            delta_text(&doc)
        );
        if policy == ConflictPolicy::ManualResolve {
            let path = PathBuf::from_dotted("temp")?;
            doc.resolve(path.as_path(), Source::Device, 20_000)?;
            println!(
                "t=20.0s operator resolves for the device; delta {}",
                delta_text(&doc)
            );
        } else if !doc.in_sync() {
            doc.apply_reported(&one("temp", 72), None, 15_000)?;
            println!("t=15.0s device applies the delta and reports 72");
        }
        let _ = doc.sync(30_000, 0, |_| {})?;
        println!(
            "t=30.0s in sync: {}, version {}, conflicts {:?}\n",
            doc.in_sync(),
            doc.version(),
            doc.stats().by_policy
        );
    }
    Ok(())
}
