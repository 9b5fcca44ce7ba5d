//! A new fleet set up with the `lanyard` command alone, as
//! `docs/provisioning.md` walks it: a CA, the broker's configuration,
//! the provisioning service, a twin host, and a device made with only the
//! claim certificate, each its own process; then the device revoked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Mosquitto, free_port, lanyard_cli};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `lanyard args...` in the background, its output in `log`.
fn spawn(args: &[&str], log: &Path) -> Killed {
    let out = std::fs::File::create(log).unwrap();
    Killed(
        Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    )
}

/// [`spawn`], then waits until its log says `needle`.
fn spawn_until(args: &[String], log: &Path, needle: &str) -> Killed {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = spawn(&refs, log);
    until(
        &format!("lanyard {} says {needle:?}", args[0]),
        Duration::from_secs(30),
        &mut || {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains(needle)
        },
    );
    child
}

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = lanyard_cli(args);
    assert!(ok, "lanyard {args:?}: {err}");
    out
}

fn until(what: &str, within: Duration, f: &mut dyn FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A new fleet: its CA, certificates for the broker, the services and the
/// claim, the ACL and the broker's configuration, all by the `lanyard`
/// command, and mosquitto started with them.
struct Setup {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    provision_port: u16,
    pid_file: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| -> PathBuf { dir.path().join(name) };
    let ca = p("ca");
    ok(&["ca", "init", "--dir", s(&ca), "--name", "Test fleet"]);
    ok(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--name",
        "localhost",
        "--san",
        "localhost,127.0.0.1",
        "--out",
        s(&p("broker")),
    ]);
    for name in [
        "lanyard-twin",
        "lanyard-provision",
        "lanyard-ops",
        "lanyard-claim-acme",
    ] {
        ok(&[
            "ca",
            "issue",
            "--dir",
            s(&ca),
            "--name",
            name,
            "--out",
            s(&p(name)),
        ]);
    }
    // Mosquitto reads its key after it stops being root (in a real
    // deployment: `chown mosquitto broker.key`), and writes its process id
    // as itself.
    std::fs::set_permissions(
        p("broker.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let run = p("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let acl = ok(&[
        "acl",
        "--trusted",
        "lanyard-twin,lanyard-provision,lanyard-ops,lanyard-operator",
    ]);
    std::fs::write(p("acl"), acl).unwrap();
    let provision_port = free_port();
    let pid_file = run.join("mosquitto.pid");
    let conf_args = |port: u16| {
        ok(&[
            "broker-config",
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--ca",
            s(&ca.join("ca.pem")),
            "--cert",
            s(&p("broker.pem")),
            "--key",
            s(&p("broker.key")),
            "--acl",
            s(&p("acl")),
            "--provision-port",
            &provision_port.to_string(),
            "--crl",
            s(&ca.join("crl.pem")),
            "--pid-file",
            s(&pid_file),
        ])
    };
    let broker = Mosquitto::start_with_conf(|_, port| conf_args(port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", provision_port)).is_err() {
        assert!(Instant::now() < deadline, "no provisioning listener");
        std::thread::sleep(Duration::from_millis(20));
    }
    Setup {
        dir,
        broker,
        provision_port,
        pid_file,
    }
}

#[test]
fn a_device_made_with_the_claim_certificate_provisions_itself_and_is_refused_once_revoked() {
    let Setup {
        dir,
        broker,
        provision_port,
        pid_file,
    } = setup();
    let p = |name: &str| -> PathBuf { dir.path().join(name) };
    let ca = p("ca");

    let url = format!("mqtts://localhost:{}", broker.port);
    let tls = |who: &str| {
        vec![
            "--broker".to_owned(),
            url.clone(),
            "--ca".to_owned(),
            s(&ca.join("ca.pem")).to_owned(),
            "--cert".to_owned(),
            s(&p(&format!("{who}.pem"))).to_owned(),
            "--key".to_owned(),
            s(&p(&format!("{who}.key"))).to_owned(),
        ]
    };
    let args = |head: &[&str], tail: &[String]| -> Vec<String> {
        head.iter()
            .map(|a| a.to_string())
            .chain(tail.iter().cloned())
            .collect()
    };

    // A device on its own, and one behind a gateway (its serial number).
    std::fs::write(p("allow"), "02:00:00:00:00:07\nSN-0009 ly-gw-node-9\n").unwrap();
    let mut serve = args(&["provision", "serve"], &tls("lanyard-provision"));
    serve.extend(
        [
            "--ca-dir",
            s(&ca),
            "--allow",
            s(&p("allow")),
            "--broker-pid-file",
            s(&pid_file),
        ]
        .map(String::from),
    );
    let _service = spawn_until(&serve, &p("provision.log"), "ready");
    let mut twin = args(&["twin"], &tls("lanyard-twin"));
    twin.extend(["--state-dir", s(&p("twin"))].map(String::from));
    let _twin = spawn(
        &twin.iter().map(String::as_str).collect::<Vec<_>>(),
        &p("twin.log"),
    );

    // A device (or a gateway for one) has the CA and the claim
    // certificate, nothing of its own.
    let by_claim = |command: &str, rest: &[&str]| -> Vec<String> {
        let port = provision_port.to_string();
        let claim_cert = p("lanyard-claim-acme.pem");
        let claim_key = p("lanyard-claim-acme.key");
        let ca_pem = ca.join("ca.pem");
        let head = [
            command,
            "--broker",
            &url,
            "--ca",
            s(&ca_pem),
            "--claim-cert",
            s(&claim_cert),
            "--claim-key",
            s(&claim_key),
            "--provision-port",
            &port,
        ];
        head.iter().chain(rest).map(|a| a.to_string()).collect()
    };
    let device =
        |mac: &str, state: &str| by_claim("device", &["--mac", mac, "--state-dir", s(&p(state))]);
    let dev_args = device("02:00:00:00:00:07", "dev");
    let dev_refs: Vec<&str> = dev_args.iter().map(String::as_str).collect();
    let id = "ly-020000000007";
    let mut show = args(&["fleet"], &tls("lanyard-ops"));
    show.extend(["show", id, "--json"].map(String::from));
    let show_refs: Vec<&str> = show.iter().map(String::as_str).collect();
    {
        let _dev = spawn(&dev_refs, &p("dev.log"));
        until(
            "the device registered",
            Duration::from_secs(30),
            &mut || lanyard_cli(&show_refs).0,
        );
        let log = std::fs::read_to_string(p("dev.log")).unwrap();
        assert!(log.contains(&format!("{id} provisioned by claim")), "{log}");
    }
    let certs = ok(&["provision", "show", "--ca-dir", s(&ca), id, "--json"]);
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    assert_eq!(certs.as_array().unwrap().len(), 1, "{certs}");

    // Started again, it uses the certificate it kept.
    {
        let _dev = spawn(&dev_refs, &p("dev2.log"));
        let mut seen = false;
        until("the device came back", Duration::from_secs(30), &mut || {
            seen = std::fs::read_to_string(p("dev2.log"))
                .unwrap_or_default()
                .contains(id);
            seen
        });
        std::thread::sleep(Duration::from_secs(1));
        let log = std::fs::read_to_string(p("dev2.log")).unwrap();
        assert!(!log.contains("provisioned by claim"), "{log}");
    }
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ok(&[
            "provision",
            "show",
            "--ca-dir",
            s(&ca),
            id,
            "--json"
        ]))
        .unwrap()
        .as_array()
        .unwrap()
        .len(),
        1
    );

    // A device behind a gateway: the bridge provisions it by claim and
    // holds its key, then carries its link.
    let link = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let link_addr = link.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || link.accept().map(|(s, _)| s));
    {
        let gateway = p("gateway");
        let bridge_args = by_claim(
            "bridge",
            &[
                "--hardware",
                "SN-0009",
                "--device-id",
                "ly-gw-node-9",
                "--state-dir",
                s(&gateway),
                "--tcp",
                &link_addr,
            ],
        );
        let _bridge = spawn_until(&bridge_args, &p("bridge.log"), "bridging");
        let log = std::fs::read_to_string(p("bridge.log")).unwrap();
        assert!(log.contains("ly-gw-node-9 provisioned by claim"), "{log}");
    }
    let _link = held.join().unwrap().unwrap();
    let certs: serde_json::Value = serde_json::from_str(&ok(&[
        "provision",
        "show",
        "--ca-dir",
        s(&ca),
        "ly-gw-node-9",
        "--json",
    ]))
    .unwrap();
    assert_eq!(certs[0]["state"], "in_use", "{certs}");

    // Hardware not on the allow-list gets nothing, and says why.
    let stranger = device("02:00:00:00:00:08", "stranger");
    let (ok_, _, err) = lanyard_cli(&stranger.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok_);
    assert!(
        err.contains("not_allowed") && err.contains("allow-list"),
        "{err}"
    );

    // Revoked: the broker refuses it, and the device says so and stops.
    let out = ok(&[
        "provision",
        "revoke",
        "--ca-dir",
        s(&ca),
        id,
        "--decommission",
        "--broker-pid-file",
        s(&pid_file),
    ]);
    assert!(out.contains("1 certificate(s) revoked"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    let (ok_, _, err) = lanyard_cli(&dev_refs);
    assert!(!ok_);
    assert!(err.contains("revoked"), "{err}");
    let refusals: serde_json::Value =
        serde_json::from_str(&ok(&["provision", "show", "--ca-dir", s(&ca), "--json"])).unwrap();
    assert_eq!(refusals["not_allowed"], 1, "{refusals}");
}

#[test]
fn the_demo_provisions_its_fleet_by_claim_on_a_broker_that_knows_devices_by_certificate() {
    let Setup {
        dir,
        broker,
        provision_port,
        ..
    } = setup();
    let url = format!("mqtts://localhost:{}", broker.port);
    let (ok_, out, err) = lanyard_cli(&[
        "demo",
        "--devices",
        "5",
        "--speed",
        "60",
        "--minutes",
        "2",
        "--broker",
        &url,
        "--provision-by-claim",
        s(&dir.path().join("ca")),
        "--provision-port",
        &provision_port.to_string(),
    ]);
    assert!(ok_, "{err}\n{out}");
    assert!(out.contains("provisioned 5 devices by claim"), "{out}");
    let summary = out.split("== summary").nth(1).expect("a summary");
    assert!(
        summary.contains("liveness: 5 of 5 devices online"),
        "{summary}"
    );
}
