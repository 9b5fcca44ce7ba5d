//! `lanyard.Device`: a gateway (or any Python host) as a Lanyard device.
//! The agent and its rules are `lanyard_core`'s, the driver is
//! `lanyard_std::driver`'s, its state is kept by `lanyard_std::store`; what
//! this adds is the platform made of Python callables (commands, sensors,
//! battery, LED) and events handed back to Python.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::errors::{
    PyConnectionError, PyOSError, PyPermissionError, PyRuntimeError, PyValueError,
};
use lanyard_core::agent::AgentEvent;
use lanyard_core::agent::platform::{Args, CommandFailure, CommandHandler, Completion};
use lanyard_nostd::hal::{BatteryCurve, BatteryVoltage, BoardCommands, BoardProbe, SensorReading};
use lanyard_std::aws_json::{tree_from_json, tree_to_json};
use lanyard_std::clock::Clock;
use lanyard_std::credentials::{
    CredentialError, CredentialStore, Credentials, ProvisionEndpoint, Renewal, RenewalEvent,
    load_or_claim,
};
use lanyard_std::data_key::{DataKey, default_path};
use lanyard_std::device::{BuildError, DeviceBuilder, DeviceHandle, DeviceTransport};
use lanyard_std::driver::{DeviceDriver, DriverEvent, LocalValue, Shared, parse_mac};
use lanyard_std::tls::TlsFiles;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;

use crate::{Tree, block_on_with, broker_config, runtime};

/// The Python layer's command dispatcher, called as `(name, args JSON)`
/// and answering `(outcome, text or None)`: outcome `"ok"` (text: the
/// result JSON), `"unknown"`, `"bad_arguments"` or `"failed"` (text: the
/// handler's error message, which the acknowledgement carries). The board's own commands
/// (`blink_led` through the LED callable, `read_sensor` through the
/// sensors) are answered first.
struct PyCommands<B> {
    dispatch: Option<Py<PyAny>>,
    board: B,
}

impl<B: CommandHandler> CommandHandler for PyCommands<B> {
    fn execute(
        &mut self,
        now_ms: u64,
        name: &str,
        args: Args<'_>,
        result: &mut [u8],
    ) -> Option<Result<Completion, CommandFailure>> {
        if let Some(done) = self.board.execute(now_ms, name, args, result) {
            return Some(done);
        }
        let dispatch = self.dispatch.as_ref()?;
        // The agent has checked that the arguments are a CBOR map; as
        // state they cross to Python in the same JSON form as desired
        // state.
        let args = if args.raw().is_empty() {
            Json::Object(Default::default())
        } else {
            match Tree::decode(args.raw()) {
                Ok(t) => tree_to_json(&t),
                Err(_) => return Some(Err(CommandFailure::BadArguments)),
            }
        };
        let answer = Python::attach(|py| {
            dispatch
                .call1(py, (name, args.to_string()))
                .and_then(|r| r.extract::<(String, Option<String>)>(py))
                // The dispatcher turns the handler's exceptions into
                // outcomes; an error here is the dispatcher's own.
                .inspect_err(|e| e.print(py))
                .ok()
        });
        match answer {
            None => Some(Err(CommandFailure::Failed("the Python dispatcher failed"))),
            Some((outcome, text)) => match (outcome.as_str(), text) {
                ("unknown", _) => None,
                ("bad_arguments", None) => Some(Err(CommandFailure::BadArguments)),
                ("bad_arguments", Some(why)) => {
                    Some(Err(CommandFailure::bad_arguments_because(&why, result)))
                }
                ("ok", None) => Some(Ok(Completion::Done(0))),
                ("ok", Some(text)) => Some(encode_result(&text, result).map(Completion::Done)),
                (_, Some(why)) => Some(Err(CommandFailure::failed_because(&why, result))),
                _ => Some(Err(CommandFailure::Failed("the Python handler raised"))),
            },
        }
    }
}

/// A handler's result (a JSON object) as the CBOR map the ack carries.
fn encode_result(text: &str, out: &mut [u8]) -> Result<usize, CommandFailure> {
    let failed = CommandFailure::Failed("the result is not a state the shadow can hold");
    let Ok(Json::Object(obj)) = serde_json::from_str::<Json>(text) else {
        return Err(failed);
    };
    let tree: Box<Tree> = tree_from_json(&obj, false)
        .map(Box::new)
        .map_err(|_| failed)?;
    tree.encode(out)
        .map_err(|_| CommandFailure::Failed("the result is larger than an ack holds"))
}

