//! The STM32 reference firmware updates itself in qemu: built with the
//! `update` feature, it downloads a signed image of a newer build through
//! the gateway bridge and mosquitto from the firmware server, verifies it
//! (SHA-256 and the fleet's Ed25519 signature) and resets. This test plays
//! the bootloader between boots: it keeps the board's stand-in flash (the
//! upper SRAM, saved from the paused machine through qemu's monitor and
//! loaded back at the next boot), boots the slot's image on trial when the
//! slot asks for it, keeps it once confirmed, and boots the old image again
//! when a trial was not confirmed.
//!
//! Checked: a good image (0.2.0) is downloaded with no block sent twice
//! beyond those asked again, verified, booted on trial, passes its
//! self-test and is accepted, and the device then runs 0.2.0; a bad image
//! (0.3.0, its self-test fails) is downloaded and verified, fails on
//! trial, is rejected with that reason, and the board comes back on 0.2.0.
//!
//! It needs qemu and three builds of the firmware (scripts/test-all.sh
//! makes them, signed with a key it makes), so it is ignored by a plain
//! `cargo test`; the script runs it with `LANYARD_STM32_UPDATE` set to the
//! directory of the builds (`0.1.0.bin`, `0.2.0.bin`, `0.3.0-bad.bin`), the
//! key (`fleet.key`) and the link-rate program (`linkrate.elf`).
//!
//! Printed, not checked: the download's speed against what qemu's serial
//! link carries raw (the link-rate program of `examples/stm32`, measured
//! first in the same run).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use common::{Mosquitto, free_port, spawn_twin};
use lanyard_core::update::messages::{UpdateReason, UpdateState};
use lanyard_std::bridge::{Bridge, connect_tcp};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::ota::{FirmwareServer, Release, run_firmware_server};
use tokio::sync::{mpsc, oneshot};

/// The firmware's id: `ly-` and its MAC, 02:4c:59:00:00:01.
const ID: &str = "ly-024c59000001";

/// The stand-in flash (examples/stm32/src/updates.rs): where, how big,
/// and where the slot and its trailer are in it.
const FLASH_BASE: u32 = 0x2000_8000;
const FLASH_SIZE: usize = 96 * 1024;
const SLOT_BASE: usize = 8 * 1024;
const SLOT_SIZE: usize = 80 * 1024;
/// The trailer's words (lanyard_nostd::update_slot): trial, confirmed,
/// reverted, 4 bytes each; a word is set when all of it is zero.
const TRAILER: usize = SLOT_BASE + SLOT_SIZE;

/// Blocks of this size fit the firmware's 256-byte messages.
const BLOCK: u16 = 128;

/// The bootloader this test plays, and the board's flash between boots.
/// It works as MCUboot's swap mode does: a trial boots the slot's image
/// once; the next reset keeps it if it was confirmed, and otherwise goes
/// back to the image before.
struct Bootloader {
    /// The stand-in flash as the firmware left it.
    flash: Vec<u8>,
    /// The image that runs when no trial is due.
    current: Vec<u8>,
    /// The image the last boot ran on trial, if it did.
    on_trial: Option<Vec<u8>>,
    dir: PathBuf,
}

impl Bootloader {
    fn word(&self, i: usize) -> bool {
        self.flash[TRAILER + 4 * i..TRAILER + 4 * i + 4]
            .iter()
            .all(|b| *b == 0)
    }

    /// What a bootloader does at reset: the image to boot.
    fn choose(&mut self) -> (Vec<u8>, &'static str) {
        let slot = self.flash[SLOT_BASE..SLOT_BASE + SLOT_SIZE].to_vec();
        if let Some(tried) = self.on_trial.take() {
            // A slot rewritten since the trial means the trial was
            // settled: the firmware takes no new job before it confirmed
            // (a failed one resets at once, reverted).
            if !self.word(2) && (self.word(1) || slot != tried) {
                self.current = tried;
            } else if !self.word(2) {
                // Reset before confirming: mark it, so the firmware
                // reports the rollback.
                self.flash[TRAILER + 8..TRAILER + 12].fill(0);
                return (
                    self.current.clone(),
                    "current (the trial was not confirmed)",
                );
            }
        }
        let (trial, confirmed, reverted) = (self.word(0), self.word(1), self.word(2));
        if trial && !confirmed && !reverted && slot != self.current {
            self.on_trial = Some(slot.clone());
            (slot, "slot on trial")
        } else {
            (self.current.clone(), "current")
        }
    }

