//! The `lanyard` command as a user runs it.

use std::process::Command;

fn lanyard(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn decode_prints_any_message_as_json_and_refuses_garbage_clearly() {
    let (ok, out, _) = lanyard(&["decode", "a50001011b0000018bcfe591040219290403020400"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["type"], "heartbeat");
    assert_eq!(v["message"]["state"], "Active");
    let (ok, _, err) = lanyard(&["decode", "--kind", "ack", "ff00"]);
    assert!(!ok);
    assert!(err.starts_with("lanyard: ack:"), "{err}");
    let (ok, _, err) = lanyard(&["decode", "abc"]);
    assert!(!ok);
    assert!(err.contains("odd number of hex digits"), "{err}");
}

#[test]
fn the_demo_runs_a_small_fleet_to_its_summary() {
    let (ok, out, err) = lanyard(&["demo", "--devices", "5", "--speed", "60", "--minutes", "2"]);
    assert!(ok, "{err}");
    assert!(out.contains("-> register"), "no timeline:\n{out}");
    assert!(out.contains("state Provisioning -> Active"), "{out}");
    let summary = out.split("== summary").nth(1).expect("a summary");
    let devices: usize = summary
        .lines()
        .skip_while(|l| !l.starts_with("devices by state"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            l.split_whitespace()
                .last()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(devices, 5);
    assert!(summary.contains("heartbeat"));
    assert!(summary.contains("conflicts by policy"));
}
