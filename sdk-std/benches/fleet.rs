//! Fleet benchmark against a real mosquitto on loopback: N simulated devices
//! with the seed's default intervals, a twin host and an app. Prints the
//! message rate through the broker and the latency from a desired-state
//! change to the device reporting it applied (p50/p99), for each fleet size
//! given (default 1000 and 10000), so the sizes compare in one run.
//!
//! Run with `bash scripts/fleet-bench.sh` (it raises the open-file limit).
//! Not a timed test: it prints figures.

use std::time::{Duration, Instant};

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::health::SlowTelemetryOnLowBattery;
use lanyard_core::agent::messages::{MessageKind, TOPIC_PREFIX};
use lanyard_core::agent::{Agent, Identity, device_id_from_mac};
use lanyard_core::shadow::{PathBuf, StateTree, Value};
use lanyard_core::wire::ShadowUpdate;
use lanyard_std::clock::Clock;
use lanyard_std::driver::{DeviceDriver, StdPlatform};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::sim::SimulatedSensors;
use lanyard_std::store::FileStore;
use lanyard_std::transport::{Qos, Transport, TransportEvent};
use lanyard_std::twin::{TwinHost, app_topics, run_twin};
use tokio::sync::oneshot;

fn mosquitto(port: u16, dir: &std::path::Path) -> std::process::Child {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nset_tcp_nodelay true\n"),
    )
    .unwrap();
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("mosquitto installed");
    let child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Figures {
    devices: usize,
    hosts: usize,
    connect_s: f64,
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// After every device was stopped and started again at once (a power
    /// cut): seconds until each had its registration answered, the
    /// registrations sent per device, the busiest second's messages.
    reboot_s: f64,
    reboot_registrations_per_device: f64,
    reboot_peak_msgs_per_s: f64,
}

/// Starts the fleet's devices (their state in `dir`, kept across a
/// restart); their stop senders and tasks.
fn start_devices(
    devices: usize,
    port: u16,
    dir: &std::path::Path,
    clock: Clock,
) -> (Vec<oneshot::Sender<()>>, Vec<tokio::task::JoinHandle<()>>) {
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..devices {
        let mac = [2, 1, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let agent = Box::new(Agent::new(
            Identity {
                mac,
                device_id: None,
                firmware: "bench",
            },
            DeviceConfig::default(),
            SlowTelemetryOnLowBattery,
        ));
        let id = agent.device_id().to_owned();
        let platform = StdPlatform {
            storage: Box::new(FileStore::open(dir.join(&id)).unwrap()),
            probe: Box::new(SimulatedSensors::new(clock.now_ms(), 3_600_000, i as u64)),
            telemetry: Box::new(SimulatedSensors::new(clock.now_ms(), 3_600_000, i as u64)),
            commands: Box::new(lanyard_std::sim::simulated_board(
                SimulatedSensors::new(clock.now_ms(), 3_600_000, i as u64),
                Default::default(),
            )),
            desired: Box::new(lanyard_core::agent::platform::MirrorDesired),
        };
        let mut cfg = MqttConfig::new("127.0.0.1", port, id);
        cfg.persistent_session = false;
        let mut d: DeviceDriver<_> =
            DeviceDriver::new(agent, MqttTransport::connect(cfg), platform, clock);
        let (tx, rx) = oneshot::channel::<()>();
        stops.push(tx);
        tasks.push(tokio::spawn(async move {
            let _ = d.start().await;
            let _ = d
                .run_until(async {
                    let _ = rx.await;
                })
                .await;
        }));
    }
    (stops, tasks)
}

/// Twin hosts: one in memory, or several sharing the subscription and a
/// PostgreSQL database (`LANYARD_FLEET_PG`).
fn start_hosts(
    hosts: usize,
    port: u16,
    clock: Clock,
) -> Vec<(oneshot::Sender<()>, tokio::task::JoinHandle<TwinHost>)> {
    let fleet = DeviceConfig {
        version: 1,
        ..DeviceConfig::default()
    };
    (0..hosts)
        .map(|n| {
            let mut host = if hosts == 1 {
                TwinHost::in_memory(fleet.clone())
            } else {
                let url = std::env::var("LANYARD_FLEET_PG")
                    .expect("LANYARD_FLEET_PG (scripts/fleet-bench.sh sets it)");
                TwinHost::open_postgres(&url, fleet.clone())
                    .unwrap()
                    .with_share_group("bench")
                    .unwrap()
            }
            .with_limits(lanyard_std::twin::TwinLimits {
                device_messages_per_s: 1_000,
                device_burst: 1_000,
                ..Default::default()
            });
            let (stop, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let mut t = MqttTransport::connect(MqttConfig::new(
                    "127.0.0.1",
                    port,
                    format!("lanyard-twin-{n}"),
                ));
                let _ = run_twin(&mut host, &mut t, clock, false, async {
                    let _ = rx.await;
                })
                .await;
                host
            });
            (stop, task)
        })
        .collect()
}

