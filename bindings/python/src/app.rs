//! The app client of a twin host, twice: `App`, whose calls block (without
//! the GIL), and `AsyncApp`, whose calls are asyncio awaitables (through
//! `pyo3-async-runtimes`, which runs them on its tokio runtime and drops
//! them when their asyncio future is cancelled). Both share one
//! `lanyard_std::app::AppClient`, whose calls take `&self`: nothing here
//! serialises them, so a command from one thread does not wait behind
//! another's `next_event`. Each call is written once, as a future over the
//! client (`Call`), and each result turned into Python once (its `shape`).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lanyard_std::app::{AppClient, AppError, AppEvent, DropCounter, Events, Watch};
use lanyard_std::aws_json::{tree_from_json, tree_to_json};
use lanyard_std::mqtt::MqttTransport;
use lanyard_std::transport::TransportError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde_json::{Value as Json, json};
use tokio::runtime::Runtime;

use crate::errors::{PyOSError, PyRuntimeError, PyTimeoutError, PyValueError};
use crate::{Rejected, Tree, block_on, broker_config, runtime, seconds};
use lanyard_std::mqtt::unique_client_id;

/// A client and its own event queue, as both classes hold them.
struct Shared {
    client: Arc<AppClient>,
    events: Arc<tokio::sync::Mutex<Events>>,
    dropped: DropCounter,
    closed: Arc<AtomicBool>,
}

impl Shared {
    /// Connects and subscribes within `timeout` (on the current runtime:
    /// the client's task runs there).
    async fn connect(settings: Settings) -> PyResult<Shared> {
        let transport = MqttTransport::connect_and_wait(settings.config, settings.timeout)
            .await
            .map_err(|e| app_error(AppError::Transport(e)))?;
        let client = if settings.tenants {
            AppClient::for_tenants(transport).await
        } else {
            AppClient::new(transport).await
        };
        let mut client = client.map_err(app_error)?;
        if let Some(who) = settings.operator {
            client.set_operator(&who).map_err(PyValueError::new_err)?;
        }
        let Some(events) = client.take_events() else {
            return Err(PyRuntimeError::new_err("the client has no event queue"));
        };
        Ok(Shared {
            client: Arc::new(client),
            dropped: events.drop_counter(),
            events: Arc::new(tokio::sync::Mutex::new(events)),
            closed: Arc::default(),
        })
    }

    /// The client, for a call; a closed app's raises `lanyard.Closed`.
    fn client(&self) -> PyResult<Arc<AppClient>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        Ok(self.client.clone())
    }
}

/// What `App(...)` and `AsyncApp.connect(...)` take, checked before any
/// connection.
struct Settings {
    config: lanyard_std::mqtt::MqttConfig,
    timeout: Duration,
    tenants: bool,
    operator: Option<String>,
}

impl Settings {
    #[allow(clippy::too_many_arguments)]
    fn new(
        broker: &str,
        client_id: Option<String>,
        tenants: bool,
        timeout: f64,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        operator: Option<String>,
    ) -> PyResult<Settings> {
        let timeout = seconds(timeout)?;
        let client_id = client_id.unwrap_or_else(|| unique_client_id("lanyard-py-app"));
        let config = broker_config(broker, client_id, ca, cert, key)?;
        Ok(Settings {
            config,
            timeout,
            tenants,
            operator,
        })
    }
}

/// A command's final acknowledgement: status, reason, the result as JSON
/// when it is a map of properties (as the shadow holds them), as CBOR,
/// and the device's own words.
type FinalAck = (
    &'static str,
    Option<String>,
    Option<String>,
    Option<Py<PyBytes>>,
    Option<String>,
);

