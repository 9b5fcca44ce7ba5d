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
use std::time::Duration;

use errors::{PyOSError, PyRuntimeError, PyValueError};
use lanyard_core::agent::messages::MessageKind;
use lanyard_nostd::envelope::{decode_envelope, encode_with_topic};
use lanyard_nostd::frame::{encode_frame as frame_bytes, max_frame_len};
use lanyard_std::bridge::{Bridge as StdBridge, BridgeStats, MAX_FRAME, connect_tcp};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::twin::{TWIN_LEAVES, TWIN_POOL};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

mod app;

/// A tree as a hosted shadow holds it (what apps and devices exchange).
type Tree = lanyard_core::shadow::StateTree<TWIN_LEAVES, TWIN_POOL>;
mod device;
mod errors;
mod py_json;
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
    #[pyo3(signature = (address, seconds=None, stop=None))]
    fn run_tcp<'py>(
        &self,
        py: Python<'py>,
        address: &str,
        seconds: Option<f64>,
        stop: Option<PyRef<'py, StopSignal>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let rt = runtime(2)?;
        let client_id = self
            .device_id
            .clone()
            .unwrap_or_else(|| lanyard_std::mqtt::unique_client_id("lanyard-py-bridge"));
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
        let work = async move {
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
        };
        let stats = block_on_with::<_, ()>(py, &rt, work, None, stop.as_deref())?;
        stats_dict(py, stats)
    }
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
    block_on_with::<T, ()>(py, rt, work, None, None)
}

/// A flag another thread sets to stop a device's or a bridge's run (what
/// `lanyard.aio` sets when the task awaiting the run is cancelled); the
/// run notices it within 200 ms, as it notices Ctrl-C.
#[pyclass]
#[derive(Default)]
struct StopSignal {
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[pymethods]
impl StopSignal {
    #[new]
    fn new() -> Self {
        StopSignal::default()
    }

    /// Stops the run it was given to.
    fn set(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl StopSignal {
    fn is_set(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Where [`block_on_with`] delivers what `work` reports while it runs, and
/// the Python-side handler (called with the GIL, in the caller's thread).
type Reports<'a, E> = (
    &'a mut mpsc::UnboundedReceiver<E>,
    &'a mut dyn FnMut(Python<'_>, E) -> PyResult<()>,
);

/// [`block_on`], handing each report of `work` to a handler as it comes;
/// an error from the handler, Ctrl-C or `stop` abandons the work.
fn block_on_with<T: Send + 'static, E: Send>(
    py: Python<'_>,
    rt: &Runtime,
    work: impl Future<Output = PyResult<T>> + Send + 'static,
    reports: Option<Reports<'_, E>>,
    stop: Option<&StopSignal>,
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
        let stopped = || match stop {
            Some(s) if s.is_set() => Err(PyRuntimeError::new_err("stopped")),
            _ => Ok(()),
        };
        if let Err(e) = handled
            .and_then(|()| py.check_signals())
            .and_then(|()| stopped())
        {
            task.abort();
            // Returns once the work is gone: a device's files are no longer
            // being written when its next run (or another device on the
            // same state directory) starts. The GIL is released meanwhile,
            // as the work may be waiting for it in a callback.
            py.detach(|| rt.block_on(async { (&mut task).await.ok() }));
            return Err(e);
        }
    }
}

/// The native part of the `lanyard` package.
#[pymodule]
fn _lanyard(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(describe, m)?)?;
    m.add_function(wrap_pyfunction!(encode_frame, m)?)?;
    m.add_class::<FrameDecoder>()?;
    m.add_class::<Bridge>()?;
    m.add_class::<StopSignal>()?;
    m.add_class::<app::App>()?;
    m.add_class::<app::AsyncApp>()?;
    m.add_class::<app::EventQueue>()?;
    m.add_class::<device::Device>()?;
    m.add_class::<shadow::Shadow>()?;
    m.add("LanyardError", m.py().get_type::<LanyardError>())?;
    m.add("Rejected", m.py().get_type::<Rejected>())?;
    Ok(())
}
