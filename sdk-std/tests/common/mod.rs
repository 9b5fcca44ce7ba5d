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

    /// Starts a broker whose whole configuration `conf` writes, given its
    /// directory and port (a configuration Lanyard generates, say).
    pub fn start_with_conf(conf: impl FnOnce(&std::path::Path, u16) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let whole = conf(dir.path(), port);
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
        };
        m.launch(&whole);
        m
    }

    fn spawn(&mut self, extra: &str) {
        self.launch(&format!(
            "listener {} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nset_tcp_nodelay true\n{extra}\n",
            self.port
        ));
    }

    fn launch(&mut self, whole: &str) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(&conf, whole).unwrap();
        // Its own log, to say why when it does not start.
        let log = self.dir.path().join("mosquitto.log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("mosquitto log"))
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not open port {}: {}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
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

    /// Starts it again on the same port, with the same configuration.
    pub fn restart(&mut self) {
        self.kill();
        let whole = std::fs::read_to_string(self.dir.path().join("mosquitto.conf")).unwrap();
        self.launch(&whole);
    }

    /// The broker's directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
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

/// A fleet CA made at test time (rcgen), issuing certificates whose common
/// name is the first of their names.
pub struct Pki {
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Lanyard test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (the first is its common name), valid from
    /// `from` to `to` (years): certificate and key, PEM.
    pub fn issue(&self, names: &[&str], years: (i32, i32)) -> (String, String) {
        use rcgen::{CertificateParams, DistinguishedName, DnType};
        // Names a DNS SAN cannot hold (`acme/dev`) go in the subject only.
        let sans: Vec<String> = names
            .iter()
            .filter(|n| !n.contains('/'))
            .map(|s| s.to_string())
            .collect();
        let mut params = CertificateParams::new(sans).unwrap();
        // A subject of its own: OpenSSL takes subject == issuer for self-signed.
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client's TLS files for identity `cn`.
    pub fn client(&self, cn: &str) -> lanyard_std::tls::TlsFiles {
        let (cert, key) = self.issue(&[cn], (2020, 2100));
        lanyard_std::tls::TlsFiles::from_pem(
            self.ca_pem.clone().into(),
            Some((cert.into(), key.into())),
        )
        .unwrap()
    }

    /// An MQTT configuration over TLS to `localhost:port` as `cn`, with
    /// client id `client_id`.
    pub fn mqtt(&self, port: u16, cn: &str, client_id: &str) -> MqttConfig {
        let mut c = MqttConfig::new("localhost", port, client_id);
        c.tls = Some(self.client(cn).to_rumqttc());
        c.persistent_session = false;
        c
    }
}

/// A mosquitto configured the way Lanyard generates it
/// (`lanyard broker-config` and `lanyard acl`): mutual TLS with
/// certificates from `pki`, identity from the certificate, the ACL
/// trusting `trusted`; `tenants` for the tenant ACL.
pub fn fleet_broker(pki: &Pki, trusted: &[&str], tenants: bool) -> Mosquitto {
    let acl = if tenants {
        lanyard_std::acl::mosquitto_tenant_acl(trusted)
    } else {
        lanyard_std::acl::mosquitto_acl(trusted)
    }
    .unwrap();
    broker_with_acl(pki, acl)
}

/// [`fleet_broker`] with the ACL `acl`.
#[allow(dead_code)]
pub fn broker_with_acl(pki: &Pki, acl: String) -> Mosquitto {
    let (cert, key) = pki.issue(&["localhost", "127.0.0.1"], (2020, 2100));
    let ca = pki.ca_pem.clone();
    Mosquitto::start_with_conf(move |dir, port| {
        std::fs::write(dir.join("ca.pem"), ca).unwrap();
        std::fs::write(dir.join("server.pem"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        std::fs::write(dir.join("acl"), acl).unwrap();
        let conf = lanyard_std::acl::mosquitto_conf(&lanyard_std::acl::BrokerFiles {
            bind: "127.0.0.1",
            port,
            ca: &dir.join("ca.pem"),
            cert: &dir.join("server.pem"),
            key: &dir.join("server.key"),
            acl: &dir.join("acl"),
            provision_port: None,
            crl: None,
            pid_file: None,
        });
        format!("{conf}max_queued_messages 100000\n")
    })
}

/// A PostgreSQL server of its own for a test (Debian's `postgresql`, which
/// the test script installs), on a free port, with trust authentication;
/// killed on drop.
pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter_map(|v| v.parse::<u32>().ok())
                    .max()
            })
            .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
            .expect(
                "PostgreSQL is not installed: run `bash scripts/test-all.sh`, which installs it",
            );
        let dir = tempfile::tempdir().unwrap();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        // PostgreSQL refuses to run as root: as the `postgres` user then.
        let as_pg = |program: PathBuf| {
            if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        if root {
            let owned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(owned.success());
        }
        let data = dir.path().join("data");
        let init = as_pg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(init.success(), "initdb failed");
        let port = free_port();
        let child = as_pg(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pg = Postgres {
            child: Some(child),
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = || {
            Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        while !ready() {
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Its child processes go with the postmaster on SIGKILL of the
            // group; a plain kill of the postmaster is enough for a test.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A device's `Register` message, as a device booting for the first time
/// sends it.
pub fn register_bytes(device_id: &str) -> Vec<u8> {
    register_bytes_at_boot(device_id, 1)
}

/// A device's `Register` message at its `boot`-th boot.
pub fn register_bytes_at_boot(device_id: &str, boot: u64) -> Vec<u8> {
    use lanyard_core::agent::messages::Encodable;
    let mut buf = vec![0u8; 256];
    let n = lanyard_core::agent::messages::Register {
        device_id,
        firmware: "1",
        config_version: 0,
        boot_count: boot,
        time_ms: 5,
        resumed: false,
        capacity: None,
    }
    .encode(&mut buf)
    .unwrap();
    buf.truncate(n);
    buf
}

/// Runs the `lanyard` command; whether it succeeded, its stdout and stderr.
pub fn lanyard_cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
