"""The station's Prometheus endpoint (``[metrics]``, off by default, loopback by default).

Why a custom collector: the control cycle must not pay for monitoring. The only per-cycle
work is :meth:`StationCollector.observe` (a station observer): one bucket increment of the
cycle-duration histogram and a violation count, about a microsecond. Everything else —
per-gun and per-module values, the station cap and the limits in force, the OCPP and MQTT
connection state — is read at scrape time from the station's last :class:`CycleRecord`, its
:class:`LimitBook` and the services, so an unscraped endpoint costs nothing.

Why an asyncio server rather than prometheus_client's threaded one: the collector reads
station and service state that belongs to the event loop (the OCPP queue's SQLite
connection may only be used from the loop's thread), and the server closes with the
station. A scrape collects on the loop (about 0.7 ms for a 6-gun, 64-module station, 780
series) and formats the text in a worker thread (about 3 ms, ``generate_latest``), so the
loop is held for the collection only. Each exporter has its own :class:`CollectorRegistry`:
no process-global state, so restarts and tests do not collide.

Guns and modules are labelled by their number from 1, as on the cabinet labels, in OCPP
(EVSE 1 is gun 1) and in ``mwc doctor``; logs and MQTT telemetry carry the 0-based index.
Metric names and labels are documented in docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controller import logs
from controller.limits import STATION, gun
from controller.session import GunState
from controller.station import CycleEvent

if TYPE_CHECKING:
    from controller.config import MetricsConfig
    from controller.mqtt import MqttConnection
    from controller.ocpp.ports import OcppClientPort
    from controller.station import Station, StationEvent

#: Histogram buckets as fractions of the cycle period: the bucket ``le`` = period is the
#: overrun boundary.
BUCKET_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 0.9, 1.0, 1.5, 2.0, 5.0)
GUN_STATES = tuple(s.value for s in GunState)
MODULE_STATES = ("connected", "idle", "unavailable")
#: The classic text format: every name here is a legacy (ASCII) name, so the body is the
#: same, and every Prometheus version (2.x included) reads this content type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_LINES = 100  # request line + headers read from one scrape, at most
READ_TIMEOUT_S = 5.0


class CycleHistogram:
    """Bucket counts of the cycle's work time; ``observe`` is the per-cycle cost."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs as the exposition format wants them."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            out.append(("+Inf" if math.isinf(bound) else repr(bound), float(total)))
        return out


def _state_of_module(available: bool, gun_index: int) -> str:
    if not available:
        return "unavailable"
    return "connected" if gun_index >= 0 else "idle"


