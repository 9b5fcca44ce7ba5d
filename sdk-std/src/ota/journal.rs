//! A rollout's journal: the devices it has offered the release (and
//! when), where it stands, and how each device that finished the job
//! finished it, in a file rewritten atomically after every change. A
//! rollout process that stops (a crash, a reboot of the operator's
//! machine) goes on where it was when started again: no stage's devices
//! are picked again, finished devices count as they finished, and the
//! devices still under way are offered the job again, so that they say
//! where they are (a device takes a job it has as it stands, and reports
//! one it finished again).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lanyard_core::update::messages::{UpdateReason, UpdateState};
use serde_json::{Value as Json, json};

use super::{AbortCriteria, DeviceProgress, Rollout, RolloutPlan, RolloutState};

/// The journal's format, written in its `format` field: a file of another
/// format is refused rather than misread.
const FORMAT: u64 = 1;

/// Why a journal cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadJournal(pub String);

impl std::fmt::Display for BadJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadJournal {}

/// A rollout taken back from its journal, and the devices that had
/// finished.
#[derive(Debug, Clone)]
pub struct Resumed {
    /// The rollout, where it was.
    pub rollout: Rollout,
    /// Each finished device's last report of the job (accepted, rejected
    /// or aborted).
    pub progress: Vec<(String, DeviceProgress)>,
}

/// A rollout's journal file. See the [module](self).
#[derive(Debug)]
pub struct RolloutJournal {
    path: PathBuf,
    /// What the file holds now: nothing is written when nothing changed.
    written: String,
}

impl RolloutJournal {
    /// The journal in `path` (read by [`RolloutJournal::load`], written by
    /// [`RolloutJournal::save`]).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        RolloutJournal {
            path: path.into(),
            written: String::new(),
        }
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rollout it holds; `None` without a file. A file that does not
    /// read is an error (never overwritten: it may be the only record of
    /// which devices were offered what).
    pub fn load(&mut self) -> Result<Option<Resumed>, BadJournal> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BadJournal(format!("{}: {e}", self.path.display()))),
        };
        let bad = |what: &str| BadJournal(format!("{}: {what}", self.path.display()));
        let json: Json = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        let resumed = decode(&json).map_err(|e| bad(&e))?;
        self.written = text;
        Ok(Some(resumed))
    }

    /// Writes `rollout` and its finished devices' reports if either changed
    /// since the last write (atomically: a crash leaves the old file or the
    /// new one).
    pub fn save<'a>(
        &mut self,
        rollout: &Rollout,
        progress: impl Fn(&str) -> Option<&'a DeviceProgress>,
    ) -> std::io::Result<()> {
        let text = encode(rollout, progress).to_string();
        if text != self.written {
            crate::store::write_atomic(&self.path, text.as_bytes())?;
            self.written = text;
        }
        Ok(())
    }
}

/// A rollout's state as the journal (and the audit log) writes it.
pub(crate) fn state_json(state: &RolloutState) -> Json {
    match state {
        RolloutState::Running(s) => json!({"running": s}),
        RolloutState::Paused(s) => json!({"paused": s}),
        RolloutState::Completed => json!("completed"),
        RolloutState::Aborted(why) => json!({"aborted": why}),
        RolloutState::Cancelled => json!("cancelled"),
    }
}

/// A plan as the journal (and the audit log) writes it.
pub(crate) fn plan_json(plan: &RolloutPlan) -> Json {
    json!({
        "stages": plan.stages,
        "advance_when": plan.advance_when,
        "min_finished": plan.abort.min_finished,
        "max_failure_rate": plan.abort.max_failure_rate,
        "abort_on": plan.abort.abort_on.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "device_timeout_ms": plan.device_timeout_ms,
    })
}

