//! Mutual TLS against a real mosquitto with certificates made at test time
//! (rcgen): a client with a certificate gets through, one without is
//! refused, an expired or mismatched certificate is a clear error before any
//! connection, and a server with the wrong name is refused by the client.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Mosquitto;
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::tls::{TlsError, TlsFiles};
use lanyard_std::transport::{Qos, Transport, TransportEvent};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Lanyard test CA");
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names`, valid from `from` to `to` (years).
    fn issue(&self, names: &[&str], years: (i32, i32)) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        // A subject of its own: OpenSSL takes subject == issuer for self-signed.
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_acl_keeps_each_device_to_its_own_topics() {
    use lanyard_core::agent::messages::{MessageKind, topic};
    // Plain TCP with user names = client ids, and the generated ACL file.
    let broker = Mosquitto::start_configured(|dir: &Path| {
        std::fs::write(dir.join("acl"), lanyard_std::acl::mosquitto_acl(&["twin"])).unwrap();
        format!("acl_file {}\n", dir.join("acl").display())
    });
    let cfg = |id: &str| {
        let mut c = MqttConfig::new("127.0.0.1", broker.port, id);
        c.persistent_session = false;
        c
    };
    let mut twin_cfg = cfg("twin");
    twin_cfg.username = Some("twin".into());
    let mut twin = MqttTransport::connect_and_wait(twin_cfg, Duration::from_secs(5))
        .await
        .unwrap();
    let mut dev_a = MqttTransport::connect_and_wait(cfg("ly-00000000000a"), Duration::from_secs(5))
        .await
        .unwrap();
    let mut dev_b = MqttTransport::connect_and_wait(cfg("ly-00000000000b"), Duration::from_secs(5))
        .await
        .unwrap();
    twin.subscribe("lanyard/v1/#").await.unwrap();
    // Device b tries to read a's commands: the broker does not deliver them.
    dev_b
        .subscribe(&topic("ly-00000000000a", MessageKind::Command))
        .await
        .unwrap();
    dev_a
        .subscribe(&topic("ly-00000000000a", MessageKind::Command))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // b writes into a's shadow: dropped by the broker. a writes its own: passes.
    dev_b
        .publish(
            &topic("ly-00000000000a", MessageKind::ShadowUpdate),
            b"forged",
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
    dev_a
        .publish(
            &topic("ly-00000000000a", MessageKind::ShadowUpdate),
            b"genuine",
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), twin.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        TransportEvent::Message {
            topic: topic("ly-00000000000a", MessageKind::ShadowUpdate).to_string(),
            payload: b"genuine".to_vec()
        }
    );

    twin.publish(
        &topic("ly-00000000000a", MessageKind::Command),
        b"cmd",
        Qos::AtLeastOnce,
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), dev_a.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(got, TransportEvent::Message { ref payload, .. } if payload == b"cmd"));
    assert!(
        tokio::time::timeout(Duration::from_millis(700), dev_b.recv())
            .await
            .is_err(),
        "b read a's command"
    );
    // Whatever else the twin saw (its own command comes back to it), the
    // forged update was not among it.
    while let Ok(Ok(TransportEvent::Message { payload, .. })) =
        tokio::time::timeout(Duration::from_millis(500), twin.recv()).await
    {
        assert_ne!(payload, b"forged", "the forged update got through");
    }
}
