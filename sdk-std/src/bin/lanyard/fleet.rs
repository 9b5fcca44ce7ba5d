//! `lanyard fleet`: an operator's commands over a running twin host, through
//! the app client (the broker's ACL decides who may write).

use super::*;
use lanyard_std::app::{AppClient, AppEvent};
use lanyard_std::aws_json::{tree_from_json, tree_to_json, value_to_json};
use serde_json::{Value as Json, json};

/// What `lanyard fleet` does.
#[derive(Subcommand)]
pub(crate) enum FleetCmd {
    /// The fleet's devices: online or offline, lifecycle state, health,
    /// firmware, last seen, shadow version, conflicts waiting.
    List {
        /// Only the devices with conflicts waiting for an operator.
        #[arg(long)]
        conflicts: bool,
        /// The tenant whose devices to list (hosts that serve tenants).
        #[arg(long)]
        tenant: Option<String>,
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Settles a conflict waiting for an operator (a property under the
    /// manual_resolve policy that both sides changed): the cloud's value
    /// is sent to the device, or the device's becomes the desired value.
    Resolve {
        /// The device id.
        device: String,
        /// The property, dotted (`hvac.setpoint`).
        path: String,
        /// Whose value stands.
        #[arg(long, value_parser = ["cloud", "device"])]
        winner: String,
    },
    /// Pushes a configuration change (`field=value`, e.g.
    /// `telemetry_ms=60000`; fields not given are kept) to devices, or
    /// the whole fleet with --all, and counts their acknowledgements.
    Config {
        /// The configuration's version: devices take it only if newer
        /// than theirs.
        #[arg(long)]
        version: u64,
        /// `field=value`: heartbeat_ms, telemetry_ms, health_ms,
        /// shadow_sync_ms, battery_warn_pct, battery_crit_pct,
        /// link_warn_pct, link_crit_pct, hysteresis_pct,
        /// degraded_telemetry_factor.
        #[arg(long = "set", required = true)]
        fields: Vec<String>,
        /// The devices (ids).
        devices: Vec<String>,
        /// Every device the twin host lists that is not decommissioned.
        #[arg(long, conflicts_with = "devices")]
        all: bool,
        /// Seconds to wait for the acknowledgements.
        #[arg(long, default_value_t = 30.0)]
        timeout_s: f64,
        /// JSON for scripts instead of counts.
        #[arg(long)]
        json: bool,
    },
    /// A device's shadow: desired and reported values, who wrote each and
    /// when, refusals and conflicts waiting for an operator.
    Show {
        /// The device id.
        device: String,
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sets desired state (`path=JSON`, e.g. `fan.speed=3 mode='"eco"'`
    /// or `old=null` to delete) and waits for the host's answer: the new
    /// version, or why it was refused.
    Set {
        /// The device id.
        device: String,
        /// `dotted.path=value`, the value as JSON.
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Asks a device's gateway for its raw readings: its telemetry passes
    /// the fog tier unsummarised for a while (`lanyard fleet watch` shows
    /// it).
    Raw {
        /// The device id.
        device: String,
        /// For how long (at most 3600; 0 ends it).
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Sends a command and waits for its final acknowledgement.
    Command {
        /// The device id.
        device: String,
        /// The command's name.
        name: String,
        /// Its arguments, a JSON object.
        #[arg(long)]
        args: Option<String>,
        /// Seconds to wait (also the command's expiry).
        #[arg(long, default_value_t = 30.0)]
        timeout_s: f64,
    },
    /// Decommissions a device (its `decommission` command): it wipes
    /// itself, the host archives its shadow and refuses it from then on.
    Decommission {
        /// The device id.
        device: String,
    },
    /// Accepts a decommissioned device again.
    Reprovision {
        /// The device id.
        device: String,
    },
    /// Prints what happens in the fleet (deltas, reports, telemetry,
    /// acknowledgements, devices going offline and online, state and
    /// health changes), one JSON line each.
    Watch {
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
    },
}

pub(crate) async fn fleet(
    broker: &BrokerArgs,
    client_id: &str,
    what: FleetCmd,
) -> Result<(), String> {
    let transport =
        MqttTransport::connect_and_wait(broker.mqtt(client_id)?, Duration::from_secs(10))
            .await
            .map_err(|e| format!("{}: {e}", broker.url().unwrap_or_default()))?;
    // Its writes name the client id as their writer: the identity the
    // broker knows it by, and the one a twin host's operator list names.
    let mut app = AppClient::new(transport)
        .await
        .map_err(|e| e.to_string())?
        .as_operator(client_id)?;
    let timeout = Duration::from_secs(10);
    let result = match what {
        FleetCmd::List {
            conflicts,
            tenant,
            json,
        } => list(&mut app, tenant.as_deref(), conflicts, json, timeout).await,
        FleetCmd::Raw { device, seconds } => app
            .raw_readings(&device, seconds)
            .await
            .map(|()| println!("{device}: raw readings asked for {seconds} s"))
            .map_err(|e| format!("{device}: {e}")),
        FleetCmd::Resolve {
            device,
            path,
            winner,
        } => {
            let side =
                lanyard_std::twin::winner_named(&winner).ok_or("--winner: cloud or device")?;
            app.resolve(&device, &path, side, timeout)
                .await
                .map(|v| {
                    println!("{device}: {path} settled, the {winner}'s value stands (version {v})")
                })
                .map_err(|e| format!("{device}: {path}: {e}"))
        }
        FleetCmd::Config {
            version,
            fields,
            devices,
            all,
            timeout_s,
            json,
        } => {
            if !(timeout_s.is_finite() && timeout_s > 0.0) {
                return Err("--timeout-s: more than 0".into());
            }
            push_config(
                &mut app,
                version,
                &fields,
                devices,
                all,
                Duration::from_secs_f64(timeout_s),
                json,
            )
            .await
        }
        FleetCmd::Show { device, json } => show(&mut app, &device, json, timeout).await,
        FleetCmd::Set { device, values } => set(&mut app, &device, &values, timeout).await,
        FleetCmd::Command {
            device,
            name,
            args,
            timeout_s,
        } => {
            if !(timeout_s.is_finite() && timeout_s > 0.0) {
                return Err("--timeout-s: more than 0".into());
            }
            command(
                &mut app,
                &device,
                &name,
                args.as_deref(),
                Duration::from_secs_f64(timeout_s),
            )
            .await
        }
        FleetCmd::Decommission { device } => {
            command(
                &mut app,
                &device,
                "decommission",
                None,
                Duration::from_secs(30),
            )
            .await
        }
        FleetCmd::Reprovision { device } => app
            .reprovision(&device, timeout)
            .await
            .map(|()| println!("{device}: may register again"))
            .map_err(|e| format!("{device}: {e}")),
        FleetCmd::Watch { seconds } => watch(&mut app, seconds).await,
    };
    let _ = app.close(Duration::from_secs(2)).await;
    result
}

async fn list(
    app: &mut AppClient,
    tenant: Option<&str>,
    conflicts_only: bool,
    as_json: bool,
    timeout: Duration,
) -> Result<(), String> {
    let devices = app.list(tenant, timeout).await.map_err(|e| e.to_string())?;
    let shown = devices.iter().filter(|d| !conflicts_only || d.parked > 0);
    if as_json {
        let all: Vec<Json> = shown.map(|d| d.to_json()).collect();
        println!("{}", Json::Array(all));
        return Ok(());
    }
    let now = Clock::real().now_ms();
    println!(
        "{:<24} {:<8} {:<14} {:<9} {:<10} {:>8} {:>7} {:>9} {:>10}",
        "device",
        "online",
        "state",
        "health",
        "firmware",
        "version",
        "sync",
        "conflicts",
        "last seen"
    );
    let mut n = 0;
    for d in shown {
        n += 1;
        let seen = d.last_seen_ms.map_or("-".into(), |t| {
            format!("{}s ago", now.saturating_sub(t) / 1000)
        });
        println!(
            "{:<24} {:<8} {:<14} {:<9} {:<10} {:>8} {:>7} {:>9} {:>10}",
            d.device,
            if d.decommissioned {
                "retired"
            } else if d.online {
                "yes"
            } else {
                "NO"
            },
            d.state.map_or("-", |s| s.name()),
            d.health.map_or("-", |h| h.name()),
            d.firmware.as_deref().unwrap_or("-"),
            d.version,
            if d.in_sync { "yes" } else { "delta" },
            d.parked,
            seen
        );
    }
    println!("{n} devices");
    Ok(())
}

async fn push_config(
    app: &mut AppClient,
    version: u64,
    fields: &[String],
    devices: Vec<String>,
    all: bool,
    timeout: Duration,
    as_json: bool,
) -> Result<(), String> {
    let patch = lanyard_std::app::config_patch_from_text(version, fields)
        .map_err(|e| format!("--set {e}"))?;
    let devices = if all {
        app.list(None, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|d| !d.decommissioned)
            .map(|d| d.device)
            .collect()
    } else if devices.is_empty() {
        return Err("name the devices, or --all".into());
    } else {
        devices
    };
    let report = app
        .push_config_to(&devices, &patch, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if as_json {
        println!(
            "{}",
            json!({
                "version": version,
                "devices": devices.len(),
                "applied": report.applied,
                "ignored": report.ignored.iter().map(|(d, v)| json!({"device": d, "current_version": v})).collect::<Vec<_>>(),
                "rejected": report.rejected.iter().map(|(d, why)| json!({"device": d, "reason": why})).collect::<Vec<_>>(),
                "unanswered": report.unanswered,
            })
        );
    } else {
        println!(
            "configuration version {version} to {} devices: {} applied, {} ignored (not newer), {} rejected, {} unanswered",
            devices.len(),
            report.applied.len(),
            report.ignored.len(),
            report.rejected.len(),
            report.unanswered.len()
        );
        for (d, v) in &report.ignored {
            println!("  {d}: ignored, it runs version {v}");
        }
        for (d, why) in &report.rejected {
            println!("  {d}: rejected: {why}");
        }
        for d in &report.unanswered {
            println!("  {d}: no answer");
        }
    }
    if report.all_applied() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} devices did not apply version {version}",
            devices.len() - report.applied.len(),
            devices.len()
        ))
    }
}

async fn show(
    app: &mut AppClient,
    device: &str,
    as_json: bool,
    timeout: Duration,
) -> Result<(), String> {
    let shadow = app
        .get_shadow(device, timeout)
        .await
        .map_err(|e| format!("{device}: {e}"))?;
    let leaf = |e: &lanyard_core::shadow::Entry<'_>| {
        json!({
            "value": value_to_json(e.value),
            "by": match e.meta.source { lanyard_core::shadow::Source::Cloud => "cloud", _ => "device" },
            "at_ms": e.meta.timestamp_ms,
            "version": e.meta.version,
        })
    };
    let side =
        |t: &StateTree<{ lanyard_std::twin::TWIN_LEAVES }, { lanyard_std::twin::TWIN_POOL }>| {
            t.iter()
                .map(|e| (e.path.to_string_lossy().to_string(), leaf(&e)))
                .collect::<serde_json::Map<String, Json>>()
        };
    let refused: serde_json::Map<String, Json> = shadow
        .rejected()
        .map(|(p, code)| {
            let reason = lanyard_core::agent::platform::RejectReason::from_code(code)
                .name()
                .to_string();
            (p.to_string_lossy().to_string(), json!(reason))
        })
        .collect();
    let parked: serde_json::Map<String, Json> = shadow
        .parked()
        .map(|(p, since)| (p.to_string_lossy().to_string(), json!({"since_ms": since})))
        .collect();
    let doc = json!({
        "device": device,
        "version": shadow.version(),
        "in_sync": shadow.in_sync(),
        "desired": side(shadow.desired()),
        "reported": side(shadow.reported()),
        "refused": refused,
        "conflicts_parked": parked,
        "state": {"desired": tree_to_json(shadow.desired()), "reported": tree_to_json(shadow.reported())},
    });
    if as_json {
        println!("{doc}");
        return Ok(());
    }
    println!(
        "{device}: version {}, {}",
        shadow.version(),
        if shadow.in_sync() {
            "in sync"
        } else {
            "delta outstanding"
        }
    );
    println!(
        "{:<28} {:<18} {:<18} {:<7} {:>14}",
        "property", "desired", "reported", "by", "at (ms)"
    );
    let mut paths: Vec<String> = doc["desired"]
        .as_object()
        .into_iter()
        .chain(doc["reported"].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect();
    paths.sort();
    paths.dedup();
    for p in paths {
        let (d, r) = (&doc["desired"][&p], &doc["reported"][&p]);
        let latest = if r["at_ms"].as_u64() >= d["at_ms"].as_u64() {
            r
        } else {
            d
        };
        let show = |v: &Json| {
            if v.is_null() {
                "-".to_string()
            } else {
                v["value"].to_string()
            }
        };
        println!(
            "{:<28} {:<18} {:<18} {:<7} {:>14}",
            p,
            show(d),
            show(r),
            latest["by"].as_str().unwrap_or("-"),
            latest["at_ms"]
                .as_u64()
                .map_or("-".into(), |t| t.to_string())
        );
    }
    for (p, why) in &refused {
        println!(
            "refused by the device: {p} ({})",
            why.as_str().unwrap_or("")
        );
    }
    for (p, since) in &parked {
        println!(
            "conflict waiting for an operator: {p} (since {})",
            since["since_ms"]
        );
    }
    Ok(())
}

async fn set(
    app: &mut AppClient,
    device: &str,
    values: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let mut doc = serde_json::Map::new();
    for v in values {
        let (path, value) = v
            .split_once('=')
            .ok_or_else(|| format!("{v:?}: dotted.path=JSON value"))?;
        let value: Json = serde_json::from_str(value).map_err(|e| {
            format!("{path}: {value:?} is not JSON ({e}); text is quoted: '\"eco\"'")
        })?;
        ShadowPath::from_dotted(path).map_err(|e| format!("{path:?}: {e}"))?;
        // Nested objects for the dotted path.
        let keys: Vec<&str> = path.split('.').collect();
        let mut at = &mut doc;
        for k in &keys[..keys.len() - 1] {
            let next = at
                .entry((*k).to_owned())
                .or_insert_with(|| Json::Object(Default::default()));
            if !next.is_object() {
                return Err(format!("{path}: {k} is given a value and properties"));
            }
            at = next.as_object_mut().expect("an object");
        }
        at.insert(keys[keys.len() - 1].to_owned(), value);
    }
    let tree: Box<StateTree<{ lanyard_std::twin::TWIN_LEAVES }, { lanyard_std::twin::TWIN_POOL }>> =
        Box::new(tree_from_json(&doc, true).map_err(|e| e.message())?);
    let version = app
        .set_desired_within(device, &*tree, Clock::real().now_ms(), timeout)
        .await
        .map_err(|e| format!("{device}: {e}"))?;
    println!("{device}: desired state set, version {version}");
    Ok(())
}

async fn command(
    app: &mut AppClient,
    device: &str,
    name: &str,
    args: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let args = match args {
        None => Vec::new(),
        Some(text) => {
            let v: Json =
                serde_json::from_str(text).map_err(|e| format!("--args: not JSON ({e})"))?;
            let obj = v.as_object().ok_or("--args: a JSON object")?;
            let tree: Box<StateTree<64, 4096>> = Box::new(
                tree_from_json(obj, false).map_err(|e| format!("--args: {}", e.message()))?,
            );
            let mut buf = vec![0u8; tree.encoded_len_bound()];
            let n = tree.encode(&mut buf).map_err(|e| format!("--args: {e}"))?;
            buf.truncate(n);
            buf
        }
    };
    let outcome = app
        .command(device, name, &args, Clock::real().now_ms(), timeout)
        .await
        .map_err(|e| format!("{device}: {name}: {e}"))?;
    let result = outcome.result.as_deref().and_then(|r| {
        StateTree::<64, 4096>::decode(r)
            .ok()
            .map(|t| tree_to_json(&t))
    });
    println!(
        "{}",
        json!({
            "device": device,
            "command": name,
            "status": outcome.status.name(),
            "reason": outcome.reason.map(|r| format!("{r:?}")),
            "detail": outcome.detail,
            "result": result,
        })
    );
    if outcome.status == lanyard_core::agent::messages::AckStatus::Succeeded {
        Ok(())
    } else {
        let why = outcome
            .detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        Err(format!("{device}: {name}: {}{why}", outcome.status.name()))
    }
}

async fn watch(app: &mut AppClient, seconds: Option<f64>) -> Result<(), String> {
    let until = seconds.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    loop {
        let left = until.map(|u| u.saturating_duration_since(tokio::time::Instant::now()));
        if left == Some(Duration::ZERO) {
            return Ok(());
        }
        let next =
            tokio::time::timeout(left.unwrap_or(Duration::from_secs(3600)), app.next_event());
        let ev = match next.await {
            Err(_) => continue,
            Ok(ev) => ev.map_err(|e| e.to_string())?,
        };
        let line = match ev {
            AppEvent::Delta { device, state } => {
                json!({"type": "delta", "device": device, "state": tree_to_json(&*state)})
            }
            AppEvent::Reported { device, state, .. } => {
                json!({"type": "reported", "device": device, "state": tree_to_json(&*state)})
            }
            AppEvent::Telemetry {
                device,
                seq,
                readings,
                ..
            } => {
                json!({"type": "telemetry", "device": device, "seq": seq, "readings": tree_to_json(&*readings)})
            }
            AppEvent::Ack {
                device,
                command_id,
                status,
            } => {
                json!({"type": "ack", "device": device, "command_id": command_id, "status": status.name()})
            }
            AppEvent::Fleet { device, event } => {
                json!({"type": "fleet", "device": device, "event": event.to_json()})
            }
        };
        println!("{line}");
    }
}
