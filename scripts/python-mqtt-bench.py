#!/usr/bin/env python3
"""The Python bindings' MQTT throughput against paho-mqtt, in one run, on
one mosquitto (the development configuration `lanyard broker-config --dev`
prints: no Nagle delay) on loopback, with a `lanyard twin`.

- App writes: `lanyard.App.set_desired` from 8 threads, and
  `lanyard.aio.App.set_desired` from 64 asyncio tasks, each write answered
  by the twin host with the shadow's version (a round trip through the
  host); and `lanyard.App.send_desired` from one thread, which asks no
  answer, until `close` has every PUBACK: first on the broker alone (the
  same work as the baseline: the client's own cost), then with the twin
  host and the device at work on every write (what the machine sustains).
  The baseline: paho-mqtt publishing the same state (its JSON, as many
  messages) at QoS 1 to the same broker, waiting for every PUBACK (one
  round trip to the broker only), with nothing consuming them.
- Device reports: `lanyard.Device.report` as fast as it takes them, counted
  as they arrive at a subscriber on the device's `shadow/update` topic
  (each message may carry several reports: the agent sends what
  accumulated). The baseline: paho-mqtt publishing as many messages of the
  same size at QoS 1, counted by the same subscriber.

Prints messages per second and the ratio. Not in the test command (it
measures, it does not check):

    pip install ./bindings/python paho-mqtt
    cargo build --release -p lanyard-std --bin lanyard
    python3 scripts/python-mqtt-bench.py [--lanyard target/release/lanyard] [--count 20000]
"""

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as paho

import lanyard
import lanyard.aio


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=10):
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def paho_client(port, name):
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name)
    c.max_inflight_messages_set(64)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def paho_publish(port, topic, payload, count):
    """Messages/s of paho publishing `count` messages at QoS 1, every
    PUBACK received."""
    c = paho_client(port, f"bench-paho-{os.getpid()}")
    try:
        start = time.perf_counter()
        infos = [c.publish(topic, payload, qos=1) for _ in range(count)]
        for info in infos:
            info.wait_for_publish(30)
        return count / (time.perf_counter() - start)
    finally:
        c.loop_stop()
        c.disconnect()


class Counter:
    """Counts what arrives on a topic."""

    def __init__(self, port, topic):
        self.n = 0
        self.cond = threading.Condition()
        self.c = paho_client(port, f"bench-counter-{os.getpid()}-{topic.count('/')}")
        self.c.on_message = self._on_message
        self.c.subscribe(topic, qos=1)
        time.sleep(0.3)

    def _on_message(self, _c, _u, _m):
        with self.cond:
            self.n += 1
            self.cond.notify_all()

    def wait_for(self, n, seconds=60):
        with self.cond:
            self.cond.wait_for(lambda: self.n >= n, seconds)
            return self.n

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def app_writes_threads(url, device, count, threads=8):
    app = lanyard.App(url)
    per = count // threads
    errors = []

    def work(t):
        try:
            for i in range(per):
                app.set_desired(device, {"bench": {"t": t, "i": i}})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    start = time.perf_counter()
    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for p in pool:
        p.start()
    for p in pool:
        p.join()
    elapsed = time.perf_counter() - start
    app.close()
    if errors:
        raise errors[0]
    return per * threads / elapsed


def app_sends(url, device, count):
    """Writes/s of `App.send_desired` from one thread, every write at the
    broker (`close` waits for the PUBACKs)."""
    app = lanyard.App(url)
    start = time.perf_counter()
    for i in range(count):
        app.send_desired(device, {"bench": {"t": 0, "i": i}})
    app.close()
    return count / (time.perf_counter() - start)


async def app_writes_asyncio(url, device, count, tasks=64):
    app = await lanyard.aio.App.connect(url)
    per = count // tasks

    async def work(t):
        for i in range(per):
            await app.set_desired(device, {"bench": {"t": t, "i": i}})

    start = time.perf_counter()
    await asyncio.gather(*(work(t) for t in range(tasks)))
    elapsed = time.perf_counter() - start
    await app.close()
    return per * tasks / elapsed


