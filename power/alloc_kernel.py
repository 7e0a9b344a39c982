"""The numba kernel behind :func:`power.allocator.allocate`.

Everything here is plain Python over numpy arrays so that the very same source runs
interpreted when ``NUMBA_DISABLE_JIT=1`` is set: that interpreted run is the pure-Python
reference the tests compare the compiled kernel against, element by element.

The algorithm, in three phases (see docs/allocator.md for the reasoning):

1. Fair targets: weighted water-filling of the gun demands under the station power cap.
2. Assignment (integral): pass 1 lets every gun keep its own modules up to its target, then
   fills the hungry guns from the rest, lowest ``alloc / weight`` first (fewest switches, max-min
   fair). A gun that no remaining module can reach is frozen at what it got and the targets are
   computed again for the others. If the pool as a whole runs out, pass 2 redoes the assignment
   module by module, each module going to the hungry gun where it delivers the most power
   (maximum power first), fairness breaking ties. Pass 3 then moves idle modules along
   chains of guns (a gun gives a module to a hungry one and takes a free one, or one from a
   further gun) while that adds power: partial reach can strand modules otherwise.
3. Setpoints: gun currents by water-filling again (demand, assigned pool capacity, station cap),
   spread evenly over each gun's modules. Modules carrying current above the switch threshold
   never change gun; those that should move are drained (setpoint 0) instead.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from power import jit_cache

_PREVIOUS_CACHE_DIR = jit_cache.enter()

from power.alloc_assign import (  # noqa: E402
    _MARGIN,
    _achieved,
    _assign_fair,
    _assign_max_power,
    _below,
    _wants,
)
from power.alloc_augment import _augment  # noqa: E402

# Binding limit per gun (output ``gun_binding``); mirrored by power.allocator.Binding.
NO_DEMAND = 0
REQUEST = 1
GUN_MAX = 2
POOL = 3
STATION = 4
DRAINING = 5

# Error codes of the kernel's input validation; the argument index names the culprit.
ERR_OK = 0
ERR_SHAPE = 1
ERR_NOT_FINITE = 2
ERR_NEGATIVE = 3
ERR_NOT_POSITIVE = 4
ERR_RANGE = 5

ARG_NAMES = (
    "gun_request_a",
    "gun_voltage_v",
    "gun_max_a",
    "gun_weight",
    "module_max_a",
    "module_max_w",
    "module_gun",
    "module_current_a",
    "reach",
    "station_max_w",
    "switch_threshold_a",
)

@njit(cache=True)
def _check_vec(x, n, positive):  # type: ignore[no-untyped-def]
    """0 or an error code for a float vector that must have length n, be finite, be >= 0."""
    if x.shape[0] != n:
        return ERR_SHAPE
    for i in range(n):
        v = x[i]
        if not np.isfinite(v):
            return ERR_NOT_FINITE
        if positive and v <= 0.0:
            return ERR_NOT_POSITIVE
        if v < 0.0:
            return ERR_NEGATIVE
    return ERR_OK


@njit(cache=True)
def _validate(  # type: ignore[no-untyped-def]
    req, volt, gmax, weight, mmax_a, mmax_w, mgun, mcur, reach, smax, thr
):
    """(error code, argument index) for the whole input; (0, -1) when it is valid."""
    g_n = req.shape[0]
    m_n = mmax_a.shape[0]
    gun_vecs = (req, volt, gmax, weight)
    for k in range(4):
        e = _check_vec(gun_vecs[k], g_n, k == 3)
        if e != ERR_OK:
            return e, k
    mod_vecs = (mmax_a, mmax_w)
    for k in range(2):
        e = _check_vec(mod_vecs[k], m_n, False)
        if e != ERR_OK:
            return e, 4 + k
    if mgun.shape[0] != m_n:
        return ERR_SHAPE, 6
    for m in range(m_n):
        if mgun[m] < -1 or mgun[m] >= g_n:
            return ERR_RANGE, 6
    if mcur.shape[0] != m_n:
        return ERR_SHAPE, 7
    for m in range(m_n):
        if not np.isfinite(mcur[m]):
            return ERR_NOT_FINITE, 7
    if reach.shape[0] != m_n or reach.shape[1] != g_n:
        return ERR_SHAPE, 8
    if not np.isfinite(smax):
        return ERR_NOT_FINITE, 9
    if smax < 0.0:
        return ERR_NEGATIVE, 9
    if not np.isfinite(thr):
        return ERR_NOT_FINITE, 10
    if thr < 0.0:
        return ERR_NEGATIVE, 10
    return ERR_OK, -1


@njit(cache=True)
def _argsort_merge(keys):  # type: ignore[no-untyped-def]
    """Stable ascending argsort, bottom-up merge sort: O(n log n) for large pools. Ours
    rather than ``np.argsort(kind="mergesort")``, whose compile alone added ~1.8 s to a cold
    start (issue 9: start-up time)."""
    n = keys.shape[0]
    src = np.arange(n)
    dst = np.empty(n, dtype=np.int64)
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                if keys[src[j]] < keys[src[i]]:  # strictly less: equal keys keep order
                    dst[k] = src[j]
                    j += 1
                else:
                    dst[k] = src[i]
                    i += 1
                k += 1
            while i < mid:
                dst[k] = src[i]
                i += 1
                k += 1
            while j < hi:
                dst[k] = src[j]
                j += 1
                k += 1
        src, dst = dst, src
        width *= 2
    return src


@njit(cache=True)
def _argsort_small(keys):  # type: ignore[no-untyped-def]
    """Stable ascending argsort by insertion: faster than numba's argsort for short arrays."""
    n = keys.shape[0]
    idx = np.arange(n)
    for i in range(1, n):
        j = i
        cur = idx[i]
        while j > 0 and keys[idx[j - 1]] > keys[cur]:
            idx[j] = idx[j - 1]
            j -= 1
        idx[j] = cur
    return idx


