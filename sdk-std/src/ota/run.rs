//! A rollout run in the background of an application: the firmware server
//! on its own connection to the broker, the rollout driven to its end, and
//! a handle to pause, resume or cancel it and to watch its progress. What
//! `lanyard ota rollout` runs; an application that rolls out releases
//! itself does the same in a few lines.
//!
//! ```no_run
//! # async fn roll(app: &lanyard_std::app::AppClient) -> Result<(), Box<dyn std::error::Error>> {
//! use lanyard_std::mqtt::{MqttConfig, MqttTransport};
//! use lanyard_std::ota::{Release, Rollout, RolloutPlan, RolloutRun};
//! use std::time::Duration;
//!
//! let release = Release::load("releases/fw-2".as_ref())?;
//! // Every device the twin host knows that runs 1.0.0.
//! let devices = app.devices_running(Some("1.0.0"), Duration::from_secs(10)).await?;
//! let rollout = Rollout::new(&release.job_id, devices, RolloutPlan::staged());
//! let broker = MqttConfig::new("127.0.0.1", 1883, "my-rollouts");
//! let transport = MqttTransport::connect_and_wait(broker, Duration::from_secs(10)).await?;
//! let run = RolloutRun::start(transport, release, rollout, Vec::new(), None);
//! let mut progress = run.progress();
//! while progress.changed().await.is_ok() {
//!     let now = progress.borrow().clone();
//!     println!("{:?}: {} succeeded", now.state, now.view.succeeded);
//! }
//! let ended = run.wait().await?;
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use super::journal::RolloutJournal;
use super::{
    DeviceProgress, FirmwareServer, Release, Rollout, RolloutControl, RolloutState, RolloutView,
    drive_rollout, run_firmware_server,
};
use crate::transport::Transport;

/// Where a running rollout stands, after its last step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutProgress {
    /// Its state.
    pub state: RolloutState,
    /// Its devices by where they stand.
    pub view: RolloutView,
}

/// A rollout running in the background. See the [module](self).
#[derive(Debug)]
pub struct RolloutRun {
    control: mpsc::UnboundedSender<RolloutControl>,
    progress: watch::Receiver<RolloutProgress>,
    task: tokio::task::JoinHandle<Result<RolloutState, String>>,
}

