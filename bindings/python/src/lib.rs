//! Python bindings of Lanyard for gateways (the `lanyard._lanyard`
//! extension; the `lanyard` package wraps it). They add no rules: message
//! decoding is `lanyard_std::describe`, the framed serial link is
//! `lanyard_nostd::frame` and `envelope`, the bridge is
//! `lanyard_std::bridge`, the app client `lanyard_std::app`. Shadow state
//! crosses as JSON text in the AWS mapping (`lanyard_std::aws_json`), which
//! the Python layer turns into dicts. Errors from bad input become
//! `ValueError`, a failed link or broker `OSError`, no answer in time
//! `TimeoutError`, a refusal by the twin host `lanyard.Rejected`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use errors::{PyOSError, PyRuntimeError, PyTimeoutError, PyValueError};
use lanyard_core::agent::messages::MessageKind;
use lanyard_nostd::envelope::{decode_envelope, encode_with_topic};
use lanyard_nostd::frame::{encode_frame as frame_bytes, max_frame_len};
use lanyard_std::app::{AppClient, AppError, AppEvent};
use lanyard_std::aws_json::{tree_from_json, tree_to_json};
use lanyard_std::bridge::{Bridge as StdBridge, BridgeStats, MAX_FRAME, connect_tcp};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::twin::{TWIN_LEAVES, TWIN_POOL};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use serde_json::{Value as Json, json};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

mod device;
mod errors;
mod shadow;

create_exception!(
    lanyard,
    LanyardError,
    PyException,
    "The base of the errors Lanyard raises beyond Python's own (ValueError, TimeoutError, OSError)."
);

create_exception!(
    lanyard,
    Rejected,
    LanyardError,
    "The twin host refused the request (an unknown device, a malformed update)."
);

/// Decodes an SDK message; returns `(type name, JSON text)`. `kind` is a
/// topic suffix (`"ack"`, `"shadow/delta"`); `None` tries every type.
#[pyfunction]
#[pyo3(signature = (data, kind=None))]
fn describe(data: &[u8], kind: Option<&str>) -> PyResult<(String, String)> {
    let kind = match kind {
        Some(k) => Some(
            MessageKind::from_suffix(k)
                .ok_or_else(|| PyValueError::new_err(format!("unknown message type {k:?}")))?,
        ),
        None => None,
    };
    let (name, json) =
        lanyard_std::describe::describe(data, kind).map_err(PyValueError::new_err)?;
    Ok((name.to_owned(), json.to_string()))
}

/// One frame of the serial link carrying `message` on `topic`.
#[pyfunction]
fn encode_frame<'py>(
    py: Python<'py>,
    topic: &str,
    message: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    if MessageKind::parse_topic(topic).is_none() {
        return Err(PyValueError::new_err(format!(
            "{topic:?} is not a lanyard topic (lanyard/v1/{{device-id}}/{{suffix}})"
        )));
    }
    let mut envelope = vec![0u8; topic.len() + message.len() + 16];
    let n = encode_with_topic(topic, message, &mut envelope)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let mut frame = vec![0u8; max_frame_len(n)];
    let m = frame_bytes(&envelope[..n], &mut frame)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(PyBytes::new(py, &frame[..m]))
}

/// Reassembles frames from bytes read off a serial port. Damaged,
/// malformed and oversized frames, and frames that are not a lanyard
/// envelope, are dropped and counted in `stats()`.
#[pyclass]
struct FrameDecoder {
    inner: Box<lanyard_nostd::frame::FrameDecoder<MAX_FRAME>>,
    bad_envelopes: u64,
}

#[pymethods]
impl FrameDecoder {
    #[new]
    fn new() -> Self {
        FrameDecoder {
            inner: Box::new(lanyard_nostd::frame::FrameDecoder::new()),
            bad_envelopes: 0,
        }
    }

    /// Feeds bytes; returns the messages they complete, as
    /// `(topic, type, message bytes)`.
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &[u8],
    ) -> Vec<(String, &'static str, Bound<'py, PyBytes>)> {
        let mut out = Vec::new();
        let mut bad = 0;
        self.inner
            .feed(data, |payload| match decode_envelope(payload) {
                Ok(e) => out.push((
                    e.topic.to_owned(),
                    e.kind.topic_suffix(),
                    PyBytes::new(py, e.message),
                )),
                Err(_) => bad += 1,
            });
        self.bad_envelopes += bad;
        out
    }

    /// Counters: frames passed on, and dropped by cause.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("frames", s.frames)?;
        d.set_item("crc_errors", s.crc_errors)?;
        d.set_item("malformed", s.malformed)?;
        d.set_item("oversized", s.oversized)?;
        d.set_item("bad_envelopes", self.bad_envelopes)?;
        Ok(d)
    }
}

