"""`mwc doctor`: every check passes against real peers, then each failure is named.

Peers are real: the Modbus simulator (``StationSimulator``, in-process), a private
mosquitto, the project's backend (``ocpp_server``) or the OCPP test backend. The doctor runs
through ``controller.cli.main`` in a worker thread (it owns its event loop, as from the
shell) while the simulator and the backends keep serving on the test's loop; one test runs
it as a subprocess for the exit code of an invalid configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from csms_fixtures import make_config, provision, running_csms
from csms_fixtures import make_pki as csms_pki
from helpers import closed_port
from mqtt_fixtures import broker, needs_mosquitto
from ocpp_fixtures import Backend, make_pki, server_ssl

from controller import cli, doctor
from controller.config import load_config
from controller.ocpp.connection import auth_headers
from controller.ocpp.v201.device_model import DeviceModel, default_vars
from power.modbus_map import coil_index
from sim.modbus_server import StationSimulator
from sim.physics import ConstantVoltageLoad, StationPhysics

ROOT = Path(__file__).resolve().parents[1]
SID = "MWC-T1"
OCPP_PW = "s3cret-pass"
MQTT_PW = "mqtt-pass-42"


@dataclass
class Rig:
    """A simulated cabinet plus the pieces of its configuration file."""

    sim: StationSimulator
    tmp: Path
    module_ports: list[int] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)

    @property
    def physics(self) -> StationPhysics:
        return self.sim.physics

    def write(self, name: str = "mwc.toml") -> Path:
        p = self.sim.ports
        addr = ", ".join(f'{{ host = "127.0.0.1", port = {port}, unit = 1 }}'
                         for port in self.module_ports)
        guns = "".join(
            f"[[guns]]\ncable_rating_a = 1200.0\nmax_voltage_v = 1250.0\n"
            f'meter = {{ host = "127.0.0.1", port = {p.meters}, unit = {g + 1} }}\n'
            for g in range(self.physics.guns))
        text = (f'[station]\nid = "{SID}"\nmax_kw = 1440.0\nfallback_grid_kw = 1000.0\n{guns}'
                f"[modules]\ncount = {len(self.module_ports)}\naddresses = [{addr}]\n"
                f'[matrix]\naddress = {{ host = "127.0.0.1", port = {p.matrix}, unit = 1 }}\n'
                + "".join(self.sections))
        path = self.tmp / name
        path.write_text(text)
        return path

    def mqtt(self, port: int, password: str = MQTT_PW) -> None:
        self.sections.append(f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nusername = "{SID}"\n'
                             f'password = "{password}"\ntimeout_s = 3.0\n')

    def ocpp(self, url: str, **kw: Any) -> None:
        body = {"url": url, "security_profile": 1, "password": OCPP_PW,
                "database": str(self.tmp / "ocpp.sqlite3"), **kw}
        self.sections.append("[ocpp]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                  for k, v in body.items() if v is not None))


@contextlib.asynccontextmanager
async def rig(tmp: Path, modules: int = 2) -> AsyncIterator[Rig]:
    physics = StationPhysics(modules, 2, loads=[ConstantVoltageLoad(600.0) for _ in range(2)])
    sim = StationSimulator(physics, realtime=False)
    await sim.start()
    try:
        yield Rig(sim, tmp, list(sim.ports.modules))
    finally:
        await sim.stop()


@dataclass
class Run:
    code: int
    out: str

    def rows(self) -> dict[str, tuple[str, str]]:
        """name -> (status, detail), from the printed table."""
        lines = self.out.strip().splitlines()
        start = lines[0].index("STATUS")
        out = {}
        for line in lines[1:-1]:
            out[line[:start].rstrip()] = (line[start:start + 6].strip(), line[start + 8:])
        return out

    def row(self, prefix: str) -> tuple[str, str]:
        hits = [v for k, v in self.rows().items() if k.startswith(prefix)]
        assert len(hits) == 1, (prefix, self.out)
        return hits[0]


async def mwc_doctor(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Run:
    """`mwc doctor --config path` through the real CLI, in its own thread and event loop."""
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["doctor", "--config", str(path), *extra])
    return Run(code, capsys.readouterr().out)


def assert_no_secret(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text


# ------------------------------------------------------------------------------ all pass
@needs_mosquitto
async def test_every_check_passes_and_nothing_is_switched_or_booted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    be = Backend(password=OCPP_PW)
    await be.start()
    try:
        with broker(tmp_path / "mqtt", users={SID: MQTT_PW}) as b:
            async with rig(tmp_path, modules=3) as r:
                r.mqtt(b.port)
                r.ocpp(f"ws://127.0.0.1:{be.port}/ocpp")
                watchdogs = [m.watchdog_ms for m in r.physics.modules]
                run = await mwc_doctor(r.write(), capsys)
                assert run.code == 0, run.out
                rows = run.rows()
                assert len(rows) == 1 + 3 + 1 + 2 + 2
                assert {s for s, _ in rows.values()} == {"PASS"}, run.out
                p = r.sim.ports
                _, detail = rows[f"module 1 (127.0.0.1:{p.modules[0]} unit 1)"]
                assert detail.startswith("rated 40.0 kW / 100 A, 150-1000 V, firmware 1.0.0")
                assert "all open" in run.row("matrix feedback")[1]
                assert run.row("meter gun 2")[1] == "0.0 V, 0.0 A, energy register 0.000 kWh"
                assert f"subscribed to mwc/{SID}/grid/limit" in run.row("mqtt broker")[1]
                assert "subprotocol ocpp2.0.1" in run.row("ocpp backend")[1]
                assert "exit code 0" in run.out.splitlines()[-1]
                assert_no_secret(run.out, OCPP_PW, MQTT_PW)
                as_json = await mwc_doctor(r.write(), capsys, "--json")
                body = json.loads(as_json.out)
                assert as_json.code == 0 and body["exit_code"] == 0
                assert [(c["name"], c["status"]) for c in body["checks"]] == [
                    (name, status) for name, (status, _) in rows.items()]
                # read-only: no coil, no enable, no setpoint, no watchdog write
                assert not any(r.physics.matrix.coils)
                assert not any(m.enabled for m in r.physics.modules)
                assert [m.watchdog_ms for m in r.physics.modules] == watchdogs
                assert all(m.voltage_setpoint_v == 0 for m in r.physics.modules)
        # the backend saw one handshake with the station's credentials and no OCPP message
        assert be.auth_seen == [auth_headers(1, SID, OCPP_PW)["Authorization"]] * 2
        assert be.raw == []
    finally:
        await be.stop()


async def test_48_modules_all_pass(tmp_path: Path) -> None:
    async with rig(tmp_path, modules=48) as r:
        t0 = time.monotonic()
        report = await doctor.diagnose(r.write())
        wall = time.monotonic() - t0
    print(f"\nmwc doctor, 48 simulated modules + matrix + 2 meters: {wall:.3f} s")
    assert report.exit_code == 0, doctor.render_table(report)
    assert [x.status for x in report.rows].count("PASS") == 1 + 48 + 1 + 2
    assert wall < 30.0  # a hang guard only: the 3 s goal is measured by bench/doctor.py


# ------------------------------------------------------------------------------ config
def test_invalid_config_is_one_fail_row_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[station]\nid = "X"\nmax_kw = 100.0\nfallback_grid_kw = 50.0\n'
                    "[[guns]]\ncable_rating_a = 500.0\nmax_voltage_v = 1000.0\n"
                    "[modules]\ncount = 0\n")
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "doctor", "--config",
                           str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    run = Run(proc.returncode, proc.stdout)
    assert list(run.rows()) == ["config"]  # nothing else was tried
    status, detail = run.rows()["config"]
    assert status == "FAIL" and "modules.count = 0" in detail


def test_missing_file_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["doctor", "--config", str(tmp_path / "nope.toml"), "--json"])
    body = json.loads(capsys.readouterr().out)
    assert code == 2 and body["exit_code"] == 2
    assert [c["name"] for c in body["checks"]] == ["config"]
    assert "cannot read configuration file" in body["checks"][0]["detail"]


# ------------------------------------------------------------------------------ Modbus
async def test_module_unreachable_silent_faulted_and_meter_offline(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with rig(tmp_path, modules=4) as r:
        with closed_port() as nowhere:
            r.module_ports[2] = nowhere  # nothing listens there
            r.physics.set_comm_loss(1)  # answers nothing: the master times out
            r.physics.inject_module_fault(3, 4)  # coolant flow
            r.physics.set_meter_offline(1)
            run = await mwc_doctor(r.write(), capsys)
    assert run.code == 1
    assert run.row("module 1 ")[0] == "PASS"
    status, detail = run.row("module 2 ")
    assert status == "FAIL" and "no answer to read input registers 200..207" in detail
    status, detail = run.row("module 3 ")
    assert status == "FAIL" and "connect failed (refused or unreachable)" in detail
    status, detail = run.row("module 4 ")
    assert status == "FAIL" and detail.startswith("fault code 4 (coolant flow)")
    assert "rated 40.0 kW" in detail
    status, detail = run.row("meter gun 2")
    assert status == "FAIL" and "no answer" in detail
    assert run.row("meter gun 1")[0] == "PASS"
    assert run.row("mqtt broker") == ("SKIP", "no [mqtt] section in the configuration")
    assert run.row("ocpp backend")[0] == "SKIP"


async def test_welded_contactor_and_stale_command_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with rig(tmp_path, modules=4) as r:
        ph = r.physics
        ph.set_welded(0, 1)  # module 1 → gun 2 sticks closed, its coil open
        stale = coil_index(2, 0, 2)  # module 3 → gun 1 left commanded by a killed controller
        assert ph.matrix.write_coils(ph.t, stale, [True])
        r.sim.advance(0.05)
        run = await mwc_doctor(r.write(), capsys)
        assert ph.matrix.coils[stale]  # the doctor reports it, it does not open it
    assert run.code == 1
    status, detail = run.row("matrix feedback")
    assert status == "FAIL"
    assert "welded (feedback closed, coil open): module 1 → gun 2 (coil 1)" in detail
    assert "stale command" in detail and "module 3 → gun 1 (coil 4)" in detail
    assert {s for n, (s, _) in run.rows().items() if n.startswith("module")} == {"PASS"}


# ------------------------------------------------------------------------------ MQTT
@needs_mosquitto
async def test_broker_refuses_wrong_password(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with broker(tmp_path / "mqtt", users={SID: MQTT_PW}) as b:
        async with rig(tmp_path) as r:
            r.mqtt(b.port, password="not-the-password")
            run = await mwc_doctor(r.write(), capsys)
    assert run.code == 1
    status, detail = run.row("mqtt broker")
    assert status == "FAIL" and "refused the connection" in detail
    assert f"username '{SID}'" in detail
    assert_no_secret(run.out, "not-the-password", MQTT_PW)


# ------------------------------------------------------------------------------ OCPP
async def test_TC_A_01_backend_password_from_device_model_401_then_pass(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ocpp_server: the configured password is stale (401); once the device model holds the
    password the backend set (A01), the doctor uses it, without writing the database."""
    new_pw = "set-by-backend-77"
    async with running_csms(make_config(tmp_path)) as csms, rig(tmp_path) as r:
        await provision(csms, SID, password=new_pw)
        r.ocpp(f"ws://127.0.0.1:{csms.ocpp_port}/ocpp")
        path = r.write()
        run = await mwc_doctor(path, capsys)
        status, detail = run.row("ocpp backend")
        assert run.code == 1 and status == "FAIL"
        assert detail.startswith(f"HTTP 401: the backend refused the credentials of station "
                                 f"{SID}") and "[ocpp] password" in detail
        # what the controller persists after a SetVariables BasicAuthPassword
        db = sqlite3.connect(tmp_path / "ocpp.sqlite3")
        db.execute("PRAGMA journal_mode=WAL")  # as OcppService opens it
        full = load_config(path)
        assert full.ocpp is not None
        dm = DeviceModel(db, default_vars(full.ocpp, full))
        assert dm.write({"name": "SecurityCtrlr"}, {"name": "BasicAuthPassword"}, new_pw,
                        None) == "Accepted"
        db.close()
        before = hashlib.sha256((tmp_path / "ocpp.sqlite3").read_bytes()).hexdigest()
        run = await mwc_doctor(path, capsys)
        after = hashlib.sha256((tmp_path / "ocpp.sqlite3").read_bytes()).hexdigest()
    assert run.code == 0, run.out
    status, detail = run.row("ocpp backend")
    assert status == "PASS" and "password from the device model" in detail
    assert before == after
    assert_no_secret(run.out, new_pw, OCPP_PW)


