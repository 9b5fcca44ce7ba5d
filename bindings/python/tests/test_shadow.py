"""lanyard.Shadow: the AWS IoT developer guide's shadow documents, random
update sequences checked against a plain-Python model of the AWS rules,
and the conflict policies. No broker needed."""

import copy
import random
import time
import unittest

import lanyard
from lanyard import Shadow, ShadowRejected, VersionConflict


class AwsDocuments(unittest.TestCase):
    """The exchanges of the AWS IoT developer guide's "Device Shadow
    service documents" and "Interacting with shadows" pages, with their
    documents' shapes (timestamps vary)."""

    def test_reported_then_desired_then_delta(self):
        s = Shadow()
        with self.assertRaises(ShadowRejected) as e:
            s.get()
        self.assertEqual(e.exception.code, 404)

        doc = s.update({"state": {"reported": {"color": "red"}}, "clientToken": "token-1"})
        self.assertEqual(doc["state"], {"reported": {"color": "red"}})
        self.assertEqual(set(doc["metadata"]["reported"]["color"]), {"timestamp"})
        self.assertEqual(doc["version"], 1)
        self.assertEqual(doc["clientToken"], "token-1")
        self.assertIsInstance(doc["timestamp"], int)

        doc = s.update({"state": {"desired": {"color": "green"}}})
        self.assertEqual(doc["version"], 2)
        got = s.get(client_token="token-2")
        self.assertEqual(
            got["state"],
            {"desired": {"color": "green"}, "reported": {"color": "red"}, "delta": {"color": "green"}},
        )
        self.assertEqual(got["version"], 2)
        self.assertEqual(got["clientToken"], "token-2")
        self.assertEqual(set(got["metadata"]), {"desired", "reported"})

        # The device catches up: no delta any more.
        s.update({"state": {"reported": {"color": "green"}}})
        self.assertNotIn("delta", s.get()["state"])

    def test_nested_objects_and_arrays(self):
        s = Shadow()
        s.update({"state": {"desired": {"lights": {"color": "red", "brightness": 1},
                                        "colors": ["RED", "GREEN"]}}})
        s.update({"state": {"reported": {"lights": {"color": "red"}, "colors": ["RED"]}}})
        # Only the differing leaf of an object; an array whole.
        self.assertEqual(s.get()["state"]["delta"],
                         {"lights": {"brightness": 1}, "colors": ["RED", "GREEN"]})
        # An array is replaced, never merged.
        s.update({"state": {"desired": {"colors": ["BLUE"]}}})
        self.assertEqual(s.desired["colors"], ["BLUE"])

    def test_null_deletes_a_property_and_a_whole_side(self):
        s = Shadow()
        s.update({"state": {"desired": {"a": 1, "b": {"c": 2, "d": 3}}}})
        s.update({"state": {"desired": {"b": {"c": None}}}})
        self.assertEqual(s.desired, {"a": 1, "b": {"d": 3}})
        doc = s.update({"state": {"desired": None}})
        self.assertEqual(doc["state"], {"desired": None})
        self.assertEqual(s.desired, {})

    def test_version_conflict_and_malformed_requests_are_refused_unchanged(self):
        s = Shadow()
        s.update({"state": {"desired": {"x": 1}}})
        before = s.get()
        with self.assertRaises(VersionConflict) as e:
            s.update({"state": {"desired": {"x": 2}}, "version": 7, "clientToken": "t"})
        self.assertEqual((e.exception.code, e.exception.message), (409, "Version conflict"))
        self.assertEqual(e.exception.document["clientToken"], "t")
        self.assertIsInstance(e.exception, lanyard.Rejected)
        self.assertIsInstance(e.exception, lanyard.LanyardError)
        # The current version is taken.
        self.assertEqual(s.update({"state": {"desired": {"x": 2}}, "version": 1})["version"], 2)
        for bad, message in [
            ({}, "Missing required node: state"),
            ({"state": "on"}, "State node must be an object"),
            ({"state": {"desired": 5}}, "Desired node must be an object"),
            ({"state": {"reported": []}}, "Reported node must be an object"),
            ({"state": {}, "version": "one"}, "Invalid version"),
        ]:
            with self.assertRaises(ShadowRejected) as e:
                s.update(bad)
            self.assertEqual((e.exception.code, e.exception.message), (400, message), bad)
        self.assertEqual(s.get()["state"], {"desired": {"x": 2}, "delta": {"x": 2}})
        self.assertEqual(s.version, 2)
        self.assertEqual(before["version"], 1)

    def test_input_python_cannot_send_is_a_clear_error(self):
        s = Shadow()
        with self.assertRaises(TypeError):
            s.update('{"state": {}}')
        with self.assertRaises(ValueError):
            s.update({"state": {"desired": {"big": 2**70}}})
        with self.assertRaises(ValueError):
            s.update({"state": {"desired": {"b": b"bytes"}}})
        with self.assertRaises(ValueError):
            Shadow(policies={"a": "whoever_shouts"})
        self.assertEqual(s.version, 0)


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


