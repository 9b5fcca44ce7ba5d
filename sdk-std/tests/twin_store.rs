//! The twin host's stores: the SQLite database keeps shadows and
//! decommissioned devices across restarts, refuses a write made from a
//! stale copy (two hosts on one database never lose each other's update),
//! sets a damaged record aside, and takes in what a state directory held.

mod common;

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::lifecycle::{LifecycleState, Trigger};
use lanyard_core::agent::messages::*;
use lanyard_core::shadow::{PathBuf, StateTree, Value};
use lanyard_core::wire::ShadowUpdate;
use lanyard_std::twin::{SqliteStore, TwinHost, app_topics};

const ID: &str = "ly-0000000005a1";

fn update(desired: bool, key: &str, v: i64, ts: u64) -> Vec<u8> {
    let mut t: StateTree<16, 512> = StateTree::new();
    t.insert(&PathBuf::from_dotted(key).unwrap(), Value::Int(v))
        .unwrap();
    let mut up: ShadowUpdate<16, 512> = ShadowUpdate::new(ts);
    if desired {
        up.desired = Some(t);
    } else {
        up.reported = Some(t);
    }
    let mut buf = vec![0u8; 1024];
    let n = up.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn t(id: &str, suffix: &str) -> String {
    format!("lanyard/v1/{id}/{suffix}")
}

fn decommission_event() -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let n = LifecycleEvent {
        from: LifecycleState::Active,
        to: LifecycleState::Decommissioned,
        cause: Trigger::Decommission,
        time_ms: 9,
        seq: 3,
    }
    .encode(&mut buf)
    .unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn shadows_and_decommissioned_devices_survive_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("twin.db");
    let gone = "ly-0000000005a2";
    {
        let mut h = TwinHost::open_sqlite(&db, DeviceConfig::default()).unwrap();
        h.handle(1, &t(ID, "register"), &common::register_bytes(ID));
        h.handle(1, &t(gone, "register"), &common::register_bytes(gone));
        h.handle(2, &t(ID, app_topics::SET_DESIRED), &update(true, "a", 1, 2));
        h.handle(3, &t(ID, "shadow/update"), &update(false, "b", 2, 3));
        h.handle(4, &t(gone, "lifecycle"), &decommission_event());
    }
    let mut h = TwinHost::open_sqlite(&db, DeviceConfig::default()).unwrap();
    let s = h.shadow(ID).unwrap();
    assert_eq!(s.version(), 2);
    assert_eq!(s.desired().get_dotted("a").unwrap().value, Value::Int(1));
    assert_eq!(s.reported().get_dotted("b").unwrap().value, Value::Int(2));
    assert!(h.shadow(gone).is_none());
    assert!(h.is_decommissioned(gone));
    // Refused: apps are told, the device is not answered.
    let out = h.handle(5, &t(gone, "register"), &common::register_bytes(gone));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, t(gone, "fleet/event"));
    assert!(matches!(
        lanyard_std::twin::FleetEvent::decode(&out[0].payload),
        Some(lanyard_std::twin::FleetEvent::Refused { from: "device", .. })
    ));
    assert!(h.reprovision(gone));
    drop(h);
    let mut h = TwinHost::open_sqlite(&db, DeviceConfig::default()).unwrap();
    assert!(!h.is_decommissioned(gone));
    assert_eq!(
        h.handle(6, &t(gone, "register"), &common::register_bytes(gone))
            .len(),
        1
    );
}

#[test]
fn two_hosts_on_one_database_never_lose_each_others_update() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("twin.db");
    let mut a = TwinHost::open_sqlite(&db, DeviceConfig::default()).unwrap();
    a.handle(1, &t(ID, "register"), &common::register_bytes(ID));
    // B starts with the same shadow, version 0.
    let mut b = TwinHost::open_sqlite(&db, DeviceConfig::default()).unwrap();
    assert_eq!(b.shadow(ID).unwrap().version(), 0);
    // A applies the device's report: version 1 in the database.
    a.handle(2, &t(ID, "shadow/update"), &update(false, "x", 1, 2));
    // B, from its stale copy, applies an app's desired state: the store
    // refuses the write, and B reads the shadow again.
    b.handle(3, &t(ID, app_topics::SET_DESIRED), &update(true, "y", 7, 3));
    let s = b.shadow(ID).unwrap();
    assert_eq!(s.reported().get_dotted("x").unwrap().value, Value::Int(1));
    assert_eq!(s.version(), 1);
    // Neither host's write overwrote the other's: a third reads A's.
    let c = TwinHost::open_sqlite(&db, DeviceConfig::default()).unwrap();
    assert_eq!(
        c.shadow(ID)
            .unwrap()
            .reported()
            .get_dotted("x")
            .unwrap()
            .value,
        Value::Int(1)
    );
    // B, now current, writes on top: version 2, both updates there.
    b.handle(4, &t(ID, app_topics::SET_DESIRED), &update(true, "y", 7, 4));
    let c = TwinHost::open_sqlite(&db, DeviceConfig::default()).unwrap();
    let s = c.shadow(ID).unwrap();
    assert_eq!(s.version(), 2);
    assert_eq!(s.desired().get_dotted("y").unwrap().value, Value::Int(7));
    assert_eq!(s.reported().get_dotted("x").unwrap().value, Value::Int(1));
}