def device_reports(url, port, workdir, count):
    device = lanyard.Device(url, "02:00:00:00:00:42", os.path.join(workdir, "device"))
    topic = f"lanyard/v1/{device.device_id}/shadow/update"
    counter = Counter(port, topic)
    runner = threading.Thread(target=device.run, kwargs={"seconds": 20})
    runner.start()
    try:
        # Registered and synced: the first reports have gone out.
        time.sleep(2.0)
        before = counter.n
        start = time.perf_counter()
        for i in range(count):
            device.report("bench.i", i)
        # Every report is in a message once the last value has arrived.
        got = counter.wait_for(before + 1)
        deadline = time.monotonic() + 60
        last = -1
        while time.monotonic() < deadline and last != counter.n:
            last = counter.n
            time.sleep(0.2)
        elapsed = time.perf_counter() - start - 0.2
        messages = counter.n - before
        return count / elapsed, messages, got
    finally:
        runner.join(40)
        counter.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lanyard", default="target/release/lanyard")
    ap.add_argument("--count", type=int, default=20_000)
    args = ap.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    work = tempfile.mkdtemp(prefix="lanyard-mqtt-bench-")
    port = free_port()
    conf = subprocess.run([args.lanyard, "broker-config", "--dev", "--port", str(port)],
                          check=True, capture_output=True, text=True).stdout
    with open(os.path.join(work, "mosquitto.conf"), "w") as f:
        f.write(conf)
    procs = [subprocess.Popen([mosquitto, "-c", os.path.join(work, "mosquitto.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_port(port)
        url = f"mqtt://127.0.0.1:{port}"
        target = "ly-020000000001"
        payload = b'{"bench":{"t":7,"i":12345}}'
        n = args.count
        print(f"mosquitto {url} (set_tcp_nodelay), {n} messages each, "
              f"{time.strftime('%Y-%m-%d')}")
        print(f"{'':<44} {'msg/s':>9} {'paho msg/s':>11} {'ratio':>7}")
        base = paho_publish(port, f"lanyard/v1/{target}/bench", payload, n)
        alone = app_sends(url, target, n)
        print(f"{'App.send_desired, 1 thread, broker alone':<44} {alone:>9.0f} {base:>11.0f} "
              f"{alone / base:>6.2f}x")
        procs.append(subprocess.Popen([args.lanyard, "twin", "--broker", url, "--state-dir",
                                       os.path.join(work, "twin")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # A device for the writes to address (the host refuses unknown ones).
        procs.append(subprocess.Popen([args.lanyard, "device", "--broker", url, "--state-dir",
                                       os.path.join(work, "dev")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        probe = lanyard.App(url)
        until = time.monotonic() + 30
        while time.monotonic() < until:
            try:
                if any(d["device"] == target for d in probe.list_devices(timeout=1)):
                    break
            except lanyard.Timeout:
                pass  # the twin host is starting
            time.sleep(0.2)
        probe.close()

        threads = app_writes_threads(url, target, n)
        print(f"{'App.set_desired, 8 threads (host answers)':<44} {threads:>9.0f} {base:>11.0f} "
              f"{threads / base:>6.2f}x")
        aio = asyncio.run(app_writes_asyncio(url, target, n))
        print(f"{'aio.App.set_desired, 64 tasks (host answers)':<44} {aio:>9.0f} {base:>11.0f} "
              f"{aio / base:>6.2f}x")
        sent = app_sends(url, target, n)
        print(f"{'App.send_desired, 1 thread, host at work':<44} {sent:>9.0f} {base:>11.0f} "
              f"{sent / base:>6.2f}x")

        counter = Counter(port, "lanyard/v1/ly-bench/shadow/update")
        start = time.perf_counter()
        paho_publish(port, "lanyard/v1/ly-bench/shadow/update", payload, n)
        counter.wait_for(n)
        paho_rate = n / (time.perf_counter() - start)
        counter.close()
        rate, messages, _ = device_reports(url, port, work, n)
        print(f"{'Device.report, reports/s (arrived)':<44} {rate:>9.0f} {paho_rate:>11.0f} "
              f"{rate / paho_rate:>6.2f}x")
        print(f"  the device sent its {n} reports in {messages} messages")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
