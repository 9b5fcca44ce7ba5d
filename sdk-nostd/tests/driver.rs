//! The blocking driver over an in-memory serial line, against a scripted
//! cloud that speaks the framed link: registration, a blink command and its
//! acknowledgements, periodic messages on time, and bad frames dropped.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::health::{HealthMetrics, SlowTelemetryOnLowBattery};
use lanyard_core::agent::lifecycle::LifecycleState;
use lanyard_core::agent::messages::*;
use lanyard_core::agent::platform::*;
use lanyard_core::agent::{Agent, Identity};
use lanyard_nostd::driver::{Driver, DriverStats, link_buffer_len};
use lanyard_nostd::envelope::{decode_envelope, encode_envelope, encode_with_topic};
use lanyard_nostd::frame::{FrameDecoder, encode_frame};

const ID: &str = "ly-020000000001";
const BUF: usize = link_buffer_len(256);

/// One end of a serial line; the test holds the other end's queues.
#[derive(Clone, Default)]
struct Port {
    to_device: Rc<RefCell<VecDeque<u8>>>,
    from_device: Rc<RefCell<Vec<u8>>>,
}

impl embedded_io::ErrorType for Port {
    type Error = core::convert::Infallible;
}
impl embedded_io::Read for Port {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let mut q = self.to_device.borrow_mut();
        // A UART hands over a few bytes at a time.
        let n = buf.len().min(q.len()).min(7);
        for b in buf.iter_mut().take(n) {
            *b = q.pop_front().unwrap();
        }
        Ok(n)
    }
}
impl embedded_io::ReadReady for Port {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(!self.to_device.borrow().is_empty())
    }
}
impl embedded_io::Write for Port {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.from_device.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[derive(Default)]
struct Board {
    blinks: Vec<(u32, u32)>,
}
impl HealthProbe for Board {
    fn metrics(&mut self, _: u64) -> HealthMetrics {
        HealthMetrics {
            battery_pct: 90,
            link_quality_pct: 90,
            free_buffer_pct: 80,
            ..HealthMetrics::default()
        }
    }
}
impl TelemetrySource for Board {
    fn read(&mut self, _: u64, readings: &mut Readings) -> bool {
        let key = lanyard_core::shadow::PathBuf::from_dotted("temperature_c").unwrap();
        readings
            .insert(&key, lanyard_core::shadow::Value::Float(21.5))
            .is_ok()
    }
}
/// The board's one command: `blink_led`, finished when it returns.
impl CommandHandler for Board {
    fn execute(
        &mut self,
        _: u64,
        name: &str,
        args: Args<'_>,
        _: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>> {
        (name == "blink_led").then(|| {
            let count = args.u64("count")?.ok_or(CommandFailure::BadArguments)?;
            let period = args.u64("period_ms")?.unwrap_or(500);
            self.blinks.push((count as u32, period as u32));
            Ok(Completion::Done(0))
        })
    }
}

type TestDriver = Driver<Port, SlowTelemetryOnLowBattery, 8, 256, BUF, BUF>;

struct Rig {
    driver: TestDriver,
    port: Port,
    board: Board,
    cloud_rx: FrameDecoder<BUF>,
    /// Every (topic, kind, message) the device sent.
    seen: Vec<(String, MessageKind, Vec<u8>)>,
}

impl Rig {
    fn new() -> Rig {
        let port = Port::default();
        let identity = Identity {
            mac: [2, 0, 0, 0, 0, 1],
            device_id: None,
            firmware: "test",
        };
        let agent = Agent::new(identity, DeviceConfig::default(), SlowTelemetryOnLowBattery);
        Rig {
            driver: Driver::new(agent, port.clone()),
            port,
            board: Board::default(),
            cloud_rx: FrameDecoder::new(),
            seen: Vec::new(),
        }
    }

    fn poll(&mut self, now: u64) -> Option<u64> {
        let mut platform = Platform {
            storage: &mut NoStorage,
            probe: &mut Board::default(),
            telemetry: &mut Board::default(),
            commands: &mut self.board,
            desired: &mut lanyard_core::agent::platform::MirrorDesired,
        };
        let step = self.driver.poll(now, &mut platform).unwrap();
        let bytes = std::mem::take(&mut *self.port.from_device.borrow_mut());
        let seen = &mut self.seen;
        self.cloud_rx.feed(&bytes, |frame| {
            let e = decode_envelope(frame).expect("device frames are envelopes");
            seen.push((e.topic.to_string(), e.kind, e.message.to_vec()));
        });
        step.next_deadline_ms
    }

    fn boot(&mut self) {
        let mut platform = Platform {
            storage: &mut NoStorage,
            probe: &mut Board::default(),
            telemetry: &mut Board::default(),
            commands: &mut self.board,
            desired: &mut lanyard_core::agent::platform::MirrorDesired,
        };
        self.driver.boot(0, &mut platform).unwrap();
    }

    fn send_raw(&mut self, frame_payload: &[u8]) {
        let mut f = vec![0u8; BUF];
        let n = encode_frame(frame_payload, &mut f).unwrap();
        self.port.to_device.borrow_mut().extend(&f[..n]);
    }

