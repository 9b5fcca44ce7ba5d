//! `lanyard ca ...` and `lanyard provision ...`: the fleet's CA and the
//! provisioning service, and the device's side of provisioning by claim.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use lanyard_std::credentials::{
    CredentialStore, Credentials, Origin, ProvisionEndpoint, load_or_claim,
};
use lanyard_std::provision::authority::{Authority, CA_CERT_FILE};
use lanyard_std::provision::messages::Refusal;
use lanyard_std::provision::{
    AllowList, BrokerReload, ProvisionPolicy, Provisioner, run_provision,
};

use super::BrokerArgs;

/// The fleet's CA.
#[derive(Subcommand)]
pub(crate) enum CaCmd {
    /// Makes the fleet's CA in a directory: `ca.pem` (give it to the broker
    /// and every client), `ca.key` (mode 0600: keep it there), and an empty
    /// revocation list `crl.pem` for the broker's `crlfile`.
    Init {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "Lanyard fleet CA")]
        name: String,
        /// How long the CA is valid, in years.
        #[arg(long, default_value_t = 10)]
        years: u32,
    },
    /// Issues a certificate and a new key: for the broker (its host names
    /// with --san), a service (`lanyard-twin`, `lanyard-provision`, an
    /// operator), the claim certificate (`lanyard-claim-...`), or a device
    /// made with its certificate installed (its device id; recorded so that
    /// it can be revoked and renews like the others).
    Issue {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The certificate's common name.
        #[arg(long)]
        name: String,
        /// Alternative names (host names, addresses), for a broker.
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
        /// How long it is valid, in days.
        #[arg(long, default_value_t = 90)]
        days: u64,
        /// Writes OUT.pem and OUT.key (mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
}

