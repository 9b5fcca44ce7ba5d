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
use lanyard_std::clock::Clock;
use lanyard_std::describe::{describe, parse_hex};
use lanyard_std::device::DeviceBuilder;
use lanyard_std::driver::{DriverEvent, LocalValue, parse_mac};
use lanyard_std::metrics::Metrics;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::sim::{SimulatedSensors, simulated_board};
use lanyard_std::twin::{TwinHost, TwinLimits, run_twin};
use tokio::sync::{mpsc, oneshot};

mod bridge;
mod credentials;
mod decode;
mod demo;
mod device;
mod fleet;
mod ota;
mod ota_demo;
mod outcomes;
mod timeline;
mod twin;

use bridge::bridge;
use decode::decode;
use demo::demo;
use device::{device, make_device};
use timeline::timeline_line;
use twin::{TwinSetup, TwinStore, twin};

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

    /// The identity the client certificate gives (its common name), if one
    /// is given.
    fn identity(&self) -> Result<Option<String>, String> {
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
            return Ok(None);
        };
        let files = lanyard_std::tls::TlsFiles::load(ca, Some((cert.as_path(), key.as_path())))
            .map_err(|e| e.to_string())?;
        Ok(files.client_identity())
    }
}

/// Provisioning by claim, for a device made without its own certificate.
#[derive(clap::Args, Default)]
pub(crate) struct ClaimArgs {
    /// The fleet's claim certificate (PEM): the device gets its own
    /// certificate with it on first start, keeps it in its state
    /// directory, and renews it before it expires.
    #[arg(long, requires_all = ["claim_key", "provision_port"], conflicts_with_all = ["cert", "key"])]
    pub(crate) claim_cert: Option<PathBuf>,
    /// The claim certificate's key.
    #[arg(long)]
    pub(crate) claim_key: Option<PathBuf>,
    /// The broker's provisioning listener (same host as --broker).
    #[arg(long)]
    pub(crate) provision_port: Option<u16>,
    /// The hardware id the fleet's allow-list names (default: the MAC; for
    /// a bridge, the device id).
    #[arg(long)]
    pub(crate) hardware: Option<String>,
}

/// Firmware updates on `lanyard device`.
#[derive(clap::Args, Default)]
pub(crate) struct UpdateArgs {
    /// Take firmware updates signed with this key (`lanyard ota keygen`'s
    /// .pub file, or its hex). The image goes to `slot/` in the state
    /// directory; once verified (and after a failed self-test) the device
    /// exits with status 75: its supervisor starts it again, on the image
    /// `slot/boot` names (or, with --exec-image, it does so itself).
    #[arg(long)]
    pub(crate) update_key: Option<String>,
    /// Run the slots' images in this process's place: at start the device
    /// plays the bootloader (an image on trial boots once; one that was not
    /// confirmed goes back to the image before it) and executes the image
    /// chosen, with the same arguments; where it would exit with status 75
    /// it starts over that way instead. An image that does not start, or
    /// exits before it is confirmed, counts as a failed trial at the next
    /// start. Images are executables (a new build of lanyard, or a script
    /// that runs one).
    #[arg(long, requires = "update_key")]
    pub(crate) exec_image: bool,
    /// The version this build reports and updates compare against
    /// (default: the lanyard version). A restart into another image does
    /// not pass LANYARD_FIRMWARE_VERSION on: each image says its own.
    #[arg(long, env = "LANYARD_FIRMWARE_VERSION")]
    pub(crate) firmware_version: Option<String>,
    /// The new image's self-test, run when it boots on trial: a command
    /// whose exit status 0 confirms it (default: it passes).
    #[arg(long, requires = "update_key")]
    pub(crate) self_test: Option<String>,
}