#[test]
fn a_damaged_row_is_set_aside_and_the_rest_load() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("twin.db");
    let other = "ly-0000000005a3";
    {
        let mut h = TwinHost::open_sqlite(&db, DeviceConfig::default()).unwrap();
        for id in [ID, other] {
            h.handle(1, &t(id, "register"), &common::register_bytes(id));
            h.handle(2, &t(id, "shadow/update"), &update(false, "x", 5, 2));
        }
    }
    // A byte flipped inside one document.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut doc: Vec<u8> = conn
        .query_row("SELECT doc FROM shadows WHERE device = ?1", [ID], |r| {
            r.get(0)
        })
        .unwrap();
    let last = doc.len() - 2;
    doc[last] ^= 0x01;
    conn.execute(
        "UPDATE shadows SET doc = ?1 WHERE device = ?2",
        rusqlite::params![doc, ID],
    )
    .unwrap();
    drop(conn);
    let h = TwinHost::open_sqlite(&db, DeviceConfig::default()).unwrap();
    assert_eq!(h.stats().damaged_records, 1);
    assert!(h.shadow(ID).unwrap().reported().is_empty());
    assert_eq!(
        h.shadow(other)
            .unwrap()
            .reported()
            .get_dotted("x")
            .unwrap()
            .value,
        Value::Int(5)
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let kept: i64 = conn
        .query_row(
            "SELECT count(*) FROM damaged WHERE device = ?1",
            [ID],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, 1);
}

#[test]
fn a_state_directory_is_imported_into_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    {
        let mut h = TwinHost::open(&state, DeviceConfig::default()).unwrap();
        h.handle(1, &t(ID, "register"), &common::register_bytes(ID));
        h.handle(2, &t(ID, "shadow/update"), &update(false, "x", 3, 2));
    }
    let db = dir.path().join("twin.db");
    let mut store = SqliteStore::open(&db).unwrap();
    assert_eq!(store.import_dir(&state).unwrap(), 1);
    // Again: nothing new, nothing overwritten.
    assert_eq!(store.import_dir(&state).unwrap(), 0);
    let h = TwinHost::with_store(Box::new(store), DeviceConfig::default()).unwrap();
    let s = h.shadow(ID).unwrap();
    assert_eq!(s.version(), 1);
    assert_eq!(s.reported().get_dotted("x").unwrap().value, Value::Int(3));
}

/// The twin host's audit log: what happened to which device, in order,
/// chained; `lanyard audit verify` finds an edited entry.
#[test]
fn the_audit_log_records_the_fleet_and_an_edit_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let gone = "ly-0000000005a2";
    {
        let mut h = TwinHost::open_sqlite(dir.path().join("twin.db"), DeviceConfig::default())
            .unwrap()
            .with_audit(&log)
            .unwrap();
        h.handle(1, &t(ID, "register"), &common::register_bytes(ID));
        h.handle(1, &t(gone, "register"), &common::register_bytes(gone));
        // A retry of the same boot is not a second registration.
        h.handle(1, &t(ID, "register"), &common::register_bytes(ID));
        h.handle(2, &t(ID, app_topics::SET_DESIRED), &update(true, "a", 1, 2));
        // A device's report is not audited.
        h.handle(3, &t(ID, "shadow/update"), &update(false, "b", 2, 3));
        h.handle(4, &t(gone, "lifecycle"), &decommission_event());
        let mut token = Vec::new();
        minicbor::encode("t1", &mut token).unwrap();
        h.handle(5, &t(gone, "operator/reprovision"), &token);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let entries: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["device"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("registered", ID, ID),
            ("registered", gone, gone),
            ("desired_set", ID, "app"),
            ("decommissioned", gone, gone),
            ("reprovisioned", gone, "operator"),
        ]
    );
    assert_eq!(entries[2]["detail"]["version"], 1);
    // The decommissioned device's last document is kept in its entry.
    assert_eq!(entries[3]["detail"]["final_shadow"]["version"], 0);
    assert!(entries[3]["detail"]["final_shadow"]["state"].is_object());

    let lanyard = common::lanyard_cli;
    let path = log.to_str().unwrap();
    let (ok, out, _) = lanyard(&["audit", "verify", path]);
    assert!(ok, "{out}");
    assert!(out.contains("5 entries, chained"), "{out}");
    let head = out.trim().rsplit(' ').next().unwrap().to_owned();
    let (ok, out, _) = lanyard(&["audit", "show", path, "--device", gone]);
    assert!(ok);
    assert_eq!(out.lines().count(), 3);

    // The last entry cut off: the chain holds, the kept head does not.
    let cut: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(&log, &cut).unwrap();
    let (ok, _, err) = lanyard(&["audit", "verify", path, "--head", &head]);
    assert!(!ok);
    assert!(err.contains("cut from its end"), "{err}");

    // An entry edited: found, and where.
    std::fs::write(&log, text.replacen("\"version\":1", "\"version\":7", 1)).unwrap();
    let (ok, _, err) = lanyard(&["audit", "verify", path]);
    assert!(!ok);
    assert!(err.contains("line 4"), "{err}");
    // A host will not append to it.
    assert!(
        TwinHost::open(dir.path(), DeviceConfig::default())
            .unwrap()
            .with_audit(&log)
            .is_err()
    );
}