/// An event as `(type, device, JSON text)`.
type EventTuple = (&'static str, String, String);

/// Each call of the app client as a future that owns what it needs: the
/// blocking class runs it with `block_on`, the asyncio one hands it to
/// asyncio. Input is checked (and refused with `ValueError`) before the
/// future exists, so nothing is sent for bad input.
mod calls {
    use super::*;

    pub(super) fn set_desired(
        client: Arc<AppClient>,
        device: String,
        tree: Box<Tree>,
    ) -> PyResult<impl Future<Output = PyResult<u64>> + Send + 'static> {
        Ok(async move {
            client
                .set_desired(&device, &tree, now_ms())
                .await
                .map_err(app_error)
        })
    }

    pub(super) fn send_desired(
        client: Arc<AppClient>,
        device: String,
        tree: Box<Tree>,
    ) -> PyResult<impl Future<Output = PyResult<()>> + Send + 'static> {
        Ok(async move {
            client
                .send_desired(&device, &tree, now_ms())
                .await
                .map_err(app_error)
        })
    }

    pub(super) fn get_shadow(
        client: Arc<AppClient>,
        device: String,
        timeout: f64,
    ) -> PyResult<impl Future<Output = PyResult<String>> + Send + 'static> {
        let timeout = seconds(timeout)?;
        Ok(async move {
            let shadow = client
                .get_shadow(&device, timeout)
                .await
                .map_err(app_error)?;
            let rejected: serde_json::Map<String, Json> =
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
        })
    }

    pub(super) fn list_devices(
        client: Arc<AppClient>,
        tenant: Option<String>,
        timeout: f64,
    ) -> PyResult<impl Future<Output = PyResult<String>> + Send + 'static> {
        let timeout = seconds(timeout)?;
        Ok(async move {
            let devices = client
                .list(tenant.as_deref(), timeout)
                .await
                .map_err(app_error)?;
            Ok(Json::Array(devices.iter().map(|d| d.to_json()).collect()).to_string())
        })
    }

    pub(super) fn resolve(
        client: Arc<AppClient>,
        device: String,
        path: String,
        winner: &str,
        timeout: f64,
    ) -> PyResult<impl Future<Output = PyResult<u64>> + Send + 'static> {
        let timeout = seconds(timeout)?;
        let side = lanyard_std::twin::winner_named(winner).ok_or_else(|| {
            PyValueError::new_err(format!("winner {winner:?}: \"cloud\" or \"device\""))
        })?;
        Ok(async move {
            client
                .resolve(&device, &path, side, timeout)
                .await
                .map_err(app_error)
        })
    }

    pub(super) fn revoke(
        client: Arc<AppClient>,
        device: String,
        reason: String,
        decommission: bool,
        timeout: f64,
    ) -> PyResult<impl Future<Output = PyResult<u64>> + Send + 'static> {
        let timeout = seconds(timeout)?;
        Ok(async move {
            client
                .revoke(&device, &reason, decommission, timeout)
                .await
                .map_err(app_error)
        })
    }

    pub(super) fn push_config(
        client: Arc<AppClient>,
        devices: Vec<String>,
        version: u64,
        fields: HashMap<String, u64>,
        timeout: f64,
    ) -> PyResult<impl Future<Output = PyResult<String>> + Send + 'static> {
        let timeout = seconds(timeout)?;
        let patch = lanyard_std::app::config_patch(
            version,
            fields.iter().map(|(name, value)| (name.as_str(), *value)),
        )
        .map_err(PyValueError::new_err)?;
        Ok(async move {
            let report = client
                .push_config_to(&devices, &patch, timeout)
                .await
                .map_err(app_error)?;
            Ok(json!({
                "applied": report.applied,
                "ignored": report.ignored,
                "rejected": report.rejected,
                "unanswered": report.unanswered,
            })
            .to_string())
        })
    }

    pub(super) fn command(
        client: Arc<AppClient>,
        device: String,
        name: String,
        args_json: &str,
        timeout: f64,
    ) -> PyResult<impl Future<Output = PyResult<FinalAck>> + Send + 'static> {
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
        Ok(async move {
            let outcome = client
                .command(&device, &name, &args, now_ms(), timeout)
                .await
                .map_err(app_error)?;
            let result_json = outcome
                .result
                .as_deref()
                .and_then(|r| Tree::decode(r).ok())
                .map(|t| tree_to_json(&t).to_string());
            let cbor = outcome
                .result
                .map(|r| Python::attach(|py| PyBytes::new(py, &r).unbind()));
            Ok((
                outcome.status.name(),
                outcome.reason.map(|r| format!("{r:?}")),
                result_json,
                cbor,
                outcome.detail,
            ))
        })
    }

    /// The next event of `events`, or `None` after `timeout` (`None`:
    /// until one comes).
    pub(super) fn next_event(
        events: Arc<tokio::sync::Mutex<Events>>,
        timeout: Option<f64>,
    ) -> PyResult<impl Future<Output = PyResult<Option<EventTuple>>> + Send + 'static> {
        let timeout = timeout.map(seconds).transpose()?;
        Ok(async move {
            let mut events = events.lock().await;
            let next = match timeout {
                Some(t) => match tokio::time::timeout(t, events.next()).await {
                    Err(_) => return Ok(None),
                    Ok(r) => r,
                },
                None => events.next().await,
            };
            next.map(|e| Some(event_tuple(e))).map_err(app_error)
        })
    }

    pub(super) fn close(shared: &Shared) -> impl Future<Output = PyResult<()>> + Send + 'static {
        // Only the first close closes.
        let first = !shared.closed.swap(true, Ordering::AcqRel);
        let client = shared.client.clone();
        async move {
            if first {
                client
                    .close(Duration::from_secs(1))
                    .await
                    .map_err(app_error)?;
            }
            Ok(())
        }
    }
}

