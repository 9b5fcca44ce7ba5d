//! What a fleet costs to run in the cloud each month: messages, data out,
//! storage, gateways, serverless processing and a database, from the
//! fleet's device classes (how many, how often, how large) and a price
//! list. Pure arithmetic, no I/O: `lanyard cost` reads a fleet file and
//! prints a [`CostReport`].
//!
//! [`FleetCost::worked_example`] is a reference fleet of 10,000 building
//! sensors in four classes, priced as AWS IoT Core, S3, Glacier Deep
//! Archive, EC2, Lambda and RDS were in us-east-1 in 2024: 275.76 M
//! messages and 41.4 GB a month, $666.49, $0.067 a device.
//!
//! ```
//! use lanyard_std::cost::FleetCost;
//! let report = FleetCost::worked_example().report();
//! assert_eq!(report.messages_per_month, 275_760_000);
//! assert_eq!(report.total_cents, 66_649);
//! ```
//!
//! Conventions, each a parameter so that a fleet can use its provider's:
//! volumes are billed in steps of [`Rounding::gb_step`] (0.1 GB), serverless
//! invocations in steps of [`Rounding::invocation_step`] (a million), and
//! every line is rounded to the cent before the total is added up.

use serde_json::{Value as Json, json};

/// One kind of device of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceClass {
    /// What they are ("temperature/humidity").
    pub name: String,
    /// How many.
    pub devices: u64,
    /// Seconds between two messages of one device.
    pub every_s: f64,
    /// Bytes of one message.
    pub bytes: u64,
}

impl DeviceClass {
    /// `fleet_devices` devices that each send what `devices` devices sent
    /// in `seconds`: `messages` messages of `bytes` bytes in all (a run's
    /// counts, as `lanyard demo --cost-fleet` takes them). `None` when the
    /// run saw nothing to go by.
    ///
    /// ```
    /// use lanyard_std::cost::DeviceClass;
    /// // 20 devices sent 2,400 messages (120,000 bytes) in 10 minutes.
    /// let c = DeviceClass::observed("demo", 10_000, 20, 600.0, 2_400, 120_000).unwrap();
    /// assert_eq!((c.every_s, c.bytes), (5.0, 50));
    /// ```
    pub fn observed(
        name: &str,
        fleet_devices: u64,
        devices: u64,
        seconds: f64,
        messages: u64,
        bytes: u64,
    ) -> Option<DeviceClass> {
        if devices == 0 || messages == 0 || !(seconds.is_finite() && seconds > 0.0) {
            return None;
        }
        Some(DeviceClass {
            name: name.to_owned(),
            devices: fleet_devices,
            every_s: seconds * devices as f64 / messages as f64,
            bytes: (bytes as f64 / messages as f64).round() as u64,
        })
    }

    /// As a class of a fleet file ([`FleetCost::from_json`]).
    pub fn to_json(&self) -> Json {
        json!({"name": self.name, "devices": self.devices, "every_s": self.every_s, "bytes": self.bytes})
    }
}

/// Unit prices, US dollars.
#[derive(Debug, Clone, PartialEq)]
pub struct Prices {
    /// Per million messages ingested.
    pub per_million_messages: f64,
    /// Per GB transferred out.
    pub per_gb_out: f64,
    /// Per GB-month of hot storage.
    pub hot_per_gb_month: f64,
    /// Per GB-month of cold storage.
    pub cold_per_gb_month: f64,
    /// Per hour of one gateway server.
    pub gateway_per_hour: f64,
    /// Per million serverless invocations.
    pub per_million_invocations: f64,
    /// Per GB-second of serverless compute.
    pub per_gb_second: f64,
    /// Per hour of the database server.
    pub database_per_hour: f64,
}

/// How the fleet runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Operations {
    /// Gateway servers (the fog tier).
    pub gateways: u32,
    /// Share of messages the fog tier replaces by its summaries, 0 to 1
    /// (0: every reading goes up).
    pub aggregation: f64,
    /// Months data stays in hot storage.
    pub hot_months: f64,
    /// Months data stays in cold storage.
    pub cold_months: f64,
    /// Seconds one invocation runs (one per message).
    pub invocation_s: f64,
    /// Memory of one invocation, GB.
    pub invocation_gb: f64,
    /// Days of a month, for message counts.
    pub days_per_month: f64,
    /// Hours of a month, for servers billed by the hour.
    pub hours_per_month: f64,
}

