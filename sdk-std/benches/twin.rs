//! Twin host throughput: how many shadow updates per second one twin host
//! handles.
//!
//! (a) In process, through `TwinHost::handle`, no broker: one core, shadows
//!     in memory and on disk (every update written and `fsync`ed).
//! (b) End to end through mosquitto on loopback: devices report as fast as
//!     each load step asks, the twin host answers on the AWS
//!     `update/documents` topic, and an app measures the latency from a
//!     device's report to seeing it there. Each step prints the offered
//!     and achieved rates, p50/p99, and how busy the twin host and the
//!     broker were (CPU time over wall time), which says which of them
//!     gives out first.
//!
//! Run with `bash scripts/twin-bench.sh`. Not a timed test: it prints
//! figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::messages::{Encodable, MessageKind, Register, topic};
use lanyard_core::shadow::{PathBuf, StateTree, Value};
use lanyard_core::wire::ShadowUpdate;
use lanyard_std::clock::Clock;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::transport::{Qos, Transport, TransportEvent};
use lanyard_std::twin::{TwinHost, TwinLimits, run_twin};

fn register(id: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = Register {
        device_id: id,
        firmware: "bench",
        config_version: 0,
        boot_count: 1,
        time_ms: 1,
        resumed: false,
        capacity: None,
    }
    .encode(&mut buf)
    .unwrap();
    buf.truncate(n);
    buf
}

/// A device's report: three leaves of a 20-leaf state, `t` its send time.
fn report(seq: u64, sent_us: u64) -> Vec<u8> {
    let mut t: StateTree<8, 256> = StateTree::new();
    let leaf = |p: &str| PathBuf::from_dotted(p).unwrap();
    t.insert(
        &leaf(&format!("sensors.s{}", seq % 20)),
        Value::Int(seq as i64),
    )
    .unwrap();
    t.insert(&leaf("sensors.t"), Value::Int(sent_us as i64))
        .unwrap();
    t.insert(&leaf("status.ok"), Value::Bool(!seq.is_multiple_of(7)))
        .unwrap();
    let mut up: ShadowUpdate<8, 256> = ShadowUpdate::new(sent_us / 1000);
    up.reported = Some(t);
    let mut buf = vec![0u8; 512];
    let n = up.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("ly-bench{i:06}")).collect()
}

fn no_limits() -> TwinLimits {
    TwinLimits {
        device_messages_per_s: u32::MAX,
        device_burst: u32::MAX,
        ..TwinLimits::default()
    }
}

/// Where the in-process host keeps its shadows.
enum Kept<'a> {
    Memory,
    Dir(&'a std::path::Path),
    /// SQLite, written once per batch of this many updates.
    Sqlite(&'a std::path::Path, usize),
}

/// (a): updates per second through `handle`, for a host in memory or on
/// disk.
fn in_process(kept: Kept<'_>, devices: usize, updates: usize) -> f64 {
    let batch = match kept {
        Kept::Sqlite(_, n) => n,
        _ => 1,
    };
    let mut host = match kept {
        Kept::Dir(d) => TwinHost::open(d, DeviceConfig::default()).unwrap(),
        Kept::Sqlite(d, _) => {
            TwinHost::open_sqlite(d.join("twin.db"), DeviceConfig::default()).unwrap()
        }
        Kept::Memory => TwinHost::in_memory(DeviceConfig::default()),
    }
    .with_limits(no_limits());
    let ids = ids(devices);
    for id in &ids {
        host.handle(1, &topic(id, MessageKind::Register), &register(id));
    }
    let topics: Vec<String> = ids
        .iter()
        .map(|id| topic(id, MessageKind::ShadowUpdate).to_string())
        .collect();
    let payloads: Vec<Vec<u8>> = (0..64).map(|s| report(s, s * 1000)).collect();
    host.batching(batch > 1);
    let started = Instant::now();
    for i in 0..updates {
        host.handle(
            10 + i as u64,
            &topics[i % devices],
            &payloads[i % payloads.len()],
        );
        if (i + 1) % batch == 0 {
            host.flush().unwrap();
        }
    }
    host.flush().unwrap();
    let rate = updates as f64 / started.elapsed().as_secs_f64();
    assert_eq!(host.stats().updates as usize, updates);
    rate
}

fn mosquitto(port: u16, dir: &std::path::Path) -> std::process::Child {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n\
             max_inflight_messages 1000\nset_tcp_nodelay true\n"
        ),
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

/// CPU time (user + system) of a process so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    cpu_of(&format!("/proc/{pid}/stat"))
}

