"""Calls at once: the blocking ``App`` from several threads, ``lanyard.aio``
under ``asyncio.run`` (awaitables, ``async for`` over events,
cancellation), and bounded event queues, against a real mosquitto, a
``lanyard twin`` and a ``lanyard device`` (each its own process)."""

import asyncio
import socket
import tempfile
import threading
import time
import unittest

import lanyard
import lanyard.aio
from test_lanyard import eventually, start_fleet, stop_fleet

SIM = "ly-020000000001"  # lanyard device's default MAC


class Fleet(unittest.TestCase):
    """A mosquitto, a twin host and one simulated device for the class."""

    @classmethod
    def setUpClass(cls):
        start_fleet(cls)
        with lanyard.App(cls.broker) as app:
            eventually(lambda: app.get_shadow(SIM, timeout=2)["version"] >= 0,
                       "the simulated device registered")

    @classmethod
    def tearDownClass(cls):
        stop_fleet(cls)


class ThreadsAtOnce(Fleet):
    def test_a_command_does_not_wait_behind_another_threads_next_event(self):
        with lanyard.App(self.broker) as app:
            waiting = threading.Thread(target=app.next_event, kwargs={"timeout": 5})
            # Nothing else happens on this fleet: the reader waits its
            # five seconds.
            waiting.start()
            time.sleep(0.2)
            started = time.monotonic()
            done = app.command(SIM, "blink_led", {"count": 1, "period_ms": 50})
            took = time.monotonic() - started
            self.assertEqual(done["status"], "Succeeded")
            self.assertTrue(waiting.is_alive(), "the reader still waits")
            self.assertLess(took, 2.0, "the command waited behind next_event")
            waiting.join()

    def test_commands_from_many_threads_each_get_their_own_answer(self):
        with lanyard.App(self.broker) as app:
            results = []

            def blink(n):
                results.append((n, app.command(SIM, "blink_led",
                                                {"count": 1 + n % 3, "period_ms": 50})))

            threads = [threading.Thread(target=blink, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(sorted(n for n, _ in results), list(range(8)))
            self.assertTrue(all(r["status"] == "Succeeded" for _, r in results), results)

    def test_a_queue_sees_its_devices_and_counts_what_it_dropped(self):
        with lanyard.App(self.broker) as app:
            mine = app.events([SIM], capacity=1)
            other = app.events(["ly-0a0000000001"])
            everything = app.events()
            for mode in ("a", "b", "c"):
                app.set_desired(SIM, {"mode": mode})
            eventually(lambda: app.get_shadow(SIM, timeout=2)["reported"].get("mode") == "c",
                       "the device reported the last mode")
            # Three deltas and three reports at least: one kept, the others
            # dropped and counted.
            eventually(lambda: mine.dropped >= 5, "the full queue counted its drops", seconds=5)
            first = mine.next(timeout=1)
            self.assertIsNotNone(first)
            self.assertEqual(first["device"], SIM)
            self.assertIsNone(other.next(timeout=0.2), "another device's queue stays empty")
            self.assertEqual(other.dropped, 0)
            seen = []
            while (e := everything.next(timeout=0.5)) is not None:
                seen.append(e)
            modes = [e["state"].get("mode") for e in seen if e["type"] == "delta"]
            self.assertEqual(modes[-1:], ["c"], seen)
            self.assertEqual(everything.dropped, 0)
            self.assertEqual(app.events_dropped, 0)
            with self.assertRaises(ValueError):
                app.events(capacity=0)


class Asyncio(Fleet):
    def test_calls_are_awaitables_and_run_at_once(self):
        async def main():
            async with await lanyard.aio.App.connect(self.broker) as app:
                version = await app.set_desired(SIM, {"mode": "aio"})
                self.assertGreater(version, 0)
                shadow, *blinks = await asyncio.gather(
                    app.get_shadow(SIM),
                    *(app.command(SIM, "blink_led", {"count": 1, "period_ms": 50})
                      for _ in range(5)))
                self.assertEqual(shadow["desired"]["mode"], "aio")
                self.assertEqual([b["status"] for b in blinks], ["Succeeded"] * 5)
                devices = await app.list_devices()
                self.assertIn(SIM, [d["device"] for d in devices])
                with self.assertRaises(lanyard.Rejected):
                    await app.command("ly-ffffffffffff", "blink_led")
                with self.assertRaises(ValueError):
                    await app.set_desired(SIM, {"x": float("nan")})
                # Unanswered writes: awaited until sent, then seen applied.
                await asyncio.gather(*(app.send_desired(SIM, {"aio_sent": 1}) for _ in range(10)))
                deadline = time.time() + 10
                while (await app.get_shadow(SIM))["desired"].get("aio_sent") != 1:
                    self.assertLess(time.time(), deadline, "the unanswered write never applied")
                    await asyncio.sleep(0.1)

        asyncio.run(main())

    def test_events_are_read_with_async_for(self):
        async def main():
            async with await lanyard.aio.App.connect(self.broker) as app:
                events = app.events([SIM])
                await app.set_desired(SIM, {"mode": "stream"})
                seen = set()
                async for e in events:
                    if e["type"] in ("delta", "reported") and e["state"].get("mode") == "stream":
                        seen.add(e["type"])
                    if seen == {"delta", "reported"}:
                        break
                self.assertEqual(seen, {"delta", "reported"})
                self.assertEqual(events.dropped, 0)
            # Closing the app ends an iteration.
            app = await lanyard.aio.App.connect(self.broker)
            events = app.events()
            collected = []

            async def collect():
                async for e in events:
                    collected.append(e)

            reader = asyncio.create_task(collect())
            await asyncio.sleep(0.1)
            await app.close()
            await asyncio.wait_for(reader, 5)
            with self.assertRaises(lanyard.Closed):
                await app.get_shadow(SIM)

        asyncio.run(asyncio.wait_for(main(), 60))

    def test_a_cancelled_call_gives_back_what_it_held(self):
        async def main():
            async with await lanyard.aio.App.connect(self.broker) as app:
                started = time.monotonic()
                with self.assertRaises(asyncio.TimeoutError):
                    await asyncio.wait_for(app.next_event(), 0.3)
                self.assertLess(time.monotonic() - started, 2)
                # The event queue the cancelled call waited on is free again,
                # and a call never waits behind a reader.
                reader = asyncio.create_task(app.next_event(timeout=5))
                shadow = await asyncio.wait_for(app.get_shadow(SIM), 3)
                self.assertGreaterEqual(shadow["version"], 0)
                reader.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await reader
                await app.set_desired(SIM, {"mode": "after-cancel"})
                e = await app.next_event(timeout=10)
                self.assertIsNotNone(e)

        asyncio.run(main())

    def test_a_device_and_a_bridge_stop_when_their_task_is_cancelled(self):
        async def main():
            with tempfile.TemporaryDirectory() as state:
                device = lanyard.aio.Device(self.broker, "02:00:00:00:00:dd", state)
                seen = []
                run = asyncio.create_task(device.run(on_event=seen.append))
                async with await lanyard.aio.App.connect(self.broker) as app:
                    deadline = time.monotonic() + 20
                    while True:
                        try:
                            if (await app.get_shadow(device.device_id, timeout=1))["version"] >= 0:
                                break
                        except (lanyard.Rejected, TimeoutError):
                            pass
                        self.assertLess(time.monotonic(), deadline, "the device registered")
                        await asyncio.sleep(0.2)
                    done = await app.command(device.device_id, "blink_led",
                                             {"count": 1, "period_ms": 50})
                    self.assertEqual(done["status"], "Succeeded")
                self.assertTrue(any(e["type"] == "state" for e in seen), seen)
                started = time.monotonic()
                run.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await run
                self.assertLess(time.monotonic() - started, 2)

            # A bridge whose "serial port" stays silent.
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            port = server.getsockname()[1]
            bridge = lanyard.aio.Bridge(self.broker)
            task = asyncio.create_task(bridge.run_tcp(f"127.0.0.1:{port}"))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            task.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await task
            self.assertLess(time.monotonic() - started, 2)
            server.close()

        asyncio.run(asyncio.wait_for(main(), 60))


if __name__ == "__main__":
    unittest.main()