/// Billing steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Rounding {
    /// Data volumes are counted in steps of this many GB (0 for exact).
    pub gb_step: f64,
    /// Invocations are counted in steps of this many (0 for exact).
    pub invocation_step: f64,
}

/// A fleet and what it pays.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetCost {
    /// Its devices.
    pub classes: Vec<DeviceClass>,
    /// Unit prices.
    pub prices: Prices,
    /// How it runs.
    pub operations: Operations,
    /// Billing steps.
    pub rounding: Rounding,
}

/// One line of a [`CostReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct CostLine {
    /// What it pays for.
    pub category: &'static str,
    /// How it is worked out, for people.
    pub basis: String,
    /// Per month, in cents.
    pub cents: u64,
}

/// What a fleet costs a month.
#[derive(Debug, Clone, PartialEq)]
pub struct CostReport {
    /// Devices in the fleet.
    pub devices: u64,
    /// Messages a month (after aggregation).
    pub messages_per_month: u64,
    /// Data a month, GB (after aggregation, in billing steps).
    pub gb_per_month: f64,
    /// The lines, each rounded to the cent.
    pub lines: Vec<CostLine>,
    /// Their sum, in cents.
    pub total_cents: u64,
}

/// A fleet file that could not be read: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetFileError(pub String);

impl std::fmt::Display for FleetFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FleetFileError {}

fn cents(usd: f64) -> u64 {
    // Half a cent rounds up; a tiny epsilon keeps 2.855 (held as
    // 2.85499...) from rounding down.
    ((usd * 100.0) + 1e-9).round().max(0.0) as u64
}

fn step(x: f64, by: f64) -> f64 {
    if by > 0.0 { (x / by).round() * by } else { x }
}

impl FleetCost {
    /// AWS Lambda's list price per GB-second (x86, us-east-1, 2024).
    pub const LIST_PER_GB_SECOND: f64 = 0.000_016_666_7;

    /// The reference fleet: 50 office buildings of 200 sensors (5,000
    /// temperature/humidity every minute, 3,000 occupancy every 5 minutes,
    /// 1,500 air quality every 2 minutes, 500 energy meters every 15
    /// minutes), 5 gateway servers, data kept 3 months hot and 24 cold,
    /// a serverless invocation of 0.2 s per message and one database
    /// server, at 2024 us-east-1 prices.
    ///
    /// Two of its serverless figures are as the published example worked
    /// them out, not as the provider bills: it counts 1 GB per invocation
    /// (its text says 512 MB), and it prices its 55.2 M GB-seconds at
    /// $0.92, which is $0.0000166667 per *thousand* GB-seconds. At the
    /// list price per GB-second ([`FleetCost::LIST_PER_GB_SECOND`]) that
    /// line alone is $920 and the month $1,585.57; `lanyard cost` says so
    /// beside the example's figures.
    pub fn worked_example() -> Self {
        let class = |name: &str, devices, every_s, bytes| DeviceClass {
            name: name.into(),
            devices,
            every_s,
            bytes,
        };
        FleetCost {
            classes: vec![
                class("temperature/humidity", 5_000, 60.0, 150),
                class("occupancy", 3_000, 300.0, 80),
                class("air quality", 1_500, 120.0, 200),
                class("energy", 500, 900.0, 300),
            ],
            prices: Prices {
                per_million_messages: 1.00,
                per_gb_out: 0.09,
                hot_per_gb_month: 0.023,
                cold_per_gb_month: 0.00099,
                gateway_per_hour: 0.0416,
                per_million_invocations: 0.20,
                // The published arithmetic's rate (see above).
                per_gb_second: 0.000_016_666_7 / 1000.0,
                database_per_hour: 0.24,
            },
            operations: Operations {
                gateways: 5,
                aggregation: 0.0,
                hot_months: 3.0,
                cold_months: 24.0,
                invocation_s: 0.2,
                invocation_gb: 1.0,
                days_per_month: 30.0,
                hours_per_month: 730.0,
            },
            rounding: Rounding {
                gb_step: 0.1,
                invocation_step: 1_000_000.0,
            },
        }
    }

