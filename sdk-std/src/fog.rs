//! Fog aggregation on a gateway: the telemetry of the devices behind it,
//! summarised over a window (count, min, max, mean and last of each
//! numeric reading; the last value of any other), one summary per device
//! and window instead of every reading. A dead-band leaves out a reading
//! whose mean and last value moved less than it since the summary sent
//! before, and a summary with nothing left is not sent. Everything that is
//! not telemetry (health, lifecycle events, acknowledgements) is not held
//! back: the bridge passes it on at once.
//!
//! A summary is a telemetry message like any other, so the twin host and
//! apps take it as they are: each reading `r` becomes `r.count`, `r.min`,
//! `r.max`, `r.mean` and `r.last` (only `r.last` for text and booleans).
//!
//! ```
//! use lanyard_std::fog::{Aggregator, FogConfig};
//! # use lanyard_core::agent::messages::{Encodable, Telemetry};
//! # use lanyard_core::shadow::{PathBuf, StateTree, Value};
//! # fn reading(seq: u64, t: f64) -> Vec<u8> {
//! #     let mut readings = StateTree::new();
//! #     readings.insert(&PathBuf::from_dotted("temperature_c").unwrap(), Value::Float(t)).unwrap();
//! #     let mut buf = vec![0u8; 256];
//! #     let n = Telemetry::<16, 512> { seq, time_ms: seq * 1000, readings }.encode(&mut buf).unwrap();
//! #     buf.truncate(n);
//! #     buf
//! # }
//! let mut fog = Aggregator::new(FogConfig { window_ms: 60_000, dead_band: 0.0 });
//! for s in 0..60 {
//!     fog.take(s * 1_000, "ly-0a1b2c3d4e5f", &reading(s + 1, 20.0 + s as f64 / 10.0))?;
//! }
//! let summaries = fog.due(60_000);
//! assert_eq!(summaries.len(), 1);
//! assert_eq!(fog.stats().readings, 60);
//! # Ok::<(), lanyard_core::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};

use lanyard_core::agent::messages::{Encodable, Telemetry};
use lanyard_core::shadow::{PathBuf, StateTree, Value};

/// How the fog tier summarises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FogConfig {
    /// Length of a window, ms: one summary per device per window.
    pub window_ms: u64,
    /// A numeric reading whose mean and last value each moved by at most
    /// this much since the last summary sent is left out (0: never).
    pub dead_band: f64,
}

/// What went through the aggregator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FogStats {
    /// Telemetry messages taken in.
    pub readings: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Summaries sent on.
    pub summaries: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Windows whose every reading was inside the dead-band: nothing sent.
    pub suppressed: u64,
    /// Telemetry messages that could not be read (dropped).
    pub unreadable: u64,
    /// Readings passed on unsummarised because raw readings were asked
    /// for ([`Aggregator::raw_for`]).
    pub raw: u64,
}

impl FogStats {
    /// Share of messages the aggregation saved, 0 to 1.
    pub fn message_reduction(&self) -> f64 {
        if self.readings == 0 {
            return 0.0;
        }
        1.0 - self.summaries as f64 / self.readings as f64
    }

    /// Share of bytes the aggregation saved, 0 to 1.
    pub fn byte_reduction(&self) -> f64 {
        if self.bytes_in == 0 {
            return 0.0;
        }
        1.0 - self.bytes_out as f64 / self.bytes_in as f64
    }
}