/// The battery: a Python callable answering millivolts (or `None` when it
/// cannot read them); without one the device is on mains, always full.
struct PyBattery(Option<Py<PyAny>>);

impl BatteryVoltage for PyBattery {
    fn millivolts(&mut self) -> Option<u16> {
        match &self.0 {
            None => Some(BatteryCurve::default().full_mv),
            Some(read) => Python::attach(|py| {
                read.call0(py)
                    .and_then(|v| v.extract::<Option<u16>>(py))
                    .inspect_err(|e| e.print(py))
                    .ok()
                    .flatten()
            }),
        }
    }
}

/// The sensors: a Python callable answering `(temperature °C, humidity %)`
/// or `None` when the read failed.
fn read_sensors(read: &Option<Py<PyAny>>) -> Option<SensorReading> {
    let read = read.as_ref()?;
    Python::attach(|py| {
        let (t, h) = read
            .call0(py)
            .and_then(|v| v.extract::<Option<(f32, f32)>>(py))
            .inspect_err(|e| e.print(py))
            .ok()
            .flatten()?;
        Some(SensorReading {
            temperature_c: t,
            humidity_pct: h,
        })
    })
}

/// The LED of the board's `blink_led` command: a Python callable given
/// `(count, period_ms)`.
fn blink(led: &Option<Py<PyAny>>, count: u32, period_ms: u32) {
    if let Some(blink) = led {
        Python::attach(|py| {
            if let Err(e) = blink.call1(py, (count, period_ms)) {
                e.print(py);
            }
        });
    }
}

/// A device agent run by the std driver over MQTT, with a platform of
/// Python callables. See the `lanyard.Device` docstring.
#[pyclass]
pub(crate) struct Device {
    device_id: String,
    /// The MQTT client's tasks run here from construction.
    rt: tokio::runtime::Runtime,
    /// Taken by the one `run`.
    driver: Mutex<Option<DeviceDriver<DeviceTransport>>>,
    handle: DeviceHandle,
    /// A device provisioned by claim: where its credentials are kept.
    credentials: Option<CredentialStore>,
}

/// Claim-certificate provisioning as the Python `Device` is given it.
struct Claim {
    cert: PathBuf,
    key: PathBuf,
    provision_port: u16,
    hardware: String,
}

/// A device's credentials by claim (kept ones while valid), and what keeps
/// them fresh; errors as Python exceptions.
fn claimed_credentials(
    py: Python<'_>,
    rt: &tokio::runtime::Runtime,
    config: &lanyard_std::mqtt::MqttConfig,
    ca: Option<&std::path::Path>,
    claim: Claim,
    store: CredentialStore,
    device_id: &str,
) -> PyResult<(Credentials, ProvisionEndpoint, CredentialStore)> {
    let ca =
        ca.ok_or_else(|| PyValueError::new_err("claim_cert needs ca and an mqtts:// broker"))?;
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| PyOSError::new_err(format!("{}: {e}", p.display())))
    };
    let ca_pem = read(ca)?;
    let files = TlsFiles::from_pem(
        ca_pem.clone(),
        Some((read(&claim.cert)?, read(&claim.key)?)),
    )
    .map_err(|e| PyValueError::new_err(format!("claim certificate: {e}")))?;
    let endpoint = ProvisionEndpoint {
        host: config.host.clone(),
        port: claim.provision_port,
        ca_pem,
        timeout: std::time::Duration::from_secs(10),
    };
    let (ep, st, id) = (endpoint.clone(), store.clone(), device_id.to_owned());
    let (creds, _) = crate::block_on(py, rt, async move {
        load_or_claim(&ep, &files, &st, &id, &claim.hardware)
            .await
            .map_err(|e| match e {
                CredentialError::Refused(..) => PyPermissionError::new_err(e.to_string()),
                CredentialError::Connect(_) | CredentialError::NoAnswer(_) => {
                    PyConnectionError::new_err(e.to_string())
                }
                e => PyOSError::new_err(e.to_string()),
            })
    })?;
    Ok((creds, endpoint, store))
}

