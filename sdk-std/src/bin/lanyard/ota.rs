//! `lanyard ota ...`: the fleet's update signing key, signed releases, and
//! rolling a release out to devices in stages.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::Subcommand;
use lanyard_std::ota::journal::{Resumed, RolloutJournal};
use lanyard_std::ota::{
    FirmwareServer, Release, Rollout, RolloutControl, RolloutPlan, RolloutRun, RolloutState,
    drive_rollout,
};

use lanyard_core::update::messages::UpdateReason;

use super::BrokerArgs;

/// Firmware updates.
#[derive(Subcommand)]
pub(crate) enum OtaCmd {
    /// Makes the fleet's update signing key: OUT.key (secret, mode 0600:
    /// keep it on the operator's side) and OUT.pub (give it to devices,
    /// `lanyard device --update-key`).
    Keygen {
        /// Writes OUT.key and OUT.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Signs an image as a release (a directory: job.cbor and image.bin).
    Sign {
        /// The signing key (`lanyard ota keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The image.
        #[arg(long)]
        image: PathBuf,
        /// Its version (newer than what devices run).
        #[arg(long)]
        version: String,
        /// The job's id.
        #[arg(long)]
        job: String,
        /// Block size in bytes (1 to 4096).
        #[arg(long, default_value_t = 1024)]
        block_size: u16,
        /// The release directory to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Rolls a release out to devices in stages, serving its blocks, until
    /// every device accepted it or the rollout aborts by its criteria (then
    /// the exit status is 1 and the rest of the fleet stays on its version).
    /// While it runs, SIGUSR1 pauses it (devices under way go on), SIGUSR2
    /// resumes it, and Ctrl-C cancels it.
    Rollout {
        #[command(flatten)]
        broker: BrokerArgs,
        /// The release (`lanyard ota sign`).
        #[arg(long)]
        release: PathBuf,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        plan: PlanArgs,
        /// The rollout's journal (default: `rollout.json` in the release's
        /// directory): what it offered and what devices reported, written
        /// after every change. Started again after it stopped, the rollout
        /// goes on from there (its devices and plan are the journal's).
        #[arg(long)]
        journal: Option<PathBuf>,
    },
    /// Hands a release to the twin host's rollout service (`lanyard twin
    /// --rollouts`), which rolls it out in stages and serves its blocks:
    /// the rollout goes on there whatever becomes of this command. Follows
    /// it to its end (exit status 1 if it aborts), or with --detach returns
    /// once it has started. Ctrl-C stops following, not the rollout.
    Start {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        operator: OperatorArgs,
        /// The release (`lanyard ota sign`).
        #[arg(long)]
        release: PathBuf,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        plan: PlanArgs,
        /// Return once the rollout has started.
        #[arg(long)]
        detach: bool,
    },
    /// Stops offering a rollout's release (the twin host's; devices under
    /// way go on).
    Pause(RolloutJob),
    /// Goes on offering a paused rollout's release.
    Resume(RolloutJob),
    /// Stops a rollout for good; its devices under way are told.
    Cancel(RolloutJob),
    /// Where a rollout the twin host runs (or ran) stands.
    Status(RolloutJob),
}

/// A rollout the twin host's rollout service runs, by its job id.
#[derive(clap::Args)]
pub(crate) struct RolloutJob {
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    operator: OperatorArgs,
    /// The release's job id.
    job: String,
}

/// Who asks the rollout service.
#[derive(clap::Args)]
pub(crate) struct OperatorArgs {
    /// The operator identity the requests name
    /// (`.../ota/request/by/{identity}`): the one the broker's ACL and
    /// the twin host's `--operators` know (with mutual TLS, the
    /// certificate's name), and the rollouts' audit log records. The MQTT
    /// client id is made from it, one per process, so that a `start`
    /// following its rollout and a `pause` beside it keep their sessions.
    #[arg(long, default_value = "lanyard-operator")]
    operator: String,
}

/// Who a new rollout targets.
#[derive(clap::Args)]
pub(crate) struct Target {
    /// The devices, in the order they are offered it.
    #[arg(long, value_delimiter = ',', required_unless_present = "all")]
    devices: Vec<String>,
    /// Only the devices (of `--devices` or `--all`) whose last
    /// registration named this firmware version: a group by what it
    /// runs, from the twin host's fleet listing.
    #[arg(long)]
    running: Option<String>,
    /// Every device the twin host knows (not decommissioned), in the
    /// order of their names.
    #[arg(long, conflicts_with = "devices")]
    all: bool,
}

/// A new rollout's stages and abort criteria.
#[derive(clap::Args)]
pub(crate) struct PlanArgs {
    /// The share of devices offered by the end of each stage, percent.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
    stages: Vec<f64>,
    /// Stages at an exponential rate instead: FIRST percent, then each
    /// stage FACTOR times the last, up to 100 (e.g. `1,4`).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "FIRST,FACTOR",
        conflicts_with = "stages"
    )]
    exponential: Option<Vec<f64>>,
    /// The share of a stage's devices that must have accepted before the
    /// next stage opens, percent.
    #[arg(long, default_value_t = 90.0)]
    advance_when_pct: f64,
    /// Device failures that abort the rollout at once, whatever the
    /// failure share (reasons as devices report them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bad_signature,digest_mismatch"
    )]
    abort_on: Vec<String>,
    /// Abort when more than this share of finished devices failed,
    /// percent.
    #[arg(long, default_value_t = 10.0)]
    max_failure_pct: f64,
    /// Devices that must have finished before the failure share counts.
    #[arg(long, default_value_t = 1)]
    min_finished: usize,
    /// A device that has not accepted this long after its offer failed.
    #[arg(long, default_value_t = 3600)]
    device_timeout_secs: u64,
}

