//! Credentials over a device's life, against mosquitto configured the way
//! Lanyard generates it (mutual TLS, a provisioning listener, the fleet's
//! revocation list) with a CA made here: provisioning by claim and what it
//! refuses, revocation at the broker, and renewal while a device runs.

mod common;

use std::time::Duration;

use common::{Mosquitto, free_port};
use lanyard_std::clock::Clock;
use lanyard_std::credentials::{
    CredentialError, CredentialStore, Credentials, ProvisionEndpoint, Renewal, RenewalEvent, claim,
};
use lanyard_std::data_key::{DataKey, default_path};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::provision::authority::Authority;
use lanyard_std::provision::messages::{
    Channel, CsrAccepted, CsrRequest, Outcome, Refusal, RegisterRequest, Rejected, Step,
};
use lanyard_std::provision::service::CertState;
use lanyard_std::provision::{
    AllowList, BrokerReload, ProvisionPolicy, Provisioner, run_provision,
};
use lanyard_std::tls::{TlsError, TlsFiles};
use lanyard_std::transport::{Qos, Transport, TransportError, TransportEvent};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);
const CLAIM: &str = "lanyard-claim-test";

/// A CA, a broker with a provisioning listener and the CA's revocation
/// list, and the certificates of the services.
struct Fleet {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    provision_port: u16,
    ca_pem: String,
    claim: TlsFiles,
    services: std::collections::HashMap<&'static str, TlsFiles>,
}

fn tls_of(ca: &Authority, cn: &str, lifetime: u64) -> TlsFiles {
    let issued = ca.issue_with_key(cn, &[], lifetime).unwrap();
    TlsFiles::from_pem(
        ca.ca_pem().as_bytes().to_vec(),
        Some((issued.cert.pem.into_bytes(), issued.key_pem.into_bytes())),
    )
    .unwrap()
}

impl Fleet {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create(&dir.path().join("ca"), "Test fleet CA", 1).unwrap();
        let server = ca
            .issue_with_key("localhost", &["localhost", "127.0.0.1"], 86_400)
            .unwrap();
        let mut services = std::collections::HashMap::new();
        for cn in [
            "lanyard-twin",
            "lanyard-ops",
            "lanyard-provision",
            "lanyard-watch",
        ] {
            services.insert(cn, tls_of(&ca, cn, 86_400));
        }
        let claim = tls_of(&ca, CLAIM, 86_400);
        let ca_pem = ca.ca_pem().to_owned();
        // The service writes the list before the broker reads it.
        drop(
            Provisioner::open(
                ca,
                policy(),
                &dir.path().join("provision"),
                &dir.path().join("crl.pem"),
            )
            .unwrap(),
        );
        let acl = lanyard_std::acl::mosquitto_acl(&[
            "lanyard-twin",
            "lanyard-ops",
            "lanyard-provision",
            "lanyard-watch",
        ])
        .unwrap();
        // Mosquitto writes its process id after it stops being root.
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let provision_port = free_port();
        let (state, ca_copy) = (dir.path().to_owned(), ca_pem.clone());
        let broker = Mosquitto::start_with_conf(move |bdir, port| {
            std::fs::write(bdir.join("ca.pem"), ca_copy).unwrap();
            std::fs::write(bdir.join("server.pem"), server.cert.pem).unwrap();
            std::fs::write(bdir.join("server.key"), server.key_pem).unwrap();
            std::fs::write(bdir.join("acl"), acl).unwrap();
            let conf = lanyard_std::acl::mosquitto_conf(&lanyard_std::acl::BrokerFiles {
                bind: "127.0.0.1",
                port,
                ca: &bdir.join("ca.pem"),
                cert: &bdir.join("server.pem"),
                key: &bdir.join("server.key"),
                acl: &bdir.join("acl"),
                provision_port: Some(provision_port),
                crl: Some(&state.join("crl.pem")),
                pid_file: Some(&state.join("run/mosquitto.pid")),
            });
            format!("{conf}max_queued_messages 100000\n")
        });
        // Both listeners up.
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", provision_port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "no provisioning listener"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Fleet {
            dir,
            broker,
            provision_port,
            ca_pem,
            claim,
            services,
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn endpoint(&self) -> ProvisionEndpoint {
        ProvisionEndpoint {
            host: "localhost".into(),
            port: self.provision_port,
            ca_pem: self.ca_pem.clone().into_bytes(),
            timeout: WAIT,
        }
    }

