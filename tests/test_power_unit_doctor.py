"""`mwc doctor` and `mwc sim modules` in the power-unit layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from controller import doctor
from sim.physics import StationPhysics
from sim.power_unit import PowerUnitSimulator

ROOT = Path(__file__).resolve().parents[1]


def _toml(sim: PowerUnitSimulator, modules: int) -> str:
    return (
        '[station]\nid = "PU-DOC"\nmax_kw = 600.0\nfallback_grid_kw = 600.0\n'
        + '[[guns]]\ncable_rating_a = 1500.0\nmax_voltage_v = 1000.0\n' * 2
        + f"[modules]\ncount = {modules}\n"
        + f'[hardware]\nlayout = "power_unit"\nhost = "127.0.0.1"\nport = {sim.unit_port}\n')


async def test_doctor_checks_the_unit_its_modules_and_matrix(tmp_path: Path) -> None:
    sim = PowerUnitSimulator(StationPhysics(8, 2), realtime=True)
    await sim.start()
    try:
        cfg = tmp_path / "mwc.toml"
        text = _toml(sim, 8).replace(
            "max_voltage_v = 1000.0\n",
            f"max_voltage_v = 1000.0\nmeter = {{ host = \"127.0.0.1\", port = "
            f"{sim.ports.meters}, unit = UNIT }}\n")
        text = text.replace("UNIT", "1", 1).replace("UNIT", "2", 1)
        cfg.write_text(text)
        report = await doctor.diagnose(cfg, timeout_s=10.0)
        rows = {r.name.split(" (")[0]: r for r in report.rows}
        assert rows["power unit"].status == "PASS", rows["power unit"]
        assert "8 modules × 2 guns" in rows["power unit"].detail
        assert not any(name.startswith("module ") for name in rows)  # one device, one row
        assert rows["meter gun 1"].status == "PASS"
        sim.physics.inject_module_fault(3, 4)
        sim.physics.set_welded(5, 1)
        report = await doctor.diagnose(cfg, timeout_s=10.0)
        row = next(r for r in report.rows if r.name.startswith("power unit"))
        assert row.status == "FAIL"
        assert "module 4: fault code 4" in row.detail and "module 6 → gun 2" in row.detail
    finally:
        await sim.stop()


def test_sim_cli_serves_the_power_unit_layout() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.cli", "modules", "--layout", "power_unit", "--count", "4",
         "--port", "0", "--trucks", "eactros600"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        layout = json.loads(proc.stdout.readline())
        assert layout["layout"] == "power_unit"
        assert layout["power_unit"]["modules"] == 4 and layout["power_unit"]["port"] > 0
        assert layout["secc"]["units"] == [1, 2]
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run(
        [sys.executable, "-m", "sim.cli", "modules", "--layout", "power_unit",
         "--gateway-port", "1502", "--port", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "--gateway-port does not apply" in bad.stderr
