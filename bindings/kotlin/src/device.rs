//! `LanyardDevice`: a JVM host (a gateway, a service, a phone) as a
//! Lanyard device. The agent and its rules are `lanyard_core`'s, the
//! driver `lanyard_std::driver`'s, built by `lanyard_std::device`; what
//! this adds is the platform made of a Kotlin object
//! ([`DeviceApplication`]: desired state, commands, telemetry), which
//! `Device.kt` builds from lambdas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lanyard_core::agent::platform::{
    Applied, Args, CommandFailure, CommandHandler, Completion, DesiredState, Readings,
    RejectReason as CoreReject, TelemetrySource,
};
use lanyard_core::shadow::{Path, PathBuf, Value};
use lanyard_std::clock::Clock;
use lanyard_std::device::{DeviceBuilder, DeviceHandle, DeviceTransport};
use lanyard_std::driver::{DeviceDriver, LocalValue, parse_mac};

use crate::{
    LanyardError, ShadowValue, TlsPaths, Tree, encoded, insert_all, map_of, mqtt_config, on,
    shadow_value, tree_of, value_of,
};

/// Why a device refuses a desired value; the cloud and the apps see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum RejectReason {
    /// Outside what the device can do.
    OutOfRange,
    /// The device's to set, not the cloud's.
    ReadOnly,
    /// No such property.
    UnknownProperty,
    /// The wrong type for the property.
    WrongType,
    /// Not possible now (busy, in maintenance).
    Unavailable,
    /// More than the device holds.
    NoRoom,
}

impl From<RejectReason> for CoreReject {
    fn from(r: RejectReason) -> Self {
        match r {
            RejectReason::OutOfRange => CoreReject::OutOfRange,
            RejectReason::ReadOnly => CoreReject::ReadOnly,
            RejectReason::UnknownProperty => CoreReject::UnknownProperty,
            RejectReason::WrongType => CoreReject::WrongType,
            RejectReason::Unavailable => CoreReject::Unavailable,
            RejectReason::NoRoom => CoreReject::NoRoom,
        }
    }
}

/// What became of one desired property.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum DesiredOutcome {
    /// Taken as it is; reported so.
    Accepted,
    /// The device holds this value instead (a setpoint clamped); reported.
    Reached {
        /// What the device holds.
        value: ShadowValue,
    },
    /// Refused; the reported value stays.
    Rejected {
        /// Why.
        reason: RejectReason,
    },
    /// The device is working on it; report what it reaches with
    /// `LanyardDevice.report`.
    Pending,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum CommandReply {
    /// Done; `result` goes in the acknowledgement.
    Done {
        /// The result (empty for none).
        result: HashMap<String, ShadowValue>,
    },
    /// The device has no such command (acknowledged as Rejected, unknown).
    Unknown,
    /// The arguments are not acceptable (Rejected, with `why` as detail).
    BadArguments {
        /// Why, in the device's words.
        why: String,
    },
    /// It failed (Failed, with `why` as detail).
    Failed {
        /// Why, in the device's words.
        why: String,
    },
    /// Started and still running (a calibration, a move): acknowledged as
    /// in progress; finish it with `LanyardDevice.completeCommand` or
    /// `failCommand`. Until then other commands are refused as busy.
    Later,
}

/// The application's side of a device, called on the device's own thread
/// one at a time. `Device.kt` builds one from lambdas (`lanyardDevice {
/// ... }`) and turns their exceptions into refusals and failures.
#[uniffi::export(with_foreign)]
pub trait DeviceApplication: Send + Sync {
    /// The cloud wants `value` at `path` (one key per level).
    fn apply_desired(&self, path: Vec<String>, value: ShadowValue) -> DesiredOutcome;
    /// Runs command `name` with `args`.
    fn run_command(&self, name: String, args: HashMap<String, ShadowValue>) -> CommandReply;
    /// Telemetry is due: the readings, or `null` to send none this time.
    fn read_telemetry(&self) -> Option<HashMap<String, ShadowValue>>;
}

/// The application's desired-state decisions, for the agent.
struct Desired {
    app: Arc<dyn DeviceApplication>,
    /// The device's handle, set once the builder has made it (before the
    /// agent runs).
    handle: Arc<Mutex<Option<DeviceHandle>>>,
}

