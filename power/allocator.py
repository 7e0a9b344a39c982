"""The power-pooling allocator: which module feeds which gun, and how much current each gives.

Contract (the control cycle calls :func:`allocate` once per cycle; G guns, M modules):

Inputs (numpy arrays; other dtypes are converted, at a cost):
    gun_request_a (G,) f8     current the vehicle asks for now; 0 when no session
    gun_voltage_v (G,) f8     present voltage at the gun (power = current x voltage)
    gun_max_a (G,) f8         combined gun limit: min(cable rating, EV maximum, OCPP limit)
    gun_weight (G,) f8        policy weight > 0 (equal sharing: all 1)
    module_max_a (M,) f8      derated maximum current of each module now; 0 = unavailable
    module_max_w (M,) f8      power rating of each module
    module_gun (M,) i8        gun each module is connected to now; -1 = none
    module_current_a (M,) f8  measured output current of each module now (may be slightly < 0)
    reach (M, G) bool         True where the matrix can connect module m to gun g
    station_max_w float       station cap: grid + storage - other site load, and the
                              station's own maximum, already combined
    switch_threshold_a float  a contactor may change only at or below this module current

Output :class:`Allocation`: ``module_gun`` (next connection), ``module_setpoint_a``,
``gun_current_a`` (sum of the setpoints of the gun's modules) and ``gun_binding``
(:class:`Binding`, which limit bound each gun).

Invariants, for every valid input (NaN, infinite or negative entries, a weight <= 0, a gun
index out of range or a wrong shape raise ``ValueError`` naming the argument):
 1. A module changes gun (to another gun, to -1, or from -1) only if
    ``abs(module_current_a) <= switch_threshold_a``; otherwise it keeps its gun and its setpoint
    can only be lowered: it is drained (setpoint 0) to be switched on a later cycle.
 2. A module is connected anew only where ``reach`` is True; a module with
    ``module_max_a == 0`` gets setpoint 0 (and is disconnected once it carries no current).
 3. ``0 <= setpoint <= module_max_a`` and ``setpoint * gun_voltage_v[gun] <= module_max_w``.
 4. ``gun_current_a[g] <= min(gun_request_a[g], gun_max_a[g])``; request 0 gives 0.
 5. ``sum(gun_current_a * gun_voltage_v) <= station_max_w``.

Objective, in order: as much power as the limits allow; weighted max-min fair sharing of the
current between guns (water-filling by ``gun_weight``); as few contactor switches as possible
(a gun keeps its own modules first); each gun's current spread evenly over its modules. With
all modules idle, the power delivered is at least the fractional (LP) optimum minus
(G - 1) x the largest module's power, and equal to it when modules are not the bottleneck
(a property checked on random instances, with the counterexamples found pinned: see
docs/allocator.md, "Guarantee").

Policies are the caller's, expressed through weights and gun limits:
 - equal sharing ("democratic"): all weights 1;
 - priority / first-come-first-served: give the first vehicle a weight far above the others
   (e.g. 1000 vs 1); it is served up to its limits, the rest share what is left;
 - state-of-charge priority: weight = f(SoC), e.g. ``1 + (1 - soc)`` so emptier trucks get
   more while every truck still charges;
 - guaranteed minimum per gun: call once with ``gun_max_a`` = the guaranteed minimum (the
   minima are then served first and fairly), or simply give the gun a weight high enough that
   its fair share exceeds the minimum; a hard cap per gun is ``gun_max_a``.

The kernel is compiled by numba (``cache=True``; the cache goes to ``NUMBA_CACHE_DIR``).
Compile it at start-up (:func:`warm_up` compiles in-process; the station compiles in another
process and runs the pure-Python kernel meanwhile), so the compile (8-9 s of CPU cold on a
2-core machine, 0.2-0.5 s from the cache) never happens inside a control cycle. With
``NUMBA_DISABLE_JIT=1`` the same source runs as plain Python: the reference the tests compare
the compiled kernel against.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from power import alloc_kernel as _k
from power import jit_cache

_kernel: Any = _k.allocate_kernel  # a numba dispatcher; its call signature is untyped

F8 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int64]


class Binding(enum.IntEnum):
    """Which limit bound a gun's current this cycle (``Allocation.gun_binding``)."""

    NO_DEMAND = _k.NO_DEMAND  # the vehicle asks for nothing (or no session)
    REQUEST = _k.REQUEST  # the vehicle's request is met
    GUN_MAX = _k.GUN_MAX  # cable rating, EV maximum or OCPP limit
    POOL = _k.POOL  # not enough module capacity reaches this gun
    STATION = _k.STATION  # the station cap (grid, storage, station maximum)
    DRAINING = _k.DRAINING  # modules promised to this gun are still draining elsewhere


