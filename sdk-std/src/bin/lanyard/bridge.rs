//! `lanyard bridge`: a serial (or TCP) device's framed link to MQTT.

use super::*;

pub(crate) async fn bridge(
    broker: &BrokerArgs,
    tcp: Option<String>,
    serial: Option<PathBuf>,
    device_id: Option<String>,
    tenant: Option<String>,
    fog: Option<lanyard_std::fog::FogConfig>,
    BridgeClaim { state_dir, claim }: BridgeClaim,
) -> Result<(), String> {
    use lanyard_std::bridge::Bridge;
    // Connected as the device when its id is known, so the broker's ACL
    // treats the bridge as the device it carries.
    let client_id = device_id
        .clone()
        .unwrap_or_else(|| format!("lanyard-bridge-{}", std::process::id()));
    let mut config = broker.mqtt(&client_id)?;
    // The device's identity, as the ACL knows it (`{tenant}/{id}` or `{id}`).
    config.username = device_id.as_ref().map(|d| match &tenant {
        Some(t) => format!("{t}/{d}"),
        None => d.clone(),
    });
    // By claim: the gateway holds the device's key and certificate for it
    // (the device on the link has no TLS of its own), gets them the way a
    // device does, and renews them.
    let mut renewal = None;
    if claim.claim_cert.is_some() {
        let (Some(id), Some(dir)) = (device_id.as_deref(), state_dir.as_deref()) else {
            return Err("--claim-cert on a bridge needs --device-id and --state-dir".into());
        };
        if tenant.is_some() {
            return Err("provisioning by claim is for devices in the shared namespace".into());
        }
        let key = lanyard_std::data_key::DataKey::at(lanyard_std::data_key::default_path(dir));
        renewal =
            super::credentials::by_claim(broker, &claim, &mut config, dir, key, id, id).await?;
    }
    let transport = MqttTransport::connect(config);
    if let Some(r) = renewal {
        super::credentials::keep_renewed(r, transport.credential_switch());
    }
    let mut bridge = Bridge::new(transport);
    if let Some(t) = &tenant {
        bridge = bridge.with_tenant(t).map_err(|e| e.to_string())?;
    }
    if let Some(f) = fog {
        bridge = bridge.with_fog(f);
    }
    if let Some(id) = device_id.as_deref() {
        bridge.adopt_device(id).await.map_err(|e| e.to_string())?;
    }
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let stats = if let Some(addr) = tcp {
        let stream = lanyard_std::bridge::connect_tcp(&addr, Duration::from_secs(30))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        println!("bridging {addr} to {}", broker.url()?);
        bridge.run(stream, stop).await
    } else if let Some(path) = serial {
        let port = lanyard_std::bridge::open_serial(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("bridging {} to {}", path.display(), broker.url()?);
        bridge.run(port, stop).await
    } else {
        return Err("--tcp or --serial is required".into());
    };
    let stats = stats.map_err(|e| e.to_string())?;
    println!(
        "bridge stopped: {} to the cloud, {} to the device, {} bad frames",
        stats.to_cloud,
        stats.to_device,
        stats.bad_envelopes + stats.misdirected
    );
    if fog.is_some() {
        let f = stats.fog;
        println!(
            "fog tier: {} readings ({} B) sent as {} summaries ({} B): {:.0} % fewer messages, \
             {:.0} % fewer bytes",
            f.readings,
            f.bytes_in,
            f.summaries,
            f.bytes_out,
            f.message_reduction() * 100.0,
            f.byte_reduction() * 100.0
        );
    }
    Ok(())
}