async fn run(devices: usize, hosts: usize, samples: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = mosquitto(port, dir.path());
    let clock = Clock::real();

    let twins = start_hosts(hosts, port, clock);
    let mut app = MqttTransport::connect(MqttConfig::new("127.0.0.1", port, "bench-app"));
    app.subscribe(&format!("{TOPIC_PREFIX}+/+")).await.unwrap();
    app.subscribe(&format!("{TOPIC_PREFIX}+/shadow/update"))
        .await
        .unwrap();
    app.subscribe(&format!("{TOPIC_PREFIX}+/register/accepted"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let (stops, tasks) = start_devices(devices, port, dir.path(), clock);
    // Registered: two lifecycle events per device (to Provisioning, to
    // Active). Bounded as a whole: the fleet's heartbeats keep the app busy
    // even when some lifecycle events never come (said below).
    let mut lifecycle = 0;
    let limit = Duration::from_secs(300);
    while lifecycle < 2 * devices && started.elapsed() < limit {
        match tokio::time::timeout(Duration::from_secs(60), app.recv()).await {
            Ok(Ok(TransportEvent::Message { topic, .. })) if topic.ends_with("/lifecycle") => {
                lifecycle += 1
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    if lifecycle < 2 * devices {
        println!(
            "  {devices} devices: {lifecycle} of {} lifecycle events seen in {connect_s:.0} s",
            2 * devices
        );
    }

    // Message rate over 10 s of steady state.
    let window = Instant::now();
    let mut seen = 0u64;
    while window.elapsed() < Duration::from_secs(10) {
        if let Ok(Ok(TransportEvent::Message { .. })) =
            tokio::time::timeout(Duration::from_millis(100), app.recv()).await
        {
            seen += 1;
        }
    }
    let msgs_per_s = seen as f64 / window.elapsed().as_secs_f64();

    // Latency: desired change -> the device's report of it, one at a time.
    let mut lat = Vec::new();
    let mut buf = vec![0u8; 512];
    for s in 0..samples {
        let i = s * devices / samples;
        let id =
            device_id_from_mac([2, 1, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]).to_string();
        let mut t: StateTree<4, 128> = StateTree::new();
        t.insert(
            &PathBuf::from_dotted("bench.seq").unwrap(),
            Value::Int(s as i64 + 1),
        )
        .unwrap();
        let mut up: ShadowUpdate<4, 128> = ShadowUpdate::new(clock.now_ms());
        up.desired = Some(t);
        let n = up.encode(&mut buf).unwrap();
        let t0 = Instant::now();
        app.publish(
            &format!("{TOPIC_PREFIX}{id}/{}", app_topics::SET_DESIRED),
            &buf[..n],
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
        let want = format!(
            "{TOPIC_PREFIX}{id}/{}",
            MessageKind::ShadowUpdate.topic_suffix()
        );
        // Bounded per sample: the rest of the fleet's messages keep coming,
        // so silence never ends a wait for a report that was lost.
        let sample_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(sample_deadline, app.recv()).await {
                Ok(Ok(TransportEvent::Message { topic, payload })) if topic == want => {
                    let mut u: Box<ShadowUpdate<16, 512>> = Box::new(ShadowUpdate::new(0));
                    if u.decode_into(&payload).is_ok()
                        && u.reported
                            .as_ref()
                            .and_then(|r| r.get_dotted("bench.seq"))
                            .is_some_and(|e| e.value == Value::Int(s as i64 + 1))
                    {
                        lat.push(t0.elapsed().as_secs_f64() * 1_000.0);
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if lat.len() < samples {
        println!(
            "  {devices} devices: {} of {samples} desired changes reported within 10 s",
            lat.len()
        );
    }

    // A power cut: every device stopped, then all started again at once
    // from their saved state (each registers again, for the cloud's time).
    for s in stops {
        let _ = s.send(());
    }
    for t in tasks {
        let _ = t.await;
    }
    let drained = Instant::now();
    while drained.elapsed() < Duration::from_secs(30)
        && tokio::time::timeout(Duration::from_millis(500), app.recv())
            .await
            .is_ok()
    {}
    let rebooted = Instant::now();
    let (stops, tasks) = start_devices(devices, port, dir.path(), clock);
    let mut answered = std::collections::HashSet::new();
    let (mut registrations, mut per_second, mut peak) = (0u64, 0u64, 0u64);
    let mut second = Instant::now();
    while answered.len() < devices && rebooted.elapsed() < Duration::from_secs(120) {
        if second.elapsed() >= Duration::from_secs(1) {
            peak = peak.max(per_second);
            per_second = 0;
            second = Instant::now();
        }
        if let Ok(Ok(TransportEvent::Message { topic, .. })) =
            tokio::time::timeout(Duration::from_millis(100), app.recv()).await
        {
            per_second += 1;
            if let Some(id) = topic
                .strip_prefix(TOPIC_PREFIX)
                .and_then(|t| t.strip_suffix("/register/accepted"))
            {
                answered.insert(id.to_owned());
            } else if topic.ends_with("/register") {
                registrations += 1;
            }
        }
    }
    let reboot_s = rebooted.elapsed().as_secs_f64();
    let peak = peak.max(per_second);
    for s in stops {
        let _ = s.send(());
    }
    for t in tasks {
        let _ = t.await;
    }
    for (stop, task) in twins {
        let _ = stop.send(());
        let _ = task.await;
    }
    let _ = broker.kill();
    let _ = broker.wait();
    Figures {
        devices,
        hosts,
        connect_s,
        reboot_s,
        reboot_registrations_per_device: registrations as f64 / devices as f64,
        reboot_peak_msgs_per_s: peak as f64,
        msgs_per_s,
        p50_ms: if lat.is_empty() {
            f64::NAN
        } else {
            percentile(&lat, 0.5)
        },
        p99_ms: if lat.is_empty() {
            f64::NAN
        } else {
            percentile(&lat, 0.99)
        },
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("LANYARD_FLEET_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    // Latency samples per fleet (each waits up to 10 s for its answer).
    let samples: usize = std::env::var("LANYARD_FLEET_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
        .unwrap();
    let mut figures = Vec::new();
    for &n in &sizes {
        eprintln!("fleet of {n} ...");
        figures.push(rt.block_on(run(n, 1, samples)));
    }
    // The largest fleet again on two twin hosts sharing a database.
    if let (Some(&n), Ok(_)) = (sizes.last(), std::env::var("LANYARD_FLEET_PG")) {
        eprintln!("fleet of {n} on two twin hosts ...");
        figures.push(rt.block_on(run(n, 2, samples)));
    }
    println!("\n== lanyard fleet benchmark (mosquitto on loopback, this run) ==");
    println!(
        "{:>8} {:>6} {:>10} {:>12} {:>9} {:>9} {:>10} {:>13} {:>11}",
        "devices",
        "hosts",
        "connect s",
        "msgs/s seen",
        "p50 ms",
        "p99 ms",
        "reboot s",
        "reg./device",
        "peak msg/s"
    );
    for f in &figures {
        println!(
            "{:>8} {:>6} {:>10.1} {:>12.0} {:>9.2} {:>9.2} {:>10.1} {:>13.2} {:>11.0}",
            f.devices,
            f.hosts,
            f.connect_s,
            f.msgs_per_s,
            f.p50_ms,
            f.p99_ms,
            f.reboot_s,
            f.reboot_registrations_per_device,
            f.reboot_peak_msgs_per_s
        );
    }
    println!(
        "(reboot: every device stopped and started again at once from its saved state; \
         seconds until each had its registration answered, registrations sent per device, \
         the busiest second's messages)"
    );
    if let (Some(a), Some(b)) = (figures.first(), figures.iter().rfind(|f| f.hosts == 1)) {
        if a.devices != b.devices {
            println!(
                "ratio {}x devices: msgs/s {:.1}x, p50 {:.1}x, p99 {:.1}x",
                b.devices / a.devices.max(1),
                b.msgs_per_s / a.msgs_per_s,
                b.p50_ms / a.p50_ms,
                b.p99_ms / a.p99_ms
            );
        }
    }
}
