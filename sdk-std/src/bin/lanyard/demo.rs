//! `lanyard demo`: a simulated fleet, a twin host and an operator on an
//! embedded broker, with a live timeline and a summary.

use super::*;
use lanyard_core::shadow::FleetPolicies;
use lanyard_std::app::{AppClient, AppError};
use lanyard_std::device::DeviceHandle;

/// What the demo's operator does at a step, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OperatorStep {
    Diagnostics,
    PushConfig,
    Blink,
    ReadSensor,
    Setpoint,
    EnterMaintenance,
    ExitMaintenance,
}

impl OperatorStep {
    /// The action of step `step` (from 1): the seven in turn.
    fn of(step: u64) -> Self {
        use OperatorStep::*;
        [
            ExitMaintenance,
            Diagnostics,
            PushConfig,
            Blink,
            ReadSensor,
            Setpoint,
            EnterMaintenance,
        ][(step % 7) as usize]
    }

    fn name(self) -> &'static str {
        match self {
            OperatorStep::Diagnostics => "diagnostics",
            OperatorStep::PushConfig => "config",
            OperatorStep::Blink => "blink_led",
            OperatorStep::ReadSensor => "read_sensor",
            OperatorStep::Setpoint => "setpoint",
            OperatorStep::EnterMaintenance => "enter_maintenance",
            OperatorStep::ExitMaintenance => "exit_maintenance",
        }
    }

    /// Does this step to device `id` (the `n`th of the fleet).
    async fn run(
        self,
        app: &mut AppClient<MqttTransport>,
        id: &str,
        n: usize,
        step: u64,
        now: u64,
        buttons: &[DeviceHandle],
    ) -> Result<(), AppError> {
        match self {
            // Pushed to the whole fleet at once by `push_to_fleet`.
            OperatorStep::PushConfig => Ok(()),
            OperatorStep::Setpoint => {
                // First the app sets 70 and the devices follow; the next
                // time it asks for 72 while users press the button for 68
                // on every other device: a conflict, settled by LatestWins
                // (the fleet's policy for hvac).
                // The mode is manual_resolve: when both sides change it,
                // it waits for the operator (`settle_conflicts`).
                let first = step < 7;
                let mut t: StateTree<8, 256> = StateTree::new();
                let _ = t.insert(
                    &ShadowPath::from_dotted("hvac.setpoint").unwrap_or_default(),
                    Value::Int(if first { 70 } else { 72 }),
                );
                let _ = t.insert(
                    &ShadowPath::from_dotted("hvac.mode").unwrap_or_default(),
                    Value::Text(if first { "auto" } else { "cool" }),
                );
                // Users press first, on every other device: the device's
                // report and the app's change cross on their way. Half of
                // them change the setpoint (latest_wins settles it), the
                // other half the mode (manual_resolve: it waits for the
                // operator). One change each: after a conflict the host
                // holds the device's next sync back a moment.
                if !first && n.is_multiple_of(4) {
                    let _ = buttons[n].report("hvac.setpoint", LocalValue::Int(68));
                } else if !first && n % 4 == 2 {
                    let _ = buttons[n].report("hvac.mode", LocalValue::Text("heat".into()));
                }
                app.set_desired(id, &t, now).await.map(|_| ())
            }
            // Maintenance only for the first device: it shows in the
            // timeline.
            OperatorStep::EnterMaintenance | OperatorStep::ExitMaintenance if n != 0 => Ok(()),
            cmd => {
                let mut args = minicbor::Encoder::new(Vec::new());
                if cmd == OperatorStep::Blink {
                    // {"count": 3, "period_ms": 500}
                    let _ = args
                        .map(2)
                        .and_then(|e| e.str("count")?.u8(3)?.str("period_ms")?.u16(500));
                }
                app.command(
                    id,
                    cmd.name(),
                    &args.into_writer(),
                    now,
                    Duration::from_secs(5),
                )
                .await
                .map(|_| ())
            }
        }
    }
}

/// What the demo's operator did through the operator's calls.
#[derive(Debug, Default)]
struct OperatorTally {
    /// Configuration pushes: devices that applied, ignored, rejected, did
    /// not answer.
    config: [usize; 4],
    /// Conflicts parked for an operator that it settled.
    settled: usize,
}

/// Pushes configuration `version` (the fleet's heartbeat interval) to
/// every device at once and counts the answers.
async fn push_to_fleet(
    app: &mut AppClient<MqttTransport>,
    ids: &[String],
    version: u64,
    wait: Duration,
    tally: &std::sync::Mutex<OperatorTally>,
) {
    use lanyard_core::agent::config::{ConfigField, ConfigPatch};
    let mut patch = ConfigPatch::new(version);
    // The default interval: always valid.
    let _ = patch.set(ConfigField::HeartbeatMs, 10_000);
    if let Ok(r) = app.push_config_to(ids, &patch, wait).await {
        let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
        for (slot, n) in tally.config.iter_mut().zip([
            r.applied.len(),
            r.ignored.len(),
            r.rejected.len(),
            r.unanswered.len(),
        ]) {
            *slot += n;
        }
    }
}

