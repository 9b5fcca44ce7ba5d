//! A real mosquitto broker for the tests, started on a free loopback port.
#![allow(dead_code)]

use std::net::TcpStream;

use lanyard_core::agent::config::DeviceConfig;
use lanyard_core::agent::platform::CommandHandler;
use lanyard_std::clock::Clock;
use lanyard_std::driver::{DeviceDriver, DriverEvent, StdPlatform, std_agent};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::sim::SimulatedSensors;
use lanyard_std::store::FileStore;
use lanyard_std::twin::{TwinHost, run_twin};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A running mosquitto; killed on drop.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("mosquitto is not installed: run `bash scripts/test-all.sh`, which installs it");
}

pub fn free_port() -> u16 {
    lanyard_std::broker::free_port().unwrap()
}

impl Mosquitto {
    /// Starts a broker with `extra` configuration lines on a free port.
    pub fn start() -> Self {
        Self::start_on(free_port(), "")
    }

    pub fn start_on(port: u16, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
        };
        m.spawn(extra);
        m
    }

    /// Starts a broker whose directory `setup` fills (certificates, say);
    /// `setup` returns extra configuration lines.
    pub fn start_configured(setup: impl FnOnce(&std::path::Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let extra = setup(dir.path());
        let mut m = Mosquitto {
            child: None,
            port: free_port(),
            dir,
        };
        m.spawn(&extra);
        m
    }

    fn spawn(&mut self, extra: &str) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nset_tcp_nodelay true\n{extra}\n",
                self.port
            ),
        )
        .unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not open port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn("");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn fast_fleet() -> DeviceConfig {
    DeviceConfig {
        version: 1,
        heartbeat_ms: 1_000,
        telemetry_ms: 1_000,
        health_ms: 1_000,
        shadow_sync_ms: 2_000,
        ..DeviceConfig::default()
    }
}

/// A twin host on its own connection; stopped (and handed back) on drop of
/// the returned sender.
pub fn spawn_twin(
    port: u16,
    dir: &std::path::Path,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<TwinHost>) {
    let mut host = TwinHost::open(dir, fast_fleet()).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut t = MqttTransport::connect(MqttConfig::new("127.0.0.1", port, "twin"));
        run_twin(&mut host, &mut t, Clock::real(), true, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
        host
    });
    (tx, task)
}

pub fn spawn_device(
    port: u16,
    dir: &std::path::Path,
    mac: [u8; 6],
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    // The example board's commands (`blink_led`, `read_sensor`).
    let board = lanyard_std::sim::simulated_board(
        SimulatedSensors::new(Clock::real().now_ms(), 600_000, 0),
        Default::default(),
    );
    let (stop, task, _) = spawn_device_with(port, dir, mac, Box::new(board));
    (stop, task)
}

/// A device with its own command handler; also returns what its driver saw.
pub fn spawn_device_with(
    port: u16,
    dir: &std::path::Path,
    mac: [u8; 6],
    commands: Box<dyn CommandHandler + Send>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<DriverEvent>,
) {
    let clock = Clock::real();
    let agent = std_agent(mac, "test");
    let id = agent.device_id().to_owned();
    let platform = StdPlatform {
        storage: Box::new(FileStore::open(dir).unwrap()),
        probe: Box::new(SimulatedSensors::new(clock.now_ms(), 600_000, 0)),
        telemetry: Box::new(SimulatedSensors::new(clock.now_ms(), 600_000, 0)),
        commands,
        desired: Box::new(lanyard_core::agent::platform::MirrorDesired),
    };
    let (ev_tx, ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut d = DeviceDriver::new(
        agent,
        MqttTransport::connect(MqttConfig::new("127.0.0.1", port, id)),
        platform,
        clock,
    )
    .with_events(ev_tx);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        d.start().await.unwrap();
        d.run_until(async {
            let _ = rx.await;
        })
        .await
        .unwrap();
        // Dropping the driver closes its connection.
        drop(d);
    });
    (tx, task, ev_rx)
}
