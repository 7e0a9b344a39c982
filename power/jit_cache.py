"""Where numba caches the allocator kernel: a directory named after the kernel's sources.

Numba invalidates a cached function only when its own source file changes, not when a
jitted function it calls (from another module) does; an upgraded or edited kernel could then
run stale machine code. Caching under a hash of every kernel source rules that out. The base
directory is ``NUMBA_CACHE_DIR`` when set (systemd's CacheDirectory on a cabinet), else a
``numba`` folder in the package's ``__pycache__`` when writable, else the temp directory, so
that ``cache=True`` never fails at import on a read-only install.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numba
from numba.core import config as _numba_config

config: Any = _numba_config  # numba's config module is untyped

_HERE = Path(__file__).resolve().parent
KERNEL_SOURCES = (_HERE / "alloc_kernel.py", _HERE / "alloc_assign.py")


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