async def test_ocpp16_authorization_key_set_by_backend(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """OCPP 1.6 (security extension): the AuthorizationKey the backend set with
    ChangeConfiguration is the password; subprotocol ocpp1.6."""
    keys16 = pytest.importorskip("controller.ocpp.v16.config_keys")
    key = "authorization-key-0123"
    async with running_csms(make_config(tmp_path)) as csms, rig(tmp_path) as r:
        await provision(csms, SID, password=key)
        r.ocpp(f"ws://127.0.0.1:{csms.ocpp_port}/ocpp", version="1.6")
        path = r.write()
        full = load_config(path)
        assert full.ocpp is not None
        db = sqlite3.connect(tmp_path / "ocpp.sqlite3")
        assert keys16.ConfigKeys(db, keys16.standard_keys(full.ocpp, full)).change(
            "AuthorizationKey", key) == "Accepted"
        db.close()
        run = await mwc_doctor(path, capsys)
    status, detail = run.row("ocpp backend")
    assert run.code == 0 and status == "PASS", run.out
    assert "subprotocol ocpp1.6" in detail and "AuthorizationKey in" in detail
    assert_no_secret(run.out, key)


@pytest.mark.parametrize("trusted", [True, False])
async def test_TC_A_05_backend_certificate_trusted_or_not(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], trusted: bool) -> None:
    pki = make_pki(tmp_path)
    be = Backend(password=OCPP_PW, ssl_ctx=server_ssl(pki, client_auth=False))
    await be.start()
    ca = pki.ca if trusted else pki.other_ca
    try:
        async with rig(tmp_path) as r:
            r.ocpp(f"wss://127.0.0.1:{be.port}/ocpp", security_profile=2, ca_file=str(ca))
            run = await mwc_doctor(r.write(), capsys)
    finally:
        await be.stop()
    status, detail = run.row("ocpp backend")
    if trusted:
        assert run.code == 0 and status == "PASS"
        assert "security profile 2 (Basic auth over TLS, TLSv1.3)" in detail
        assert be.raw == []
        return
    assert run.code == 1 and status == "FAIL"
    assert detail.startswith("TLS: the backend's certificate is not trusted")
    assert str(pki.other_ca) in detail
    assert be.auth_seen == []  # the password never left the station


