//! A Linux device in a few lines: [`DeviceBuilder`] puts the agent, the
//! application's parts, an MQTT transport, the state directory and the
//! outbound journal together, and hands back the driver to run and a
//! [`DeviceHandle`] the application reports through from any task.
//!
//! ```no_run
//! use lanyard_std::device::DeviceBuilder;
//! use lanyard_std::driver::LocalValue;
//! use lanyard_std::mqtt::MqttConfig;
//! use lanyard_core::agent::platform::MirrorDesired;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = MqttConfig::from_url("mqtt://127.0.0.1:1883", "", None, None)?;
//! let (mut driver, handle) = DeviceBuilder::new([2, 0, 0, 0, 0, 0x42], "1.0.0", broker, "/var/lib/my-device")
//!     .desired(MirrorDesired)
//!     .build()?;
//! handle.report("uplink", LocalValue::Text("lte".into()))?;
//! driver.start().await?;
//! driver.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! `docs/std-device.md` walks through a whole device.

use std::path::PathBuf;

use lanyard_core::agent::platform::{
    Args, CommandFailure, CommandHandler, Completion, DesiredState, HealthProbe, MainsPowered,
    MirrorDesired, NoCommands, NoTelemetry, TelemetrySource,
};
use lanyard_core::shadow::typed::{from_tree, to_tree};
use lanyard_core::shadow::{FleetPolicies, StateTree};
use tokio::sync::mpsc;

use crate::aws_device::{AwsShadowName, AwsShadowTransport};
use crate::clock::Clock;
use crate::driver::{
    CommandResult, DeviceDriver, LocalChange, LocalValue, StdPlatform, std_agent_with_capacity,
};
use crate::mqtt::{MqttConfig, MqttTransport};
use crate::store::FileStore;

/// The transport of a built device: MQTT on Lanyard's topics, or wrapped
/// for AWS IoT's shadow ([`DeviceBuilder::aws_shadow`]).
pub type DeviceTransport = Box<dyn crate::transport::Transport>;

/// Why a device could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// The state directory could not be opened or created.
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The outbound journal in the state directory could not be opened (a
    /// damaged journal is left for inspection).
    Journal(std::io::Error),
    /// The tenant name is not one the topics allow.
    Tenant(crate::InvalidTenant),
    /// A tenant and an AWS IoT shadow were both asked for: AWS things have
    /// one namespace.
    AwsWithTenant,
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::StateDir { path, error } => write!(f, "{}: {error}", path.display()),
            BuildError::Journal(e) => write!(f, "outbound journal: {e}"),
            BuildError::Tenant(e) => write!(f, "{e}"),
            BuildError::AwsWithTenant => {
                f.write_str("a device keeping its shadow in AWS IoT has no tenant")
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// The device stopped: its driver is gone, so nothing more can reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceGone;

impl std::fmt::Display for DeviceGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the device's driver has stopped")
    }
}

impl std::error::Error for DeviceGone {}

/// What the application uses to talk to its running device from any task
/// or thread: report its own state, finish a long-running command.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    reports: mpsc::UnboundedSender<LocalChange>,
    results: mpsc::UnboundedSender<CommandResult>,
    credentials: crate::mqtt::CredentialSwitch,
}

impl DeviceHandle {
    /// Reports `value` at the dotted `path` of the device's own state (see
    /// [`Agent::report`](lanyard_core::agent::Agent::report)); a bad path
    /// is reported by the driver as a `Refused` event.
    pub fn report(&self, path: &str, value: LocalValue) -> Result<(), DeviceGone> {
        self.reports
            .send((path.to_owned(), value))
            .map_err(|_| DeviceGone)
    }

    /// Finishes the command that answered
    /// [`Completion::Later`](lanyard_core::agent::platform::Completion).
    pub fn complete_command(&self, outcome: CommandResult) -> Result<(), DeviceGone> {
        self.results.send(outcome).map_err(|_| DeviceGone)
    }