use lanyard_std::hex::to_hex as hex;

/// Hex text (a key file) as bytes.
pub(crate) fn unhex(text: &str, what: &str) -> Result<Vec<u8>, String> {
    lanyard_std::hex::parse_hex(text).map_err(|e| format!("{what}: not hex ({e})"))
}

/// The fleet's update verification key from a `.pub` file or hex.
pub(crate) fn public_key(given: &str) -> Result<[u8; 32], String> {
    let text = if Path::new(given).exists() {
        std::fs::read_to_string(given).map_err(|e| format!("{given}: {e}"))?
    } else {
        given.to_owned()
    };
    unhex(&text, "--update-key")?
        .try_into()
        .map_err(|_| "--update-key: 32 bytes (64 hex digits) expected".to_owned())
}

fn with_ext(out: &Path, ext: &str) -> PathBuf {
    let mut p = out.to_path_buf().into_os_string();
    p.push(ext);
    PathBuf::from(p)
}

pub(crate) async fn ota(what: OtaCmd) -> Result<(), String> {
    match what {
        OtaCmd::Keygen { out } => {
            let pair = ed25519_compact::KeyPair::generate();
            let (key, public) = (with_ext(&out, ".key"), with_ext(&out, ".pub"));
            if key.exists() {
                return Err(format!(
                    "{} exists: a signing key is made once",
                    key.display()
                ));
            }
            lanyard_std::store::write_private(&key, hex(&pair.sk[..]).as_bytes())
                .map_err(|e| format!("{}: {e}", key.display()))?;
            lanyard_std::store::write_atomic(&public, hex(&pair.pk[..]).as_bytes())
                .map_err(|e| format!("{}: {e}", public.display()))?;
            println!(
                "{} (keep it here) and {} (for devices)",
                key.display(),
                public.display()
            );
            Ok(())
        }
        OtaCmd::Sign {
            key,
            image,
            version,
            job,
            block_size,
            out,
        } => {
            let text =
                std::fs::read_to_string(&key).map_err(|e| format!("{}: {e}", key.display()))?;
            let sk = ed25519_compact::SecretKey::from_slice(&unhex(&text, "--key")?)
                .map_err(|e| format!("--key: {e}"))?;
            let bytes = std::fs::read(&image).map_err(|e| format!("{}: {e}", image.display()))?;
            let release =
                Release::sign(&job, &version, bytes, block_size, &sk).map_err(|e| e.to_string())?;
            release
                .save(&out)
                .map_err(|e| format!("{}: {e}", out.display()))?;
            println!(
                "release {job}: version {version}, {} bytes in {} blocks, sha256 {}, in {}",
                release.image.len(),
                release.job().blocks(),
                hex(&release.sha256),
                out.display()
            );
            Ok(())
        }
        OtaCmd::Rollout {
            broker,
            release,
            target,
            plan,
            journal,
        } => {
            let journal_path = journal.unwrap_or_else(|| release.join("rollout.json"));
            let release = Release::load(&release).map_err(|e| e.to_string())?;
            let job_id = release.job_id.clone();
            let mut journal = RolloutJournal::at(&journal_path);
            let resumed = journal.load().map_err(|e| {
                format!("{e} (the rollout's journal: repair it, or give another --journal)")
            })?;
            let (rollout, restored) = match resumed {
                Some(r) => {
                    resuming(&r, &job_id, &journal_path)?;
                    (r.rollout, r.progress)
                }
                None => (
                    new_rollout(&broker, &job_id, target, plan).await?,
                    Vec::new(),
                ),
            };
            let transport = lanyard_std::mqtt::MqttTransport::connect_and_wait(
                broker.mqtt("lanyard-ota")?,
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|e| format!("firmware server: {e}"))?;
            let run = RolloutRun::start(transport, release, rollout, restored, Some(journal));
            operate(run, &job_id).await
        }
        OtaCmd::Start {
            broker,
            operator,
            release,
            target,
            plan,
            detach,
        } => {
            let release = Release::load(&release).map_err(|e| e.to_string())?;
            let job_id = release.job_id.clone();
            let rollout = new_rollout(&broker, &job_id, target, plan).await?;
            let app = operator_app(&broker, &operator).await?;
            let started = app
                .start_rollout(
                    &release,
                    rollout.devices().to_vec(),
                    rollout.plan(),
                    ASK_TIMEOUT,
                )
                .await
                .map_err(|e| {
                    format!("rollout {job_id} (is a twin host running with --rollouts?): {e}")
                })?;
            println!(
                "{job_id} handed to the twin host's rollout service ({} bytes, {} devices)",
                release.image.len(),
                rollout.devices().len()
            );
            println!("{job_id} {}", progress_line(&started.state, &started.view));
            if detach {
                return Ok(());
            }
            follow(&app, &job_id).await
        }
        OtaCmd::Pause(r) => control(r, Some(RolloutControl::Pause)).await,
        OtaCmd::Resume(r) => control(r, Some(RolloutControl::Resume)).await,
        OtaCmd::Cancel(r) => control(r, Some(RolloutControl::Cancel)).await,
        OtaCmd::Status(r) => control(r, None).await,
    }
}

