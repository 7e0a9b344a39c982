"""The allocator kernel as plain Python, loaded next to the numba one in the same process.

``power/alloc_kernel.py``, ``power/alloc_assign.py`` and ``power/alloc_augment.py`` are
written so that the very same source runs interpreted when numba's JIT is disabled. This
module executes the sources a second time under private module names with ``DISABLE_JIT``
switched on for the duration of the import, so the process holds both: the reference (usable
at once, slower) and the dispatcher (fast once compiled or loaded from the cache).
``power.allocator`` runs the first cycles on the reference while the kernel compiles in
another process, then switches.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from numba.core import config as _numba_config

_config: Any = _numba_config
_HERE = Path(__file__).resolve().parent
_lock = threading.Lock()
_loaded: ModuleType | None = None


def _exec(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def reference_kernel() -> Any:
    """The pure-Python ``allocate_kernel`` (same arguments, same results, element by element)."""
    global _loaded
    with _lock:
        if _loaded is None:
            import power.alloc_augment  # noqa: F401  (the jitted ones stay in sys.modules)

            saved = {n: sys.modules[n] for n in ("power.alloc_assign", "power.alloc_augment")}
            previous = _config.DISABLE_JIT
            _config.DISABLE_JIT = True
            try:
                assign = _exec("power._reference_alloc_assign", _HERE / "alloc_assign.py")
                sys.modules["power.alloc_assign"] = assign  # what the others import from
                augment = _exec("power._reference_alloc_augment", _HERE / "alloc_augment.py")
                sys.modules["power.alloc_augment"] = augment
                _loaded = _exec("power._reference_alloc_kernel", _HERE / "alloc_kernel.py")
            finally:
                sys.modules.update(saved)
                _config.DISABLE_JIT = previous
        return _loaded.allocate_kernel
