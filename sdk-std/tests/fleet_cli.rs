//! `lanyard fleet` as an operator runs it, against mosquitto, a `lanyard
//! twin` and a `lanyard device`, each its own process.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mosquitto, lanyard_cli};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn an_operator_sets_shows_commands_decommissions_and_reprovisions() {
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let dir = tempfile::tempdir().unwrap();
    let twin_dir = dir.path().join("twin");
    let dev_dir = dir.path().join("dev");
    let _twin = spawn(&[
        "twin",
        "--broker",
        &url,
        "--state-dir",
        twin_dir.to_str().unwrap(),
    ]);
    let mut dev = spawn(&[
        "device",
        "--broker",
        &url,
        "--state-dir",
        dev_dir.to_str().unwrap(),
    ]);
    let id = "ly-020000000001";
    let fleet = |args: &[&str]| {
        let mut all = vec!["fleet", "--broker", &url];
        all.extend_from_slice(args);
        lanyard_cli(&all)
    };
    let show = || {
        let (ok, out, err) = fleet(&["show", id, "--json"]);
        ok.then(|| serde_json::from_str::<serde_json::Value>(&out).unwrap())
            .ok_or(err)
    };
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    until("the device registered", &|| show().is_ok());

    // Desired state, answered with the version; the device reports it.
    let (ok, out, err) = fleet(&["set", id, "fan.speed=3", r#"mode="eco""#]);
    assert!(ok, "{err}");
    assert!(out.contains("desired state set, version"), "{out}");
    until("the device reported the desired state", &|| {
        show().is_ok_and(|s| {
            s["state"]["reported"]["fan"]["speed"] == 3 && s["state"]["reported"]["mode"] == "eco"
        })
    });
    let s = show().unwrap();
    assert_eq!(s["desired"]["mode"]["by"], "cloud");
    assert_eq!(s["reported"]["mode"]["by"], "device");
    let (ok, table, _) = fleet(&["show", id]);
    assert!(ok);
    assert!(
        table.contains("fan.speed") && table.contains("\"eco\""),
        "{table}"
    );

    // Refused writes say why, and exit 1.
    let (ok, _, err) = fleet(&["set", "ly-0000000000ee", "x=1"]);
    assert!(!ok);
    assert!(err.contains("ly-0000000000ee"), "{err}");
    let (ok, _, err) = fleet(&["set", id, "x=not json"]);
    assert!(!ok);
    assert!(err.contains("is not JSON"), "{err}");

    // A command, waited for to its final acknowledgement.
    let (ok, out, err) = fleet(&["command", id, "diagnostics"]);
    assert!(ok, "{err}");
    let ack: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ack["status"], "Succeeded");
    let (ok, out, _) = fleet(&["command", id, "reboot_the_moon"]);
    assert!(!ok);
    assert!(out.contains("Rejected"), "{out}");

    // Decommissioned: the device exits, the host refuses it; then back.
    let (ok, _, err) = fleet(&["decommission", id]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while dev.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the device did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
    until("the host refuses the decommissioned device", &|| {
        show().is_err_and(|e| e.contains("decommissioned"))
    });
    let (ok, out, err) = fleet(&["reprovision", id]);
    assert!(ok, "{err}");
    assert!(out.contains("may register again"));
    let (ok, _, err) = fleet(&["reprovision", id]);
    assert!(!ok, "twice");
    assert!(err.contains("not decommissioned"), "{err}");
}