/// An app connected to a twin host: sets a device's desired state, reads
/// its shadow, sends it commands and waits for their final
/// acknowledgement, and watches deltas, reports and acknowledgements.
/// Every call blocks (without the GIL) and can be interrupted with Ctrl-C;
/// calls from several threads proceed at once.
#[pyclass]
pub(crate) struct App {
    rt: Arc<Runtime>,
    shared: Shared,
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
        let settings = Settings::new(broker, client_id, tenants, timeout, ca, cert, key, operator)?;
        // Two workers: the client's task, and the calls of several threads.
        let rt = Arc::new(runtime(2)?);
        let shared = block_on(py, &rt, Shared::connect(settings))?;
        Ok(App { rt, shared })
    }

    /// Asks for `state_json` (a JSON object of properties, nested objects
    /// for nested properties, `null` to delete) in `device`'s desired
    /// state and returns the document's version once the host applied it.
    /// Nothing is sent if it is not a state the shadow can hold; the
    /// host's refusal (more than the device holds) raises `Rejected`.
    fn set_desired(
        &self,
        py: Python<'_>,
        device: String,
        state: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let tree = desired_of(state)?;
        let call = calls::set_desired(self.shared.client()?, device, tree)?;
        block_on(py, &self.rt, call)
    }

    /// Sends `state_json` for the device's desired state without waiting
    /// for the twin host (no answer is asked for); `close` waits until the
    /// broker has every write.
    fn send_desired(
        &self,
        py: Python<'_>,
        device: String,
        state: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let tree = desired_of(state)?;
        let call = calls::send_desired(self.shared.client()?, device, tree)?;
        block_on(py, &self.rt, call)
    }

    /// The device's shadow as JSON text: `version`, `desired`, `reported`
    /// (objects as in `set_desired`; bytes as base64 text, the AWS JSON
    /// mapping), `in_sync` and `rejected` (each desired property the
    /// device refuses, dotted, to the reason's name).
    fn get_shadow(&self, py: Python<'_>, device: String, timeout: f64) -> PyResult<String> {
        let call = calls::get_shadow(self.shared.client()?, device, timeout)?;
        block_on(py, &self.rt, call)
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
        let call = calls::list_devices(self.shared.client()?, tenant, timeout)?;
        block_on(py, &self.rt, call)
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
        let call = calls::resolve(self.shared.client()?, device, path, winner, timeout)?;
        block_on(py, &self.rt, call)
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
        let call = calls::revoke(self.shared.client()?, device, reason, decommission, timeout)?;
        block_on(py, &self.rt, call)
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
        fields: HashMap<String, u64>,
        timeout: f64,
    ) -> PyResult<String> {
        let call = calls::push_config(self.shared.client()?, devices, version, fields, timeout)?;
        block_on(py, &self.rt, call)
    }

    /// Sends `device` the command `name` with `args_json` (a JSON object,
    /// as desired state without nulls) and waits up to `timeout` seconds
    /// for its final acknowledgement; the command expires on the device
    /// then too. Returns `(status, reason, result JSON, result CBOR,
    /// detail)`, the last four `None` when absent (the JSON also when the
    /// result is not a map of properties).
    fn command(
        &self,
        py: Python<'_>,
        device: String,
        name: String,
        args_json: &str,
        timeout: f64,
    ) -> PyResult<FinalAck> {
        let call = calls::command(self.shared.client()?, device, name, args_json, timeout)?;
        block_on(py, &self.rt, call)
    }

    /// Waits up to a second for what the app published to reach the
    /// broker and disconnects. Later calls raise `RuntimeError`; closing
    /// again does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        block_on(py, &self.rt, calls::close(&self.shared))
    }

    /// The next delta, report, telemetry, fleet event or acknowledgement
    /// as `(type, device, JSON text)`, or `None` if none came within
    /// `timeout` seconds. Deltas carry the state; reports `state` and
    /// `rejected`; acknowledgements `command_id` and `status`.
    fn next_event(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<EventTuple>> {
        self.shared.client()?;
        let call = calls::next_event(self.shared.events.clone(), Some(timeout))?;
        block_on(py, &self.rt, call)
    }

    /// Events `next_event` dropped because more than its queue holds
    /// (10,000) were waiting to be read.
    #[getter]
    fn events_dropped(&self) -> u64 {
        self.shared.dropped.get()
    }

    /// A queue of its own for the events of `devices` (all devices when
    /// `None`), holding at most `capacity` unread: when its reader falls
    /// behind, newer events are dropped and counted (`dropped`).
    #[pyo3(signature = (devices=None, capacity=1000))]
    fn events(&self, devices: Option<Vec<String>>, capacity: usize) -> PyResult<EventQueue> {
        let client = self.shared.client()?;
        let events = client
            .events(Watch::of(devices), capacity)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(EventQueue::new(Some(self.rt.clone()), events))
    }
}