/// Provisioning by claim for the device on a bridge's link.
#[derive(clap::Args)]
pub(crate) struct BridgeClaim {
    /// With --claim-cert: where the gateway keeps the device's key and
    /// certificate (encrypted), which it holds for the device.
    #[arg(long, requires = "device_id")]
    pub(crate) state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) claim: ClaimArgs,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verifies the chain; prints the entries and the head hash to keep.
    Verify {
        /// The log (`audit.log` in the twin host's state directory).
        file: PathBuf,
        /// The head hash kept from an earlier verify: also finds entries
        /// cut from the end since.
        #[arg(long)]
        head: Option<String>,
    },
    /// Prints the entries, one a line (the log is JSON lines already).
    Show {
        /// The log.
        file: PathBuf,
        /// Only this device's entries.
        #[arg(long)]
        device: Option<String>,
    },
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
        /// At the end, write a fleet file for `lanyard cost --fleet`: a
        /// fleet of --cost-devices devices each sending what the demo's
        /// devices sent (messages and bytes, scaled to the month).
        #[arg(long)]
        cost_fleet: Option<PathBuf>,
        /// The fleet size of --cost-fleet.
        #[arg(long, default_value_t = 10_000, requires = "cost_fleet")]
        cost_devices: u64,
        /// On an external broker configured for provisioning
        /// (`docs/provisioning.md`): the fleet's CA directory. The demo
        /// issues its twin host, operator and provisioning service their
        /// certificates with it, runs the provisioning service, and every
        /// device provisions itself by claim before it starts.
        #[arg(long, requires_all = ["provision_port", "broker"], conflicts_with_all = ["cert", "key"])]
        provision_by_claim: Option<PathBuf>,
        /// The broker's provisioning listener, with --provision-by-claim.
        #[arg(long)]
        provision_port: Option<u16>,
        /// Firmware updates instead: the fleet takes a good release in
        /// stages (1, 10, 50, 100 %), then a bad one (its self-test fails)
        /// that rolls back on the first stage and aborts.
        #[arg(long, conflicts_with_all = ["broker", "provision_by_claim"])]
        ota: bool,
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
    /// An operator's commands over a running twin host: show a device's
    /// shadow, set desired state, send commands, decommission and
    /// re-provision devices, watch the fleet.
    Fleet {
        #[command(flatten)]
        broker: BrokerArgs,
        /// The MQTT client id (an operator identity the broker's ACL
        /// trusts, with mutual TLS).
        #[arg(long, default_value = "lanyard-operator")]
        client_id: String,
        #[command(subcommand)]
        what: fleet::FleetCmd,
    },
    /// Checks the twin host's audit log: every entry chained to the one
    /// before (an entry edited or removed is found, and where).
    Audit {
        #[command(subcommand)]
        what: AuditCmd,
    },
    /// What a fleet costs in the cloud each month (messages, data, storage,
    /// gateways, serverless, database). Without --fleet: the reference
    /// fleet of 10,000 building sensors.
    Cost {
        /// A JSON file describing the fleet: device classes (devices,
        /// every_s, bytes), prices, operations (gateways, aggregation...),
        /// rounding; what it leaves out is the reference fleet's.
        #[arg(long)]
        fleet: Option<PathBuf>,
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
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
        /// Put the device's topics in this tenant's namespace (its identity,
        /// and so its certificate's common name, is then
        /// `{tenant}/{device-id}`, as `lanyard acl --tenants` expects).
        #[arg(long)]
        tenant: Option<String>,
        /// Erase everything the device saved (state, credentials, unsent
        /// messages) and start it as new: how an operator puts a
        /// decommissioned device back in service, or one whose saved state
        /// is damaged.
        #[arg(long)]
        reprovision: bool,
        #[command(flatten)]
        claim: ClaimArgs,
        #[command(flatten)]
        update: UpdateArgs,
    },
    /// Firmware updates: the signing key, signed releases, staged rollouts.
    Ota {
        #[command(subcommand)]
        what: ota::OtaCmd,
    },
    /// The fleet's certificate authority.
    Ca {
        #[command(subcommand)]
        what: credentials::CaCmd,
    },
    /// The provisioning service (provisioning by claim, renewal,
    /// revocation) and its records.
    Provision {
        #[command(subcommand)]
        what: credentials::ProvisionCmd,
    },
    /// Prints a mosquitto ACL file that keeps each device to its own topics
    /// (keyed on the certificate's common name: see `lanyard broker-config`).
    Acl {
        /// Identities allowed everything (the twin host); each starts with
        /// `lanyard`, which no device id may.
        #[arg(long, value_delimiter = ',', default_value = "lanyard-twin")]
        trusted: Vec<String>,
        /// Operators: each reads everything, sends commands and
        /// configurations, and writes desired state, resolutions and
        /// re-provisionings only as itself (`lanyard twin --operators`
        /// names those the host takes them from). Not with `--tenants`.
        #[arg(long, value_delimiter = ',', conflicts_with = "tenants")]
        operators: Vec<String>,
        /// For a broker shared by tenants: device certificates name
        /// `{tenant}/{device-id}`, and each device is kept to its own
        /// topics in its tenant's namespace.
        #[arg(long)]
        tenants: bool,
    },
    /// Prints a mosquitto configuration for a fleet: mutual TLS only, the
    /// certificate's common name as user name and client id, the ACL file,
    /// no Nagle delay, and the message size limit (docs/broker.md says
    /// why each). With `--dev`, a broker for development on this machine
    /// (loopback, no TLS).
    BrokerConfig {
        /// Port to listen on (default: 8883, with `--dev` 1883).
        #[arg(long)]
        port: Option<u16>,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// A development broker: loopback only, anonymous, no TLS; never
        /// on a network others can reach.
        #[arg(long, conflicts_with_all = ["ca", "cert", "key", "acl", "provision_port", "crl"])]
        dev: bool,
        /// The fleet CA certificate (PEM).
        #[arg(long, required_unless_present = "dev")]
        ca: Option<PathBuf>,
        /// The broker's certificate (PEM).
        #[arg(long, required_unless_present = "dev")]
        cert: Option<PathBuf>,
        /// The broker's key (PEM).
        #[arg(long, required_unless_present = "dev")]
        key: Option<PathBuf>,
        /// The ACL file (`lanyard acl > acl`).
        #[arg(long, required_unless_present = "dev")]
        acl: Option<PathBuf>,
        /// Also listen here for provisioning by claim and certificate
        /// renewal (clients keep their own client id there).
        #[arg(long)]
        provision_port: Option<u16>,
        /// The fleet's revocation list (`crl.pem` in the CA directory, kept
        /// by `lanyard provision`).
        #[arg(long)]
        crl: Option<PathBuf>,
        /// Where mosquitto writes its process id (for `lanyard provision
        /// --broker-pid-file`).
        #[arg(long)]
        pid_file: Option<PathBuf>,
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
        /// Fog tier: summarise the device's telemetry over windows of this
        /// many seconds (count, min, max, mean, last of each reading)
        /// instead of passing every reading; health, lifecycle and the
        /// rest pass at once.
        #[arg(long)]
        fog_window_s: Option<f64>,
        /// With --fog-window-s: leave out a reading whose mean and last
        /// value moved by at most this since the last summary.
        #[arg(long, default_value_t = 0.0, requires = "fog_window_s")]
        dead_band: f64,
        #[command(flatten)]
        claim: BridgeClaim,
    },
    /// Runs a twin host against a broker, its shadows in a directory.
    Twin {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
        #[arg(long)]
        metrics: Option<String>,
        /// Keep the shadows in this directory: in an SQLite database
        /// there (`twin.db`, one durable transaction per batch of
        /// messages), or with --files one file per device. Shadow files an
        /// earlier version kept there are imported into the database the
        /// first time, and moved to `imported-files/`.
        #[arg(long, conflicts_with_all = ["db", "postgres"], required_unless_present_any = ["db", "postgres"])]
        state_dir: Option<PathBuf>,
        /// With --state-dir: one file per device instead of the database
        /// (for the smallest gateways: one fsync per update).
        #[arg(long, requires = "state_dir")]
        files: bool,
        /// Keep the shadows in this SQLite database (created if needed):
        /// one durable transaction per batch of messages.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Copy the shadows a `--state-dir` directory holds into the
        /// `--db` database first (those already in it are kept).
        #[arg(long, requires = "db")]
        import_dir: Option<PathBuf>,
        /// Keep the shadows in this PostgreSQL database
        /// (`host=... port=... user=... dbname=...` or a postgres:// URL),
        /// shared with other twin hosts (see --share-group).
        #[arg(long, conflicts_with = "db")]
        postgres: Option<String>,
        /// Share the subscriptions with the other twin hosts of this group
        /// (`$share/{group}/...`): each message goes to one of them. Give
        /// each host its own --client-id.
        #[arg(long)]
        share_group: Option<String>,
        /// The MQTT client id (and so the broker session: a host restarted
        /// with the same id gets what its predecessor had not finished).
        #[arg(long, default_value = "lanyard-twin")]
        client_id: String,
        /// Keep the fleet's audit log (registrations, decommissionings,
        /// re-provisionings, desired-state writes, conflict resolutions,
        /// configuration pushes and their answers; hash-chained, see
        /// `lanyard audit verify`) in this file. Default with --state-dir:
        /// `audit.log` there.
        #[arg(long)]
        audit: Option<PathBuf>,
        /// Serve these tenants' namespaces (comma-separated) instead of the
        /// shared one; messages for any other tenant are refused.
        #[arg(long, value_delimiter = ',')]
        tenants: Vec<String>,
        /// The fleet's telemetry interval, ms, sent to devices when they
        /// register (1000..=86400000).
        #[arg(long, default_value_t = 30_000)]
        telemetry_ms: u64,
        /// The fleet's heartbeat interval, ms, sent to devices when they
        /// register (1000..=86400000).
        #[arg(long, default_value_t = DeviceConfig::default().heartbeat_ms)]
        heartbeat_ms: u64,
        /// Heartbeat intervals a device may miss before the host marks it
        /// offline (an event for apps, and the metrics).
        #[arg(long, default_value_t = lanyard_std::twin::DEFAULT_MISSED_HEARTBEATS)]
        missed_heartbeats: u32,
        /// Devices registered at most; registrations past it are refused
        /// and counted.
        #[arg(long, default_value_t = TwinLimits::default().max_devices)]
        max_devices: usize,
        /// Devices registered at most per tenant.
        #[arg(long, default_value_t = TwinLimits::default().max_devices_per_tenant)]
        max_devices_per_tenant: usize,
        /// Messages per second each device may send the host (sustained);
        /// more are dropped and counted. A backlog the broker kept while
        /// the host was down counts too: keep the burst above it.
        #[arg(long, default_value_t = TwinLimits::default().device_messages_per_s)]
        device_rate: u32,
        /// Messages a device may send at once above its rate.
        #[arg(long, default_value_t = TwinLimits::default().device_burst)]
        device_burst: u32,
        /// The fleet's conflict policies, a JSON file of
        /// `{"dotted.path": "policy"}` (`cloud_wins`, `device_wins`,
        /// `latest_wins`, `manual_resolve`; `"*"` for every other
        /// property). Default: the cloud wins everywhere.
        #[arg(long)]
        policies: Option<PathBuf>,
        /// The identities whose desired state, conflict resolutions,
        /// re-provisionings and (with --rollouts) rollout changes the host
        /// takes (comma-separated, or the flag repeated); each such write
        /// names its writer at the end of its topic (`lanyard fleet
        /// --client-id`, `lanyard ota ... --operator`), anyone else's is
        /// refused with the reason. Default: every writer the broker lets
        /// through.
        #[arg(long, value_delimiter = ',')]
        operators: Vec<String>,
        /// Run the fleet's firmware rollouts here (`lanyard ota start`):
        /// the releases operators hand over and each rollout's journal are
        /// kept in this directory, the blocks are served from it, and the
        /// rollouts that had not ended are taken up again at start. Who
        /// started, paused, resumed or cancelled each, and how it ended,
        /// goes into `audit.log` there. One host of a share group runs
        /// them.
        #[arg(long)]
        rollouts: Option<PathBuf>,
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
            Cmd::Cost { fleet, json } => cost(fleet, json),
            Cmd::Audit { what } => audit(what),
            Cmd::Fleet {
                broker,
                client_id,
                what,
            } => fleet::fleet(&broker, &client_id, what).await,
            Cmd::Acl {
                trusted,
                operators,
                tenants,
            } => {
                let trusted: Vec<&str> = trusted.iter().map(String::as_str).collect();
                let operators: Vec<&str> = operators.iter().map(String::as_str).collect();
                let acl = if tenants {
                    lanyard_std::acl::mosquitto_tenant_acl(&trusted)
                } else {
                    lanyard_std::acl::mosquitto_fleet_acl(&trusted, &operators)
                };
                print!(
                    "{}",
                    acl.map_err(|e| format!("--trusted / --operators: {e}"))?
                );
                Ok(())
            }
            Cmd::BrokerConfig {
                port,
                bind,
                ca,
                cert,
                key,
                acl,
                provision_port,
                crl,
                pid_file,
                dev,
            } => {
                if dev {
                    print!(
                        "{}",
                        lanyard_std::acl::mosquitto_dev_conf(port.unwrap_or(1883))
                    );
                    return Ok(());
                }
                let (Some(ca), Some(cert), Some(key), Some(acl)) = (ca, cert, key, acl) else {
                    return Err("--ca, --cert, --key and --acl go together".into());
                };
                print!(
                    "{}",
                    lanyard_std::acl::mosquitto_conf(&lanyard_std::acl::BrokerFiles {
                        bind: &bind,
                        port: port.unwrap_or(8883),
                        ca: &ca,
                        cert: &cert,
                        key: &key,
                        acl: &acl,
                        provision_port,
                        crl: crl.as_deref(),
                        pid_file: pid_file.as_deref(),
                    })
                );
                Ok(())
            }
            Cmd::Device {
                broker,
                state_dir,
                mac,
                metrics,
                tenant,
                reprovision,
                claim,
                update,
            } => {
                device(
                    &broker,
                    state_dir,
                    &mac,
                    tenant,
                    reprovision,
                    (claim, update),
                    metrics_on(metrics).await?,
                )
                .await
            }
            Cmd::Ota { what } => ota::ota(what).await,
            Cmd::Ca { what } => credentials::ca(what),
            Cmd::Provision { what } => credentials::provision(what).await,
            Cmd::Bridge {
                broker,
                tcp,
                serial,
                device_id,
                tenant,
                fog_window_s,
                dead_band,
                claim,
            } => {
                let fog = match fog_window_s {
                    Some(s) if s.is_finite() && s > 0.0 && dead_band >= 0.0 => {
                        Some(lanyard_std::fog::FogConfig {
                            window_ms: (s * 1000.0) as u64,
                            dead_band,
                        })
                    }
                    Some(_) => {
                        return Err(
                            "--fog-window-s: more than 0 seconds (and --dead-band >= 0)".into()
                        );
                    }
                    None => None,
                };
                bridge(&broker, tcp, serial, device_id, tenant, fog, claim).await
            }
            Cmd::Twin {
                broker,
                state_dir,
                files,
                db,
                import_dir,
                postgres,
                share_group,
                client_id,
                audit,
                metrics,
                tenants,
                telemetry_ms,
                heartbeat_ms,
                missed_heartbeats,
                max_devices,
                max_devices_per_tenant,
                device_rate,
                device_burst,
                policies,
                operators,
                rollouts,
            } => {
                let policies = match policies {
                    None => lanyard_core::shadow::FleetPolicies::default(),
                    Some(path) => {
                        let text = std::fs::read_to_string(&path)
                            .map_err(|e| format!("--policies {}: {e}", path.display()))?;
                        let json: serde_json::Value = serde_json::from_str(&text)
                            .map_err(|e| format!("--policies {}: not JSON: {e}", path.display()))?;
                        lanyard_std::twin::fleet_policies_from_json(&json)
                            .map_err(|e| format!("--policies {}: {e}", path.display()))?
                    }
                };
                let limits = TwinLimits {
                    max_devices,
                    max_devices_per_tenant,
                    device_messages_per_s: device_rate,
                    device_burst,
                    ..TwinLimits::default()
                };
                let fleet = DeviceConfig {
                    version: 1,
                    telemetry_ms,
                    heartbeat_ms,
                    ..DeviceConfig::default()
                };
                fleet
                    .validate()
                    .map_err(|e| format!("--telemetry-ms / --heartbeat-ms: {}", e.reason))?;
                let audit = audit.or_else(|| state_dir.as_ref().map(|d| d.join("audit.log")));
                let store = match (state_dir, db, postgres) {
                    (Some(dir), _, _) if files => TwinStore::Dir(dir),
                    (Some(dir), _, _) => TwinStore::StateDir(dir),
                    (None, Some(db), _) => TwinStore::Sqlite { db, import_dir },
                    (None, None, Some(url)) => TwinStore::Postgres(url),
                    (None, None, None) => {
                        return Err("--state-dir, --db or --postgres is required".into());
                    }
                };
                let setup = TwinSetup {
                    store,
                    audit,
                    missed_heartbeats,
                    share_group,
                    client_id,
                    tenants,
                    fleet,
                    limits,
                    policies,
                    operators,
                    rollouts,
                };
                twin(&broker, setup, metrics_on(metrics).await?).await
            }
            Cmd::Demo {
                devices,
                speed,
                minutes,
                broker,
                metrics,
                cost_fleet,
                cost_devices,
                provision_by_claim,
                provision_port,
                ota,
            } => {
                if ota {
                    return ota_demo::ota_demo(devices).await;
                }
                let cost = cost_fleet.map(|path| (path, cost_devices));
                let claim = provision_by_claim.zip(provision_port);
                demo(
                    devices,
                    speed,
                    minutes,
                    broker,
                    metrics_on(metrics).await?,
                    cost,
                    claim,
                )
                .await
            }
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

/// `lanyard cost`.
fn cost(fleet: Option<PathBuf>, json: bool) -> Result<(), String> {
    use lanyard_std::cost::FleetCost;
    let model = match &fleet {
        None => FleetCost::worked_example(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--fleet {}: {e}", path.display()))?;
            FleetCost::from_json(&text).map_err(|e| format!("--fleet {}: {e}", path.display()))?
        }
    };
    let report = model.report();
    if json {
        println!("{}", report.to_json());
        return Ok(());
    }
    print!("{}", report.table());
    if fleet.is_none() {
        let mut listed = model.clone();
        listed.prices.per_gb_second = FleetCost::LIST_PER_GB_SECOND;
        let listed = listed.report();
        let compute = listed
            .lines
            .iter()
            .find(|l| l.category == "cloud compute (serverless)")
            .map_or(0, |l| l.cents);
        println!(
            "\nThe reference fleet (50 buildings of 200 sensors, 2024 us-east-1 prices). Its \
             serverless compute is priced as the published example did, at $0.0000166667 per \
             thousand GB-seconds; at the list price per GB-second it is ${:.2} and the month ${:.2}.",
            compute as f64 / 100.0,
            listed.total_cents as f64 / 100.0
        );
    }
    Ok(())
}

/// `lanyard audit`.
fn audit(what: AuditCmd) -> Result<(), String> {
    use lanyard_std::audit::{AuditError, verify};
    match what {
        AuditCmd::Verify { file, head } => {
            let checked = verify(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            if let Some(kept) = head {
                // The kept head must be the end, or an entry on the way.
                if kept != checked.head && !chain_passes(&file, &kept)? {
                    return Err(format!(
                        "{}: {}",
                        file.display(),
                        AuditError::Head {
                            found: checked.head.clone()
                        }
                    ));
                }
            }
            if checked.torn_tail > 0 {
                println!(
                    "an unfinished last line of {} bytes (a write cut off by a crash, never \
                     committed): the twin host removes it when it opens the log",
                    checked.torn_tail
                );
            }
            println!(
                "{} entries, chained; head {}",
                checked.entries, checked.head
            );
            Ok(())
        }
        AuditCmd::Show { file, device } => {
            verify(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            for line in text.lines() {
                let entry: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                if device.as_deref().is_none_or(|d| entry["device"] == d) {
                    println!("{line}");
                }
            }
            Ok(())
        }
    }
}

/// Whether an entry of the log at `file` hashes to `head`: a head kept
/// earlier is still in the log when entries were added after it.
fn chain_passes(file: &std::path::Path, head: &str) -> Result<bool, String> {
    use lanyard_std::audit::line_hash;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(text.lines().any(|l| line_hash(l.as_bytes()) == head))
}
