"""deploy/: the example configuration, the test PKI script and the Mosquitto configuration,
each exercised for real (openssl, a private mosquitto, ocpp_server), so a key or an ACL that
drifts from the code fails here. The systemd units: tests/test_deploy_units.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import stat
import subprocess
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from csms_fixtures import provision, running_csms, station
from mqtt_fixtures import (
    MOSQUITTO_PASSWD,
    Listener,
    Mosquitto,
    eventually,
    make_pki,
    needs_mosquitto,
    tasks,
)
from ocpp.v201 import call
from pydantic import BaseModel
from websockets.exceptions import InvalidStatus

from controller.config import StationConfig, load_config
from controller.mqtt import MqttConnection
from ocpp_server.config import CsmsConfig
from ocpp_server.config import load_config as load_csms

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "mwc.example.toml"
PKI_SCRIPT = DEPLOY / "pki" / "make-test-pki.sh"
STATION = "MWC-DEPOT-01"  # [station] id of the example
OTHER = "ST-B"


# ---------------------------------------------------------------------------- example TOML
def uncomment_blocks(text: str, start: str, end: str) -> str:
    """Activate the settings ("# key = ...") between ``start``/``end`` marker lines; "## "
    explanations stay comments."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith(start):
            inside = True
        elif line.startswith(end):
            inside = False
        elif inside and line.startswith("# "):
            line = line[2:]
        out.append(line)
    return "\n".join(out) + "\n"


