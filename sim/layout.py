"""A station configuration for a running simulator, written from its port layout.

``StationSimulator.describe()`` (or the JSON line ``mwc sim modules`` prints) says where every
simulated device listens; :func:`station_toml` turns that into the TOML ``mwc run`` reads:
one address per module, the matrix, each gun's meter and, when the simulator serves SECC
bridges, each gun's vehicle. Tests and benchmarks that run the real controller process use it,
so the layout is read in one place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _value(v: Any) -> str:
    """A TOML scalar (booleans, numbers, strings: the keys a station section holds)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def _addr(host: str, port: int, unit: int = 1) -> str:
    return f'{{ host = "{host}", port = {port}, unit = {unit} }}'


def station_toml(layout: Mapping[str, Any], station: Mapping[str, Any], *,
                 cable_rating_a: float = 1500.0, max_voltage_v: float = 1000.0,
                 sections: str = "") -> str:
    """``[station]`` with the ``station`` keys (id, max_kw, ... as given), one ``[[guns]]``
    per simulated meter (with its vehicle when the layout has ``secc``), ``[modules]`` and
    ``[matrix]`` at the simulator's addresses, then ``sections`` verbatim."""
    host = str(layout["host"])
    meters, secc = layout["meters"], layout.get("secc")
    lines = ["[station]", *(f"{k} = {_value(v)}" for k, v in station.items())]
    for g, unit in enumerate(meters["units"]):
        lines += ["[[guns]]", f"cable_rating_a = {cable_rating_a!r}",
                  f"max_voltage_v = {max_voltage_v!r}",
                  f"meter = {_addr(host, int(meters['port']), int(unit))}"]
        if secc is not None:
            lines.append(f"vehicle = {_addr(host, int(secc['port']), int(secc['units'][g]))}")
    ports = layout["modules"]["ports"]
    lines += ["[modules]", f"count = {len(ports)}",
              "addresses = [" + ", ".join(_addr(host, int(p)) for p in ports) + "]",
              "[matrix]", f"address = {_addr(host, int(layout['matrix']['port']))}"]
    return "\n".join(lines) + "\n" + sections