    /// Works out the month.
    pub fn report(&self) -> CostReport {
        let (p, o, r) = (&self.prices, &self.operations, &self.rounding);
        let kept = 1.0 - o.aggregation.clamp(0.0, 1.0);
        let per_day = |c: &DeviceClass| c.devices as f64 * 86_400.0 / c.every_s;
        let messages: f64 = self
            .classes
            .iter()
            .map(|c| per_day(c) * o.days_per_month * kept)
            .sum();
        let bytes: f64 = self
            .classes
            .iter()
            .map(|c| per_day(c) * o.days_per_month * kept * c.bytes as f64)
            .sum();
        let gb = step(bytes / 1e9, r.gb_step);
        let messages = messages.round();
        let invocations = step(messages, r.invocation_step);
        let gb_seconds = invocations * o.invocation_s * o.invocation_gb;
        let line = |category, basis: String, cents| CostLine {
            category,
            basis,
            cents,
        };
        let hot_gb = gb * o.hot_months;
        let cold_gb = gb * o.cold_months;
        let lines = vec![
            line(
                "message ingestion",
                format!(
                    "{:.2} M messages x ${}/M",
                    messages / 1e6,
                    p.per_million_messages
                ),
                cents(messages / 1e6 * p.per_million_messages),
            ),
            line(
                "data transfer",
                format!("{gb:.1} GB x ${}/GB", p.per_gb_out),
                cents(gb * p.per_gb_out),
            ),
            line(
                "storage (hot + cold)",
                format!(
                    "{hot_gb:.1} GB x ${} + {cold_gb:.1} GB x ${}",
                    p.hot_per_gb_month, p.cold_per_gb_month
                ),
                cents(hot_gb * p.hot_per_gb_month) + cents(cold_gb * p.cold_per_gb_month),
            ),
            line(
                "edge compute (gateways)",
                format!(
                    "{} x ${}/h x {} h",
                    o.gateways, p.gateway_per_hour, o.hours_per_month
                ),
                cents(f64::from(o.gateways) * p.gateway_per_hour * o.hours_per_month),
            ),
            line(
                "cloud compute (serverless)",
                format!(
                    "{:.0} M invocations x ${}/M + {:.1} M GB-s x ${}",
                    invocations / 1e6,
                    p.per_million_invocations,
                    gb_seconds / 1e6,
                    p.per_gb_second
                ),
                cents(invocations / 1e6 * p.per_million_invocations)
                    + cents(gb_seconds * p.per_gb_second),
            ),
            line(
                "database",
                format!("${}/h x {} h", p.database_per_hour, o.hours_per_month),
                cents(p.database_per_hour * o.hours_per_month),
            ),
        ];
        CostReport {
            devices: self.classes.iter().map(|c| c.devices).sum(),
            messages_per_month: messages as u64,
            gb_per_month: gb,
            total_cents: lines.iter().map(|l| l.cents).sum(),
            lines,
        }
    }