    fn send<T: Encodable>(&mut self, device_id: &str, m: &T) {
        let mut msg = vec![0u8; 512];
        let n = m.encode(&mut msg).unwrap();
        let mut env = vec![0u8; 600];
        let e = encode_envelope(device_id, T::KIND, &msg[..n], &mut env).unwrap();
        self.send_raw(&env[..e]);
    }

    fn kinds(&self) -> Vec<MessageKind> {
        self.seen.iter().map(|s| s.1).collect()
    }
}

fn blink_args() -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    e.map(2)
        .unwrap()
        .str("count")
        .unwrap()
        .u64(3)
        .unwrap()
        .str("period_ms")
        .unwrap()
        .u64(200)
        .unwrap();
    e.into_writer()
}

#[test]
fn a_device_registers_runs_a_command_and_reports_on_time_over_the_framed_link() {
    let mut rig = Rig::new();
    rig.boot();
    rig.poll(0);
    assert_eq!(
        rig.kinds(),
        [MessageKind::Lifecycle, MessageKind::Register],
        "boot sends the transition and the registration"
    );
    assert_eq!(rig.seen[1].0, format!("lanyard/v1/{ID}/register"));
    assert_eq!(Register::decode(&rig.seen[1].2).unwrap().device_id, ID);

    rig.send(
        ID,
        &RegisterAccepted {
            device_id: ID,
            config: None,
            time_ms: 100,
        },
    );
    rig.poll(100);
    assert_eq!(rig.driver.agent().state(), LifecycleState::Active);

    // Noise, a damaged frame, a non-envelope, another device's command and
    // a device-only kind: all dropped before the agent, each counted.
    rig.port.to_device.borrow_mut().extend([1, 2, 3, 0]);
    let mut damaged = vec![0u8; 64];
    let n = encode_frame(b"xyz", &mut damaged).unwrap();
    damaged[1] ^= 0x10;
    rig.port.to_device.borrow_mut().extend(&damaged[..n]);
    rig.send_raw(&[0xa0]);
    let cmd = Command {
        id: "c1",
        name: "blink_led",
        args: &blink_args(),
        issued_ms: 200,
        expires_ms: 30_000,
    };
    rig.send("ly-someone-else", &cmd);
    let mut env = vec![0u8; 128];
    let e = encode_with_topic(&topic(ID, MessageKind::Heartbeat), &[0xa0], &mut env).unwrap();
    rig.send_raw(&env[..e]);
    // And the real command, after all that.
    rig.send(ID, &cmd);
    rig.poll(200);
    assert_eq!(rig.board.blinks, [(3, 200)]);
    let acks: Vec<AckStatus> = rig
        .seen
        .iter()
        .filter(|s| s.1 == MessageKind::Ack)
        .map(|s| Ack::decode(&s.2).unwrap().status)
        .collect();
    assert_eq!(acks, [AckStatus::Accepted, AckStatus::Succeeded]);
    let link = rig.driver.link_mut().stats();
    // The noise happens to be valid COBS, so it fails the CRC too.
    assert_eq!((link.malformed, link.crc_errors), (0, 2));
    assert_eq!(
        rig.driver.stats(),
        DriverStats {
            frames_in: 2,
            frames_out: rig.seen.len() as u64,
            bad_envelopes: 1,
            misdirected: 2,
            refused: 0,
        }
    );

    // Run the clock for a minute, polling only at the deadlines the driver
    // names, as a firmware sleeping in WFI would.
    let mut now = 200;
    while let Some(at) = rig.poll(now) {
        if at > 60_200 {
            break;
        }
        assert!(at >= now, "deadlines never go back");
        now = at;
    }
    let count = |k| rig.kinds().iter().filter(|x| **x == k).count();
    assert_eq!(acks_final(&rig), Some(AckStatus::Succeeded));
    // Default intervals: heartbeat 10 s, telemetry 30 s, health 5 s.
    assert_eq!(count(MessageKind::Heartbeat), 6);
    assert_eq!(count(MessageKind::Telemetry), 2);
    assert!(count(MessageKind::Health) >= 1);
}

fn acks_final(rig: &Rig) -> Option<AckStatus> {
    rig.seen
        .iter()
        .filter(|s| s.1 == MessageKind::Ack)
        .map(|s| Ack::decode(&s.2).unwrap().status)
        .next_back()
}

/// The driver carries firmware updates beside the agent: a job and its
/// blocks arrive as frames on the update topics; the device asks for the
/// blocks, keeps its record in the platform's storage, verifies the image
/// and asks for the restart; frames for another device are refused.
#[cfg(feature = "update")]
#[test]
fn the_driver_carries_a_firmware_update_to_its_verified_end() {
    use lanyard_core::update::UpdateSession;
    use lanyard_core::update::messages::{
        Block, BlockRequest, MANIFEST_MAX, UpdateJob, UpdateReport, UpdateState, UpdateTopic,
    };
    use lanyard_nostd::driver::boot_updates;
    use lanyard_nostd::envelope::decode_update_envelope;
    use lanyard_nostd::flash::{FlashStore, RamFlash};
    use lanyard_nostd::update_slot::{BootRequest, FlashSlot};

    let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([3; 32]));
    let image: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 253) as u8).collect();
    let mut job = UpdateJob {
        job_id: "fw-9",
        version: "2.0.0",
        size: image.len() as u32,
        sha256: lanyard_core::update::sha256(&image),
        signature: [0; 64],
        block_size: 128,
        allow_downgrade: false,
        force: false,
    };
    let mut m = [0u8; MANIFEST_MAX];
    let n = job.manifest(&mut m).unwrap();
    job.signature = *pair.sk.sign(&m[..n], None);

    let mut rig = Rig::new();
    rig.boot();
    let mut store = FlashStore::new(RamFlash::<{ 6 * 1024 }>::new(), 0, 1024).with_update_record();
    let slot = FlashSlot::new(RamFlash::<{ 5 * 1024 }>::new(), 0, 4 * 1024, 1024);
    let mut session = UpdateSession::new(*pair.pk, slot);
    boot_updates(&mut session, &mut store, false, || unreachable!());

    let frame_of = |topic: UpdateTopic, id: &str, msg: &[u8]| {
        let mut env = vec![0u8; 600];
        let e = encode_with_topic(&topic.topic(id), msg, &mut env).unwrap();
        env.truncate(e);
        env
    };
    let poll = |rig: &mut Rig,
                session: &mut UpdateSession<_>,
                store: &mut FlashStore<_>,
                now: u64|
     -> (Vec<(UpdateTopic, Vec<u8>)>, bool) {
        let mut platform = Platform {
            storage: store,
            probe: &mut Board::default(),
            telemetry: &mut Board::default(),
            commands: &mut rig.board,
            desired: &mut lanyard_core::agent::platform::MirrorDesired,
        };
        let step = rig
            .driver
            .poll_updating(now, &mut platform, session, "1.0.0")
            .unwrap();
        let bytes = std::mem::take(&mut *rig.port.from_device.borrow_mut());
        let mut out = Vec::new();
        rig.cloud_rx.feed(&bytes, |frame| {
            if let Ok(u) = decode_update_envelope(frame) {
                assert_eq!(u.device_id, ID);
                out.push((u.topic, u.message.to_vec()));
            }
        });
        (out, step.restart_due)
    };

    let mut wire = [0u8; 512];
    let n = job.encode(&mut wire).unwrap();
    // Another device's job, and a topic only devices send: refused.
    let refused_before = rig.driver.stats().refused;
    let other = frame_of(UpdateTopic::Job, "ly-020000000009", &wire[..n]);
    rig.send_raw(&other);
    let report_topic = frame_of(UpdateTopic::Report, ID, &wire[..n]);
    rig.send_raw(&report_topic);
    let (out, _) = poll(&mut rig, &mut session, &mut store, 1_000);
    assert!(out.is_empty());
    assert_eq!(rig.driver.stats().refused, refused_before + 2);

    let mine = frame_of(UpdateTopic::Job, ID, &wire[..n]);
    rig.send_raw(&mine);
    let (mut out, _) = poll(&mut rig, &mut session, &mut store, 1_100);
    let (_, first) = out.remove(0);
    assert_eq!(
        UpdateReport::decode(&first).unwrap().state,
        UpdateState::Downloading
    );
    let mut record = [0u8; 600];
    assert!(
        store.load(StorageSlot::UpdateRecord, &mut record).unwrap() > 0,
        "the record is in the platform's storage"
    );
    let mut pending: Vec<u32> = out
        .iter()
        .map(|(t, b)| {
            assert_eq!(*t, UpdateTopic::Request);
            BlockRequest::decode(b).unwrap().first
        })
        .collect();
    let mut sent = 0;
    let mut states = Vec::new();
    let mut restart = false;
    while let Some(i) = pending.pop() {
        sent += 1;
        let data = image.chunks(128).nth(i as usize).unwrap();
        let b = Block {
            job_id: "fw-9",
            index: i,
            data,
        };
        let k = b.encode(&mut wire).unwrap();
        rig.send_raw(&frame_of(UpdateTopic::Block, ID, &wire[..k]));
        let (out, r) = poll(&mut rig, &mut session, &mut store, 1_200);
        restart |= r;
        for (t, bytes) in out {
            match t {
                UpdateTopic::Request => pending.push(BlockRequest::decode(&bytes).unwrap().first),
                _ => states.push(UpdateReport::decode(&bytes).unwrap().state),
            }
        }
    }
    assert_eq!(sent, image.len().div_ceil(128), "each block asked once");
    assert_eq!(states, [UpdateState::Verifying, UpdateState::Verified]);
    assert!(restart, "a verified image asks for the restart");
    assert_eq!(
        session.slot_mut().boot_request(),
        Ok(BootRequest::Trial),
        "the bootloader is asked for a trial boot"
    );
}
