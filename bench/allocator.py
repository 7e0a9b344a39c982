"""Allocator speed: the compiled kernel against the pure-Python run of the same source.

Instances are random but realistic (partial reach, faulted and loaded modules, mixed
voltages) at 2x48, 12x96 and 64x512 guns x modules. The compiled figure is the full
``allocate`` call (argument checks and numba dispatch included). The pure-Python figure
comes from a child process with NUMBA_DISABLE_JIT=1, on the same instances.

Goals (issue 2): <= 10 us a call at 2x48; >= 20x the reference at 12x96; <= 500 us at 64x512.
Prints one line per size, then the figures as JSON on the last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.alloc_instances import random_instance  # noqa: E402

SIZES = {"2x48": (2, 48), "12x96": (12, 96), "64x512": (64, 512)}
N_INSTANCES = 50


def instances(guns: int, modules: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(guns * 1000 + modules)
    return [random_instance(rng, guns, modules) for _ in range(N_INSTANCES)]


def time_calls(cases: list[dict[str, Any]], budget_s: float) -> float:
    """Median over rounds of the mean microseconds per call over all cases."""
    from power.allocator import allocate, warm_up

    warm_up()
    for c in cases:
        allocate(**c)
    rounds: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(rounds) < 3:
        t0 = time.perf_counter()
        for c in cases:
            allocate(**c)
        rounds.append((time.perf_counter() - t0) / len(cases) * 1e6)
    return float(np.median(rounds))


def child() -> None:
    """Runs under NUMBA_DISABLE_JIT=1: the pure-Python reference timings."""
    out = {}
    for key, (g, m) in SIZES.items():
        out[key] = time_calls(instances(g, m), budget_s=3.0)
    print(json.dumps(out))


def main() -> None:
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    ref = subprocess.run(
        [sys.executable, __file__, "--child"], env=env, cwd=ROOT, check=True,
        capture_output=True, text=True,
    )
    python_us = json.loads(ref.stdout.strip().splitlines()[-1])
    jit_us: dict[str, float] = {}
    for key, (g, m) in SIZES.items():
        jit_us[key] = time_calls(instances(g, m), budget_s=2.0)
    speedup = {k: python_us[k] / jit_us[k] for k in SIZES}
    for k in SIZES:
        print(
            f"{k:>7}: compiled {jit_us[k]:9.2f} us/call   pure Python {python_us[k]:11.1f} us/call"
            f"   speed-up {speedup[k]:7.1f}x"
        )
    goals = {
        "2x48 <= 10 us": jit_us["2x48"] <= 10.0,
        "12x96 >= 20x": speedup["12x96"] >= 20.0,
        "64x512 <= 500 us": jit_us["64x512"] <= 500.0,
    }
    for name, met in goals.items():
        print(f"goal {name}: {'met' if met else 'MISSED'}")
    print(
        json.dumps(
            {
                "us_per_call": {k: round(v, 3) for k, v in jit_us.items()},
                "python_us_per_call": {k: round(v, 1) for k, v in python_us.items()},
                "speedup": {k: round(v, 1) for k, v in speedup.items()},
            }
        )
    )


if __name__ == "__main__":
    if "--child" in sys.argv:
        child()
    else:
        main()
