"""Telemetry, events and the retained status over a real Mosquitto."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.mqtt import MqttConfig, MqttConnection
from controller.records import CycleRecord, GunRecord, ModuleRecord
from controller.telemetry import TelemetryPublisher
from tests.mqtt_fixtures import Listener, broker, eventually, needs_mosquitto, station_config, tasks

pytestmark = [needs_mosquitto, pytest.mark.timeout(60)]

STATUS = "mwc/ST1/status"
TELEMETRY = "mwc/ST1/telemetry"
EVENTS = "mwc/ST1/events"


def record(seq: int) -> CycleRecord:
    guns = (
        GunRecord(0, "Charging", 1200.0, 750.0, 900_000.0, 1210.0, "EV", "ev:request",
                  (0, 1, 2), soc_pct=41.5, energy_wh=12_345.0),
        GunRecord(1, "Available", 0.0, math.nan, 0.0, 0.0, "NONE", "", ()),
    )
    modules = (
        ModuleRecord(0, 0, 100.0, 100.0, 100.0, 25.0, 31.0, 55.0, True),
        ModuleRecord(3, -1, 0.0, 0.0, 0.0, 25.0, 26.0, 90.0, False, "over temperature"),
    )
    return CycleRecord(seq=seq, t=100.0 + seq * 0.1, wall_time="2026-11-27T17:00:00.000Z",
                       station_power_w=900_000.0, station_cap_w=960_000.0,
                       cap_source="grid:ems:peak-17h", guns=guns, modules=modules,
                       work_ms=1.234)


async def _feed(tp: TelemetryPublisher, period: float = 0.01) -> None:
    seq = 0
    while True:
        seq += 1
        tp.offer_record(record(seq))
        await asyncio.sleep(period)  # a producer's pace, faster than the telemetry period


async def test_telemetry_content_and_cadence(tmp_path: Path) -> None:
    with broker(tmp_path / "mq") as b:
        conn = MqttConnection(station_config(b, telemetry_period_s=0.1), "ST1")
        tp = TelemetryPublisher(conn)
        async with Listener(b, TELEMETRY) as ems, tasks(conn.run(), tp.run(), _feed(tp)):
            await eventually(lambda: len(ems.json(TELEMETRY)) >= 16)
        times = [t for topic, _, _, t in ems.messages if topic == TELEMETRY]
        gaps = [b - a for a, b in itertools.pairwise(times[2:])]
        mean = sum(gaps) / len(gaps)
        assert 0.08 < mean < 0.13, gaps  # the period, without drift or bursts
        assert max(gaps) < 0.4, gaps
        msg = ems.json(TELEMETRY)[-1]
        assert msg["station"] == {"power_w": 900_000.0, "cap_w": 960_000.0,
                                  "cap_source": "grid:ems:peak-17h", "work_ms": 1.23,
                                  "overrun": False, "violations": []}
        g0, g1 = msg["guns"]
        assert g0 == {"gun": 0, "state": "Charging", "current_a": 1200.0, "voltage_v": 750.0,
                      "power_w": 900_000.0, "setpoint_a": 1210.0, "binding": "EV",
                      "binding_source": "ev:request", "modules": [0, 1, 2], "soc_pct": 41.5,
                      "energy_wh": 12_345.0}
        assert g1["voltage_v"] is None and g1["soc_pct"] is None  # NaN / unknown → null
        assert msg["modules"][0]["status"] == "ok"
        assert msg["modules"][1] == {"module": 3, "gun": -1, "current_a": 0.0,
                                     "setpoint_a": 0.0, "available_a": 0.0, "inlet_c": 25.0,
                                     "outlet_c": 26.0, "internal_c": 90.0,
                                     "status": "over temperature"}
        seqs = [m["seq"] for m in ems.json(TELEMETRY)]
        assert seqs == sorted(seqs)  # the latest record each period, never an old one again


async def test_cycle_side_never_blocks_and_telemetry_drops_are_counted(tmp_path: Path) -> None:
    with broker(tmp_path / "mq") as b:
        conn = MqttConnection(station_config(b, telemetry_queue=3, event_queue=10_000), "ST1")
        tp = TelemetryPublisher(conn)
        # broker connection not started: nothing can be published
        start = time.perf_counter()
        for i in range(1, 10_001):
            tp.offer_record(record(i))
            if i % 1000 == 0:
                tp.sample()
            if i % 100 == 0:
                tp.event("session_started", gun=i % 2, n=i)
        elapsed = time.perf_counter() - start
        assert elapsed < 0.5  # 10 000 records + 100 events: far below a cycle's budget
        assert tp.stats()["telemetry_dropped"] == 7 and tp.stats()["telemetry_queued"] == 3
        assert tp.stats()["events_queued"] == 100
        async with Listener(b, EVENTS) as ems, tasks(conn.run(), tp.run()):
            got = await eventually(lambda: len(ems.json(EVENTS)) == 100 and ems.json(EVENTS))
        assert [e["n"] for e in got] == list(range(100, 10_001, 100))  # all, in order
        assert all(e["kind"] == "session_started" for e in got)
        assert tp.events_overflow == 0


async def test_event_overflow_is_logged_not_blocking(tmp_path: Path) -> None:
    with broker(tmp_path / "mq") as b:
        tp = TelemetryPublisher(MqttConnection(station_config(b, event_queue=5), "ST1"))
        for i in range(8):
            tp.event("fault", gun=0, code=i, value=math.inf)
        assert tp.stats()["events_queued"] == 5 and tp.events_overflow == 3


def test_station_observer_maps_cycles_sessions_and_faults() -> None:
    from dataclasses import replace

    from controller.session import GunState, SessionEvent

    tp = TelemetryPublisher(MqttConnection(station_config_plain(), "ST1"))

    @dataclass(frozen=True)
    class Cycle:
        record: CycleRecord
        kind: str = "cycle"

    tp.observe(Cycle(record(7)))
    tp.observe(Cycle(replace(record(8), violations=("module_current: module 3",))))
    tp.observe(SessionEvent("charging_started", 0, 1.0, GunState.CHARGING, id_token="TRUCK-A"))
    tp.observe(SessionEvent("charging_stopped", 0, 2.0, GunState.FINISHING,
                            reason="EVDisconnected", energy_wh=1234.5))
    tp.observe(SessionEvent("state_changed", 1, 3.0, GunState.FAULTED, GunState.CHARGING,
                            reason="emergency stop"))
    tp.observe(object())  # anything else is ignored
    events = [json.loads(p) for p in tp._events]
    assert [e["kind"] for e in events] == ["safety_violation", "session_started",
                                           "session_stopped", "gun_state", "fault"]
    assert events[1]["gun"] == 0 and events[1]["id_token"] == "TRUCK-A"
    assert events[2]["reason"] == "EVDisconnected" and events[2]["energy_wh"] == 1234.5
    assert events[3]["state"] == "Faulted" and events[3]["previous"] == "Charging"
    assert events[4] == {**events[4], "gun": 1, "reason": "emergency stop"}
    tp.sample()
    assert json.loads(tp._telemetry[-1])["seq"] == 8


def station_config_plain() -> MqttConfig:
    return MqttConfig(port=1)  # never connected


STATION_SCRIPT = """
import asyncio, json, sys
from controller import logs
from controller.mqtt import MqttConfig, MqttConnection
logs.configure(stream=sys.stderr)
cfg = MqttConfig.model_validate_json(sys.argv[1])
async def main():
    conn = MqttConnection(cfg, "ST1", version="1.2.3")
    task = asyncio.create_task(conn.run())
    await conn.wait_connected()
    print("connected", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
asyncio.run(main())
"""


def _station(cfg_json: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", STATION_SCRIPT, cfg_json],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            cwd=Path(__file__).parent.parent, env={**os.environ})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "connected"
    return proc


async def _retained_status(b: object) -> dict[str, object]:
    async with Listener(b, STATUS) as fresh:  # type: ignore[arg-type]
        got = await eventually(lambda: fresh.messages)
    _topic, payload, retained, _ = got[0]
    assert retained
    return dict(json.loads(payload))


async def test_retained_status_and_last_will(tmp_path: Path) -> None:
    with broker(tmp_path / "mq") as b:
        cfg_json = station_config(b, keepalive_s=2).model_dump_json()
        proc = _station(cfg_json)
        try:
            online = await _retained_status(b)
            assert online["state"] == "online" and online["version"] == "1.2.3"
            assert str(online["since"]).endswith("Z")
            proc.send_signal(signal.SIGKILL)  # no clean disconnect: the broker sends the will
            proc.wait(timeout=5)
            will = await eventually(lambda: _is_offline(b), timeout=5)
            assert will["reason"] == "connection lost" and will["version"] == "1.2.3"
        finally:
            proc.kill()
            proc.wait()
        proc = _station(cfg_json)  # back online, then a clean stop
        try:
            assert (await _retained_status(b))["state"] == "online"
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            assert proc.wait(timeout=5) == 0
            stopped = await _retained_status(b)
            assert (stopped["state"], stopped["reason"]) == ("offline", "stopped")
        finally:
            proc.kill()
            proc.wait()


_last: dict[str, object] = {}


def _is_offline(b: object) -> dict[str, object] | None:
    """Poll the retained status with mosquitto_sub (a fresh subscriber each time)."""
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port),  # type: ignore[attr-defined]
                          "-t", STATUS, "-C", "1", "-W", "1"],
                         capture_output=True, text=True, check=False)
    if not out.stdout.strip():
        return None
    status = dict(json.loads(out.stdout.strip().splitlines()[0]))
    return status if status.get("state") == "offline" else None