fn encode<'a>(rollout: &Rollout, progress: impl Fn(&str) -> Option<&'a DeviceProgress>) -> Json {
    let state = state_json(&rollout.state);
    // Sorted, so that the same rollout always writes the same text.
    let offered: std::collections::BTreeMap<&str, u64> = rollout
        .offered
        .iter()
        .map(|(d, at)| (d.as_str(), *at))
        .collect();
    let reports: serde_json::Map<String, Json> = offered
        .keys()
        .filter_map(|d| {
            let p = progress(d).filter(|p| p.job_id == rollout.job_id && p.state.is_final())?;
            Some((
                (*d).to_owned(),
                json!({
                    "state": p.state.name(),
                    "received": p.received,
                    "total": p.total,
                    "reason": p.reason.map(UpdateReason::name),
                }),
            ))
        })
        .collect();
    json!({
        "format": FORMAT,
        "job": rollout.job_id,
        "plan": plan_json(&rollout.plan),
        "devices": rollout.devices,
        "state": state,
        "offered": offered,
        "progress": reports,
    })
}

fn decode(json: &Json) -> Result<Resumed, String> {
    if json["format"].as_u64() != Some(FORMAT) {
        return Err(format!("not a rollout journal of format {FORMAT}"));
    }
    let text = |v: &Json, what: &str| -> Result<String, String> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{what}: not text"))
    };
    let number = |v: &Json, what: &str| v.as_u64().ok_or_else(|| format!("{what}: not a count"));
    let share = |v: &Json, what: &str| {
        v.as_f64()
            .filter(|s| (0.0..=1.0).contains(s))
            .ok_or_else(|| format!("{what}: not a share"))
    };
    let reason = |v: &Json| -> Result<UpdateReason, String> {
        UpdateReason::named(v.as_str().unwrap_or_default())
            .ok_or_else(|| format!("{v}: not an update reason"))
    };
    let job_id = text(&json["job"], "job")?;
    let p = &json["plan"];
    let stages = p["stages"]
        .as_array()
        .ok_or("plan.stages: not a list")?
        .iter()
        .map(|s| share(s, "plan.stages"))
        .collect::<Result<Vec<f64>, String>>()?;
    let plan = RolloutPlan {
        stages,
        advance_when: share(&p["advance_when"], "plan.advance_when")?,
        abort: AbortCriteria {
            min_finished: number(&p["min_finished"], "plan.min_finished")? as usize,
            max_failure_rate: share(&p["max_failure_rate"], "plan.max_failure_rate")?,
            abort_on: p["abort_on"]
                .as_array()
                .ok_or("plan.abort_on: not a list")?
                .iter()
                .map(reason)
                .collect::<Result<_, _>>()?,
        },
        device_timeout_ms: number(&p["device_timeout_ms"], "plan.device_timeout_ms")?,
    };
    if !plan.is_well_formed() {
        return Err(
            "plan: stages not growing from above 0 to 1, or no stage can open the next".into(),
        );
    }
    let devices = json["devices"]
        .as_array()
        .ok_or("devices: not a list")?
        .iter()
        .map(|d| text(d, "devices"))
        .collect::<Result<Vec<String>, String>>()?;
    let stage = |v: &Json| number(v, "state").map(|s| s as usize);
    let state = match &json["state"] {
        Json::String(s) if s == "completed" => RolloutState::Completed,
        Json::String(s) if s == "cancelled" => RolloutState::Cancelled,
        Json::Object(o) => match o.iter().next() {
            Some((k, v)) if k == "running" => RolloutState::Running(stage(v)?),
            Some((k, v)) if k == "paused" => RolloutState::Paused(stage(v)?),
            Some((k, v)) if k == "aborted" => RolloutState::Aborted(text(v, "state")?),
            _ => return Err("state: unknown".into()),
        },
        _ => return Err("state: unknown".into()),
    };
    let mut offered = HashMap::new();
    for (d, at) in json["offered"].as_object().ok_or("offered: not a map")? {
        if !devices.contains(d) {
            return Err(format!("offered: {d:?} is not one of the devices"));
        }
        offered.insert(d.clone(), number(at, "offered")?);
    }
    let mut progress = Vec::new();
    for (d, r) in json["progress"].as_object().ok_or("progress: not a map")? {
        let name = r["state"].as_str().unwrap_or_default();
        let state = UpdateState::named(name)
            .filter(|s| s.is_final())
            .ok_or_else(|| format!("progress of {d}: {name:?} is not a final update state"))?;
        let reason = match &r["reason"] {
            Json::Null => None,
            v => Some(reason(v)?),
        };
        let count = |what: &str| -> Result<u32, String> {
            number(&r[what], what)?
                .try_into()
                .map_err(|_| format!("progress of {d}: {what} too large"))
        };
        progress.push((
            d.clone(),
            DeviceProgress {
                job_id: job_id.clone(),
                state,
                received: count("received")?,
                total: count("total")?,
                reason,
            },
        ));
    }
    Ok(Resumed {
        rollout: Rollout {
            job_id,
            plan,
            devices,
            offered,
            state,
        },
        progress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_reads_back_as_it_was_written_and_a_damaged_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollout.json");
        let devices: Vec<String> = (1..=5).map(|i| format!("ly-02000000000{i}")).collect();
        let mut plan = RolloutPlan::exponential(0.2, 2.0);
        plan.abort.abort_on.push(UpdateReason::SelfTestFailed);
        let mut rollout = Rollout::new("fw-2", devices.clone(), plan);
        let offered = rollout.step(1_000, |_| None);
        assert_eq!(offered.len(), 1);
        let accepted = DeviceProgress {
            job_id: "fw-2".into(),
            state: UpdateState::Accepted,
            received: 30,
            total: 30,
            reason: None,
        };
        let mut progress: HashMap<String, DeviceProgress> =
            [(offered[0].clone(), accepted.clone())].into();
        // The next stage: one more device, still downloading (not kept: it
        // is asked again).
        let second = rollout.step(1_100, |d| progress.get(d));
        assert_eq!(second.len(), 1);
        progress.insert(
            second[0].clone(),
            DeviceProgress {
                state: UpdateState::Downloading,
                received: 3,
                ..accepted.clone()
            },
        );
        let mut journal = RolloutJournal::at(&path);
        assert!(journal.load().unwrap().is_none());
        journal.save(&rollout, |d| progress.get(d)).unwrap();

        let back = RolloutJournal::at(&path).load().unwrap().unwrap();
        assert_eq!(back.rollout.job_id(), "fw-2");
        assert_eq!(back.rollout.state(), rollout.state());
        assert_eq!(back.rollout.plan, rollout.plan);
        assert_eq!(back.rollout.devices, devices);
        assert_eq!(back.rollout.offered, rollout.offered);
        assert_eq!(back.progress, vec![(offered[0].clone(), accepted)]);
        // Taken back, it offers neither device again (the second is under
        // way: its stage is not full of accepted devices).
        let mut r = back.rollout;
        let p: HashMap<String, DeviceProgress> = back.progress.into_iter().collect();
        assert!(r.step(1_200, |d| p.get(d)).is_empty());

        for (damaged, why) in [
            ("{", "EOF"),
            (r#"{"format": 2}"#, "format 1"),
            (
                r#"{"format":1,"job":"j","plan":{"stages":[0.5,0.2],"advance_when":1,"min_finished":1,"max_failure_rate":0,"abort_on":[],"device_timeout_ms":1},"devices":[],"state":"completed","offered":{},"progress":{}}"#,
                "not growing",
            ),
            (
                r#"{"format":1,"job":"j","plan":{"stages":[1],"advance_when":1,"min_finished":1,"max_failure_rate":0,"abort_on":[],"device_timeout_ms":1},"devices":["a"],"state":"completed","offered":{"b":1},"progress":{}}"#,
                "not one of the devices",
            ),
        ] {
            std::fs::write(&path, damaged).unwrap();
            let err = RolloutJournal::at(&path).load().unwrap_err();
            assert!(err.0.contains(why), "{damaged}: {err}");
            // Left as it was.
            assert_eq!(std::fs::read_to_string(&path).unwrap(), damaged);
        }
    }
}