/// A subscription's events (`App.events`, `AsyncApp.events`): a bounded
/// queue that counts what it dropped.
#[pyclass]
pub(crate) struct EventQueue {
    /// The blocking app's runtime; `None` for the asyncio app's queue.
    rt: Option<Arc<Runtime>>,
    events: Arc<tokio::sync::Mutex<Events>>,
    dropped: DropCounter,
}

impl EventQueue {
    fn new(rt: Option<Arc<Runtime>>, events: Events) -> EventQueue {
        EventQueue {
            rt,
            dropped: events.drop_counter(),
            events: Arc::new(tokio::sync::Mutex::new(events)),
        }
    }
}

#[pymethods]
impl EventQueue {
    /// The blocking app's queue: the next event as `(type, device, JSON
    /// text)`, or `None` after `timeout` seconds (without one, when an
    /// event comes). The asyncio app's: an awaitable of the next event,
    /// `None` once the app is closed (wrap it in `asyncio.wait_for` for a
    /// timeout).
    #[pyo3(signature = (timeout=None))]
    fn next<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        match &self.rt {
            Some(rt) => {
                let call = calls::next_event(self.events.clone(), timeout)?;
                block_on(py, rt, call)?.into_pyobject(py)
            }
            None => {
                let events = self.events.clone();
                awaitable(py, async move {
                    match events.lock().await.next().await {
                        Ok(e) => Ok(Some(event_tuple(e))),
                        // The app closed: the end of the stream.
                        Err(AppError::Transport(TransportError::Closed)) => Ok(None),
                        Err(e) => Err(app_error(e)),
                    }
                })
            }
        }
    }

    /// Events dropped because the queue was full.
    #[getter]
    fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// The asyncio app (`lanyard.aio.App` wraps it): the calls of `App` as
/// awaitables. Cancelling the task that awaits one drops the call: the
/// answer it waited for then comes as an event.
#[pyclass]
pub(crate) struct AsyncApp {
    shared: Shared,
}

/// A call as an asyncio awaitable.
fn awaitable<'py, T>(
    py: Python<'py>,
    call: impl Future<Output = PyResult<T>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, call)
}

