//! Mosquitto is killed (SIGKILL) and restarted while 1,000 QoS 1 commands
//! flow from an app to a device: none is lost (each gets its final
//! acknowledgement, the app resending what was not acknowledged, with its
//! original issue time), none runs twice (the device deduplicates by id and
//! refuses late copies older than its window, such as QoS 1 retransmissions
//! that arrive after newer commands ran), and the device is back within its
//! reconnection backoff bound.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mosquitto, spawn_device_with, spawn_twin};
use lanyard_core::agent::messages::*;
use lanyard_core::agent::platform::{Args, CommandFailure, CommandHandler, Completion};
use lanyard_std::clock::Clock;
use lanyard_std::driver::DriverEvent;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::transport::{Qos, Transport, TransportEvent};

const TOTAL: u64 = 1_000;
/// Commands in flight at once.
const WINDOW: u64 = 8;
/// How far the newest command may run ahead of the oldest unacknowledged
/// one: less than the device's dedupe window, so a retry of a command that
/// did run is always recognised (and one that did not is never stale).
const MAX_AHEAD: u64 = lanyard_core::agent::DEDUPE_WINDOW as u64 - 1;

/// Counts how often each `n` ran.
struct Counter(Arc<Mutex<HashMap<u64, u32>>>);

impl CommandHandler for Counter {
    fn execute(
        &mut self,
        _: u64,
        name: &str,
        args: Args<'_>,
        _: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>> {
        if name != "count" {
            return None;
        }
        Some(args.u64("n").and_then(|n| {
            let n = n.ok_or(CommandFailure::BadArguments)?;
            *self.0.lock().unwrap().entry(n).or_default() += 1;
            Ok(Completion::Done(0))
        }))
    }
}

fn count_command(n: u64, now: u64) -> Vec<u8> {
    let mut args = minicbor::Encoder::new(Vec::new());
    args.map(1).unwrap().str("n").unwrap().u64(n).unwrap();
    let args = args.into_writer();
    let id = format!("n{n}");
    let mut buf = vec![0u8; 256];
    let len = Command {
        id: &id,
        name: "count",
        args: &args,
        issued_ms: now,
        expires_ms: now + 600_000,
    }
    .encode(&mut buf)
    .unwrap();
    buf.truncate(len);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_crash_loses_no_command_and_runs_none_twice() {
    let mut broker = Mosquitto::start();
    let (host_dir, dev_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (twin_stop, twin) = spawn_twin(broker.port, host_dir.path());
    let runs: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let mac = [2, 0, 0, 0, 1, 0];
    let id = lanyard_core::agent::device_id_from_mac(mac).to_string();
    let (dev_stop, dev, mut events) = spawn_device_with(
        broker.port,
        dev_dir.path(),
        mac,
        Box::new(Counter(runs.clone())),
    );
    let mut app = MqttTransport::connect(MqttConfig::new("127.0.0.1", broker.port, "app"));
    app.subscribe(&topic(&id, MessageKind::Ack)).await.unwrap();
    app.subscribe(&topic(&id, MessageKind::Lifecycle))
        .await
        .unwrap();

    let clock = Clock::real();
    let script = async {
        // Registered first.
        loop {
            if let TransportEvent::Message { topic: t, payload } = app.recv().await.unwrap() {
                if t.ends_with("/lifecycle")
                    && LifecycleEvent::decode(&payload).unwrap().to.is_registered()
                {
                    break;
                }
            }
        }
        let mut done: Vec<bool> = vec![false; TOTAL as usize];
        let mut sent_at: HashMap<u64, Instant> = HashMap::new();
        // A retry is the same command: same id, same issue time.
        let mut issued: HashMap<u64, u64> = HashMap::new();
        // Issue times strictly increase: the device refuses as stale a
        // command issued no later than one its window let go of, so two
        // commands stamped with the same millisecond could make a lost one
        // look like it may have run already.
        let mut last_issued = 0u64;
        let (mut next, mut acked, mut resent) = (0u64, 0u64, 0u64);
        let mut crashed_at = None;
        // What the device refused, to say why if the run stalls.
        let mut refused: std::collections::BTreeMap<u64, (AckStatus, Option<AckReason>)> =
            Default::default();
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked < TOTAL {
            assert!(
                Instant::now() < deadline,
                "{acked} of {TOTAL} acknowledged in time; waiting for {:?}; refused: {refused:?}",
                sent_at.keys().collect::<Vec<_>>()
            );
            // Keep the window full; resend what has waited too long.
            let oldest = sent_at.keys().min().copied().unwrap_or(next);
            while (sent_at.len() as u64) < WINDOW && next < TOTAL && next - oldest < MAX_AHEAD {
                let at = clock.now_ms().max(last_issued + 1);
                last_issued = at;
                issued.insert(next, at);
                let _ = app
                    .publish(
                        &topic(&id, MessageKind::Command),
                        &count_command(next, at),
                        Qos::AtLeastOnce,
                    )
                    .await;
                sent_at.insert(next, Instant::now());
                next += 1;
            }
            for (n, at) in sent_at.iter_mut() {
                if at.elapsed() > Duration::from_secs(2) {
                    let _ = app
                        .publish(
                            &topic(&id, MessageKind::Command),
                            &count_command(*n, issued[n]),
                            Qos::AtLeastOnce,
                        )
                        .await;
                    *at = Instant::now();
                    resent += 1;
                }
            }
            if next == 300 && crashed_at.is_none() {
                broker.kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                broker.restart();
                crashed_at = Some(clock.now_ms());
            }
            let Ok(ev) = tokio::time::timeout(Duration::from_millis(200), app.recv()).await else {
                continue;
            };
            if let TransportEvent::Message { topic: t, payload } = ev.unwrap() {
                if !t.ends_with("/ack") {
                    continue;
                }
                let ack = Ack::decode(&payload).unwrap();
                let n: u64 = ack.command_id[1..].parse().unwrap();
                if ack.status != AckStatus::Succeeded {
                    if matches!(ack.status, AckStatus::Failed | AckStatus::Rejected) {
                        refused.insert(n, (ack.status, ack.reason));
                    }
                    continue;
                }
                sent_at.remove(&n);
                if !done[n as usize] {
                    done[n as usize] = true;
                    acked += 1;
                }
            }
        }
        (crashed_at.unwrap(), resent)
    };
    // The script fails by itself, saying why, after 120 s; this is the
    // backstop for a publish that never returns.
    let (restarted_at, resent) = tokio::time::timeout(Duration::from_secs(150), script)
        .await
        .expect("the script ended");

    // Ran exactly once each.
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len() as u64, TOTAL, "some command never ran");
    let twice: Vec<_> = runs.iter().filter(|(_, c)| **c != 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");

    // The device reconnected within its backoff bound (8 s window, plus the
    // broker's start-up).
    let mut reconnected = None;
    while let Ok(e) = events.try_recv() {
        if let DriverEvent::Reconnected { at_ms } = e {
            reconnected.get_or_insert(at_ms);
        }
    }
    let reconnected = reconnected.expect("the device reconnected");
    let took = reconnected.saturating_sub(restarted_at);
    println!("resent {resent} commands; device back {took} ms after the broker restarted");
    assert!(
        took <= MqttConfig::new("", 0, "").backoff_cap.as_millis() as u64 + 1_000,
        "took {took} ms"
    );

    dev_stop.send(()).unwrap();
    dev.await.unwrap();
    twin_stop.send(()).unwrap();
    twin.await.unwrap();
}