/// Lists the fleet and settles every conflict parked for an operator with
/// the cloud's value (the demo's operator's rule: the schedule wins).
async fn settle_conflicts(
    app: &mut AppClient<MqttTransport>,
    tally: &std::sync::Mutex<OperatorTally>,
) {
    let devices = match app.list(None, Duration::from_secs(5)).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("operator: the fleet could not be listed: {e}");
            return;
        }
    };
    for d in devices.iter().filter(|d| d.parked > 0) {
        let Ok(shadow) = app.get_shadow(&d.device, Duration::from_secs(5)).await else {
            continue;
        };
        let paths: Vec<String> = shadow
            .parked()
            .map(|(p, _)| p.to_string_lossy().as_str().to_owned())
            .collect();
        for path in paths {
            let winner = lanyard_core::shadow::Source::Cloud;
            match app
                .resolve(&d.device, &path, winner, Duration::from_secs(5))
                .await
            {
                Ok(_) => tally.lock().unwrap_or_else(|p| p.into_inner()).settled += 1,
                Err(e) => tracing::warn!(device = d.device, path, "operator: not settled: {e}"),
            }
        }
    }
}

pub(crate) struct Totals {
    messages: BTreeMap<&'static str, (u64, u64)>,
}

pub(crate) async fn demo(
    devices: usize,
    speed: f64,
    minutes: u64,
    broker: BrokerArgs,
    metrics: Option<Metrics>,
    cost_fleet: Option<(PathBuf, u64)>,
    claim: Option<(PathBuf, u16)>,
) -> Result<(), String> {
    // rumqttd refuses `$aws/...` subscriptions: AWS topics only on an
    // external broker.
    let aws = broker.broker.is_some();
    let broker = if aws {
        broker
    } else {
        let port = lanyard_std::broker::free_port().map_err(|e| e.to_string())?;
        lanyard_std::broker::start_embedded(port, devices + 4)?;
        BrokerArgs {
            broker: Some(format!("mqtt://127.0.0.1:{port}")),
            ca: None,
            cert: None,
            key: None,
        }
    };
    let url = broker.url()?.to_owned();
    let clock = Clock::compressed(speed);
    let start = clock.now_ms();
    let end = start + minutes * 60_000;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let macs: Vec<[u8; 6]> = (0..devices)
        .map(|i| [0x02, 0x00, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8])
        .collect();
    // Who connects as what: each its own identity when the demo provisions
    // by claim, else the broker's flags for everyone.
    let identities = match &claim {
        Some((ca_dir, port)) => Some(
            super::credentials::DemoFleet::start(&url, ca_dir, *port, &macs, tmp.path()).await?,
        ),
        None => None,
    };
    let connect_as = |who: &str| -> Result<MqttConfig, String> {
        match &identities {
            Some(fleet) => fleet.service(who),
            None => broker.mqtt(who),
        }
    };
    println!(
        "lanyard demo: {devices} devices, twin host, broker {url}, {minutes} simulated minutes at {speed}x"
    );

    // The twin host, with the fleet's configuration and policies.
    let fleet = DeviceConfig {
        version: 1,
        ..DeviceConfig::default()
    };
    let mut policies = FleetPolicies::new(ConflictPolicy::CloudWins);
    policies
        .set("hvac", ConflictPolicy::LatestWins)
        .map_err(|e| e.to_string())?;
    policies
        .set("hvac.mode", ConflictPolicy::ManualResolve)
        .map_err(|e| e.to_string())?;
    let mut twin_host = TwinHost::in_memory(fleet.clone()).with_policies(policies);
    if let Some(m) = &metrics {
        twin_host = twin_host.with_metrics(m.clone());
    }
    let mut twin_transport = MqttTransport::connect(connect_as("lanyard-twin")?);
    let (twin_stop, twin_stop_rx) = oneshot::channel::<()>();
    let twin_task = tokio::spawn(async move {
        let r = run_twin(&mut twin_host, &mut twin_transport, clock, aws, async {
            let _ = twin_stop_rx.await;
        })
        .await;
        (twin_host, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The fleet.
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<(usize, DriverEvent)>();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let mut buttons = Vec::new();
    for (i, &mac) in macs.iter().enumerate() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let fwd = ev_tx.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if fwd.send((i, e)).is_err() {
                    break;
                }
            }
        });
        // The battery starts at 40 % and loses 1 % every 10 to 14 s, so each
        // device crosses the critical 10 % a little after minute 5.
        let drain = 10_000 + (i as u64 % 5) * 1_000;
        let device_broker = match &identities {
            Some(fleet) => fleet.device(i)?,
            None => broker.mqtt("")?,
        };
        let (d, button) = make_device(
            mac,
            device_broker,
            tmp.path().join(format!("dev{i}")),
            clock,
            drain,
            40,
        )
        .without_journal()
        .build()
        .map_err(|e| e.to_string())?;
        buttons.push(button);
        let mut d = d.with_events(tx);
        if let Some(m) = &metrics {
            d = d.with_metrics(m.clone());
        }
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        stops.push(stop_tx);
        tasks.push(tokio::spawn(async move {
            d.start().await?;
            d.run_until(async {
                let _ = stop_rx.await;
            })
            .await?;
            Ok::<_, lanyard_std::driver::StartError>(d)
        }));
    }
    drop(ev_tx);

    // The operator: a command or a configuration change about every 45 s,
    // through the app client.
    let mut operator = AppClient::new(MqttTransport::connect(connect_as("lanyard-operator")?))
        .await
        .map_err(|e| e.to_string())?;
    let ids: Vec<String> = macs
        .iter()
        .map(|mac| lanyard_core::agent::device_id_from_mac(*mac).to_string())
        .collect();
    let bar = ProgressBar::new(minutes * 60);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} simulated s  {msg}")
            .map_err(|e| e.to_string())?,
    );
    let mut totals = Totals {
        messages: BTreeMap::new(),
    };
    // What a fog tier would send instead of this telemetry: the same
    // readings through gateways summarising over 1- and 5-minute windows
    // (simulated time), as `lanyard bridge --fog-window-s` does.
    let mut fogs: Vec<(u64, lanyard_std::fog::Aggregator)> = [60u64, 300]
        .into_iter()
        .map(|s| {
            let config = lanyard_std::fog::FogConfig {
                window_ms: s * 1_000,
                dead_band: 0.0,
            };
            (s, lanyard_std::fog::Aggregator::new(config))
        })
        .collect();
    let script_ids = ids.clone();
    let bar2 = bar.clone();
    // Shared, so that the operator can be stopped mid-step at the end.
    let tally = std::sync::Arc::new(std::sync::Mutex::new(OperatorTally::default()));
    let operator_tally = tally.clone();
    let operator_task = tokio::spawn(async move {
        let tally = operator_tally;
        let mut step = 0u64;
        loop {
            step += 1;
            let at = start + step * 45_000;
            if at > end {
                break;
            }
            tokio::time::sleep(clock.real_wait_until(at)).await;
            let now = clock.now_ms();
            let action = OperatorStep::of(step);
            bar2.set_message(format!("operator: {}", action.name()));
            if action == OperatorStep::PushConfig {
                // Answers are waited for up to 10 simulated seconds.
                let wait = clock
                    .real_wait_until(clock.now_ms() + 10_000)
                    .max(Duration::from_millis(500));
                push_to_fleet(
                    &mut operator,
                    &script_ids,
                    fleet.version + step,
                    wait,
                    &tally,
                )
                .await;
            }
            for (n, id) in script_ids.iter().enumerate() {
                // Failures show in the devices' timelines and the summary;
                // the operator carries on with the next device.
                let _ = action.run(&mut operator, id, n, step, now, &buttons).await;
            }
            settle_conflicts(&mut operator, &tally).await;
        }
        operator
    });

    // Collect events until the end; print the first device's timeline.
    let timeline_id = ids.first().cloned().unwrap_or_default();
    let deadline = tokio::time::sleep(clock.real_wait_until(end));
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = ticker.tick() => bar.set_position(clock.now_ms().saturating_sub(start) / 1_000),
            Some((i, e)) = ev_rx.recv() => {
                if let DriverEvent::Sent { kind, payload, at_ms } = &e {
                    let t = totals.messages.entry(kind.topic_suffix()).or_default();
                    t.0 += 1;
                    t.1 += payload.len() as u64;
                    if *kind == MessageKind::Telemetry {
                        for (_, fog) in &mut fogs {
                            let _ = fog.take(*at_ms, &ids[i], payload);
                            fog.due(*at_ms);
                        }
                    }
                }
                if i == 0 {
                    if let Some(line) = timeline_line(&e) {
                        let at = match &e {
                            DriverEvent::Sent { at_ms, .. } | DriverEvent::Received { at_ms, .. } | DriverEvent::Refused { at_ms, .. }
                            | DriverEvent::Agent { at_ms, .. } | DriverEvent::Reconnected { at_ms } => *at_ms,
                        };
                        let s = at.saturating_sub(start) as f64 / 1_000.0;
                        let text = format!("[{:02}:{:04.1}] {timeline_id} {line}", (s / 60.0) as u64, s % 60.0);
                        if bar.is_hidden() {
                            println!("{text}");
                        } else {
                            bar.println(text);
                        }
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    // The operator stops with the scenario: nothing it would still ask
    // could be answered once the fleet and the host stop.
    operator_task.abort();

    // Stop everything and gather the figures.
    for s in stops {
        let _ = s.send(());
    }
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut reconnects = 0;
    let mut dropped = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(d)) => {
                *states.entry(d.agent().state().to_string()).or_default() += 1;
                reconnects += d.transport().reconnects();
                dropped += d.agent().stats().dropped.iter().sum::<u64>();
            }
            _ => *states.entry("failed".into()).or_default() += 1,
        }
    }
    let _ = twin_stop.send(());
    let (twin_host, _) = twin_task.await.map_err(|e| e.to_string())?;
    let _ = operator_task.await;
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    let stats = twin_host.stats();
    let offline = twin_host
        .devices()
        .filter(|d| twin_host.is_offline(d))
        .count();

    println!("\n== summary: {devices} devices, {minutes} simulated minutes ==");
    println!("devices by state:");
    for s in LifecycleState::ALL {
        if let Some(n) = states.get(s.name()) {
            println!("  {:<16} {n:>8}", s.name());
        }
    }
    if let Some(n) = states.get("failed") {
        println!("  {:<16} {n:>8}", "failed");
    }
    println!("messages sent by devices, by kind:");
    let (mut all, mut bytes) = (0, 0);
    for (k, (n, b)) in &totals.messages {
        println!("  {k:<16} {n:>8} {b:>10} B");
        all += n;
        bytes += b;
    }
    println!(
        "  {:<16} {all:>8} {bytes:>10} B on the wire (payloads)",
        "total"
    );
    // The same traffic for a month (30 days), per device.
    let month = 30.0 * 86_400.0 / (minutes as f64 * 60.0) / devices.max(1) as f64;
    println!(
        "  scaled to a 30-day month: {:.0} messages and {:.1} MB a device",
        all as f64 * month,
        bytes as f64 * month / 1e6
    );
    if let Some((path, fleet_devices)) = &cost_fleet {
        let class = lanyard_std::cost::DeviceClass::observed(
            "demo devices",
            *fleet_devices,
            devices as u64,
            minutes as f64 * 60.0,
            all,
            bytes,
        )
        .ok_or("--cost-fleet: the demo's devices sent nothing to go by")?;
        let file = serde_json::json!({"classes": [class.to_json()]});
        std::fs::write(path, format!("{file:#}\n"))
            .map_err(|e| format!("--cost-fleet {}: {e}", path.display()))?;
        println!(
            "  written to {} for {fleet_devices} such devices: `lanyard cost --fleet {}` prices them",
            path.display(),
            path.display()
        );
    }
    println!(
        "twin host: {} registrations ({} again after a reboot, {} retries answered again), {} updates, {} deltas, {} refused",
        stats.registrations,
        stats.reregistrations,
        stats.registration_retries,
        stats.updates,
        stats.deltas,
        stats.rejected
    );
    println!("conflicts by policy:");
    for (p, n) in ConflictPolicy::ALL.iter().zip(stats.conflicts) {
        println!("  {:<16} {n:>8}", p.name());
    }
    println!(
        "operator: {} conflicts parked for it settled with the cloud's value (a parked conflict \
         also ends when the device takes the cloud's value by itself); configuration pushed to \
         the fleet: {} applied, {} ignored, {} rejected, {} unanswered",
        tally.settled, tally.config[0], tally.config[1], tally.config[2], tally.config[3]
    );
    println!(
        "liveness: {} of {} devices online at the end, {} times a device went offline",
        twin_host.devices().count() - offline,
        twin_host.devices().count(),
        stats.went_offline
    );
    println!("fog tier: the same telemetry summarised by gateways (count, min, max, mean, last):");
    for (window_s, fog) in &mut fogs {
        fog.drain();
        let f = fog.stats();
        let (after_n, after_b) = (
            all - f.readings + f.summaries,
            bytes - f.bytes_in + f.bytes_out,
        );
        let change = |before: u64, after: u64| {
            let pct = 100.0 * (after as f64 / before.max(1) as f64 - 1.0);
            if pct <= 0.0 {
                format!("{:.0} % fewer", -pct)
            } else {
                format!("{pct:.0} % more")
            }
        };
        println!(
            "  {window_s:>3} s windows: telemetry {} -> {} messages ({}), {} -> {} B ({}); \
             everything upstream {all} -> {after_n} messages ({}), {bytes} -> {after_b} B ({})",
            f.readings,
            f.summaries,
            change(f.readings, f.summaries),
            f.bytes_in,
            f.bytes_out,
            change(f.bytes_in, f.bytes_out),
            change(all, after_n),
            change(bytes, after_b),
        );
    }
    println!("reconnects: {reconnects}; messages dropped from full outboxes: {dropped}");
    Ok(())
}
