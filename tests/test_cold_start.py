"""Start in under 2 s, cold or warm: the first cycles allocate on the pure-Python reference
while the numba kernel compiles in another process, then the station switches."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from alloc_instances import random_instance

from power import alloc_kernel, allocator, jit_cache
from power.alloc_reference import reference_kernel
from sim.layout import station_toml
from sim.modbus_server import StationSimulator
from sim.physics import StationPhysics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def on_reference() -> Iterator[None]:
    """The allocator back to "not started", restored to the compiled kernel afterwards."""
    saved = allocator._active, allocator._on_reference
    allocator._active, allocator._on_reference = None, False
    try:
        yield
    finally:
        allocator._active, allocator._on_reference = saved
        allocator.warm_up()


def _outs(m: int, g: int) -> tuple[np.ndarray, ...]:
    return (np.empty(m, dtype=np.int64), np.empty(m), np.empty(g), np.empty(g, dtype=np.int8))


def test_reference_is_element_equal_to_the_compiled_kernel() -> None:
    allocator.warm_up()
    ref = reference_kernel()
    assert ref is not alloc_kernel.allocate_kernel and not hasattr(ref, "py_func")
    rng = np.random.default_rng(17)
    for case in range(300):
        g = int(rng.integers(1, 5))
        m = int(rng.choice([1, 8, 48, 96, 130]))
        inst = random_instance(rng, g, m)
        args = [inst[name] for name in alloc_kernel.ARG_NAMES]
        a, b = _outs(m, g), _outs(m, g)
        code_ref = ref(*args, *a)
        code_jit = alloc_kernel.allocate_kernel(*args, *b)
        assert code_ref == code_jit, case
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"case {case}")


def test_allocate_runs_on_the_reference_until_the_switch(on_reference: None) -> None:
    allocator.use_reference()
    assert allocator.jit_source() == "reference"
    rng = np.random.default_rng(3)
    inst = random_instance(rng, 2, 48)
    first = allocator.allocate(**inst)
    assert allocator.jit_source() == "reference"  # allocate() did not compile in the cycle
    asyncio.run(allocator.prepare())
    assert allocator.jit_source() in ("cache", "compiled")
    second = allocator.allocate(**inst)
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="module_max_a"):
        allocator.allocate(**{**inst, "module_max_a": np.full(48, np.nan)})


async def test_cold_cache_controller_is_ready_on_the_reference_then_switches() -> None:
    """The real `mwc run` with an empty NUMBA_CACHE_DIR: READY (first cycle) comes on the
    reference while the compile runs in another process, which fills the cache; then the
    controller switches. The 2 s figure itself is bench/startup.py's (the suite shares the
    CPU); here the bound is generous but still far below a compile in the cycle's path."""
    sim = StationSimulator(StationPhysics(8, 2), realtime=True)
    await sim.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "mwc.toml"
            config.write_text(station_toml(sim.describe(), {
                "id": "COLD-1", "max_kw": 600.0, "fallback_grid_kw": 600.0}))
            cache = Path(tmp) / "numba"
            env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller.cli", "--log-format", "json", "run",
                "--config", str(config), cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            assert proc.stdout is not None
            ready: dict[str, object] | None = None
            switched: dict[str, object] | None = None
            try:
                async with asyncio.timeout(240):
                    while switched is None:
                        line = await proc.stdout.readline()
                        assert line, "controller exited early"
                        if not line.startswith(b"{"):
                            continue
                        rec = json.loads(line)
                        if rec.get("event") == "first cycle done: ready":
                            ready = rec
                        elif rec.get("event") == "allocator switched to the compiled kernel":
                            switched = rec
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    await proc.communicate()
            assert ready is not None
            assert ready["allocator_code"] == "reference" and ready["cold_cache"] is True
            assert float(ready["startup_s"]) < 10.0  # type: ignore[arg-type]
            assert switched["allocator_code"] == "compiled" or switched[
                "allocator_code"] == "cache"
            scoped = cache / f"allocator-{jit_cache.source_tag(jit_cache.KERNEL_SOURCES)}"
            assert any(scoped.rglob("alloc_kernel.allocate_kernel-*.nbi"))
    finally:
        await sim.stop()
