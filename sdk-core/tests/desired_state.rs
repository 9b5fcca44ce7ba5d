//! Desired state goes through the application: what it reaches is
//! reported, what it refuses is sent with a reason, what it is still
//! working on waits for its own report; a delta repeated by the twin after
//! each report sends nothing new.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::sim::*;
use lanyard_core::agent::AgentEvent;
use lanyard_core::agent::health::reason;
use lanyard_core::agent::messages::MessageKind;
use lanyard_core::agent::platform::{Applied, DesiredState, RejectReason};
use lanyard_core::shadow::{Path, PathBuf, Value};
use lanyard_core::wire::ShadowUpdate;

/// A valve: position 0-100 %, mechanically limited to `limit`; a move
/// takes time, so a new position is pending until the test says it got
/// there.
#[derive(Default)]
struct Valve {
    limit: i64,
    /// Asked for and not reached yet.
    moving_to: Option<i64>,
    asked: u32,
}

struct ValveApp(Rc<RefCell<Valve>>);

impl DesiredState for ValveApp {
    fn apply<'v>(&mut self, _: u64, path: Path<'_>, desired: Value<'v>) -> Applied<'v> {
        let mut v = self.0.borrow_mut();
        v.asked += 1;
        match (path.key(0), desired) {
            (Some("position"), Value::Int(p)) if !(0..=100).contains(&p) => {
                Applied::Rejected(RejectReason::OutOfRange)
            }
            // Past the mechanical limit: it goes as far as it can.
            (Some("position"), Value::Int(p)) if p > v.limit => {
                Applied::Reached(Value::Int(v.limit))
            }
            (Some("position"), Value::Int(p)) => {
                v.moving_to = Some(p);
                Applied::Pending
            }
            (Some("position"), _) => Applied::Rejected(RejectReason::WrongType),
            _ => Applied::Rejected(RejectReason::UnknownProperty),
        }
    }
}

fn valve(sim: &mut Sim, limit: i64) -> Rc<RefCell<Valve>> {
    let v = Rc::new(RefCell::new(Valve {
        limit,
        ..Valve::default()
    }));
    sim.desired = Box::new(ValveApp(v.clone()));
    v
}

/// The shadow updates among `sent`, decoded.
fn updates(sent: &[Sent]) -> Vec<ShadowUpdate<16, 512>> {
    sent.iter()
        .filter(|s| s.kind == MessageKind::ShadowUpdate)
        .map(|s| ShadowUpdate::decode(&s.bytes).unwrap())
        .collect()
}

fn leaf(tree: &lanyard_core::shadow::StateTree<16, 512>, dotted: &str) -> Option<Value<'static>> {
    // Values copied out of the tree, for comparisons in the tests.
    tree.get_dotted(dotted).map(|e| match e.value {
        Value::Int(i) => Value::Int(i),
        Value::Bool(b) => Value::Bool(b),
        Value::Null => Value::Null,
        other => panic!("unexpected value {other:?}"),
    })
}

