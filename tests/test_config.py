"""Station configuration: the example file, error messages, environment overrides, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cycle_fixtures import config_data

from controller.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "mwc.example.toml"


def test_example_file_loads_with_documented_defaults() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert cfg.station.cycle_ms == 100 and cfg.station.ramp_a_per_s == 1000
    assert cfg.station.switch_threshold_a == 5.0
    assert len(cfg.guns) == 2 and cfg.guns[0].connector == "MCS"
    assert cfg.reach_matrix() == [[True, True]] * 48  # default: every module reaches every gun
    hw = cfg.hardware_config()
    assert len(hw.modules) == 48 and hw.modules[1].port == 15021
    assert hw.matrix.port == 15068 and [m.unit for m in hw.meters] == [1, 2]


def test_every_key_of_the_model_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    from controller.config import (
        GunConfig,
        HardwareLayout,
        MatrixConfig,
        ModulesConfig,
        StationSection,
    )

    for model in (StationSection, GunConfig, ModulesConfig, MatrixConfig, HardwareLayout):
        for name in model.model_fields:
            assert f"{name} =" in text, f"{model.__name__}.{name} missing from the example"


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"station": {"max_kw": "lots"}}, "station.max_kw = 'lots': expected a valid number"),
        ({"station": {"cycle_ms": 5}}, "station.cycle_ms = 5: expected a value greater"),
        ({"guns": [{"cable_rating_a": 1500, "max_voltage_v": 900, "connector": "GB/T"}]},
         "guns[0].connector = 'GB/T': expected 'MCS' or 'CCS'"),
        ({"modules": {"count": 4, "colour": "red"}}, "modules.colour: unknown key"),
        ({"matrix": {"reach": [[0, 5]] * 8}}, "matrix.reach[0] = [0, 5]"),
    ],
)
def test_bad_values_name_key_value_and_expectation(patch: dict[str, object], needle: str) -> None:
    data = config_data()
    for section, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert needle in str(err.value), str(err.value)


def test_missing_key_is_named() -> None:
    data = config_data()
    del data["station"]["max_kw"]
    with pytest.raises(ConfigError, match=r"station.max_kw: missing"):
        parse_config(data)


def test_environment_overrides_nested_and_list_keys() -> None:
    env = {"MWC__STATION__MAX_KW": "1200", "MWC__GUNS__1__CABLE_RATING_A": "1000",
           "MWC__HARDWARE__HOST": "10.0.0.20", "MWC__STATION__FREE_CHARGING": "false",
           "OTHER": "ignored"}
    cfg = load_config(EXAMPLE, env=env)
    assert cfg.station.max_kw == 1200 and cfg.guns[1].cable_rating_a == 1000
    assert cfg.hardware.host == "10.0.0.20" and cfg.station.free_charging is False
    with pytest.raises(ConfigError, match="MWC__GUNS__7__CABLE_RATING_A"):
        load_config(EXAMPLE, env={"MWC__GUNS__7__CABLE_RATING_A": "1"})
    with pytest.raises(ConfigError, match=r"station\.max_kw = 'abc'"):
        load_config(EXAMPLE, env={"MWC__STATION__MAX_KW": "abc"})


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[station\nid = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_cli_run_reports_config_mistakes_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("max_kw = 1440.0", "max_kw = -3"))
    out = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert "station.max_kw = -3: expected a value greater than 0" in out.stderr
    assert "Traceback" not in out.stderr


def test_vehicle_addresses_explicit_or_from_the_layout() -> None:
    """[[guns]].vehicle wins; hardware.vehicles derives the simulator's SECC layout
    (port + M + 3, unit g + 1); neither: no vehicle integration; gateway: refused."""
    data = config_data(modules=8)
    assert [parse_config(data).vehicle_endpoint(g) for g in range(2)] == [None, None]
    data["hardware"] = {"port": 16000, "vehicles": True}
    data["guns"][1]["vehicle"] = {"host": "10.0.0.9", "port": 502, "unit": 7}
    cfg = parse_config(data)
    first, second = cfg.vehicle_endpoint(0), cfg.vehicle_endpoint(1)
    assert first is not None and (first.host, first.port, first.unit) == ("127.0.0.1", 16011, 1)
    assert second is not None and (second.host, second.port, second.unit) == ("10.0.0.9", 502, 7)
    data["hardware"]["layout"] = "gateway"
    with pytest.raises(ConfigError, match=r"hardware\.vehicles"):
        parse_config(data)