fn stats_dict<'py>(py: Python<'py>, s: BridgeStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("to_cloud", s.to_cloud)?;
    d.set_item("to_device", s.to_device)?;
    d.set_item("bad_envelopes", s.bad_envelopes)?;
    d.set_item("misdirected", s.misdirected)?;
    d.set_item("bytes_in", s.bytes_in)?;
    d.set_item("bytes_out", s.bytes_out)?;
    d.set_item("fog_readings", s.fog.readings)?;
    d.set_item("fog_summaries", s.fog.summaries)?;
    Ok(d)
}

/// The gateway bridge of `lanyard bridge`: a device's framed serial link
/// on one side, an MQTT broker on the other.
#[pyclass]
struct Bridge {
    /// The client id is set when it runs.
    config: MqttConfig,
    device_id: Option<String>,
    tenant: Option<String>,
    fog: Option<lanyard_std::fog::FogConfig>,
}

#[pymethods]
impl Bridge {
    /// `broker` is `mqtt://host:port`, or `mqtts://host:port` with `ca`
    /// (and `cert` and `key` for mutual TLS; PEM files). With `device_id`
    /// the bridge connects as that device (for a broker ACL); with
    /// `tenant` the device's topics are put in the tenant's namespace.
    /// With `fog_window_s` the device's telemetry goes up as one summary a
    /// window (count, min, max, mean, last of each reading; `dead_band`
    /// leaves out readings that moved less), everything else at once.
    #[new]
    #[pyo3(signature = (broker, device_id=None, tenant=None, ca=None, cert=None, key=None, fog_window_s=None, dead_band=0.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        broker: &str,
        device_id: Option<String>,
        tenant: Option<String>,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        fog_window_s: Option<f64>,
        dead_band: f64,
    ) -> PyResult<Self> {
        let fog = match fog_window_s {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 && dead_band.is_finite() && dead_band >= 0.0 => {
                Some(lanyard_std::fog::FogConfig {
                    window_ms: (s * 1000.0) as u64,
                    dead_band,
                })
            }
            Some(_) => {
                return Err(PyValueError::new_err(
                    "fog_window_s: more than 0 seconds, and dead_band >= 0",
                ));
            }
        };
        let config = broker_config(broker, String::new(), ca, cert, key)?;
        if let Some(t) = &tenant
            && !lanyard_core::agent::messages::valid_tenant(t)
        {
            return Err(PyValueError::new_err(format!("tenant {t:?} is not valid")));
        }
        Ok(Bridge {
            config,
            device_id,
            tenant,
            fog,
        })
    }

    /// Connects to the device's TCP serial socket (`host:port`) and
    /// bridges until the device closes it, `seconds` pass, or Ctrl-C.
    /// Returns the counters. The GIL is released while it runs.
    #[pyo3(signature = (address, seconds=None))]
    fn run_tcp<'py>(
        &self,
        py: Python<'py>,
        address: &str,
        seconds: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let rt = runtime(2)?;
        let client_id = self
            .device_id
            .clone()
            .unwrap_or_else(|| unique_client_id("lanyard-py-bridge"));
        let mut config = self.config.clone();
        config.client_id = client_id;
        // The device's identity, as the ACL knows it (`{tenant}/{id}` or `{id}`).
        config.username = self.device_id.as_ref().map(|d| match &self.tenant {
            Some(t) => format!("{t}/{d}"),
            None => d.clone(),
        });
        let (device_id, tenant) = (self.device_id.clone(), self.tenant.clone());
        let address = address.to_owned();
        let fog = self.fog;
        let stats = block_on(py, &rt, async move {
            let mut bridge = StdBridge::new(MqttTransport::connect(config));
            if let Some(f) = fog {
                bridge = bridge.with_fog(f);
            }
            if let Some(t) = &tenant {
                bridge = bridge
                    .with_tenant(t)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?;
            }
            if let Some(id) = &device_id {
                bridge
                    .adopt_device(id)
                    .await
                    .map_err(|e| PyOSError::new_err(e.to_string()))?;
            }
            let stream = connect_tcp(&address, Duration::from_secs(30))
                .await
                .map_err(|e| PyOSError::new_err(format!("{address}: {e}")))?;
            let limit = async {
                match seconds {
                    Some(s) => tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))).await,
                    None => std::future::pending().await,
                }
            };
            match bridge.run(stream, limit).await {
                Ok(stats) => Ok(stats),
                // The device closing its side ends a bridge normally.
                Err(lanyard_std::bridge::BridgeError::Serial(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    Ok(bridge.stats())
                }
                Err(e) => Err(PyOSError::new_err(e.to_string())),
            }
        })?;
        stats_dict(py, stats)
    }
}