class Allocation(NamedTuple):
    """The allocator's decision for one cycle."""

    module_gun: I8
    module_setpoint_a: F8
    gun_current_a: F8
    gun_binding: npt.NDArray[np.int8]


_ERR_TEXT = {
    _k.ERR_SHAPE: "has the wrong shape",
    _k.ERR_NOT_FINITE: "contains NaN or an infinite value",
    _k.ERR_NEGATIVE: "contains a negative value",
    _k.ERR_NOT_POSITIVE: "must be > 0 everywhere",
    _k.ERR_RANGE: "contains a gun index outside -1 .. G-1",
}

#: The kernel allocate() calls: None before start-up, the pure-Python reference while the
#: numba kernel compiles elsewhere (``use_reference``), the dispatcher after ``warm_up``.
_active: Any = None
_on_reference = False
_warm_lock = threading.Lock()

_F8 = np.dtype(np.float64)
_I8 = np.dtype(np.int64)
_B1 = np.dtype(np.bool_)


def _arr(x: Any, dtype: np.dtype[Any], name: str) -> Any:
    if type(x) is np.ndarray and x.dtype == dtype and x.flags.c_contiguous:
        return x
    try:
        return np.ascontiguousarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot be read as {dtype} array: {exc}") from exc


def _coerce(*arrays: Any) -> tuple[Any, ...]:
    """Convert the array arguments to the compiled signature, or say which one is wrong."""
    dtypes = (_F8, _F8, _F8, _F8, _F8, _F8, _I8, _F8, _B1)
    out = tuple(_arr(a, d, n) for a, d, n in zip(arrays, dtypes, _k.ARG_NAMES, strict=False))
    for i in range(8):
        if out[i].ndim != 1:
            raise ValueError(f"{_k.ARG_NAMES[i]} has the wrong shape: expected 1-D")
    if out[8].ndim != 2:
        raise ValueError(f"reach has the wrong shape: expected (M, G), got {out[8].shape}")
    return out


def _scalars(station_max_w: Any, switch_threshold_a: Any) -> tuple[float, float]:
    try:
        return float(station_max_w), float(switch_threshold_a)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"station_max_w / switch_threshold_a must be numbers: {exc}") from exc


def allocate(
    *,
    gun_request_a: F8,
    gun_voltage_v: F8,
    gun_max_a: F8,
    gun_weight: F8,
    module_max_a: F8,
    module_max_w: F8,
    module_gun: I8,
    module_current_a: F8,
    reach: npt.NDArray[np.bool_],
    station_max_w: float,
    switch_threshold_a: float = 5.0,
) -> Allocation:
    """Decide module connections and setpoints for one cycle (see the module docstring)."""
    kernel = _active
    if kernel is None:
        warm_up()
        kernel = _active
    try:
        m_n, g_n = len(module_max_a), len(gun_request_a)
    except TypeError as exc:
        raise ValueError(f"module_max_a / gun_request_a must be 1-D arrays: {exc}") from exc
    out_gun = np.empty(m_n, dtype=np.int64)
    setp = np.empty(m_n)
    gcur = np.empty(g_n)
    bind = np.empty(g_n, dtype=np.int8)
    try:
        if kernel is not _kernel:
            raise TypeError  # the reference checks nothing itself: always coerce
        # Fast path: numba itself checks dtypes, dimensions and layout against the one
        # compiled signature (compiling anew is disabled after warm_up).
        code = kernel(
            gun_request_a, gun_voltage_v, gun_max_a, gun_weight, module_max_a, module_max_w,
            module_gun, module_current_a, reach, station_max_w, switch_threshold_a,
            out_gun, setp, gcur, bind,
        )
    except TypeError:
        code = kernel(
            *_coerce(
                gun_request_a, gun_voltage_v, gun_max_a, gun_weight, module_max_a,
                module_max_w, module_gun, module_current_a, reach,
            ),
            *_scalars(station_max_w, switch_threshold_a),
            out_gun, setp, gcur, bind,
        )
    if code != _k.ERR_OK:
        err, arg = divmod(int(code), 1000)
        raise ValueError(f"{_k.ARG_NAMES[arg]} {_ERR_TEXT[err]}")
    return Allocation(out_gun, setp, gcur, bind)


