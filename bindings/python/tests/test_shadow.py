"""lanyard.Shadow: the AWS IoT developer guide's shadow documents, random
update sequences checked against a plain-Python model of the AWS rules,
and the conflict policies. No broker needed."""

import copy
import json
import pathlib
import random
import time
import unittest

import lanyard
from lanyard import Shadow, ShadowRejected, VersionConflict


CASES = pathlib.Path(__file__).resolve().parents[2] / "shadow-cases.json"
DEFAULT_AT = 1700000000000


def by_path(conflicts):
    return sorted(conflicts, key=lambda c: c["path"])


class SharedCases(unittest.TestCase):
    """The cases the Kotlin binding runs too (bindings/shadow-cases.json):
    the AWS IoT developer guide's documents, refusals, and the conflict
    policies."""

    def expect_keys(self, doc, expected, where):
        for key, value in expected.items():
            self.assertIn(key, doc, where)
            self.assertEqual(doc[key], value, f"{where}: {key}")

    def run_step(self, s, step, where):
        op, at = step["op"], step.get("at", DEFAULT_AT)
        if op in ("update", "get"):
            try:
                if op == "get":
                    doc = s.get(client_token=step.get("client_token"), now_ms=at)
                elif "request_text" in step:
                    doc = s.update(step["request_text"], now_ms=at)
                else:
                    doc = s.update(step["request"], now_ms=at)
            except ShadowRejected as e:
                self.assertIn("rejected", step, f"{where}: refused {e}")
                self.assertEqual(e.code, step["rejected"]["code"], where)
                self.assertIsInstance(e, VersionConflict if e.code == 409 else ShadowRejected)
                self.expect_keys(e.document, step["rejected"], where)
                return
            self.assertNotIn("rejected", step, f"{where}: accepted {doc}")
            self.expect_keys(doc, step.get("accepted", {}), where)
        elif op in ("update_desired", "update_reported"):
            try:
                v = getattr(s, op)(step["state"], version=step.get("if_version"), now_ms=at)
            except ShadowRejected as e:
                self.assertIn("rejected", step, f"{where}: refused {e}")
                self.assertEqual(e.code, step["rejected"]["code"], where)
                return
            self.assertNotIn("rejected", step, where)
            if "version" in step:
                self.assertEqual(v, step["version"], where)
            if "conflicts" in step:
                self.assertEqual(by_path(s.last_conflicts), by_path(step["conflicts"]), where)
        elif op in ("desired", "reported", "delta"):
            self.assertEqual(getattr(s, op), step["expect"], where)
        elif op == "parked":
            self.assertEqual([p for p, _ in s.parked()], step["expect"], where)
        elif op == "resolve":
            error = {"not_parked": KeyError, "bad_input": ValueError}.get(step.get("error"))
            if error is not None:
                with self.assertRaises(error, msg=where):
                    s.resolve(step["path"], step["winner"], now_ms=at)
                return
            v = s.resolve(step["path"], step["winner"], now_ms=at)
            if "version" in step:
                self.assertEqual(v, step["version"], where)
        elif op == "counts":
            self.expect_keys(s.conflict_counts(), step["expect"], where)
        elif op == "policy_for":
            self.assertEqual(s.policy_for(step["path"]), step["expect"], where)
        else:
            self.fail(f"{where}: unknown step {op!r}")

    def test_shared_cases(self):
        cases = json.loads(CASES.read_text())["cases"]
        self.assertGreaterEqual(len(cases), 8)
        for case in cases:
            s = Shadow(policies=case.get("policies"),
                       default_policy=case.get("default_policy", "cloud_wins"),
                       skew_tolerance_ms=case.get("skew_tolerance_ms", 1000))
            for i, step in enumerate(case["steps"]):
                self.run_step(s, step, f"{case['name']}, step {i} ({step['op']})")


class PythonInput(unittest.TestCase):
    """What only Python can hand the shadow."""

    def test_input_python_cannot_send_is_a_clear_error(self):
        s = Shadow()
        with self.assertRaises(TypeError):
            s.update(42)
        with self.assertRaises(ValueError):
            s.update({"state": {"desired": {"big": 2**70}}})
        with self.assertRaises(ValueError):
            s.update({"state": {"desired": {"b": b"bytes"}}})
        with self.assertRaises(ValueError):
            s.update({"state": {"desired": {"x": float("nan")}}})
        with self.assertRaises(ValueError):
            s.update({"state": {"desired": {1: "a key that is no text"}}})
        loop = {}
        loop["again"] = loop
        with self.assertRaises(ValueError):
            s.update({"state": {"desired": loop}})
        with self.assertRaises(ValueError):
            s.update_desired({"x": {1, 2}})
        # JSON text as an AWS update topic carries it, good or not.
        with self.assertRaises(ShadowRejected) as refused:
            s.update('{"state": {')
        self.assertEqual(refused.exception.code, 400)
        with self.assertRaises(ValueError):
            Shadow(policies={"a": "whoever_shouts"})
        self.assertEqual(s.version, 0)
        self.assertEqual(s.update(b'{"state": {"desired": {"x": 1}}}')["version"], 1)


    def test_documents_come_back_as_the_python_types_that_went_in(self):
        s = Shadow()
        state = {"b": True, "f": 1.5, "i": -7, "s": "x", "a": [1, True, "y", {"k": None}],
                 "n": {"m": {"deep": 2}}}
        answer = s.update({"state": {"desired": state}, "clientToken": "t"}, now_ms=9_000)
        self.assertEqual(answer["state"]["desired"], state)
        self.assertEqual(answer["clientToken"], "t")
        self.assertEqual(answer["metadata"]["desired"]["n"]["m"]["deep"], {"timestamp": 9})
        for doc in (answer["state"]["desired"], s.get()["state"]["desired"], s.delta, s.desired):
            self.assertEqual(doc, state)
            self.assertIs(type(doc["b"]), bool)
            self.assertIs(type(doc["f"]), float)
            self.assertIs(type(doc["i"]), int)
            self.assertIs(type(doc["a"]), list)
            self.assertIs(type(doc["a"][1]), bool)
            self.assertIsNone(doc["a"][3]["k"])
        # Documents handed out are the caller's: changing one changes
        # nothing else.
        s.desired["n"]["m"]["deep"] = 3
        self.assertEqual(s.desired["n"]["m"]["deep"], 2)


