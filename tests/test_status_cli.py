"""`mwc status` reads a running live view (a real station on the Modbus simulators)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from cycle_fixtures import config_data, rig, small_truck
from helpers import closed_port

from controller.config import WebviewConfig
from controller.status_cli import render_table
from controller.webview import LiveView


async def mwc(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_once_json_and_table_show_the_running_station() -> None:
    async with rig([small_truck("A", target_soc_pct=95.0), small_truck("B")]) as r:
        view = LiveView(r.station, WebviewConfig(enabled=True, port=0))
        await view.start()
        r.trucks[0].plug_in()
        try:
            await r.until(lambda rec: rec.guns[0].state == "Charging"
                          and rec.guns[0].current_a > 50)
            code, out, err = await mwc("status", "--url", view.url, "--once", "--json")
            assert code == 0, err
            snap = json.loads(out)
            code2, table, err2 = await mwc("status", "--url", view.url, "--once")
            assert code2 == 0, err2
        finally:
            await view.close()
    assert snap["guns"][0]["state"] == "Charging" and snap["guns"][0]["n"] == 1
    assert snap["guns"][0]["current_a"] > 50
    assert len(snap["modules"]) == 8
    assert "Charging" in table and "binding" in table and "TEST-1" in table
    assert render_table(snap).splitlines()[0].startswith("TEST-1")


async def test_unreachable_view_and_disabled_config_give_clear_errors(tmp_path: Path) -> None:
    with closed_port() as port:  # nothing listens, nothing can start to
        code, _out, err = await mwc("status", "--url", f"http://127.0.0.1:{port}", "--once")
    assert code == 1 and "not readable" in err and "[webview]" in err

    data = config_data()
    path = tmp_path / "station.toml"
    path.write_text(
        "[station]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in data["station"].items())
        + "".join("[[guns]]\ncable_rating_a = 1500.0\nmax_voltage_v = 1000.0\n"
                  for _ in data["guns"])
        + "[modules]\ncount = 8\n")
    code, _out, err = await mwc("status", "--config", str(path), "--once")
    assert code != 0 and "webview.enabled" in err
    code, _out, err = await mwc("status", "--config", str(path), "--once", "--interval", "0")
    assert code == 2 and "--interval" in err


def test_table_before_the_first_cycle() -> None:
    assert "not completed a cycle" in render_table(None)
