//! `lanyard demo --ota`: a fleet on the embedded broker takes two staged
//! rollouts. A good release reaches every device stage by stage; a bad one
//! (its self-test fails on the device) rolls back on the first stage's
//! devices and aborts, and the rest of the fleet never downloads it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanyard_std::device::DeviceBuilder;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::ota::{FirmwareServer, Release, Rollout, RolloutPlan, run_firmware_server};
use lanyard_std::store::FileStore;
use lanyard_std::update::{BootRequest, DeviceUpdates, FileSlot, default_slot_dir};
use tokio::sync::{mpsc, oneshot};

/// The version whose self-test fails on every device.
const BAD: &str = "3.0.0";

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    version: String,
}

fn start_device(
    port: u16,
    i: usize,
    dir: &std::path::Path,
    key: [u8; 32],
    version: &str,
    restarts: mpsc::UnboundedSender<usize>,
) -> Result<Running, String> {
    let mac = [0x02, 0x00, 0x01, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let firmware: &'static str = Box::leak(version.to_owned().into_boxed_str());
    let (driver, _handle) =
        DeviceBuilder::new(mac, firmware, MqttConfig::new("127.0.0.1", port, ""), dir)
            .without_journal()
            .build()
            .map_err(|e| e.to_string())?;
    let slot = FileSlot::new(default_slot_dir(dir), 1 << 20).map_err(|e| e.to_string())?;
    let store = FileStore::encrypted(
        dir,
        lanyard_std::data_key::DataKey::at(lanyard_std::data_key::default_path(dir)),
    )
    .map_err(|e| e.to_string())?;
    let updates = DeviceUpdates::new(key, slot, store, firmware)
        .on_self_test(move || firmware != BAD)
        .on_restart(move || {
            let _ = restarts.send(i);
        });
    let mut driver = driver.with_updates(updates);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        if driver.start().await.is_ok() {
            let _ = driver
                .run_until(async {
                    let _ = stopped.await;
                })
                .await;
        }
    });
    Ok(Running {
        stop,
        task,
        version: version.to_owned(),
    })
}

pub(crate) async fn ota_demo(devices: usize) -> Result<(), String> {
    let port = lanyard_std::broker::free_port().map_err(|e| e.to_string())?;
    lanyard_std::broker::start_embedded(port, devices + 4)?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    println!("lanyard demo --ota: {devices} devices on 1.0.0, broker mqtt://127.0.0.1:{port}");
    let pair = ed25519_compact::KeyPair::generate();
    let server = Arc::new(Mutex::new(FirmwareServer::new()));
    let image = |seed: u8| -> Vec<u8> {
        (0..48 * 1024u32)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect()
    };
    for (job, version, seed) in [("fw-2.0.0", "2.0.0", 3u8), ("fw-3.0.0", BAD, 5)] {
        let release =
            Release::sign(job, version, image(seed), 1024, &pair.sk).map_err(|e| e.to_string())?;
        server.lock().expect("server").add(release);
    }
    let (offers, offers_rx) = mpsc::unbounded_channel();
    let (stop_server, stopped) = oneshot::channel::<()>();
    let mut transport = MqttTransport::connect_and_wait(
        MqttConfig::new("127.0.0.1", port, "lanyard-ota"),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| e.to_string())?;
    let s = server.clone();
    let serving = tokio::spawn(async move {
        run_firmware_server(s, &mut transport, offers_rx, async {
            let _ = stopped.await;
        })
        .await
    });

    // The fleet, and its supervisor: a device that asks to restart is
    // started again on the image its slot names.
    let (restart_tx, mut restarts) = mpsc::unbounded_channel::<usize>();
    let dirs: Vec<_> = (0..devices)
        .map(|i| tmp.path().join(format!("dev{i}")))
        .collect();
    let mut fleet = Vec::with_capacity(devices);
    for (i, dir) in dirs.iter().enumerate() {
        fleet.push(Some(start_device(
            port,
            i,
            dir,
            *pair.pk,
            "1.0.0",
            restart_tx.clone(),
        )?));
    }
    let ids: Vec<String> = (0..devices)
        .map(|i| {
            lanyard_core::agent::device_id_from_mac([
                0x02,
                0x00,
                0x01,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ])
            .to_string()
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fleet_tx, mut fleet_rx) = mpsc::unbounded_channel::<Vec<Option<Running>>>();
    let _ = fleet_tx.send(fleet);
    let supervisor = {
        let dirs = dirs.clone();
        let key = *pair.pk;
        let restart_tx = restart_tx.clone();
        tokio::spawn(async move {
            let mut fleet = fleet_rx.recv().await.unwrap_or_default();
            let mut restarted = 0usize;
            loop {
                tokio::select! {
                    Some(i) = restarts.recv() => {
                        let Some(old) = fleet[i].take() else { continue };
                        let _ = old.stop.send(());
                        let _ = old.task.await;
                        let slot = FileSlot::new(default_slot_dir(&dirs[i]), 1 << 20).ok();
                        let version = match slot.map(|s| s.boot_request()) {
                            Some(BootRequest::Trial) => {
                                if old.version == "1.0.0" { "2.0.0" } else { BAD }
                            }
                            _ => if old.version == BAD { "2.0.0" } else { old.version.as_str() },
                        }
                        .to_owned();
                        restarted += 1;
                        fleet[i] = start_device(port, i, &dirs[i], key, &version, restart_tx.clone()).ok();
                    }
                    Some(back) = fleet_rx.recv() => {
                        let _ = back;
                        return (fleet, restarted);
                    }
                }
            }
        })
    };

    let plan = RolloutPlan::staged();
    let good = super::ota::drive(
        &server,
        &offers,
        Rollout::new("fw-2.0.0", ids.clone(), plan.clone()),
    )
    .await;
    let good_line = match &good {
        Ok(()) => "rollout fw-2.0.0 completed".to_owned(),
        Err(e) => e.clone(),
    };
    let bad = super::ota::drive(
        &server,
        &offers,
        Rollout::new("fw-3.0.0", ids.clone(), plan),
    )
    .await;
    // The rolled-back devices restart on their old image.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = fleet_tx.send(Vec::new());
    let (fleet, restarted) = supervisor.await.map_err(|e| e.to_string())?;

    println!("\n== summary");
    println!("{good_line}");
    println!(
        "{}",
        bad.as_ref()
            .err()
            .cloned()
            .unwrap_or_else(|| "rollout fw-3.0.0 completed".into())
    );
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for r in fleet.iter().flatten() {
        *by_version.entry(r.version.clone()).or_default() += 1;
    }
    println!("devices by firmware version:");
    for (v, n) in &by_version {
        println!("  {v:<10} {n}");
    }
    let mut by_state: BTreeMap<(String, String), usize> = BTreeMap::new();
    {
        let s = server.lock().expect("server");
        for id in &ids {
            if let Some(p) = s.progress(id) {
                let state = match p.reason {
                    Some(r) => format!("{} ({})", p.state.name(), r.name()),
                    None => p.state.name().to_owned(),
                };
                *by_state.entry((p.job_id.clone(), state)).or_default() += 1;
            }
        }
    }
    println!("last report by job and state:");
    for ((job, state), n) in &by_state {
        println!("  {job:<10} {state:<32} {n}");
    }
    println!("restarts: {restarted}");
    for r in fleet.into_iter().flatten() {
        let _ = r.stop.send(());
        let _ = r.task.await;
    }
    let _ = stop_server.send(());
    let _ = serving.await;
    good?;
    match bad {
        Err(e) if e.contains("aborted") => Ok(()),
        other => Err(format!("the bad release should have aborted: {other:?}")),
    }
}
