//! Python bindings of Lanyard for gateways (the `lanyard._lanyard`
//! extension; the `lanyard` package wraps it). They add no rules: message
//! decoding is `lanyard_std::describe`, the framed serial link is
//! `lanyard_nostd::frame` and `envelope`, the bridge is
//! `lanyard_std::bridge`. Errors from bad input become `ValueError`, a
//! failed link or broker `OSError`.

use std::time::Duration;

use lanyard_core::agent::messages::MessageKind;
use lanyard_nostd::envelope::{decode_envelope, encode_with_topic};
use lanyard_nostd::frame::{encode_frame as frame_bytes, max_frame_len};
use lanyard_std::bridge::{Bridge as StdBridge, BridgeStats, MAX_FRAME, connect_tcp};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

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
    Ok(d)
}

/// The gateway bridge of `lanyard bridge`: a device's framed serial link
/// on one side, an MQTT broker on the other.
#[pyclass]
struct Bridge {
    host: String,
    port: u16,
    device_id: Option<String>,
    tenant: Option<String>,
}

#[pymethods]
impl Bridge {
    /// `broker` is `mqtt://host:port`. With `device_id` the bridge
    /// connects as that device (for a broker ACL); with `tenant` the
    /// device's topics are put in the tenant's namespace.
    #[new]
    #[pyo3(signature = (broker, device_id=None, tenant=None))]
    fn new(broker: &str, device_id: Option<String>, tenant: Option<String>) -> PyResult<Self> {
        let rest = broker.strip_prefix("mqtt://").ok_or_else(|| {
            PyValueError::new_err(format!("{broker:?}: mqtt://host:port expected"))
        })?;
        let (host, port) = rest
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| PyValueError::new_err(format!("{broker:?}: no port")))?;
        if let Some(t) = &tenant
            && !lanyard_core::agent::messages::valid_tenant(t)
        {
            return Err(PyValueError::new_err(format!("tenant {t:?} is not valid")));
        }
        Ok(Bridge {
            host,
            port,
            device_id,
            tenant,
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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        let client_id = self
            .device_id
            .clone()
            .unwrap_or_else(|| format!("lanyard-py-bridge-{}", std::process::id()));
        let mut config = MqttConfig::new(self.host.clone(), self.port, client_id);
        if self.tenant.is_some() {
            config.username = self.tenant.clone();
        }
        let (device_id, tenant) = (self.device_id.clone(), self.tenant.clone());
        let address = address.to_owned();
        let mut task = rt.spawn(async move {
            let mut bridge = StdBridge::new(MqttTransport::connect(config));
            if let Some(t) = &tenant {
                bridge = bridge.with_tenant(t).map_err(PyValueError::new_err)?;
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
        });
        // Ctrl-C must still reach Python: wake every 200 ms to look.
        loop {
            let done = py.detach(|| {
                rt.block_on(async {
                    tokio::select! {
                        r = &mut task => Some(r),
                        _ = tokio::time::sleep(Duration::from_millis(200)) => None,
                    }
                })
            });
            if let Some(joined) = done {
                let stats = joined.map_err(|e| PyOSError::new_err(e.to_string()))??;
                return stats_dict(py, stats);
            }
            if let Err(e) = py.check_signals() {
                task.abort();
                return Err(e);
            }
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
    Ok(())
}