impl RolloutRun {
    /// Starts rolling `release` out by `rollout`: the firmware server on
    /// `transport` (a connection of its own), the devices in `finished`
    /// counted as they finished (from a [journal](super::journal)), every
    /// change written to `journal` if given. Must be called within a tokio
    /// runtime.
    pub fn start<T: Transport + Send + 'static>(
        mut transport: T,
        release: Release,
        rollout: Rollout,
        finished: Vec<(String, DeviceProgress)>,
        journal: Option<RolloutJournal>,
    ) -> Self {
        let server = Arc::new(Mutex::new(FirmwareServer::new()));
        {
            let mut s = server.lock().expect("firmware server");
            s.add(release);
            for (device, progress) in finished {
                s.restore_progress(&device, progress);
            }
        }
        let (control, mut controlled) = mpsc::unbounded_channel();
        let (report, progress) = watch::channel(RolloutProgress {
            state: rollout.state().clone(),
            view: RolloutView::default(),
        });
        let task = tokio::spawn(async move {
            let (offers, offers_rx) = mpsc::unbounded_channel();
            let (stop, stopped) = oneshot::channel::<()>();
            let shared = server.clone();
            let serving = tokio::spawn(async move {
                run_firmware_server(shared, &mut transport, offers_rx, async {
                    let _ = stopped.await;
                })
                .await
            });
            let mut journal = journal;
            let ended = drive_rollout(
                &server,
                &offers,
                rollout,
                &mut controlled,
                journal.as_mut(),
                |r, v| {
                    let now = RolloutProgress {
                        state: r.state().clone(),
                        view: v.clone(),
                    };
                    report.send_if_modified(|p| {
                        let changed = *p != now;
                        *p = now;
                        changed
                    });
                },
            )
            .await;
            if matches!(ended, Ok(RolloutState::Cancelled)) {
                // The cancellations go out before the server stops.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            let _ = stop.send(());
            match serving.await {
                Ok(Err(e)) if ended.is_err() => Err(format!("firmware server: {e}")),
                _ => ended,
            }
        });
        RolloutRun {
            control,
            progress,
            task,
        }
    }

    /// Stops offering the release (devices under way go on).
    pub fn pause(&self) {
        let _ = self.control.send(RolloutControl::Pause);
    }

    /// Goes on offering it.
    pub fn resume(&self) {
        let _ = self.control.send(RolloutControl::Resume);
    }

    /// Stops for good; devices offered and not finished are told to drop
    /// the job.
    pub fn cancel(&self) {
        let _ = self.control.send(RolloutControl::Cancel);
    }

    /// Its progress, changed after every step that changed it; the sender
    /// is gone (`changed` fails) once the rollout has ended.
    pub fn progress(&self) -> watch::Receiver<RolloutProgress> {
        self.progress.clone()
    }

    /// Whether it has not ended, after its last step.
    pub fn is_under_way(&self) -> bool {
        self.progress.borrow().state.is_under_way()
    }

    /// Waits for the end: completed, aborted by its criteria, or
    /// cancelled. `Err` says why it stopped otherwise (the connection to
    /// the broker, the journal).
    pub async fn wait(self) -> Result<RolloutState, String> {
        self.task
            .await
            .unwrap_or_else(|e| Err(format!("the rollout's task failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::RolloutPlan;
    use crate::transport::{MemoryBroker, Qos, TransportEvent};
    use lanyard_core::update::messages::{UpdateReport, UpdateState, UpdateTopic};

    /// `device`'s report that it accepted job `fw-9`, sent on `t`.
    async fn accepted(t: &mut impl Transport, device: &str) {
        let report = UpdateReport {
            job_id: "fw-9",
            state: UpdateState::Accepted,
            received: 4,
            total: 4,
            reason: None,
            time_ms: 0,
        };
        let mut buf = [0u8; 128];
        let n = report.encode(&mut buf).unwrap();
        let topic = UpdateTopic::Report.topic(device).to_string();
        t.publish(&topic, &buf[..n], Qos::AtLeastOnce)
            .await
            .unwrap();
    }

    /// Devices that accept a job as soon as it is offered, on `broker`.
    async fn accepting_devices(broker: &MemoryBroker) {
        let mut t = broker.connect();
        t.subscribe(&format!(
            "{}+/{}",
            lanyard_core::topic::TOPIC_PREFIX,
            UpdateTopic::Job.suffix()
        ))
        .await
        .unwrap();
        tokio::spawn(async move {
            while let Ok(ev) = t.recv().await {
                let TransportEvent::Message { topic, .. } = ev else {
                    continue;
                };
                let Some((device, _)) = UpdateTopic::parse(&topic) else {
                    continue;
                };
                accepted(&mut t, device).await;
            }
        });
    }

    #[tokio::test]
    async fn a_run_reports_its_progress_and_ends_when_every_stage_accepted() {
        let key = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([5; 32]));
        let release = Release::sign("fw-9", "2.0.0", vec![7; 4096], 1024, &key.sk).unwrap();
        let broker = MemoryBroker::new();
        accepting_devices(&broker).await;
        let devices: Vec<String> = (1..=4).map(|i| format!("ly-02000000000{i}")).collect();
        let mut plan = RolloutPlan::staged();
        plan.stages = vec![0.25, 0.5, 1.0];
        let run = RolloutRun::start(
            broker.connect(),
            release,
            Rollout::new("fw-9", devices, plan),
            Vec::new(),
            None,
        );
        let mut progress = run.progress();
        let mut stages = Vec::new();
        while progress.changed().await.is_ok() {
            let p = progress.borrow().clone();
            if let RolloutState::Running(s) = p.state
                && stages.last() != Some(&s)
            {
                stages.push(s);
            }
        }
        assert_eq!(run.wait().await, Ok(RolloutState::Completed));
        assert_eq!(stages, [0, 1, 2], "each stage opened in turn");
        let last = progress.borrow().clone();
        assert_eq!(last.state, RolloutState::Completed);
        assert_eq!(last.view.succeeded, 4);
    }

    #[tokio::test]
    async fn a_paused_run_offers_nothing_until_resumed_and_a_cancelled_one_ends() {
        let key = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([6; 32]));
        let release = Release::sign("fw-9", "2.0.0", vec![7; 4096], 1024, &key.sk).unwrap();
        let broker = MemoryBroker::new();
        // The offers, as the devices would see them.
        let mut offers = broker.connect();
        offers
            .subscribe(&format!(
                "{}+/{}",
                lanyard_core::topic::TOPIC_PREFIX,
                UpdateTopic::Job.suffix()
            ))
            .await
            .unwrap();
        let devices: Vec<String> = (1..=4).map(|i| format!("ly-02000000000{i}")).collect();
        let mut plan = RolloutPlan::staged();
        plan.stages = vec![0.25, 1.0];
        let run = RolloutRun::start(
            broker.connect(),
            release,
            Rollout::new("fw-9", devices.clone(), plan),
            Vec::new(),
            None,
        );
        let mut progress = run.progress();
        progress
            .wait_for(|p| p.view.in_progress == 1)
            .await
            .unwrap();
        run.pause();
        progress
            .wait_for(|p| p.state == RolloutState::Paused(0))
            .await
            .unwrap();
        // The first device accepts while the run is paused: nothing more
        // is offered.
        accepted(&mut broker.connect(), &devices[0]).await;
        progress.wait_for(|p| p.view.succeeded == 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert_eq!(progress.borrow().view.waiting, 3, "offered while paused");
        let mut offered = Vec::new();
        while let Ok(Ok(TransportEvent::Message { topic, .. })) =
            tokio::time::timeout(std::time::Duration::from_millis(50), offers.recv()).await
        {
            offered.push(topic);
        }
        assert_eq!(offered, [UpdateTopic::Job.topic(&devices[0]).to_string()]);
        // Resumed: the other three.
        run.resume();
        progress.wait_for(|p| p.view.waiting == 0).await.unwrap();
        run.cancel();
        assert_eq!(run.wait().await, Ok(RolloutState::Cancelled));
    }
}