    /// A fleet from a JSON file's text: the reference fleet's values,
    /// replaced by those the file gives.
    ///
    /// ```json
    /// {"classes": [{"name": "valves", "devices": 2000, "every_s": 30, "bytes": 120}],
    ///  "operations": {"gateways": 2, "aggregation": 0.8},
    ///  "prices": {"per_million_messages": 1.0}}
    /// ```
    ///
    /// Unknown keys and values of the wrong kind are refused, naming them.
    pub fn from_json(text: &str) -> Result<Self, FleetFileError> {
        let err = |m: String| FleetFileError(m);
        let doc: Json = serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
        let top = doc
            .as_object()
            .ok_or_else(|| err("the fleet file is a JSON object".into()))?;
        let mut fleet = FleetCost::worked_example();
        for key in top.keys() {
            if !["classes", "prices", "operations", "rounding"].contains(&key.as_str()) {
                return Err(err(format!(
                    "unknown key {key:?} (classes, prices, operations, rounding)"
                )));
            }
        }
        let number = |obj: &Json, section: &str, key: &str| -> Result<f64, FleetFileError> {
            obj.as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| err(format!("{section}.{key}: a number >= 0, not {obj}")))
        };
        if let Some(classes) = top.get("classes") {
            let list = classes
                .as_array()
                .ok_or_else(|| err("classes: a list".into()))?;
            fleet.classes.clear();
            for (i, c) in list.iter().enumerate() {
                let section = format!("classes[{i}]");
                let obj = c
                    .as_object()
                    .ok_or_else(|| err(format!("{section}: an object")))?;
                let get = |k: &str| {
                    obj.get(k)
                        .ok_or_else(|| err(format!("{section}.{k}: missing")))
                        .and_then(|v| number(v, &section, k))
                };
                for k in obj.keys() {
                    if !["name", "devices", "every_s", "bytes"].contains(&k.as_str()) {
                        return Err(err(format!(
                            "{section}: unknown key {k:?} (name, devices, every_s, bytes)"
                        )));
                    }
                }
                let every_s = get("every_s")?;
                if every_s <= 0.0 {
                    return Err(err(format!("{section}.every_s: more than 0")));
                }
                fleet.classes.push(DeviceClass {
                    name: obj
                        .get("name")
                        .and_then(Json::as_str)
                        .unwrap_or("devices")
                        .to_owned(),
                    devices: get("devices")? as u64,
                    every_s,
                    bytes: get("bytes")? as u64,
                });
            }
        }
        let section = |name: &str| -> Result<Vec<(String, f64)>, FleetFileError> {
            let Some(v) = top.get(name) else {
                return Ok(Vec::new());
            };
            let obj = v
                .as_object()
                .ok_or_else(|| err(format!("{name}: an object")))?;
            obj.iter()
                .map(|(k, v)| Ok((k.clone(), number(v, name, k)?)))
                .collect()
        };
        let p = &mut fleet.prices;
        for (k, v) in section("prices")? {
            *match k.as_str() {
                "per_million_messages" => &mut p.per_million_messages,
                "per_gb_out" => &mut p.per_gb_out,
                "hot_per_gb_month" => &mut p.hot_per_gb_month,
                "cold_per_gb_month" => &mut p.cold_per_gb_month,
                "gateway_per_hour" => &mut p.gateway_per_hour,
                "per_million_invocations" => &mut p.per_million_invocations,
                "per_gb_second" => &mut p.per_gb_second,
                "database_per_hour" => &mut p.database_per_hour,
                _ => return Err(err(format!("prices: unknown key {k:?}"))),
            } = v;
        }
        let o = &mut fleet.operations;
        for (k, v) in section("operations")? {
            match k.as_str() {
                "gateways" => o.gateways = v as u32,
                "aggregation" if v <= 1.0 => o.aggregation = v,
                "aggregation" => return Err(err("operations.aggregation: 0 to 1".into())),
                "hot_months" => o.hot_months = v,
                "cold_months" => o.cold_months = v,
                "invocation_s" => o.invocation_s = v,
                "invocation_gb" => o.invocation_gb = v,
                "days_per_month" => o.days_per_month = v,
                "hours_per_month" => o.hours_per_month = v,
                _ => return Err(err(format!("operations: unknown key {k:?}"))),
            }
        }
        let r = &mut fleet.rounding;
        for (k, v) in section("rounding")? {
            match k.as_str() {
                "gb_step" => r.gb_step = v,
                "invocation_step" => r.invocation_step = v,
                _ => return Err(err(format!("rounding: unknown key {k:?}"))),
            }
        }
        Ok(fleet)
    }
}

impl CostReport {
    /// Per device a month, in dollars.
    pub fn per_device_usd(&self) -> f64 {
        if self.devices == 0 {
            return 0.0;
        }
        self.total_cents as f64 / 100.0 / self.devices as f64
    }