    /// A connection to the main listener as `tls`'s holder.
    fn mqtt(&self, tls: &TlsFiles, client_id: &str) -> MqttConfig {
        let mut c = MqttConfig::new("localhost", self.broker.port, client_id);
        c.tls = Some(tls.to_rumqttc());
        c.persistent_session = false;
        c
    }

    fn reload(&self) -> BrokerReload {
        BrokerReload::PidFile(self.path("run/mosquitto.pid"))
    }

    /// The provisioning service on its own connection, with `policy`;
    /// handed back when the sender is dropped or fired.
    async fn serve(
        &self,
        policy: ProvisionPolicy,
    ) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Provisioner>) {
        let ca = Authority::open(&self.path("ca")).unwrap();
        let mut service =
            Provisioner::open(ca, policy, &self.path("provision"), &self.path("crl.pem")).unwrap();
        let config = self.mqtt(&self.services["lanyard-provision"], "lanyard-provision");
        let reload = self.reload();
        let (tx, rx) = oneshot::channel::<()>();
        let (ready_tx, ready) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut t = MqttTransport::connect_and_wait(config, WAIT).await.unwrap();
            run_provision(&mut service, &mut t, &reload, Some(ready_tx), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
            service
        });
        // Serving before anyone asks.
        tokio::time::timeout(WAIT, ready).await.unwrap().unwrap();
        (tx, task)
    }
    /// A twin host on its own connection.
    fn twin(&self) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let twin_dir = self.path("twin");
        let config = self.mqtt(&self.services["lanyard-twin"], "lanyard-twin");
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut host =
                lanyard_std::twin::TwinHost::open(&twin_dir, Default::default()).unwrap();
            let mut t = MqttTransport::connect(config);
            lanyard_std::twin::run_twin(&mut host, &mut t, Clock::real(), false, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        (stop, task)
    }

    /// Device `i` of the example board with `creds`, its state in `state`
    /// under `key`.
    fn device(
        &self,
        i: u8,
        creds: &Credentials,
        state: &std::path::Path,
        key: DataKey,
    ) -> (
        lanyard_std::device::DeviceHandle,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let mut config = MqttConfig::new("localhost", self.broker.port, "");
        config.tls = Some(creds.tls(self.ca_pem.as_bytes()).unwrap().to_rumqttc());
        let board = lanyard_std::sim::simulated_board(
            lanyard_std::sim::SimulatedSensors::new(Clock::real().now_ms(), 600_000, 0),
            Default::default(),
        );
        let (mut driver, handle) = lanyard_std::device::DeviceBuilder::new(
            [0x0a, 0x0b, 0x0c, 0x0d, 0x0e, i],
            "test",
            config,
            state,
        )
        .data_key(key)
        .commands(board)
        .build()
        .unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            driver.start().await.unwrap();
            driver
                .run_until(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        (handle, stop, task)
    }

    /// An operator's app, once `device` has registered.
    async fn app(&self, device: &str) -> lanyard_std::app::AppClient {
        let app = lanyard_std::app::AppClient::new(MqttTransport::connect(
            self.mqtt(&self.services["lanyard-ops"], "lanyard-ops"),
        ))
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while app
            .get_shadow(device, Duration::from_millis(500))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{device} never registered"
            );
        }
        app
    }
}

fn policy() -> ProvisionPolicy {
    let allow = (1..=8)
        .map(|i| format!("0a:0b:0c:0d:0e:{i:02x}\n"))
        .collect::<String>();
    ProvisionPolicy::new(AllowList::parse(&allow).unwrap())
}

fn id(i: u8) -> String {
    format!("ly-0a0b0c0d0e{i:02x}")
}

