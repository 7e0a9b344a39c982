"""Assignment passes of the allocator kernel: which module goes to which gun.

Pass 1 (:func:`_assign_fair`) is max-min fair with the fewest switches; pass 2
(:func:`_assign_max_power`) maximises power when the pool is short and modules are worth
more on some guns than on others; pass 3 (:func:`_augment`) moves idle modules along chains
of guns where partial reach left power on the table. Plain Python over numpy, compiled by numba; see
power/alloc_kernel.py for the whole algorithm and why the same source is the reference.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from power import jit_cache

_PREVIOUS_CACHE_DIR = jit_cache.enter()

# Relative margin kept below power limits so rounding can never push a product over them.
_MARGIN = 1e-12
# Tolerance of comparisons between currents (relative and absolute).
_EPS = 1e-9


@njit(cache=True)
def _below(a, b):  # type: ignore[no-untyped-def]
    """a < b beyond rounding (relative and absolute tolerance)."""
    return a < b * (1.0 - _EPS) - _EPS


@njit(cache=True)
def _wants(alloc, goal, volt, g):  # type: ignore[no-untyped-def]
    """Gun g still needs modules: below its goal; at 0 V (pre-charge) only its first module."""
    if not _below(alloc[g], goal[g]):
        return False
    return volt[g] > 0.0 or alloc[g] <= 0.0


@njit(cache=True)
def _achieved(alloc, dem, volt):  # type: ignore[no-untyped-def]
    """Power the assignment can deliver once drained modules have moved."""
    p = 0.0
    for g in range(dem.shape[0]):
        p += min(alloc[g], dem[g]) * volt[g]
    return p


@njit(cache=True)
def _assign_fair(  # type: ignore[no-untyped-def]
    tgt, weight, volt, cap, mgun, reach, locked, usable, home, order, assign, alloc
):
    """Pass 1: keep own modules up to the target, then fill hungry guns fairly.

    Returns True when every gun reached its target (possibly through claimed, draining modules).
    """
    g_n = tgt.shape[0]
    m_n = cap.shape[0]
    # a) modules carrying current stay where they are while their gun wants them
    for k in range(m_n):
        m = order[k]
        h = home[m]
        if locked[m] and usable[m] and h >= 0 and _below(alloc[h], tgt[h]):
            assign[m] = h
            alloc[h] += cap[m, h]
    # b) idle modules already on a gun stay there up to its target
    for k in range(m_n):
        m = order[k]
        h = home[m]
        if not locked[m] and usable[m] and h >= 0 and _wants(alloc, tgt, volt, h):
            assign[m] = h
            alloc[h] += cap[m, h]
    # c) the rest goes, class by class and strongest first, each module to the hungriest gun
    #    (lowest alloc/weight) that can take it: unconnected idle modules, then idle surplus
    #    of other guns, then loaded surplus of other guns (claimed: drained first, moved later)
    lists = np.empty((3, m_n), dtype=np.int64)
    counts = np.zeros(3, dtype=np.int64)
    for k in range(m_n):
        m = order[k]
        if not usable[m] or assign[m] >= 0:
            continue
        cls = 2 if locked[m] else (0 if home[m] < 0 else 1)
        lists[cls, counts[cls]] = m
        counts[cls] += 1
    inv_w = np.empty(g_n)
    hungry = np.zeros(g_n, dtype=np.bool_)
    n_hungry = 0
    for g in range(g_n):
        inv_w[g] = 1.0 / weight[g]
        hungry[g] = _wants(alloc, tgt, volt, g)
        n_hungry += 1 if hungry[g] else 0
    for cls in range(3):
        for i in range(counts[cls]):
            if n_hungry == 0:
                break
            m = lists[cls, i]
            best = -1
            best_key = np.inf
            for g in range(g_n):
                if hungry[g] and reach[m, g] and not (cls == 2 and mgun[m] == g):
                    key = alloc[g] * inv_w[g]
                    if key < best_key:
                        best_key = key
                        best = g
            if best < 0:
                continue
            assign[m] = best
            alloc[best] += cap[m, best]
            if not _wants(alloc, tgt, volt, best):
                hungry[best] = False
                n_hungry -= 1
    short = False
    for g in range(g_n):
        if _wants(alloc, tgt, volt, g):
            short = True
    if short:
        _balance(tgt, weight, volt, cap, mgun, reach, locked, assign, alloc)
    for g in range(g_n):
        if _wants(alloc, tgt, volt, g):
            return False
    return True


@njit(cache=True)
def _balance(tgt, weight, volt, cap, mgun, reach, locked, assign, alloc):  # type: ignore[no-untyped-def]
    """Even out a short pool: move a module from a richer gun to the poorest hungry one.

    Whole modules make targets lumpy: with two trucks at 790 V and 788 V, the first keeps a
    fifth module for a target a fraction of an ampere above four, and the second gets three.
    A module moves while the giver stays better served (alloc / weight) than the taker was
    before the move, so the smallest share grows at every step and the loop ends; idle
    modules move first (a loaded one is drained, then moved).
    """
    g_n = tgt.shape[0]
    m_n = cap.shape[0]
    for _step in range(m_n):
        b = -1
        kb = np.inf
        for g in range(g_n):
            if volt[g] > 0.0 and _wants(alloc, tgt, volt, g) and alloc[g] / weight[g] < kb:
                kb = alloc[g] / weight[g]
                b = g
        if b < 0:
            return
        best = -1
        best_key = -np.inf
        for m in range(m_n):
            a = assign[m]
            if a < 0 or a == b or volt[a] <= 0.0 or not reach[m, b]:
                continue
            if locked[m] and mgun[m] == b:
                continue
            after_a = (alloc[a] - cap[m, a]) / weight[a]
            if not _below(kb, after_a):
                continue  # the giver would fall to the taker's level or below: no gain
            key = after_a - (1e12 if locked[m] else 0.0)
            if key > best_key:
                best_key = key
                best = m
        if best < 0:
            return
        a = assign[best]
        alloc[a] -= cap[best, a]
        alloc[b] += cap[best, b]
        assign[best] = b


@njit(cache=True)
def _top2(m, val, hmask):  # type: ignore[no-untyped-def]
    """(best gun, second gun, regret) of module m among the hungry guns; regret -1 if none.

    ``val[m, g]`` is the power module m gives on gun g (-1 where it cannot go) and
    ``hmask[g]`` is 1.0 while gun g is hungry, else 0.0: the scan has no unpredictable branch.
    Regret is what the module loses if it does not get its best gun; a module only one gun
    can use has that gun's whole value as regret, so it is placed first.
    """
    b1 = -1
    b2 = -1
    v1 = 0.0
    v2 = 0.0
    for g in range(val.shape[1]):
        v = val[m, g] * hmask[g]
        if v > v2:
            if v > v1:
                b2 = b1
                v2 = v1
                b1 = g
                v1 = v
            else:
                b2 = g
                v2 = v
    if b1 < 0:
        return b1, b2, -1.0
    return b1, b2, (v1 - v2 if v2 > 0.0 else v1)


@njit(cache=True)
def _heap_above(hk, hm, rank, i, j):  # type: ignore[no-untyped-def]
    """Entry i comes out before entry j: larger regret, then earlier in module order."""
    if hk[i] != hk[j]:
        return hk[i] > hk[j]
    return rank[hm[i]] < rank[hm[j]]


@njit(cache=True)
def _heap_swap(hk, hm, hv, i, j):  # type: ignore[no-untyped-def]
    hk[i], hk[j] = hk[j], hk[i]
    hm[i], hm[j] = hm[j], hm[i]
    hv[i], hv[j] = hv[j], hv[i]


@njit(cache=True)
def _heap_push(hk, hm, hv, size, rank, key, m, ver):  # type: ignore[no-untyped-def]
    """Push onto the max-heap (arrays with room for one more); returns the new size."""
    i = size
    hk[i] = key
    hm[i] = m
    hv[i] = ver
    while i > 0:
        p = (i - 1) // 2
        if not _heap_above(hk, hm, rank, i, p):
            break
        _heap_swap(hk, hm, hv, i, p)
        i = p
    return size + 1


@njit(cache=True)
def _heap_pop(hk, hm, hv, size, rank):  # type: ignore[no-untyped-def]
    """Remove the top entry (moved to index size-1); returns the new size."""
    last = size - 1
    _heap_swap(hk, hm, hv, 0, last)
    i = 0
    while True:
        left = 2 * i + 1
        if left >= last:
            break
        c = left
        if left + 1 < last and _heap_above(hk, hm, rank, left + 1, left):
            c = left + 1
        if not _heap_above(hk, hm, rank, c, i):
            break
        _heap_swap(hk, hm, hv, i, c)
        i = c
    return last


@njit(cache=True)
def _assign_max_power(  # type: ignore[no-untyped-def]
    dem, weight, volt, cap, mgun, reach, locked, usable, home, order, smax, assign, alloc,
):
    """Pass 2, for a short pool: every module goes where it delivers the most power.

    Loaded modules stay on their gun while it wants them. Guns at 0 V (pre-charge) are served
    first with one module each: they draw no power but need a module. Then modules go, in
    order of regret (a max-heap; a module whose two best guns filled up gets its regret anew
    when it comes up), to the hungry gun where they give the most power (within a relative
    tolerance), the lowest alloc/weight among equals, until the demands or the budget are met.
    """
    g_n = dem.shape[0]
    m_n = cap.shape[0]
    for k in range(m_n):
        m = order[k]
        h = home[m]
        if locked[m] and usable[m] and h >= 0 and _below(alloc[h], dem[h]):
            assign[m] = h
            alloc[h] += cap[m, h]
    for g in range(g_n):
        if volt[g] > 0.0 or dem[g] <= 0.0:
            continue
        for stage in range(3):  # own idle modules, unconnected ones, then other guns' idle ones
            for k in range(m_n):
                if alloc[g] > 0.0:  # one module: pre-charge needs a few amps, not the pool
                    break
                m = order[k]
                if assign[m] >= 0 or not usable[m] or locked[m] or not reach[m, g]:
                    continue
                if (stage == 0 and home[m] == g) or (stage == 1 and home[m] < 0) or (
                    stage == 2 and home[m] >= 0 and home[m] != g
                ):
                    assign[m] = g
                    alloc[g] += cap[m, g]
    power = 0.0
    for g in range(g_n):
        power += min(alloc[g], dem[g]) * volt[g]
    budget = smax * (1.0 - _MARGIN)
    hungry = np.zeros(g_n, dtype=np.bool_)
    hmask = np.zeros(g_n)
    for g in range(g_n):
        hungry[g] = volt[g] > 0.0 and _wants(alloc, dem, volt, g)
        hmask[g] = 1.0 if hungry[g] else 0.0
    # Power of module m on gun g; -1 where it cannot go (0 at 0 V: never chosen). Built
    # without branches (reach is unpredictable), then a loaded module's own gun is excluded.
    val = np.empty((m_n, g_n))
    for m in range(m_n):
        for g in range(g_n):
            val[m, g] = (cap[m, g] * volt[g] + 1.0) * reach[m, g] - 1.0
        if locked[m] and mgun[m] >= 0:
            val[m, mgun[m]] = -1.0
    rank = np.empty(m_n, dtype=np.int64)
    for k in range(m_n):
        rank[order[k]] = k
    cand = np.zeros(m_n, dtype=np.bool_)
    b1 = np.full(m_n, -1, dtype=np.int64)
    b2 = np.full(m_n, -1, dtype=np.int64)
    ver = np.zeros(m_n, dtype=np.int64)
    room = 2 * m_n + 2  # a pop precedes every push after the first fill: never more than M
    hk = np.empty(room)
    hm = np.empty(room, dtype=np.int64)
    hv = np.empty(room, dtype=np.int64)
    for sweep in range(2):  # idle modules first, then claims on loaded ones
        size = 0
        for m in range(m_n):
            cand[m] = assign[m] < 0 and usable[m] and (locked[m] == (sweep == 1))
            if cand[m]:
                b1[m], b2[m], r = _top2(m, val, hmask)
                ver[m] += 1
                if r >= 0.0:
                    size = _heap_push(hk, hm, hv, size, rank, r, m, ver[m])
        while power < budget and size > 0:
            size = _heap_pop(hk, hm, hv, size, rank)
            m = hm[size]
            if not cand[m] or hv[size] != ver[m]:
                continue  # stale entry
            if not hungry[b1[m]] or (b2[m] >= 0 and not hungry[b2[m]]):
                # One of its two best guns filled up since: new regret, back in the heap.
                # (Updated lazily, when it comes up, rather than for every module at once.)
                b1[m], b2[m], r = _top2(m, val, hmask)
                ver[m] += 1
                if r >= 0.0:
                    size = _heap_push(hk, hm, hv, size, rank, r, m, ver[m])
                continue
            best = b1[m]
            vmax = val[m, best]
            if b2[m] >= 0 and val[m, b2[m]] >= vmax * (1.0 - 1e-6):
                # Several guns get the same power from it: the fairest of them.
                best_key = np.inf
                for g in range(g_n):
                    if not hungry[g] or val[m, g] < vmax * (1.0 - 1e-6):
                        continue
                    key = alloc[g] / weight[g]
                    if key < best_key or (key == best_key and g == mgun[m]):
                        best_key = key
                        best = g
            before = min(alloc[best], dem[best])
            assign[m] = best
            cand[m] = False
            alloc[best] += cap[m, best]
            power += (min(alloc[best], dem[best]) - before) * volt[best]
            if not _wants(alloc, dem, volt, best):
                hungry[best] = False
                hmask[best] = 0.0



jit_cache.leave(_PREVIOUS_CACHE_DIR)