# ---- a plain-Python model of the AWS rules ----

def writes(v):
    """Whether an update value writes anything (not only deletes)."""
    if isinstance(v, dict):
        return any(writes(x) for x in v.values())
    return v is not None


def merge(target, update):
    for k, v in update.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict):
            if not isinstance(target.get(k), dict):
                # Deletes inside a value that is not an object delete
                # nothing; a write there makes it an object.
                if not writes(v):
                    continue
                target[k] = {}
            merge(target[k], v)
            if not target[k]:
                del target[k]
        else:
            target[k] = copy.deepcopy(v)


def same(a, b):
    """JSON equality: true is not 1 (Python's == says it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def delta(desired, reported):
    out = {}
    for k, v in desired.items():
        r = reported.get(k) if isinstance(reported, dict) else None
        if isinstance(v, dict):
            d = delta(v, r if isinstance(r, dict) else {})
            if d:
                out[k] = d
        elif not same(v, r):
            out[k] = v
    return out


class Model:
    def __init__(self):
        self.desired, self.reported, self.version = {}, {}, 0

    def update(self, req):
        if "version" in req and req["version"] != self.version:
            return False
        for side in ("desired", "reported"):
            if side in req["state"]:
                part = req["state"][side]
                if part is None:
                    setattr(self, side, {})
                else:
                    merge(getattr(self, side), part)
        self.version += 1
        return True


KEYS = ["a", "b", "c", "mode", "temp"]


def value(rng, depth):
    pick = rng.random()
    if depth < 2 and pick < 0.25:
        return {rng.choice(KEYS): value(rng, depth + 1) for _ in range(rng.randint(1, 3))}
    if pick < 0.4:
        return None if depth > 0 else rng.randint(0, 3)
    if pick < 0.55:
        return [rng.randint(0, 2) for _ in range(rng.randint(0, 3))]
    if pick < 0.7:
        return rng.choice([True, False])
    if pick < 0.85:
        return rng.choice(["red", "green", "eco"])
    return rng.randint(-5, 5)


def part(rng):
    if rng.random() < 0.05:
        return None
    return {rng.choice(KEYS): value(rng, 1) for _ in range(rng.randint(1, 3))}


class AgainstTheModel(unittest.TestCase):
    """Random update sequences: the same state, delta and version as the
    model after every request, and a refused request changes nothing."""

    def test_random_update_sequences(self):
        for seed in range(60):
            rng = random.Random(seed)
            s, m = Shadow(), Model()
            for step in range(40):
                state = {}
                for side in ("desired", "reported"):
                    if rng.random() < 0.6:
                        state[side] = part(rng)
                req = {"state": state}
                if rng.random() < 0.2:
                    req["version"] = m.version + rng.choice([0, 0, 1, -1])
                expected_ok = m.update(req)
                try:
                    doc = s.update(req)
                    ok = True
                    self.assertEqual(doc["version"], m.version)
                except ShadowRejected as e:
                    # 409 for another version, 400 for a negative one.
                    self.assertEqual(e.code, 409 if req["version"] >= 0 else 400)
                    ok = False
                where = f"seed {seed} step {step}: {req}"
                self.assertEqual(ok, expected_ok, where)
                self.assertEqual(s.version, m.version, where)
                self.assertEqual(s.desired, m.desired, where)
                self.assertEqual(s.reported, m.reported, where)
                self.assertEqual(s.delta, delta(m.desired, m.reported), where)
                if s.version:
                    got = s.get()["state"]
                    self.assertEqual(got.get("delta", {}), delta(m.desired, m.reported), where)


class Clock(unittest.TestCase):
    """Without ``now_ms`` the writes take the clock's time."""

    def test_latest_wins_takes_the_later_write_by_the_clock(self):
        s = Shadow(default_policy="latest_wins", skew_tolerance_ms=0)
        s.update_desired({"t": 20})
        s.update_reported({"t": 20})
        s.update_desired({"t": 21})
        time.sleep(0.01)
        s.update_reported({"t": 25})  # written after the cloud's
        self.assertEqual(s.last_conflicts[0]["winner"], "device")
        self.assertEqual(s.desired, {"t": 25})
        self.assertGreater(s.get()["timestamp"], 1700000000)


if __name__ == "__main__":
    unittest.main()