/// How long a request to the rollout service waits for its answer.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An operator's client of the twin host.
async fn operator_app(
    broker: &BrokerArgs,
    operator: &OperatorArgs,
) -> Result<lanyard_std::app::AppClient, String> {
    let client_id = format!("{}-ota-{}", operator.operator, std::process::id());
    let transport = lanyard_std::mqtt::MqttTransport::connect_and_wait(
        broker.mqtt(&client_id)?,
        std::time::Duration::from_secs(10),
    )
    .await
    .map_err(|e| format!("broker: {e}"))?;
    lanyard_std::app::AppClient::new(transport)
        .await
        .map_err(|e| e.to_string())?
        .as_operator(&operator.operator)
}

/// `lanyard ota pause / resume / cancel JOB` (`control`), or `status JOB`
/// (`None`): what the rollout service says of it afterwards.
async fn control(r: RolloutJob, control: Option<RolloutControl>) -> Result<(), String> {
    let app = operator_app(&r.broker, &r.operator).await?;
    let job = &r.job;
    let answer = match control {
        Some(RolloutControl::Pause) => app.pause_rollout(job, ASK_TIMEOUT).await,
        Some(RolloutControl::Resume) => app.resume_rollout(job, ASK_TIMEOUT).await,
        Some(RolloutControl::Cancel) => app.cancel_rollout(job, ASK_TIMEOUT).await,
        None => app.rollout_status(job, ASK_TIMEOUT).await,
    }
    .map_err(|e| format!("rollout {job}: {e}"))?;
    println!("{job} {}", progress_line(&answer.state, &answer.view));
    Ok(())
}

