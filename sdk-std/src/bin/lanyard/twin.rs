//! `lanyard twin`: the twin host on a broker.

use super::*;
use std::path::Path;

/// What `lanyard twin` was asked to run.
pub(crate) struct TwinSetup {
    pub(crate) store: TwinStore,
    pub(crate) audit: Option<PathBuf>,
    pub(crate) missed_heartbeats: u32,
    pub(crate) share_group: Option<String>,
    pub(crate) client_id: String,
    pub(crate) tenants: Vec<String>,
    pub(crate) fleet: DeviceConfig,
    pub(crate) limits: TwinLimits,
    pub(crate) policies: lanyard_core::shadow::FleetPolicies,
    pub(crate) operators: Vec<String>,
    pub(crate) rollouts: Option<PathBuf>,
}

pub(crate) async fn twin(
    broker: &BrokerArgs,
    setup: TwinSetup,
    metrics: Option<Metrics>,
) -> Result<(), String> {
    let TwinSetup {
        store,
        audit,
        missed_heartbeats,
        share_group,
        client_id,
        tenants,
        fleet,
        limits,
        policies,
        operators,
        rollouts,
    } = setup;
    let mut twin = match store {
        TwinStore::Dir(dir) => {
            TwinHost::open(&dir, fleet).map_err(|e| format!("{}: {e}", dir.display()))?
        }
        TwinStore::Sqlite { db, import_dir } => {
            let mut store = lanyard_std::twin::SqliteStore::open(&db)
                .map_err(|e| format!("{}: {e}", db.display()))?;
            if let Some(dir) = import_dir {
                let n = store
                    .import_dir(&dir)
                    .map_err(|e| format!("--import-dir {}: {e}", dir.display()))?;
                println!("imported {n} shadows from {}", dir.display());
            }
            TwinHost::with_store(Box::new(store), fleet)
                .map_err(|e| format!("{}: {e}", db.display()))?
        }
        TwinStore::StateDir(dir) => {
            let db = dir.join("twin.db");
            let first = !db.exists();
            let mut store = lanyard_std::twin::SqliteStore::open(&db)
                .map_err(|e| format!("{}: {e}", db.display()))?;
            if first {
                let n = import_files(&mut store, &dir)?;
                if n > 0 {
                    println!(
                        "imported {n} shadows from the files in {} (moved to imported-files/)",
                        dir.display()
                    );
                }
            }
            TwinHost::with_store(Box::new(store), fleet)
                .map_err(|e| format!("{}: {e}", db.display()))?
        }
        TwinStore::Postgres(url) => {
            TwinHost::open_postgres(&url, fleet).map_err(|e| format!("--postgres: {e}"))?
        }
    }
    .with_limits(limits)
    .with_policies(policies)
    .with_missed_heartbeats(missed_heartbeats);
    if let Some(path) = &audit {
        twin = twin
            .with_audit(path)
            .map_err(|e| format!("audit log {}: {e}", path.display()))?;
    }
    if let Some(m) = metrics {
        twin = twin.with_metrics(m);
    }
    if !tenants.is_empty() {
        let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
        twin = twin.with_tenants(&names).map_err(|e| e.to_string())?;
    }
    if !operators.is_empty() {
        let names: Vec<&str> = operators.iter().map(String::as_str).collect();
        twin = twin.with_operators(&names);
    }
    if let Some(g) = &share_group {
        twin = twin
            .with_share_group(g)
            .map_err(|e| format!("--share-group: {e}"))?;
    }
    let mut config = broker.mqtt(&client_id)?;
    config.max_inflight = lanyard_std::mqtt::HOST_INFLIGHT;
    // The rollout service and its rollouts use the host's connection: a
    // broker that takes client ids from certificates gives one identity
    // one connection.
    let mut transport =
        lanyard_std::transport::SharedConnection::new(MqttTransport::connect(config));
    if let Some(dir) = rollouts {
        let joiner = transport.joiner();
        let service = joiner.join();
        println!("rollouts served from {}", dir.display());
        // The operators who may write desired state are those who may
        // change rollouts.
        let operators = (!operators.is_empty()).then_some(operators);
        tokio::spawn(async move {
            let stop = std::future::pending::<()>();
            let served = lanyard_std::ota::service::serve_rollouts(
                service,
                &dir,
                operators,
                move |_| joiner.join(),
                stop,
            );
            if let Err(e) = served.await {
                eprintln!("lanyard twin: {e}");
                std::process::exit(1);
            }
        });
    }
    println!(
        "twin host on {}, {} shadows loaded",
        broker.url()?,
        twin.devices().count()
    );
    run_twin(&mut twin, &mut transport, Clock::real(), true, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| e.to_string())
}

/// Takes the shadow files an earlier version kept in `dir` into the
/// database, once (when the database is new), and moves them out of the
/// way, so that a later start cannot take them in again.
fn import_files(store: &mut lanyard_std::twin::SqliteStore, dir: &Path) -> Result<usize, String> {
    let n = store
        .import_dir(dir)
        .map_err(|e| format!("importing {}: {e}", dir.display()))?;
    let moved = dir.join("imported-files");
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let ours = path
            .extension()
            .is_some_and(|e| e == "cbor" || e == "decommissioned")
            || (path.is_dir()
                && name
                    .to_str()
                    .is_some_and(lanyard_core::agent::messages::valid_tenant));
        if ours && name != "imported-files" {
            std::fs::create_dir_all(&moved).map_err(|e| format!("{}: {e}", moved.display()))?;
            std::fs::rename(&path, moved.join(&name))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(n)
}

/// Where `lanyard twin` keeps its shadows.
pub(crate) enum TwinStore {
    /// An SQLite database in a directory (the default).
    StateDir(PathBuf),
    /// A directory of files.
    Dir(PathBuf),
    /// An SQLite database, first filled from a directory if given.
    Sqlite {
        db: PathBuf,
        import_dir: Option<PathBuf>,
    },
    /// A PostgreSQL database, shared with other hosts.
    Postgres(String),
}