class StationCollector(Collector):
    """Reads the station (and the services set on ``ocpp`` / ``mqtt``) at scrape time."""

    def __init__(self, station: Station) -> None:
        self.station = station
        period = station.params.cycle_s
        self.histogram = CycleHistogram(tuple(round(f * period, 6) for f in BUCKET_FRACTIONS))
        self.violations = 0  # counted here: the safety monitor's total restarts with a Reset
        self.ocpp: OcppClientPort | None = None  # .online, .queue
        self.mqtt: MqttConnection | None = None
        self.log = logs.get_logger("controller.metrics", station=station.config.station.id)

    def observe(self, event: StationEvent) -> None:
        """Station observer: the only work done inside the control cycle."""
        if not isinstance(event, CycleEvent):
            return
        rec = event.record
        self.histogram.observe(rec.work_ms / 1000.0)
        if rec.violations:
            self.violations += len(rec.violations)

    # ------------------------------------------------------------------ scrape
    def collect(self) -> Iterator[Metric]:
        for part in (self._cycle, self._station, self._guns, self._modules, self._limits,
                     self._ocpp, self._mqtt):
            try:
                yield from part()
            except Exception:  # one broken source must not take the whole scrape down
                self.log.exception("metrics_collect_failed", part=part.__name__)

    def _cycle(self) -> Iterator[Metric]:
        st, h = self.station, self.histogram
        fam = HistogramMetricFamily("mwc_cycle_duration_seconds",
                                    "Work time of one control cycle (poll, decide, apply)")
        fam.add_metric([], h.buckets(), h.sum)
        yield fam
        yield CounterMetricFamily("mwc_cycles_total", "Control cycles run",
                                  value=float(st.seq))
        yield CounterMetricFamily("mwc_cycle_overruns_total",
                                  "Cycles whose work took longer than the period",
                                  value=float(st.overruns))
        yield CounterMetricFamily("mwc_safety_violations_total",
                                  "Safety monitor violations found", value=float(self.violations))
        yield CounterMetricFamily("mwc_station_restarts_total",
                                  "In-place restarts of the station (OCPP Reset)",
                                  value=float(st.restarts))
        rec = st.last_record
        if rec is not None:
            yield GaugeMetricFamily("mwc_cycle_age_seconds",
                                    "Time since the last completed cycle (a stalled cycle grows)",
                                    value=max(0.0, st.clock() - rec.t))

    def _station(self) -> Iterator[Metric]:
        rec = self.station.last_record
        if rec is None:
            return
        yield GaugeMetricFamily("mwc_station_power_watts", "Measured station power (sum of the "
                                "gun meters)", value=rec.station_power_w)
        cap = GaugeMetricFamily("mwc_station_cap_watts", "Station power cap given to the "
                                "allocator, labelled with the source of the binding limit",
                                labels=["source"])
        cap.add_metric([rec.cap_source], rec.station_cap_w)
        yield cap

    def _guns(self) -> Iterator[Metric]:
        rec = self.station.last_record
        if rec is None:
            return
        lab = ["gun"]
        cur = GaugeMetricFamily("mwc_gun_current_amperes", "Measured gun current", labels=lab)
        volt = GaugeMetricFamily("mwc_gun_voltage_volts", "Measured gun voltage", labels=lab)
        power = GaugeMetricFamily("mwc_gun_power_watts", "Measured gun power", labels=lab)
        setp = GaugeMetricFamily("mwc_gun_setpoint_amperes", "Current allocated to the gun",
                                 labels=lab)
        soc = GaugeMetricFamily("mwc_gun_soc_percent", "Vehicle state of charge", labels=lab)
        state = GaugeMetricFamily("mwc_gun_state", "Gun session state (1 for the current one)",
                                  labels=["gun", "state"])
        binding = GaugeMetricFamily("mwc_gun_binding_info", "The limit that bound the gun's "
                                    "allocation and its source", labels=["gun", "binding",
                                                                         "source"])
        for g in rec.guns:
            k = [str(g.gun + 1)]
            cur.add_metric(k, g.current_a)
            volt.add_metric(k, g.voltage_v)
            power.add_metric(k, g.power_w)
            setp.add_metric(k, g.setpoint_a)
            if g.soc_pct is not None:
                soc.add_metric(k, g.soc_pct)
            for s in GUN_STATES:
                state.add_metric([k[0], s], 1.0 if s == g.state else 0.0)
            binding.add_metric([k[0], g.binding, g.binding_source], 1.0)
        yield from (cur, volt, power, setp, soc, state, binding)

    def _modules(self) -> Iterator[Metric]:
        rec = self.station.last_record
        if rec is None:
            return
        lab = ["module"]
        state = GaugeMetricFamily("mwc_module_state", "Module state (1 for the current one)",
                                  labels=["module", "state"])
        why = GaugeMetricFamily("mwc_module_unavailable_info", "Why an unavailable module "
                                "is unavailable", labels=["module", "reason"])
        on_gun = GaugeMetricFamily("mwc_module_gun", "Gun the module is switched to "
                                   "(0: none)", labels=lab)
        cur = GaugeMetricFamily("mwc_module_current_amperes", "Measured module output current",
                                labels=lab)
        setp = GaugeMetricFamily("mwc_module_setpoint_amperes", "Module current setpoint",
                                 labels=lab)
        avail = GaugeMetricFamily("mwc_module_available_amperes", "Module maximum now "
                                  "(derated)", labels=lab)
        temp = GaugeMetricFamily("mwc_module_temperature_celsius", "Module temperatures",
                                 labels=["module", "sensor"])
        for m in rec.modules:
            k = str(m.module + 1)
            now = _state_of_module(m.available, m.gun)
            for s in MODULE_STATES:
                state.add_metric([k, s], 1.0 if s == now else 0.0)
            if not m.available:
                why.add_metric([k, m.reason or "unavailable"], 1.0)
            on_gun.add_metric([k], float(m.gun + 1 if m.gun >= 0 else 0))
            cur.add_metric([k], m.current_a)
            setp.add_metric([k], m.setpoint_a)
            avail.add_metric([k], m.available_a)
            temp.add_metric([k, "inlet"], m.inlet_c)
            temp.add_metric([k, "outlet"], m.outlet_c)
            temp.add_metric([k, "internal"], m.internal_c)
        yield from (state, why, on_gun, cur, setp, avail, temp)
        policy = self.station.module_faults
        yield CounterMetricFamily("mwc_module_fault_resets_total",
                                  "Fault-reset register writes that cleared a latched module "
                                  "fault (docs/control-cycle.md)", value=float(policy.resets_total))
        given = GaugeMetricFamily("mwc_module_fault_given_up", "1 for a module whose latched "
                                  "fault kept coming back: out of the pool until cleared",
                                  labels=lab)
        for idx in policy.given_up:
            given.add_metric([str(idx + 1)], 1.0)
        yield given

    def _limits(self) -> Iterator[Metric]:
        st = self.station
        book, now = st.limits, st.clock()
        station = GaugeMetricFamily("mwc_station_limit_watts", "Every station limit in force "
                                    "(the smallest binds)", labels=["source"])
        guns = GaugeMetricFamily("mwc_gun_limit_amperes", "Every gun limit in force",
                                 labels=["gun", "source"])
        expiry = GaugeMetricFamily("mwc_limit_expires_in_seconds", "Time left before an "
                                   "expiring limit lapses (its fallback applies then)",
                                   labels=["gun", "source"])
        scopes = [(STATION, None), *((gun(g), g) for g in range(st.params.guns))]
        for scope, g in scopes:
            for lim in book.in_force(scope, now):
                if g is None:
                    station.add_metric([lim.source], lim.value)
                else:
                    guns.add_metric([str(g + 1), lim.source], lim.value)
                if lim.expires_at is not None:
                    where = "" if g is None else str(g + 1)  # "": the station (no gun label)
                    expiry.add_metric([where, lim.source], max(0.0, lim.expires_at - now))
        yield from (station, guns, expiry)

    def _ocpp(self) -> Iterator[Metric]:
        svc = self.ocpp
        if svc is None:
            return
        yield GaugeMetricFamily("mwc_ocpp_connected", "1 while the OCPP backend connection is "
                                "up and the boot accepted", value=1.0 if svc.online else 0.0)
        yield GaugeMetricFamily("mwc_ocpp_queue_depth", "Messages in the persistent OCPP "
                                "queue (sent in order once online)", value=float(len(svc.queue)))

    def _mqtt(self) -> Iterator[Metric]:
        conn = self.mqtt
        if conn is None:
            return
        yield GaugeMetricFamily("mwc_mqtt_connected", "1 while the MQTT broker connection is up",
                                value=1.0 if conn.connected else 0.0)
        yield CounterMetricFamily("mwc_mqtt_connections_total",
                                  "Successful MQTT connections of this connection object",
                                  value=float(conn.connects))
        yield GaugeMetricFamily("mwc_mqtt_connect_failures", "Failed connection attempts since "
                                "the last successful one", value=float(conn.failures))