impl DesiredState for Desired {
    fn apply<'v>(&mut self, _now_ms: u64, path: Path<'_>, desired: Value<'v>) -> Applied<'v> {
        let keys = path.keys().map(str::to_owned).collect();
        match self.app.apply_desired(keys, shadow_value(desired)) {
            DesiredOutcome::Accepted => Applied::Reached(desired),
            DesiredOutcome::Rejected { reason } => Applied::Rejected(reason.into()),
            DesiredOutcome::Pending => Applied::Pending,
            DesiredOutcome::Reached { value } => match value_of(&value) {
                Some(v) if v == desired => Applied::Reached(desired),
                // Values that borrow nothing are answered at once.
                Some(Value::Null) => Applied::Reached(Value::Null),
                Some(Value::Bool(b)) => Applied::Reached(Value::Bool(b)),
                Some(Value::Int(i)) => Applied::Reached(Value::Int(i)),
                Some(Value::Float(f)) => Applied::Reached(Value::Float(f)),
                // Text the device chose: reported as soon as the agent
                // takes reports again.
                Some(Value::Text(t)) => {
                    let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner());
                    let reported = handle
                        .as_ref()
                        .map(|h| h.report(&path.to_string(), LocalValue::Text(t.into())));
                    match reported {
                        Some(Ok(())) => Applied::Pending,
                        _ => Applied::Rejected(CoreReject::Unavailable),
                    }
                }
                _ => Applied::Rejected(CoreReject::WrongType),
            },
        }
    }
}

/// The application's telemetry, for the agent.
struct Telemetry(Arc<dyn DeviceApplication>);

impl TelemetrySource for Telemetry {
    fn read(&mut self, _now_ms: u64, readings: &mut Readings) -> bool {
        match self.0.read_telemetry() {
            None => false,
            // Readings the shadow cannot hold fail this read (and show in
            // the device's health as a failed read), not the device.
            Some(map) => insert_all(readings, &mut PathBuf::new(), &map).is_ok(),
        }
    }
}

/// The application's commands, for the agent.
struct Commands(Arc<dyn DeviceApplication>);

