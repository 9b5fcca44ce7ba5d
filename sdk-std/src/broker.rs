//! An MQTT broker in the process (rumqttd), so the demo needs nothing
//! installed. Tests use a real mosquitto instead.

use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Starts rumqttd on `127.0.0.1:port` in a background thread and waits
/// until it accepts connections.
pub fn start_embedded(port: u16, max_connections: usize) -> Result<(), String> {
    let config = serde_json::json!({
        "id": 0,
        "router": {
            "id": 0,
            "max_connections": max_connections + 16,
            "max_outgoing_packet_count": 1000,
            "max_segment_size": 104_857_600,
            "max_segment_count": 10,
        },
        "v4": {
            "1": {
                "name": "lanyard-demo",
                "listen": format!("127.0.0.1:{port}"),
                "next_connection_delay_ms": 0,
                "connections": {
                    "connection_timeout_ms": 60_000,
                    "max_payload_size": 262_144,
                    "max_inflight_count": 500,
                    "dynamic_filters": true,
                },
            },
        },
    });
    let config: rumqttd::Config =
        serde_json::from_value(config).map_err(|e| format!("broker configuration: {e}"))?;
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("embedded broker did not open port {port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A free loopback port.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