class Policies(unittest.TestCase):
    """Conflicts: both sides changed a property since they last agreed."""

    def agreed(self, **policies):
        s = Shadow(policies=policies)
        s.update_desired({"cfg": {"mode": "eco"}, "sensor": {"rate": 1}, "pref": {"unit": "C"}})
        s.update_reported({"cfg": {"mode": "eco"}, "sensor": {"rate": 1}, "pref": {"unit": "C"}})
        return s

    def test_each_policy_settles_its_conflict(self):
        s = self.agreed(cfg="cloud_wins", sensor="device_wins", pref="manual_resolve")
        self.assertEqual(s.policy_for("sensor.rate"), "device_wins")
        s.update_desired({"cfg": {"mode": "boost"}, "sensor": {"rate": 2}, "pref": {"unit": "F"}})
        s.update_reported({"cfg": {"mode": "off"}, "sensor": {"rate": 5}, "pref": {"unit": "K"}})
        by_path = {c["path"]: c for c in s.last_conflicts}
        self.assertEqual(by_path["cfg.mode"]["winner"], "cloud")
        self.assertEqual(by_path["sensor.rate"]["winner"], "device")
        self.assertIsNone(by_path["pref.unit"]["winner"])
        # Cloud wins: desired stands and the delta asks again. Device wins:
        # desired takes the reported value. Manual: parked, out of the delta.
        self.assertEqual(s.desired, {"cfg": {"mode": "boost"}, "sensor": {"rate": 5},
                                     "pref": {"unit": "F"}})
        self.assertEqual(s.delta, {"cfg": {"mode": "boost"}})
        self.assertEqual([p for p, _ in s.parked()], ["pref.unit"])
        counts = s.conflict_counts()
        self.assertEqual((counts["cloud_wins"], counts["device_wins"], counts["manual_resolve"]),
                         (1, 1, 1))

        # The operator picks the device's value: it becomes desired.
        v = s.resolve("pref.unit", "device")
        self.assertEqual(v, s.version)
        self.assertEqual(s.desired["pref"], {"unit": "K"})
        self.assertEqual(s.parked(), [])
        with self.assertRaises(KeyError):
            s.resolve("pref.unit", "cloud")
        with self.assertRaises(ValueError):
            s.resolve("cfg.mode", "nobody")

    def test_manual_conflict_resolved_for_the_cloud_goes_back_into_the_delta(self):
        s = self.agreed(pref="manual_resolve")
        s.update_desired({"pref": {"unit": "F"}})
        s.update_reported({"pref": {"unit": "K"}})
        self.assertNotIn("pref", s.delta)
        s.resolve("pref.unit", "cloud")
        self.assertEqual(s.delta, {"pref": {"unit": "F"}})

    def test_latest_wins_takes_the_later_write(self):
        s = Shadow(default_policy="latest_wins", skew_tolerance_ms=0)
        s.update_desired({"t": 20})
        s.update_reported({"t": 20})
        s.update_desired({"t": 21})
        time.sleep(0.01)
        s.update_reported({"t": 25})  # written after the cloud's
        self.assertEqual(s.last_conflicts[0]["winner"], "device")
        self.assertEqual(s.desired, {"t": 25})

    def test_a_refused_write_changes_nothing(self):
        s = self.agreed()
        before = (s.version, s.desired, s.reported)
        with self.assertRaises(VersionConflict):
            s.update_desired({"cfg": {"mode": "x"}}, version=99)
        self.assertEqual((s.version, s.desired, s.reported), before)


if __name__ == "__main__":
    unittest.main()
