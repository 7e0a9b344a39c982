"""No secret in any log line, and `mwc run` logs JSON lines on stdout.

The real things run with every log captured (structlog and the libraries' stdlib loggers, at
DEBUG, JSON): a station with OCPP security profile 1 against a test backend that refuses the
password and then accepts it, a BasicAuthPassword set by the backend (SetVariables) and used
on the next connection, MQTT with a password against the suite's own mosquitto while it is
down and once it is up, a connection with a wrong MQTT password, and a configuration error.
Then the capture is searched for every configured secret and its HTTP Basic forms.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cycle_fixtures import config_data, rig, small_truck
from helpers import closed_port, eventually
from mqtt_fixtures import Mosquitto, needs_mosquitto, station_config
from ocpp_fixtures import Backend, ocpp_config
from prometheus_client.parser import text_string_to_metric_families

from controller import logs
from controller.config import ConfigError, parse_config
from controller.mqtt import MqttConnection, TlsConfig
from controller.services import run_services
from controller.station import StationEvent

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent

OCPP_PW = "Ocpp-Secret-Pa55word"
NEW_PW = "Backend-Set-Pa55word-2"
MQTT_PW = "Mqtt-Secret-Pa55word"
WRONG_MQTT_PW = "Wrong-Mqtt-Pa55word"
MQTT_USER = "station"


def forms(secret: str, *users: str) -> list[str]:
    """What a grep for ``secret`` must not find: the value and its Basic-auth tokens."""
    out = [secret]
    for user in users:
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        out += [token, token.rstrip("=")]
    return out


def leaks(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


@contextlib.contextmanager
def captured(level: str = "DEBUG") -> Iterator[io.StringIO]:
    """Every log line of the process, rendered as in production (JSON), into a buffer;
    the previous handlers and levels are restored afterwards."""
    root = logging.getLogger()
    names = ("numba", "pymodbus", "asyncio", "websockets", "aiomqtt", "ocpp", "csms", "mqtt")
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in names})
    buf = io.StringIO()
    logs.configure(level=level, fmt="json", stream=buf)
    for quiet in ("numba", "pymodbus", "asyncio"):  # Modbus frames: volume, not secrets
        logging.getLogger(quiet).setLevel(logging.WARNING)
    try:
        yield buf
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        for n, lvl in saved[2].items():
            logging.getLogger(n).setLevel(lvl)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    out = [json.loads(line) for line in lines]  # one JSON object per line, or this raises
    assert all(isinstance(e, dict) for e in out)
    return out


def test_a_configuration_error_never_echoes_a_password() -> None:
    data = config_data(modules=4, guns=1)
    data["ocpp"] = {"url": "http://not-a-websocket", "password": OCPP_PW, "pasword": OCPP_PW}
    data["mqtt"] = {"username": MQTT_USER, "password": [MQTT_PW], "port": 0}
    with captured("INFO") as buf:
        with pytest.raises(ConfigError) as err:
            parse_config(data)
        logs.get_logger("test").error("configuration rejected", error=str(err.value))
    message = str(err.value)
    assert "ocpp.url" in message and "ocpp.pasword: unknown key" in message
    assert "mqtt.password = (secret, not shown)" in message and "mqtt.port = 0" in message
    assert leaks(message, [OCPP_PW, MQTT_PW]) == []
    assert "configuration rejected" in buf.getvalue()
    assert leaks(buf.getvalue(), [OCPP_PW, MQTT_PW]) == []


def test_redaction_of_headers_frames_escapes_and_key_files(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    (tmp_path / "client.key").write_text(key)
    odd = 'quote"and\\back-slash-pw'
    cfg = parse_config(config_data(modules=4, guns=1)).model_copy(update={
        "mqtt": station_config(Mosquitto(tmp_path), username="u", password=odd,
                               tls=TlsConfig(cert_file="c.pem",
                                             key_file=str(tmp_path / "client.key")))})
    logs.register_config_secrets(cfg)
    body = [ln for ln in key.splitlines() if ln and not ln.startswith("-----")]
    bearer = "eyJhbGciOi.payload.signature"
    with captured() as buf:
        log = logs.get_logger("test")
        log.warning("tls failed", key=key, nested={"pw": [odd]})
        log.info("headers", headers={"Authorization": f"Bearer {bearer}"})
        logging.getLogger("websockets.client").info("> Authorization: Basic %s",
                                                    base64.b64encode(b"x:y-z").decode())
        logging.getLogger("ocpp").info("CS: receive message %s", json.dumps(
            [2, "1", "SetVariables", {"setVariableData": [{
                "attributeValue": "not-yet-registered-pw", "component": {"name": "SecurityCtrlr"},
                "variable": {"name": "BasicAuthPassword"}}]}]))
        logging.getLogger("ocpp").info("CP: send %s", [{"key": "AuthorizationKey",
                                                        "value": "0123456789abcdef"}])
    text = buf.getvalue()
    events = json_lines(text)
    assert len(events) == 5
    assert leaks(text, [*body, odd, json.dumps(odd)[1:-1], bearer,
                        base64.b64encode(b"x:y-z").decode(), "not-yet-registered-pw",
                        "0123456789abcdef"]) == []
    assert "-----BEGIN PRIVATE KEY-----" in events[0]["key"]  # the rest of the line is kept
    assert events[1]["headers"] == {"Authorization": "Bearer [REDACTED]"}
    assert events[2]["event"] == "> Authorization: Basic [REDACTED]"
    assert '"attributeValue": "[REDACTED]"' in events[3]["event"]


@needs_mosquitto
async def test_no_configured_secret_reaches_the_logs(tmp_path: Path) -> None:
    be = Backend(password="other-password")  # refuses the configured password at first
    await be.start()
    mq = Mosquitto(tmp_path / "mq", users={MQTT_USER: MQTT_PW},
                   pinned=True)  # down at first: the station has its port
    try:
        with captured() as buf:
            async with rig([small_truck("A")], modules=4) as r:
                def tick(ev: StationEvent) -> None:
                    if ev.kind == "cycle":
                        r.clock.t += r.dt
                        r.sim.advance(r.dt)

                r.station.subscribe(tick)
                cfg = r.station.config.model_copy(update={
                    "ocpp": ocpp_config(tmp_path, be.port, password=OCPP_PW,
                                        station_id="MWC-T1"),
                    "mqtt": station_config(mq, username=MQTT_USER, password=MQTT_PW)})
                stop = asyncio.Event()
                task = asyncio.create_task(run_services(r.station, cfg, stop))
                await eventually(lambda: logs.scrub(OCPP_PW) == logs.REDACTED, 15,
                                 what="run_services registered the configuration's secrets")
                logs.get_logger("careless").info("configuration", cfg=cfg.model_dump())
                await eventually(lambda: len(be.auth_seen) >= 2, 15,  # refused, retried
                                 what="a second OCPP connection attempt")
                await eventually(lambda: buf.getvalue().count("mqtt_disconnected") >= 2, 15,
                                 what="two mqtt_disconnected lines")
                be.password = OCPP_PW
                await eventually(lambda: be.of("BootNotification"), 15, what="a BootNotification")
                mq.start()
                await eventually(lambda: "mqtt_connected" in buf.getvalue(), 15,
                                 what="an mqtt_connected line")

                # A01: the backend sets a new password; the next connection uses it
                from ocpp.v201 import call

                assert be.cp is not None
                reply = await be.cp.call(call.SetVariables(set_variable_data=[{
                    "component": {"name": "SecurityCtrlr"},
                    "variable": {"name": "BasicAuthPassword"},
                    "attributeValue": NEW_PW}]), suppress=False)
                assert reply.set_variable_result[0]["attribute_status"] == "Accepted"
                be.password = NEW_PW
                seen = len(be.auth_seen)
                await be.cp._connection.close()
                want = "Basic " + base64.b64encode(f"MWC-T1:{NEW_PW}".encode()).decode()
                await eventually(lambda: len(be.auth_seen) > seen and be.auth_seen[-1] == want, 15,
                                 what="a connection with the new password")
                # registered from the device model's change hook, in whatever line it comes
                assert logs.scrub(f"pw={NEW_PW} {want}") == "pw=[REDACTED] Basic [REDACTED]"

                # a connection whose configured password the broker refuses
                wrong = station_config(mq, username=MQTT_USER, password=WRONG_MQTT_PW)
                logs.register_config_secrets(cfg.model_copy(update={"mqtt": wrong}))
                bad = MqttConnection(wrong, "TEST-1")
                bad_task = asyncio.create_task(bad.run())
                await eventually(lambda: bad.failures >= 2, 15, what="two refused MQTT connects")
                bad_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await bad_task

                mq.stop()  # broker down under a running connection
                await eventually(lambda: buf.getvalue().count("mqtt_disconnected") >= 3, 15,
                                 what="a third mqtt_disconnected line")
                stop.set()
                await asyncio.wait_for(task, 15)
    finally:
        mq.stop()
        await be.stop()
        gc.collect()

    text = buf.getvalue()
    events = json_lines(text)
    secrets = [*forms(OCPP_PW, "MWC-T1"), *forms(NEW_PW, "MWC-T1"),
               *forms(MQTT_PW, MQTT_USER), *forms(WRONG_MQTT_PW, MQTT_USER)]
    assert leaks(text, secrets) == []
    # ... while the dangerous paths were logged (so the search above searched something)
    assert "> Authorization: Basic [REDACTED]" in text  # websockets' handshake at DEBUG
    assert any("SetVariables" in e["event"] and "BasicAuthPassword" in e["event"]
               for e in events)  # the ocpp library's frame log
    assert any(e["event"] == "connect failed" for e in events)
    assert any(e.get("logger") == "mwc.mqtt" and e["event"] == "mqtt_disconnected"
               for e in events)


def _listening_port(lines: list[bytes]) -> int | None:
    """The metrics endpoint's bound port from its ``metrics_listening`` log line."""
    for line in lines:
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            if isinstance(e, dict) and e.get("event") == "metrics_listening":
                return int(e["port"])
    return None