def documented_keys(text: str) -> set[str]:
    """Dotted key paths the file shows, active or commented out (each commented setting is
    one valid TOML line); tables and inline tables/arrays of tables are descended."""
    found: set[str] = set()
    section = ""

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                path = f"{prefix}.{k}" if prefix else k
                found.add(path)
                walk(path, v)
        elif isinstance(value, list):
            for item in value:
                walk(prefix, item)

    for raw in text.splitlines():
        line = raw.lstrip("#").strip()
        if line.startswith("["):
            name = line.strip("[] ").split("]")[0].strip()
            if name.replace("_", "").replace(".", "").isalnum():
                section = name
                found.add(section)
                continue
        with contextlib.suppress(tomllib.TOMLDecodeError):
            walk(section, tomllib.loads(line))
    return found


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field path of ``model``, through nested models, lists and optionals."""

    def nested(ann: Any) -> Iterator[type[BaseModel]]:
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield ann
        for arg in typing.get_args(ann):
            yield from nested(arg)

    keys: set[str] = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        keys.add(path)
        for sub in nested(field.annotation):
            keys |= model_keys(sub, path)
    return keys


def full_example() -> str:
    return uncomment_blocks(EXAMPLE.read_text(), "# >>> optional", "# <<< optional")


def test_example_documents_every_key() -> None:
    expected = model_keys(StationConfig)
    assert {"mqtt.tls.insecure", "mqtt.topics.events", "ocpp.version", "metrics.port",
            "guns.meter.unit", "modules.addresses.host"} <= expected
    text = EXAMPLE.read_text()
    missing = expected - documented_keys(text)
    assert not missing, f"deploy/mwc.example.toml lacks {sorted(missing)}"
    # the check can fail: without one commented-out line its key is reported
    cut = "\n".join(x for x in text.splitlines() if "retry_backoff_repeat_times" not in x)
    assert expected - documented_keys(cut) == {"ocpp.retry_backoff_repeat_times"}


def test_example_active_keys_load() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert cfg.mqtt is None and cfg.ocpp is None  # optional sections stay commented out
    assert cfg.station.id == STATION and len(cfg.guns) == 2 and cfg.modules.count == 48
    assert (cfg.metrics.enabled, cfg.metrics.host, cfg.metrics.port) == (False, "127.0.0.1", 9464)


def test_example_with_optional_sections_loads(tmp_path: Path) -> None:
    path = tmp_path / "full.toml"
    path.write_text(full_example())
    cfg = load_config(path, env={})
    assert cfg.mqtt is not None and cfg.ocpp is not None and cfg.mqtt.tls is not None
    assert cfg.mqtt.port == 8883 and cfg.mqtt.topics.site_limit == "site/depot-1/grid/limit"
    assert cfg.ocpp.version == "2.0.1" and cfg.ocpp.security_profile == 2
    # the deployed database lives in the unit's StateDirectory
    assert cfg.ocpp.database == "/var/lib/mwcharge/ocpp.sqlite3"
    every = {k for k in documented_keys(path.read_text()) if k.split(".")[0] in ("mqtt", "ocpp")}
    assert every == {k for k in model_keys(StationConfig) if k.split(".")[0] in ("mqtt", "ocpp")}


def test_csms_example_loads() -> None:
    cfg = load_csms(DEPLOY / "csms.example.toml")
    shown = documented_keys((DEPLOY / "csms.example.toml").read_text())
    assert model_keys(CsmsConfig) <= shown
    assert cfg.ocpp.tls_port == 8443 and cfg.ocpp.port == -1 and cfg.api.host == "127.0.0.1"


# ---------------------------------------------------------------------------- PKI
def run_pki(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(PKI_SCRIPT), *args], capture_output=True, text=True,
                          check=check, timeout=60)


def make_test_pki(out: Path, *ids: str, extra: tuple[str, ...] = ()) -> Path:
    run_pki(*extra, str(out), *ids)
    return out


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def openssl_verify(ca: Path, purpose: str, *certs: Path) -> str:
    res = subprocess.run(["openssl", "verify", "-CAfile", str(ca), "-purpose", purpose,
                          *map(str, certs)], capture_output=True, text=True, check=False)
    return "OK" if res.returncode == 0 else res.stdout + res.stderr


def test_pki_script_makes_certificates_that_verify(tmp_path: Path) -> None:
    out = make_test_pki(tmp_path / "pki", STATION, OTHER,
                        extra=("--dns", "csms.depot.test", "--dns", "localhost",
                               "--ip", "127.0.0.1", "--ip", "::1", "--days", "30"))
    ca = out / "ca.crt"
    stations = [out / "stations" / f"{s}.crt" for s in (STATION, OTHER)]
    assert openssl_verify(ca, "sslclient", *stations, out / "ems.crt") == "OK"
    assert openssl_verify(ca, "sslserver", out / "csms.crt", out / "broker.crt") == "OK"
    assert "unsuitable certificate purpose" in openssl_verify(ca, "sslserver", stations[0])
    cli, srv = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH
    for path, cn, usage in [(stations[0], STATION, cli), (stations[1], OTHER, cli),
                            (out / "ems.crt", "ems", cli),
                            (out / "csms.crt", "csms.depot.test", srv),
                            (out / "broker.crt", "csms.depot.test", srv)]:
        c = cert(path)
        assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
        assert c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)  # the CSO
        assert c.issuer == cert(ca).subject and c.serial_number > 0
        assert list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
        assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        key = c.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        assert (c.not_valid_after_utc - c.not_valid_before_utc).days == 30
    san = cert(out / "csms.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["csms.depot.test", "localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert cert(ca).extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    keys = [*out.glob("*.key"), *(out / "stations").glob("*.key")]
    assert len(keys) == 6 and all(stat.S_IMODE(k.stat().st_mode) & 0o077 == 0 for k in keys)


def test_pki_script_is_idempotent_and_force_replaces(tmp_path: Path) -> None:
    out = make_test_pki(tmp_path / "pki", STATION)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = run_pki(str(out), STATION, OTHER)  # same PKI, one more station
    assert "kept" in again.stdout
    assert all(p.read_bytes() == b for p, b in before.items())
    assert openssl_verify(out / "ca.crt", "sslclient", out / "stations" / f"{OTHER}.crt") == "OK"
    run_pki("--force", "--key-type", "rsa", str(out), STATION)
    assert (out / "ca.crt").read_bytes() != before[out / "ca.crt"]
    assert not (out / "stations" / f"{OTHER}.crt").exists()  # old CA's certificates are gone
    key = cert(out / "stations" / f"{STATION}.crt").public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    assert openssl_verify(out / "ca.crt", "sslclient", out / "stations" / f"{STATION}.crt") == "OK"


@pytest.mark.parametrize("args", [["ST/1"], ["ST+1"], ["--days", "x", "ST1"],
                                  ["--key-type", "dsa", "ST1"], ["--bogus", "ST1"]])
def test_pki_script_refuses_bad_input(tmp_path: Path, args: list[str]) -> None:
    *opts, last = args
    res = run_pki(*opts, str(tmp_path / "pki"), last, check=False)
    assert res.returncode == 2 and "make-test-pki:" in res.stderr
    assert not (tmp_path / "pki" / "ca.key").exists()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_pki(tmp_path_factory.mktemp("pki"), STATION, OTHER)


async def test_TC_A_07_CSMS_profile_3_with_the_test_pki(tmp_path: Path, pki: Path) -> None:
    """deploy/csms.example.toml with the script's certificates: a station certificate
    (CN = station id) opens that station's profile 3 connection, and no other."""
    cfg = load_csms(DEPLOY / "csms.example.toml")
    cfg.storage.path, cfg.ocpp.host, cfg.ocpp.tls_port = str(tmp_path / "csms.db"), "127.0.0.1", 0
    cfg.ocpp.certfile, cfg.ocpp.keyfile = str(pki / "csms.crt"), str(pki / "csms.key")
    cfg.ocpp.client_ca, cfg.api.port = str(pki / "ca.crt"), -1

    def ctx(name: str) -> ssl.SSLContext:
        c = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        c.load_cert_chain(*map(str, identity(pki, name)))
        return c

    async with running_csms(cfg) as server:
        await provision(server, STATION, profile=3, password=None)
        url = f"wss://localhost:{server.tls_port}"
        async with station(url, STATION, password=None, ssl_ctx=ctx(STATION)) as cp:
            boot = call.BootNotification(charging_station={"model": "M", "vendor_name": "V"},
                                         reason="PowerUp")
            assert (await cp.call(boot, suppress=False)).status == "Accepted"
        with pytest.raises(InvalidStatus) as err:
            async with station(url, STATION, password=None, ssl_ctx=ctx(OTHER)):
                pass
        assert err.value.response.status_code == 401