type Tree = lanyard_core::shadow::StateTree<TWIN_LEAVES, TWIN_POOL>;

/// A command's final acknowledgement: status, reason, the result as JSON
/// when it is a map of properties (as the shadow holds them), and as CBOR.
type FinalAck<'py> = (
    &'static str,
    Option<String>,
    Option<String>,
    Option<Bound<'py, PyBytes>>,
    Option<String>,
);

/// An app connected to a twin host: sets a device's desired state, reads
/// its shadow, sends it commands and waits for their final
/// acknowledgement, and watches deltas, reports and acknowledgements.
/// Every call blocks (without the GIL) and can be interrupted with Ctrl-C;
/// calls from several threads are served one at a time.
#[pyclass]
struct App {
    rt: Runtime,
    /// `None` once closed.
    client: Arc<tokio::sync::Mutex<Option<AppClient<MqttTransport>>>>,
}

#[pymethods]
impl App {
    /// Connects to `broker` (`mqtt://host:port`, or `mqtts://host:port`
    /// with `ca`, and `cert` and `key` for mutual TLS) as `client_id`
    /// within `timeout` seconds and subscribes to what an app watches.
    /// With `tenants` the host serves tenant namespaces and devices are
    /// named `"{tenant}/{device-id}"`. With `operator`, its desired state,
    /// resolutions and re-provisionings name it as their writer, for a
    /// host that takes them only from its operators.
    #[new]
    #[pyo3(signature = (broker, client_id=None, tenants=false, timeout=10.0, ca=None, cert=None, key=None, operator=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        broker: &str,
        client_id: Option<String>,
        tenants: bool,
        timeout: f64,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        operator: Option<String>,
    ) -> PyResult<Self> {
        let timeout = seconds(timeout)?;
        let client_id = client_id.unwrap_or_else(|| unique_client_id("lanyard-py-app"));
        let config = broker_config(broker, client_id, ca, cert, key)?;
        let rt = runtime(1)?;
        let client = block_on(py, &rt, async move {
            let transport = MqttTransport::connect_and_wait(config, timeout)
                .await
                .map_err(|e| app_error(AppError::Transport(e)))?;
            let client = if tenants {
                AppClient::for_tenants(transport).await
            } else {
                AppClient::new(transport).await
            };
            client.map_err(app_error)
        })?;
        let client = match operator {
            Some(who) => client.as_operator(&who).map_err(PyValueError::new_err)?,
            None => client,
        };
        Ok(App {
            rt,
            client: Arc::new(tokio::sync::Mutex::new(Some(client))),
        })
    }

    /// Asks for `state_json` (a JSON object of properties, nested objects
    /// for nested properties, `null` to delete) in `device`'s desired
    /// state and returns the document's version once the host applied it.
    /// Nothing is sent if it is not a state the shadow can hold; the
    /// host's refusal (more than the device holds) raises `Rejected`.
    fn set_desired(&self, py: Python<'_>, device: String, state_json: &str) -> PyResult<u64> {
        let tree = state_of(state_json, true)?;
        let client = self.client.clone();
        block_on(py, &self.rt, async move {
            let mut client = client.lock().await;
            let client = client.as_mut().ok_or_else(closed)?;
            client
                .set_desired(&device, &tree, now_ms())
                .await
                .map_err(app_error)
        })
    }

    /// The device's shadow as JSON text: `version`, `desired`, `reported`
    /// (objects as in `set_desired`; bytes as base64 text, the AWS JSON
    /// mapping), `in_sync` and `rejected` (each desired property the
    /// device refuses, dotted, to the reason's name).
    fn get_shadow(&self, py: Python<'_>, device: String, timeout: f64) -> PyResult<String> {
        let timeout = seconds(timeout)?;
        let client = self.client.clone();
        let shadow = block_on(py, &self.rt, async move {
            let mut client = client.lock().await;
            let client = client.as_mut().ok_or_else(closed)?;
            client.get_shadow(&device, timeout).await.map_err(app_error)
        })?;
        let rejected: serde_json::Map<String, serde_json::Value> =
            lanyard_std::app::Rejection::all_of(shadow.rejected())
                .into_iter()
                .map(|r| (r.path, json!(r.reason.name())))
                .collect();
        Ok(json!({
            "version": shadow.version(),
            "desired": tree_to_json(shadow.desired()),
            "reported": tree_to_json(shadow.reported()),
            "in_sync": shadow.in_sync(),
            "rejected": rejected,
        })
        .to_string())
    }

    /// The fleet's devices (of `tenant` on a host that serves tenants) as
    /// JSON text: a list of objects with `device`, `online`, `state`,
    /// `health`, `firmware`, `last_seen_ms`, `version`, `in_sync`,
    /// `parked`, `refused` and `decommissioned`.
    #[pyo3(signature = (tenant=None, timeout=10.0))]
    fn list_devices(
        &self,
        py: Python<'_>,
        tenant: Option<String>,
        timeout: f64,
    ) -> PyResult<String> {
        let timeout = seconds(timeout)?;
        let client = self.client.clone();
        let devices = block_on(py, &self.rt, async move {
            let mut client = client.lock().await;
            let client = client.as_mut().ok_or_else(closed)?;
            client
                .list(tenant.as_deref(), timeout)
                .await
                .map_err(app_error)
        })?;
        Ok(serde_json::Value::Array(devices.iter().map(|d| d.to_json()).collect()).to_string())
    }

    /// Settles the conflict parked for an operator at `path` (dotted) on
    /// `device` with `winner`'s value (`"cloud"` or `"device"`); returns the
    /// shadow's version. The host's refusal (nothing parked there) raises
    /// `Rejected`.
    #[pyo3(signature = (device, path, winner, timeout=10.0))]
    fn resolve(
        &self,
        py: Python<'_>,
        device: String,
        path: String,
        winner: &str,
        timeout: f64,
    ) -> PyResult<u64> {
        let timeout = seconds(timeout)?;
        let side = lanyard_std::twin::winner_named(winner).ok_or_else(|| {
            PyValueError::new_err(format!("winner {winner:?}: \"cloud\" or \"device\""))
        })?;
        let client = self.client.clone();
        block_on(py, &self.rt, async move {
            let mut client = client.lock().await;
            let client = client.as_mut().ok_or_else(closed)?;
            client
                .resolve(&device, &path, side, timeout)
                .await
                .map_err(app_error)
        })
    }

    /// Revokes every certificate of `device` through the provisioning
    /// service (with `decommission`, for good); the number revoked. A
    /// device never issued one raises `Rejected`.
    #[pyo3(signature = (device, reason, decommission, timeout=10.0))]
    fn revoke(
        &self,
        py: Python<'_>,
        device: String,
        reason: String,
        decommission: bool,
        timeout: f64,
    ) -> PyResult<u64> {
        let timeout = seconds(timeout)?;
        let client = self.client.clone();
        block_on(py, &self.rt, async move {
            let mut client = client.lock().await;
            let client = client.as_mut().ok_or_else(closed)?;
            client
                .revoke(&device, &reason, decommission, timeout)
                .await
                .map_err(app_error)
        })
    }

    /// Pushes configuration `version` changing `fields` (`{name: value}`,
    /// e.g. `{"telemetry_ms": 60000}`; others kept) to `devices` and waits
    /// up to `timeout` for their acknowledgements. Returns JSON text:
    /// `applied` (devices), `ignored` (`[device, version it runs]`),
    /// `rejected` (`[device, why]`), `unanswered` (devices). A bad field
    /// or value raises `ValueError` before anything is sent.
    #[pyo3(signature = (devices, version, fields, timeout=30.0))]
    fn push_config(
        &self,
        py: Python<'_>,
        devices: Vec<String>,
        version: u64,
        fields: std::collections::HashMap<String, u64>,
        timeout: f64,
    ) -> PyResult<String> {
        let timeout = seconds(timeout)?;
        let patch = lanyard_std::app::config_patch(
            version,
            fields.iter().map(|(name, value)| (name.as_str(), *value)),
        )
        .map_err(PyValueError::new_err)?;
        let client = self.client.clone();
        let report = block_on(py, &self.rt, async move {
            let mut client = client.lock().await;
            let client = client.as_mut().ok_or_else(closed)?;
            client
                .push_config_to(&devices, &patch, timeout)
                .await
                .map_err(app_error)
        })?;
        Ok(json!({
            "applied": report.applied,
            "ignored": report.ignored,
            "rejected": report.rejected,
            "unanswered": report.unanswered,
        })
        .to_string())
    }

    /// Sends `device` the command `name` with `args_json` (a JSON object,
    /// as desired state without nulls) and waits up to `timeout` seconds
    /// for its final acknowledgement; the command expires on the device
    /// then too. Returns `(status, reason, result JSON, result CBOR)`, the
    /// last three `None` when absent (the JSON also when the result is not
    /// a map of properties).
    fn command<'py>(
        &self,
        py: Python<'py>,
        device: String,
        name: String,
        args_json: &str,
        timeout: f64,
    ) -> PyResult<FinalAck<'py>> {
        let timeout = seconds(timeout)?;
        let args = state_of(args_json, false)?;
        let args = if args.is_empty() {
            Vec::new()
        } else {
            let mut buf = vec![0u8; args.encoded_len()];
            let n = args
                .encode(&mut buf)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            buf.truncate(n);
            buf
        };
        let client = self.client.clone();
        let outcome = block_on(py, &self.rt, async move {
            let mut client = client.lock().await;
            let client = client.as_mut().ok_or_else(closed)?;
            client
                .command(&device, &name, &args, now_ms(), timeout)
                .await
                .map_err(app_error)
        })?;
        let result_json = outcome
            .result
            .as_deref()
            .and_then(|r| Tree::decode(r).ok())
            .map(|t| tree_to_json(&t).to_string());
        Ok((
            outcome.status.name(),
            outcome.reason.map(|r| format!("{r:?}")),
            result_json,
            outcome.result.map(|r| PyBytes::new(py, &r)),
            outcome.detail,
        ))
    }

    /// Waits up to a second for what the app published to reach the
    /// broker and disconnects. Later calls raise `RuntimeError`; closing
    /// again does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let client = self.client.clone();
        block_on(py, &self.rt, async move {
            if let Some(c) = client.lock().await.take() {
                c.close(Duration::from_secs(1)).await.map_err(app_error)?;
            }
            Ok(())
        })
    }

    /// The next delta, report or acknowledgement as `(type, device, JSON
    /// text)`, or `None` if none came within `timeout` seconds. Deltas and
    /// reports carry the state; acknowledgements `command_id` and `status`.
    fn next_event(
        &self,
        py: Python<'_>,
        timeout: f64,
    ) -> PyResult<Option<(&'static str, String, String)>> {
        let timeout = seconds(timeout)?;
        let client = self.client.clone();
        let event = block_on(py, &self.rt, async move {
            let mut client = client.lock().await;
            let client = client.as_mut().ok_or_else(closed)?;
            match tokio::time::timeout(timeout, client.next_event()).await {
                Err(_) => Ok(None),
                Ok(r) => r.map(Some).map_err(app_error),
            }
        })?;
        Ok(event.map(|e| match e {
            AppEvent::Delta { device, state } => {
                ("delta", device, tree_to_json(&*state).to_string())
            }
            AppEvent::Reported {
                device,
                state,
                rejected,
            } => {
                let rejected: serde_json::Map<String, serde_json::Value> = rejected
                    .iter()
                    .map(|r| (r.path.clone(), json!(r.reason.name())))
                    .collect();
                let body = json!({"state": tree_to_json(&*state), "rejected": rejected});
                ("reported", device, body.to_string())
            }
            AppEvent::Telemetry {
                device,
                seq,
                time_ms,
                readings,
            } => (
                "telemetry",
                device,
                json!({"seq": seq, "time_ms": time_ms, "readings": tree_to_json(&*readings)})
                    .to_string(),
            ),
            AppEvent::Fleet { device, event } => ("fleet", device, event.to_json().to_string()),
            AppEvent::Ack {
                device,
                command_id,
                status,
            } => (
                "ack",
                device,
                json!({"command_id": command_id, "status": status.name()}).to_string(),
            ),
        }))
    }
}