@pytest.mark.parametrize("client_ca", ["backend's", "foreign"])
async def test_TC_A_06_profile3_client_certificate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], client_ca: str) -> None:
    pki = make_pki(tmp_path)
    be = Backend(ssl_ctx=server_ssl(pki, client_auth=True))
    await be.start()
    if client_ca == "foreign":
        cert, key = csms_pki(tmp_path / "foreign").client(SID)
    else:
        cert, key = pki.client_cert, pki.client_key
    try:
        async with rig(tmp_path) as r:
            r.ocpp(f"wss://127.0.0.1:{be.port}/ocpp", security_profile=3, password=None,
                   ca_file=str(pki.ca), cert_file=str(cert), key_file=str(key))
            run = await mwc_doctor(r.write(), capsys)
    finally:
        await be.stop()
    status, detail = run.row("ocpp backend")
    if client_ca == "foreign":
        assert run.code == 1 and status == "FAIL"
        assert f"refuse the client certificate {cert}" in detail
    else:
        assert run.code == 0 and status == "PASS", run.out
        assert "security profile 3 (TLS client certificate" in detail
        assert "password" not in detail


@pytest.mark.parametrize("offered", [["ocpp1.6"], None])
async def test_backend_refuses_subprotocol(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           offered: list[str] | None) -> None:
    """A 1.6-only backend answers HTTP 400; one without subprotocols accepts none."""
    async def handler(ws: Any) -> None:
        await ws.wait_closed()

    protos = None if offered is None else [websockets.Subprotocol(p) for p in offered]
    server = await websockets.serve(handler, "127.0.0.1", 0, subprotocols=protos)
    port = server.sockets[0].getsockname()[1]
    try:
        async with rig(tmp_path) as r:
            r.ocpp(f"ws://127.0.0.1:{port}/ocpp")
            run = await mwc_doctor(r.write(), capsys)
    finally:
        server.close()
        await server.wait_closed()
    status, detail = run.row("ocpp backend")
    assert run.code == 1 and status == "FAIL"
    assert detail.startswith("subprotocol ocpp2.0.1 refused")


