"""Telemetry and events out over MQTT, without ever making the control cycle wait.

The cycle calls two non-blocking methods and nothing else:

- :meth:`TelemetryPublisher.offer_record` keeps the latest :class:`CycleRecord`; every
  ``telemetry_period_s`` the newest one is rendered onto a small bounded queue. When the queue
  is full (broker slow or away) the oldest telemetry message is dropped and counted:
  telemetry is a sample, the next one supersedes it.
- :meth:`TelemetryPublisher.event` queues an event (session started/stopped, faults, limit
  changes, rejected payloads). Events are facts, so they are never dropped to make room for
  telemetry and are published first, QoS 1, in order, re-sent after a reconnect. Their queue
  is bounded only as a memory guard (``event_queue``, default 10 000): beyond it an event is
  counted and written to the log in full instead of being published.

:meth:`TelemetryPublisher.observe` does both for a station observer. :meth:`run` is the only
coroutine; it does all the MQTT work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from dataclasses import fields as dataclass_fields
from dataclasses import is_dataclass
from typing import Any

import aiomqtt

from controller import logs
from controller.clock import WallSeconds
from controller.mqtt import MqttConnection, NotConnected, raise_if_cancelling, rfc3339
from controller.records import CycleRecord, GunRecord, ModuleRecord

#: Station session event kinds as the events topic names them.
_SESSION_KINDS = {"charging_started": "session_started", "charging_stopped": "session_stopped",
                  "state_changed": "gun_state"}


def _num(x: float | None, digits: int = 1) -> float | None:
    """JSON has no NaN or infinity: unmeasured or unbounded values become null."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    return value


def gun_json(g: GunRecord) -> dict[str, Any]:
    return {
        "gun": g.gun, "state": g.state, "current_a": _num(g.current_a),
        "voltage_v": _num(g.voltage_v), "power_w": _num(g.power_w, 0),
        "setpoint_a": _num(g.setpoint_a), "binding": g.binding,
        "binding_source": g.binding_source, "modules": list(g.modules),
        "soc_pct": _num(g.soc_pct), "energy_wh": _num(g.energy_wh, 0),
    }


def module_json(m: ModuleRecord) -> dict[str, Any]:
    return {
        "module": m.module, "gun": m.gun, "current_a": _num(m.current_a),
        "setpoint_a": _num(m.setpoint_a), "available_a": _num(m.available_a),
        "inlet_c": _num(m.inlet_c), "outlet_c": _num(m.outlet_c),
        "internal_c": _num(m.internal_c),
        "status": "ok" if m.available else (m.reason or "unavailable"),
    }


def telemetry_json(record: CycleRecord, *, dropped: int = 0) -> dict[str, Any]:
    """The telemetry message for one cycle record (schema in docs/mqtt.md)."""
    return {
        "seq": record.seq,
        "time": record.wall_time,
        "station": {
            "power_w": _num(record.station_power_w, 0),
            "cap_w": _num(record.station_cap_w, 0),
            "cap_source": record.cap_source,
            "work_ms": _num(record.work_ms, 2),
            "overrun": record.overrun,
            "violations": list(record.violations),
        },
        "guns": [gun_json(g) for g in record.guns],
        "modules": [module_json(m) for m in record.modules],
        "telemetry_dropped": dropped,
    }