@njit(cache=True)
def _waterfill(lim, weight, volt, smax):  # type: ignore[no-untyped-def]
    """Weighted max-min fair currents: I_g = min(lim_g, lam * w_g) with sum I_g V_g <= smax.

    ``volt`` is any per-gun cost coefficient (volts for power, 1 / module current for a
    count of modules); a gun with coefficient 0 is not limited by the budget.
    """
    g_n = lim.shape[0]
    out = lim.copy()
    total = 0.0
    for g in range(g_n):
        total += lim[g] * volt[g]
    budget = smax * (1.0 - _MARGIN)
    if total <= budget:
        return out
    # Guns at 0 V draw no power: they keep their limit. The rest share the budget.
    keys = np.empty(g_n)
    for g in range(g_n):
        keys[g] = lim[g] / weight[g] if volt[g] > 0.0 else np.inf
    order = _argsort_small(keys)
    sat_power = 0.0  # power of guns saturated at their limit (lambda beyond their breakpoint)
    wv = 0.0
    for g in range(g_n):
        if volt[g] > 0.0:
            wv += weight[g] * volt[g]
    lam = 0.0
    for k in range(g_n):
        g = order[k]
        if volt[g] <= 0.0:
            break
        # If every gun from here on were capped at lambda = keys[g]:
        p_at = sat_power + keys[g] * wv
        if p_at >= budget:
            break
        sat_power += lim[g] * volt[g]
        wv -= weight[g] * volt[g]
    lam = (budget - sat_power) / wv if wv > 0.0 else 0.0
    if lam < 0.0:
        lam = 0.0
    for g in range(g_n):
        if volt[g] > 0.0:
            share = lam * weight[g]
            if share < out[g]:
                out[g] = share
    return out


@njit(cache=True)
def _values_differ(dem, volt, cap, reach, usable):  # type: ignore[no-untyped-def]
    """True if some module gives more power on one demanding gun than on another.

    Otherwise every split of the pool delivers the same power and pass 2 has nothing to gain.
    """
    for m in range(cap.shape[0]):
        if not usable[m]:
            continue
        lo = np.inf
        hi = 0.0
        for g in range(dem.shape[0]):
            if reach[m, g] and dem[g] > 0.0 and volt[g] > 0.0:
                v = cap[m, g] * volt[g]
                lo = min(lo, v)
                hi = max(hi, v)
        if hi > lo * (1.0 + 1e-6) + 1e-9:
            return True
    return False


@njit(cache=True)
def _spread(total, caps, out, fixed, k):  # type: ignore[no-untyped-def]
    """Even split of ``total`` over the first ``k`` capacities ``caps`` (water-filling).

    Works in caller-owned buffers: allocations are a large share of a 2x48 call.
    """
    for i in range(k):
        fixed[i] = False
        out[i] = 0.0
    remaining = total
    free_n = k
    while free_n > 0:
        mu = remaining / free_n
        changed = False
        for i in range(k):
            if not fixed[i] and caps[i] <= mu:
                out[i] = caps[i]
                fixed[i] = True
                remaining -= caps[i]
                free_n -= 1
                changed = True
        if not changed:
            for i in range(k):
                if not fixed[i]:
                    out[i] = mu
            break
    # Rounding must never lift the sum over the total: trim the largest share.
    s = 0.0
    for i in range(k):
        s += out[i]
    if s > total and k > 0:
        j = 0
        for i in range(k):
            if out[i] > out[j]:
                j = i
        out[j] = max(0.0, out[j] - (s - total))


