//! `lanyard`: the demo, a message decoder, a device and a twin host.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lanyard_core::agent::AgentEvent;
use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::{ConflictPolicy, PathBuf as ShadowPath, StateTree, Value};
use lanyard_core::wire::ShadowUpdate;
use lanyard_std::clock::Clock;
use lanyard_std::describe::{describe, parse_hex};
use lanyard_std::device::DeviceBuilder;
use lanyard_std::driver::{DriverEvent, LocalValue, parse_mac};
use lanyard_std::metrics::Metrics;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::sim::{SimulatedSensors, simulated_board};
use lanyard_std::transport::{Qos, Transport};
use lanyard_std::twin::{TwinHost, app_topics, run_twin};
use tokio::sync::{mpsc, oneshot};

#[derive(Parser)]
#[command(
    name = "lanyard",
    version,
    about = "Lanyard IoT SDK: demo, decoder, device and twin host"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Where the broker is and how to prove who we are.
#[derive(clap::Args, Clone)]
struct BrokerArgs {
    /// mqtt://host:port, or mqtts://host:port for TLS.
    #[arg(long)]
    broker: Option<String>,
    /// CA certificate (PEM) that signed the broker's certificate (mqtts).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long)]
    key: Option<PathBuf>,
}

impl BrokerArgs {
    fn url(&self) -> Result<&str, String> {
        self.broker
            .as_deref()
            .ok_or_else(|| "--broker is required".to_string())
    }