    /// As a table for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} devices, {:.2} M messages and {:.1} GB a month\n\n",
            self.devices,
            self.messages_per_month as f64 / 1e6,
            self.gb_per_month
        );
        out += &format!(
            "{:<28} {:>11} {:>10} {:>6}   {}\n",
            "cost", "per month", "per device", "share", "basis"
        );
        let total = self.total_cents.max(1) as f64;
        for l in &self.lines {
            out += &format!(
                "{:<28} {:>11} {:>10.4} {:>5.0}%   {}\n",
                l.category,
                format!("${:.2}", l.cents as f64 / 100.0),
                l.cents as f64 / 100.0 / self.devices.max(1) as f64,
                l.cents as f64 * 100.0 / total,
                l.basis
            );
        }
        out += &format!(
            "{:<28} {:>11} {:>10.3}\n",
            "total",
            format!("${:.2}", self.total_cents as f64 / 100.0),
            self.per_device_usd()
        );
        out
    }

    /// As JSON for scripts (amounts in dollars).
    pub fn to_json(&self) -> Json {
        json!({
            "devices": self.devices,
            "messages_per_month": self.messages_per_month,
            "gb_per_month": (self.gb_per_month * 1e6).round() / 1e6,
            "lines": self.lines.iter().map(|l| json!({
                "category": l.category,
                "usd": l.cents as f64 / 100.0,
                "basis": l.basis,
            })).collect::<Vec<_>>(),
            "total_usd": self.total_cents as f64 / 100.0,
            "per_device_usd": (self.per_device_usd() * 1e4).round() / 1e4,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worked_example_comes_out_to_the_cent() {
        let r = FleetCost::worked_example().report();
        assert_eq!(r.devices, 10_000);
        assert_eq!(r.messages_per_month, 275_760_000);
        assert!((r.gb_per_month - 41.4).abs() < 1e-9, "{}", r.gb_per_month);
        let by = |c: &str| r.lines.iter().find(|l| l.category == c).unwrap().cents;
        assert_eq!(by("message ingestion"), 27_576);
        assert_eq!(by("data transfer"), 373);
        assert_eq!(by("storage (hot + cold)"), 286 + 98);
        assert_eq!(by("edge compute (gateways)"), 15_184);
        assert_eq!(by("cloud compute (serverless)"), 5_520 + 92);
        assert_eq!(by("database"), 17_520);
        assert_eq!(r.total_cents, 66_649);
        assert_eq!(format!("{:.3}", r.per_device_usd()), "0.067");
        // At the list price per GB-second, the compute line is $920.
        let mut listed = FleetCost::worked_example();
        listed.prices.per_gb_second = FleetCost::LIST_PER_GB_SECOND;
        let r = listed.report();
        assert_eq!(r.total_cents, 66_649 - 92 + 92_000);
    }

    #[test]
    fn aggregation_cuts_messages_and_data() {
        let mut fleet = FleetCost::worked_example();
        fleet.operations.aggregation = 0.8;
        let r = fleet.report();
        assert_eq!(r.messages_per_month, 55_152_000);
        assert!((r.gb_per_month - 8.3).abs() < 1e-9);
        let ingestion = r.lines.iter().find(|l| l.category == "message ingestion");
        assert_eq!(ingestion.unwrap().cents, 5_515);
        // Gateways and the database do not shrink with the messages.
        assert!(r.total_cents < 66_649 - 20_000 + 2_000, "{}", r.total_cents);
    }

    #[test]
    fn a_fleet_file_replaces_what_it_gives_and_bad_ones_say_where() {
        let f = FleetCost::from_json(
            r#"{"classes": [{"name": "valves", "devices": 2000, "every_s": 30, "bytes": 120}],
                "operations": {"gateways": 0}, "prices": {"database_per_hour": 0}}"#,
        )
        .unwrap();
        let r = f.report();
        assert_eq!(r.devices, 2_000);
        assert_eq!(r.messages_per_month, 2_000 * 2_880 * 30);
        assert_eq!(
            r.lines
                .iter()
                .find(|l| l.category == "database")
                .unwrap()
                .cents,
            0
        );
        for (bad, says) in [
            ("[1]", "JSON object"),
            ("{\"clases\": []}", "unknown key \"clases\""),
            (
                "{\"classes\": [{\"devices\": 1, \"every_s\": 0, \"bytes\": 1}]}",
                "every_s",
            ),
            (
                "{\"classes\": [{\"devices\": -1, \"every_s\": 1, \"bytes\": 1}]}",
                "classes[0].devices",
            ),
            ("{\"operations\": {\"aggregation\": 2}}", "aggregation"),
            ("{\"prices\": {\"per_message\": 1}}", "per_message"),
            ("{", "not JSON"),
        ] {
            let e = FleetCost::from_json(bad).unwrap_err();
            assert!(e.0.contains(says), "{bad}: {e}");
        }
    }
}
