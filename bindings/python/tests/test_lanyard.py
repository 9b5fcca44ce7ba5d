"""The Python package against the Rust SDK: decoding, the framed link, and
the bridge between a TCP "serial port" and a real mosquitto (started here;
``mosquitto_sub``/``mosquitto_pub`` play the cloud)."""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import lanyard

# The `ack` example of docs/wire-format.md and its framed form.
ACK = bytes.fromhex("a40062633901040202051b0000018bcfe56be8")
ACK_FRAME = bytes.fromhex(
    "2482781e6c616e796172642f76312f6c792d3061316232633364346535662f61636b53"
    "a40a62633901040202051b0109018bcfe56be82e3c00"
)
DEVICE = "ly-0200000000bb"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Decoding(unittest.TestCase):
    def test_a_message_decodes_to_a_dict(self):
        name, msg = lanyard.decode(ACK, "ack")
        self.assertEqual(name, "ack")
        self.assertEqual(msg["command_id"], "c9")
        self.assertEqual(lanyard.decode(ACK)[0], "ack")

    def test_garbage_and_unknown_types_are_value_errors(self):
        with self.assertRaises(ValueError):
            lanyard.decode(b"\xff\x00", "ack")
        with self.assertRaises(ValueError):
            lanyard.decode(ACK, "no-such-type")


class FramedLink(unittest.TestCase):
    def test_the_documented_frame_is_produced_and_read_back(self):
        topic = "lanyard/v1/ly-0a1b2c3d4e5f/ack"
        self.assertEqual(lanyard.encode_frame(topic, ACK), ACK_FRAME)
        d = lanyard.FrameDecoder()
        got = []
        for i in range(0, len(ACK_FRAME), 5):  # a UART hands over a few bytes
            got += d.feed(ACK_FRAME[i : i + 5])
        self.assertEqual(got, [(topic, "ack", ACK)])

    def test_damage_is_dropped_counted_and_the_next_frame_passes(self):
        topic = f"lanyard/v1/{DEVICE}/heartbeat"
        good = lanyard.encode_frame(topic, b"\xa0")
        bad = bytearray(good)
        bad[3] ^= 0x40
        d = lanyard.FrameDecoder()
        self.assertEqual(d.feed(bytes(bad) + good), [(topic, "heartbeat", b"\xa0")])
        self.assertEqual(d.stats()["crc_errors"], 1)
        with self.assertRaises(ValueError):
            lanyard.encode_frame("not/a/lanyard/topic", b"")


class BridgeToMosquitto(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.port = free_port()
        conf = os.path.join(self.dir.name, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.broker = subprocess.Popen([mosquitto, "-c", conf], stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                break
            except OSError:
                self.assertLess(time.time(), deadline, "mosquitto did not start")
                time.sleep(0.05)

    def tearDown(self):
        self.broker.kill()
        self.broker.wait()
        self.dir.cleanup()

    def test_frames_reach_the_broker_and_commands_reach_the_device(self):
        # The device's UART is a TCP server, as qemu's -serial tcp:...,server=on.
        uart = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(uart.close)
        uart_addr = "127.0.0.1:%d" % uart.getsockname()[1]
        sub = subprocess.Popen(
            ["mosquitto_sub", "-p", str(self.port), "-C", "1", "-W", "20",
             "-t", f"lanyard/v1/{DEVICE}/register", "-F", "%x"],
            stdout=subprocess.PIPE, text=True,
        )
        time.sleep(0.3)
        bridge = lanyard.Bridge(f"mqtt://127.0.0.1:{self.port}", device_id=DEVICE)
        result = {}
        runner = threading.Thread(
            target=lambda: result.update(stats=bridge.run_tcp(uart_addr, seconds=20))
        )
        runner.start()
        device, _ = uart.accept()
        device.settimeout(20)
        device.sendall(lanyard.encode_frame(f"lanyard/v1/{DEVICE}/register", b"\xa1\x00\x01"))
        out, _ = sub.communicate(timeout=25)
        self.assertEqual(out.strip(), "a10001")

        # A command published by the cloud arrives as one frame.
        decoder = lanyard.FrameDecoder()
        frames = []
        deadline = time.time() + 20
        while not frames:
            subprocess.run(
                ["mosquitto_pub", "-p", str(self.port), "-q", "1",
                 "-t", f"lanyard/v1/{DEVICE}/cmd", "-m", "hello"],
                check=True,
            )
            device.settimeout(1)
            try:
                frames += decoder.feed(device.recv(4096))
            except socket.timeout:
                self.assertLess(time.time(), deadline, "no command reached the device")
        self.assertEqual(frames[0], (f"lanyard/v1/{DEVICE}/cmd", "cmd", b"hello"))

        device.close()  # the device going away ends the bridge
        runner.join(timeout=30)
        self.assertFalse(runner.is_alive())
        self.assertEqual(result["stats"]["to_cloud"], 1)
        self.assertGreaterEqual(result["stats"]["to_device"], 1)

    def test_a_bad_broker_address_is_a_value_error(self):
        with self.assertRaises(ValueError):
            lanyard.Bridge("http://example")
        with self.assertRaises(ValueError):
            lanyard.Bridge("mqtt://127.0.0.1:1883", tenant="Not/Valid")


if __name__ == "__main__":
    unittest.main()