/// Hands the agent a delta at `at` and returns what it sent.
fn deliver(
    agent: &mut SimAgent,
    sim: &mut Sim,
    at: u64,
    leaves: &[(&str, Value<'_>)],
) -> Vec<Sent> {
    let bytes = delta_bytes(1, at, leaves);
    agent
        .handle_inbound(at, MessageKind::ShadowDelta, &bytes, &mut sim.platform())
        .unwrap();
    // The sync it asks for is due at once.
    agent.handle_timeout(at, &mut sim.platform());
    let mut sent = Vec::new();
    drain(agent, at, &mut sent);
    sent
}

#[test]
fn a_clamped_value_is_reported_as_reached_and_repeating_the_delta_sends_nothing() {
    let mut sim = Sim::new(1_000_000);
    let v = valve(&mut sim, 80);
    let (mut agent, _) = registered(&mut sim);

    let sent = deliver(&mut agent, &mut sim, 1_000, &[("position", Value::Int(95))]);
    let ups = updates(&sent);
    assert_eq!(ups.len(), 1, "one report of the change");
    let reported = ups[0].reported.as_ref().unwrap();
    assert_eq!(leaf(reported, "position"), Some(Value::Int(80)));
    assert!(ups[0].rejected.is_none());

    // A twin answers every report that leaves desired != reported with
    // the delta again. The application is asked each time and answers the
    // same: nothing more is sent, however often.
    for i in 0..50 {
        let again = deliver(
            &mut agent,
            &mut sim,
            2_000 + i,
            &[("position", Value::Int(95))],
        );
        assert!(updates(&again).is_empty(), "round {i} sent {again:?}");
    }
    assert_eq!(v.borrow().asked, 51);
    assert_eq!(
        leaf(agent.reported(), "position"),
        Some(Value::Int(80)),
        "reported is what the valve reached"
    );
}

#[test]
fn a_refusal_keeps_reported_tells_the_cloud_why_and_is_withdrawn_when_the_device_moves() {
    let mut sim = Sim::new(1_000_000);
    let v = valve(&mut sim, 80);
    let (mut agent, _) = registered(&mut sim);
    agent
        .report(
            500,
            PathBuf::from_dotted("position").unwrap().as_path(),
            Value::Int(10),
        )
        .unwrap();
    drain(&mut agent, 500, &mut Vec::new());

    let bytes = delta_bytes(
        2,
        1_000,
        &[
            ("position", Value::Int(150)),
            ("colour", Value::Text("red")),
        ],
    );
    agent
        .handle_inbound(1_000, MessageKind::ShadowDelta, &bytes, &mut sim.platform())
        .unwrap();
    let mut events = Vec::new();
    while let Some(e) = agent.poll_event() {
        events.push(e);
    }
    assert!(events.contains(&AgentEvent::DesiredHandled {
        reached: 0,
        rejected: 2,
        pending: 0
    }));
    agent.handle_timeout(1_000, &mut sim.platform());
    let mut sent = Vec::new();
    drain(&mut agent, 1_000, &mut sent);
    let ups = updates(&sent);
    assert_eq!(ups.len(), 1);
    assert_eq!(
        leaf(ups[0].reported.as_ref().unwrap(), "position"),
        Some(Value::Int(10))
    );
    let rejected = ups[0]
        .rejected
        .as_ref()
        .expect("the refusals travel with the report");
    assert_eq!(
        leaf(rejected, "position"),
        Some(Value::Int(i64::from(RejectReason::OutOfRange.code())))
    );
    assert_eq!(
        leaf(rejected, "colour"),
        Some(Value::Int(i64::from(RejectReason::UnknownProperty.code())))
    );

    // Asked again: refused again, nothing new to say.
    for i in 0..20 {
        let again = deliver(
            &mut agent,
            &mut sim,
            2_000 + i,
            &[("position", Value::Int(150))],
        );
        assert!(updates(&again).is_empty());
    }

    // A reachable position: the valve starts moving. The refusal is
    // withdrawn (reported) but the position is not reported until reached.
    let sent = deliver(&mut agent, &mut sim, 3_000, &[("position", Value::Int(60))]);
    let ups = updates(&sent);
    assert_eq!(ups.len(), 1);
    assert_eq!(
        leaf(ups[0].reported.as_ref().unwrap(), "position"),
        Some(Value::Int(10))
    );
    let rejected = ups[0].rejected.as_ref().unwrap();
    assert_eq!(leaf(rejected, "position"), None);
    assert!(
        leaf(rejected, "colour").is_some(),
        "only the property that moved is withdrawn"
    );
    assert_eq!(v.borrow().moving_to, Some(60));
    // Still moving when the twin repeats the delta: nothing sent.
    let again = deliver(&mut agent, &mut sim, 3_500, &[("position", Value::Int(60))]);
    assert!(updates(&again).is_empty());

    // Arrived: the application reports it.
    agent
        .report(
            4_000,
            PathBuf::from_dotted("position").unwrap().as_path(),
            Value::Int(60),
        )
        .unwrap();
    agent.handle_timeout(4_000, &mut sim.platform());
    let mut sent = Vec::new();
    drain(&mut agent, 4_000, &mut sent);
    let ups = updates(&sent);
    assert_eq!(ups.len(), 1);
    assert_eq!(
        leaf(ups[0].reported.as_ref().unwrap(), "position"),
        Some(Value::Int(60))
    );

    // Reporting the same value again sends nothing.
    agent
        .report(
            5_000,
            PathBuf::from_dotted("position").unwrap().as_path(),
            Value::Int(60),
        )
        .unwrap();
    agent.handle_timeout(5_000, &mut sim.platform());
    let mut sent = Vec::new();
    drain(&mut agent, 5_000, &mut sent);
    assert!(updates(&sent).is_empty());
}

#[test]
fn a_map_replaces_a_value_and_a_value_a_map_as_a_merge_would() {
    let mut sim = Sim::new(1_000_000);
    let (mut agent, _) = registered(&mut sim);
    let p = |d: &str| PathBuf::from_dotted(d).unwrap();
    agent
        .report(200, p("mode").as_path(), Value::Int(1))
        .unwrap();
    agent
        .report(200, p("limits.low").as_path(), Value::Int(5))
        .unwrap();
    agent
        .report(200, p("limits.high").as_path(), Value::Int(9))
        .unwrap();

    deliver(
        &mut agent,
        &mut sim,
        1_000,
        &[("mode.kind", Value::Int(2)), ("limits", Value::Int(7))],
    );
    let r = agent.reported();
    assert_eq!(leaf(r, "mode.kind"), Some(Value::Int(2)));
    assert_eq!(leaf(r, "mode"), None);
    assert_eq!(leaf(r, "limits"), Some(Value::Int(7)));
    assert_eq!(leaf(r, "limits.low"), None);
    assert_eq!(r.len(), 2);
}

#[test]
fn reports_are_stamped_on_the_clouds_clock_once_it_is_known() {
    let mut sim = Sim::new(1_000_000);
    let mut agent = new_agent();
    agent.boot(0, &mut sim.platform()).expect("boot");
    // The device's clock counts from boot; the cloud's reads 1.7e12.
    const CLOUD: u64 = 1_700_000_000_000;
    answer_registration(&mut agent, &mut sim, 100, CLOUD).unwrap();
    drain(&mut agent, 100, &mut Vec::new());
    agent
        .report(
            5_100,
            PathBuf::from_dotted("t").unwrap().as_path(),
            Value::Int(1),
        )
        .unwrap();
    agent.handle_timeout(5_100, &mut sim.platform());
    let mut sent = Vec::new();
    drain(&mut agent, 5_100, &mut sent);
    let ups = updates(&sent);
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].timestamp_ms, CLOUD + 5_000);
    let stamped = agent.reported().get_dotted("t").unwrap().meta.timestamp_ms;
    assert_eq!(stamped, CLOUD + 5_000);
}