    fn mqtt(&self, client_id: &str) -> Result<MqttConfig, String> {
        let client = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => return Err("--cert and --key go together".into()),
        };
        MqttConfig::from_url(self.url()?, client_id, self.ca.as_deref(), client)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// A simulated fleet against a twin host on an embedded broker, the seed
    /// chapter's scenario with time compressed.
    Demo {
        /// Devices in the fleet.
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// How many times faster than real time.
        #[arg(long, default_value_t = 20.0)]
        speed: f64,
        /// Simulated minutes.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// An external broker instead of the embedded one (and its TLS files).
        #[command(flatten)]
        broker: BrokerArgs,
        /// Serve Prometheus metrics on this address while it runs.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Prints any SDK message (hex, or a file of raw bytes) as JSON.
    Decode {
        /// The message in hex.
        hex: Option<String>,
        /// A file holding the raw message.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The message type (topic suffix, e.g. `ack`, `shadow/delta`); tried
        /// in turn when absent.
        #[arg(long)]
        kind: Option<String>,
    },
    /// Runs one simulated device against a broker, its state in a directory.
    Device {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
        #[arg(long)]
        metrics: Option<String>,
        /// Where the device keeps its state.
        #[arg(long)]
        state_dir: PathBuf,
        /// MAC address, six hex bytes with colons.
        #[arg(long, default_value = "02:00:00:00:00:01")]
        mac: String,
        /// Put the device's topics in this tenant's namespace (and connect
        /// with the tenant as MQTT user name, as `lanyard acl --tenants`
        /// expects).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Prints a mosquitto ACL file that keeps each device to its own topics.
    Acl {
        /// User names allowed everything (the twin host, operators).
        #[arg(long, value_delimiter = ',', default_value = "lanyard-twin")]
        trusted: Vec<String>,
        /// For a broker shared by tenants: devices connect with their
        /// tenant as user name and are kept to their tenant's namespace.
        #[arg(long)]
        tenants: bool,
    },
    /// Bridges a device on a framed serial link (a serial port, a
    /// pseudo-terminal or a TCP socket, e.g. qemu's) to a broker.
    Bridge {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Connect to this TCP address (host:port), retrying until it answers.
        #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
        tcp: Option<String>,
        /// Open this serial port or pseudo-terminal (set it to raw mode and
        /// its baud rate first, e.g. `stty -F PORT raw 115200`).
        #[arg(long)]
        serial: Option<PathBuf>,
        /// The device's id; learnt from its first frame when absent. When
        /// given, the bridge connects as the device (client id = device
        /// id), as a broker ACL expects.
        #[arg(long)]
        device_id: Option<String>,
        /// Publish the device's messages in this tenant's namespace (and
        /// connect with the tenant as user name).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Runs a twin host against a broker, its shadows in a directory.
    Twin {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
        #[arg(long)]
        metrics: Option<String>,
        /// Where the shadows are kept.
        #[arg(long)]
        state_dir: PathBuf,
        /// Serve these tenants' namespaces (comma-separated) instead of the
        /// shared one; messages for any other tenant are refused.
        #[arg(long, value_delimiter = ',')]
        tenants: Vec<String>,
        /// The fleet's telemetry interval, ms, sent to devices when they
        /// register (1000..=86400000).
        #[arg(long, default_value_t = 30_000)]
        telemetry_ms: u64,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Cmd::Decode { hex, file, kind } => decode(hex, file, kind),
            Cmd::Acl { trusted, tenants } => {
                let trusted: Vec<&str> = trusted.iter().map(String::as_str).collect();
                if tenants {
                    print!("{}", lanyard_std::acl::mosquitto_tenant_acl(&trusted));
                } else {
                    print!("{}", lanyard_std::acl::mosquitto_acl(&trusted));
                }
                Ok(())
            }
            Cmd::Device {
                broker,
                state_dir,
                mac,
                metrics,
                tenant,
            } => device(&broker, state_dir, &mac, tenant, metrics_on(metrics).await?).await,
            Cmd::Bridge {
                broker,
                tcp,
                serial,
                device_id,
                tenant,
            } => bridge(&broker, tcp, serial, device_id, tenant).await,
            Cmd::Twin {
                broker,
                state_dir,
                metrics,
                tenants,
                telemetry_ms,
            } => {
                let fleet = DeviceConfig {
                    version: 1,
                    telemetry_ms,
                    ..DeviceConfig::default()
                };
                fleet
                    .validate()
                    .map_err(|e| format!("--telemetry-ms: {}", e.reason))?;
                twin(
                    &broker,
                    state_dir,
                    tenants,
                    fleet,
                    metrics_on(metrics).await?,
                )
                .await
            }
            Cmd::Demo {
                devices,
                speed,
                minutes,
                broker,
                metrics,
            } => demo(devices, speed, minutes, broker, metrics_on(metrics).await?).await,
        }
    });
    if let Err(e) = result {
        eprintln!("lanyard: {e}");
        std::process::exit(1);
    }
}

/// Starts the metrics endpoint when asked for.
async fn metrics_on(addr: Option<String>) -> Result<Option<Metrics>, String> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("metrics on {addr}: {e}"))?;
    let m = Metrics::new();
    tokio::spawn(m.clone().serve(listener));
    Ok(Some(m))
}

fn decode(hex: Option<String>, file: Option<PathBuf>, kind: Option<String>) -> Result<(), String> {
    let bytes = match (hex, file) {
        (Some(h), None) => parse_hex(&h)?,
        (None, Some(f)) => std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?,
        _ => return Err("give the message in hex or with --file, not both".into()),
    };
    let kind = match kind {
        None => None,
        Some(k) => Some(
            MessageKind::ALL
                .into_iter()
                .find(|m| m.topic_suffix() == k)
                .ok_or_else(|| format!("unknown kind {k}"))?,
        ),
    };
    let (name, json) = describe(&bytes, kind)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "type": name, "message": json }))
            .unwrap_or_default()
    );
    Ok(())
}