/// What a call on a closed [`App`] raises.
fn closed() -> PyErr {
    PyRuntimeError::new_err("the app is closed")
}

/// The MQTT configuration of a broker URL (`mqtt://` or `mqtts://`) and
/// its TLS files, read and checked now: a bad one is a `ValueError` naming
/// it, before any connection.
fn broker_config(
    broker: &str,
    client_id: String,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> PyResult<MqttConfig> {
    let client = match (&cert, &key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => return Err(PyValueError::new_err("cert and key go together")),
    };
    MqttConfig::from_url(broker, client_id, ca.as_deref(), client).map_err(PyValueError::new_err)
}

/// A timeout from Python's float seconds.
fn seconds(s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("timeout {s} s is not a duration")))
}

fn runtime(threads: usize) -> PyResult<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| PyOSError::new_err(e.to_string()))
}

/// Runs `work` on `rt` without holding the GIL, waking every 200 ms so
/// that Ctrl-C still reaches Python (the work is abandoned then).
fn block_on<T: Send + 'static>(
    py: Python<'_>,
    rt: &Runtime,
    work: impl Future<Output = PyResult<T>> + Send + 'static,
) -> PyResult<T> {
    block_on_with::<T, ()>(py, rt, work, None)
}

/// Where [`block_on_with`] delivers what `work` reports while it runs, and
/// the Python-side handler (called with the GIL, in the caller's thread).
type Reports<'a, E> = (
    &'a mut mpsc::UnboundedReceiver<E>,
    &'a mut dyn FnMut(Python<'_>, E) -> PyResult<()>,
);

