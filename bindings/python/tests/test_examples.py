"""The README's Python example (examples/python/hello.py), run as a
newcomer runs it: against a `lanyard demo`, with the broker URL the demo
prints (the `lanyard` binary from ``LANYARD_BIN``)."""

import os
import pathlib
import re
import subprocess
import sys
import time
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[3]


class HelloAgainstTheDemo(unittest.TestCase):
    def test_hello_sets_desired_state_and_sees_it_reported(self):
        binary = os.environ.get("LANYARD_BIN")
        if not binary:
            raise RuntimeError("set LANYARD_BIN to the lanyard binary (scripts/test-all.sh does)")
        demo = subprocess.Popen([binary, "demo", "--devices", "3", "--minutes", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            first = demo.stdout.readline()
            url = re.search(r"mqtt://[0-9.]+:[0-9]+", first)
            self.assertIsNotNone(url, f"the demo printed no broker: {first!r}")
            # As a newcomer would: once the demo shows its devices running.
            for line in demo.stdout:
                if "ly-020000000000 <- register/accepted" in line:
                    break
            started = time.monotonic()
            run = subprocess.run([sys.executable, str(ROOT / "examples/python/hello.py"), url.group(0)],
                                 capture_output=True, text=True, timeout=120)
            self.assertEqual(run.returncode, 0, run.stderr)
            self.assertIn("'type': 'reported'", run.stdout)
            self.assertIn("'greeting': 'hello from Python'", run.stdout)
            self.assertIn("the shadow holds: hello from Python", run.stdout)
            self.assertLess(time.monotonic() - started, 60)
        finally:
            demo.terminate()
            demo.wait(timeout=30)
            demo.stdout.close()


if __name__ == "__main__":
    unittest.main()
