//! `lanyard demo`: a simulated fleet, a twin host and an operator on an
//! embedded broker, with a live timeline and a summary.

use super::*;
use lanyard_core::shadow::FleetPolicies;
use lanyard_std::app::AppClient;
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

    /// Does this step to the fleet `ids`. Failures show in the devices'
    /// timelines and the summary; the operator carries on.
    async fn run(self, app: &mut AppClient, ids: &[String], step: u64, at: &OperatorScene<'_>) {
        match self {
            // Pushed to the whole fleet at once by `push_to_fleet`.
            OperatorStep::PushConfig => {}
            OperatorStep::Setpoint => set_point(app, ids, step, at).await,
            cmd => {
                // Maintenance only for the first device: it shows in the
                // timeline.
                let targets = match cmd {
                    OperatorStep::EnterMaintenance | OperatorStep::ExitMaintenance => {
                        &ids[..ids.len().min(1)]
                    }
                    _ => ids,
                };
                let mut args = minicbor::Encoder::new(Vec::new());
                if cmd == OperatorStep::Blink {
                    // {"count": 3, "period_ms": 500}
                    let _ = args
                        .map(2)
                        .and_then(|e| e.str("count")?.u8(3)?.str("period_ms")?.u16(500));
                }
                // Sent to every target at once, alive for 30 simulated
                // seconds; the operator waits that long for the answers.
                let issued = at.clock.now_ms();
                let wait = at
                    .clock
                    .real_wait_until(issued + COMMAND_LIFETIME_MS)
                    .max(Duration::from_millis(200));
                let _ = app
                    .command_to(
                        targets,
                        cmd.name(),
                        &args.into_writer(),
                        (issued, COMMAND_LIFETIME_MS),
                        wait,
                    )
                    .await;
            }
        }
    }
}

/// The setpoint step: one change asked of every device at once.
async fn set_point(app: &mut AppClient, ids: &[String], step: u64, at: &OperatorScene<'_>) {
    // First the app sets 70 and the devices follow; the next time it asks
    // for 72 while users press the button for 68 on every other device: a
    // conflict, settled by LatestWins (the fleet's policy for hvac). The
    // mode is manual_resolve: when both sides change it, it waits for the
    // operator (`settle_conflicts`).
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
    // Users press first, on every other device: the device's report and
    // the app's change cross on their way. Half of them change the
    // setpoint (latest_wins settles it), the other half the mode
    // (manual_resolve: it waits for the operator). One change each: after
    // a conflict the host holds the device's next sync back a moment.
    for (n, button) in at.buttons.iter().enumerate() {
        if !first && n.is_multiple_of(4) {
            let _ = button.report("hvac.setpoint", LocalValue::Int(68));
        } else if !first && n % 4 == 2 {
            let _ = button.report("hvac.mode", LocalValue::Text("heat".into()));
        }
    }
    let changes: Vec<(&str, &StateTree<8, 256>)> = ids.iter().map(|id| (id.as_str(), &t)).collect();
    let now = at.clock.now_ms();
    // Recorded first: a device may report before the host's answer
    // reaches the operator.
    at.desired_asked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter_mut()
        .for_each(|asked| *asked = Some(now));
    let wait = at
        .clock
        .real_wait_until(now + COMMAND_LIFETIME_MS)
        .max(Duration::from_millis(200));
    match app.set_desired_to(&changes, now, wait).await {
        Ok(a) => tracing::debug!(
            applied = a.applied.len(),
            refused = ?a.refused.first(),
            unanswered = a.unanswered.len(),
            "operator: setpoint"
        ),
        Err(e) => tracing::warn!("operator: setpoint not asked: {e}"),
    }
}

/// The demo operator's identity: its client id, and the writer its writes
/// name.
const OPERATOR: &str = "lanyard-operator";

/// The demo's one property whose conflicts wait for the operator.
const MANUAL_PATH: &str = "hvac.mode";

/// How long a command the demo's operator sends stays valid, simulated ms.
const COMMAND_LIFETIME_MS: u64 = 30_000;

/// What the operator works with at a step.
struct OperatorScene<'a> {
    clock: Clock,
    /// The devices' local inputs (a user pressing a button).
    buttons: &'a [DeviceHandle],
    /// When the operator asked each device for a desired change.
    desired_asked: &'a super::outcomes::DesiredAsked,
}

/// What the demo's operator did through the operator's calls.
#[derive(Debug, Default)]
struct OperatorTally {
    /// Configuration pushes: devices that applied, ignored, rejected, did
    /// not answer.
    config: [usize; 4],
    /// Conflicts parked for an operator that it settled.
    settled: usize,
    /// Steps begun.
    steps: u64,
    /// How late the latest step began, simulated ms.
    latest_ms: u64,
}