#[pymethods]
impl Device {
    #[new]
    #[pyo3(signature = (broker, mac, state_dir, dispatch=None, sensors=None, battery=None, blink=None, tenant=None, ca=None, cert=None, key=None, aws=false, shadow_name=None, policies=None, claim_cert=None, claim_key=None, provision_port=None, hardware=None, update_key=None, firmware_version=None, on_update=None, self_test=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        broker: &str,
        mac: &str,
        state_dir: PathBuf,
        dispatch: Option<Py<PyAny>>,
        sensors: Option<Py<PyAny>>,
        battery: Option<Py<PyAny>>,
        blink: Option<Py<PyAny>>,
        tenant: Option<String>,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        aws: bool,
        shadow_name: Option<String>,
        policies: Option<std::collections::HashMap<String, String>>,
        claim_cert: Option<PathBuf>,
        claim_key: Option<PathBuf>,
        provision_port: Option<u16>,
        hardware: Option<String>,
        update_key: Option<Vec<u8>>,
        firmware_version: Option<String>,
        on_update: Option<Py<PyAny>>,
        self_test: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let update_key: Option<[u8; 32]> = update_key
            .map(|k| {
                k.try_into().map_err(|_| {
                    PyValueError::new_err("update_key: the fleet's 32-byte public key")
                })
            })
            .transpose()?;
        if update_key.is_none() && (on_update.is_some() || self_test.is_some()) {
            return Err(PyValueError::new_err(
                "on_update and self_test go with update_key",
            ));
        }
        // The device keeps its version for the life of the process.
        let firmware: &'static str = match firmware_version {
            Some(v) if !v.is_empty() && v.len() <= lanyard_core::update::messages::MAX_VERSION => {
                Box::leak(v.into_boxed_str())
            }
            Some(_) => {
                return Err(PyValueError::new_err("firmware_version: 1 to 24 bytes"));
            }
            None => env!("CARGO_PKG_VERSION"),
        };
        let claim = match (claim_cert, claim_key, provision_port) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(port)) => Some(Claim {
                cert,
                key,
                provision_port: port,
                hardware: hardware.clone().unwrap_or_else(|| mac.to_owned()),
            }),
            _ => {
                return Err(PyValueError::new_err(
                    "claim_cert, claim_key and provision_port go together",
                ));
            }
        };
        if claim.is_some() && (cert.is_some() || key.is_some() || tenant.is_some() || aws) {
            return Err(PyValueError::new_err(
                "a device provisioned by claim gets its own certificate (no cert or key), \
                 in the shared namespace (no tenant), on a Lanyard twin host (not aws)",
            ));
        }
        let ca_path = ca.clone();
        // Everything given is checked before anything is made on disk.
        let mut config = broker_config(broker, String::new(), ca, cert, key)?;
        let fleet_policies = fleet_policies(policies.unwrap_or_default())?;
        if !aws && shadow_name.is_some() {
            return Err(PyValueError::new_err(
                "shadow_name names an AWS IoT shadow: give aws=True too",
            ));
        }
        if aws && tenant.is_some() {
            return Err(PyValueError::new_err(
                "a device keeping its shadow in AWS IoT has no tenant",
            ));
        }
        let mac = parse_mac(mac).map_err(PyValueError::new_err)?;
        let clock = Clock::real();
        let device_id = lanyard_core::agent::device_id_from_mac(mac).to_string();
        // One board: its sensor reads feed health, telemetry and
        // `read_sensor` alike.
        let probe = Shared::new(BoardProbe::new(
            PyBattery(battery),
            BatteryCurve::default(),
            move || read_sensors(&sensors),
            clock.now_ms(),
        ));
        let sensor = probe.clone();
        let board = BoardCommands {
            blink: move |count, period_ms| self::blink(&blink, count, period_ms),
            read: move |now_ms| sensor.lock().read_sensors(now_ms),
        };
        let rt = runtime(2)?;
        // One key for the agent's state and the credentials: decommissioning
        // destroys it.
        let data_key = DataKey::at(default_path(&state_dir));
        let mut renewal = None;
        if let Some(claim) = claim {
            let store = CredentialStore::open(&state_dir, data_key.clone())
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            let (creds, endpoint, store) = claimed_credentials(
                py,
                &rt,
                &config,
                ca_path.as_deref(),
                claim,
                store,
                &device_id,
            )?;
            let tls = creds
                .tls(&endpoint.ca_pem)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            config.tls = Some(tls.to_rumqttc());
            renewal = Some((endpoint, store));
        }
        let update_store = lanyard_std::store::FileStore::encrypted(&state_dir, data_key.clone())
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        let mut device = DeviceBuilder::new(mac, firmware, config, &state_dir)
            .data_key(data_key)
            .clock(clock)
            .probe(probe.clone())
            .telemetry(probe)
            .commands(PyCommands { dispatch, board });
        if let Some(t) = &tenant {
            device = device.tenant(t);
        }
        if aws {
            device = device.aws_shadow(shadow_name.as_deref(), fleet_policies);
        }
        // The MQTT client starts its tasks on the runtime it is made in.
        // The builder keeps an outbound journal in the state directory:
        // acknowledgements and lifecycle events survive a crash of this
        // process until the broker has them.
        let (mut driver, handle) = {
            let _in_runtime = rt.enter();
            device.build().map_err(|e| match e {
                BuildError::Tenant(why) => PyValueError::new_err(why.to_string()),
                e => PyOSError::new_err(e.to_string()),
            })?
        };
        if let Some(key) = update_key {
            let slot_dir = lanyard_std::update::default_slot_dir(&state_dir);
            let slot = lanyard_std::update::FileSlot::new(&slot_dir, 64 << 20)
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            let watched = slot.clone();
            let updates =
                lanyard_std::update::DeviceUpdates::new(key, slot, update_store, firmware)
                    .on_self_test(move || match &self_test {
                        Some(test) => Python::attach(|py| {
                            test.call0(py)
                                .and_then(|v| v.is_truthy(py))
                                .inspect_err(|e| e.print(py))
                                .unwrap_or(false)
                        }),
                        None => true,
                    })
                    .on_restart(move || {
                        let request = match watched.boot_request() {
                            lanyard_std::update::BootRequest::Trial => "trial",
                            lanyard_std::update::BootRequest::Reverted => "reverted",
                            lanyard_std::update::BootRequest::Confirmed => "confirmed",
                            lanyard_std::update::BootRequest::None => "none",
                        };
                        if let Some(cb) = &on_update {
                            // Read now: the slot file an update goes to
                            // alternates from one update to the next.
                            let path = watched.image().display().to_string();
                            Python::attach(|py| {
                                if let Err(e) = cb.call1(py, (path, request)) {
                                    e.print(py);
                                }
                            });
                        }
                    });
            driver = driver.with_updates(updates);
        }
        let credentials = renewal.map(|(endpoint, store)| {
            let renewal = Renewal {
                endpoint,
                store: store.clone(),
                switch: handle.credential_switch(),
                retry: std::time::Duration::from_secs(60),
            };
            let (events, mut renewed) = mpsc::unbounded_channel();
            rt.spawn(renewal.run(events, std::future::pending()));
            rt.spawn(async move {
                while let Some(e) = renewed.recv().await {
                    if let RenewalEvent::Failed(why) = e {
                        eprintln!(
                            "lanyard: certificate renewal failed (tried again in a minute): {why}"
                        );
                    }
                }
            });
            store
        });
        Ok(Device {
            device_id,
            rt,
            driver: Mutex::new(Some(driver)),
            handle,
            credentials,
        })
    }

    /// The device id the agent derived from the MAC address.
    #[getter]
    fn device_id(&self) -> &str {
        &self.device_id
    }

    /// For a device provisioned by claim: the serial number of the
    /// certificate it uses now (it changes as the device renews it), and
    /// when it expires (Unix seconds). `None` otherwise.
    #[getter]
    fn certificate(&self) -> PyResult<Option<(String, u64)>> {
        let Some(store) = &self.credentials else {
            return Ok(None);
        };
        let current = store
            .current()
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(current.map(|c| (c.serial, c.not_after)))
    }

    /// Reports `value` (bool, int, float or str) at the dotted `path` of
    /// the device's shadow. May be called from any thread, before or
    /// while `run` runs; sent once it runs.
    fn report(&self, path: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        lanyard_core::shadow::PathBuf::from_dotted(path)
            .map_err(|e| PyValueError::new_err(format!("{path:?}: {e}")))?;
        // bool first: Python's bool is an int. An int past i64 is refused,
        // not turned into a float.
        let value = if let Ok(b) = value.cast::<PyBool>() {
            LocalValue::Bool(b.is_true())
        } else if value.is_instance_of::<PyInt>() {
            LocalValue::Int(value.extract::<i64>().map_err(|_| {
                PyValueError::new_err(format!("{path:?}: {value} does not fit in 64 bits"))
            })?)
        } else if let Ok(x) = value.extract::<f64>() {
            LocalValue::Float(x)
        } else if let Ok(t) = value.extract::<String>() {
            LocalValue::Text(t)
        } else {
            return Err(PyValueError::new_err(format!(
                "{path:?}: a bool, int, float or str is reported, not {}",
                value.get_type().name()?
            )));
        };
        self.handle
            .report(path, value)
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Connects, boots the agent (resuming what `state_dir` holds) and
    /// runs it until it is decommissioned, `seconds` pass, or Ctrl-C.
    /// `on_event` is called in this thread with `(type, JSON text)` for
    /// each event. A device runs once; make a new one (same `state_dir`)
    /// to run again.
    /// `stop` (a `StopSignal`) stops it from another thread, as Ctrl-C
    /// does.
    #[pyo3(signature = (seconds=None, on_event=None, stop=None))]
    fn run(
        &self,
        py: Python<'_>,
        seconds: Option<f64>,
        on_event: Option<Py<PyAny>>,
        stop: Option<PyRef<'_, crate::StopSignal>>,
    ) -> PyResult<()> {
        let limit = seconds.map(crate::seconds).transpose()?;
        let mut driver = self
            .driver
            .lock()
            .map_err(|_| PyRuntimeError::new_err("the device failed"))?
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("the device has run; make a new one"))?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        // The driver reports to `tx`; decommissioning is seen there too.
        let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
        driver = driver.with_events(tx);
        let work = async move {
            driver
                .start()
                .await
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            let stop = async {
                let decommissioned = done_rx.wait_for(|d| *d);
                match limit {
                    Some(l) => {
                        let _ = tokio::time::timeout(l, decommissioned).await;
                    }
                    None => {
                        let _ = decommissioned.await;
                    }
                }
            };
            let os_error =
                |e: lanyard_std::transport::TransportError| PyOSError::new_err(e.to_string());
            driver.run_until(stop).await.map_err(os_error)?;
            // The last messages (a decommissioned device's acknowledgement
            // and final event) must reach the broker before the client
            // goes; what does not in time stays journalled in `state_dir`.
            driver
                .finish(std::time::Duration::from_secs(5))
                .await
                .map_err(os_error)
        };
        let mut deliver = |py: Python<'_>, event: DriverEvent| -> PyResult<()> {
            if let DriverEvent::Agent {
                event: AgentEvent::StateChanged { to, .. },
                ..
            } = &event
                && *to == lanyard_core::agent::lifecycle::LifecycleState::Decommissioned
            {
                let _ = done_tx.send(true);
            }
            if let Some(callback) = &on_event {
                let (kind, body) = event_json(&event);
                callback.call1(py, (kind, body.to_string()))?;
            }
            Ok(())
        };
        block_on_with(
            py,
            &self.rt,
            work,
            Some((&mut rx, &mut deliver)),
            stop.as_deref(),
        )
    }
}

