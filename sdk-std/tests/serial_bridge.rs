//! `lanyard bridge --serial` on a real pseudo-terminal: a small Python
//! helper opens the pty pair (raw mode, as `stty raw` would set a serial
//! port) and relays its master side to a TCP socket that plays the device's
//! UART here; the bridge process opens the slave side by path, as it would
//! `/dev/ttyUSB0`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Mosquitto;
use lanyard_core::agent::messages::{MessageKind, topic};
use lanyard_nostd::envelope::{decode_envelope, encode_envelope};
use lanyard_nostd::frame::{FrameDecoder, encode_frame};
use lanyard_std::mqtt::{MqttConfig, MqttTransport};
use lanyard_std::transport::{Qos, Transport, TransportEvent};

const ID: &str = "ly-0200000000aa";

/// Opens a pty, puts it in raw mode, prints the slave's path, and copies
/// bytes between the master and a TCP connection to the port in argv[1].
const PTY_RELAY: &str = r#"
import os, pty, select, socket, sys, tty
master, slave = pty.openpty()
tty.setraw(slave)
print(os.ttyname(slave), flush=True)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
while True:
    r, _, _ = select.select([master, s], [], [])
    if master in r:
        data = os.read(master, 4096)
        if not data:
            break
        s.sendall(data)
    if s in r:
        data = s.recv(4096)
        if not data:
            break
        os.write(master, data)
"#;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn frame(kind: MessageKind, message: &[u8]) -> Vec<u8> {
    let mut env = vec![0u8; 256];
    let n = encode_envelope(ID, kind, message, &mut env).unwrap();
    let mut f = vec![0u8; 300];
    let m = encode_frame(&env[..n], &mut f).unwrap();
    f.truncate(m);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_command_carries_frames_over_a_pseudo_terminal() {
    let broker = Mosquitto::start();
    let mut cloud = MqttTransport::connect_and_wait(
        MqttConfig::new("127.0.0.1", broker.port, "cloud"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    cloud
        .subscribe(&topic(ID, MessageKind::Register))
        .await
        .unwrap();

    let uart = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut relay = Killed(
        Command::new("python3")
            .args([
                "-c",
                PTY_RELAY,
                &uart.local_addr().unwrap().port().to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut tty = String::new();
    BufReader::new(relay.0.stdout.take().unwrap())
        .read_line(&mut tty)
        .unwrap();
    let (mut device, _) = uart.accept().unwrap();
    device
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let _bridge = Killed(
        Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args([
                "bridge",
                "--broker",
                &format!("mqtt://127.0.0.1:{}", broker.port),
                "--device-id",
                ID,
                "--serial",
                tty.trim(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Device -> pty -> bridge -> broker. Sent again until it arrives, so a
    // slow start of the bridge process cannot fail the test; a repeat is
    // harmless (the first arrival ends the loop).
    let register = frame(MessageKind::Register, &[0xa1, 0x00, 0x01]);
    let got = loop {
        device.write_all(&register).unwrap();
        match tokio::time::timeout(Duration::from_millis(500), cloud.recv()).await {
            Ok(Ok(TransportEvent::Message { topic, payload })) => break (topic, payload),
            Ok(other) => panic!("{other:?}"),
            Err(_) => continue,
        }
    };
    assert_eq!(
        got,
        (
            topic(ID, MessageKind::Register).to_string(),
            vec![0xa1, 0x00, 0x01]
        )
    );

    // Broker -> bridge -> pty -> device, zero bytes and all.
    cloud
        .publish(
            &topic(ID, MessageKind::Command),
            &[0x00, 0xff, 0x00],
            Qos::AtLeastOnce,
        )
        .await
        .unwrap();
    let mut decoder: FrameDecoder<512> = FrameDecoder::new();
    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    while received.is_empty() {
        let n = device.read(&mut buf).expect("a frame from the bridge");
        assert!(n > 0, "the relay closed");
        decoder.feed(&buf[..n], |f| {
            let e = decode_envelope(f).unwrap();
            received.push((e.kind, e.message.to_vec()));
        });
    }
    assert_eq!(received, [(MessageKind::Command, vec![0x00, 0xff, 0x00])]);
}