class _Collected(Collector):
    """Families collected on the loop, handed to the formatting thread."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class MetricsExporter:
    """A :class:`StationCollector` in its own registry, served over HTTP at ``/metrics``."""

    def __init__(self, station: Station, config: MetricsConfig) -> None:
        self.config = config
        self.collector = StationCollector(station)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.port: int | None = None  # the bound port once started (config.port may be 0)
        self._server: asyncio.Server | None = None
        self._off = station.subscribe(self.collector.observe)
        self.log = logs.get_logger("controller.metrics", station=station.config.station.id)

    def render(self) -> bytes:
        """The exposition text, collected and formatted here (tests, benchmarks)."""
        return generate_latest(self.registry)

    async def render_async(self) -> bytes:
        """Collect on the loop (station state is the loop's), format in a thread."""
        families = list(self.registry.collect())
        return await asyncio.to_thread(generate_latest, _Collected(families))

    async def start(self) -> None:
        """Bind (host, port); OSError when the port is taken (the caller logs and goes on)."""
        self._server = await asyncio.start_server(self._handle, self.config.host,
                                                  self.config.port, limit=16 * 1024)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.log.info("metrics_listening", host=self.config.host, port=self.port)

    async def close(self) -> None:
        """Stop serving and stop observing the station."""
        self._off()
        if self._server is not None:
            self._server.close()
            await logs.closing_step(self._server.wait_closed(), self.log, "metrics server")
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path = await self._request(reader)
            status, ctype, body = await self._answer(method, path)
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode("latin-1") + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a slow, broken or oversized request: just close
        finally:
            writer.close()
            await logs.closing_step(writer.wait_closed(), self.log, "metrics connection")

    @staticmethod
    async def _request(reader: asyncio.StreamReader) -> tuple[str, str]:
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
        for _ in range(MAX_REQUEST_LINES):
            header = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
            if header in (b"\r\n", b"\n", b""):
                break
        else:
            raise ValueError("too many header lines")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "", ""
        return parts[0], parts[1].split("?", 1)[0]

    async def _answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if not method:
            return "400 Bad Request", text, b"bad request\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"only GET\n"
        if path == "/metrics":
            try:
                return "200 OK", CONTENT_TYPE, await self.render_async()
            except Exception:
                self.log.exception("metrics_render_failed")
                return "500 Internal Server Error", text, b"render failed\n"
        if path == "/":
            return "200 OK", text, b"mwcharge station metrics: /metrics\n"
        return "404 Not Found", text, b"not found; see /metrics\n"
