//! An operator's rollouts through the rollout service that runs beside
//! the twin host (see [`crate::ota::service`]): the release is uploaded
//! in pieces, then started; a rollout under way is paused, resumed,
//! cancelled and followed by its job id.

use std::time::Duration;

use super::{AppClient, AppError};
use crate::ota::service::{
    MAX_UPLOAD_CHUNK, ProgressReport, RolloutAction, RolloutAnswer, RolloutRequest, RolloutTopic,
};
use crate::ota::{Release, RolloutPlan};

impl AppClient {
    /// Hands `release` to the rollout service and starts rolling it out to
    /// `devices` (in that order) by `plan`. The image goes in pieces of
    /// [`MAX_UPLOAD_CHUNK`] bytes, each answered before the next. Each
    /// message waits up to `timeout` for its answer. Returns the rollout's
    /// progress as it starts; [`AppError::Rejected`] says why the service
    /// refused (a job rolled out before, a device id that is not one, ...).
    pub async fn start_rollout(
        &self,
        release: &Release,
        devices: Vec<String>,
        plan: &RolloutPlan,
        timeout: Duration,
    ) -> Result<ProgressReport, AppError> {
        if let Some(d) = devices
            .iter()
            .find(|d| !lanyard_core::topic::valid_device_id(d))
        {
            return Err(AppError::BadDevice(d.clone()));
        }
        for (i, piece) in release.image.chunks(MAX_UPLOAD_CHUNK).enumerate() {
            let upload = RolloutAction::Upload {
                job: release.job_id.clone(),
                offset: (i * MAX_UPLOAD_CHUNK) as u32,
                bytes: piece.to_vec(),
            };
            self.ask_rollouts(upload, timeout).await?;
        }
        let start = RolloutAction::Start {
            job: release.job_bytes(),
            devices,
            plan: plan.clone(),
        };
        self.ask_rollouts(start, timeout)
            .await?
            .progress
            .ok_or_else(|| AppError::Rejected("the service answered without progress".into()))
    }

    /// Stops offering rollout `job`'s release (devices under way go on).
    pub async fn pause_rollout(
        &self,
        job: &str,
        timeout: Duration,
    ) -> Result<ProgressReport, AppError> {
        self.about(job, RolloutAction::Pause, timeout).await
    }

    /// Goes on offering rollout `job`'s release.
    pub async fn resume_rollout(
        &self,
        job: &str,
        timeout: Duration,
    ) -> Result<ProgressReport, AppError> {
        self.about(job, RolloutAction::Resume, timeout).await
    }

    /// Stops rollout `job` for good; its devices under way are told.
    pub async fn cancel_rollout(
        &self,
        job: &str,
        timeout: Duration,
    ) -> Result<ProgressReport, AppError> {
        self.about(job, RolloutAction::Cancel, timeout).await
    }

    /// Where rollout `job` stands (running, or ended, from its journal).
    pub async fn rollout_status(
        &self,
        job: &str,
        timeout: Duration,
    ) -> Result<ProgressReport, AppError> {
        self.about(job, RolloutAction::Status, timeout).await
    }

    /// `action` about rollout `job`: its progress afterwards.
    async fn about(
        &self,
        job: &str,
        action: fn(String) -> RolloutAction,
        timeout: Duration,
    ) -> Result<ProgressReport, AppError> {
        self.ask_rollouts(action(job.to_owned()), timeout)
            .await?
            .progress
            .ok_or_else(|| AppError::Rejected(format!("no rollout {job}")))
    }

    /// Sends `action` to the rollout service and waits up to `timeout` for
    /// its answer.
    async fn ask_rollouts(
        &self,
        action: RolloutAction,
        timeout: Duration,
    ) -> Result<RolloutAnswer, AppError> {
        let answers = RolloutTopic::Answer.topic();
        self.router.subscribe(&answers).await?;
        let token = self.operator_token();
        let request = RolloutRequest {
            token: token.clone(),
            action,
        };
        let mut waiting = self.router.wait_on([answers]);
        // With an operator identity, the request names its writer, for a
        // service that takes rollouts only from its operators.
        let topic = match self.operator_identity() {
            Some(who) => RolloutTopic::request_by(&who),
            None => RolloutTopic::Request.topic(),
        };
        self.router.publish(&topic, &request.encode()).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, payload) = waiting.next(deadline).await?;
            match RolloutAnswer::decode(&payload) {
                Some(a) if a.token == token => {
                    return match a.refused {
                        Some(why) => Err(AppError::Rejected(why)),
                        None => Ok(a),
                    };
                }
                _ => continue,
            }
        }
    }
}