/// Prints rollout `job`'s progress as it changes (asking every half
/// second) until it ends; its outcome. Ctrl-C stops following only.
async fn follow(app: &lanyard_std::app::AppClient, job: &str) -> Result<(), String> {
    let mut last = String::new();
    loop {
        let now = tokio::select! {
            p = app.rollout_status(job, ASK_TIMEOUT) => p.map_err(|e| format!("rollout {job}: {e}"))?,
            _ = tokio::signal::ctrl_c() => {
                println!("{job}: no longer followed; it goes on at the twin host (lanyard ota status {job})");
                return Ok(());
            }
        };
        let line = progress_line(&now.state, &now.view);
        if line != last {
            println!("{job} {line}");
            last = line;
        }
        if !now.state.is_under_way() {
            return ended(now.state, job);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Follows a rollout run to its end, printing the devices by state as they
/// change: Ctrl-C cancels it, SIGUSR1 pauses it, SIGUSR2 resumes it. `Err`
/// says why it did not complete.
async fn operate(run: RolloutRun, job_id: &str) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut pause = signal(SignalKind::user_defined1()).map_err(|e| e.to_string())?;
    let mut resume = signal(SignalKind::user_defined2()).map_err(|e| e.to_string())?;
    let mut progress = run.progress();
    let mut cancelled = false;
    loop {
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    break;
                }
                let p = progress.borrow_and_update().clone();
                println!("{job_id} {}", progress_line(&p.state, &p.view));
            }
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                run.cancel();
            }
            _ = pause.recv() => run.pause(),
            _ = resume.recv() => run.resume(),
        }
    }
    ended(run.wait().await?, job_id)
}

/// A rollout's state and devices, as `lanyard ota rollout` prints them.
fn progress_line(state: &RolloutState, v: &lanyard_std::ota::RolloutView) -> String {
    format!(
        "{state:?}: {} waiting, {} in progress, {} succeeded, {} failed",
        v.waiting, v.in_progress, v.succeeded, v.failed
    )
}

/// How a rollout ended, as the command's outcome.
fn ended(state: RolloutState, job_id: &str) -> Result<(), String> {
    match state {
        RolloutState::Completed => Ok(()),
        RolloutState::Aborted(why) => Err(format!("rollout {job_id} aborted: {why}")),
        _ => Err(format!("rollout {job_id} cancelled")),
    }
}

/// Whether a rollout taken back from its journal can go on: it is this
/// release's and has not ended. Says what it goes on from.
fn resuming(r: &Resumed, job_id: &str, journal: &Path) -> Result<(), String> {
    let rollout = &r.rollout;
    if rollout.job_id() != job_id {
        return Err(format!(
            "the journal {} is of rollout {}, not {job_id}: give this one another --journal",
            journal.display(),
            rollout.job_id()
        ));
    }
    if !rollout.state().is_under_way() {
        return Err(format!(
            "rollout {job_id} has ended ({:?}, says its journal {}); to roll the release out \
             again, give another --journal",
            rollout.state(),
            journal.display()
        ));
    }
    let view = rollout.view(0, |d| {
        r.progress.iter().find(|(x, _)| x == d).map(|(_, p)| p)
    });
    println!(
        "{job_id} resuming from its journal {}: {} of {} devices offered ({} succeeded, {} \
         failed); the devices and the plan are the journal's",
        journal.display(),
        view.in_progress + view.succeeded + view.failed,
        view.waiting + view.in_progress + view.succeeded + view.failed,
        view.succeeded,
        view.failed
    );
    Ok(())
}