/// The provisioning service and what it issued.
#[derive(Subcommand)]
pub(crate) enum ProvisionCmd {
    /// Serves provisioning by claim and renewal on the broker, as the
    /// trusted identity its certificate gives (`lanyard-provision`).
    Serve {
        #[command(flatten)]
        broker: BrokerArgs,
        /// The CA directory (`lanyard ca init`); the service keeps its
        /// records in its `provision` directory and the revocation list in
        /// its `crl.pem`.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The allow-list: one `hardware [device-id]` a line (a MAC alone
        /// gives the device id the agent derives from it).
        #[arg(long)]
        allow: PathBuf,
        /// Certificate lifetime, in seconds (90 days by default).
        #[arg(long, default_value_t = 90 * 86_400)]
        lifetime_secs: u64,
        /// When in its life a certificate is renewed, in percent.
        #[arg(long, default_value_t = 67)]
        renew_at: u8,
        /// How long an ownership token stands, in seconds.
        #[arg(long, default_value_t = 300)]
        token_secs: u64,
        /// Let a device with a certificate already get a new one by claim
        /// (one that was offline past its expiry recovers this way).
        #[arg(long)]
        reclaim: bool,
        /// Mosquitto's pid file: it is sent SIGHUP after a revocation, to
        /// read the revocation list again.
        #[arg(long)]
        broker_pid_file: Option<PathBuf>,
        /// The initial configuration's version (newer than the devices'
        /// own: 1 for the defaults), with --set.
        #[arg(long, requires = "set")]
        config_version: Option<u64>,
        /// A field of the initial configuration a device provisioned by
        /// claim is sent once it has registered (`telemetry_ms=60000`).
        #[arg(long, requires = "config_version")]
        set: Vec<String>,
    },
    /// Revokes every certificate of a device (compromise, decommissioning)
    /// and has the broker refuse them.
    Revoke {
        /// The CA directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The device.
        device: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "compromised")]
        reason: String,
        /// Also refuse it any new certificate (decommissioning).
        #[arg(long)]
        decommission: bool,
        /// Mosquitto's pid file (SIGHUP to read the list again).
        #[arg(long)]
        broker_pid_file: Option<PathBuf>,
    },
    /// Lists a device's certificates, or the refusals counted.
    Show {
        /// The CA directory.
        #[arg(long)]
        ca_dir: PathBuf,
        /// The device (without: the refusals by reason).
        device: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn crl_path(ca: &Path) -> PathBuf {
    ca.join("crl.pem")
}

fn open_service(ca: &Path, policy: ProvisionPolicy) -> Result<Provisioner, String> {
    let authority = Authority::open(ca).map_err(|e| e.to_string())?;
    Provisioner::open(authority, policy, &ca.join("provision"), &crl_path(ca))
        .map_err(|e| e.to_string())
}

fn reload_of(pid_file: Option<PathBuf>) -> BrokerReload {
    pid_file.map_or(BrokerReload::Manual, BrokerReload::PidFile)
}

pub(crate) fn ca(what: CaCmd) -> Result<(), String> {
    match what {
        CaCmd::Init { dir, name, years } => {
            let authority = Authority::create(&dir, &name, years).map_err(|e| e.to_string())?;
            // The broker reads a list from the start; the service keeps it.
            drop(open_service(
                &dir,
                ProvisionPolicy::new(AllowList::default()),
            )?);
            drop(authority);
            println!(
                "CA {name:?} in {}: {CA_CERT_FILE} (trust it everywhere), ca.key (keep it \
                 here), crl.pem (the broker's crlfile)",
                dir.display()
            );
            Ok(())
        }
        CaCmd::Issue {
            dir,
            name,
            san,
            days,
            out,
        } => {
            let authority = Authority::open(&dir).map_err(|e| e.to_string())?;
            let names: Vec<&str> = san.iter().map(String::as_str).collect();
            let issued = authority
                .issue_with_key(&name, &names, days.saturating_mul(86_400))
                .map_err(|e| e.to_string())?;
            let with = |ext: &str| {
                let mut p = out.clone().into_os_string();
                p.push(ext);
                PathBuf::from(p)
            };
            lanyard_std::store::write_private(&with(".key"), issued.key_pem.as_bytes())
                .map_err(|e| format!("{}: {e}", with(".key").display()))?;
            lanyard_std::store::write_atomic(&with(".pem"), issued.cert.pem.as_bytes())
                .map_err(|e| format!("{}: {e}", with(".pem").display()))?;
            if lanyard_core::topic::valid_device_id(&name) {
                let mut service = open_service(&dir, ProvisionPolicy::new(AllowList::default()))?;
                service
                    .record_issued(
                        &name,
                        &issued.cert.serial,
                        issued.cert.not_after,
                        unix_now(),
                    )
                    .map_err(|e| e.to_string())?;
            }
            println!(
                "{name}: {} and {} (serial {}, valid {days} days)",
                with(".pem").display(),
                with(".key").display(),
                issued.cert.serial
            );
            Ok(())
        }
    }
}

pub(crate) async fn provision(what: ProvisionCmd) -> Result<(), String> {
    match what {
        ProvisionCmd::Serve {
            broker,
            ca_dir: ca,
            allow,
            lifetime_secs,
            renew_at,
            token_secs,
            reclaim,
            broker_pid_file,
            config_version,
            set,
        } => {
            let initial_config = config_version
                .map(|v| lanyard_std::app::config_patch_from_text(v, &set))
                .transpose()
                .map_err(|e| format!("--set {e}"))?;
            let text =
                std::fs::read_to_string(&allow).map_err(|e| format!("{}: {e}", allow.display()))?;
            let allow = AllowList::parse(&text).map_err(|e| format!("{}: {e}", allow.display()))?;
            if renew_at == 0 || renew_at > 100 {
                return Err("--renew-at is a percentage of the lifetime, 1 to 100".into());
            }
            let allowed = allow.len();
            let policy = ProvisionPolicy {
                allow,
                lifetime_secs,
                renew_at_percent: renew_at,
                token_secs,
                reclaim,
                initial_config,
            };
            let mut service = open_service(&ca, policy)?;
            let identity = broker
                .identity()?
                .unwrap_or_else(|| "lanyard-provision".into());
            let config = broker.mqtt(&identity)?;
            let mut transport =
                MqttTransport::connect_and_wait(config, std::time::Duration::from_secs(10))
                    .await
                    .map_err(|e| format!("provisioning service: {e}"))?;
            let (ready_tx, ready) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                if ready.await.is_ok() {
                    println!("provisioning service ready: {allowed} devices on the allow-list");
                }
            });
            let reload = reload_of(broker_pid_file);
            run_provision(
                &mut service,
                &mut transport,
                &reload,
                Some(ready_tx),
                async {
                    let _ = tokio::signal::ctrl_c().await;
                },
            )
            .await
            .map_err(|e| e.to_string())
        }
        ProvisionCmd::Revoke {
            ca_dir: ca,
            device,
            reason,
            decommission,
            broker_pid_file,
        } => {
            let mut service = open_service(&ca, ProvisionPolicy::new(AllowList::default()))?;
            let n = service
                .revoke_device(&device, &reason, decommission, unix_now())
                .map_err(|e| e.to_string())?;
            reload_of(broker_pid_file.clone())
                .reload()
                .map_err(|e| format!("revoked, but the broker was not told: {e}"))?;
            let told = if broker_pid_file.is_some() {
                "the broker reloaded its list"
            } else {
                "reload the broker (SIGHUP) to refuse them"
            };
            println!("{device}: {n} certificate(s) revoked; {told}");
            Ok(())
        }
        ProvisionCmd::Show {
            ca_dir: ca,
            device,
            json,
        } => {
            let service = open_service(&ca, ProvisionPolicy::new(AllowList::default()))?;
            match device {
                Some(d) => {
                    let certs = service.certificates(&d).map_err(|e| e.to_string())?;
                    if json {
                        let rows: Vec<_> = certs
                            .iter()
                            .map(|c| {
                                serde_json::json!({"serial": c.serial, "issued_at": c.issued_at,
                                    "not_after": c.not_after, "state": c.state.name()})
                            })
                            .collect();
                        println!("{}", serde_json::Value::Array(rows));
                    } else {
                        println!("{:<34} {:>12} {:>12}  STATE", "SERIAL", "ISSUED", "EXPIRES");
                        for c in certs {
                            println!(
                                "{:<34} {:>12} {:>12}  {}",
                                c.serial,
                                c.issued_at,
                                c.not_after,
                                c.state.name()
                            );
                        }
                    }
                }
                None => {
                    let counts = service.refusals().map_err(|e| e.to_string())?;
                    if json {
                        let map: serde_json::Map<_, _> = Refusal::ALL
                            .iter()
                            .map(|r| {
                                (
                                    r.code().to_owned(),
                                    counts.get(r).copied().unwrap_or(0).into(),
                                )
                            })
                            .collect();
                        println!("{}", serde_json::Value::Object(map));
                    } else {
                        for r in Refusal::ALL {
                            println!("{:<22} {}", r.code(), counts.get(&r).copied().unwrap_or(0));
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

/// What keeps a device's certificate fresh once it runs.
pub(crate) struct Renewing {
    endpoint: ProvisionEndpoint,
    store: CredentialStore,
}

/// With `--claim-cert`: the device's own credentials (kept in `state_dir`
/// while valid, else obtained by claim), put in `mqtt`; and what renews
/// them. `None` without `--claim-cert`.
pub(crate) async fn by_claim(
    broker: &BrokerArgs,
    claim: &super::ClaimArgs,
    mqtt: &mut lanyard_std::mqtt::MqttConfig,
    state_dir: &Path,
    key: lanyard_std::data_key::DataKey,
    device: &str,
    default_hardware: &str,
) -> Result<Option<Renewing>, String> {
    let (Some(cert), Some(claim_key), Some(port)) =
        (&claim.claim_cert, &claim.claim_key, claim.provision_port)
    else {
        return Ok(None);
    };
    let ca = broker
        .ca
        .as_ref()
        .ok_or("--claim-cert needs --ca and an mqtts:// broker")?;
    let endpoint = ProvisionEndpoint {
        host: mqtt.host.clone(),
        port,
        ca_pem: std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?,
        timeout: std::time::Duration::from_secs(10),
    };
    let hardware = claim.hardware.as_deref().unwrap_or(default_hardware);
    let (store, creds) =
        credentials_by_claim(&endpoint, cert, claim_key, state_dir, key, device, hardware).await?;
    let tls = creds.tls(&endpoint.ca_pem).map_err(|e| e.to_string())?;
    mqtt.tls = Some(tls.to_rumqttc());
    Ok(Some(Renewing { endpoint, store }))
}

/// Renews the certificate on `switch`'s connection whenever due, saying so.
pub(crate) fn keep_renewed(renewing: Renewing, switch: lanyard_std::mqtt::CredentialSwitch) {
    use lanyard_std::credentials::{Renewal, RenewalEvent};
    let renewal = Renewal {
        endpoint: renewing.endpoint,
        store: renewing.store,
        switch,
        retry: std::time::Duration::from_secs(60),
    };
    let (events, mut renewed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(renewal.run(events, std::future::pending()));
    tokio::spawn(async move {
        while let Some(e) = renewed.recv().await {
            match e {
                RenewalEvent::Renewed(serial) => println!("certificate renewed: {serial}"),
                RenewalEvent::Failed(why) => {
                    eprintln!("certificate renewal failed (tried again in a minute): {why}")
                }
            }
        }
    });
}

/// A device's credentials by claim: those kept in `state_dir` while
/// valid, else new ones from the provisioning service, kept there.
async fn credentials_by_claim(
    endpoint: &ProvisionEndpoint,
    claim_cert: &Path,
    claim_key: &Path,
    state_dir: &Path,
    key: lanyard_std::data_key::DataKey,
    device: &str,
    hardware: &str,
) -> Result<(CredentialStore, Credentials), String> {
    let store = CredentialStore::open(state_dir, key).map_err(|e| e.to_string())?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let files = lanyard_std::tls::TlsFiles::from_pem(
        endpoint.ca_pem.clone(),
        Some((read(claim_cert)?, read(claim_key)?)),
    )
    .map_err(|e| format!("claim certificate: {e}"))?;
    let (creds, origin) = load_or_claim(endpoint, &files, &store, device, hardware)
        .await
        .map_err(|e| format!("{device}: {e}"))?;
    if origin == Origin::Claimed {
        println!(
            "{device} provisioned by claim: certificate {}",
            creds.serial
        );
    }
    Ok((store, creds))
}

use lanyard_std::mqtt::{MqttConfig, MqttTransport};

/// The demo's fleet on a broker configured for provisioning: certificates
/// for its services from the fleet's CA, the provisioning service in
/// process (its records and revocation list in the demo's scratch
/// directory, never the CA's), and every device's own certificate by
/// claim.
pub(crate) struct DemoFleet {
    url: String,
    ca_pem: Vec<u8>,
    services: std::collections::HashMap<String, lanyard_std::tls::TlsFiles>,
    devices: Vec<Credentials>,
    _service: tokio::sync::oneshot::Sender<()>,
}

/// The demo's services' names (the broker's ACL must trust them).
const DEMO_SERVICES: [&str; 3] = ["lanyard-twin", "lanyard-operator", "lanyard-provision"];

impl DemoFleet {
    pub(crate) async fn start(
        url: &str,
        ca_dir: &Path,
        provision_port: u16,
        macs: &[[u8; 6]],
        scratch: &Path,
    ) -> Result<Self, String> {
        if !url.starts_with("mqtts://") {
            return Err("--provision-by-claim needs an mqtts:// broker".into());
        }
        let authority = Authority::open(ca_dir).map_err(|e| e.to_string())?;
        let ca_pem = authority.ca_pem().as_bytes().to_vec();
        let issue = |cn: &str| -> Result<lanyard_std::tls::TlsFiles, String> {
            let issued = authority
                .issue_with_key(cn, &[], 86_400)
                .map_err(|e| e.to_string())?;
            lanyard_std::tls::TlsFiles::from_pem(
                ca_pem.clone(),
                Some((issued.cert.pem.into_bytes(), issued.key_pem.into_bytes())),
            )
            .map_err(|e| e.to_string())
        };
        let mut services = std::collections::HashMap::new();
        for who in DEMO_SERVICES {
            services.insert(who.to_owned(), issue(who)?);
        }
        let claim_files = issue("lanyard-claim-demo")?;
        let allow: String = macs
            .iter()
            .map(|m| {
                let hex: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
                hex.join(":") + "\n"
            })
            .collect();
        let policy = ProvisionPolicy::new(AllowList::parse(&allow).map_err(|e| e.to_string())?);
        let mut service = Provisioner::open(
            authority,
            policy,
            &scratch.join("provision"),
            &scratch.join("crl.pem"),
        )
        .map_err(|e| e.to_string())?;
        let mut fleet = DemoFleet {
            url: url.to_owned(),
            ca_pem: ca_pem.clone(),
            services,
            devices: Vec::new(),
            _service: tokio::sync::oneshot::channel().0,
        };
        let mut transport = MqttTransport::connect_and_wait(
            fleet.service("lanyard-provision")?,
            std::time::Duration::from_secs(10),
        )
        .await
        .map_err(|e| format!("provisioning service: {e}"))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let run = run_provision(
                &mut service,
                &mut transport,
                &BrokerReload::Manual,
                Some(ready_tx),
                async {
                    let _ = stopped.await;
                },
            );
            if let Err(e) = run.await {
                eprintln!("provisioning service: {e}");
            }
        });
        fleet._service = stop;
        tokio::time::timeout(std::time::Duration::from_secs(10), ready)
            .await
            .map_err(|_| "the provisioning service got no message through the broker: does its ACL trust lanyard-provision?")?
            .map_err(|_| "the provisioning service stopped")?;
        let host = fleet.service("lanyard-provision")?.host;
        let endpoint = ProvisionEndpoint {
            host,
            port: provision_port,
            ca_pem,
            timeout: std::time::Duration::from_secs(10),
        };
        let began = std::time::Instant::now();
        let mut claims = tokio::task::JoinSet::new();
        for (i, mac) in macs.iter().enumerate() {
            let (endpoint, files) = (endpoint.clone(), claim_files.clone());
            let id = lanyard_core::agent::device_id_from_mac(*mac).to_string();
            let hardware: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
            claims.spawn(async move {
                let creds =
                    lanyard_std::credentials::claim(&endpoint, &files, &id, &hardware.join(":"))
                        .await;
                (i, id, creds)
            });
        }
        let mut devices: Vec<Option<Credentials>> = vec![None; macs.len()];
        while let Some(joined) = claims.join_next().await {
            let (i, id, creds) = joined.map_err(|e| e.to_string())?;
            devices[i] = Some(creds.map_err(|e| format!("{id}: {e}"))?);
        }
        fleet.devices = devices.into_iter().flatten().collect();
        println!(
            "provisioned {} devices by claim in {:.1} s (each made its key pair and got its certificate)",
            fleet.devices.len(),
            began.elapsed().as_secs_f64()
        );
        Ok(fleet)
    }

    fn config(
        &self,
        client_id: &str,
        tls: &lanyard_std::tls::TlsFiles,
    ) -> Result<MqttConfig, String> {
        // Host and port from the URL; the TLS is this identity's.
        let plain = self.url.replacen("mqtts://", "mqtt://", 1);
        let mut c = MqttConfig::from_url(&plain, client_id, None, None)?;
        c.tls = Some(tls.to_rumqttc());
        Ok(c)
    }

    /// A demo service's connection, as itself.
    pub(crate) fn service(&self, who: &str) -> Result<MqttConfig, String> {
        let tls = self
            .services
            .get(who)
            .ok_or_else(|| format!("no certificate for {who}"))?;
        self.config(who, tls)
    }

    /// Device `i`'s connection, with its own certificate.
    pub(crate) fn device(&self, i: usize) -> Result<MqttConfig, String> {
        let creds = self.devices.get(i).ok_or("no such device")?;
        let tls = creds.tls(&self.ca_pem).map_err(|e| e.to_string())?;
        self.config("", &tls)
    }
}
