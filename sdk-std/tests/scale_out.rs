//! Several twin hosts serving one fleet: three `lanyard twin` processes
//! share the subscription (`$share/...` on mosquitto) and keep shadows in
//! one PostgreSQL database (started by the test), 1,000 devices report and
//! an app writes desired state, and one host is SIGKILLed mid-run and
//! started again. Afterwards every acknowledged update is in the database
//! and versions only grew.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mosquitto, Postgres};
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::{ConflictPolicy, PathBuf, StateTree, Value};
use lanyard_core::wire::ShadowUpdate;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::transport::{Qos, Transport};
use lanyard_std::twin::{TwinShadow, app_topics};

const DEVICES: usize = 1_000;
const ROUNDS: usize = 5;

fn host(port: u16, pg: &str, n: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args([
            "twin",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
            "--postgres",
            pg,
            "--share-group",
            "fleet",
            "--client-id",
            &format!("lanyard-twin-{n}"),
            "--device-rate",
            "100000",
            "--device-burst",
            "100000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// An update setting one leaf of its own on one side.
fn leaf_update(desired: bool, leaf: &str, v: i64, ts: u64) -> Vec<u8> {
    let mut t: StateTree<4, 64> = StateTree::new();
    t.insert(&PathBuf::from_dotted(leaf).unwrap(), Value::Int(v))
        .unwrap();
    let mut up: ShadowUpdate<4, 64> = ShadowUpdate::new(ts);
    if desired {
        up.desired = Some(t);
    } else {
        up.reported = Some(t);
    }
    let mut buf = vec![0u8; 256];
    let n = up.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// Every shadow in the database: version and shadow.
fn stored(url: &str) -> HashMap<String, (u64, Box<TwinShadow>)> {
    let url = url.to_owned();
    // The blocking client runs its own runtime: not on the test's.
    std::thread::spawn(move || {
        let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        db.query("SELECT device, version, doc FROM shadows", &[])
            .unwrap_or_default()
            .into_iter()
            .map(|row| {
                let (key, v, doc): (String, i64, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
                let bytes = lanyard_std::store::unseal(&doc).unwrap().to_vec();
                let s = Box::new(TwinShadow::decode(&bytes, ConflictPolicy::CloudWins).unwrap());
                (key, (v as u64, s))
            })
            .collect()
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_on_postgres_share_a_fleet_and_a_killed_one_loses_nothing() {
    let pg = Postgres::start();
    let url = pg.url();
    let broker = Mosquitto::start();
    let port = broker.port;
    let mut hosts: Vec<Child> = (0..3).map(|n| host(port, &url, n)).collect();

    let ids: Vec<String> = (0..DEVICES).map(|i| format!("ly-scale{i:06}")).collect();
    // Ten connections carry the thousand devices (no ACL on this broker).
    let mut conns = Vec::new();
    for c in 0..10 {
        let mut cfg = MqttConfig::new("127.0.0.1", port, format!("fleet-{c}"));
        cfg.persistent_session = false;
        conns.push(
            MqttTransport::connect_and_wait(cfg, Duration::from_secs(5))
                .await
                .unwrap(),
        );
    }
    // Registered once the hosts are up (their probes take a moment): sent
    // until every device has a row.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = stored(&url);
        if have.len() == DEVICES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {DEVICES} registered",
            have.len()
        );
        for (i, id) in ids.iter().enumerate() {
            if !have.contains_key(id) {
                conns[i % 10]
                    .publish(
                        &topic(id, MessageKind::Register),
                        &common::register_bytes(id),
                        Qos::AtLeastOnce,
                    )
                    .await
                    .unwrap();
            }
        }
        for c in &mut conns {
            c.flush(Duration::from_secs(10)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Rounds of reports (each a leaf of its own) and, for one device in
    // ten, desired state from an app; host 1 is killed after the second.
    let mut mid = HashMap::new();
    for round in 0..ROUNDS {
        for (i, id) in ids.iter().enumerate() {
            let c = &mut conns[i % 10];
            c.publish(
                &topic(id, MessageKind::ShadowUpdate),
                &leaf_update(
                    false,
                    &format!("k{round}"),
                    round as i64,
                    100 + round as u64,
                ),
                Qos::AtLeastOnce,
            )
            .await
            .unwrap();
            if i % 10 == 0 {
                c.publish(
                    &format!("lanyard/v1/{id}/{}", app_topics::SET_DESIRED),
                    &leaf_update(true, &format!("d{round}"), round as i64, 100 + round as u64),
                    Qos::AtLeastOnce,
                )
                .await
                .unwrap();
            }
        }
        for c in &mut conns {
            c.flush(Duration::from_secs(20)).await.unwrap();
        }
        if round == 1 {
            let _ = hosts[1].kill();
            let _ = hosts[1].wait();
            mid = stored(&url).into_iter().map(|(k, (v, _))| (k, v)).collect();
            hosts[1] = host(port, &url, 1);
        }
    }

    // Every acknowledged update lands in the database.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let have = stored(&url);
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| {
                let Some((_, s)) = have.get(*id) else {
                    return true;
                };
                (0..ROUNDS).any(|r| {
                    s.reported().get_dotted(&format!("k{r}")).map(|e| e.value)
                        != Some(Value::Int(r as i64))
                }) || (ids.iter().position(|x| x == *id).unwrap() % 10 == 0
                    && (0..ROUNDS).any(|r| {
                        s.desired().get_dotted(&format!("d{r}")).map(|e| e.value)
                            != Some(Value::Int(r as i64))
                    }))
            })
            .cloned()
            .collect();
        if missing.is_empty() {
            // Versions only grew.
            for (id, v) in &mid {
                assert!(have[id].0 >= *v, "{id}: version {} after {v}", have[id].0);
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} devices miss acknowledged updates, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for h in &mut hosts {
        let _ = h.kill();
        let _ = h.wait();
    }
}