/// CPU time (user + system) so far of the process or thread whose `stat`
/// file this is.
fn cpu_of(stat_file: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_file).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15, the 12th and 13th here.
    (ticks(11) + ticks(12)) / 100.0
}

fn now_us(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What a load step drives and watches.
struct Rig {
    broker_pid: u32,
    /// The twin host's thread.
    twin_tid: u64,
    devices: Vec<(String, MqttTransport)>,
    app: MqttTransport,
    epoch: Instant,
}

/// (b): one load step; returns (achieved updates/s at the host, p50 ms,
/// p99 ms, host busy fraction, broker busy fraction).
async fn step(rig: &mut Rig, rate: u64, seconds: f64) -> (f64, f64, f64, f64, f64) {
    let Rig {
        broker_pid,
        twin_tid,
        devices,
        app,
        epoch,
    } = rig;
    let (broker_pid, epoch) = (*broker_pid, *epoch);
    let twin_stat = format!("/proc/self/task/{twin_tid}/stat");
    let (host0, cpu0) = (cpu_of(&twin_stat), cpu_seconds(broker_pid));
    let mut seen = 0u64;
    let started = Instant::now();
    let total = (rate as f64 * seconds) as u64;
    let mut lat = Vec::new();
    let mut sent = 0u64;
    let deadline = started + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        // Sends what the rate allows by now, then reads what came back.
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let n = devices.len();
            let (id, t) = &mut devices[(sent as usize) % n];
            let payload = report(sent, now_us(epoch));
            t.publish(
                &topic(id, MessageKind::ShadowUpdate),
                &payload,
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
            sent += 1;
        }
        while let Ok(Ok(TransportEvent::Message { payload, .. })) =
            tokio::time::timeout(Duration::from_micros(200), app.recv()).await
        {
            if let Some(t) = sent_time(&payload) {
                seen += 1;
                lat.push((now_us(epoch).saturating_sub(t)) as f64 / 1000.0);
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    // What is still in flight is counted in the next step's rate, not this
    // one's: the rate is what came back through the host within the step.
    let achieved = seen as f64 / wall;
    let host_busy = (cpu_of(&twin_stat) - host0) / wall;
    let broker_busy = (cpu_seconds(broker_pid) - cpu0) / wall;
    lat.sort_by(|a, b| a.total_cmp(b));
    (
        achieved,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        host_busy,
        broker_busy,
    )
}

/// The send time a report carried, from the host's `update/documents`.
fn sent_time(doc: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(doc).ok()?;
    v["current"]["state"]["reported"]["sensors"]["t"].as_u64()
}

async fn end_to_end(devices: usize, rates: &[u64], seconds: f64, store_files: bool) {
    let dir = tempfile::tempdir().unwrap();
    let port = lanyard_std::broker::free_port().unwrap();
    let mut broker = mosquitto(port, dir.path());
    let broker_pid = broker.id();
    let epoch = Instant::now();

    // The twin host (`run_twin`, SQLite or files) on a thread of its own,
    // whose CPU time is read from /proc.
    let tid = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let twin = {
        let tid = tid.clone();
        let state = dir.path().join("twin");
        std::thread::spawn(move || {
            let me = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name()?.to_str()?.parse().ok())
                .unwrap_or(0);
            tid.store(me, Ordering::Relaxed);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let host = if store_files {
                    TwinHost::open(&state, DeviceConfig::default())
                } else {
                    TwinHost::open_sqlite(state.join("twin.db"), DeviceConfig::default())
                };
                let mut host = host.unwrap().with_limits(no_limits());
                let mut t =
                    MqttTransport::connect(MqttConfig::new("127.0.0.1", port, "lanyard-twin"));
                let _ = run_twin(&mut host, &mut t, Clock::real(), true, async {
                    let _ = stop_rx.await;
                })
                .await;
            })
        })
    };
    while tid.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let twin_tid = tid.load(Ordering::Relaxed);
    let mut app = MqttTransport::connect(MqttConfig::new("127.0.0.1", port, "bench-app"));
    app.subscribe("$aws/things/+/shadow/update/documents")
        .await
        .unwrap();
    let mut conns = Vec::new();
    for id in ids(devices) {
        let mut cfg = MqttConfig::new("127.0.0.1", port, id.clone());
        cfg.persistent_session = false;
        let mut t = MqttTransport::connect(cfg);
        t.subscribe(&topic(&id, MessageKind::RegisterAccepted))
            .await
            .unwrap();
        conns.push((id, t));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (id, t) in &mut conns {
        t.publish(
            &topic(id, MessageKind::Register),
            &register(id),
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
    }
    for (_, t) in &mut conns {
        let _ = tokio::time::timeout(Duration::from_secs(30), t.recv()).await;
    }

    let mut rig = Rig {
        broker_pid,
        twin_tid,
        devices: conns,
        app,
        epoch,
    };
    println!(
        "\n(b) end to end through mosquitto on loopback, {devices} devices, {seconds} s per step"
    );
    println!(
        "{:>10} {:>12} {:>9} {:>9} {:>10} {:>11}",
        "offered/s", "achieved/s", "p50 ms", "p99 ms", "host busy", "broker busy"
    );
    for &rate in rates {
        let (achieved, p50, p99, host_busy, broker_busy) = step(&mut rig, rate, seconds).await;
        println!(
            "{rate:>10} {achieved:>12.0} {p50:>9.2} {p99:>9.2} {:>9.0}% {:>10.0}%",
            host_busy * 100.0,
            broker_busy * 100.0
        );
        // Let the backlog of this step drain before the next.
        tokio::time::sleep(Duration::from_secs(2)).await;
        while tokio::time::timeout(Duration::from_millis(200), rig.app.recv())
            .await
            .is_ok()
        {}
        if p99 > 1_000.0 {
            println!("(latency bent past 1 s: the remaining steps would only queue)");
            break;
        }
    }
    let _ = stop_tx.send(());
    let _ = twin.join();
    let _ = broker.kill();
    let _ = broker.wait();
}

fn main() {
    let devices: usize = std::env::var("LANYARD_TWIN_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    println!("(a) in process, TwinHost::handle, one core, {devices} devices, 3-leaf reports");
    let mem = in_process(Kept::Memory, devices, 200_000);
    println!("  shadows in memory:                       {mem:>10.0} updates/s");
    let dir = tempfile::tempdir().unwrap();
    let disk = in_process(Kept::Dir(dir.path()), devices, 5_000);
    println!("  files (fsync each update):               {disk:>10.0} updates/s");
    for batch in [1, 16, 256] {
        let dir = tempfile::tempdir().unwrap();
        let n = if batch == 1 { 5_000 } else { 50_000 };
        let db = in_process(Kept::Sqlite(dir.path(), batch), devices, n);
        println!("  SQLite, one transaction per {batch:>3} updates: {db:>10.0} updates/s");
    }
    let rates: Vec<u64> = std::env::var("LANYARD_TWIN_BENCH_RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 4_000, 8_000, 16_000, 24_000, 32_000]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let files = std::env::var("LANYARD_TWIN_BENCH_STORE").is_ok_and(|v| v == "dir");
    rt.block_on(end_to_end(devices, &rates, 3.0, files));
}