/// One reading over a window.
#[derive(Debug, Clone, Copy)]
enum Field {
    Numeric {
        count: u64,
        min: f64,
        max: f64,
        sum: f64,
        last: f64,
        /// Whether every value was an integer (the summary keeps ints).
        ints: bool,
    },
    Other(OtherValue),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum OtherValue {
    Bool(bool),
    /// Index into the window's texts.
    Text(usize),
}

#[derive(Debug, Default)]
struct Window {
    opened_ms: u64,
    last_time_ms: u64,
    fields: BTreeMap<String, Field>,
    texts: Vec<String>,
}

/// What was last sent for one reading: its mean and last value.
#[derive(Debug, Clone, Copy)]
struct Sent {
    mean: f64,
    last: f64,
}

/// Summarises the telemetry of the devices behind a gateway.
#[derive(Debug)]
pub struct Aggregator {
    config: FogConfig,
    /// Devices whose readings pass unsummarised, until when.
    raw_until: HashMap<String, u64>,
    windows: BTreeMap<String, Window>,
    sent: HashMap<(String, String), Sent>,
    seq: HashMap<String, u64>,
    stats: FogStats,
}

/// Longest period of raw readings one request gives: an hour.
pub const MAX_RAW_MS: u64 = 3_600_000;

/// Largest telemetry the aggregator reads: a gateway's devices may carry
/// more readings than the default device.
type Reading = Telemetry<256, 8192>;

impl Aggregator {
    /// An aggregator with `config`.
    pub fn new(config: FogConfig) -> Self {
        Aggregator {
            config,
            raw_until: HashMap::new(),
            windows: BTreeMap::new(),
            sent: HashMap::new(),
            seq: HashMap::new(),
            stats: FogStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> FogStats {
        self.stats
    }

    /// Passes `device`'s readings on unsummarised for `for_ms` from
    /// `now_ms` (at most [`MAX_RAW_MS`]; 0 ends it): an operator looking
    /// closely at one device. Its open window is still summarised when due.
    pub fn raw_for(&mut self, now_ms: u64, device: &str, for_ms: u64) {
        if for_ms == 0 {
            self.raw_until.remove(device);
        } else {
            self.raw_until
                .insert(device.to_owned(), now_ms + for_ms.min(MAX_RAW_MS));
        }
    }

    /// Whether `device`'s reading at `now_ms` passes unsummarised (then it
    /// is counted as such, and the caller sends it on as it is).
    pub fn passes_raw(&mut self, now_ms: u64, device: &str) -> bool {
        match self.raw_until.get(device) {
            Some(&until) if now_ms < until => {
                self.stats.raw += 1;
                true
            }
            Some(_) => {
                self.raw_until.remove(device);
                false
            }
            None => false,
        }
    }

    /// Takes one telemetry message of `device` (its CBOR), at `now_ms`
    /// (gateway clock). A message that cannot be read is refused,
    /// counted, and changes nothing.
    pub fn take(
        &mut self,
        now_ms: u64,
        device: &str,
        payload: &[u8],
    ) -> Result<(), lanyard_core::Error> {
        let t = match Reading::decode(payload) {
            Ok(t) => t,
            Err(e) => {
                self.stats.unreadable += 1;
                return Err(e);
            }
        };
        self.stats.readings += 1;
        self.stats.bytes_in += payload.len() as u64;
        let w = self
            .windows
            .entry(device.to_owned())
            .or_insert_with(|| Window {
                opened_ms: now_ms,
                ..Window::default()
            });
        w.last_time_ms = w.last_time_ms.max(t.time_ms);
        for leaf in t.readings.iter() {
            let path = leaf.path.to_string_lossy().to_string();
            let number = match leaf.value {
                Value::Int(i) => Some((i as f64, true)),
                Value::Float(x) if x.is_finite() => Some((x, false)),
                _ => None,
            };
            let field = match (number, leaf.value) {
                (Some((x, int)), _) => match w.fields.get(&path) {
                    Some(Field::Numeric {
                        count,
                        min,
                        max,
                        sum,
                        ints,
                        ..
                    }) => Field::Numeric {
                        count: count + 1,
                        min: min.min(x),
                        max: max.max(x),
                        sum: sum + x,
                        last: x,
                        ints: *ints && int,
                    },
                    _ => Field::Numeric {
                        count: 1,
                        min: x,
                        max: x,
                        sum: x,
                        last: x,
                        ints: int,
                    },
                },
                (None, Value::Bool(b)) => Field::Other(OtherValue::Bool(b)),
                (None, Value::Text(s)) => {
                    w.texts.push(s.to_owned());
                    Field::Other(OtherValue::Text(w.texts.len() - 1))
                }
                // Bytes, arrays, non-finite floats: not summarised.
                _ => continue,
            };
            w.fields.insert(path, field);
        }
        Ok(())
    }

    /// The summaries of the windows that have run their length by
    /// `now_ms`: `(device, telemetry CBOR)`.
    pub fn due(&mut self, now_ms: u64) -> Vec<(String, Vec<u8>)> {
        let ended: Vec<String> = self
            .windows
            .iter()
            .filter(|(_, w)| now_ms.saturating_sub(w.opened_ms) >= self.config.window_ms)
            .map(|(d, _)| d.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|d| {
                let w = self.windows.remove(&d)?;
                self.summarise(&d, w).map(|s| (d, s))
            })
            .collect()
    }

    /// Every open window's summary now (a gateway shutting down).
    pub fn drain(&mut self) -> Vec<(String, Vec<u8>)> {
        let all = std::mem::take(&mut self.windows);
        all.into_iter()
            .filter_map(|(d, w)| self.summarise(&d, w).map(|s| (d, s)))
            .collect()
    }

    fn summarise(&mut self, device: &str, w: Window) -> Option<Vec<u8>> {
        let mut readings: StateTree<256, 8192> = StateTree::new();
        let band = self.config.dead_band;
        for (path, field) in &w.fields {
            let put = |readings: &mut StateTree<256, 8192>, key: &str, v: Value<'_>| {
                if let Ok(p) = PathBuf::from_dotted(&format!("{path}.{key}")) {
                    // A full tree drops the rest of the summary's fields;
                    // 256 leaves hold 51 numeric readings.
                    let _ = readings.insert(&p, v);
                }
            };
            match *field {
                Field::Numeric {
                    count,
                    min,
                    max,
                    sum,
                    last,
                    ints,
                } => {
                    let mean = sum / count as f64;
                    let key = (device.to_owned(), path.clone());
                    if band > 0.0
                        && self.sent.get(&key).is_some_and(|s| {
                            (s.mean - mean).abs() <= band && (s.last - last).abs() <= band
                        })
                    {
                        continue;
                    }
                    self.sent.insert(key, Sent { mean, last });
                    let num = |x: f64| {
                        if ints {
                            Value::Int(x as i64)
                        } else {
                            Value::Float(x)
                        }
                    };
                    put(&mut readings, "count", Value::Int(count as i64));
                    put(&mut readings, "min", num(min));
                    put(&mut readings, "max", num(max));
                    put(&mut readings, "mean", Value::Float(mean));
                    put(&mut readings, "last", num(last));
                }
                Field::Other(v) => match v {
                    OtherValue::Bool(b) => put(&mut readings, "last", Value::Bool(b)),
                    OtherValue::Text(i) => {
                        put(&mut readings, "last", Value::Text(&w.texts[i]));
                    }
                },
            }
        }
        if readings.is_empty() {
            self.stats.suppressed += 1;
            return None;
        }
        let seq = self.seq.entry(device.to_owned()).or_default();
        *seq += 1;
        let summary = Telemetry {
            seq: *seq,
            time_ms: w.last_time_ms,
            readings,
        };
        let mut buf = vec![0u8; summary.readings.encoded_len_bound() + 64];
        let n = summary.encode(&mut buf).ok()?;
        buf.truncate(n);
        self.stats.summaries += 1;
        self.stats.bytes_out += n as u64;
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(seq: u64, temp: f64, rssi: i64, door: &str) -> Vec<u8> {
        let mut readings: StateTree<16, 512> = StateTree::new();
        for (p, v) in [
            ("temperature_c", Value::Float(temp)),
            ("radio.rssi", Value::Int(rssi)),
            ("door", Value::Text(door)),
        ] {
            readings
                .insert(&PathBuf::from_dotted(p).unwrap(), v)
                .unwrap();
        }
        let mut buf = vec![0u8; 512];
        let n = Telemetry::<16, 512> {
            seq,
            time_ms: seq * 1_000,
            readings,
        }
        .encode(&mut buf)
        .unwrap();
        buf.truncate(n);
        buf
    }

    fn summary(bytes: &[u8]) -> serde_json::Value {
        let t = Reading::decode(bytes).unwrap();
        crate::aws_json::tree_to_json(&t.readings)
    }

    #[test]
    fn a_window_becomes_one_summary_per_device() {
        let mut fog = Aggregator::new(FogConfig {
            window_ms: 10_000,
            dead_band: 0.0,
        });
        for s in 0..10u64 {
            let door = if s < 5 { "closed" } else { "open" };
            fog.take(
                s * 1_000,
                "a",
                &reading(s + 1, 20.0 + s as f64, -60 - s as i64, door),
            )
            .unwrap();
        }
        fog.take(0, "b", &reading(1, 5.0, -90, "closed")).unwrap();
        assert!(fog.due(9_999).is_empty());
        let out = fog.due(10_000);
        assert_eq!(out.len(), 2);
        let (dev, bytes) = &out[0];
        assert_eq!(dev, "a");
        assert_eq!(
            summary(bytes),
            serde_json::json!({
                "temperature_c": {"count": 10, "min": 20.0, "max": 29.0, "mean": 24.5, "last": 29.0},
                "radio": {"rssi": {"count": 10, "min": -69, "max": -60, "mean": -64.5, "last": -69}},
                "door": {"last": "open"},
            })
        );
        let t = Reading::decode(bytes).unwrap();
        assert_eq!((t.seq, t.time_ms), (1, 10_000));
        let s = fog.stats();
        assert_eq!((s.readings, s.summaries), (11, 2));
        assert!(s.message_reduction() > 0.8);
        assert!(s.byte_reduction() > 0.5, "{s:?}");
    }

    #[test]
    fn the_dead_band_leaves_out_what_did_not_move() {
        let mut fog = Aggregator::new(FogConfig {
            window_ms: 1_000,
            dead_band: 0.5,
        });
        fog.take(0, "a", &reading(1, 20.0, -60, "closed")).unwrap();
        assert_eq!(fog.due(1_000).len(), 1);
        // Moved by 0.2 and 0 (rssi): only the door, whose text is always
        // sent.
        fog.take(1_000, "a", &reading(2, 20.2, -60, "closed"))
            .unwrap();
        let out = fog.due(2_000);
        assert_eq!(
            summary(&out[0].1),
            serde_json::json!({"door": {"last": "closed"}})
        );
        // Moved by 1.0: sent.
        fog.take(2_000, "a", &reading(3, 21.0, -60, "closed"))
            .unwrap();
        let out = fog.due(3_000);
        assert_eq!(summary(&out[0].1)["temperature_c"]["last"], 21.0);
        assert!(summary(&out[0].1).get("radio").is_none());
    }

    #[test]
    fn unreadable_telemetry_is_refused_and_counted() {
        let mut fog = Aggregator::new(FogConfig {
            window_ms: 1_000,
            dead_band: 0.0,
        });
        assert!(fog.take(0, "a", b"\xff\x00").is_err());
        assert_eq!(fog.stats().unreadable, 1);
        assert!(fog.due(5_000).is_empty());
        assert_eq!(fog.stats().readings, 0);
    }
}