/// A new rollout of `job_id`: its devices (the twin host's listing for
/// `--all` and `--running`) and its plan, checked.
async fn new_rollout(
    broker: &BrokerArgs,
    job_id: &str,
    target: Target,
    args: PlanArgs,
) -> Result<Rollout, String> {
    let Target {
        mut devices,
        running,
        all,
    } = target;
    let PlanArgs {
        stages,
        exponential,
        advance_when_pct,
        abort_on,
        max_failure_pct,
        min_finished,
        device_timeout_secs,
    } = args;
    if stages.is_empty()
        || stages.windows(2).any(|w| w[1] <= w[0])
        || stages.iter().any(|s| !(*s > 0.0 && *s <= 100.0))
        || stages.last() != Some(&100.0)
    {
        return Err("--stages: growing percentages ending at 100".into());
    }
    if all || running.is_some() {
        let app = lanyard_std::app::AppClient::new(
            lanyard_std::mqtt::MqttTransport::connect_and_wait(
                broker.mqtt("lanyard-ota-list")?,
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|e| format!("fleet listing: {e}"))?,
        )
        .await
        .map_err(|e| e.to_string())?;
        let fleet = app
            .devices_running(running.as_deref(), std::time::Duration::from_secs(10))
            .await
            .map_err(|e| format!("fleet listing (is a twin host running?): {e}"))?;
        if all {
            devices = fleet;
        } else {
            // The order given stays.
            devices.retain(|d| fleet.contains(d));
        }
        if devices.is_empty() {
            return Err(match &running {
                Some(v) => format!("no device the twin host knows runs {v}"),
                None => "the twin host knows no device".into(),
            });
        }
    }
    for d in &devices {
        if !lanyard_core::topic::valid_device_id(d) {
            return Err(format!("--devices: {d:?} is not a device id"));
        }
    }
    let mut plan = match exponential.as_deref() {
        Some(&[first, factor]) => {
            if !(first > 0.0 && first <= 100.0 && factor > 1.0 && factor.is_finite()) {
                return Err("--exponential: FIRST in (0, 100] percent, FACTOR above 1".into());
            }
            RolloutPlan::exponential(first / 100.0, factor)
        }
        Some(_) => return Err("--exponential: FIRST,FACTOR (e.g. 1,4)".into()),
        None => {
            let mut plan = RolloutPlan::staged();
            plan.stages = stages.iter().map(|s| s / 100.0).collect();
            plan
        }
    };
    if !(advance_when_pct > 0.0 && advance_when_pct <= 100.0) {
        return Err("--advance-when-pct: in (0, 100]".into());
    }
    plan.advance_when = advance_when_pct / 100.0;
    plan.abort.abort_on = abort_on
        .iter()
        .map(|n| {
            UpdateReason::named(n).ok_or_else(|| {
                let names: Vec<&str> = UpdateReason::ALL.iter().map(|r| r.name()).collect();
                format!("--abort-on: {n:?} is none of {}", names.join(", "))
            })
        })
        .collect::<Result<_, String>>()?;
    plan.abort.max_failure_rate = max_failure_pct / 100.0;
    plan.abort.min_finished = min_finished;
    plan.device_timeout_ms = device_timeout_secs.saturating_mul(1000);
    Ok(Rollout::new(job_id, devices, plan))
}

/// Runs `rollout` over `server` (shared with the demo's devices) until it
/// completes or aborts, printing the devices by state as they change.
/// `Err` says why it did not complete.
pub(crate) async fn drive(
    server: &Arc<Mutex<FirmwareServer>>,
    offers: &tokio::sync::mpsc::UnboundedSender<lanyard_std::ota::Publish>,
    rollout: Rollout,
) -> Result<(), String> {
    let job_id = rollout.job_id().to_owned();
    // Nobody controls the demo's rollouts: the channel closes at once.
    let (_, mut controlled) = tokio::sync::mpsc::unbounded_channel();
    let mut last = String::new();
    let state = drive_rollout(server, offers, rollout, &mut controlled, None, |r, v| {
        let line = progress_line(r.state(), v);
        if line != last {
            println!("{} {line}", r.job_id());
            last = line;
        }
    })
    .await?;
    ended(state, &job_id)
}