/// Configuration pushes (with the fields they change) and the devices'
/// answers are in the audit log, and so is an operator's settling of a
/// conflict; a push to a device the host does not know is not.
#[test]
fn configuration_pushes_their_answers_and_resolutions_are_audited() {
    use lanyard_core::agent::config::{ConfigField, ConfigPatch};
    use lanyard_core::agent::messages::{ConfigAck, ConfigOutcome, Encodable};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    {
        let mut policies = lanyard_core::shadow::FleetPolicies::default();
        policies
            .set("a", lanyard_core::shadow::ConflictPolicy::ManualResolve)
            .unwrap();
        let mut h = TwinHost::in_memory(DeviceConfig::default())
            .with_policies(policies)
            .with_audit(&log)
            .unwrap();
        h.handle(1, &t(ID, "register"), &common::register_bytes(ID));
        let mut patch = ConfigPatch::new(4);
        patch.set(ConfigField::TelemetryMs, 60_000).unwrap();
        let mut e = minicbor::Encoder::new(Vec::new());
        patch.encode_cbor(&mut e).unwrap();
        let push = e.into_writer();
        assert!(h.handle(2, &t(ID, "config"), &push).is_empty());
        h.handle(2, &t("ly-00000000ffff", "config"), &push);
        let mut buf = vec![0u8; 128];
        let n = ConfigAck {
            version: 4,
            outcome: ConfigOutcome::Applied,
            current_version: 4,
            field: None,
            reason: None,
            time_ms: 3,
        }
        .encode(&mut buf)
        .unwrap();
        h.handle(3, &t(ID, "config/ack"), &buf[..n]);
        // A conflict parked for an operator, then settled.
        h.handle(4, &t(ID, app_topics::SET_DESIRED), &update(true, "a", 1, 4));
        h.handle(5, &t(ID, "shadow/update"), &update(false, "a", 1, 5));
        h.handle(6, &t(ID, app_topics::SET_DESIRED), &update(true, "a", 2, 6));
        h.handle(7, &t(ID, "shadow/update"), &update(false, "a", 3, 7));
        assert_eq!(h.shadow(ID).unwrap().parked().count(), 1);
        let resolve = lanyard_std::twin::ResolveRequest {
            token: "r".into(),
            path: "a".into(),
            winner: lanyard_core::shadow::Source::Device,
        };
        h.handle(8, &t(ID, "operator/resolve"), &resolve.encode());
    }
    let entries: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("registered", ID),
            ("config_pushed", "operator"),
            ("config_acknowledged", ID),
            ("desired_set", "app"),
            ("desired_set", "app"),
            ("conflict_resolved", "operator"),
        ]
    );
    assert_eq!(entries[1]["detail"]["version"], 4);
    assert_eq!(entries[1]["detail"]["fields"]["telemetry_ms"], 60_000);
    assert_eq!(entries[2]["detail"]["outcome"], "applied");
    assert_eq!(entries[5]["detail"]["path"], "a");
    assert_eq!(entries[5]["detail"]["winner"], "device");
    let (ok, out, _) = common::lanyard_cli(&["audit", "verify", log.to_str().unwrap()]);
    assert!(ok, "{out}");
}
