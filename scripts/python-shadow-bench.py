#!/usr/bin/env python3
"""lanyard.Shadow against the same AWS IoT shadow rules written with plain
Python dicts (the model its tests check it against), in one run: an
update request applied and the delta read back, per update.

Workloads: a 50-leaf document (5 groups of 10) whose updates change 5
leaves; the same with every leaf changed; a document with arrays. Prints
microseconds per update and the ratio. Not in the test command:
`python3 scripts/python-shadow-bench.py` after `pip install ./bindings/python`.
"""

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


def run(apply, reqs):
    start = time.perf_counter()
    for r in reqs:
        apply(r)
    return (time.perf_counter() - start) / len(reqs) * 1e6


def main():
    count = 20_000
    print(f"{'workload':<14} {'lanyard.Shadow':>15} {'plain dicts':>12} {'ratio':>8}")
    for kind in ["5 leaves", "every leaf", "arrays"]:
        reqs = updates(kind, count)
        best = {}
        for name in ("lanyard", "dicts"):
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

                    def apply(r, m=m):
                        m.update(r)
                        return delta(m.desired, m.reported)
                times.append(run(apply, reqs))
            best[name] = min(times)
        ratio = best["dicts"] / best["lanyard"]
        print(f"{kind:<14} {best['lanyard']:>12.1f} us {best['dicts']:>9.1f} us "
              f"{ratio:>7.2f}x {'faster' if ratio >= 1 else 'slower'}")


if __name__ == "__main__":
    main()
