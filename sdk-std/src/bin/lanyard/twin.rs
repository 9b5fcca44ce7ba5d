//! `lanyard twin`: the twin host on a broker.

use super::*;

pub(crate) async fn twin(
    broker: &BrokerArgs,
    state_dir: PathBuf,
    tenants: Vec<String>,
    fleet: DeviceConfig,
    limits: TwinLimits,
    metrics: Option<Metrics>,
) -> Result<(), String> {
    let mut twin = TwinHost::open(&state_dir, fleet)
        .map_err(|e| format!("{}: {e}", state_dir.display()))?
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