    /// Boots the chosen image in qemu with the flash loaded.
    fn boot(&mut self) -> Board {
        let (image, which) = self.choose();
        println!("bootloader: booting the {which}");
        let kernel = self.dir.join("kernel.bin");
        let flash = self.dir.join("flash.bin");
        std::fs::write(&kernel, &image).unwrap();
        std::fs::write(&flash, &self.flash).unwrap();
        Board::start(&kernel, &flash, &self.dir.join("saved.bin"))
    }

    /// Takes the flash of a board that reset.
    fn reset(&mut self, board: Board) {
        self.flash = board.save_flash_and_quit();
        assert_eq!(self.flash.len(), FLASH_SIZE);
    }
}

/// One boot of the firmware in qemu, its semihosting output read line by
/// line.
struct Board {
    qemu: Child,
    lines: std_mpsc::Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    serial_port: u16,
    monitor_port: u16,
    saved: PathBuf,
}

impl Board {
    fn start(kernel: &Path, flash: &Path, saved: &Path) -> Board {
        let (serial_port, monitor_port) = (free_port(), free_port());
        let mut qemu = Command::new("qemu-system-arm")
            .args([
                "-machine",
                "netduinoplus2",
                "-nographic",
                "-monitor",
                &format!("tcp:127.0.0.1:{monitor_port},server=on,wait=off"),
                "-semihosting-config",
                "enable=on,target=native",
                "-serial",
                &format!("tcp:127.0.0.1:{serial_port},server=on"),
                // A reset pauses the machine, so that the bootloader (this
                // test) can take the flash before the next boot.
                "-action",
                "reboot=shutdown,shutdown=pause",
                "-device",
                &format!("loader,file={},addr={FLASH_BASE:#x}", flash.display()),
                "-kernel",
            ])
            .arg(kernel)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-arm is installed (scripts/test-all.sh installs it)");
        let (tx, lines) = std_mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stdout = qemu.stdout.take().unwrap();
        let log = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("qemu: {line}");
                log.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Board {
            qemu,
            lines,
            seen,
            serial_port,
            monitor_port,
            saved: saved.to_owned(),
        }
    }

    /// Waits until the board has said a line containing `needle` (in
    /// this boot).
    fn wait_for(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.said(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.lines.recv_timeout(left).is_err() && !self.said(needle) {
                panic!(
                    "no line with {needle:?} within {within:?}: {:#?}",
                    self.seen.lock().unwrap()
                );
            }
        }
    }