@pytest.mark.parametrize("peer", ["closed port", "silent", "unknown host"])
async def test_backend_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   peer: str) -> None:
    """Refused, accepted but never answering (the per-check timeout), name not resolvable."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)  # accept, then say nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    refusing = contextlib.ExitStack()  # a closed port, held closed for the test
    port = (refusing.enter_context(closed_port()) if peer == "closed port"
            else server.sockets[0].getsockname()[1])
    host = "backend.invalid" if peer == "unknown host" else "127.0.0.1"
    try:
        async with rig(tmp_path) as r:
            r.ocpp(f"ws://{host}:{port}/ocpp")
            t0 = time.monotonic()
            run = await mwc_doctor(r.write(), capsys, "--timeout", "1")
            wall = time.monotonic() - t0
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
        refusing.close()
    status, detail = run.row("ocpp backend")
    assert run.code == 1 and status == "FAIL"
    # A hang guard only (speed is not asserted in tests); that --timeout 1 bounds the
    # handshake is shown by the silent peer's detail, which names the 0.8 s it was given.
    assert wall < 30.0
    expected = {
        "closed port": f"connection refused by 127.0.0.1:{port} (backend not running or "
                       "wrong port)",
        "silent": f"no websocket handshake with ws://127.0.0.1:{port}/ocpp/{SID} within 0.8 s",
        "unknown host": "DNS: cannot resolve backend.invalid",
    }[peer]
    assert detail.startswith(expected), detail


async def test_vehicle_links_checked_read_only(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Each configured SECC bridge: a plugged truck is reported, an empty gun passes, a
    frozen bridge (heartbeat stuck) fails; the doctor never commands the truck."""
    from power.secc_map import SeccSimCommand
    from sim.secc_server import serve_trucks
    from sim.truck import TruckParams, TruckSim

    trucks = [TruckSim(TruckParams(name="A")), TruckSim(TruckParams(name="B"))]
    trucks[0].plug_in()
    sim = StationSimulator(StationPhysics(2, 2, loads=trucks), realtime=False)
    bridges = serve_trucks(sim, trucks)
    await sim.start()
    try:
        r = Rig(sim, tmp_path, list(sim.ports.modules))
        secc = sim.ports.extra["secc"]
        text = r.write().read_text()
        for g in range(2):
            meter = f'meter = {{ host = "127.0.0.1", port = {sim.ports.meters}, unit = {g + 1} }}\n'
            text = text.replace(meter, meter + f'vehicle = {{ host = "127.0.0.1", port = {secc}, '
                                f"unit = {g + 1} }}\n")
        path = tmp_path / "vehicles.toml"
        path.write_text(text)
        run = await mwc_doctor(path, capsys)
        assert run.code == 0, run.out
        status, detail = run.row("vehicle link gun 1")
        assert status == "PASS" and "vehicle plugged: EV max 1500 A" in detail
        status, detail = run.row("vehicle link gun 2")
        assert status == "PASS" and "no vehicle plugged" in detail
        assert not trucks[0].charging and trucks[0].available_a == 0.0  # nothing written
        bridges.command(SeccSimCommand.SECC_FREEZE, 1)
        run = await mwc_doctor(path, capsys)
        assert run.code == 1
        status, detail = run.row("vehicle link gun 2")
        assert status == "FAIL" and "heartbeat stuck" in detail
    finally:
        await sim.stop()
