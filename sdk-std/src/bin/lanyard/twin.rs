//! `lanyard twin`: the twin host on a broker.

use super::*;

pub(crate) async fn twin(
    broker: &BrokerArgs,
    store: TwinStore,
    tenants: Vec<String>,
    fleet: DeviceConfig,
    limits: TwinLimits,
    metrics: Option<Metrics>,
) -> Result<(), String> {
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
    }
    .with_limits(limits);
    if let Some(m) = metrics {
        twin = twin.with_metrics(m);
    }
    if !tenants.is_empty() {
        let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
        twin = twin.with_tenants(&names).map_err(|e| e.to_string())?;
    }
    let mut transport = MqttTransport::connect(broker.mqtt("lanyard-twin")?);
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

/// Where `lanyard twin` keeps its shadows.
pub(crate) enum TwinStore {
    /// A directory of files.
    Dir(PathBuf),
    /// An SQLite database, first filled from a directory if given.
    Sqlite {
        db: PathBuf,
        import_dir: Option<PathBuf>,
    },
}
