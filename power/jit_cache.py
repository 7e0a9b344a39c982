"""Where numba caches the allocator kernel: a directory named after the kernel's sources.

Numba invalidates a cached function only when its own source file changes, not when a
jitted function it calls (from another module) does; an upgraded or edited kernel could then
run stale machine code. Caching under a hash of every kernel source rules that out. The base
directory is ``NUMBA_CACHE_DIR`` when set (systemd's CacheDirectory on a cabinet), else a
``numba`` folder in the package's ``__pycache__`` when writable, else the temp directory, so
that ``cache=True`` never fails at import on a read-only install.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numba
from numba.core import config as _numba_config

config: Any = _numba_config  # numba's config module is untyped

_HERE = Path(__file__).resolve().parent
KERNEL_SOURCES = (
    _HERE / "alloc_kernel.py", _HERE / "alloc_assign.py", _HERE / "alloc_augment.py"
)


def source_tag(files: Iterable[Path]) -> str:
    """Short hash of the files' contents and the numba version."""
    h = hashlib.sha256(numba.__version__.encode())
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def base_dir() -> Path:
    configured = config.CACHE_DIR or os.environ.get("NUMBA_CACHE_DIR", "")
    if configured:
        return Path(configured)
    in_tree = _HERE / "__pycache__" / "numba"
    if _writable(in_tree):
        return in_tree
    return Path(tempfile.gettempdir()) / "mwcharge-numba"


def enter() -> str:
    """Point numba's cache at the kernel's own directory; returns the setting to restore."""
    previous: str = config.CACHE_DIR
    if previous.endswith(os.sep + "allocator-" + source_tag(KERNEL_SOURCES)):
        return previous  # nested: already scoped
    scoped = base_dir() / f"allocator-{source_tag(KERNEL_SOURCES)}"
    scoped.mkdir(parents=True, exist_ok=True)
    config.CACHE_DIR = str(scoped)
    return previous


def leave(previous: str) -> None:
    """Restore numba's cache setting (the kernels keep the directory they were given)."""
    config.CACHE_DIR = previous


def kernel_cached() -> bool:
    """True when the cache directory holds ``allocate_kernel`` for this Python (warm start)."""
    scoped = base_dir() / f"allocator-{source_tag(KERNEL_SOURCES)}"
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return scoped.is_dir() and any(scoped.rglob(f"alloc_kernel.allocate_kernel-*.{tag}.nbi"))


async def compile_elsewhere(timeout_s: float = 300.0) -> int:
    """Compile the kernel into the cache in a separate process (``python -m
    power.jit_cache``), so this process's event loop keeps its cycle meanwhile; returns the
    exit code (-1 on timeout)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(base_dir())}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "power.jit_cache", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        return await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise


if __name__ == "__main__":  # the compile of compile_elsewhere
    import importlib

    importlib.import_module("power.allocator").warm_up()