def _count(lines: list[bytes], event: str) -> int:
    """How many of the JSON log ``lines`` are ``event``."""
    n = 0
    for line in lines:
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            n += isinstance(e, dict) and e.get("event") == event
    return n


def _run_config(tmp_path: Path, sim: Any, metrics_port: int, refused_port: int) -> Path:
    d = sim.describe()
    lines = [
        '[station]', 'id = "LOGS-1"', 'max_kw = 600.0', 'fallback_grid_kw = 600.0',
        "[[guns]]", "cable_rating_a = 1000.0", "max_voltage_v = 1000.0",
        f'meter = {{ host = "127.0.0.1", port = {d["meters"]["port"]}, unit = 1 }}',
        "[modules]", f"count = {len(d['modules']['ports'])}",
        "addresses = [" + ", ".join(f'{{ host = "127.0.0.1", port = {p} }}'
                                    for p in d["modules"]["ports"]) + "]",
        "[matrix]", f'address = {{ host = "127.0.0.1", port = {d["matrix"]["port"]} }}',
        "[metrics]", "enabled = true", f"port = {metrics_port}",
        "[mqtt]", f"port = {refused_port}", f'username = "{MQTT_USER}"',
        f'password = "{MQTT_PW}"', "reconnect_min_s = 0.05", "reconnect_max_s = 0.2",
        "[ocpp]", f'url = "ws://127.0.0.1:{refused_port}/ocpp"', f'password = "{OCPP_PW}"',
        f'database = "{tmp_path / "ocpp.sqlite3"}"', "retry_backoff_wait_minimum_s = 1",
        "retry_backoff_random_range_s = 0", "retry_backoff_repeat_times = 0",
    ]
    path = tmp_path / "mwc.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_mwc_run_logs_json_lines_on_stdout_without_secrets(tmp_path: Path) -> None:
    """The real process against the Modbus simulators, its backend and broker unreachable:
    stdout is one JSON object per line, each with the station id; stderr carries no log."""
    from sim.modbus_server import StationSimulator
    from sim.physics import StationPhysics

    sim = StationSimulator(StationPhysics(4, 1), realtime=True)
    await sim.start()
    with closed_port() as refused_port:  # backend and broker: nothing listens there
        path = _run_config(tmp_path, sim, 0, refused_port)  # metrics: port 0, logged
        await _run_and_stop(path, sim, tmp_path)


