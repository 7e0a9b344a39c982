"""Pass 3 of the allocator kernel: chains of module moves towards the hungry guns.

Plain Python over numpy, compiled by numba, like power/alloc_assign.py (passes 1 and 2); the
same source runs interpreted as the reference (power/alloc_reference.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from power import jit_cache

_PREVIOUS_CACHE_DIR = jit_cache.enter()

from power.alloc_assign import _MARGIN, _achieved, _below  # noqa: E402


@njit(cache=True)
def _path_gain(a, u, par_gun, par_mod, cap, alloc, dem, volt):  # type: ignore[no-untyped-def]
    """Power gained by the chain ending at gun ``a``: ``a`` takes the free module ``u`` (none
    if -1) and passes its module ``par_mod[a]`` on to ``par_gun[a]``, and so on up to a hungry
    gun. The guns of a chain are distinct (a path in the search tree)."""
    gain = 0.0
    g = a
    inc = cap[u, a] if u >= 0 else 0.0
    while True:
        x = par_gun[g]
        out = cap[par_mod[g], g] if x >= 0 else 0.0
        gain += volt[g] * (min(alloc[g] + inc - out, dem[g]) - min(alloc[g], dem[g]))
        if x < 0:
            return gain
        inc = cap[par_mod[g], x]
        g = x


@njit(cache=True)
def _descends(x, a, par_gun):  # type: ignore[no-untyped-def]
    """True when gun x lies on the chain below gun a (a is x or one of its parents)."""
    g = x
    while g >= 0:
        if g == a:
            return True
        g = par_gun[g]
    return False


@njit(cache=True)
def _augment(  # type: ignore[no-untyped-def]
    dem, volt, cap, reach, locked, usable, home, order, smax, assign, alloc
):
    """Pass 3: move idle modules along chains towards hungry guns while that adds power.

    Passes 1 and 2 place modules one by one and do not look ahead at ``reach``: they can give
    a gun a module that only another gun could also use, while modules that only the first
    gun reaches stay idle (Hypothesis seed 125: 2 guns x 24 modules, 62 kW short of both the
    whole-module and the fractional optimum, which are equal there). This pass searches the
    guns from the hungry ones (below demand, above 0 V): gun ``x`` may take an idle module of
    a gun ``a`` that reaches it; ``a`` then takes a free module, gives from its surplus, or
    takes one from a further gun. Each gun keeps the link (module, gun fed) that promises the
    most (power gained up the chain less what it loses), without closing a loop. Of the chains
    found, the one adding the most power (capped at the station budget, exactly evaluated) is
    applied; repeated until none adds power. Loaded modules never move here, guns at 0 V are
    left alone, hungry guns only receive. Modules that stay on their own gun anyway (the
    surplus kept connected) are first counted there: the realised result is the same.
    Returns the number of chains applied.
    """
    g_n = dem.shape[0]
    m_n = cap.shape[0]
    for m in range(m_n):
        if assign[m] < 0 and usable[m] and home[m] >= 0:
            assign[m] = home[m]
            alloc[home[m]] += cap[m, home[m]]
    budget = smax * (1.0 - _MARGIN)
    par_gun = np.empty(g_n, dtype=np.int64)  # -2 not reached, -1 hungry root, else gun fed
    par_mod = np.empty(g_n, dtype=np.int64)  # the module this gun passes on to par_gun
    queue = np.empty(g_n, dtype=np.int64)
    free_u = np.empty(g_n, dtype=np.int64)  # strongest free module reaching the gun
    up = np.zeros(g_n)  # power gained above the gun on its chain (guide for the search)
    best_key = np.zeros(g_n)  # up less the gun's own loss when it gets nothing back
    movable = np.empty(m_n, dtype=np.int64)
    free = np.empty(m_n, dtype=np.int64)
    for _it in range(m_n + g_n):
        power = _achieved(alloc, dem, volt)
        if power >= budget:
            return _it
        n_q = 0
        for g in range(g_n):
            par_gun[g] = -2
            free_u[g] = -1
            if volt[g] > 0.0 and _below(alloc[g], dem[g]):
                par_gun[g] = -1
                up[g] = 0.0
                queue[n_q] = g
                n_q += 1
        if n_q == 0:
            return _it
        # The modules that may move (idle, on a gun that is not hungry) and the free ones,
        # strongest first: usually few, so the search below scans short lists.
        n_mov = 0
        n_free = 0
        for k in range(m_n):
            m = order[k]
            a = assign[m]
            if locked[m]:
                continue
            if a >= 0 and volt[a] > 0.0 and par_gun[a] != -1:
                movable[n_mov] = m
                n_mov += 1
            elif a < 0 and usable[m]:
                free[n_free] = m
                n_free += 1
        head = 0
        while head < n_q:
            x = queue[head]
            head += 1
            out_x = cap[par_mod[x], x] if par_gun[x] >= 0 else 0.0
            have_x = min(alloc[x], dem[x])
            for k in range(n_mov):
                m = movable[k]
                a = assign[m]
                if a == x or not reach[m, x]:
                    continue
                # gain above a if it passes m to x, less what a loses if it gets nothing back
                u_a = up[x] + volt[x] * (min(alloc[x] + cap[m, x] - out_x, dem[x]) - have_x)
                key = u_a - volt[a] * (
                    min(alloc[a], dem[a]) - min(alloc[a] - cap[m, a], dem[a])
                )
                if par_gun[a] == -2:
                    queue[n_q] = a
                    n_q += 1
                elif key <= best_key[a] or _descends(x, a, par_gun):
                    continue
                par_gun[a] = x
                par_mod[a] = m
                up[a] = u_a
                best_key[a] = key
        for k in range(n_free):
            m = free[k]
            for i in range(n_q):
                a = queue[i]
                if reach[m, a] and (free_u[a] < 0 or cap[m, a] > cap[free_u[a], a]):
                    free_u[a] = m
        best_gain = 1e-9 * max(power, 1.0)
        best_a = -1
        best_u = -1
        for i in range(n_q):
            a = queue[i]
            for pick in range(2):  # a takes a free module; or a gives without one
                u = free_u[a] if pick == 0 else -1
                if (pick == 0 and u < 0) or (pick == 1 and par_gun[a] < 0):
                    continue
                gain = min(power + _path_gain(a, u, par_gun, par_mod, cap, alloc, dem, volt),
                           budget) - power
                if gain > best_gain:
                    best_gain = gain
                    best_a = a
                    best_u = u
        if best_a < 0:
            return _it
        if best_u >= 0:
            assign[best_u] = best_a
            alloc[best_a] += cap[best_u, best_a]
        g = best_a
        while par_gun[g] >= 0:
            m = par_mod[g]
            x = par_gun[g]
            assign[m] = x
            alloc[g] -= cap[m, g]
            alloc[x] += cap[m, x]
            g = x
    return m_n + g_n


jit_cache.leave(_PREVIOUS_CACHE_DIR)
