"""The allocator contract: invariants 1-5 on random instances, the LP bound, the objective
in plain scenarios, input validation, and the compiled kernel against the pure-Python run."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from power.allocator import Allocation, Binding, allocate, warm_up
from tests.alloc_instances import random_instance

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-9


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warm_up()


def check_invariants(inp: dict[str, Any], out: Allocation) -> None:
    """Invariants 1-5 of the contract, plus output shapes and the sum identity."""
    req, volt, gmax = inp["gun_request_a"], inp["gun_voltage_v"], inp["gun_max_a"]
    mmax_a, mmax_w = inp["module_max_a"], inp["module_max_w"]
    mgun, cur, reach = inp["module_gun"], inp["module_current_a"], inp["reach"]
    thr, smax = inp["switch_threshold_a"], inp["station_max_w"]
    g_n, m_n = len(req), len(mmax_a)
    ng, sp, gc, gb = out
    assert ng.shape == (m_n,) and ng.dtype == np.int64
    assert sp.shape == (m_n,) and sp.dtype == np.float64
    assert gc.shape == (g_n,) and gb.shape == (g_n,) and gb.dtype == np.int8
    assert set(gb.tolist()) <= {b.value for b in Binding}
    for m in range(m_n):
        # 1. switching only at low current
        if ng[m] != mgun[m]:
            assert abs(cur[m]) <= thr, f"module {m} switched at {cur[m]} A"
        # 2. reach and faulted modules
        if ng[m] >= 0 and ng[m] != mgun[m]:
            assert reach[m, ng[m]], f"module {m} connected to unreachable gun {ng[m]}"
        if sp[m] > 0:
            assert ng[m] >= 0 and reach[m, ng[m]]
        if mmax_a[m] == 0:
            assert sp[m] == 0
        # 3. module limits
        assert 0.0 <= sp[m] <= mmax_a[m]
        if ng[m] >= 0:
            assert sp[m] * volt[ng[m]] <= mmax_w[m] * (1 + TOL)
        else:
            assert sp[m] == 0
    # gun current is the sum of its modules' setpoints
    sums = np.zeros(g_n)
    for m in range(m_n):
        if ng[m] >= 0:
            sums[ng[m]] += sp[m]
    np.testing.assert_allclose(gc, sums, rtol=1e-12, atol=1e-9)
    # 4. gun limits
    for g in range(g_n):
        assert gc[g] <= min(req[g], gmax[g]) * (1 + TOL) + TOL
        if req[g] == 0:
            assert gc[g] == 0 and gb[g] == Binding.NO_DEMAND
    # 5. station cap
    assert float((gc * volt).sum()) <= smax * (1 + TOL) + TOL


def lp_optimum(inp: dict[str, Any]) -> float:
    """Fractional optimum: modules may be time-shared between guns."""
    req, volt, gmax = inp["gun_request_a"], inp["gun_voltage_v"], inp["gun_max_a"]
    mmax_a, mmax_w, reach = inp["module_max_a"], inp["module_max_w"], inp["reach"]
    g_n, m_n = len(req), len(mmax_a)
    pairs = [(m, g) for m in range(m_n) for g in range(g_n) if reach[m, g] and mmax_a[m] > 0]
    if not pairs:
        return 0.0
    cap = {
        (m, g): min(mmax_a[m], mmax_w[m] / volt[g]) if volt[g] > 0 else mmax_a[m]
        for m, g in pairs
    }
    n = len(pairs)
    c = np.array([-volt[g] for _, g in pairs])
    rows, rhs = [], []
    for m in range(m_n):
        rows.append([1.0 / cap[p] if p[0] == m and cap[p] > 0 else 0.0 for p in pairs])
        rhs.append(1.0)
    for g in range(g_n):
        rows.append([1.0 if p[1] == g else 0.0 for p in pairs])
        rhs.append(min(req[g], gmax[g]))
    rows.append([volt[g] for _, g in pairs])
    rhs.append(inp["station_max_w"])
    bounds = [(0.0, cap[p]) for p in pairs]
    res = linprog(c, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=bounds, method="highs")
    assert res.status == 0, res.message
    assert n == len(res.x)
    return float(-res.fun)


def delivered(inp: dict[str, Any], out: Allocation) -> float:
    return float((out.gun_current_a * inp["gun_voltage_v"]).sum())


def largest_module_power(inp: dict[str, Any]) -> float:
    vmax = float(inp["gun_voltage_v"].max(initial=0.0))
    p = np.minimum(inp["module_max_w"], inp["module_max_a"] * vmax)
    return float(p.max(initial=0.0))


# ---------------------------------------------------------------- invariants on random input


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    guns=st.integers(1, 16),
    modules=st.integers(1, 256),
    partial=st.booleans(),
    faults=st.booleans(),
    loaded=st.booleans(),
)
def test_invariants_hold_on_random_instances(
    seed: int, guns: int, modules: int, partial: bool, faults: bool, loaded: bool
) -> None:
    rng = np.random.default_rng(seed)
    inp = random_instance(rng, guns, modules, partial_reach=partial, faults=faults, loaded=loaded)
    check_invariants(inp, allocate(**inp))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    guns=st.integers(1, 6),
    modules=st.integers(1, 60),
    partial=st.booleans(),
)
# Found by Hypothesis (seed 125) and by a wider survey: passes 1-2 gave shared modules to a gun
# its own modules could serve; the whole-module optimum equals the LP one in both.
@example(seed=125, guns=2, modules=24, partial=True)
@example(seed=2394175118, guns=3, modules=59, partial=True)
@example(seed=625612888, guns=2, modules=45, partial=True)
def test_idle_modules_deliver_lp_optimum_within_g_minus_1_modules(
    seed: int, guns: int, modules: int, partial: bool
) -> None:
    rng = np.random.default_rng(seed)
    inp = random_instance(rng, guns, modules, partial_reach=partial, loaded=False)
    out = allocate(**inp)
    check_invariants(inp, out)
    lp = lp_optimum(inp)
    slack = (guns - 1) * largest_module_power(inp)
    assert delivered(inp, out) >= lp - slack - 1e-6 * max(lp, 1.0)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    guns=st.integers(1, 8),
    modules=st.integers(8, 128),
)
def test_lp_optimum_met_exactly_when_modules_are_not_the_limit(
    seed: int, guns: int, modules: int
) -> None:
    rng = np.random.default_rng(seed)
    inp = random_instance(
        rng, guns, modules, partial_reach=False, faults=False, loaded=False, zero_voltage=False
    )
    # homogeneous modules, enough of them for every gun's full demand at once
    inp["module_max_a"][:] = 100.0
    inp["module_max_w"][:] = 40e3
    need = 0
    for g in range(guns):
        per = min(100.0, 40e3 / inp["gun_voltage_v"][g])
        need += int(np.ceil(min(inp["gun_request_a"][g], inp["gun_max_a"][g]) / per))
    if need > modules:
        inp["module_max_a"] = np.full(need, 100.0)
        inp["module_max_w"] = np.full(need, 40e3)
        inp["module_gun"] = np.full(need, -1, dtype=np.int64)
        inp["module_current_a"] = np.zeros(need)
        inp["reach"] = np.ones((need, guns), dtype=bool)
    out = allocate(**inp)
    check_invariants(inp, out)
    lp = lp_optimum(inp)
    assert delivered(inp, out) == pytest.approx(lp, rel=1e-6, abs=1e-3)


# ---------------------------------------------------------------- the objective in scenarios


def two_guns(**over: Any) -> dict[str, Any]:
    m = 48
    inp: dict[str, Any] = dict(
        gun_request_a=np.array([1500.0, 0.0]),
        gun_voltage_v=np.array([800.0, 800.0]),
        gun_max_a=np.array([1500.0, 1500.0]),
        gun_weight=np.ones(2),
        module_max_a=np.full(m, 100.0),
        module_max_w=np.full(m, 40e3),
        module_gun=np.full(m, -1, dtype=np.int64),
        module_current_a=np.zeros(m),
        reach=np.ones((m, 2), dtype=bool),
        station_max_w=2.0e6,
        switch_threshold_a=5.0,
    )
    inp.update(over)
    return inp


def test_single_truck_takes_what_it_asks_from_the_pool() -> None:
    inp = two_guns()
    out = allocate(**inp)
    check_invariants(inp, out)
    assert out.gun_current_a[0] == pytest.approx(1500.0)
    assert out.gun_binding[0] == Binding.REQUEST
    assert out.gun_binding[1] == Binding.NO_DEMAND
    used = out.module_gun == 0
    assert used.sum() == 30  # 40 kW at 800 V is 50 A a module
    assert np.allclose(out.module_setpoint_a[used], 50.0)


def test_two_trucks_share_a_scarce_pool_equally() -> None:
    inp = two_guns(gun_request_a=np.array([1500.0, 1500.0]))
    out = allocate(**inp)
    check_invariants(inp, out)
    assert out.gun_current_a[0] == pytest.approx(1200.0)
    assert out.gun_current_a[1] == pytest.approx(1200.0)
    assert list(out.gun_binding) == [Binding.POOL, Binding.POOL]


def test_weights_share_the_station_cap_proportionally() -> None:
    inp = two_guns(
        gun_request_a=np.array([1500.0, 1500.0]),
        gun_weight=np.array([2.0, 1.0]),
        station_max_w=800e3 * 1.2,
    )
    out = allocate(**inp)
    check_invariants(inp, out)
    assert out.gun_current_a[0] == pytest.approx(800.0, rel=1e-6)
    assert out.gun_current_a[1] == pytest.approx(400.0, rel=1e-6)
    assert list(out.gun_binding) == [Binding.STATION, Binding.STATION]


def test_second_truck_takes_modules_only_after_they_drained() -> None:
    # Truck A holds all 48 modules at 31.25 A each; truck B arrives.
    first = two_guns(
        gun_request_a=np.array([1500.0, 1500.0]),
        module_gun=np.zeros(48, dtype=np.int64),
        module_current_a=np.full(48, 31.25),
    )
    out = allocate(**first)
    check_invariants(first, out)
    assert np.all(out.module_gun == 0)  # nothing switches under load
    assert out.gun_current_a[1] == 0.0
    assert out.gun_binding[1] == Binding.DRAINING
    drained = out.module_setpoint_a == 0.0
    assert drained.sum() == 24  # half the pool is drained for the newcomer
    # Next cycle: the drained modules carry nothing and move; nothing else moves.
    cur = np.where(drained, 0.0, out.module_setpoint_a)
    second = dict(first, module_gun=out.module_gun, module_current_a=cur)
    out2 = allocate(**second)
    check_invariants(second, out2)
    moved = out2.module_gun != out.module_gun
    assert moved.sum() == 24 and np.all(drained[moved])
    assert out2.gun_current_a == pytest.approx([1200.0, 1200.0])


def test_shared_modules_go_where_only_they_reach() -> None:
    # Modules 0-5 reach both guns, 6-8 only gun 0. Gun 0 needs two modules, gun 1 six: every
    # shared module must go to gun 1 and gun 0 take its own (the greedy pass alone gave gun 0
    # two shared ones and left gun 1 two modules short).
    m = 9
    reach = np.ones((m, 2), dtype=bool)
    reach[6:, 1] = False
    inp = two_guns(
        gun_request_a=np.array([100.0, 300.0]),
        module_max_a=np.full(m, 100.0),
        module_max_w=np.full(m, 40e3),
        module_gun=np.full(m, -1, dtype=np.int64),
        module_current_a=np.zeros(m),
        reach=reach,
    )
    out = allocate(**inp)
    check_invariants(inp, out)
    assert out.gun_current_a == pytest.approx([100.0, 300.0])
    assert list(out.gun_binding) == [Binding.REQUEST, Binding.REQUEST]
    assert np.all(out.module_gun[:6] == 1)


def test_faulted_module_is_dropped_and_its_share_reallocated() -> None:
    inp = two_guns(
        gun_request_a=np.array([1500.0, 1500.0]),
        module_gun=np.repeat(np.array([0, 1], dtype=np.int64), 24),
        module_current_a=np.full(48, 50.0),
    )
    inp["module_max_a"][3] = 0.0
    out = allocate(**inp)
    check_invariants(inp, out)
    assert out.module_setpoint_a[3] == 0.0
    assert out.module_gun[3] == 0  # still loaded: stays until it carries nothing
    assert out.gun_current_a.sum() == pytest.approx(47 * 50.0)
    inp2 = dict(inp, module_current_a=np.where(np.arange(48) == 3, 0.0, 50.0))
    out2 = allocate(**inp2)
    assert out2.module_gun[3] == -1  # disconnected once idle


def test_stable_input_switches_nothing() -> None:
    inp = two_guns(gun_request_a=np.array([1500.0, 1500.0]))
    out = allocate(**inp)
    again = dict(inp, module_gun=out.module_gun, module_current_a=out.module_setpoint_a)
    out2 = allocate(**again)
    assert np.array_equal(out2.module_gun, out.module_gun)
    np.testing.assert_allclose(out2.module_setpoint_a, out.module_setpoint_a)


def test_current_spread_evenly_over_a_guns_modules() -> None:
    inp = two_guns(gun_request_a=np.array([600.0, 0.0]), module_gun=np.zeros(48, np.int64))
    out = allocate(**inp)
    on = out.module_gun == 0
    assert on.sum() == 48  # no needless switching: all stay, each gives a little
    assert np.allclose(out.module_setpoint_a[on], 600.0 / 48)


def test_zero_station_cap_gives_zero_everywhere() -> None:
    inp = two_guns(gun_request_a=np.array([1500.0, 100.0]), station_max_w=0.0)
    out = allocate(**inp)
    check_invariants(inp, out)
    assert np.all(out.gun_current_a == 0.0)
    assert list(out.gun_binding) == [Binding.STATION, Binding.STATION]


def test_precharge_gun_at_zero_volts_gets_a_module() -> None:
    inp = two_guns(
        gun_request_a=np.array([1500.0, 2.0]),
        gun_voltage_v=np.array([800.0, 0.0]),
        module_max_a=np.full(20, 100.0),
        module_max_w=np.full(20, 40e3),
        module_gun=np.full(20, -1, dtype=np.int64),
        module_current_a=np.zeros(20),
        reach=np.ones((20, 2), dtype=bool),
    )
    out = allocate(**inp)
    check_invariants(inp, out)
    assert out.gun_current_a[1] == pytest.approx(2.0)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("name", "bad", "words"),
    [
        ("gun_request_a", np.array([np.nan, 0.0]), "NaN"),
        ("gun_voltage_v", np.array([-1.0, 0.0]), "negative"),
        ("gun_max_a", np.array([1.0]), "shape"),
        ("gun_weight", np.array([1.0, 0.0]), "> 0"),
        ("module_max_a", np.full(48, np.inf), "infinite"),
        ("module_max_w", np.full(48, -5.0), "negative"),
        ("module_gun", np.full(48, 2, dtype=np.int64), "gun index"),
        ("module_current_a", np.full(48, np.nan), "NaN"),
        ("reach", np.ones((48, 3), dtype=bool), "shape"),
        ("station_max_w", float("nan"), "NaN"),
        ("switch_threshold_a", -1.0, "negative"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument(name: str, bad: Any, words: str) -> None:
    with pytest.raises(ValueError, match=name) as info:
        allocate(**two_guns(**{name: bad}))
    assert words in str(info.value)


def test_non_numeric_input_is_rejected_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="gun_weight"):
        allocate(**two_guns(gun_weight=["a", "b"]))


# ---------------------------------------------------------------- compiled vs pure Python


def test_compiled_kernel_matches_pure_python_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(20261127)
    cases = []
    for _ in range(120):
        g = int(rng.integers(1, 9))
        m = int(rng.integers(1, 97))
        cases.append(random_instance(rng, g, m, partial_reach=bool(rng.random() < 0.5)))
    cases.append(two_guns(gun_request_a=np.array([1500.0, 1500.0])))
    src = tmp_path / "cases.pkl"
    dst = tmp_path / "ref.pkl"
    src.write_bytes(pickle.dumps(cases))
    script = (
        "import pickle,sys\n"
        "from power.allocator import allocate\n"
        "cases = pickle.load(open(sys.argv[1], 'rb'))\n"
        "pickle.dump([tuple(allocate(**c)) for c in cases], open(sys.argv[2], 'wb'))\n"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    subprocess.run(
        [sys.executable, "-c", script, str(src), str(dst)], check=True, cwd=ROOT, env=env
    )
    reference = pickle.loads(dst.read_bytes())
    for case, ref in zip(cases, reference, strict=True):
        got = allocate(**case)
        for a, b in zip(got, ref, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_reference_run_really_is_interpreted() -> None:
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    code = (
        "import json; from power import alloc_kernel as k;"
        "print(json.dumps(hasattr(k.allocate_kernel, 'py_func')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert json.loads(out.stdout) is False


def test_near_equal_voltages_still_share_a_short_pool_evenly() -> None:
    # 790 V and 788 V: the fair target of the first lies a fraction of an ampere above four
    # modules; it must not keep a fifth while the second gets three.
    m = 8
    inp = two_guns(
        gun_request_a=np.array([1500.0, 1500.0]),
        gun_voltage_v=np.array([790.0, 788.0]),
        module_max_a=np.full(m, 100.0),
        module_max_w=np.full(m, 40e3),
        module_gun=np.zeros(m, dtype=np.int64),
        module_current_a=np.full(m, 50.0),
        reach=np.ones((m, 2), dtype=bool),
    )
    out = allocate(**inp)
    check_invariants(inp, out)
    drained = out.module_setpoint_a == 0.0
    assert drained.sum() == 4
    nxt = dict(inp, module_current_a=np.where(drained, 0.0, 50.0))
    out2 = allocate(**nxt)
    check_invariants(nxt, out2)
    assert list(np.bincount(out2.module_gun, minlength=2)) == [4, 4]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=600))
def test_large_pool_sort_is_stable_and_ascending(keys: list[int]) -> None:
    """The kernel's own merge sort (pools over 96 modules) orders as numpy's stable sort."""
    from power.alloc_kernel import _argsort_merge

    k = np.array(keys, dtype=np.float64)
    assert (_argsort_merge(k) == np.argsort(k, kind="stable")).all()
