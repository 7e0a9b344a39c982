"""Random allocator instances, shared by the tests and bench/allocator.py."""

from __future__ import annotations

from typing import Any

import numpy as np


def random_instance(
    rng: np.random.Generator,
    guns: int,
    modules: int,
    *,
    partial_reach: bool = True,
    faults: bool = True,
    loaded: bool = True,
    zero_voltage: bool = True,
) -> dict[str, Any]:
    """Keyword arguments for ``allocate`` drawn from realistic ranges, with the edge cases on."""
    g, m = guns, modules
    volt = rng.uniform(150.0, 1000.0, g)
    if zero_voltage:
        volt[rng.random(g) < 0.1] = 0.0
    req = rng.uniform(0.0, 1500.0, g)
    req[rng.random(g) < 0.2] = 0.0
    gmax = rng.choice([500.0, 1000.0, 1500.0, 3000.0], g) * rng.uniform(0.3, 1.0, g)
    weight = rng.choice([1.0, 1.0, 2.0, 0.5, 10.0], g)
    rated_a = rng.choice([50.0, 100.0, 150.0], m)
    mmax_w = rng.choice([30e3, 40e3, 60e3], m)
    mmax_a = rated_a * rng.choice([1.0, 1.0, 1.0, 0.5, 0.8], m)
    if faults:
        mmax_a[rng.random(m) < 0.05] = 0.0
    if partial_reach:
        reach = rng.random((m, g)) < rng.uniform(0.3, 1.0)
    else:
        reach = np.ones((m, g), dtype=bool)
    mgun = rng.integers(-1, g, m).astype(np.int64)
    mgun[rng.random(m) < 0.3] = -1
    cur = np.zeros(m)
    if loaded:
        on = mgun >= 0
        cur[on] = rng.choice([0.0, 0.5, 3.0, 5.0, 20.0, 80.0], int(on.sum()))
        cur[on & (rng.random(m) < 0.05)] *= -0.01
    total_power = float((rated_a * 800.0).sum())
    smax = float(rng.uniform(0.0, 1.2) * total_power) if rng.random() < 0.9 else 0.0
    return dict(
        gun_request_a=req,
        gun_voltage_v=volt,
        gun_max_a=gmax,
        gun_weight=weight,
        module_max_a=mmax_a,
        module_max_w=mmax_w,
        module_gun=mgun,
        module_current_a=cur,
        reach=reach,
        station_max_w=smax,
        switch_threshold_a=5.0,
    )
