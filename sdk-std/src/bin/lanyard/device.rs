//! `lanyard device`: a simulated device of the example board on a broker.

use super::*;

/// A simulated device of the example board (battery, sensors, LED) with
/// `lanyard_std::device::DeviceBuilder`.
pub(crate) fn make_device(
    mac: [u8; 6],
    broker: MqttConfig,
    state_dir: PathBuf,
    clock: Clock,
    drain_every_ms: u64,
    start_battery: u8,
) -> DeviceBuilder {
    let mut sensors =
        SimulatedSensors::new(clock.now_ms(), drain_every_ms, u64::from(mac[5]) * 7_919);
    sensors.start_battery_pct = start_battery;
    DeviceBuilder::new(mac, env!("CARGO_PKG_VERSION"), broker, state_dir)
        .clock(clock)
        .telemetry(sensors.clone())
        .commands(simulated_board(sensors.clone(), Default::default()))
        .probe(sensors)
}

pub(crate) async fn device(
    broker: &BrokerArgs,
    state_dir: PathBuf,
    mac: &str,
    tenant: Option<String>,
    metrics: Option<Metrics>,
) -> Result<(), String> {
    let clock = Clock::real();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut device = make_device(
        parse_mac(mac)?,
        broker.mqtt("")?,
        state_dir,
        clock,
        60_000,
        100,
    );
    if let Some(t) = &tenant {
        device = device.tenant(t);
    }
    // Acknowledgements and lifecycle events survive a crash of this
    // process until the broker has them (the builder's journal).
    let (driver, _handle) = device.build().map_err(|e| e.to_string())?;
    let mut driver = driver.with_events(tx);
    if let Some(m) = metrics {
        driver = driver.with_metrics(m);
    }
    let id = driver.agent().device_id().to_owned();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            if let Some(line) = timeline_line(&e) {
                println!("{id} {line}");
            }
        }
    });
    driver.start().await.map_err(|e| e.to_string())?;
    driver
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}