#[pymethods]
impl AsyncApp {
    /// An awaitable of an app connected as `App(...)` is.
    #[staticmethod]
    #[pyo3(signature = (broker, client_id=None, tenants=false, timeout=10.0, ca=None, cert=None, key=None, operator=None))]
    #[allow(clippy::too_many_arguments)]
    fn connect<'py>(
        py: Python<'py>,
        broker: &str,
        client_id: Option<String>,
        tenants: bool,
        timeout: f64,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        operator: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let settings = Settings::new(broker, client_id, tenants, timeout, ca, cert, key, operator)?;
        awaitable(py, async move {
            let shared = Shared::connect(settings).await?;
            Ok(AsyncApp { shared })
        })
    }

    /// `App.set_desired`, awaitable.
    fn set_desired<'py>(
        &self,
        py: Python<'py>,
        device: String,
        state: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let tree = desired_of(state)?;
        let call = calls::set_desired(self.shared.client()?, device, tree)?;
        awaitable(py, call)
    }

    /// `App.send_desired`, awaitable.
    fn send_desired<'py>(
        &self,
        py: Python<'py>,
        device: String,
        state: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let tree = desired_of(state)?;
        let call = calls::send_desired(self.shared.client()?, device, tree)?;
        awaitable(py, call)
    }

    /// `App.get_shadow`, awaitable.
    fn get_shadow<'py>(
        &self,
        py: Python<'py>,
        device: String,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let call = calls::get_shadow(self.shared.client()?, device, timeout)?;
        awaitable(py, call)
    }

    /// `App.list_devices`, awaitable.
    #[pyo3(signature = (tenant=None, timeout=10.0))]
    fn list_devices<'py>(
        &self,
        py: Python<'py>,
        tenant: Option<String>,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let call = calls::list_devices(self.shared.client()?, tenant, timeout)?;
        awaitable(py, call)
    }

    /// `App.resolve`, awaitable.
    #[pyo3(signature = (device, path, winner, timeout=10.0))]
    fn resolve<'py>(
        &self,
        py: Python<'py>,
        device: String,
        path: String,
        winner: &str,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let call = calls::resolve(self.shared.client()?, device, path, winner, timeout)?;
        awaitable(py, call)
    }

    /// `App.revoke`, awaitable.
    #[pyo3(signature = (device, reason, decommission, timeout=10.0))]
    fn revoke<'py>(
        &self,
        py: Python<'py>,
        device: String,
        reason: String,
        decommission: bool,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let call = calls::revoke(self.shared.client()?, device, reason, decommission, timeout)?;
        awaitable(py, call)
    }

    /// `App.push_config`, awaitable.
    #[pyo3(signature = (devices, version, fields, timeout=30.0))]
    fn push_config<'py>(
        &self,
        py: Python<'py>,
        devices: Vec<String>,
        version: u64,
        fields: HashMap<String, u64>,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let call = calls::push_config(self.shared.client()?, devices, version, fields, timeout)?;
        awaitable(py, call)
    }

    /// `App.command`, awaitable.
    fn command<'py>(
        &self,
        py: Python<'py>,
        device: String,
        name: String,
        args_json: &str,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let call = calls::command(self.shared.client()?, device, name, args_json, timeout)?;
        awaitable(py, call)
    }

    /// `App.next_event`, awaitable; without `timeout`, waits until one
    /// comes.
    #[pyo3(signature = (timeout=None))]
    fn next_event<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.shared.client()?;
        let call = calls::next_event(self.shared.events.clone(), timeout)?;
        awaitable(py, call)
    }

    /// `App.events`: the queue's `next()` is awaitable.
    #[pyo3(signature = (devices=None, capacity=1000))]
    fn events(&self, devices: Option<Vec<String>>, capacity: usize) -> PyResult<EventQueue> {
        let client = self.shared.client()?;
        let events = client
            .events(Watch::of(devices), capacity)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(EventQueue::new(None, events))
    }

    /// `App.events_dropped`.
    #[getter]
    fn events_dropped(&self) -> u64 {
        self.shared.dropped.get()
    }

    /// `App.close`, awaitable.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, calls::close(&self.shared))
    }
}

/// An event as `(type, device, JSON text)`.
fn event_tuple(e: AppEvent) -> EventTuple {
    match e {
        AppEvent::Delta { device, state } => ("delta", device, tree_to_json(&*state).to_string()),
        AppEvent::Reported {
            device,
            state,
            rejected,
        } => {
            let rejected: serde_json::Map<String, Json> = rejected
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
    }
}

/// What a call on a closed app raises.
fn closed() -> PyErr {
    PyRuntimeError::new_err("the app is closed")
}

pub(crate) fn app_error(e: AppError) -> PyErr {
    match e {
        AppError::Timeout => PyTimeoutError::new_err("no answer in time"),
        AppError::Rejected(why) => Rejected::new_err(why),
        AppError::Codec(why) => PyValueError::new_err(format!("bad message: {why}")),
        // The client's own close ended the call.
        AppError::Transport(TransportError::Closed) => closed(),
        AppError::Transport(t) => PyOSError::new_err(t.to_string()),
        e @ AppError::BadDevice(_) => PyValueError::new_err(e.to_string()),
    }
}

/// The tree of a JSON object of properties; refuses what a shadow cannot
/// hold (`allow_null`: nulls delete, in desired state only).
/// A dict of desired state (`None` deletes) as a tree, read straight from
/// the Python objects.
fn desired_of(state: &Bound<'_, PyAny>) -> PyResult<Box<Tree>> {
    let obj = crate::py_json::object_from_py(state, "desired state")?;
    tree_from_json(&obj, true)
        .map(Box::new)
        .map_err(|e| PyValueError::new_err(format!("desired state: {e}")))
}

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
