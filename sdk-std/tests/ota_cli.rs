//! `lanyard ota` as an operator runs it: a signing key, a signed release,
//! and a staged rollout to `lanyard device` processes over mosquitto. The
//! test plays the devices' supervisor: a device that exits with status 75
//! is started again on the image its slot names. A good release reaches
//! every device; one whose self-test fails stops after the first stage and
//! the others never download it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Mosquitto, lanyard_cli};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = lanyard_cli(args);
    assert!(ok, "lanyard {args:?}: {err}");
    out
}

struct Device {
    mac: String,
    dir: PathBuf,
    child: Child,
    version: &'static str,
    restarts: u32,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(url: &str, mac: &str, dir: &Path, key: &Path, version: &str, self_test: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args([
            "device",
            "--broker",
            url,
            "--mac",
            mac,
            "--state-dir",
            s(dir),
            "--update-key",
            s(key),
            "--firmware-version",
            version,
            "--self-test",
            self_test,
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Signs `work/{image}` as `version`, job `job`, into `work/{job}` with the
/// fleet key `work/fleet.key`; the command's output.
fn sign(work: &Path, image: &str, version: &str, job: &str) -> String {
    let p = |n: &str| work.join(n);
    ok(&[
        "ota",
        "sign",
        "--key",
        s(&p("fleet.key")),
        "--image",
        s(&p(image)),
        "--version",
        version,
        "--job",
        job,
        "--out",
        s(&p(job)),
    ])
}

/// A `lanyard twin` on `url`, its state in `dir`.
fn twin(url: &str, dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["twin", "--broker", url, "--state-dir", s(dir)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the twin host lists `n` devices.
fn registered(url: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok_, out, _) = lanyard_cli(&["fleet", "--broker", url, "list", "--json"]);
        if ok_ && out.matches("\"device\"").count() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the devices never registered: {out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The devices' supervisor: a device that exited asking to restart (status
/// 75) is started again on the image its slot names.
fn supervise(
    url: &str,
    devices: &mut [Device],
    key: &Path,
    new_version: &'static str,
    self_test: &str,
) {
    for d in devices.iter_mut() {
        if let Some(st) = d.child.try_wait().unwrap() {
            assert_eq!(st.code(), Some(75), "{} exited: {st}", d.mac);
            let old = if d.version == new_version {
                "1.0.0"
            } else {
                d.version
            };
            d.version = match std::fs::read_to_string(d.dir.join("slot/boot"))
                .unwrap_or_default()
                .trim()
            {
                "trial" | "confirmed" => new_version,
                _ => old,
            };
            d.restarts += 1;
            d.child = start(url, &d.mac, &d.dir, key, d.version, self_test);
        }
    }
}

/// Runs a rollout of `release` to `devices` to its end, restarting each
/// device that asks (on `new_version`); the rollout's success and output.
fn roll_out(
    url: &str,
    release: &Path,
    devices: &mut [Device],
    key: &Path,
    new_version: &'static str,
    self_test: &str,
    all: bool,
) -> (bool, String) {
    let work = release.parent().unwrap();
    let ids: Vec<String> = devices
        .iter()
        .map(|d| format!("ly-{}", d.mac.replace(':', "")))
        .collect();
    let ids = ids.join(",");
    // Every device the twin host knows, or these.
    let target = if all {
        vec!["--all"]
    } else {
        vec!["--devices", &ids]
    };
    let log = work.join(format!(
        "rollout-{}.log",
        release.file_name().unwrap().to_str().unwrap()
    ));
    let mut rollout = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args([
            "ota",
            "rollout",
            "--broker",
            url,
            "--release",
            s(release),
            "--stages",
            "20,100",
        ])
        .args(&target)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = rollout.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the rollout did not end");
        supervise(url, devices, key, new_version, self_test);
        std::thread::sleep(Duration::from_millis(100));
    };
    // The rollout may end on a device's report before that device has
    // restarted out of its trial: the restarts it asks for are still
    // served, until no device runs an image its slot has gone back from.
    let settled = |d: &Device| {
        let boot = std::fs::read_to_string(d.dir.join("slot/boot")).unwrap_or_default();
        match boot.trim() {
            "trial" | "trial-booted" => false,
            "reverted" => d.version != new_version,
            _ => true,
        }
    };
    while !devices.iter().all(settled) {
        assert!(Instant::now() < deadline, "the devices did not settle");
        supervise(url, devices, key, new_version, self_test);
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(log.with_extension("err")).unwrap();
    (status.success(), out)
}

/// Devices `range` on 1.0.0, taking updates signed with `key`.
fn fleet(
    url: &str,
    work: &Path,
    key: &Path,
    range: std::ops::RangeInclusive<u8>,
    self_test: &str,
) -> Vec<Device> {
    range
        .map(|i| {
            let mac = format!("02:00:00:00:0b:0{i}");
            let dir = work.join(format!("dev{i}"));
            let child = start(url, &mac, &dir, key, "1.0.0", self_test);
            Device {
                mac,
                dir,
                child,
                version: "1.0.0",
                restarts: 0,
            }
        })
        .collect()
}

/// Makes the fleet key in `work` and signs an image of `len` bytes (a
/// pattern stepping by `step`) as release `fw-2`, version 2.0.0; the image.
fn release_fw2(work: &Path, len: u32, step: u32) -> Vec<u8> {
    ok(&["ota", "keygen", "--out", s(&work.join("fleet"))]);
    let image: Vec<u8> = (0..len).map(|i| (i * step % 251) as u8).collect();
    std::fs::write(work.join("image.bin"), &image).unwrap();
    sign(work, "image.bin", "2.0.0", "fw-2");
    image
}

/// Keeps the devices supervised until each runs `version`, then checks
/// that each took it once (one restart into it, its slot holding `image`).
fn each_took_it_once(
    url: &str,
    devices: &mut [Device],
    key: &Path,
    version: &'static str,
    image: &[u8],
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while devices.iter().any(|d| d.version != version) {
        assert!(Instant::now() < deadline, "not all on {version}");
        supervise(url, devices, key, version, "true");
        std::thread::sleep(Duration::from_millis(100));
    }
    for d in devices.iter() {
        assert_eq!(d.restarts, 1, "{} restarted {} times", d.mac, d.restarts);
        assert_eq!(std::fs::read(d.dir.join("slot/image.bin")).unwrap(), image);
    }
}

#[test]
fn a_release_rolls_out_in_stages_and_a_failing_one_stops_after_the_first() {
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n);
    ok(&["ota", "keygen", "--out", s(&p("fleet"))]);
    let image: Vec<u8> = (0..30_000u32).map(|i| (i * 17 % 251) as u8).collect();
    std::fs::write(p("image.bin"), &image).unwrap();
    let out = sign(work.path(), "image.bin", "2.0.0", "fw-2");
    assert!(out.contains("30000 bytes in 30 blocks"), "{out}");

    // A twin host: the first rollout targets every device it knows.
    let mut twin = twin(&url, &p("twin"));

    // A good release: both stages, every device on 2.0.0.
    let key = p("fleet.pub");
    let mut devices = fleet(&url, work.path(), &key, 1..=3, "true");
    registered(&url, 3);
    let (ok_, out) = roll_out(&url, &p("fw-2"), &mut devices, &key, "2.0.0", "true", true);
    assert!(ok_, "{out}");
    assert!(out.contains("Completed"), "{out}");
    assert!(
        out.contains("Running(0)") && out.contains("Running(1)"),
        "{out}"
    );
    for d in &devices {
        assert_eq!(d.version, "2.0.0", "{}", d.mac);
        assert_eq!(std::fs::read(d.dir.join("slot/image.bin")).unwrap(), image);
        assert_eq!(
            std::fs::read_to_string(d.dir.join("slot/boot")).unwrap(),
            "confirmed"
        );
    }
    drop(devices);

    // A release whose self-test fails: the first device rolls back, the
    // rollout aborts, the other two never take it.
    let bad: Vec<u8> = image.iter().map(|b| b ^ 0x55).collect();
    std::fs::write(p("bad.bin"), &bad).unwrap();
    sign(work.path(), "bad.bin", "3.0.0", "fw-3");
    let mut devices = fleet(&url, work.path(), &key, 4..=6, "false");
    std::thread::sleep(Duration::from_secs(1));
    let (ok_, out) = roll_out(
        &url,
        &p("fw-3"),
        &mut devices,
        &key,
        "3.0.0",
        "false",
        false,
    );
    assert!(!ok_, "{out}");
    assert!(
        out.contains("aborted") && out.contains("1 of 1 finished devices failed"),
        "{out}"
    );
    let first = &devices[0];
    assert_eq!(first.version, "1.0.0");
    assert_eq!(first.restarts, 2, "to the trial and back");
    assert_eq!(
        std::fs::read_to_string(first.dir.join("slot/boot")).unwrap(),
        "reverted"
    );
    for d in &devices[1..] {
        assert_eq!(d.restarts, 0);
        assert!(
            !d.dir.join("slot/image.bin").exists(),
            "{} downloaded it",
            d.mac
        );
    }
    let _ = twin.kill();
    let _ = twin.wait();
}

/// Waits until `file` holds `needle`, keeping the devices supervised.
fn wait_for_output(
    file: &Path,
    needle: &str,
    url: &str,
    devices: &mut [Device],
    key: &Path,
    new_version: &'static str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::fs::read_to_string(file).unwrap_or_default()
            + &std::fs::read_to_string(file.with_extension("err")).unwrap_or_default();
        if out.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in: {out}");
        supervise(url, devices, key, new_version, "true");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rollout_targets_the_devices_running_a_version_and_pauses_and_resumes_on_signals() {
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n);
    release_fw2(work.path(), 20_000, 7);
    let mut twin = twin(&url, &p("twin"));
    let key = p("fleet.pub");
    // Two devices on 1.0.0, one on 1.5.0 (not in the group).
    let mut devices = fleet(&url, work.path(), &key, 1..=2, "true");
    let other_dir = p("dev9");
    let other = Device {
        mac: "02:00:00:00:0b:09".into(),
        child: start(&url, "02:00:00:00:0b:09", &other_dir, &key, "1.5.0", "true"),
        dir: other_dir,
        version: "1.5.0",
        restarts: 0,
    };
    registered(&url, 3);

    // Nobody runs 0.5.0: a clear refusal, nothing offered.
    let (ok_, _, err) = lanyard_cli(&[
        "ota",
        "rollout",
        "--broker",
        &url,
        "--release",
        s(&p("fw-2")),
        "--all",
        "--running",
        "0.5.0",
    ]);
    assert!(!ok_);
    assert!(
        err.contains("no device the twin host knows runs 0.5.0"),
        "{err}"
    );

    let log = p("rollout.log");
    let mut rollout = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args([
            "ota",
            "rollout",
            "--broker",
            &url,
            "--release",
            s(&p("fw-2")),
            "--all",
            "--running",
            "1.0.0",
            // 50 %, then twice that: the same two stages as `--stages 50,100`.
            "--exponential",
            "50,2",
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    let pid = rollout.id().to_string();
    let signal = |sig: &str| {
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success());
    };
    // Paused once the first stage (one device of the two) is offered.
    wait_for_output(&log, "Running(0)", &url, &mut devices, &key, "2.0.0");
    signal("-USR1");
    wait_for_output(&log, "Paused(0)", &url, &mut devices, &key, "2.0.0");
    // The device under way finishes; the second is not offered meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !devices
        .iter()
        .any(|d| d.version == "2.0.0" && d.restarts == 1)
    {
        assert!(Instant::now() < deadline, "the first device never took it");
        supervise(&url, &mut devices, &key, "2.0.0", "true");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    supervise(&url, &mut devices, &key, "2.0.0", "true");
    let on_new = devices.iter().filter(|d| d.version == "2.0.0").count();
    assert_eq!(on_new, 1, "paused: only the first stage's device took it");
    assert!(rollout.try_wait().unwrap().is_none(), "paused, not ended");

    signal("-USR2");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = rollout.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the rollout did not end");
        supervise(&url, &mut devices, &key, "2.0.0", "true");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{out}");
    assert!(
        out.contains("Completed") && out.contains("Running(1)"),
        "{out}"
    );
    for d in &devices {
        assert_eq!(d.version, "2.0.0", "{}", d.mac);
    }
    // The device outside the group never heard of it.
    assert!(!other.dir.join("slot/image.bin").exists());
    drop(other);
    let _ = twin.kill();
    let _ = twin.wait();
}

/// The firmware the twin host says `device` registered with last.
fn firmware_of(url: &str, device: &str) -> Option<String> {
    let (ok_, out, _) = lanyard_cli(&["fleet", "--broker", url, "list", "--json"]);
    if !ok_ {
        return None;
    }
    let list: serde_json::Value = serde_json::from_str(&out).ok()?;
    list.as_array()?
        .iter()
        .find(|d| d["device"] == device)
        .and_then(|d| d["firmware"].as_str().map(str::to_owned))
}

/// Starts `lanyard ota rollout` of `release` to `device` alone, in one
/// stage, its output beside the release (`.log`, `.err`).
fn rollout_to(url: &str, release: &Path, device: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args([
            "ota",
            "rollout",
            "--broker",
            url,
            "--release",
            s(release),
            "--stages",
            "100",
            "--devices",
            device,
        ])
        .stdout(std::fs::File::create(release.with_extension("log")).unwrap())
        .stderr(std::fs::File::create(release.with_extension("err")).unwrap())
        .spawn()
        .unwrap()
}

fn output_of(release: &Path) -> String {
    std::fs::read_to_string(release.with_extension("log")).unwrap()
        + &std::fs::read_to_string(release.with_extension("err")).unwrap()
}

/// `lanyard device --exec-image`: no supervisor restarts it for an
/// update; it executes the new image itself, in its own process. Its
/// images are scripts that run this lanyard under another version (a new
/// build stands in for them on a real device). A build that crashes at
/// start is a failed trial: the next start goes back to the build before
/// it, which is the previous update (slot A), not the installed one, and
/// the update after a confirmed one goes to the other slot file, so the
/// running executable is never rewritten.
#[test]
fn a_device_executes_its_new_build_itself_and_goes_back_from_one_that_crashes() {
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n);
    ok(&["ota", "keygen", "--out", s(&p("fleet"))]);
    let lanyard = env!("CARGO_BIN_EXE_lanyard");
    let good = format!("#!/bin/sh\nLANYARD_FIRMWARE_VERSION=2.0.0 exec '{lanyard}' \"$@\"\n");
    std::fs::write(p("good.sh"), &good).unwrap();
    sign(work.path(), "good.sh", "2.0.0", "fw-2");
    let bad = "#!/bin/sh\necho 'build 3.0.0 stops at start' >&2\nexit 3\n";
    std::fs::write(p("bad.sh"), bad).unwrap();
    sign(work.path(), "bad.sh", "3.0.0", "fw-3");
    let mut twin = twin(&url, &p("twin"));

    let mac = "02:00:00:00:0c:01";
    let id = "ly-020000000c01";
    let dir = p("dev");
    let key = p("fleet.pub");
    let log = dir.with_extension("log");
    // What the device's supervisor starts: the installed lanyard.
    let start_installed = || {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        Command::new(lanyard)
            .args(["device", "--broker", &url, "--mac", mac, "--state-dir"])
            .arg(&dir)
            .arg("--update-key")
            .arg(&key)
            .arg("--exec-image")
            .env_remove("LANYARD_FIRMWARE_VERSION")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap()
    };
    let mut device = start_installed();
    let pid = device.id();
    let wait_firmware = |want: &str, device: &mut Child| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while firmware_of(&url, id).as_deref() != Some(want) {
            assert!(
                device.try_wait().unwrap().is_none(),
                "the device stopped: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(Instant::now() < deadline, "never on {want}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_firmware(env!("CARGO_PKG_VERSION"), &mut device);

    // The good build: taken, executed in the same process, confirmed.
    let mut rollout = rollout_to(&url, &p("fw-2"), id);
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = rollout.try_wait().unwrap() {
            break st;
        }
        assert!(
            device.try_wait().unwrap().is_none(),
            "the device exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "the rollout did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{}", output_of(&p("fw-2")));
    wait_firmware("2.0.0", &mut device);
    assert_eq!(device.id(), pid);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == b"LANYARD_BOOTED=candidate"),
        "the process runs the slot's image"
    );
    let slot = dir.join("slot");
    assert_eq!(
        std::fs::read_to_string(slot.join("image.bin")).unwrap(),
        good
    );
    assert_eq!(
        std::fs::read_to_string(slot.join("boot")).unwrap(),
        "confirmed"
    );

    // The bad build goes to the other slot file, crashes on its trial, and
    // the next start goes back to 2.0.0.
    let mut rollout = rollout_to(&url, &p("fw-3"), id);
    let mut crashes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = rollout.try_wait().unwrap() {
            break st;
        }
        if let Some(st) = device.try_wait().unwrap() {
            crashes.push(st.code());
            device = start_installed();
        }
        assert!(Instant::now() < deadline, "the rollout did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = output_of(&p("fw-3"));
    assert!(!status.success(), "{out}");
    assert!(out.contains("aborted"), "{out}");
    assert_eq!(crashes, vec![Some(3)], "one start of the bad build");
    wait_firmware("2.0.0", &mut device);
    assert_eq!(
        std::fs::read_to_string(slot.join("image-b.bin")).unwrap(),
        bad
    );
    assert_eq!(
        std::fs::read_to_string(slot.join("image.bin")).unwrap(),
        good
    );
    assert_eq!(
        std::fs::read_to_string(slot.join("boot")).unwrap(),
        "reverted\nfallback a\n"
    );
    let _ = device.kill();
    let _ = device.wait();
    let _ = twin.kill();
    let _ = twin.wait();
}

/// A rollout process killed mid-way and started again goes on from its
/// journal: the first stage's device is not picked again, each device
/// takes the release once, and a rollout that ended is not started again
/// by mistake.
#[test]
fn a_rollout_killed_midway_goes_on_from_its_journal() {
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n);
    let image = release_fw2(work.path(), 30_000, 13);
    let mut twin = twin(&url, &p("twin"));
    let key = p("fleet.pub");
    let mut devices = fleet(&url, work.path(), &key, 1..=4, "true");
    registered(&url, 4);
    let ids: Vec<String> = devices
        .iter()
        .map(|d| format!("ly-{}", d.mac.replace(':', "")))
        .collect();
    let ids = ids.join(",");
    let release = p("fw-2");
    let args = [
        "ota",
        "rollout",
        "--broker",
        &url,
        "--release",
        s(&release),
        "--stages",
        "25,100",
        "--devices",
        &ids,
    ];
    let run = |log: &Path| {
        Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(args)
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap()
    };

    // Killed once the first stage's device is offered.
    let first_log = p("first.log");
    let mut first = run(&first_log);
    wait_for_output(
        &first_log,
        "3 waiting, 1 in progress",
        &url,
        &mut devices,
        &key,
        "2.0.0",
    );
    first.kill().unwrap();
    first.wait().unwrap();
    let journal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(release.join("rollout.json")).unwrap())
            .unwrap();
    assert_eq!(journal["state"]["running"], 0, "{journal}");
    assert_eq!(
        journal["offered"].as_object().unwrap().len(),
        1,
        "{journal}"
    );
    // The devices go on meanwhile (the first may finish unheard).
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        supervise(&url, &mut devices, &key, "2.0.0", "true");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Started again: from the journal, to the end.
    let second_log = p("second.log");
    let mut second = run(&second_log);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the rollout did not end");
        supervise(&url, &mut devices, &key, "2.0.0", "true");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&second_log).unwrap()
        + &std::fs::read_to_string(second_log.with_extension("err")).unwrap();
    assert!(status.success(), "{out}");
    assert!(
        out.contains("resuming from its journal") && out.contains("1 of 4 devices offered"),
        "{out}"
    );
    assert!(out.contains("Completed"), "{out}");
    // Let the last trial settle, then: every device on the release, each
    // having taken it once.
    each_took_it_once(&url, &mut devices, &key, "2.0.0", &image);

    // Ended: the same command is refused rather than run again.
    let (ok_, _, err) = lanyard_cli(&args);
    assert!(!ok_);
    assert!(err.contains("has ended (Completed"), "{err}");
    drop(devices);
    let _ = twin.kill();
    let _ = twin.wait();
}

/// Rollouts run by the twin host (`lanyard twin --rollouts`): handed over
/// by `lanyard ota start`, paused, kept paused across a SIGKILL and
/// restart of the twin host, resumed, and completed with each device
/// taking the release once; the same release is not rolled out twice, and
/// an unknown rollout is refused by name. Only the fleet's operator
/// changes it, and the service's audit log says who did what.
#[test]
fn the_twin_host_runs_a_rollout_and_takes_it_up_again_after_a_restart() {
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n);
    // Over one message: the image travels in two pieces.
    let image = release_fw2(work.path(), 200_000, 11);
    let twin_with_rollouts = || {
        Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(["twin", "--broker", &url, "--state-dir"])
            .arg(p("twin"))
            .arg("--rollouts")
            .arg(p("rollouts"))
            .args(["--operators", "ops-1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut twin = twin_with_rollouts();
    let key = p("fleet.pub");
    let mut devices = fleet(&url, work.path(), &key, 1..=4, "true");
    registered(&url, 4);
    let status = || {
        let (ok_, out, err) = lanyard_cli(&["ota", "status", "--broker", &url, "fw-2"]);
        assert!(ok_, "{err}");
        out
    };

    let out = ok(&[
        "ota",
        "start",
        "--broker",
        &url,
        "--release",
        s(&p("fw-2")),
        "--all",
        "--stages",
        "25,100",
        "--detach",
        "--operator",
        "ops-1",
    ]);
    assert!(
        out.contains("handed to the twin host's rollout service"),
        "{out}"
    );
    let (ok_, _, err) = lanyard_cli(&[
        "ota",
        "cancel",
        "--broker",
        &url,
        "fw-2",
        "--operator",
        "intruder",
    ]);
    assert!(!ok_);
    assert!(err.contains("intruder is not an operator"), "{err}");
    let out = ok(&[
        "ota",
        "pause",
        "--broker",
        &url,
        "fw-2",
        "--operator",
        "ops-1",
    ]);
    assert!(out.contains("Paused(0)"), "{out}");

    // The twin host dies and comes back: the rollout is still paused.
    twin.kill().unwrap();
    twin.wait().unwrap();
    let journal = p("rollouts").join("fw-2").join("rollout.json");
    assert!(journal.exists(), "the rollout keeps a journal");
    twin = twin_with_rollouts();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok_, out, _) = lanyard_cli(&["ota", "status", "--broker", &url, "fw-2"]);
        if ok_ && out.contains("Paused(0)") {
            break;
        }
        assert!(Instant::now() < deadline, "not taken up paused: {out}");
        supervise(&url, &mut devices, &key, "2.0.0", "true");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Only the first stage's device was ever offered it.
    let offered = devices
        .iter()
        .filter(|d| d.restarts > 0 || d.dir.join("slot/image.bin").exists())
        .count();
    assert!(offered <= 1, "{offered} devices took it while paused");

    ok(&[
        "ota",
        "resume",
        "--broker",
        &url,
        "fw-2",
        "--operator",
        "ops-1",
    ]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = status();
        if out.contains("Completed") {
            break;
        }
        assert!(!out.contains("Aborted"), "{out}");
        assert!(Instant::now() < deadline, "never completed: {out}");
        supervise(&url, &mut devices, &key, "2.0.0", "true");
        std::thread::sleep(Duration::from_millis(200));
    }
    each_took_it_once(&url, &mut devices, &key, "2.0.0", &image);

    // Once only; and a rollout nobody started is refused by name.
    let (ok_, _, err) = lanyard_cli(&[
        "ota",
        "start",
        "--broker",
        &url,
        "--release",
        s(&p("fw-2")),
        "--all",
        "--detach",
        "--operator",
        "ops-1",
    ]);
    assert!(!ok_);
    assert!(err.contains("rollout fw-2 exists"), "{err}");
    let (ok_, _, err) = lanyard_cli(&["ota", "status", "--broker", &url, "fw-9"]);
    assert!(!ok_);
    assert!(err.contains("no rollout fw-9"), "{err}");

    // Who did what, chained: the end is recorded within the service's
    // next sweep (a second).
    let log = p("rollouts").join("audit.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let shown = ok(&["audit", "show", s(&log)]);
        if shown.contains("rollout_ended") || Instant::now() > deadline {
            break shown;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let said: Vec<(String, String)> = shown
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            (e["actor"].to_string(), e["action"].to_string())
        })
        .collect();
    let expected = [
        ("ops-1", "rollout_started"),
        ("ops-1", "rollout_paused"),
        ("ops-1", "rollout_resumed"),
        ("rollout-service", "rollout_ended"),
    ]
    .map(|(a, b)| (format!("{a:?}"), format!("{b:?}")));
    assert_eq!(said, expected, "{shown}");
    assert!(shown.contains(r#""state":"completed""#), "{shown}");
    assert!(ok(&["audit", "verify", s(&log)]).contains("4 entries, chained"));
    drop(devices);
    let _ = twin.kill();
    let _ = twin.wait();
}