# ---------------------------------------------------------------------------- Mosquitto
def render_broker(directory: Path, pki: Path, mode: str = "cert") -> Mosquitto:
    """deploy/mosquitto with /etc/mosquitto → ``directory`` and the listener on a free
    loopback port; ``mode="password"`` switches the auth blocks as the file describes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "certs").mkdir(exist_ok=True)
    for name in ("ca.crt", "broker.crt", "broker.key"):
        shutil.copy(pki / name, directory / "certs" / name)
    conf = (DEPLOY / "mosquitto" / "mwcharge.conf").read_text()
    acl = (DEPLOY / "mosquitto" / "mwcharge.acl").read_text()
    assert "\nlistener 8883\n" in conf and "allow_anonymous false" in conf
    b = Mosquitto(directory)
    conf = conf.replace("/etc/mosquitto/", f"{directory}/").replace(
        "\nlistener 8883\n", f"\nlistener {b.port} 127.0.0.1\n")
    if mode == "password":
        cert_block = "require_certificate true\nuse_identity_as_username true\n"
        assert cert_block in conf
        conf = conf.replace(cert_block, "").replace("\n# <<< auth: passwords", "\n# <<< pw")
        conf = uncomment_blocks(conf, "# >>> auth: passwords", "# <<< pw")
        pw = directory / "mwcharge.passwd"
        pw.write_text("")
        for user in (STATION, OTHER, "ems"):
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, f"pw-{user}"], check=True,
                           capture_output=True)
    b.conf.write_text(f"{'user root' if os.geteuid() == 0 else ''}\npersistence false\n"
                      f"log_dest file {directory / 'mosquitto.log'}\nlog_type all\n{conf}")
    (directory / "mwcharge.acl").write_text(acl)
    return b


@contextlib.contextmanager
def running(b: Mosquitto) -> Iterator[Mosquitto]:
    b.start()
    try:
        yield b
    finally:
        b.stop()


def tls(ca: Path, cert_key: tuple[Path, Path] | None = None, **kw: Any) -> dict[str, Any]:
    """aiomqtt.Client keywords: TLS trusting ``ca``, optionally with a client certificate."""
    certfile, keyfile = (str(cert_key[0]), str(cert_key[1])) if cert_key else (None, None)
    return {"tls_params": aiomqtt.TLSParameters(
        ca_certs=str(ca), certfile=certfile, keyfile=keyfile, cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT), "timeout": 3, **kw}


def client(b: Mosquitto, ca: Path, cert_key: tuple[Path, Path] | None = None,
           **kw: Any) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", b.port, **tls(ca, cert_key, **kw))


def identity(pki: Path, name: str) -> tuple[Path, Path]:
    base = pki if name == "ems" else pki / "stations"
    return base / f"{name}.crt", base / f"{name}.key"


def got(listener: Listener, topic: str | None = None) -> list[bytes]:
    return [p for t, p, _, _ in listener.messages if topic in (None, t)]


def station_config(pki: Path, port: int, tmp: Path) -> StationConfig:
    """The example with its [mqtt] section on, pointed at the test broker through the
    documented MWC__ environment overrides."""
    path = tmp / "mwc.toml"
    path.write_text(full_example())
    crt, key = identity(pki, STATION)
    return load_config(path, env={
        "MWC__MQTT__HOST": "localhost", "MWC__MQTT__PORT": str(port),
        "MWC__MQTT__TLS__CA_FILE": str(pki / "ca.crt"), "MWC__MQTT__TLS__CERT_FILE": str(crt),
        "MWC__MQTT__TLS__KEY_FILE": str(key), "MWC__MQTT__RECONNECT_MIN_S": "0.05",
        "MWC__MQTT__RECONNECT_MAX_S": "0.2"})


@needs_mosquitto
async def test_mosquitto_station_cert_acl(tmp_path: Path, pki: Path) -> None:
    with running(render_broker(tmp_path / "broker", pki)) as b:
        cfg = station_config(pki, b.port, tmp_path)
        assert cfg.mqtt is not None
        conn = MqttConnection(cfg.mqtt, STATION)
        limits: list[bytes] = []
        conn.subscribe(cfg.mqtt.topic("grid_limit", STATION), lambda _t, p: limits.append(p))
        mine, theirs = f"mwc/{STATION}", f"mwc/{OTHER}"
        ca = pki / "ca.crt"
        async with Listener(b, "mwc/+/status", "mwc/+/telemetry", "mwc/+/events",
                            **tls(ca, identity(pki, "ems"))) as ems, \
                Listener(b, f"{mine}/grid/limit", f"{theirs}/grid/limit",
                         **tls(ca, identity(pki, OTHER))) as other, tasks(conn.run()):
            await asyncio.wait_for(conn.wait_connected(), 5)
            # the real station client: retained status (and its will) on its own topic
            online = await eventually(lambda: got(ems, f"{mine}/status"))
            assert json.loads(online[0])["state"] == "online"
            await conn.publish(f"{mine}/telemetry", b'{"n": 1}', qos=1)
            assert await eventually(lambda: got(ems, f"{mine}/telemetry"))
            await ems.publish(f"{mine}/grid/limit", b"limit-1")
            await eventually(lambda: limits)
            # another station cannot read this station's limit: only its own arrives
            await ems.publish(f"{theirs}/grid/limit", b"limit-B")
            await eventually(lambda: got(other, f"{theirs}/grid/limit"))
            assert got(other, f"{mine}/grid/limit") == []
            # ... nor publish on this station's topics, nor set its own limit
            for topic in ("telemetry", "events", "status", "grid/limit"):
                await other.publish(f"{mine}/{topic}", b"forged")
            await other.publish(f"{theirs}/grid/limit", b"forged")
            await other.publish(f"{theirs}/telemetry", b"real")
            await eventually(lambda: got(ems, f"{theirs}/telemetry"))
            await ems.publish(f"{mine}/grid/limit", b"limit-2")
            await eventually(lambda: len(limits) == 2)
            assert limits == [b"limit-1", b"limit-2"]
            assert b"forged" not in got(ems) + got(other)


async def assert_refused(b: Mosquitto, c: aiomqtt.Client, why: str) -> None:
    """Connecting fails; ``why`` is in the client's error or else in the broker's log."""
    start = len(b.log())
    with pytest.raises(aiomqtt.MqttError) as err:
        async with c:
            await c.publish(f"mwc/{STATION}/telemetry", b"x", qos=1)
    if why not in str(err.value):
        await eventually(lambda: why in b.log()[start:])


@needs_mosquitto
async def test_mosquitto_refuses_clients_without_trust(tmp_path: Path, pki: Path) -> None:
    foreign = make_pki(tmp_path / "foreign")  # another CA, its own client certificate
    with running(render_broker(tmp_path / "broker", pki)) as b:
        ca = pki / "ca.crt"
        await assert_refused(b, client(b, ca, timeout=1), "peer did not return a certificate")
        await assert_refused(b, client(b, ca, (foreign.client_cert, foreign.client_key),
                                       timeout=1), "certificate verify failed")
        await assert_refused(b, client(b, foreign.ca, identity(pki, STATION)),  # distrusts us
                             "CERTIFICATE_VERIFY_FAILED")
        async with client(b, ca, identity(pki, STATION)) as ok:
            await ok.publish(f"mwc/{STATION}/telemetry", b"x", qos=1)


@needs_mosquitto
async def test_mosquitto_password_variant(tmp_path: Path, pki: Path) -> None:
    with running(render_broker(tmp_path / "broker", pki, mode="password")) as b:
        creds: list[dict[str, Any]] = [{}, {"username": STATION, "password": "wrong"}]
        for kw in creds:  # anonymous, wrong password
            await assert_refused(b, client(b, pki / "ca.crt", **kw), "not authorised")
        def login(user: str) -> dict[str, Any]:
            return tls(pki / "ca.crt", username=user, password=f"pw-{user}")

        mine = f"mwc/{STATION}"
        async with Listener(b, "mwc/+/telemetry", **login("ems")) as ems, \
                Listener(b, f"{mine}/grid/limit", **login(STATION)) as st, \
                Listener(b, **login(OTHER)) as other:
            await other.publish(f"{mine}/grid/limit", b"forged")
            await other.publish(f"{mine}/telemetry", b"forged")
            await ems.publish(f"{mine}/grid/limit", b"limit")
            await st.publish(f"{mine}/telemetry", b"real")
            await eventually(lambda: got(st) and got(ems))
            assert got(st, f"{mine}/grid/limit") == got(st) == [b"limit"]
            assert got(ems, f"{mine}/telemetry") == got(ems) == [b"real"]