/// Pushes configuration `version` (the fleet's heartbeat interval) to
/// every device at once and counts the answers.
async fn push_to_fleet(
    app: &mut AppClient,
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
async fn settle_conflicts(app: &mut AppClient, tally: &std::sync::Mutex<OperatorTally>) {
    let devices = match app.list(None, Duration::from_secs(5)).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("operator: the fleet could not be listed: {e}");
            return;
        }
    };
    // `hvac.mode` is the demo's only property under manual_resolve, so it
    // is what is parked: settled on every such device at once.
    let conflicts: Vec<(&str, &str)> = devices
        .iter()
        .filter(|d| d.parked > 0)
        .map(|d| (d.device.as_str(), MANUAL_PATH))
        .collect();
    if conflicts.is_empty() {
        return;
    }
    let winner = lanyard_core::shadow::Source::Cloud;
    match app
        .resolve_to(&conflicts, winner, Duration::from_secs(5))
        .await
    {
        Ok(answers) => {
            tally.lock().unwrap_or_else(|p| p.into_inner()).settled += answers.applied.len();
            for (device, why) in answers.refused {
                tracing::warn!(device, "operator: not settled: {why}");
            }
        }
        Err(e) => tracing::warn!("operator: conflicts not settled: {e}"),
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
    if devices as f64 * speed > super::outcomes::KEEPS_UP_TO {
        eprintln!(
            "warning: {devices} devices at {speed}x may be more than this machine keeps up with \
             (it takes about {:.0} devices x speed on two cores: {:.0}x for {devices} devices); \
             the summary shows where the run fell behind the scenario",
            super::outcomes::KEEPS_UP_TO,
            super::outcomes::KEEPS_UP_TO / devices.max(1) as f64
        );
    }
    let clock = Clock::compressed(speed);
    // The simulated devices keep their state in memory where there is a
    // tmpfs: a hundred devices writing and syncing files at power-on would
    // make the first seconds a measure of the disk.
    let tmp = match std::path::Path::new("/dev/shm") {
        shm if shm.is_dir() => tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir()),
        _ => tempfile::tempdir(),
    }
    .map_err(|e| e.to_string())?;
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
        "lanyard demo: {devices} devices, twin host, broker {url}, {minutes} simulated minutes at {speed}x \
         ({:.1} real seconds)",
        minutes as f64 * 60.0 / speed
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
        .set(MANUAL_PATH, ConflictPolicy::ManualResolve)
        .map_err(|e| e.to_string())?;
    // Writes come from the demo's operator only.
    let mut twin_host = TwinHost::in_memory(fleet.clone())
        .with_policies(policies)
        .with_operators(&[OPERATOR]);
    if let Some(m) = &metrics {
        twin_host = twin_host.with_metrics(m.clone());
    }
    let mut twin_config = connect_as("lanyard-twin")?;
    twin_config.max_inflight = lanyard_std::mqtt::HOST_INFLIGHT;
    let mut twin_transport = MqttTransport::connect(twin_config);
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
    let mut built = Vec::new();
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
        built.push(d);
    }
    drop(ev_tx);

    // The operator: a command or a configuration change about every 45 s,
    // through the app client.
    let mut operator = AppClient::new(MqttTransport::connect(connect_as(OPERATOR)?))
        .await
        .map_err(|e| e.to_string())?
        .as_operator(OPERATOR)?;
    let ids: Vec<String> = macs
        .iter()
        .map(|mac| lanyard_core::agent::device_id_from_mac(*mac).to_string())
        .collect();

    // The scenario's time starts once every device is connected: the
    // devices then boot together, as at power-on, and the time the broker
    // takes to accept a hundred connections is not counted against their
    // first registration.
    let connecting = std::time::Instant::now();
    while !built.iter().all(|d| d.transport().has_connected()) {
        if connecting.elapsed() > Duration::from_secs(30) {
            return Err("the demo's devices did not connect to the broker in 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = clock.now_ms();
    let end = start + minutes * 60_000;
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for mut d in built {
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
    let mut outcomes = super::outcomes::Outcomes::new(devices, start);
    let desired_asked = outcomes.desired_asked.clone();
    println!(
        "times are simulated minutes:seconds since the devices powered on \
         (a simulated minute is {:.2} real seconds)",
        60.0 / speed
    );
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
            // Reads what the fleet sends until the step is due: an app that
            // stops reading leaves its messages unacknowledged at the
            // broker, which then stops sending to it.
            let due = tokio::time::Instant::now() + clock.real_wait_until(at);
            loop {
                match tokio::time::timeout_at(due, operator.next_event()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => {
                        tokio::time::sleep_until(due).await;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let action = OperatorStep::of(step);
            {
                let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
                tally.steps += 1;
                tally.latest_ms = tally.latest_ms.max(clock.now_ms().saturating_sub(at));
            }
            let began = std::time::Instant::now();
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
            let scene = OperatorScene {
                clock,
                buttons: &buttons,
                desired_asked: &desired_asked,
            };
            action.run(&mut operator, &script_ids, step, &scene).await;
            settle_conflicts(&mut operator, &tally).await;
            tracing::debug!(step, action = action.name(), took = ?began.elapsed(), "operator step done");
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
                outcomes.observe(i, &e);
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
    let differ = outcomes.print(minutes, &totals.messages, (tally.steps, tally.latest_ms));
    if differ > 0 {
        println!(
            "{differ} of the scenario's outcomes differ: at {speed}x this machine did not keep \
             the scenario's timing (answers that come late are asked again, commands expire); \
             a lower --speed keeps it"
        );
    }
    Ok(())
}