fn mac(i: u8) -> String {
    format!("0a:0b:0c:0d:0e:{i:02x}")
}

fn refused_with(r: Result<Credentials, CredentialError>) -> Refusal {
    match r {
        Err(CredentialError::Refused(_, rejected)) => rejected.reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// One step by hand on the claim channel: the answer's outcome and payload.
async fn raw_step(
    t: &mut MqttTransport,
    channel: &Channel<'_>,
    step: Step,
    payload: &[u8],
) -> (Outcome, Vec<u8>) {
    let answers = [Outcome::Accepted, Outcome::Rejected].map(|o| (o, channel.answer(step, o)));
    for (_, topic) in &answers {
        t.subscribe(topic).await.unwrap();
    }
    t.publish(&channel.request(step), payload, Qos::AtLeastOnce)
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, t.recv())
            .await
            .expect("an answer")
        {
            Ok(TransportEvent::Message { topic, payload }) => {
                if let Some((o, _)) = answers.iter().find(|(_, a)| *a == topic) {
                    return (*o, payload);
                }
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_gives_an_allowed_device_its_own_certificate_and_nothing_else_is_issued() {
    let fleet = Fleet::new();
    let (stop, service) = fleet.serve(policy()).await;
    let endpoint = fleet.endpoint();

    // An allowed device gets a certificate for its own new key, and the
    // main listener takes it as that device.
    let creds = claim(&endpoint, &fleet.claim, &id(1), &mac(1))
        .await
        .unwrap();
    assert_eq!(creds.device, id(1));
    let tls = creds.tls(fleet.ca_pem.as_bytes()).unwrap();
    assert_eq!(tls.client_identity(), Some(id(1)));
    let mut dev = MqttTransport::connect_and_wait(fleet.mqtt(&tls, &id(1)), WAIT)
        .await
        .unwrap();
    let mut twin = MqttTransport::connect_and_wait(
        fleet.mqtt(&fleet.services["lanyard-twin"], "lanyard-twin"),
        WAIT,
    )
    .await
    .unwrap();
    twin.subscribe("lanyard/v1/+/heartbeat").await.unwrap();
    // Sent until the subscription (on another connection) is in place.
    let heartbeat = format!("lanyard/v1/{}/heartbeat", id(1));
    let mut heard = false;
    for _ in 0..20 {
        dev.publish(&heartbeat, b"hb", Qos::AtLeastOnce)
            .await
            .unwrap();
        if let Ok(Ok(TransportEvent::Message { topic, .. })) =
            tokio::time::timeout(Duration::from_millis(500), twin.recv()).await
        {
            assert_eq!(topic, heartbeat);
            heard = true;
            break;
        }
    }
    assert!(heard, "the device's heartbeat never arrived");

    // Not on the allow-list; a name the allow-list gives other hardware;
    // a second claim for a device that has a certificate.
    assert_eq!(
        refused_with(
            claim(
                &endpoint,
                &fleet.claim,
                "ly-0a0b0c0d0e99",
                "0a:0b:0c:0d:0e:99"
            )
            .await
        ),
        Refusal::NotAllowed
    );
    assert_eq!(
        refused_with(claim(&endpoint, &fleet.claim, &id(2), &mac(3)).await),
        Refusal::WrongName
    );
    assert_eq!(
        refused_with(claim(&endpoint, &fleet.claim, &id(1), &mac(1)).await),
        Refusal::AlreadyProvisioned
    );

    // By hand: a message that does not read, a signing request that does
    // not parse, a replayed token and an unknown one.
    let session = "s-raw";
    let mut t = MqttTransport::connect_and_wait(
        {
            let mut c = MqttConfig::new("localhost", fleet.provision_port, session);
            c.tls = Some(fleet.claim.to_rumqttc());
            c.persistent_session = false;
            c
        },
        WAIT,
    )
    .await
    .unwrap();
    let channel = Channel::Claim {
        identity: CLAIM,
        session,
    };
    let reason = |(o, p): (Outcome, Vec<u8>)| {
        assert_eq!(o, Outcome::Rejected);
        Rejected::decode(&p).unwrap().reason
    };
    assert_eq!(
        reason(raw_step(&mut t, &channel, Step::Csr, b"\xff\x00").await),
        Refusal::Malformed
    );
    let junk = CsrRequest {
        csr: b"not a CSR".to_vec(),
    }
    .encode();
    assert_eq!(
        reason(raw_step(&mut t, &channel, Step::Csr, &junk).await),
        Refusal::BadCsr
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, id(4));
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let (o, p) = raw_step(&mut t, &channel, Step::Csr, &CsrRequest { csr }.encode()).await;
    assert_eq!(o, Outcome::Accepted);
    let token = CsrAccepted::decode(&p).unwrap().token;
    let register = RegisterRequest {
        token: token.clone(),
        hardware: mac(4),
    }
    .encode();
    assert_eq!(
        raw_step(&mut t, &channel, Step::Register, &register)
            .await
            .0,
        Outcome::Accepted
    );
    assert_eq!(
        reason(raw_step(&mut t, &channel, Step::Register, &register).await),
        Refusal::TokenUsed
    );
    let unknown = RegisterRequest {
        token: "00".repeat(16),
        hardware: mac(4),
    }
    .encode();
    assert_eq!(
        reason(raw_step(&mut t, &channel, Step::Register, &unknown).await),
        Refusal::UnknownToken
    );
    // A token from this session is no one else's.
    let other = Channel::Claim {
        identity: CLAIM,
        session: "s-other",
    };
    let mut t2 = MqttTransport::connect_and_wait(
        {
            let mut c = MqttConfig::new("localhost", fleet.provision_port, "s-other");
            c.tls = Some(fleet.claim.to_rumqttc());
            c.persistent_session = false;
            c
        },
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(
        reason(raw_step(&mut t2, &other, Step::Register, &register).await),
        Refusal::UnknownToken
    );

    // A claim certificate past its expiry is refused on the device before
    // anything is sent.
    let ca = Authority::open(&fleet.path("ca")).unwrap();
    let expired = ca.issue_with_key(CLAIM, &[], 0).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = TlsFiles::from_pem(
        fleet.ca_pem.clone().into_bytes(),
        Some((expired.cert.pem.into_bytes(), expired.key_pem.into_bytes())),
    )
    .unwrap_err();
    assert!(matches!(e, TlsError::Expired { .. }), "{e}");

    let _ = stop.send(());
    let service = service.await.unwrap();
    let refusals = service.refusals().unwrap();
    for r in [
        Refusal::NotAllowed,
        Refusal::WrongName,
        Refusal::AlreadyProvisioned,
        Refusal::Malformed,
        Refusal::BadCsr,
        Refusal::TokenUsed,
    ] {
        assert_eq!(refusals.get(&r), Some(&1), "{r}: {refusals:?}");
    }
    assert_eq!(refusals.get(&Refusal::UnknownToken), Some(&2));
    // Certificates went to devices 1 and 4 only.
    for i in [2, 3, 0x99] {
        assert!(service.certificates(&id(i)).unwrap().is_empty());
    }
    assert_eq!(service.certificates(&id(1)).unwrap().len(), 1);
    assert_eq!(service.certificates(&id(4)).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_refused_by_the_broker_and_gets_no_new_certificate() {
    let fleet = Fleet::new();
    let (stop, service) = fleet.serve(policy()).await;
    let creds = claim(&fleet.endpoint(), &fleet.claim, &id(5), &mac(5))
        .await
        .unwrap();
    let tls = creds.tls(fleet.ca_pem.as_bytes()).unwrap();
    let dev = MqttTransport::connect_and_wait(fleet.mqtt(&tls, &id(5)), WAIT)
        .await
        .unwrap();
    dev.disconnect().await;

    // An operator decommissions it through the service: every certificate
    // revoked, the broker told. A device never issued one is an answer too.
    let ops = lanyard_std::app::AppClient::new(MqttTransport::connect(
        fleet.mqtt(&fleet.services["lanyard-ops"], "lanyard-ops"),
    ))
    .await
    .unwrap();
    assert_eq!(
        ops.revoke(&id(5), "decommissioned", true, WAIT)
            .await
            .unwrap(),
        1
    );
    match ops
        .revoke("ly-0a0b0c0d0e55", "compromised", false, WAIT)
        .await
    {
        Err(lanyard_std::app::AppError::Rejected(why)) => {
            assert!(why.contains("no certificate was issued"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let _ = stop.send(());
    let service = service.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = MqttTransport::connect_and_wait(fleet.mqtt(&tls, &id(5)), WAIT)
        .await
        .err()
        .expect("a revoked certificate is refused");
    let text = err.to_string();
    assert!(matches!(err, TransportError::Refused(_)), "{text}");
    assert!(text.contains("revoked"), "{text}");
    assert_eq!(
        service.certificates(&id(5)).unwrap()[0].state,
        CertState::Revoked
    );
    drop(service);

    // It cannot come back through the claim path either.
    let (stop, service) = fleet
        .serve(ProvisionPolicy {
            reclaim: true,
            ..policy()
        })
        .await;
    assert_eq!(
        refused_with(claim(&fleet.endpoint(), &fleet.claim, &id(5), &mac(5)).await),
        Refusal::Decommissioned
    );
    let _ = stop.send(());
    service.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_device_renews_its_certificate_several_times_without_losing_a_command() {
    let fleet = Fleet::new();
    // Four-second certificates renewed at half their life.
    let (stop_service, service) = fleet
        .serve(ProvisionPolicy {
            lifetime_secs: 4,
            renew_at_percent: 50,
            ..policy()
        })
        .await;
    let endpoint = fleet.endpoint();
    let state = fleet.path("device");
    let key = DataKey::at(default_path(&state));
    let store = CredentialStore::open(&state, key.clone()).unwrap();
    let creds = claim(&endpoint, &fleet.claim, &id(6), &mac(6))
        .await
        .unwrap();
    store.save_current(&creds).unwrap();
    let first_serial = creds.serial.clone();

    let (stop_twin, twin) = fleet.twin();
    let (handle, stop_dev, device) = fleet.device(6, &creds, &state, key);
    let app = fleet.app(&id(6)).await;
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (stop_renewal, renewal_rx) = oneshot::channel::<()>();
    let renewal = Renewal {
        endpoint: endpoint.clone(),
        store: store.clone(),
        switch: handle.credential_switch(),
        retry: Duration::from_millis(500),
    };
    let renewing = tokio::spawn(renewal.run(events_tx, async {
        let _ = renewal_rx.await;
    }));

    // An operator sends commands all along: each one is answered.
    let mut renewed = Vec::new();
    let mut answered = 0;
    let started = std::time::Instant::now();
    while renewed.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "renewed {renewed:?}"
        );
        let out = app
            .command(
                &id(6),
                "blink_led",
                b"\xa1\x65times\x01",
                Clock::real().now_ms(),
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("command {answered} after {renewed:?}: {e}"));
        assert!(out.status.is_final());
        answered += 1;
        while let Ok(ev) = events.try_recv() {
            match ev {
                RenewalEvent::Renewed(serial) => renewed.push(serial),
                RenewalEvent::Failed(why) => panic!("renewal failed: {why}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered >= 10, "{answered} commands");

    let _ = stop_renewal.send(());
    renewing.await.unwrap();
    let _ = stop_dev.send(());
    device.await.unwrap();
    let _ = stop_twin.send(());
    twin.await.unwrap();
    let _ = stop_service.send(());
    let service = service.await.unwrap();

    // Each renewal superseded the one before: only the newest stands.
    let certs = service.certificates(&id(6)).unwrap();
    assert!(certs.len() >= 4, "{certs:?}");
    assert_eq!(certs[0].serial, first_serial);
    let (newest, older) = certs.split_last().unwrap();
    assert_eq!(newest.state, CertState::InUse);
    assert!(
        older.iter().all(|c| c.state == CertState::Revoked),
        "{certs:?}"
    );
    assert_eq!(store.current().unwrap().unwrap().serial, newest.serial);
    assert!(store.pending().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_past_its_expiry_comes_back_by_claim_only_where_the_fleet_allows_it() {
    use lanyard_std::credentials::{Origin, load_or_claim};
    let fleet = Fleet::new();
    // Certificates are dated in whole seconds: a 1 s lifetime can end
    // before the next call, so it lasts 3 s here.
    let short = ProvisionPolicy {
        lifetime_secs: 3,
        ..policy()
    };
    let (stop, service) = fleet.serve(short.clone()).await;
    let state = fleet.path("device");
    let store = CredentialStore::open(&state, DataKey::at(default_path(&state))).unwrap();
    let endpoint = fleet.endpoint();
    let (first, origin) = load_or_claim(&endpoint, &fleet.claim, &store, &id(8), &mac(8))
        .await
        .unwrap();
    assert_eq!(origin, Origin::Claimed);
    // Kept while valid.
    let (again, origin) = load_or_claim(&endpoint, &fleet.claim, &store, &id(8), &mac(8))
        .await
        .unwrap();
    assert_eq!(
        (origin, again.serial.as_str()),
        (Origin::Kept, first.serial.as_str())
    );
    // Offline past its expiry: this fleet does not let it claim again.
    tokio::time::sleep(Duration::from_millis(4100)).await;
    match load_or_claim(&endpoint, &fleet.claim, &store, &id(8), &mac(8)).await {
        Err(CredentialError::Refused(_, r)) => {
            assert_eq!(r.reason, Refusal::AlreadyProvisioned);
            assert!(r.message.contains("--reclaim"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }
    let _ = stop.send(());
    service.await.unwrap();

    // One that does: a new certificate, confirmed, the old one revoked.
    let (stop, service) = fleet
        .serve(ProvisionPolicy {
            reclaim: true,
            lifetime_secs: 3600,
            ..short
        })
        .await;
    let (back, origin) = load_or_claim(&endpoint, &fleet.claim, &store, &id(8), &mac(8))
        .await
        .unwrap();
    assert_eq!(origin, Origin::Claimed);
    assert_ne!(back.serial, first.serial);
    let _ = stop.send(());
    let service = service.await.unwrap();
    let certs = service.certificates(&id(8)).unwrap();
    assert_eq!(
        certs.iter().map(|c| c.state).collect::<Vec<_>>(),
        [CertState::Revoked, CertState::InUse],
        "{certs:?}"
    );
}

/// Every file under `dir`, by name.
fn files(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_device_leaves_nothing_readable_in_its_state_directory() {
    let fleet = Fleet::new();
    // The fleet's initial configuration, sent once the device registers.
    let (stop_service, service) = fleet
        .serve(ProvisionPolicy {
            initial_config: Some(
                lanyard_std::app::config_patch(5, [("telemetry_ms", 45_000)]).unwrap(),
            ),
            ..policy()
        })
        .await;
    let mut acks = MqttTransport::connect_and_wait(
        fleet.mqtt(&fleet.services["lanyard-watch"], "lanyard-watch"),
        WAIT,
    )
    .await
    .unwrap();
    acks.subscribe(&format!("lanyard/v1/{}/config/ack", id(7)))
        .await
        .unwrap();
    let state = fleet.path("device");
    let key = DataKey::at(default_path(&state));
    let store = CredentialStore::open(&state, key.clone()).unwrap();
    let creds = claim(&fleet.endpoint(), &fleet.claim, &id(7), &mac(7))
        .await
        .unwrap();
    store.save_current(&creds).unwrap();
    let (stop_twin, twin) = fleet.twin();
    let (_handle, _stop_dev, device) = fleet.device(7, &creds, &state, key.clone());
    let app = fleet.app(&id(7)).await;
    match tokio::time::timeout(WAIT, acks.recv())
        .await
        .unwrap()
        .unwrap()
    {
        TransportEvent::Message { payload, .. } => {
            let ack = lanyard_core::agent::messages::ConfigAck::decode(&payload).unwrap();
            assert_eq!((ack.version, ack.current_version), (5, 5), "{ack:?}");
        }
        other => panic!("{other:?}"),
    }

    // While it runs, nothing it saved is readable without the key.
    let before = files(&state);
    let key_bytes = before["data.key"].clone();
    assert_eq!(key_bytes.len(), 32);
    let sealed_creds = before["credentials.bin"].clone();
    for (name, bytes) in &before {
        assert!(
            !contains(bytes, b"PRIVATE KEY"),
            "{name} holds the key in clear"
        );
        // The outbound journal holds messages on their way out (topics name
        // the device); everything else is sealed.
        if name != "outbound.journal" {
            assert!(
                !contains(bytes, id(7).as_bytes()),
                "{name} names the device in clear"
            );
        }
    }
    assert_eq!(
        key.open(lanyard_std::store::unseal(&sealed_creds).unwrap())
            .map(|_| ()),
        Ok(())
    );

    let out = app
        .command(&id(7), "decommission", b"", Clock::real().now_ms(), WAIT)
        .await
        .unwrap();
    assert_eq!(
        out.status,
        lanyard_core::agent::messages::AckStatus::Succeeded
    );
    tokio::time::timeout(WAIT, device)
        .await
        .expect("a decommissioned device stops")
        .unwrap();

    // The key that sealed everything is gone from the disk; what is there
    // (the fact that the device is decommissioned) is under a new one, and
    // a copy of the old credentials does not open with it.
    let after = files(&state);
    assert!(!after.contains_key("credentials.bin"), "{:?}", after.keys());
    for (name, bytes) in &after {
        assert!(!contains(bytes, &key_bytes), "{name} holds the old key");
        assert!(
            !contains(bytes, b"PRIVATE KEY"),
            "{name} holds a private key"
        );
    }
    let fresh = DataKey::at(default_path(&state));
    assert!(
        fresh
            .open(lanyard_std::store::unseal(&sealed_creds).unwrap())
            .is_err()
    );
    assert!(store.current().unwrap().is_none());

    let _ = stop_twin.send(());
    twin.await.unwrap();
    // The service saw it decommission itself and revoked its certificate.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let certs = lanyard_std::provision::Provisioner::open(
            Authority::open(&fleet.path("ca")).unwrap(),
            policy(),
            &fleet.path("provision"),
            &fleet.path("crl-check.pem"),
        )
        .unwrap()
        .certificates(&id(7))
        .unwrap();
        if certs.iter().all(|c| c.state == CertState::Revoked) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{certs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_service.send(());
    service.await.unwrap();
}

/// A thousand devices provisioned by claim, 50 at a time; prints how long
/// it took. Not in the test command (`scripts/provision-bench.sh` runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn a_thousand_devices_provision_by_claim() {
    let fleet = Fleet::new();
    let n: usize = std::env::var("LANYARD_PROVISION_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let allow: String = (0..n)
        .map(|i| format!("02:00:00:00:{:02x}:{:02x}\n", i / 256, i % 256))
        .collect();
    let (stop, service) = fleet
        .serve(ProvisionPolicy::new(AllowList::parse(&allow).unwrap()))
        .await;
    let endpoint = fleet.endpoint();
    let began = std::time::Instant::now();
    let mut times = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let (endpoint, files) = (endpoint.clone(), fleet.claim.clone());
            set.spawn(async move {
                let mac = format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256);
                let id = format!("ly-02000000{:02x}{:02x}", i / 256, i % 256);
                let t = std::time::Instant::now();
                claim(&endpoint, &files, &id, &mac).await.unwrap();
                t.elapsed()
            });
        }
        while let Some(t) = set.join_next().await {
            times.push(t.unwrap());
        }
    }
    let total = began.elapsed();
    times.sort();
    println!(
        "{n} devices provisioned by claim in {:.1} s ({:.0} a second), each {:.0} ms at the median, {:.0} ms at p99",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        times[n / 2].as_secs_f64() * 1e3,
        times[n * 99 / 100].as_secs_f64() * 1e3
    );
    let _ = stop.send(());
    let service = service.await.unwrap();
    assert_eq!(service.refusals().unwrap().values().sum::<u64>(), 0);
}