    /// Changes the device's client certificate while it runs (see
    /// [`crate::credentials::Renewal`]).
    pub fn credential_switch(&self) -> crate::mqtt::CredentialSwitch {
        self.credentials.clone()
    }
}

/// How a typed command handler answered: finished with a result, or
/// still running (finish it with [`DeviceHandle::complete_command`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<R> {
    /// Done; the result goes in the acknowledgement.
    Done(R),
    /// Still running.
    Later,
}

type Handler = Box<dyn FnMut(Args<'_>, &mut [u8]) -> Result<Completion, CommandFailure> + Send>;

/// A device's commands by name, each with its own handler; a
/// [`CommandHandler`] for [`DeviceBuilder::commands`].
///
/// ```
/// use lanyard_std::device::{Commands, Reply};
/// use lanyard_core::agent::platform::CommandFailure;
///
/// #[derive(serde::Deserialize)]
/// struct Move { percent: u8 }
/// #[derive(serde::Serialize)]
/// struct Moved { from: u8, to: u8 }
///
/// let mut position = 0u8;
/// let commands = Commands::new().on_typed("move", move |m: Move| {
///     if m.percent > 100 {
///         return Err(CommandFailure::BadArguments);
///     }
///     let from = std::mem::replace(&mut position, m.percent);
///     Ok(Reply::Done(Moved { from, to: m.percent }))
/// });
/// ```
#[derive(Default)]
pub struct Commands {
    handlers: Vec<(String, Handler)>,
}

/// Arguments and results of typed commands are read through a tree of
/// this size.
type CommandTree = StateTree<64, 4096>;

impl Commands {
    /// No commands yet.
    pub fn new() -> Self {
        Commands::default()
    }

    /// Runs `handler` for command `name`, with the arguments to read by
    /// key and type and a buffer for a CBOR result. A later `on` of the
    /// same name replaces it.
    pub fn on(
        mut self,
        name: &str,
        handler: impl FnMut(Args<'_>, &mut [u8]) -> Result<Completion, CommandFailure> + Send + 'static,
    ) -> Self {
        self.handlers.retain(|(n, _)| n != name);
        self.handlers.push((name.to_owned(), Box::new(handler)));
        self
    }

    /// Runs `handler` for command `name` with its arguments as an `A` and
    /// its result as an `R` (serde types; see
    /// [`lanyard_core::shadow::typed`]). Arguments that are not an `A` (a
    /// field missing, of the wrong type) are refused as bad arguments
    /// without calling it; a result that does not fit an acknowledgement
    /// fails the command.
    pub fn on_typed<A, R, F>(self, name: &str, mut handler: F) -> Self
    where
        A: serde::de::DeserializeOwned,
        R: serde::Serialize,
        F: FnMut(A) -> Result<Reply<R>, CommandFailure> + Send + 'static,
    {
        self.on(name, move |args, result| {
            let tree: Box<CommandTree> = if args.raw().is_empty() {
                Box::new(StateTree::new())
            } else {
                Box::new(CommandTree::decode(args.raw()).map_err(|_| CommandFailure::BadArguments)?)
            };
            let a: A = from_tree(&*tree).map_err(|_| CommandFailure::BadArguments)?;
            match handler(a)? {
                Reply::Later => Ok(Completion::Later),
                Reply::Done(r) => {
                    let mut out: Box<CommandTree> = Box::new(StateTree::new());
                    to_tree(&r, &mut *out)
                        .map_err(|_| CommandFailure::Failed("the result is not a state"))?;
                    out.encode(result)
                        .map(Completion::Done)
                        .map_err(|_| CommandFailure::Failed("the result is too large"))
                }
            }
        })
    }
}

impl CommandHandler for Commands {
    fn execute(
        &mut self,
        _now_ms: u64,
        name: &str,
        args: Args<'_>,
        result: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>> {
        let (_, handler) = self.handlers.iter_mut().find(|(n, _)| n == name)?;
        Some(handler(args, result))
    }
}

/// Puts a std device together. Everything but the identity, the broker
/// and the state directory has a default: mains power
/// ([`MainsPowered`]), no telemetry, no commands of its own, desired state
/// taken as it is ([`MirrorDesired`]), an outbound journal in the state
/// directory.
pub struct DeviceBuilder {
    mac: [u8; 6],
    firmware: &'static str,
    broker: MqttConfig,
    state_dir: PathBuf,
    tenant: Option<String>,
    journal: bool,
    platform: StdPlatformParts,
    clock: Clock,
    /// The AWS IoT shadow kept instead of a Lanyard twin host's: a named
    /// shadow (or the classic one), and the fleet's policies.
    aws: Option<(Option<String>, FleetPolicies)>,
    data_key: Option<crate::data_key::DataKey>,
}

struct StdPlatformParts {
    probe: Box<dyn HealthProbe + Send>,
    telemetry: Box<dyn TelemetrySource + Send>,
    commands: Box<dyn CommandHandler + Send>,
    desired: Box<dyn DesiredState + Send>,
}

impl DeviceBuilder {
    /// The device with network interface `mac` (its id derives from it),
    /// running `firmware`, on `broker` (the client id is set to the device
    /// id), keeping its state in `state_dir` (created if missing).
    pub fn new(
        mac: [u8; 6],
        firmware: &'static str,
        broker: MqttConfig,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        DeviceBuilder {
            mac,
            firmware,
            broker,
            state_dir: state_dir.into(),
            tenant: None,
            journal: true,
            platform: StdPlatformParts {
                probe: Box::new(MainsPowered),
                telemetry: Box::new(NoTelemetry),
                commands: Box::new(NoCommands),
                desired: Box::new(MirrorDesired),
            },
            clock: Clock::real(),
            aws: None,
            data_key: None,
        }
    }

    /// The key the device's saved state is encrypted under (by default
    /// `data.key` in the state directory, mode 0600). Keep it apart from the
    /// state (another partition, a secrets mount) with
    /// [`DataKey::at`](crate::data_key::DataKey::at); decommissioning
    /// destroys it before anything else, so that what stays on disk is
    /// unreadable. Give the same key to the device's
    /// [`CredentialStore`](crate::credentials::CredentialStore).
    pub fn data_key(mut self, key: crate::data_key::DataKey) -> Self {
        self.data_key = Some(key);
        self
    }

    /// The firmware version it reports (and updates compare against).
    pub fn firmware(mut self, firmware: &'static str) -> Self {
        self.firmware = firmware;
        self
    }

    /// What becomes of desired state.
    pub fn desired(mut self, desired: impl DesiredState + Send + 'static) -> Self {
        self.platform.desired = Box::new(desired);
        self
    }

    /// The device's telemetry.
    pub fn telemetry(mut self, telemetry: impl TelemetrySource + Send + 'static) -> Self {
        self.platform.telemetry = Box::new(telemetry);
        self
    }

    /// The device's commands.
    pub fn commands(mut self, commands: impl CommandHandler + Send + 'static) -> Self {
        self.platform.commands = Box::new(commands);
        self
    }

    /// The device's health measurements.
    pub fn probe(mut self, probe: impl HealthProbe + Send + 'static) -> Self {
        self.platform.probe = Box::new(probe);
        self
    }

    /// Puts the device's topics in `tenant`'s namespace; the broker user
    /// name is the tenant too (what `lanyard acl --tenants` expects).
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.to_owned());
        self
    }

    /// Keeps no outbound journal: at-least-once messages not yet
    /// acknowledged by the broker are lost if the process dies.
    pub fn without_journal(mut self) -> Self {
        self.journal = false;
        self
    }

    /// Keeps the device's shadow in AWS IoT Core's shadow service (the
    /// thing's classic shadow, or its named shadow `shadow`) rather than
    /// in a Lanyard twin host, with the fleet's conflict `policies`
    /// applied on the device; see [`crate::aws_device`]. The thing's name
    /// is the device id. Not with a tenant (refused by `build`).
    pub fn aws_shadow(mut self, shadow: Option<&str>, policies: FleetPolicies) -> Self {
        self.aws = Some((shadow.map(str::to_owned), policies));
        self
    }

    /// Runs on `clock` (a compressed clock for simulations).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The driver, ready for [`DeviceDriver::start`], and the handle.
    /// Call from within a tokio runtime (the MQTT client starts its tasks
    /// on it); the connection is made in the background. The device holds
    /// 16 leaves and 512 bytes of shadow, in messages of up to 1 KiB.
    pub fn build(self) -> Result<(DeviceDriver<DeviceTransport>, DeviceHandle), BuildError> {
        self.build_with_capacity::<1024, { lanyard_core::agent::SHADOW_LEAVES }, { lanyard_core::agent::SHADOW_POOL }>()
    }

    /// [`DeviceBuilder::build`] for a device that holds `L` leaves and `B`
    /// bytes of keys and text of shadow state, in messages of up to `M`
    /// bytes (`M` must hold the encoded reported state: about `B` plus 9
    /// bytes a leaf). The device announces `L` and `B` when it registers,
    /// and the twin host refuses desired state past them. 64 messages of
    /// `M` bytes are kept while offline.
    pub fn build_with_capacity<const M: usize, const L: usize, const B: usize>(
        self,
    ) -> Result<(DeviceDriver<DeviceTransport, M, L, B>, DeviceHandle), BuildError> {
        if let Some(t) = &self.tenant {
            crate::check_tenant(t).map_err(BuildError::Tenant)?;
            if self.aws.is_some() {
                return Err(BuildError::AwsWithTenant);
            }
        }
        let key = self.data_key.clone().unwrap_or_else(|| {
            crate::data_key::DataKey::at(crate::data_key::default_path(&self.state_dir))
        });
        let storage =
            FileStore::encrypted(&self.state_dir, key).map_err(|error| BuildError::StateDir {
                path: self.state_dir.clone(),
                error,
            })?;
        let agent = std_agent_with_capacity::<M, L, B>(self.mac, self.firmware);
        let mut broker = self.broker;
        broker.client_id = agent.device_id().to_owned();
        // The device's identity, as the ACL knows it: a broker that takes
        // the user name from the certificate (`lanyard broker-config`)
        // replaces it with the certificate's common name, which must be the
        // same.
        broker.username = Some(match &self.tenant {
            Some(t) => format!("{t}/{}", agent.device_id()),
            None => agent.device_id().to_owned(),
        });
        let platform = StdPlatform {
            storage: Box::new(storage),
            probe: self.platform.probe,
            telemetry: self.platform.telemetry,
            commands: self.platform.commands,
            desired: self.platform.desired,
        };
        let (reports, reports_rx) = mpsc::unbounded_channel();
        let (results, results_rx) = mpsc::unbounded_channel();
        let mqtt = MqttTransport::connect(broker);
        let credentials = mqtt.credential_switch();
        let transport: DeviceTransport = match self.aws {
            None => Box::new(mqtt),
            Some((shadow, policies)) => {
                let id = agent.device_id().to_owned();
                let name = match shadow {
                    Some(s) => AwsShadowName::named(&id, &s),
                    None => AwsShadowName::classic(&id),
                };
                Box::new(AwsShadowTransport::new(mqtt, &id, name, &policies))
            }
        };
        let mut driver = DeviceDriver::new(agent, transport, platform, self.clock)
            .with_local_changes(reports_rx)
            .with_command_results(results_rx);
        if self.journal {
            driver = driver
                .with_journal(&self.state_dir)
                .map_err(BuildError::Journal)?;
        }
        if let Some(t) = &self.tenant {
            driver = driver.with_tenant(t).map_err(BuildError::Tenant)?;
        }
        Ok((
            driver,
            DeviceHandle {
                reports,
                results,
                credentials,
            },
        ))
    }
}
