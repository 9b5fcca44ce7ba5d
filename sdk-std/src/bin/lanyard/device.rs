//! `lanyard device`: a simulated device of the example board on a broker.

use super::*;
use lanyard_core::agent::BootError;
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::agent::platform::StorageError;
use lanyard_std::driver::StartError;
use std::path::Path;

/// A simulated device of the example board (battery, sensors, LED) with
/// `lanyard_std::device::DeviceBuilder`.
pub(crate) fn make_device(
    mac: [u8; 6],
    broker: MqttConfig,
    state_dir: PathBuf,
    clock: Clock,
    drain_every_ms: u64,
    start_battery: u8,
) -> DeviceBuilder {
    let mut sensors =
        SimulatedSensors::new(clock.now_ms(), drain_every_ms, u64::from(mac[5]) * 7_919);
    sensors.start_battery_pct = start_battery;
    DeviceBuilder::new(mac, env!("CARGO_PKG_VERSION"), broker, state_dir)
        .clock(clock)
        .telemetry(sensors.clone())
        .commands(simulated_board(sensors.clone(), Default::default()))
        .probe(sensors)
}

pub(crate) async fn device(
    broker: &BrokerArgs,
    state_dir: PathBuf,
    mac: &str,
    tenant: Option<String>,
    reprovision: bool,
    (claim, update): (super::ClaimArgs, super::UpdateArgs),
    metrics: Option<Metrics>,
) -> Result<(), String> {
    let clock = Clock::real();
    let state_file = state_dir.join("agent-state.cbor");
    if reprovision {
        // The operator's act on the device's side: everything it saved goes
        // (its state, its credentials, its unsent messages), and it
        // registers as new.
        match std::fs::remove_dir_all(&state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("--reprovision: {}: {e}", state_dir.display())),
        }
    }
    // The bootloader's step, before anything else runs: it may start
    // another image in this process's place.
    let loader = if update.exec_image {
        Some(boot_step(&lanyard_std::update::default_slot_dir(
            &state_dir,
        ))?)
    } else {
        None
    };
    let mac_bytes = parse_mac(mac)?;
    // One key for the agent's state and the credentials: decommissioning
    // destroys it.
    let data_key =
        lanyard_std::data_key::DataKey::at(lanyard_std::data_key::default_path(&state_dir));
    let mut mqtt = broker.mqtt("")?;
    // By claim: its own certificate, made on first start and renewed while
    // it runs.
    if claim.claim_cert.is_some() && tenant.is_some() {
        return Err("provisioning by claim is for devices in the shared namespace".into());
    }
    let id = lanyard_core::agent::device_id_from_mac(mac_bytes);
    let renewal = super::credentials::by_claim(
        broker,
        &claim,
        &mut mqtt,
        &state_dir,
        data_key.clone(),
        id.as_str(),
        mac,
    )
    .await?;
    if mqtt.tls.is_some() {
        check_certificate(
            &mqtt,
            lanyard_core::agent::device_id_from_mac(mac_bytes).as_str(),
        )
        .await?;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let update_dir = state_dir.clone();
    let mut device =
        make_device(mac_bytes, mqtt, state_dir, clock, 60_000, 100).data_key(data_key.clone());
    // A version given for this run (a build that knows its own would not
    // need it): the process keeps it to its end.
    let firmware: &'static str = match update.firmware_version {
        Some(v) => Box::leak(v.into_boxed_str()),
        None => env!("CARGO_PKG_VERSION"),
    };
    device = device.firmware(firmware);
    if let Some(t) = &tenant {
        device = device.tenant(t);
    }
    // Acknowledgements and lifecycle events survive a crash of this
    // process until the broker has them (the builder's journal).
    let (driver, handle) = device.build().map_err(|e| e.to_string())?;
    if let Some(renewal) = renewal {
        super::credentials::keep_renewed(renewal, handle.credential_switch());
    }
    let mut driver = driver.with_events(tx);
    let (restart_tx, mut restart) = mpsc::unbounded_channel::<()>();
    if let Some(key) = &update.update_key {
        let key = super::ota::public_key(key)?;
        let slot = lanyard_std::update::FileSlot::new(
            lanyard_std::update::default_slot_dir(&update_dir),
            SLOT_CAPACITY,
        )
        .map_err(|e| format!("update slot: {e}"))?;
        let store = lanyard_std::store::FileStore::encrypted(&update_dir, data_key)
            .map_err(|e| format!("{}: {e}", update_dir.display()))?;
        let self_test = update.self_test.clone();
        let mut updates = lanyard_std::update::DeviceUpdates::new(key, slot, store, firmware);
        if let Some(running_candidate) = loader {
            updates = updates.booted_by_loader(running_candidate);
        }
        let updates = updates
            .on_self_test(move || match &self_test {
                Some(cmd) => std::process::Command::new("sh")
                    .args(["-c", cmd])
                    .status()
                    .is_ok_and(|s| s.success()),
                None => true,
            })
            .on_restart(move || {
                let _ = restart_tx.send(());
            });
        driver = driver.with_updates(updates);
    }
    if let Some(m) = metrics {
        driver = driver.with_metrics(m);
    }
    let id = driver.agent().device_id().to_owned();
    // The broker knows the device by its certificate: one for another
    // identity would be refused every topic, silently.
    let identity = match &tenant {
        Some(t) => format!("{t}/{id}"),
        None => id.clone(),
    };
    if let Some(cn) = broker.identity()? {
        if cn != identity {
            return Err(format!(
                "the client certificate is for {cn:?}, but this device is {identity:?}: \
                 a broker configured by `lanyard broker-config` knows a device by its \
                 certificate's common name"
            ));
        }
    }
    let printer_id = id.clone();
    tokio::spawn(async move {
        let id = printer_id;
        while let Some(e) = rx.recv().await {
            if let Some(line) = timeline_line(&e) {
                println!("{id} {line}");
            }
        }
    });
    driver.start().await.map_err(|e| match e {
        StartError::Boot(BootError::Decommissioned) => format!(
            "device {id} is decommissioned and does not start again; to put it back in \
             service an operator re-provisions it (on the twin host, and here with \
             --reprovision, which erases its saved state)"
        ),
        StartError::Boot(BootError::Storage(StorageError::Corrupt)) => format!(
            "device {id}: its saved state in {} is damaged (checksum mismatch) and the \
             device will not start from scratch on its own; inspect the file, then remove \
             it or run with --reprovision to start as a new device",
            state_file.display()
        ),
        e => format!("device {id}: {e}"),
    })?;
    let mut restarting = false;
    driver
        .run_until(async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                Some(()) = restart.recv() => restarting = true,
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    if restarting {
        // What the device said before it goes (its report) is delivered.
        let _ = driver.finish(std::time::Duration::from_secs(5)).await;
        if update.exec_image {
            println!("{id} restarting: the boot step chooses the image");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let err = restart_installed();
            eprintln!("{id}: the installed image does not start again ({err}): exit status 75");
        }
        println!("{id} restarting into the other image (exit status 75)");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(75);
    }
    if driver.agent().state() == LifecycleState::Decommissioned {
        println!("{id} decommissioned: stopped");
    }
    Ok(())
}