#[test]
fn a_full_outbox_is_reported_as_a_health_reason() {
    let mut sim = Sim::new(1_000_000);
    let (mut agent, _) = registered(&mut sim);
    // Offline: nothing is sent, the outbox fills with telemetry and
    // heartbeats, and the next health checks see it.
    let mut t = 100;
    while let Some(next) = agent.poll_timeout() {
        if next > 900_000 {
            break;
        }
        t = next;
        agent.handle_timeout(t, &mut sim.platform());
    }
    assert!(agent.queued() > 0);
    assert_ne!(
        agent.health().reasons & reason::BUFFER,
        0,
        "{:?}",
        agent.health()
    );
    // Connected again and drained: the next check clears it.
    drain(&mut agent, t, &mut Vec::new());
    let mut checks = 0;
    while checks < 3 {
        let next = agent.poll_timeout().unwrap();
        agent.handle_timeout(next, &mut sim.platform());
        let mut sent = Vec::new();
        drain(&mut agent, next, &mut sent);
        checks += sent
            .iter()
            .filter(|s| s.kind == MessageKind::Health)
            .count();
    }
    assert_eq!(agent.health().reasons & reason::BUFFER, 0);
}

#[test]
fn a_tree_of_the_devices_own_state_is_reported_all_or_nothing() {
    let mut sim = Sim::new(1_000_000);
    let (mut agent, _) = registered(&mut sim);
    let p = |d: &str| PathBuf::from_dotted(d).unwrap();
    let mut state: lanyard_core::shadow::StateTree<32, 1024> =
        lanyard_core::shadow::StateTree::new();
    state.insert(&p("uplink"), Value::Text("lte")).unwrap();
    state.insert(&p("fw.slot"), Value::Int(2)).unwrap();
    agent.report_tree(1_000, &state).unwrap();
    agent.handle_timeout(1_000, &mut sim.platform());
    let mut sent = Vec::new();
    drain(&mut agent, 1_000, &mut sent);
    let ups = updates(&sent);
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].reported.as_ref().unwrap().len(), 2);

    // A null removes a property the device no longer has.
    let mut gone: lanyard_core::shadow::StateTree<32, 1024> =
        lanyard_core::shadow::StateTree::new();
    gone.insert(&p("uplink"), Value::Null).unwrap();
    agent.report_tree(2_000, &gone).unwrap();
    assert!(agent.reported().get_dotted("uplink").is_none());

    // More than the device's 16 leaves: refused, nothing of it kept.
    let mut big: lanyard_core::shadow::StateTree<32, 1024> = lanyard_core::shadow::StateTree::new();
    for i in 0..20 {
        big.insert(&p(&format!("k{i:02}")), Value::Int(i)).unwrap();
    }
    let before = agent.reported().len();
    let e = agent.report_tree(3_000, &big).unwrap_err();
    let at = big.iter().nth(e.leaf).unwrap().path;
    assert_eq!(at.to_string_lossy().as_str(), "k15");
    assert_eq!(agent.reported().len(), before);
}