impl CommandHandler for Commands {
    fn execute(
        &mut self,
        _now_ms: u64,
        name: &str,
        args: Args<'_>,
        result: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>> {
        let args = if args.raw().is_empty() {
            HashMap::new()
        } else {
            match Tree::decode(args.raw()) {
                Ok(t) => map_of(&t),
                Err(_) => return Some(Err(CommandFailure::BadArguments)),
            }
        };
        Some(match self.0.run_command(name.to_owned(), args) {
            CommandReply::Unknown => return None,
            CommandReply::Later => Ok(Completion::Later),
            CommandReply::Done { result: r } if r.is_empty() => Ok(Completion::Done(0)),
            CommandReply::Done { result: r } => tree_of(&r)
                .map_err(|_| CommandFailure::Failed("the result is not a state"))
                .and_then(|t| {
                    t.encode(result).map_err(|_| {
                        CommandFailure::Failed("the result is larger than an ack holds")
                    })
                })
                .map(Completion::Done),
            CommandReply::BadArguments { why } => {
                Err(CommandFailure::bad_arguments_because(&why, result))
            }
            CommandReply::Failed { why } => Err(CommandFailure::failed_because(&why, result)),
        })
    }
}

impl LanyardDevice {
    fn finish(&self, outcome: lanyard_std::driver::CommandResult) -> Result<(), LanyardError> {
        self.handle
            .complete_command(outcome)
            .map_err(|_| LanyardError::Transport {
                detail: "the device has stopped".into(),
            })
    }
}

/// A device run by the SDK's agent over MQTT, whose desired state,
/// commands and telemetry are the application's ([`DeviceApplication`]).
/// Its state (shadow, configuration, outbound journal) is kept in
/// `stateDir`, so a restarted process resumes where it stopped.
#[derive(uniffi::Object)]
pub struct LanyardDevice {
    device_id: String,
    runtime: Arc<tokio::runtime::Runtime>,
    /// Taken by the one `run`.
    driver: Mutex<Option<DeviceDriver<DeviceTransport>>>,
    handle: DeviceHandle,
    stop: tokio::sync::watch::Sender<bool>,
}

#[uniffi::export]
impl LanyardDevice {
    /// The device with network interface `mac` (`"02:00:00:00:00:07"`; its
    /// id derives from it) on the broker at `brokerUrl` (`mqtt://` or
    /// `mqtts://` with `tls`), keeping its state in `stateDir` (created if
    /// missing). `speed` runs its clock faster than real time (intervals
    /// divided by it), for simulations: its clock then runs ahead of the
    /// apps', whose commands it soon takes for expired. Nothing runs until
    /// `run`.
    #[uniffi::constructor(default(tls = None, firmware = None, speed = 1.0))]
    pub fn new(
        broker_url: String,
        mac: String,
        state_dir: String,
        app: Arc<dyn DeviceApplication>,
        tls: Option<TlsPaths>,
        firmware: Option<String>,
        speed: f64,
    ) -> Result<Arc<Self>, LanyardError> {
        let bad = |detail: String| LanyardError::BadInput { detail };
        let mac = parse_mac(&mac).map_err(bad)?;
        if !(speed.is_finite() && speed > 0.0) {
            return Err(bad(format!("speed {speed}: a positive number")));
        }
        // The device keeps its version for the life of the process.
        let firmware: &'static str = match firmware {
            Some(v) if !v.is_empty() && v.len() <= 24 => Box::leak(v.into_boxed_str()),
            Some(_) => return Err(bad("firmware: 1 to 24 bytes".into())),
            None => env!("CARGO_PKG_VERSION"),
        };
        // The builder sets the client id to the device id.
        let config = mqtt_config(&broker_url, String::new(), tls.as_ref())?;
        let runtime = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| LanyardError::Transport {
                    detail: e.to_string(),
                })?,
        );
        let device_id = lanyard_core::agent::device_id_from_mac(mac).to_string();
        // The handle the desired-state part reports through is the
        // builder's, made with the driver: it is handed over once built.
        let handle_slot: Arc<Mutex<Option<DeviceHandle>>> = Arc::new(Mutex::new(None));
        let builder = DeviceBuilder::new(mac, firmware, config, &state_dir)
            .clock(if speed == 1.0 {
                Clock::real()
            } else {
                Clock::compressed(speed)
            })
            .telemetry(Telemetry(app.clone()))
            .commands(Commands(app.clone()))
            .desired(Desired {
                app,
                handle: handle_slot.clone(),
            });
        // The MQTT client starts its tasks on the runtime it is made in.
        let (driver, handle) = {
            let _in_runtime = runtime.enter();
            builder.build().map_err(|e| LanyardError::Transport {
                detail: e.to_string(),
            })?
        };
        *handle_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle.clone());
        let (stop, _) = tokio::sync::watch::channel(false);
        Ok(Arc::new(LanyardDevice {
            device_id,
            runtime,
            driver: Mutex::new(Some(driver)),
            handle,
            stop,
        }))
    }

    /// The device's id (`ly-` and its MAC).
    pub fn device_id(&self) -> String {
        self.device_id.clone()
    }

    /// Connects, boots the agent (resuming what `stateDir` holds) and runs
    /// it until `stop`, or until it is decommissioned. A device runs once;
    /// make a new one (same `stateDir`) to run again. Cancelling the
    /// coroutine ends it at once; what it had not sent stays in its
    /// journal for the next run.
    pub async fn run(&self) -> Result<(), LanyardError> {
        let mut driver = self
            .driver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| LanyardError::BadInput {
                detail: "the device has run; make a new one".into(),
            })?;
        let mut stop = self.stop.subscribe();
        let transport = |e: lanyard_std::transport::TransportError| LanyardError::Transport {
            detail: e.to_string(),
        };
        on(&self.runtime, async move {
            driver.start().await.map_err(|e| LanyardError::Transport {
                detail: e.to_string(),
            })?;
            driver
                .run_until(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .map_err(transport)?;
            // The last messages must reach the broker before the client
            // goes; what does not in time stays journalled.
            driver
                .finish(std::time::Duration::from_secs(5))
                .await
                .map_err(transport)
        })
        .await
    }

    /// Ends `run` (it returns once the last messages are sent).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Finishes the command that answered `CommandReply.Later`, with its
    /// result.
    pub fn complete_command(
        &self,
        result: HashMap<String, ShadowValue>,
    ) -> Result<(), LanyardError> {
        self.finish(Ok(encoded(&result)?))
    }

    /// Fails the command that answered `CommandReply.Later` (acknowledged
    /// as Failed, execution failed: a detail cannot follow it this late).
    pub fn fail_command(&self) -> Result<(), LanyardError> {
        self.finish(Err(CommandFailure::Failed("the application failed it")))
    }

    /// Reports the device's own state (a property changed on the device, a
    /// pending desired value reached): booleans, integers, floats and
    /// text, nested maps for nested properties.
    pub fn report(&self, state: HashMap<String, ShadowValue>) -> Result<(), LanyardError> {
        let tree = tree_of(&state)?;
        let mut changes = Vec::new();
        for e in tree.iter() {
            let value = match e.value {
                Value::Bool(b) => LocalValue::Bool(b),
                Value::Int(i) => LocalValue::Int(i),
                Value::Float(f) => LocalValue::Float(f),
                Value::Text(t) => LocalValue::Text(t.into()),
                other => {
                    return Err(LanyardError::BadInput {
                        detail: format!(
                            "{}: a device reports booleans, numbers and text, not {other:?}",
                            e.path
                        ),
                    });
                }
            };
            changes.push((e.path.to_string(), value));
        }
        for (path, value) in changes {
            self.handle
                .report(&path, value)
                .map_err(|_| LanyardError::Transport {
                    detail: "the device has stopped".into(),
                })?;
        }
        Ok(())
    }
}