/// Stops a device whose certificate the broker refuses (revoked, expired,
/// not the fleet's) with why, rather than retrying for ever. A broker that
/// cannot be reached yet is not an error: the device keeps trying.
async fn check_certificate(mqtt: &MqttConfig, id: &str) -> Result<(), String> {
    let mut probe = mqtt.clone();
    probe.client_id = id.to_owned();
    match MqttTransport::connect_and_wait(probe, std::time::Duration::from_secs(10)).await {
        Ok(t) => {
            t.disconnect().await;
            Ok(())
        }
        Err(lanyard_std::transport::TransportError::Refused(why))
            if lanyard_std::mqtt::certificate_refusal(&why).is_some() =>
        {
            Err(format!("device {id}: {why}"))
        }
        Err(_) => Ok(()),
    }
}

/// Bytes a slot holds.
const SLOT_CAPACITY: u32 = 64 << 20;

/// Set in the environment of an image the boot step started: which one it
/// is (`candidate` or `fallback`), so that the step does not run twice.
const BOOTED_ENV: &str = "LANYARD_BOOTED";
/// The installed executable (the one the supervisor starts), carried to
/// the images it started: a restart starts over from it.
const INSTALLED_ENV: &str = "LANYARD_INSTALLED_IMAGE";
/// A version given to one image: not passed on to the next.
const FIRMWARE_VERSION_ENV: &str = "LANYARD_FIRMWARE_VERSION";

/// The installed executable: the one that started the chain of images.
fn installed_image() -> Result<PathBuf, String> {
    match std::env::var_os(INSTALLED_ENV) {
        Some(p) => Ok(PathBuf::from(p)),
        None => std::env::current_exe().map_err(|e| format!("this executable's path: {e}")),
    }
}

/// The bootloader's step of `--exec-image`: in the installed executable,
/// chooses the image (see `lanyard_std::update::boot_image`) and executes
/// it in this process's place. Returns, for the image that goes on running
/// here, whether it is the candidate slot's.
fn boot_step(slot_dir: &Path) -> Result<bool, String> {
    use lanyard_std::update::{BootImage, FileSlot, boot_image};
    use std::os::unix::process::CommandExt;
    match std::env::var(BOOTED_ENV).as_deref() {
        Ok("candidate") => return Ok(true),
        Ok(_) => return Ok(false),
        Err(_) => {}
    }
    let installed = installed_image()?;
    let slot = FileSlot::new(slot_dir, SLOT_CAPACITY)
        .map_err(|e| format!("update slot {}: {e}", slot_dir.display()))?;
    // A confirmed image that no longer starts would be chosen again and
    // again: after a few tries the installed one runs.
    for _ in 0..3 {
        let image = boot_image(&slot).map_err(|e| format!("update slot: {e}"))?;
        let (path, kind) = match &image {
            BootImage::Installed => return Ok(false),
            BootImage::Candidate(p) => (p, "candidate"),
            BootImage::Fallback(p) => (p, "fallback"),
        };
        let _ = set_executable(path);
        let err = std::process::Command::new(path)
            .args(passed_args())
            .env(BOOTED_ENV, kind)
            .env(INSTALLED_ENV, &installed)
            .exec();
        // Not started: the next step goes back from a trial, as a
        // bootloader does after a reset before confirmation.
        eprintln!("image {} does not start: {err}", path.display());
        if matches!(image, BootImage::Fallback(_)) {
            break;
        }
    }
    eprintln!("starting on the installed image");
    Ok(false)
}

/// This process's arguments for the image that runs next, less
/// `--reprovision`: it was done once, and would erase the update.
fn passed_args() -> impl Iterator<Item = std::ffi::OsString> {
    std::env::args_os()
        .skip(1)
        .filter(|a| a.as_os_str() != "--reprovision")
}

fn set_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// Starts over from the installed executable, as a reboot does: only
/// returns if it could not (the error).
fn restart_installed() -> String {
    use std::os::unix::process::CommandExt;
    let installed = match installed_image() {
        Ok(p) => p,
        Err(e) => return e,
    };
    std::process::Command::new(installed)
        .args(passed_args())
        .env_remove(BOOTED_ENV)
        .env_remove(INSTALLED_ENV)
        .env_remove(FIRMWARE_VERSION_ENV)
        .exec()
        .to_string()
}