class TelemetryPublisher:
    """Publishes telemetry at its period and events as they come, on ``connection``.

    Satisfies ``controller.mqtt.EventSink``, so the grid source reports through it.
    """

    def __init__(self, connection: MqttConnection, *, wall: WallSeconds = time.time) -> None:
        cfg = connection.config
        self.connection = connection
        self.period_s = cfg.telemetry_period_s
        self.telemetry_topic = cfg.topic("telemetry", connection.station_id)
        self.events_topic = cfg.topic("events", connection.station_id)
        self._wall = wall
        self._latest: CycleRecord | None = None
        self._queued_seq: int | None = None
        self._telemetry: deque[bytes] = deque()
        self._telemetry_max = cfg.telemetry_queue
        self._events: deque[bytes] = deque()
        self._events_max = cfg.event_queue
        self._event_seq = 0
        self._wake = asyncio.Event()
        self.telemetry_dropped = 0
        self.events_overflow = 0
        self.telemetry_published = 0
        self.events_published = 0
        self._log = logs.get_logger("mwc.telemetry", station_id=connection.station_id)

    # ------------------------------------------------------------------ called by the cycle
    def offer_record(self, record: CycleRecord) -> None:
        """Keep ``record`` as the latest; O(1), never blocks, never raises."""
        self._latest = record

    def event(self, kind: str, /, **fields: Any) -> None:
        """Queue an event for the events topic; O(1), never blocks, never raises."""
        self._event_seq += 1
        body = {"kind": kind, "station_id": self.connection.station_id,
                "seq": self._event_seq, "time": rfc3339(self._wall()), **fields}
        try:
            payload = json.dumps(_clean(body), default=str, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:  # an unserializable field: still report it
            payload = json.dumps({"kind": kind, "seq": self._event_seq,
                                  "error": f"unserializable event: {exc}"}).encode()
        if len(self._events) >= self._events_max:
            self.events_overflow += 1
            self._log.error("event_queue_full", overflow=self.events_overflow,
                            lost_event=payload.decode())
            return
        self._events.append(payload)
        self._wake.set()

    def observe(self, event: object) -> None:
        """A station observer (``station.subscribe(telemetry.observe)``): cycle records to
        telemetry, session events and faults to the events topic. Never blocks or raises."""
        kind = getattr(event, "kind", None)
        if kind == "cycle":
            record = getattr(event, "record", None)
            if isinstance(record, CycleRecord):
                self.offer_record(record)
                if record.violations:
                    self.event("safety_violation", seq=record.seq,
                               violations=list(record.violations))
            return
        if not isinstance(kind, str) or kind == "meter_sample" or not is_dataclass(event):
            return
        fields = {f.name: getattr(event, f.name) for f in dataclass_fields(event)
                  if f.name not in ("kind", "t") and getattr(event, f.name) is not None}
        self.event(_SESSION_KINDS.get(kind, kind), **fields)
        if kind == "state_changed" and str(fields.get("state")) == "Faulted":
            self.event("fault", gun=fields.get("gun"), reason=fields.get("reason"))

    # ------------------------------------------------------------------ the task
    def stats(self) -> dict[str, int]:
        return {"telemetry_dropped": self.telemetry_dropped,
                "telemetry_queued": len(self._telemetry),
                "telemetry_published": self.telemetry_published,
                "events_queued": len(self._events), "events_overflow": self.events_overflow,
                "events_published": self.events_published}

    def sample(self) -> None:
        """Render the latest record onto the telemetry queue (once per record)."""
        record = self._latest
        if record is None or record.seq == self._queued_seq:
            return
        self._queued_seq = record.seq
        if len(self._telemetry) >= self._telemetry_max:
            self._telemetry.popleft()
            self.telemetry_dropped += 1
        payload = json.dumps(telemetry_json(record, dropped=self.telemetry_dropped),
                             allow_nan=False, default=str).encode()
        self._telemetry.append(payload)
        self._wake.set()

    async def run(self) -> None:
        """Sample at the telemetry period and publish; runs until cancelled."""
        sender = asyncio.create_task(self._send_loop(), name="mqtt-telemetry-send")
        try:
            loop = asyncio.get_running_loop()
            next_at = loop.time()
            while True:
                self.sample()
                next_at += self.period_s
                delay = next_at - loop.time()
                if delay < 0:  # fell behind (a stalled loop): restart the grid, no bursts
                    next_at = loop.time()
                    delay = 0
                await asyncio.sleep(delay)
        finally:
            while not sender.done():  # cancel until it really stops (see raise_if_cancelling)
                sender.cancel()
                await asyncio.wait({sender}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                sender.result()

    async def _send_loop(self) -> None:
        while True:
            raise_if_cancelling()
            if not self._events and not self._telemetry:
                self._wake.clear()
                await self._wake.wait()
            await self.connection.wait_connected()
            if self._events:
                payload = self._events[0]
                try:
                    await self.connection.publish(self.events_topic, payload, qos=1)
                except (NotConnected, aiomqtt.MqttError) as exc:
                    self._log.info("event_publish_deferred", error=str(exc))
                    await asyncio.sleep(0.05)  # keep it first; wait for the reconnect
                    continue
                if self._events and self._events[0] is payload:
                    self._events.popleft()
                self.events_published += 1
                continue
            payload = self._telemetry.popleft()
            try:
                await self.connection.publish(self.telemetry_topic, payload, qos=0)
                self.telemetry_published += 1
            except (NotConnected, aiomqtt.MqttError):
                self.telemetry_dropped += 1
