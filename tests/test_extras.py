"""A cabinet PC installs only the controller: the backend's web stack, the demo's plotting and
the simulators' extras are optional (pyproject extras ``csms``, ``sim``, ``dev``)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Import names of the optional extras' packages (csms and sim).
OPTIONAL = ("fastapi", "uvicorn", "psycopg", "fastjsonschema", "fastapi_offline", "matplotlib")

_PROBE = r"""
import importlib, importlib.abc, pkgutil, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())
import controller, power
failed = []
for pkg in (controller, power):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        try:
            importlib.import_module(mod.name)
        except ModuleNotFoundError as exc:
            failed.append(f"{mod.name}: {exc}")
assert not failed, failed
from controller.cli import build_parser
parser = build_parser()
print(parser.format_help())
"""


def test_the_controller_imports_and_mwc_runs_without_the_optional_extras() -> None:
    code = f"BLOCKED = {OPTIONAL!r}\n{_PROBE}"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300,
                         env={"NUMBA_CACHE_DIR": str(ROOT / ".cache/numba"), "PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "run" in out.stdout and "doctor" in out.stdout
    # the backend's and the simulators' commands import their extras only when they run
    assert "csms" in out.stdout and "demo" in out.stdout


def test_the_core_dependencies_leave_the_extras_out() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).replace("-", "_")
    for name in (*OPTIONAL, "pydantic_settings"):
        assert name not in core, name
    extras = project["optional-dependencies"]
    assert {"csms", "sim", "dev"} <= set(extras)
    assert any(d.startswith("mwcharge[") and "csms" in d and "sim" in d for d in extras["dev"])
