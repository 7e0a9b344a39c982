"""deploy/systemd/: the units parse with systemd's own parser (when installed), their
ExecStart command lines with the real `mwc` argument parser, and the controller unit has the
settings the watchdog, the sandbox and the numba cache need."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "deploy" / "systemd"
EXAMPLE = ROOT / "deploy" / "mwc.example.toml"
MWC = "/opt/mwcharge/venv/bin/mwc"  # where docs/install.md puts the program


# ---------------------------------------------------------------------------- systemd
def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section → key → values (repeated keys keep every value)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}:{n}: keep settings on one line"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}:{n}: not a setting: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


UNIT_FILES = sorted(UNITS.glob("*.service"))


@pytest.mark.parametrize("unit", UNIT_FILES, ids=lambda p: p.name)
def test_unit_exec_start_parses_with_mwc(unit: Path) -> None:
    assert {p.name for p in UNIT_FILES} >= {"mwc-controller.service", "mwc-csms.service",
                                            "mwc-sim-modules.service", "mwc-sim-grid.service"}
    svc = parse_unit(unit)["Service"]
    (cmd,) = svc["ExecStart"]
    argv = shlex.split(cmd)
    assert argv[0] == MWC
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{unit.name}: `mwc` rejects ExecStart={cmd}")
    assert callable(getattr(args, "handler", None)), f"{cmd}: no sub-command handler"
    assert svc["Restart"] == ["always"] and svc.get("CapabilityBoundingSet") == [""]
    assert "MemoryDenyWriteExecute" not in svc  # `mwc` may load numba, which JIT-compiles
    assert args.log_format == "json"  # one JSON object per journal line


def test_controller_unit_settings() -> None:
    unit = parse_unit(UNITS / "mwc-controller.service")
    svc = unit["Service"]

    def one(key: str) -> str:
        assert key in svc, f"mwc-controller.service: {key}= missing"
        (value,) = svc[key]
        return value

    args = build_parser().parse_args(shlex.split(one("ExecStart"))[1:])
    assert (args.command, args.log_format) == ("run", "json")
    required = {"Type": "notify", "NotifyAccess": "main", "Restart": "always", "User": "mwc",
                "Group": "mwc", "ProtectSystem": "strict", "CapabilityBoundingSet": "",
                "AmbientCapabilities": "", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6"}
    required |= dict.fromkeys(("NoNewPrivileges", "PrivateTmp", "ProtectHome",
                               "ProtectKernelTunables", "ProtectKernelModules",
                               "ProtectKernelLogs", "ProtectControlGroups"), "yes")
    assert {k: one(k) for k in required} == required
    assert one("WatchdogSec") == "2s" and int(one("TimeoutStartSec").removesuffix("s")) >= 60
    assert 0 < int(one("RestartSec").removesuffix("s")) <= 10
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]  # never give up
    assert "MemoryDenyWriteExecute" not in svc
    assert svc["SystemCallFilter"][0] == "@system-service"
    assert int(one("LimitNOFILE")) >= 1024
    env = dict(e.split("=", 1) for e in svc["Environment"])
    state, cache, conf = one("StateDirectory"), one("CacheDirectory"), one("ConfigurationDirectory")
    assert env["NUMBA_CACHE_DIR"].startswith(f"/var/cache/{cache}/")
    assert args.config == f"/etc/{conf}/mwc.toml"
    assert one("WorkingDirectory") == f"/var/lib/{state}"
    path = Path(f"/var/lib/{state}/ocpp.sqlite3")
    assert f'database = "{path}"' in EXAMPLE.read_text()  # the example's OCPP database


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_units_verify_with_systemd(tmp_path: Path) -> None:
    """systemd's own parser: unknown keys, bad values and a missing ExecStart binary are
    reported (the install path is swapped for this checkout's `mwc`)."""
    assert SYSTEMD_ANALYZE is not None
    mwc = Path(sys.executable).parent / "mwc"
    assert mwc.exists()
    for unit in UNIT_FILES:
        (tmp_path / unit.name).write_text(unit.read_text().replace(MWC, str(mwc)))
    files = [str(tmp_path / u.name) for u in UNIT_FILES]
    res = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *files], capture_output=True,
                         text=True, check=False, timeout=30)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr
    # the sandbox as systemd scores it (0 = locked down, 10 = fully exposed)
    res = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20",
                          str(tmp_path / "mwc-controller.service")], capture_output=True,
                         text=True, check=False, timeout=30)
    assert res.returncode == 0, res.stdout[-400:]