    fn said(&self, needle: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Saves the stand-in flash through the monitor and ends qemu.
    fn save_flash_and_quit(mut self) -> Vec<u8> {
        let _ = std::fs::remove_file(&self.saved);
        let mut monitor =
            std::net::TcpStream::connect(("127.0.0.1", self.monitor_port)).expect("qemu's monitor");
        // The file name quoted: unquoted, the monitor reads `/` as a
        // division.
        writeln!(
            monitor,
            "pmemsave {FLASH_BASE:#x} {FLASH_SIZE} \"{}\"",
            self.saved.display()
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let flash = loop {
            match std::fs::read(&self.saved) {
                Ok(b) if b.len() == FLASH_SIZE => break b,
                _ => {
                    assert!(Instant::now() < deadline, "the flash was not saved");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        flash
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// Runs a bridge between the board's serial socket and the broker until
/// the board closes it.
async fn bridge(port: u16, board: &Board) -> tokio::task::JoinHandle<()> {
    let serial = connect_tcp(
        &format!("127.0.0.1:{}", board.serial_port),
        Duration::from_secs(20),
    )
    .await
    .expect("qemu's serial socket");
    let mqtt = MqttTransport::connect_and_wait(
        MqttConfig::new("127.0.0.1", port, format!("bridge-{}", board.serial_port)),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let mut b = Bridge::new(mqtt);
        // Ends when qemu quits (the link closes).
        let _ = b.run(serial, std::future::pending::<()>()).await;
        let link = b.link_stats();
        assert_eq!((link.crc_errors, link.malformed), (0, 0), "{link:?}");
    })
}

/// Bytes each way of the link-rate program (`examples/stm32/src/bin/linkrate.rs`).
const LINKRATE_BYTES: usize = 64 * 1024;

/// What qemu's emulated serial link carries with nothing on it, timed with
/// the link-rate program: bytes per second host to board, then board to
/// host.
fn raw_link_rate(program: &Path, dir: &Path) -> (f64, f64) {
    use std::io::Read;
    let pattern = |i: usize| (i.wrapping_mul(7) % 251) as u8;
    let flash = dir.join("linkrate-flash.bin");
    std::fs::write(&flash, vec![0xffu8; FLASH_SIZE]).unwrap();
    let board = Board::start(program, &flash, &dir.join("linkrate-saved.bin"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut serial = loop {
        match std::net::TcpStream::connect(("127.0.0.1", board.serial_port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "qemu's serial socket: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    serial
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut read_until = |serial: &mut std::net::TcpStream, seen: &mut Vec<u8>, end: &[u8]| {
        while !seen.windows(end.len()).any(|w| w == end) {
            let n = serial
                .read(&mut chunk)
                .expect("the link-rate program answers");
            assert!(n > 0, "the link-rate program closed the link");
            seen.extend_from_slice(&chunk[..n]);
        }
        let at = seen.windows(end.len()).position(|w| w == end).unwrap() + end.len();
        seen.drain(..at);
    };
    read_until(&mut serial, &mut seen, b"linkrate\r\n");
    let out: Vec<u8> = (0..LINKRATE_BYTES).map(pattern).collect();
    let sending = Instant::now();
    serial.write_all(&out).unwrap();
    read_until(&mut serial, &mut seen, b"ok\r\n");
    let to_board = sending.elapsed();
    let receiving = Instant::now();
    let mut got = seen.len();
    while got < LINKRATE_BYTES {
        let n = serial.read(&mut chunk).expect("the board's bytes");
        assert!(n > 0, "the link-rate program closed the link");
        got += n;
    }
    let from_board = receiving.elapsed();
    let sum: u64 = out.iter().map(|b| u64::from(*b)).sum();
    board.wait_for(
        &format!("received {LINKRATE_BYTES} sum {sum} wrong 0 lost 0, sent {LINKRATE_BYTES}"),
        Duration::from_secs(20),
    );
    let rate = |d: Duration| LINKRATE_BYTES as f64 / d.as_secs_f64();
    (rate(to_board), rate(from_board))
}

fn unhex(s: &str) -> Vec<u8> {
    lanyard_std::describe::parse_hex(s.trim()).expect("hex")
}

/// Waits until the server has `state` from the device for `job`.
async fn until_state(server: &Arc<Mutex<FirmwareServer>>, job: &str, want: UpdateState) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = server.lock().unwrap().progress(ID).cloned();
        if let Some(p) = &now
            && p.job_id == job
            && p.state == want
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{job} never reached {want:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-arm and the firmware builds: run by scripts/test-all.sh"]
async fn the_stm32_firmware_updates_itself_in_qemu_and_a_bad_image_rolls_back() {
    let builds = PathBuf::from(
        std::env::var("LANYARD_STM32_UPDATE")
            .expect("LANYARD_STM32_UPDATE: the firmware builds (scripts/test-all.sh makes them)"),
    );
    let read = |name: &str| std::fs::read(builds.join(name)).unwrap();
    let secret = unhex(&String::from_utf8(read("fleet.key")).unwrap());
    let key = ed25519_compact::SecretKey::from_slice(&secret).unwrap();
    let good = Release::sign("fw-0.2.0", "0.2.0", read("0.2.0.bin"), BLOCK, &key).unwrap();
    let bad = Release::sign("fw-0.3.0", "0.3.0", read("0.3.0-bad.bin"), BLOCK, &key).unwrap();
    let good_blocks = good.job().blocks();
    let good_bytes = good.image.len();

    let dir = tempfile::tempdir().unwrap();
    let (raw_in, raw_out) = raw_link_rate(&builds.join("linkrate.elf"), dir.path());
    println!(
        "qemu's serial link, raw: host to board {:.1} KB/s, board to host {:.1} KB/s \
         ({LINKRATE_BYTES} bytes each way)",
        raw_in / 1e3,
        raw_out / 1e3
    );
    let broker = Mosquitto::start();
    let (stop_twin, twin) = spawn_twin(broker.port, dir.path());
    let server = Arc::new(Mutex::new(FirmwareServer::new()));
    server.lock().unwrap().add(good);
    server.lock().unwrap().add(bad);
    let (offers, offered) = mpsc::unbounded_channel();
    let (stop_server, stopped) = oneshot::channel::<()>();
    let mut t = MqttTransport::connect_and_wait(
        MqttConfig::new("127.0.0.1", broker.port, "lanyard-ota"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let shared = server.clone();
    let serving = tokio::spawn(async move {
        run_firmware_server(shared, &mut t, offered, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let offer = |job: &str| {
        let msg = server.lock().unwrap().offer(ID, job).unwrap();
        offers.send(msg).unwrap();
    };

    let mut boot = Bootloader {
        // Erased flash: nothing kept, no trial asked.
        flash: vec![0xff; FLASH_SIZE],
        current: read("0.1.0.bin"),
        on_trial: None,
        dir: dir.path().to_owned(),
    };
    let started = Instant::now();

    // 0.1.0 runs; the good image is offered and downloaded, verified, and
    // the board resets into it.
    let board = boot.boot();
    let link = bridge(broker.port, &board).await;
    board.wait_for("version 0.1.0", Duration::from_secs(10));
    board.wait_for("state Provisioning -> Active", Duration::from_secs(20));
    offer("fw-0.2.0");
    board.wait_for("update downloading", Duration::from_secs(20));
    let downloading = Instant::now();
    board.wait_for("update verified", Duration::from_secs(60));
    let took = downloading.elapsed().as_secs_f64();
    let rate = good_bytes as f64 / took;
    println!(
        "downloaded and verified {good_blocks} blocks of {BLOCK} bytes ({good_bytes} B) in \
         {took:.2} s: {:.1} KB/s, {:.0} % of the raw link's host-to-board rate \
         ({:.2}x its time)",
        rate / 1e3,
        100.0 * rate / raw_in,
        raw_in / rate
    );
    board.wait_for("restarting", Duration::from_secs(10));
    until_state(&server, "fw-0.2.0", UpdateState::Verified).await;
    let served = server.lock().unwrap().served(ID);
    let sent: u32 = served.values().sum();
    assert_eq!(served.len() as u32, good_blocks, "every block was sent");
    // Blocks are asked again only after 5 s without them: none here.
    assert_eq!(sent, good_blocks, "no block sent twice");
    boot.reset(board);
    link.await.unwrap();

    // The trial boot: 0.2.0 runs its self-test, passes, is accepted.
    let board = boot.boot();
    let link = bridge(broker.port, &board).await;
    board.wait_for("version 0.2.0", Duration::from_secs(10));
    board.wait_for("self-test passed", Duration::from_secs(10));
    board.wait_for("update accepted", Duration::from_secs(10));
    until_state(&server, "fw-0.2.0", UpdateState::Accepted).await;
    board.wait_for("state Provisioning -> Active", Duration::from_secs(20));

    // The bad image: downloaded, verified, booted on trial, its self-test
    // fails, it is rejected and the board resets into 0.2.0 again.
    offer("fw-0.3.0");
    board.wait_for("update verified", Duration::from_secs(60));
    board.wait_for("restarting", Duration::from_secs(10));
    boot.reset(board);
    link.await.unwrap();
    let board = boot.boot();
    let link = bridge(broker.port, &board).await;
    board.wait_for("version 0.3.0", Duration::from_secs(10));
    board.wait_for("self-test failed", Duration::from_secs(10));
    board.wait_for(
        "update rejected (self_test_failed)",
        Duration::from_secs(10),
    );
    board.wait_for("restarting", Duration::from_secs(10));
    until_state(&server, "fw-0.3.0", UpdateState::Rejected).await;
    let p = server.lock().unwrap().progress(ID).cloned().unwrap();
    assert_eq!(p.reason, Some(UpdateReason::SelfTestFailed));
    boot.reset(board);
    link.await.unwrap();

    // Back on the confirmed image, which still reports the rejection.
    let board = boot.boot();
    let link = bridge(broker.port, &board).await;
    board.wait_for("version 0.2.0", Duration::from_secs(10));
    board.wait_for("state Provisioning -> Active", Duration::from_secs(20));
    assert!(
        !board.said("self-test"),
        "the confirmed image is not on trial"
    );
    println!("whole scenario: {:.1} s", started.elapsed().as_secs_f64());
    drop(board);
    link.await.unwrap();

    let _ = stop_server.send(());
    serving.await.unwrap();
    let _ = stop_twin.send(());
    twin.await.unwrap();
}