@njit(cache=True)
def allocate_kernel(  # type: ignore[no-untyped-def]
    req, volt, gmax, weight, mmax_a, mmax_w, mgun, mcur, reach, smax, thr,
    out_gun, setp, gcur, bind,
):
    """The whole allocation, written into the four output arrays (sized M, M, G, G).

    Returns 0, or ``err * 1000 + arg`` naming the invalid argument. Outputs are passed in
    rather than returned because boxing new arrays costs microseconds per call.
    """
    g_n = req.shape[0]
    m_n = mmax_a.shape[0]
    err, arg = _validate(req, volt, gmax, weight, mmax_a, mmax_w, mgun, mcur, reach, smax, thr)
    if err != ERR_OK:
        return err * 1000 + arg
    out_gun[:] = -1
    setp[:] = 0.0
    gcur[:] = 0.0
    bind[:] = NO_DEMAND

    dem = np.empty(g_n)
    for g in range(g_n):
        dem[g] = min(req[g], gmax[g])
    locked = np.empty(m_n, dtype=np.bool_)
    usable = np.empty(m_n, dtype=np.bool_)
    home = np.full(m_n, -1, dtype=np.int64)
    for m in range(m_n):
        locked[m] = mgun[m] >= 0 and abs(mcur[m]) > thr
        usable[m] = mmax_a[m] > 0.0 and mmax_w[m] > 0.0
        h = mgun[m]
        if h >= 0 and dem[h] > 0.0 and reach[m, h]:
            home[m] = h
    # One pass over (module, gun): what each module can give on each gun (divisions are
    # slow: multiply by 1/V), and each gun's mean module current and the size of the pool
    # for the fair targets (accumulated without branches: reach is unpredictable).
    cap = np.empty((m_n, g_n))
    inv_v = np.empty(g_n)  # 1/V with the margin; huge at 0 V (no power limit), branch-free
    dpos = np.zeros(g_n)
    for g in range(g_n):
        inv_v[g] = (1.0 - _MARGIN) / volt[g] if volt[g] > 0.0 else 1e300
        if dem[g] > 0.0:
            dpos[g] = 1.0
    csum = np.zeros(g_n)
    ccnt = np.zeros(g_n)
    n_pool = 0.0
    for m in range(m_n):
        um = 1.0 if usable[m] else 0.0
        a = mmax_a[m]
        w = mmax_w[m]
        reached = 0.0
        for g in range(g_n):
            c = min(a, w * inv_v[g])
            cap[m, g] = c
            r = um * dpos[g] * reach[m, g]
            csum[g] += c * r
            ccnt[g] += r
            reached += r
        if reached > 0.0:
            n_pool += 1.0
    # Strongest modules first (fewer modules for the same current); numba's argsort is slow,
    # and a uniform pool (the usual case) needs no sorting.
    uniform = True
    for m in range(1, m_n):
        if mmax_a[m] != mmax_a[0]:
            uniform = False
            break
    if uniform:
        order = np.arange(m_n)
    elif m_n <= 96:
        order = _argsort_small(-mmax_a)  # insertion sort: cheaper than numba's for few
    else:
        order = _argsort_merge(-mmax_a)
    coef = np.zeros(g_n)
    lim_p = np.zeros(g_n)
    for g in range(g_n):
        if ccnt[g] > 0.0 and csum[g] > 0.0:
            cbar = csum[g] / ccnt[g]
            coef[g] = 1.0 / cbar
            lim_p[g] = dem[g] if volt[g] > 0.0 else min(dem[g], cbar)
    lim_t = dem.copy()
    frozen = np.zeros(g_n, dtype=np.bool_)
    assign = np.full(m_n, -1, dtype=np.int64)
    alloc = np.zeros(g_n)
    tgt = np.zeros(g_n)
    tgt_s = np.zeros(g_n)
    for _round in range(g_n + 1):
        tgt_s = _waterfill(lim_t, weight, volt, smax)
        tgt = tgt_s.copy()
        tgt_p = _waterfill(np.minimum(lim_t, lim_p), weight, coef, n_pool)
        for g in range(g_n):
            tgt[g] = min(tgt[g], tgt_p[g])
        assign[:] = -1
        alloc[:] = 0.0
        ok = _assign_fair(
            tgt, weight, volt, cap, mgun, reach, locked, usable, home, order, assign,
            alloc,
        )
        if ok:
            break
        leftover = False
        for m in range(m_n):
            if not usable[m] or assign[m] >= 0:
                continue
            for g in range(g_n):
                if reach[m, g] and not frozen[g] and _wants(alloc, dem, volt, g):
                    leftover = True
        if not leftover:
            break  # the pool ran out: the greedy shared it fairly
        for g in range(g_n):
            if _wants(alloc, tgt, volt, g):
                lim_t[g] = alloc[g]
                frozen[g] = True
    budget = smax * (1.0 - _MARGIN)
    fair_power = _achieved(alloc, dem, volt)
    if fair_power < budget * (1.0 - 1e-9) and _values_differ(dem, volt, cap, reach, usable):
        # The pool, not the station cap, limits the power, and modules are worth more on some
        # guns than on others: take the max-power assignment when it really delivers more.
        assign2 = np.full(m_n, -1, dtype=np.int64)
        alloc2 = np.zeros(g_n)
        _assign_max_power(
            dem, weight, volt, cap, mgun, reach, locked, usable, home, order,
            smax, assign2, alloc2,
        )
        if _achieved(alloc2, dem, volt) > fair_power * (1.0 + 1e-6) + 1e-6:
            assign = assign2
            alloc = alloc2
    # Pass 3: chains of moves towards the hungry guns, where reach kept the passes above
    # from placing modules well.
    _augment(dem, volt, cap, reach, locked, usable, home, order, smax, assign, alloc)

    # Realise the assignment. active[m]: the module carries current for out_gun[m] this cycle.
    active = np.zeros(m_n, dtype=np.bool_)
    claims = np.zeros(g_n, dtype=np.int64)
    for m in range(m_n):
        a = assign[m]
        if locked[m]:
            out_gun[m] = mgun[m]  # invariant 1: a loaded module never switches
            if a >= 0 and a != mgun[m]:
                claims[a] += 1  # drained now, switched to gun a on a later cycle
            elif usable[m] and home[m] >= 0:
                active[m] = True
        elif a >= 0:
            out_gun[m] = a
            active[m] = True
        elif usable[m] and home[m] >= 0:
            out_gun[m] = home[m]  # surplus stays connected: no switch, cooler modules
            active[m] = True
        else:
            out_gun[m] = -1

    pool = np.zeros(g_n)
    count = np.zeros(g_n, dtype=np.int64)
    for m in range(m_n):
        if active[m]:
            g = out_gun[m]
            pool[g] += cap[m, g]
            count[g] += 1
    lim = np.empty(g_n)
    for g in range(g_n):
        lim[g] = min(dem[g], pool[g])
    cur = _waterfill(lim, weight, volt, smax)

    idx = np.empty(m_n, dtype=np.int64)
    caps = np.empty(m_n)
    share = np.empty(m_n)
    fixed = np.empty(m_n, dtype=np.bool_)
    for g in range(g_n):
        k = count[g]
        if k == 0 or cur[g] <= 0.0:
            continue
        j = 0
        for m in range(m_n):
            if active[m] and out_gun[m] == g:
                idx[j] = m
                caps[j] = cap[m, g]
                j += 1
        _spread(cur[g], caps, share, fixed, k)
        for i in range(k):
            setp[idx[i]] = share[i]
    for m in range(m_n):
        if out_gun[m] >= 0:
            gcur[out_gun[m]] += setp[m]

    for g in range(g_n):
        if dem[g] <= 0.0:
            bind[g] = NO_DEMAND if req[g] <= 0.0 else GUN_MAX
        elif not _below(gcur[g], dem[g]):
            bind[g] = REQUEST if req[g] <= gmax[g] else GUN_MAX
        elif _below(gcur[g], lim[g]):
            bind[g] = STATION  # the final water-filling cut it below what it could carry
        elif not frozen[g] and _below(tgt_s[g], dem[g]) and not _below(gcur[g], tgt_s[g]):
            bind[g] = STATION  # its modules were sized to its share of the station cap
        elif claims[g] > 0:
            bind[g] = DRAINING
        else:
            bind[g] = POOL
    return ERR_OK


jit_cache.leave(_PREVIOUS_CACHE_DIR)