def warm_up() -> float:
    """Compile (or load from the cache) the kernel; returns the seconds it took.

    Call once at start-up, before the first control cycle. Afterwards numba may not compile
    again: other dtypes are converted by :func:`allocate` instead of compiled in a cycle.
    """
    global _active, _on_reference
    t0 = time.perf_counter()
    with _warm_lock:
        if _active is _kernel:
            return time.perf_counter() - t0
        _run_sample(_kernel)
        if hasattr(_kernel, "disable_compile"):  # absent with NUMBA_DISABLE_JIT=1
            _kernel.disable_compile()
        _active = _kernel  # the switch: the next allocate() runs the compiled kernel
        _on_reference = False
    return time.perf_counter() - t0


def _run_sample(kernel: Any) -> None:
    """One call of ``kernel`` on a tiny instance: compiles it (or loads it from the cache)
    without touching ``_active``, so cycles go on meanwhile on the reference."""
    out = (np.empty(2, dtype=np.int64), np.empty(2), np.empty(2), np.empty(2, dtype=np.int8))
    code = kernel(np.array([10.0, 0.0]), np.array([800.0, 0.0]), np.array([100.0, 100.0]),
                  np.ones(2), np.array([100.0, 0.0]), np.array([40e3, 40e3]),
                  np.array([-1, 0], dtype=np.int64), np.zeros(2), np.ones((2, 2), dtype=bool),
                  1e6, 5.0, *out)
    if code != _k.ERR_OK:
        raise RuntimeError(f"allocator kernel warm-up failed with code {code}")


def use_reference() -> None:
    """Run :func:`allocate` on the pure-Python reference (``power/alloc_reference.py``)
    until :func:`warm_up` switches to the compiled kernel: ready at once, cold or warm."""
    global _active, _on_reference
    from power.alloc_reference import reference_kernel

    ref = reference_kernel()
    with _warm_lock:
        if _active is None:
            _active, _on_reference = ref, True


def kernel_cached() -> bool:
    """True when NUMBA_CACHE_DIR holds this kernel's machine code (a warm start)."""
    return jit_cache.kernel_cached()


def jit_source() -> str:
    """Where the kernel's machine code came from: "cache" (loaded from NUMBA_CACHE_DIR),
    "compiled" (a cold start, ~2 s), "python" (NUMBA_DISABLE_JIT), "reference" (the
    pure-Python reference runs while the kernel is being prepared) or "none" (not warmed up)."""
    if _on_reference:
        return "reference"
    stats = getattr(_kernel, "stats", None)
    if stats is None:
        return "python"
    if sum(stats.cache_misses.values()):
        return "compiled"
    return "cache" if sum(stats.cache_hits.values()) else "none"


async def prepare(compile_timeout_s: float = 300.0) -> float:
    """The background half of a start (after :func:`use_reference`): compile the kernel in
    another process when the cache is cold, load it in a thread, switch. Returns the seconds
    until the switch; cycles run on the reference meanwhile, so there is no gap."""
    t0 = time.perf_counter()
    if _active is not _kernel:
        if hasattr(_kernel, "stats") and not kernel_cached():
            await jit_cache.compile_elsewhere(compile_timeout_s)
        await asyncio.to_thread(warm_up)
    return time.perf_counter() - t0