/// [`block_on`], handing each report of `work` to a handler as it comes;
/// an error from the handler (or Ctrl-C) abandons the work.
fn block_on_with<T: Send + 'static, E: Send>(
    py: Python<'_>,
    rt: &Runtime,
    work: impl Future<Output = PyResult<T>> + Send + 'static,
    reports: Option<Reports<'_, E>>,
) -> PyResult<T> {
    enum Woke<T, E> {
        Done(Result<PyResult<T>, tokio::task::JoinError>),
        Report(E),
        Tick,
    }
    let (mut rx, mut handle) = match reports {
        Some((rx, handle)) => (Some(rx), Some(handle)),
        None => (None, None),
    };
    let mut task = rt.spawn(work);
    loop {
        let woke = py.detach(|| {
            rt.block_on(async {
                let report = async {
                    match rx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = &mut task => Woke::Done(r),
                    Some(e) = report => Woke::Report(e),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => Woke::Tick,
                }
            })
        });
        let handled = match (woke, handle.as_mut()) {
            (Woke::Done(joined), _) => {
                // What the work reported before it ended still counts.
                if let (Some(rx), Some(handle)) = (rx.as_mut(), handle.as_mut()) {
                    while let Ok(e) = rx.try_recv() {
                        handle(py, e)?;
                    }
                }
                return joined.map_err(|e| PyOSError::new_err(e.to_string()))?;
            }
            (Woke::Report(e), Some(handle)) => handle(py, e),
            _ => Ok(()),
        };
        if let Err(e) = handled.and_then(|()| py.check_signals()) {
            task.abort();
            return Err(e);
        }
    }
}