async def _run_and_stop(path: Path, sim: Any, tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get(
        "NUMBA_CACHE_DIR", str(ROOT / ".cache/numba"))}
    env.pop("NOTIFY_SOCKET", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "run", "--config", str(path), cwd=ROOT,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out_lines: list[bytes] = []

    async def read_out() -> bytes:
        assert proc.stdout is not None
        async for line in proc.stdout:
            out_lines.append(line)
        return b"".join(out_lines)

    readers = [asyncio.create_task(read_out()), asyncio.create_task(proc.stderr.read())]
    try:
        metrics_port = await eventually(lambda: _listening_port(out_lines), 40,
                                        what="metrics_listening on stdout", proc=proc)
        got: dict[str, float] = {}
        async with httpx.AsyncClient(timeout=2.0) as client:
            async def served() -> bool:
                nonlocal got
                with contextlib.suppress(httpx.TransportError):
                    r = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
                    got = {s.name: s.value for fam in text_string_to_metric_families(r.text)
                           for s in fam.samples if not s.labels}
                return got.get("mwc_cycles_total", 0.0) >= 10 and (
                    "mwc_mqtt_connect_failures" in got)

            await eventually(served, 40, 0.2, "10 cycles and MQTT failures in the metrics",
                             proc=proc, detail=lambda: got)
        assert got["mwc_ocpp_connected"] == 0.0 and got["mwc_mqtt_connected"] == 0.0
        before = _count(out_lines, "mqtt_disconnected")  # a few reconnect attempts more
        await eventually(lambda: _count(out_lines, "mqtt_disconnected") >= before + 3, 20,
                         what="three more mqtt_disconnected lines", proc=proc)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        out, err = await asyncio.wait_for(asyncio.gather(*readers), 5)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await sim.stop()
    events = json_lines(out.decode())
    assert all(e.get("station") == "LOGS-1" for e in events), [
        e for e in events if e.get("station") != "LOGS-1"][:3]
    names = {e["event"] for e in events}
    assert {"station running", "metrics_listening", "connect failed", "mqtt_disconnected",
            "station stopped"} <= names
    assert not [ln for ln in err.decode().splitlines() if ln.startswith("{")]
    both = out.decode() + err.decode()
    assert leaks(both, [*forms(OCPP_PW, "LOGS-1"), *forms(MQTT_PW, MQTT_USER)]) == []


def test_mwc_run_with_a_bad_config_names_the_key_not_the_password(tmp_path: Path) -> None:
    import subprocess

    bad = tmp_path / "bad.toml"
    bad.write_text('[station]\nid = "X"\nmax_kw = 100\nfallback_grid_kw = 10\n'
                   "[[guns]]\ncable_rating_a = 100\nmax_voltage_v = 1000\n"
                   "[modules]\ncount = 2\n"
                   f'[ocpp]\nurl = "ftp://x"\npassword = "{OCPP_PW}"\npasword = "{OCPP_PW}"\n'
                   f"[mqtt]\npassword = {{ value = \"{MQTT_PW}\" }}\n")
    out = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--config", str(bad)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2
    assert "ocpp.url" in out.stderr and "ocpp.pasword: unknown key" in out.stderr
    assert "mqtt.password" in out.stderr
    assert leaks(out.stdout + out.stderr, [OCPP_PW, MQTT_PW]) == []
