//! Mutual TLS against a real mosquitto with certificates made at test time
//! (rcgen): a client with a certificate gets through, one without is
//! refused, an expired or mismatched certificate is a clear error before any
//! connection, and a server with the wrong name is refused by the client.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Mosquitto;
use common::Pki;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::tls::{TlsError, TlsFiles};
use lanyard_std::transport::{Qos, Transport, TransportEvent};

fn broker(pki: &Pki, server_names: &[&str]) -> Mosquitto {
    let (cert, key) = pki.issue(server_names, (2020, 2100));
    let ca = pki.ca_pem.clone();
    Mosquitto::start_configured(move |dir: &Path| {
        std::fs::write(dir.join("ca.pem"), ca).unwrap();
        std::fs::write(dir.join("server.pem"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            dir.join("ca.pem").display(),
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        )
    })
}

fn config(port: u16, host: &str, id: &str, tls: &TlsFiles) -> MqttConfig {
    let mut c = MqttConfig::new(host, port, id);
    c.tls = Some(tls.to_rumqttc());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_certified_clients_in_and_keeps_others_out() {
    let pki = Pki::new();
    let broker = broker(&pki, &["localhost", "127.0.0.1"]);
    let (cert, key) = pki.issue(&["ly-0a1b2c3d4e5f"], (2020, 2100));
    let good =
        TlsFiles::from_pem(pki.ca_pem.clone().into(), Some((cert.into(), key.into()))).unwrap();

    let mut t = MqttTransport::connect_and_wait(
        config(broker.port, "localhost", "dev", &good),
        Duration::from_secs(10),
    )
    .await
    .expect("a certified client connects");
    t.subscribe("t/x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.publish("t/x", b"over tls", Qos::AtLeastOnce)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), t.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        TransportEvent::Message {
            topic: "t/x".into(),
            payload: b"over tls".to_vec()
        }
    );

    // No client certificate: the broker refuses the handshake.
    let anonymous = TlsFiles::from_pem(pki.ca_pem.clone().into(), None).unwrap();
    let refused = MqttTransport::connect_and_wait(
        config(broker.port, "localhost", "anon", &anonymous),
        Duration::from_secs(10),
    )
    .await;
    assert!(refused.is_err(), "a client without a certificate got in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_name_is_refused_by_the_client() {
    let pki = Pki::new();
    let broker = broker(&pki, &["broker.example"]);
    let (cert, key) = pki.issue(&["dev"], (2020, 2100));
    let tls =
        TlsFiles::from_pem(pki.ca_pem.clone().into(), Some((cert.into(), key.into()))).unwrap();
    let err = MqttTransport::connect_and_wait(
        config(broker.port, "localhost", "dev", &tls),
        Duration::from_secs(10),
    )
    .await
    .err()
    .expect("name mismatch refused");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("name"),
        "{text}"
    );
}

#[test]
fn expired_or_mismatched_client_certificates_are_clear_errors_before_connecting() {
    let pki = Pki::new();
    let (old, old_key) = pki.issue(&["dev"], (2001, 2002));
    let err = TlsFiles::from_pem(
        pki.ca_pem.clone().into(),
        Some((old.into(), old_key.into())),
    )
    .err()
    .unwrap();
    assert!(matches!(err, TlsError::Expired { .. }));
    assert!(err.to_string().starts_with("client certificate expired on"));

    let (future, future_key) = pki.issue(&["dev"], (2090, 2100));
    let err = TlsFiles::from_pem(
        pki.ca_pem.clone().into(),
        Some((future.into(), future_key.into())),
    )
    .err()
    .unwrap();
    assert!(matches!(err, TlsError::NotYetValid { .. }));

    let (cert, _) = pki.issue(&["dev"], (2020, 2100));
    let (_, other_key) = pki.issue(&["other"], (2020, 2100));
    let err = TlsFiles::from_pem(
        pki.ca_pem.clone().into(),
        Some((cert.into(), other_key.into())),
    )
    .err()
    .unwrap();
    assert_eq!(err, TlsError::KeyMismatch);

    let err = TlsFiles::from_pem(b"not pem".to_vec(), None).err().unwrap();
    assert!(matches!(err, TlsError::Malformed(_)));
}