/// A simulated device of the example board (battery, sensors, LED) with
/// `lanyard_std::device::DeviceBuilder`.
fn make_device(
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

async fn device(
    broker: &BrokerArgs,
    state_dir: PathBuf,
    mac: &str,
    tenant: Option<String>,
    metrics: Option<Metrics>,
) -> Result<(), String> {
    let clock = Clock::real();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut device = make_device(
        parse_mac(mac)?,
        broker.mqtt("")?,
        state_dir,
        clock,
        60_000,
        100,
    );
    if let Some(t) = &tenant {
        device = device.tenant(t);
    }
    // Acknowledgements and lifecycle events survive a crash of this
    // process until the broker has them (the builder's journal).
    let (driver, _handle) = device.build().map_err(|e| e.to_string())?;
    let mut driver = driver.with_events(tx);
    if let Some(m) = metrics {
        driver = driver.with_metrics(m);
    }
    let id = driver.agent().device_id().to_owned();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            if let Some(line) = timeline_line(&e) {
                println!("{id} {line}");
            }
        }
    });
    driver.start().await.map_err(|e| e.to_string())?;
    driver
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}

async fn bridge(
    broker: &BrokerArgs,
    tcp: Option<String>,
    serial: Option<PathBuf>,
    device_id: Option<String>,
    tenant: Option<String>,
) -> Result<(), String> {
    use lanyard_std::bridge::Bridge;
    // Connected as the device when its id is known, so the broker's ACL
    // treats the bridge as the device it carries.
    let client_id = device_id
        .clone()
        .unwrap_or_else(|| format!("lanyard-bridge-{}", std::process::id()));
    let mut config = broker.mqtt(&client_id)?;
    if tenant.is_some() {
        config.username = tenant.clone();
    }
    let mut bridge = Bridge::new(MqttTransport::connect(config));
    if let Some(t) = &tenant {
        bridge = bridge.with_tenant(t).map_err(|e| e.to_string())?;
    }
    if let Some(id) = device_id.as_deref() {
        bridge.adopt_device(id).await.map_err(|e| e.to_string())?;
    }
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let stats = if let Some(addr) = tcp {
        let stream = lanyard_std::bridge::connect_tcp(&addr, Duration::from_secs(30))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        println!("bridging {addr} to {}", broker.url()?);
        bridge.run(stream, stop).await
    } else if let Some(path) = serial {
        let port = lanyard_std::bridge::open_serial(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("bridging {} to {}", path.display(), broker.url()?);
        bridge.run(port, stop).await
    } else {
        return Err("--tcp or --serial is required".into());
    };
    let stats = stats.map_err(|e| e.to_string())?;
    println!(
        "bridge stopped: {} to the cloud, {} to the device, {} bad frames",
        stats.to_cloud,
        stats.to_device,
        stats.bad_envelopes + stats.misdirected
    );
    Ok(())
}

async fn twin(
    broker: &BrokerArgs,
    state_dir: PathBuf,
    tenants: Vec<String>,
    fleet: DeviceConfig,
    metrics: Option<Metrics>,
) -> Result<(), String> {
    let mut twin =
        TwinHost::open(&state_dir, fleet).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    if let Some(m) = metrics {
        twin = twin.with_metrics(m);
    }
    if !tenants.is_empty() {
        let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
        twin = twin.with_tenants(&names).map_err(|e| e.to_string())?;
    }
    let mut transport = MqttTransport::connect(broker.mqtt("lanyard-twin")?);
    println!(
        "twin host on {}, {} shadows loaded",
        broker.url()?,
        twin.devices().count()
    );
    run_twin(&mut twin, &mut transport, Clock::real(), true, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| e.to_string())
}

/// One human line for the timeline, or `None` for events not worth a line.
fn timeline_line(e: &DriverEvent) -> Option<String> {
    Some(match e {
        DriverEvent::Sent { kind, payload, .. } => match kind {
            MessageKind::Register => "-> register".into(),
            MessageKind::Heartbeat => {
                let h = Heartbeat::decode(payload).ok()?;
                format!(
                    "-> heartbeat #{} ({}, health {:?})",
                    h.seq, h.state, h.health
                )
            }
            MessageKind::Telemetry => {
                let t: Box<lanyard_std::describe::Readings> =
                    Box::new(Telemetry::decode(payload).ok()?);
                format!(
                    "-> telemetry #{}: {}",
                    t.seq,
                    lanyard_std::aws_json::tree_to_json(&t.readings)
                )
            }
            MessageKind::Health => {
                let h = HealthMessage::decode(payload).ok()?;
                format!(
                    "-> health check: {:?} (battery {} %)",
                    h.report.status, h.report.metrics.battery_pct
                )
            }
            MessageKind::ShadowUpdate => "-> shadow sync (reported state)".into(),
            MessageKind::Lifecycle => {
                let l = LifecycleEvent::decode(payload).ok()?;
                format!("-> lifecycle {} -> {} ({})", l.from, l.to, l.cause.name())
            }
            MessageKind::Ack => {
                let a = Ack::decode(payload).ok()?;
                format!(
                    "-> ack {} {:?}{}",
                    a.command_id,
                    a.status,
                    a.reason.map(|r| format!(" ({r:?})")).unwrap_or_default()
                )
            }
            MessageKind::ConfigAck => {
                let a = ConfigAck::decode(payload).ok()?;
                format!("-> config v{} {:?}", a.version, a.outcome)
            }
            _ => return None,
        },
        DriverEvent::Received { kind, .. } => format!("<- {}", kind.topic_suffix()),
        DriverEvent::Refused { why, .. } => format!("<- refused: {why}"),
        DriverEvent::Agent {
            event: AgentEvent::StateChanged { from, to, .. },
            ..
        } => format!("   state {from} -> {to}"),
        DriverEvent::Agent {
            event: AgentEvent::ConfigApplied(v),
            ..
        } => format!("   configuration v{v} applied"),
        DriverEvent::Reconnected { .. } => "   reconnected".into(),
        _ => return None,
    })
}

struct Totals {
    messages: BTreeMap<&'static str, (u64, u64)>,
}

async fn demo(
    devices: usize,
    speed: f64,
    minutes: u64,
    broker: BrokerArgs,
    metrics: Option<Metrics>,
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
    println!(
        "lanyard demo: {devices} devices, twin host, broker {url}, {minutes} simulated minutes at {speed}x"
    );

    // The twin host, with the fleet's configuration and policies.
    let mut fleet = DeviceConfig {
        version: 1,
        ..DeviceConfig::default()
    };
    let _ = fleet.policies.push((
        "hvac".try_into().unwrap_or_default(),
        ConflictPolicy::LatestWins,
    ));
    let mut twin_host = TwinHost::in_memory(fleet.clone());
    if let Some(m) = &metrics {
        twin_host = twin_host.with_metrics(m.clone());
    }
    let mut twin_transport = MqttTransport::connect(broker.mqtt("lanyard-twin")?);
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
    for i in 0..devices {
        let mac = [0x02, 0x00, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8];
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
        let (d, button) = make_device(
            mac,
            broker.mqtt("")?,
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
            Ok::<_, lanyard_std::transport::TransportError>(d)
        }));
    }
    drop(ev_tx);

    // The operator: a command or a configuration change about every 45 s.
    let mut operator = MqttTransport::connect(broker.mqtt("lanyard-operator")?);
    let ids: Vec<String> = (0..devices)
        .map(|i| {
            lanyard_core::agent::device_id_from_mac([
                0x02,
                0,
                0,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ])
            .to_string()
        })
        .collect();
    let bar = ProgressBar::new(minutes * 60);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} simulated s  {msg}")
            .map_err(|e| e.to_string())?,
    );
    let mut totals = Totals {
        messages: BTreeMap::new(),
    };
    let script_ids = ids.clone();
    let bar2 = bar.clone();
    let operator_task = tokio::spawn(async move {
        let mut step = 0u64;
        let mut buf = vec![0u8; 2048];
        loop {
            step += 1;
            let at = start + step * 45_000;
            if at > end {
                break;
            }
            tokio::time::sleep(clock.real_wait_until(at)).await;
            let now = clock.now_ms();
            let name = match step % 7 {
                1 => "diagnostics",
                2 => "config",
                3 => "blink_led",
                4 => "read_sensor",
                5 => "setpoint",
                6 => "enter_maintenance",
                _ => "exit_maintenance",
            };
            bar2.set_message(format!("operator: {name}"));
            for (n, id) in script_ids.iter().enumerate() {
                match name {
                    "config" => {
                        let c = DeviceConfig {
                            version: 1 + step,
                            heartbeat_ms: 10_000,
                            ..fleet.clone()
                        };
                        let mut e = minicbor::Encoder::new(Vec::new());
                        let _ = c.encode_cbor(&mut e);
                        let _ = operator
                            .publish(
                                &topic(id, MessageKind::Config),
                                &e.into_writer(),
                                Qos::AtLeastOnce,
                            )
                            .await;
                    }
                    "setpoint" => {
                        // First the app sets 70 and the devices follow; the
                        // next time it asks for 72 while users press the
                        // button for 68 on every other device: a conflict,
                        // settled by LatestWins (the fleet's policy for hvac).
                        let first = step < 7;
                        let want = if first { 70 } else { 72 };
                        let mut t: StateTree<8, 256> = StateTree::new();
                        let _ = t.insert(
                            &ShadowPath::from_dotted("hvac.setpoint").unwrap_or_default(),
                            Value::Int(want),
                        );
                        let mut up: ShadowUpdate<8, 256> = ShadowUpdate::new(now);
                        up.desired = Some(t);
                        if let Ok(len) = up.encode(&mut buf) {
                            let _ = operator
                                .publish(
                                    &format!("{TOPIC_PREFIX}{id}/{}", app_topics::SET_DESIRED),
                                    &buf[..len],
                                    Qos::AtLeastOnce,
                                )
                                .await;
                        }
                        if !first && n % 2 == 0 {
                            let _ = buttons[n].report("hvac.setpoint", LocalValue::Int(68));
                        }
                    }
                    cmd => {
                        let args: &[u8] = if cmd == "blink_led" {
                            &[
                                0xa2, 0x65, b'c', b'o', b'u', b'n', b't', 0x03, 0x69, b'p', b'e',
                                b'r', b'i', b'o', b'd', b'_', b'm', b's', 0x19, 0x01, 0xf4,
                            ]
                        } else {
                            &[]
                        };
                        // Maintenance only for the first device: it shows in the timeline.
                        if cmd.ends_with("maintenance") && n != 0 {
                            continue;
                        }
                        let cid = format!("cmd-{step}-{n}");
                        let c = Command {
                            id: &cid,
                            name: cmd,
                            args,
                            issued_ms: now,
                            expires_ms: now + 60_000,
                        };
                        if let Ok(len) = c.encode(&mut buf) {
                            let _ = operator
                                .publish(
                                    &topic(id, MessageKind::Command),
                                    &buf[..len],
                                    Qos::AtLeastOnce,
                                )
                                .await;
                        }
                    }
                }
            }
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
                if let DriverEvent::Sent { kind, payload, .. } = &e {
                    let t = totals.messages.entry(kind.topic_suffix()).or_default();
                    t.0 += 1;
                    t.1 += payload.len() as u64;
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
                reconnects += d.transport().stats().reconnects;
                dropped += d.agent().stats().dropped.iter().sum::<u64>();
            }
            _ => *states.entry("failed".into()).or_default() += 1,
        }
    }
    let _ = twin_stop.send(());
    let (twin_host, _) = twin_task.await.map_err(|e| e.to_string())?;
    let _ = operator_task.await;
    let stats = twin_host.stats();

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
    println!(
        "twin host: {} registrations ({} again after a reboot), {} updates, {} deltas, {} refused",
        stats.registrations, stats.reregistrations, stats.updates, stats.deltas, stats.rejected
    );
    println!("conflicts by policy:");
    for (p, n) in ConflictPolicy::ALL.iter().zip(stats.conflicts) {
        println!("  {:<16} {n:>8}", p.name());
    }
    println!("reconnects: {reconnects}; messages dropped from full outboxes: {dropped}");
    Ok(())
}
