"""The Python package against the Rust SDK: decoding, the framed link, the
bridge between a TCP "serial port" and a real mosquitto (started here;
``mosquitto_sub``/``mosquitto_pub`` play the cloud), and the app client
against a real ``lanyard twin`` and ``lanyard device`` (the binary named by
``LANYARD_BIN``; scripts/test-all.sh builds it)."""

import json
import os
import shutil
import socket
import subprocess
import sys
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


def start_mosquitto(workdir):
    """A mosquitto on a free port, once it accepts connections."""
    port = free_port()
    conf = os.path.join(workdir, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    # Its log (on stderr) tells when a client took another's id.
    with open(os.path.join(workdir, "mosquitto.log"), "w") as log:
        broker = subprocess.Popen([mosquitto, "-c", conf], stderr=log)
    eventually(lambda: socket.create_connection(("127.0.0.1", port)).close() or True,
               "mosquitto did not start", seconds=10)
    return broker, port


def start_fleet(cls, twin_args=()):
    """A mosquitto, a ``lanyard twin`` (with ``twin_args``) and a ``lanyard
    device`` for a test class: sets ``cls.broker``, ``cls.port`` and what
    ``stop_fleet`` ends."""
    binary = os.environ.get("LANYARD_BIN")
    if not binary:
        raise RuntimeError("set LANYARD_BIN to the lanyard binary (scripts/test-all.sh does)")
    cls.dir = tempfile.TemporaryDirectory()
    cls.procs, cls.logs = [], []
    broker, cls.port = start_mosquitto(cls.dir.name)
    cls.procs.append(broker)
    cls.broker = f"mqtt://127.0.0.1:{cls.port}"
    for role in ("twin", "device"):
        log = open(os.path.join(cls.dir.name, f"{role}.log"), "w")
        cls.logs.append(log)
        extra = list(twin_args) if role == "twin" else []
        cls.procs.append(subprocess.Popen(
            [binary, role, "--broker", cls.broker,
             "--state-dir", os.path.join(cls.dir.name, role), *extra],
            stdout=log, stderr=subprocess.STDOUT,
        ))


def stop_fleet(cls):
    for p in reversed(cls.procs):
        p.terminate()
        p.wait()
    for log in cls.logs:
        log.close()
    cls.dir.cleanup()


def eventually(check, what, seconds=20):
    """Retries ``check`` until it returns true (exceptions count as false)."""
    deadline = time.time() + seconds
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.time() > deadline:
            raise AssertionError(f"{what} (within {seconds} s)")
        time.sleep(0.1)


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

    def test_an_int_is_a_type_error_not_that_many_zero_bytes(self):
        for wrong in (5, 2**40, "a0", None):
            with self.assertRaises(TypeError):
                lanyard.decode(wrong)


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
        self.broker, self.port = start_mosquitto(self.dir.name)

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

    def test_the_fog_tier_sends_one_summary_of_the_readings(self):
        uart = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(uart.close)
        uart_addr = "127.0.0.1:%d" % uart.getsockname()[1]
        sub = subprocess.Popen(
            ["mosquitto_sub", "-p", str(self.port), "-C", "1", "-W", "20",
             "-t", f"lanyard/v1/{DEVICE}/telemetry", "-F", "%x"],
            stdout=subprocess.PIPE, text=True,
        )
        time.sleep(0.3)
        bridge = lanyard.Bridge(f"mqtt://127.0.0.1:{self.port}", device_id=DEVICE,
                                fog_window_s=1.0)
        result = {}
        runner = threading.Thread(
            target=lambda: result.update(stats=bridge.run_tcp(uart_addr, seconds=20))
        )
        runner.start()
        device, _ = uart.accept()
        for seq in range(1, 11):
            # {0: seq, 1: time, 2: {"t": seq}}, CBOR
            reading = bytes([0xa3, 0x00, seq, 0x01, seq, 0x02, 0xa1, 0x61, ord("t"), seq])
            device.sendall(lanyard.encode_frame(f"lanyard/v1/{DEVICE}/telemetry", reading))
        out, _ = sub.communicate(timeout=25)
        summary = lanyard.decode(bytes.fromhex(out.strip()), "telemetry")[1]
        self.assertEqual(summary["readings"]["t"],
                         {"count": 10, "min": 1, "max": 10, "mean": 5.5, "last": 10})
        device.close()
        runner.join(timeout=30)
        self.assertEqual((result["stats"]["fog_readings"], result["stats"]["fog_summaries"]),
                         (10, 1))
        with self.assertRaises(ValueError):
            lanyard.Bridge(f"mqtt://127.0.0.1:{self.port}", fog_window_s=0)

    def test_a_bad_broker_address_is_a_value_error(self):
        with self.assertRaises(ValueError):
            lanyard.Bridge("http://example")
        with self.assertRaises(ValueError):
            lanyard.Bridge("mqtt://127.0.0.1:1883", tenant="Not/Valid")


class ValveDrivenFromPython(unittest.TestCase):
    """The smart valve example (``sdk-std/examples/valve.rs``, built by
    scripts/test-all.sh; ``LANYARD_VALVE_BIN``) with a ``lanyard twin``,
    driven by ``lanyard.App``: the position it reaches is reported, one past
    its limit is refused and the app sees why."""

    VALVE = "ly-020000000a01"

    def setUp(self):
        binary, valve = os.environ.get("LANYARD_BIN"), os.environ.get("LANYARD_VALVE_BIN")
        if not binary or not valve:
            raise RuntimeError("set LANYARD_BIN and LANYARD_VALVE_BIN (scripts/test-all.sh does)")
        self.dir = tempfile.TemporaryDirectory()
        broker, port = start_mosquitto(self.dir.name)
        self.procs = [broker]
        self.broker = f"mqtt://127.0.0.1:{port}"
        self.log = open(os.path.join(self.dir.name, "procs.log"), "w")
        self.procs.append(subprocess.Popen(
            [binary, "twin", "--broker", self.broker, "--state-dir", os.path.join(self.dir.name, "twin"),
             "--telemetry-ms", "1000"],
            stdout=self.log, stderr=subprocess.STDOUT))
        self.procs.append(subprocess.Popen(
            [valve, self.broker, os.path.join(self.dir.name, "valve")],
            stdout=self.log, stderr=subprocess.STDOUT))
        self.app = lanyard.App(self.broker, client_id="python-valve-app")

    def tearDown(self):
        self.app.close()
        for p in reversed(self.procs):
            p.terminate()
            p.wait()
        self.log.close()
        self.dir.cleanup()

    def test_a_reachable_position_is_reported_and_one_past_the_limit_refused(self):
        eventually(lambda: self.app.get_shadow(self.VALVE, timeout=2)["version"] >= 0,
                   "the valve registered")
        version = self.app.set_desired(self.VALVE, {"position": 40})
        self.assertIsInstance(version, int)
        eventually(lambda: self.app.get_shadow(self.VALVE, timeout=2)["reported"].get("position") == 40,
                   "the valve reached 40")
        # More than the valve holds (16 leaves): refused by the twin host.
        with self.assertRaises(lanyard.Rejected) as refused:
            self.app.set_desired(self.VALVE, {"extra": {f"k{i}": i for i in range(17)}})
        self.assertIn("16 leaves", str(refused.exception))
        self.assertNotIn("extra", self.app.get_shadow(self.VALVE)["desired"])
        self.app.set_desired(self.VALVE, {"position": 95})
        refusal = None
        deadline = time.time() + 20
        while refusal is None and time.time() < deadline:
            e = self.app.next_event(timeout=1)
            if e and e["type"] == "reported" and e["device"] == self.VALVE and e["rejected"]:
                refusal = e
        self.assertIsNotNone(refusal, "no refusal reported")
        self.assertEqual(refusal["rejected"], {"position": "out_of_range"})
        self.assertEqual(refusal["state"]["position"], 40)
        shadow = self.app.get_shadow(self.VALVE)
        self.assertEqual(shadow["rejected"], {"position": "out_of_range"})
        self.assertEqual(shadow["reported"]["position"], 40)
        self.assertFalse(shadow["in_sync"])
        # No loop over it: the version barely moves while the twin keeps
        # desired at 95 and the valve keeps refusing.
        before = shadow["version"]
        time.sleep(2)
        self.assertLessEqual(self.app.get_shadow(self.VALVE)["version"], before + 3)

    def test_its_own_telemetry_and_a_command_that_finishes_later(self):
        eventually(lambda: self.app.get_shadow(self.VALVE, timeout=2)["version"] >= 0,
                   "the valve registered")
        self.app.set_desired(self.VALVE, {"position": 50})
        eventually(lambda: self.app.get_shadow(self.VALVE, timeout=2)["reported"].get("position") == 50,
                   "the valve reached 50")
        reading = None
        deadline = time.time() + 20
        while reading is None and time.time() < deadline:
            e = self.app.next_event(timeout=1)
            if e and e["type"] == "telemetry" and e["device"] == self.VALVE \
                    and e["readings"].get("position") == 50:
                reading = e
        self.assertIsNotNone(reading, "no telemetry at position 50")
        self.assertEqual(reading["readings"]["flow_lpm"], 20.0)
        self.assertGreaterEqual(reading["seq"], 1)
        started = time.time()
        done = self.app.command(self.VALVE, "calibrate", {"sweeps": 1})
        self.assertEqual(done["status"], "Succeeded")
        self.assertEqual(done["result"], {"travel_pct": 100})
        self.assertGreaterEqual(time.time() - started, 0.4)
        bad = self.app.command(self.VALVE, "calibrate", {"sweeps": 9})
        self.assertEqual((bad["status"], bad["reason"]), ("Rejected", "BadArguments"))


class AppOfATwinHost(unittest.TestCase):
    """``lanyard.App`` against a mosquitto, a ``lanyard twin`` host and a
    ``lanyard device`` (a simulated std device), each its own process."""

    SIM = "ly-020000000001"  # lanyard device's default MAC

    @classmethod
    def setUpClass(cls):
        # The host takes writes from its operator only.
        start_fleet(cls, twin_args=["--operators", "lanyard-py-ops"])
        cls.app = lanyard.App(cls.broker, client_id="python-app", operator="lanyard-py-ops")
        # Registered once the twin host has a shadow for it.
        eventually(lambda: cls.app.get_shadow(cls.SIM, timeout=2)["version"] >= 0,
                   "the simulated device registered")

    @classmethod
    def tearDownClass(cls):
        cls.app.close()
        stop_fleet(cls)

    def test_desired_state_reaches_the_device_and_comes_back_reported(self):
        self.app.set_desired(self.SIM, {"target_c": 22, "fan": {"speed": 0.5}})

        def reported():
            shadow = self.app.get_shadow(self.SIM, timeout=2)
            return shadow["in_sync"] and shadow["reported"].get("target_c") == 22 \
                and shadow["reported"].get("fan") == {"speed": 0.5}

        eventually(reported, "the device reported the desired state")
        shadow = self.app.get_shadow(self.SIM)
        self.assertEqual(shadow["desired"]["target_c"], 22)
        self.assertEqual(shadow["desired"]["fan"], {"speed": 0.5})
        # None deletes a desired property.
        self.app.set_desired(self.SIM, {"target_c": None})
        eventually(lambda: "target_c" not in self.app.get_shadow(self.SIM, timeout=2)["desired"],
                   "target_c was deleted from desired state")

    def test_writes_sent_without_an_answer_reach_the_shadow_in_order(self):
        # The operator's writes name it (the host takes no other's): the
        # unanswered write does too.
        for i in range(50):
            self.app.send_desired(self.SIM, {"unanswered": i})
        eventually(lambda: self.app.get_shadow(self.SIM, timeout=2)["desired"].get("unanswered")
                   == 49, "the last of the writes is the desired state")
        with self.assertRaises(ValueError):
            self.app.send_desired("not a device", {"x": 1})
        with self.assertRaises(ValueError):
            self.app.send_desired(self.SIM, {"x": float("nan")})

    def test_the_delta_and_the_report_can_be_watched(self):
        self.app.set_desired(self.SIM, {"mode": "eco"})
        seen = set()
        deadline = time.time() + 20
        while seen != {"delta", "reported"} and time.time() < deadline:
            e = self.app.next_event(timeout=1)
            if e and e["type"] in ("delta", "reported") and e["device"] == self.SIM \
                    and e["state"].get("mode") == "eco":
                seen.add(e["type"])
        self.assertEqual(seen, {"delta", "reported"})

    def test_the_operator_lists_pushes_a_configuration_and_is_told_of_refusals(self):
        devices = self.app.list_devices()
        sim = [d for d in devices if d["device"] == self.SIM]
        self.assertEqual(len(sim), 1, devices)
        self.assertTrue(sim[0]["online"])
        self.assertFalse(sim[0]["decommissioned"])
        version = int(time.time())
        report = self.app.push_config([self.SIM], version, {"telemetry_ms": 45000})
        self.assertEqual(report["applied"], [self.SIM], report)
        again = self.app.push_config([self.SIM], version, {"telemetry_ms": 45000})
        self.assertEqual(again["ignored"], [[self.SIM, version]], again)
        with self.assertRaises(ValueError):
            self.app.push_config([self.SIM], version + 1, {"telemetry_ms": 5})
        with self.assertRaises(ValueError):
            self.app.push_config([self.SIM], version + 1, {"speed": 5})
        with self.assertRaises(lanyard.Rejected):
            self.app.resolve(self.SIM, "target_c", "cloud")
        with self.assertRaises(ValueError):
            self.app.resolve(self.SIM, "target_c", "nobody")
        # A command to a device that never registered: refused by the twin
        # host at once, not after the timeout.
        started = time.monotonic()
        with self.assertRaises(lanyard.Rejected) as refused:
            self.app.command("ly-ffffffffffff", "blink_led", timeout=10)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("no device with this id has registered", str(refused.exception))

    def test_two_apps_in_one_process_each_keep_their_connection(self):
        # Without a client id each App gets its own: the broker never
        # closes one because the other took its id.
        with lanyard.App(self.broker) as a, lanyard.App(self.broker) as b:
            for _ in range(3):
                self.assertGreaterEqual(a.get_shadow(self.SIM, timeout=5)["version"], 0)
                self.assertGreaterEqual(b.get_shadow(self.SIM, timeout=5)["version"], 0)
        with open(os.path.join(self.dir.name, "mosquitto.log")) as log:
            taken = [line for line in log if "already connected" in line]
        self.assertEqual(taken, [])

    def test_commands_are_acknowledged_with_their_final_status(self):
        blink = self.app.command(self.SIM, "blink_led", {"count": 2, "period_ms": 100})
        self.assertEqual(blink["status"], "Succeeded")
        unknown = self.app.command(self.SIM, "self_destruct")
        self.assertEqual((unknown["status"], unknown["reason"]), ("Rejected", "UnknownCommand"))
        bad = self.app.command(self.SIM, "blink_led", {"count": 0})
        self.assertEqual(bad["reason"], "BadArguments")

    def test_bad_input_is_refused_before_anything_is_sent(self):
        for state in ({"": 1}, {"a": b"bytes"}, {"x": float("nan")}, ["not", "a", "dict"],
                      {"k" * 200: 1}, {"big": 2 ** 64}, {"deep": {"list": [1, -(2 ** 63) - 1]}}):
            with self.assertRaises(ValueError, msg=repr(state)):
                self.app.set_desired(self.SIM, state)
        loop = {}
        loop["self"] = loop
        with self.assertRaises(ValueError):
            self.app.set_desired(self.SIM, loop)
        with self.assertRaises(ValueError):
            self.app.command(self.SIM, "blink_led", {"count": None})  # no nulls in arguments
        with self.assertRaises(ValueError):
            self.app.get_shadow(self.SIM, timeout=-1)
        with self.assertRaises(ValueError):
            lanyard.App("mqtt://127.0.0.1:70000")
        # Nothing of that reached the shadow.
        desired = self.app.get_shadow(self.SIM)["desired"]
        self.assertFalse({"", "a", "x", "k" * 200, "big", "deep"} & set(desired))

    def test_no_broker_is_an_os_error(self):
        with self.assertRaises(OSError):
            lanyard.App(f"mqtt://127.0.0.1:{free_port()}", timeout=0.5)

    def test_a_closed_app_refuses_calls(self):
        with lanyard.App(self.broker, client_id="python-app-closing") as app:
            self.assertGreaterEqual(app.get_shadow(self.SIM)["version"], 0)
        with self.assertRaises(RuntimeError):
            app.get_shadow(self.SIM)
        app.close()  # again: nothing

    def test_only_the_hosts_operator_writes(self):
        with lanyard.App(self.broker, operator="lanyard-eve") as eve:
            with self.assertRaisesRegex(lanyard.Rejected, "lanyard-eve is not an operator"):
                eve.set_desired(self.SIM, {"mode": "off"})
        with lanyard.App(self.broker) as nameless:
            with self.assertRaisesRegex(lanyard.Rejected, "only from its operators"):
                nameless.set_desired(self.SIM, {"mode": "off"})
        with self.assertRaises(ValueError):
            lanyard.App(self.broker, operator="a/b")

    def test_an_unknown_device_is_rejected(self):
        with self.assertRaises(lanyard.Rejected):
            self.app.get_shadow("ly-ffffffffffff", timeout=5)


class DeviceOnATwinHost(unittest.TestCase):
    """``lanyard.Device`` (this process as a device, its platform Python
    callables) against a mosquitto and a ``lanyard twin``, driven by a
    ``lanyard.App``."""

    MAC = "02:00:00:00:00:cc"

    def setUp(self):
        binary = os.environ.get("LANYARD_BIN")
        if not binary:
            raise RuntimeError("set LANYARD_BIN to the lanyard binary (scripts/test-all.sh does)")
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        broker, port = start_mosquitto(self.dir.name)
        self.addCleanup(lambda: (broker.kill(), broker.wait()))
        self.broker = f"mqtt://127.0.0.1:{port}"
        log = open(os.path.join(self.dir.name, "twin.log"), "w")
        self.addCleanup(log.close)
        twin = subprocess.Popen(
            [binary, "twin", "--broker", self.broker,
             "--state-dir", os.path.join(self.dir.name, "twin")],
            stdout=log, stderr=subprocess.STDOUT,
        )
        self.addCleanup(lambda: (twin.terminate(), twin.wait()))
        self.state_dir = os.path.join(self.dir.name, "device")

    def start_device(self, **platform):
        events = []
        dev = lanyard.Device(self.broker, self.MAC, self.state_dir, **platform)
        runner = threading.Thread(target=dev.run, kwargs={"seconds": 60, "on_event": events.append})
        runner.start()
        return dev, runner, events

    def test_the_platform_is_python_and_the_cloud_sees_a_device(self):
        def add(args):
            return {"sum": args["a"] + args["b"]}

        def fail(args):
            raise RuntimeError("the service would not restart")

        blinks = []
        dev, runner, events = self.start_device(
            commands={"add": add, "fail": fail},
            sensors=lambda: (21.5, 40.0),
            blink=lambda count, period_ms: blinks.append((count, period_ms)),
        )
        app = lanyard.App(self.broker, client_id="py-device-test")
        dev_id = dev.device_id
        self.assertEqual(dev_id, "ly-0200000000cc")
        eventually(lambda: app.get_shadow(dev_id, timeout=2)["version"] >= 0,
                   "the device registered")

        added = app.command(dev_id, "add", {"a": 2, "b": 3})
        self.assertEqual((added["status"], added["result"]), ("Succeeded", {"sum": 5}))
        missing = app.command(dev_id, "add", {"a": 2})
        self.assertEqual((missing["status"], missing["reason"]), ("Rejected", "BadArguments"))
        # The handler's own words reach the app.
        self.assertEqual(missing["detail"], "missing 'b'")
        with self.assertLogs("lanyard", level="ERROR") as logged:
            failed = app.command(dev_id, "fail")
        self.assertEqual((failed["status"], failed["reason"], failed["detail"]),
                         ("Failed", "ExecutionFailed", "the service would not restart"))
        self.assertIn("the service would not restart", "\n".join(logged.output))
        unknown = app.command(dev_id, "reboot")
        self.assertEqual(unknown["reason"], "UnknownCommand")
        self.assertEqual(app.command(dev_id, "blink_led", {"count": 2, "period_ms": 100})["status"],
                         "Succeeded")
        self.assertEqual(blinks, [(2, 100)])
        reading = app.command(dev_id, "read_sensor")["result"]
        self.assertEqual(reading, {"temperature_c": 21.5, "humidity_pct": 40.0})
        # On mains (no battery callable): healthy.
        diagnostics = app.command(dev_id, "diagnostics")["result_cbor"]
        self.assertEqual(lanyard.decode(diagnostics, "health")[1]["status"], "Normal")

        # Desired state: applied and reported by the agent; the delta
        # reaches Python decoded.
        app.set_desired(dev_id, {"fan": {"speed": 3}})
        eventually(lambda: app.get_shadow(dev_id, timeout=2)["reported"].get("fan") == {"speed": 3},
                   "the device reported the desired fan speed")
        deltas = [e for e in list(events)
                  if e["type"] == "received" and e["kind"] == "shadow/delta"]
        self.assertTrue(any(e["message"]["state"].get("fan") == {"speed": 3} for e in deltas), deltas)

        # The host's own state, reported from Python.
        dev.report("door.open", True)
        dev.report("cpu_temp", 48.5)
        dev.report("uplink", "lte")
        with self.assertRaises(ValueError):
            dev.report("bad..path", 1)
        with self.assertRaises(ValueError):
            dev.report("list", [1, 2])
        with self.assertRaises(ValueError):
            dev.report("huge", 2 ** 70)  # not silently a float

        def reported_own_state():
            r = app.get_shadow(dev_id, timeout=2)["reported"]
            return r.get("door") == {"open": True} and r.get("cpu_temp") == 48.5 \
                and r.get("uplink") == "lte"

        eventually(reported_own_state, "the device reported its own state")

        # Decommissioning ends run().
        self.assertEqual(app.command(dev_id, "decommission")["status"], "Succeeded")
        runner.join(timeout=20)
        self.assertFalse(runner.is_alive(), "run() returned once decommissioned")
        states = [(e["from"], e["to"]) for e in events if e["type"] == "state"]
        self.assertEqual(states[-1][1], "Decommissioned")
        with self.assertRaises(RuntimeError):
            dev.run(seconds=1)

    def test_the_gateway_example_runs(self):
        example = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "..", "..", "..", "examples", "python", "gateway.py")
        gateway = subprocess.Popen(
            [sys.executable, example, "--broker", self.broker, "--state-dir", self.state_dir,
             "--mac", "02:00:00:00:00:ee", "--seconds", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.addCleanup(lambda: (gateway.kill(), gateway.wait(), gateway.stdout.close()))
        dev_id = "ly-0200000000ee"
        with lanyard.App(self.broker, client_id="py-example-test") as app:
            eventually(lambda: app.get_shadow(dev_id, timeout=2)["reported"]
                       .get("host", {}).get("name") == socket.gethostname(),
                       "the gateway reported its hostname")
            ok = app.command(dev_id, "restart_service", {"unit": "mosquitto"})
            self.assertEqual((ok["status"], ok["result"]),
                             ("Succeeded", {"unit": "mosquitto", "restarted": True}))
            refused = app.command(dev_id, "restart_service", {"unit": "sshd"})
            self.assertEqual((refused["status"], refused["reason"]), ("Rejected", "BadArguments"))
            app.command(dev_id, "decommission")
        out, _ = gateway.communicate(timeout=30)
        self.assertEqual(gateway.returncode, 0, out)
        self.assertIn("restarting mosquitto (simulated)", out)
        self.assertIn("state Active -> Decommissioned", out)

    def test_the_battery_is_read_through_python(self):
        dev, runner, events = self.start_device(battery_mv=lambda: 3350)  # 5 % of a Li-ion cell
        app = lanyard.App(self.broker, client_id="py-battery-test")
        eventually(lambda: app.get_shadow(dev.device_id, timeout=2)["version"] >= 0,
                   "the device registered")
        health = lanyard.decode(app.command(dev.device_id, "diagnostics")["result_cbor"], "health")[1]
        self.assertEqual((health["battery_pct"], health["status"]), (5, "Critical"), health)
        app.command(dev.device_id, "decommission")
        runner.join(timeout=20)
        self.assertFalse(runner.is_alive())

    def test_the_shadow_can_live_in_aws_iot(self):
        # Registered through the twin host first (the thing exists), then
        # the same device keeps its shadow on the AWS topics the host
        # serves as AWS IoT Core would.
        dev = lanyard.Device(self.broker, self.MAC, self.state_dir)
        runner = threading.Thread(target=dev.run, kwargs={"seconds": 5})
        runner.start()
        app = lanyard.App(self.broker, client_id="py-aws-test")
        dev_id = dev.device_id
        eventually(lambda: app.get_shadow(dev_id, timeout=2)["version"] >= 0,
                   "the device registered")
        runner.join(timeout=20)  # one connection per device id at a time
        dev = lanyard.Device(self.broker, self.MAC, self.state_dir + "-aws", aws=True,
                             policies={"mode": "device_wins", "*": "cloud_wins"})
        events = []
        aws_runner = threading.Thread(target=dev.run,
                                      kwargs={"seconds": 60, "on_event": events.append})
        aws_runner.start()
        app.set_desired(dev_id, {"fan": {"speed": 3}, "mode": "eco"})

        def reached():
            s = app.get_shadow(dev_id, timeout=2)
            return s["reported"].get("fan") == {"speed": 3} and s["reported"].get("mode") == "eco"

        eventually(reached, "the AWS-shadow device reported the desired state")
        # The device's own change of a property it wins becomes desired.
        dev.report("mode", "manual")

        def device_won():
            s = app.get_shadow(dev_id, timeout=2)
            return s["desired"].get("mode") == "manual" and s["reported"].get("mode") == "manual"

        eventually(device_won, "the device's mode written back as desired")
        deltas = [e for e in list(events)
                  if e["type"] == "received" and e["kind"] == "shadow/delta"]
        self.assertTrue(any(e["message"]["state"].get("fan") == {"speed": 3} for e in deltas),
                        deltas)
        # Commands still travel on Lanyard's topics.
        app.command(dev_id, "decommission")
        aws_runner.join(timeout=20)
        self.assertFalse(aws_runner.is_alive())

    def test_bad_arguments_to_the_device_are_value_errors(self):
        with self.assertRaises(ValueError):
            lanyard.Device(self.broker, "02:00:00:00:00", self.state_dir)
        with self.assertRaises(ValueError):
            lanyard.Device("tcp://127.0.0.1:1", self.MAC, self.state_dir)
        with self.assertRaises(ValueError):
            lanyard.Device(self.broker, self.MAC, self.state_dir, aws=True,
                           policies={"mode": "whoever_shouts"})
        with self.assertRaises(ValueError):
            lanyard.Device(self.broker, self.MAC, self.state_dir, shadow_name="config")
        with self.assertRaises(ValueError):
            lanyard.Device(self.broker, self.MAC, self.state_dir, aws=True, tenant="acme")


def make_pki(workdir):
    """A CA, a broker certificate for localhost and a client certificate,
    made with openssl (EC P-256, valid two days). Returns their paths."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, cwd=workdir, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=lanyard test CA")
    for name, san in (("broker", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                      ("client", "subjectAltName=DNS:client")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        with open(os.path.join(workdir, f"{name}.ext"), "w") as f:
            f.write(san + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    # mosquitto started as root reads its certificates as its own
    # unprivileged user: the directory (0700 from tempfile) and the key
    # (0600 from openssl) must let it. Throwaway test files.
    os.chmod(workdir, 0o755)
    os.chmod(os.path.join(workdir, "broker.key"), 0o644)
    return {n: os.path.join(workdir, n) for n in
            ("ca.pem", "broker.pem", "broker.key", "client.pem", "client.key")}


class MutualTls(unittest.TestCase):
    """``App`` and ``Device`` over mqtts to a mosquitto that requires a
    client certificate (real TLS, certificates made here)."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.pki = make_pki(self.dir.name)
        port = free_port()
        conf = os.path.join(self.dir.name, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"cafile {self.pki['ca.pem']}\ncertfile {self.pki['broker.pem']}\n"
                    f"keyfile {self.pki['broker.key']}\nrequire_certificate true\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        broker = subprocess.Popen([mosquitto, "-c", conf], stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (broker.kill(), broker.wait()))
        eventually(lambda: socket.create_connection(("127.0.0.1", port)).close() or True,
                   "mosquitto did not start", seconds=10)
        self.url = f"mqtts://localhost:{port}"
        self.tls = {"ca": self.pki["ca.pem"], "cert": self.pki["client.pem"],
                    "key": self.pki["client.key"]}

    def test_a_twin_host_a_device_and_an_app_over_mutual_tls(self):
        binary = os.environ.get("LANYARD_BIN")
        if not binary:
            raise RuntimeError("set LANYARD_BIN to the lanyard binary (scripts/test-all.sh does)")
        log = open(os.path.join(self.dir.name, "twin.log"), "w")
        self.addCleanup(log.close)
        twin = subprocess.Popen(
            [binary, "twin", "--broker", self.url, "--state-dir", os.path.join(self.dir.name, "twin"),
             "--ca", self.tls["ca"], "--cert", self.tls["cert"], "--key", self.tls["key"]],
            stdout=log, stderr=subprocess.STDOUT,
        )
        self.addCleanup(lambda: (twin.terminate(), twin.wait()))
        dev = lanyard.Device(self.url, "02:00:00:00:00:dd", os.path.join(self.dir.name, "dev"),
                             commands={"ping": lambda args: {"pong": True}}, **self.tls)
        runner = threading.Thread(target=dev.run, kwargs={"seconds": 60})
        runner.start()
        app = lanyard.App(self.url, client_id="tls-app", **self.tls)
        eventually(lambda: app.get_shadow(dev.device_id, timeout=2)["version"] >= 0,
                   "the device registered over TLS")
        ack = app.command(dev.device_id, "ping")
        self.assertEqual((ack["status"], ack["result"]), ("Succeeded", {"pong": True}))
        app.command(dev.device_id, "decommission")
        runner.join(timeout=20)
        self.assertFalse(runner.is_alive())

    def test_without_a_client_certificate_the_broker_refuses(self):
        with self.assertRaises(OSError):
            lanyard.App(self.url, ca=self.pki["ca.pem"], timeout=2)

    def test_bad_tls_arguments_are_value_errors(self):
        with self.assertRaises(ValueError):  # mqtts without a CA
            lanyard.App(self.url)
        with self.assertRaises(ValueError):  # a certificate without its key
            lanyard.App(self.url, ca=self.pki["ca.pem"], cert=self.pki["client.pem"])
        with self.assertRaises(ValueError):  # a key that is not the certificate's
            lanyard.App(self.url, ca=self.pki["ca.pem"], cert=self.pki["client.pem"],
                        key=self.pki["broker.key"])
        with self.assertRaises(ValueError):  # no such file
            lanyard.Device(self.url, "02:00:00:00:00:dd", self.dir.name,
                           ca=os.path.join(self.dir.name, "missing.pem"))
        with self.assertRaises(ValueError):  # TLS files for a plain connection
            lanyard.Bridge("mqtt://localhost:1883", ca=self.pki["ca.pem"])


class ProvisioningByClaim(unittest.TestCase):
    """A ``Device`` made with only the fleet's claim certificate gets its
    own from ``lanyard provision serve`` and renews it; an ``App`` revokes
    it. The CA, the broker's configuration and the services come from the
    ``lanyard`` command, as ``docs/provisioning.md`` walks it."""

    def setUp(self):
        binary = os.environ.get("LANYARD_BIN")
        if not binary:
            raise RuntimeError("set LANYARD_BIN to the lanyard binary (scripts/test-all.sh does)")
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        d = self.dir.name
        os.chmod(d, 0o755)  # mosquitto reads its files as its own user

        def lanyard_cmd(*args):
            return subprocess.run([binary, *args], check=True, capture_output=True,
                                  text=True).stdout

        self.lanyard = lanyard_cmd
        ca = os.path.join(d, "ca")
        self.ca_dir = ca
        lanyard_cmd("ca", "init", "--dir", ca)
        lanyard_cmd("ca", "issue", "--dir", ca, "--name", "localhost", "--san",
                    "localhost,127.0.0.1", "--out", os.path.join(d, "broker"))
        for name in ("lanyard-twin", "lanyard-provision", "lanyard-ops", "lanyard-claim-py"):
            lanyard_cmd("ca", "issue", "--dir", ca, "--name", name, "--out", os.path.join(d, name))
        os.chmod(os.path.join(d, "broker.key"), 0o644)
        run = os.path.join(d, "run")
        os.mkdir(run)
        os.chmod(run, 0o777)
        with open(os.path.join(d, "acl"), "w") as f:
            f.write(lanyard_cmd("acl", "--trusted", "lanyard-twin,lanyard-provision,lanyard-ops"))
        port, self.provision_port = free_port(), free_port()
        pid_file = os.path.join(run, "mosquitto.pid")
        conf = os.path.join(d, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(lanyard_cmd(
                "broker-config", "--port", str(port), "--bind", "127.0.0.1",
                "--ca", os.path.join(ca, "ca.pem"), "--cert", os.path.join(d, "broker.pem"),
                "--key", os.path.join(d, "broker.key"), "--acl", os.path.join(d, "acl"),
                "--provision-port", str(self.provision_port), "--crl", os.path.join(ca, "crl.pem"),
                "--pid-file", pid_file))
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        broker = subprocess.Popen([mosquitto, "-c", conf], stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (broker.kill(), broker.wait()))
        for p in (port, self.provision_port):
            eventually(lambda p=p: socket.create_connection(("127.0.0.1", p)).close() or True,
                       "mosquitto did not start", seconds=10)
        self.url = f"mqtts://localhost:{port}"
        self.ca_pem = os.path.join(ca, "ca.pem")

        def tls(who):
            return ["--broker", self.url, "--ca", self.ca_pem,
                    "--cert", os.path.join(d, f"{who}.pem"), "--key", os.path.join(d, f"{who}.key")]

        with open(os.path.join(d, "allow"), "w") as f:
            f.write("02:00:00:00:00:e1\n")
        log = open(os.path.join(d, "provision.log"), "w")
        self.addCleanup(log.close)
        # Six-second certificates, renewed at half their life.
        service = subprocess.Popen(
            [binary, "provision", "serve", *tls("lanyard-provision"), "--ca-dir", ca,
             "--allow", os.path.join(d, "allow"), "--lifetime-secs", "6", "--renew-at", "50",
             "--broker-pid-file", pid_file],
            stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: (service.terminate(), service.wait()))
        def ready():
            with open(os.path.join(d, "provision.log")) as f:
                return "ready" in f.read()

        eventually(ready, "the provisioning service started")
        twin = subprocess.Popen([binary, "twin", *tls("lanyard-twin"), "--state-dir",
                                 os.path.join(d, "twin")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (twin.terminate(), twin.wait()))
        self.claim = {"ca": self.ca_pem, "claim_cert": os.path.join(d, "lanyard-claim-py.pem"),
                      "claim_key": os.path.join(d, "lanyard-claim-py.key"),
                      "provision_port": self.provision_port}
        self.ops = {"ca": self.ca_pem, "cert": os.path.join(d, "lanyard-ops.pem"),
                    "key": os.path.join(d, "lanyard-ops.key")}

    def test_a_device_provisions_itself_renews_and_is_revoked(self):
        dev = lanyard.Device(self.url, "02:00:00:00:00:e1", os.path.join(self.dir.name, "dev"),
                             **self.claim)
        first, not_after = dev.certificate
        self.assertGreater(not_after, time.time())
        runner = threading.Thread(target=dev.run, kwargs={"seconds": 30})
        runner.start()
        app = lanyard.App(self.url, client_id="lanyard-ops", **self.ops)
        eventually(lambda: app.get_shadow(dev.device_id, timeout=2)["version"] >= 0,
                   "the device registered with its own certificate")
        eventually(lambda: dev.certificate[0] != first, "the device renewed its certificate",
                   seconds=20)
        ack = app.command(dev.device_id, "diagnostics")
        self.assertEqual(ack["status"], "Succeeded")
        self.assertGreaterEqual(app.revoke(dev.device_id, decommission=True), 1)
        certs = json.loads(self.lanyard("provision", "show", "--ca-dir", self.ca_dir,
                                        dev.device_id, "--json"))
        self.assertGreaterEqual(len(certs), 2)
        self.assertTrue(all(c["state"] == "revoked" for c in certs), certs)
        with self.assertRaises(lanyard.Rejected):
            app.revoke("ly-0200000000ff")
        app.command(dev.device_id, "decommission")
        runner.join(timeout=30)
        self.assertFalse(runner.is_alive())

    def test_hardware_not_on_the_allow_list_is_refused_with_the_reason(self):
        with self.assertRaises(PermissionError) as refused:
            lanyard.Device(self.url, "02:00:00:00:00:e2", os.path.join(self.dir.name, "other"),
                           **self.claim)
        self.assertIn("not_allowed", str(refused.exception))
        with self.assertRaises(ValueError):  # its own certificate and a claim
            lanyard.Device(self.url, "02:00:00:00:00:e2", self.dir.name, cert=self.ops["cert"],
                           key=self.ops["key"], **self.claim)


class FirmwareUpdate(unittest.TestCase):
    """A Python ``Device`` takes signed releases rolled out by ``lanyard
    ota rollout``: the callback gets each verified image, and the device
    started again on it confirms it by its self-test. A second update goes
    to the other slot file, so the image running is never rewritten."""

    def test_verified_images_are_handed_to_the_application_and_confirmed(self):
        binary = os.environ.get("LANYARD_BIN")
        if not binary:
            raise RuntimeError("set LANYARD_BIN to the lanyard binary (scripts/test-all.sh does)")
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        broker, port = start_mosquitto(d.name)
        self.addCleanup(lambda: (broker.kill(), broker.wait()))
        url = f"mqtt://127.0.0.1:{port}"
        run = lambda *a: subprocess.run([binary, *a], check=True, capture_output=True, text=True)
        run("ota", "keygen", "--out", os.path.join(d.name, "fleet"))
        state = os.path.join(d.name, "dev")
        key = os.path.join(d.name, "fleet.pub")
        mac = "02:00:00:00:00:e5"

        def update(version: str, image: bytes) -> str:
            """Rolls ``image`` out as ``version`` to the device running the
            one before; returns the slot file it was written to."""
            app = os.path.join(d.name, f"app-{version}.bin")
            with open(app, "wb") as f:
                f.write(image)
            release = os.path.join(d.name, f"rel-{version}")
            run("ota", "sign", "--key", os.path.join(d.name, "fleet.key"), "--image", app,
                "--version", version, "--job", f"py-{version}", "--out", release)
            got = []

            def on_update(path, request):
                with open(path, "rb") as f:
                    got.append((path, f.read(), request))

            def stop_once_updated(event):
                if got:
                    raise KeyboardInterrupt  # the application restarts on the image

            running = f"{int(version[0]) - 1}.0.0"
            dev = lanyard.Device(url, mac, state, firmware_version=running, update_key=key,
                                 on_update=on_update)
            rollout = subprocess.Popen(
                [binary, "ota", "rollout", "--broker", url, "--release", release,
                 "--devices", dev.device_id, "--stages", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.addCleanup(lambda: rollout.poll() is None and (rollout.kill(), rollout.wait()))
            with self.assertRaises(KeyboardInterrupt):
                dev.run(seconds=30, on_event=stop_once_updated)
            self.assertEqual([(g[1], g[2]) for g in got], [(image, "trial")])
            # Started again on the new image: its self-test confirms it.
            tested = []
            dev = lanyard.Device(url, mac, state, firmware_version=version, update_key=key,
                                 self_test=lambda: tested.append(1) or True)
            runner = threading.Thread(target=dev.run, kwargs={"seconds": 10})
            runner.start()
            out, _ = rollout.communicate(timeout=60)
            runner.join()
            self.assertEqual(rollout.returncode, 0, out)
            self.assertIn("Completed", out)
            self.assertEqual(tested, [1])
            return got[0][0]

        second = bytes((i * 7) % 251 for i in range(20_000))
        third = bytes((i * 13) % 241 for i in range(30_000))
        first_slot = update("2.0.0", second)
        second_slot = update("3.0.0", third)
        # Each update named the file it was written to; the image that ran
        # while the next one came is as it was.
        self.assertNotEqual(first_slot, second_slot)
        with open(first_slot, "rb") as f:
            self.assertEqual(f.read(), second)
        with open(second_slot, "rb") as f:
            self.assertEqual(f.read(), third)
        with self.assertRaises(ValueError):
            lanyard.Device(url, "02:00:00:00:00:e6", state, update_key="not hex")


if __name__ == "__main__":
    unittest.main()
