#!/usr/bin/env python3
"""lanyard.Shadow against the same AWS IoT shadow rules written with plain
Python dicts (the model its tests check it against), in one run: an
update request applied and the delta read back, per update.

Two plain-dict baselines: the model's state alone (its update returns
nothing), and the model with the document `Shadow.update` returns, the
one AWS IoT publishes on /update/accepted (the request's state copied,
a timestamp per leaf it wrote, version, time).

Workloads: a 50-leaf document (5 groups of 10) whose updates change 5
leaves; the same with every leaf changed; a document with arrays. Prints
microseconds per update and the ratios. Not in the test command:
`python3 scripts/python-shadow-bench.py` after `pip install ./bindings/python`.
"""

import copy
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bindings", "python", "tests"))

import lanyard  # noqa: E402
from test_shadow import Model, delta  # noqa: E402


def document(n_groups, n_leaves, salt):
    return {f"g{g}": {f"k{k}": (g * 31 + k + salt) % 97 for k in range(n_leaves)}
            for g in range(n_groups)}


def updates(kind, count):
    out = []
    for i in range(count):
        if kind == "5 leaves":
            part = {f"g{i % 5}": {f"k{k}": i + k for k in range(5)}}
        elif kind == "every leaf":
            part = document(5, 10, i)
        else:
            part = {f"g{i % 5}": {"list": [i, i + 1, i + 2], "k0": i}}
        side = "desired" if i % 2 == 0 else "reported"
        out.append({"state": {side: part}})
    return out


def stamped(part, seconds):
    return {k: stamped(v, seconds) if isinstance(v, dict) else {"timestamp": seconds}
            for k, v in part.items()}


def accepted(req, version, now_ms):
    """What AWS IoT publishes on /update/accepted for `req`."""
    state = req["state"]
    seconds = now_ms // 1000
    doc = {"state": copy.deepcopy(state),
           "metadata": {side: stamped(part, seconds) for side, part in state.items()
                        if isinstance(part, dict)},
           "version": version, "timestamp": seconds}
    if "clientToken" in req:
        doc["clientToken"] = req["clientToken"]
    return doc


def run(apply, reqs):
    start = time.perf_counter()
    for r in reqs:
        apply(r)
    return (time.perf_counter() - start) / len(reqs) * 1e6


def main():
    count = 20_000
    print(f"{'workload':<12} {'lanyard.Shadow':>15} {'dicts, state':>13} {'ratio':>7}"
          f" {'dicts, state + accepted doc':>28} {'ratio':>7}")
    for kind in ["5 leaves", "every leaf", "arrays"]:
        reqs = updates(kind, count)
        best = {}
        for name in ("lanyard", "dicts", "dicts+doc"):
            times = []
            for _ in range(3):
                if name == "lanyard":
                    s = lanyard.Shadow()
                    s.update({"state": {"desired": document(5, 10, 0),
                                        "reported": document(5, 10, 1)}})

                    def apply(r, s=s):
                        s.update(r)
                        return s.delta
                else:
                    m = Model()
                    m.update({"state": {"desired": document(5, 10, 0),
                                        "reported": document(5, 10, 1)}})

                    if name == "dicts":
                        def apply(r, m=m):
                            m.update(r)
                            return delta(m.desired, m.reported)
                    else:
                        def apply(r, m=m):
                            m.update(r)
                            answer = accepted(r, m.version, 1_700_000_000_000)
                            return answer, delta(m.desired, m.reported)
                times.append(run(apply, reqs))
            best[name] = min(times)
        ratio = best["dicts"] / best["lanyard"]
        with_doc = best["dicts+doc"] / best["lanyard"]
        print(f"{kind:<12} {best['lanyard']:>12.1f} us {best['dicts']:>10.1f} us {ratio:>6.2f}x"
              f" {best['dicts+doc']:>25.1f} us {with_doc:>6.2f}x")
    print("ratio: the dicts' time over lanyard.Shadow's (above 1: lanyard.Shadow is faster)")


if __name__ == "__main__":
    main()