/// An event as `(type, JSON)` for Python.
fn event_json(event: &DriverEvent) -> (&'static str, Json) {
    let message = |kind: lanyard_core::agent::messages::MessageKind, payload: &[u8]| {
        let decoded = lanyard_std::describe::describe(payload, Some(kind))
            .map(|(_, j)| j)
            .unwrap_or(Json::Null);
        json!({"kind": kind.topic_suffix(), "message": decoded})
    };
    match event {
        DriverEvent::Sent { kind, payload, .. } => ("sent", message(*kind, payload)),
        DriverEvent::Received { kind, payload, .. } => ("received", message(*kind, payload)),
        DriverEvent::Refused { why, .. } => ("refused", json!({ "why": why.to_string() })),
        DriverEvent::Reconnected { .. } => ("reconnected", json!({})),
        DriverEvent::Agent { event, .. } => match event {
            AgentEvent::StateChanged { from, to, .. } => {
                ("state", json!({"from": from.name(), "to": to.name()}))
            }
            AgentEvent::HealthChanged(h) => ("health", json!({ "status": h.name() })),
            AgentEvent::ConfigApplied(v) => ("config", json!({ "version": v })),
            AgentEvent::DesiredHandled {
                reached,
                rejected,
                pending,
            } => (
                "desired_applied",
                json!({ "reached": reached, "rejected": rejected, "pending": pending }),
            ),
            AgentEvent::CommandFinished(status) => ("command", json!({ "status": status.name() })),
            AgentEvent::StorageFailed => ("storage_failed", json!({})),
        },
    }
}

/// The fleet's conflict policies from `{dotted path: policy name}`; the
/// key `"*"` sets the policy of every other property (cloud wins if not
/// given). Read by the one parser the CLI uses too.
fn fleet_policies(
    given: std::collections::HashMap<String, String>,
) -> PyResult<lanyard_core::shadow::FleetPolicies> {
    let json = serde_json::Value::Object(
        given
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
    );
    lanyard_std::twin::fleet_policies_from_json(&json).map_err(PyValueError::new_err)
}