/// A client id no other client of this process has (the broker closes a
/// connection when another client takes its id, so two `App`s in one
/// process must not share one).
fn unique_client_id(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

fn app_error(e: AppError) -> PyErr {
    match e {
        AppError::Timeout => PyTimeoutError::new_err("no answer in time"),
        AppError::Rejected(why) => Rejected::new_err(why),
        AppError::Codec(why) => PyValueError::new_err(format!("bad message: {why}")),
        AppError::Transport(t) => PyOSError::new_err(t.to_string()),
        e @ AppError::BadDevice(_) => PyValueError::new_err(e.to_string()),
    }
}

/// The tree of a JSON object of properties; refuses what a shadow cannot
/// hold (`allow_null`: nulls delete, in desired state only).
fn state_of(text: &str, allow_null: bool) -> PyResult<Box<Tree>> {
    let bad = |e: &dyn std::fmt::Display| PyValueError::new_err(format!("state: {e}"));
    let Json::Object(obj) = serde_json::from_str::<Json>(text).map_err(|e| bad(&e))? else {
        return Err(bad(&"a JSON object of properties expected"));
    };
    tree_from_json(&obj, allow_null)
        .map(Box::new)
        .map_err(|e| bad(&e))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The native part of the `lanyard` package.
#[pymodule]
fn _lanyard(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(describe, m)?)?;
    m.add_function(wrap_pyfunction!(encode_frame, m)?)?;
    m.add_class::<FrameDecoder>()?;
    m.add_class::<Bridge>()?;
    m.add_class::<App>()?;
    m.add_class::<device::Device>()?;
    m.add_class::<shadow::Shadow>()?;
    m.add("LanyardError", m.py().get_type::<LanyardError>())?;
    m.add("Rejected", m.py().get_type::<Rejected>())?;
    Ok(())
}
