"""Station authentication at the handshake: security profiles 1-3, 401/400/404, lab mode."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import structlog
import websockets
from csms_fixtures import (
    PASSWORD,
    Pki,
    make_config,
    make_pki,
    provision,
    running_csms,
    station,
)
from ocpp.v201 import call
from websockets.exceptions import InvalidHandshake, InvalidStatus

BOOT = call.BootNotification(charging_station={"model": "M", "vendor_name": "V"},
                             reason="PowerUp")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def csms(tmp_path: Path, pki: Pki) -> Any:
    cfg = make_config(tmp_path, tls_port=0, certfile=str(pki.server_cert),
                      keyfile=str(pki.server_key), client_ca=str(pki.ca_cert))
    async with running_csms(cfg) as server:
        await provision(server, "P1", profile=1)
        await provision(server, "P2", profile=2)
        await provision(server, "P3", profile=3, password=None)
        yield server


def ws(server: Any) -> str:
    return f"ws://127.0.0.1:{server.ocpp_port}"


def wss(server: Any) -> str:
    return f"wss://localhost:{server.tls_port}"


async def status_of(url: str, station_id: str, **kw: Any) -> int:
    with pytest.raises(InvalidStatus) as err:
        async with station(url, station_id, **kw):
            pass
    return int(err.value.response.status_code)


async def test_TC_A_01_CSMS_basic_auth_valid(csms: Any) -> None:
    with structlog.testing.capture_logs() as logs:
        async with station(ws(csms), "P1") as cp:
            assert (await cp.call(BOOT, suppress=False)).status == "Accepted"
        assert await status_of(ws(csms), "P1", password="wrong-password-123") == 401
    assert PASSWORD not in repr(logs) and "wrong-password-123" not in repr(logs)
    db = Path(csms.cfg.storage.path)
    stored = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))  # db and WAL
    assert PASSWORD.encode() not in stored and b"scrypt$" in stored


async def test_TC_A_02_CSMS_username_must_equal_station_id(csms: Any) -> None:
    await provision(csms, "OTHER")
    import base64
    hdr = {"Authorization": "Basic " + base64.b64encode(f"OTHER:{PASSWORD}".encode()).decode()}
    with pytest.raises(InvalidStatus) as err:
        async with websockets.connect(f"{ws(csms)}/ocpp/P1", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                      additional_headers=hdr):
            pass
    assert err.value.response.status_code == 401
    assert "Basic" in err.value.response.headers["WWW-Authenticate"]


async def test_TC_A_03_CSMS_invalid_password_unknown_station_no_credentials(csms: Any) -> None:
    assert await status_of(ws(csms), "P1", password="not-the-password") == 401
    assert await status_of(ws(csms), "NOBODY") == 401
    assert await status_of(ws(csms), "P1", password=None) == 401


async def test_handshake_refuses_bad_subprotocol_and_path(csms: Any) -> None:
    assert await status_of(ws(csms), "P1", subprotocol="ocpp2.1") == 400
    with pytest.raises(InvalidStatus) as err:  # no subprotocol offered at all
        async with websockets.connect(f"{ws(csms)}/ocpp/P1"):
            pass
    assert err.value.response.status_code == 400
    assert b"ocpp2.0.1" in err.value.response.body
    with pytest.raises(InvalidStatus) as err:
        async with websockets.connect(f"{ws(csms)}/elsewhere/P1", subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
            pass
    assert err.value.response.status_code == 404


async def test_TC_A_04_CSMS_profile_2_needs_tls(csms: Any, pki: Pki) -> None:
    assert await status_of(ws(csms), "P2") == 401  # right password, but not over TLS
    async with station(wss(csms), "P2", ssl_ctx=pki.client_context(None)) as cp:
        assert (await cp.call(BOOT, suppress=False)).status == "Accepted"
    assert await status_of(wss(csms), "P2", password="bad-password-1",
                           ssl_ctx=pki.client_context(None)) == 401


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_TC_A_06_CSMS_tls_version_too_low_is_refused(csms: Any, pki: Pki) -> None:
    ctx = pki.client_context(None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError, InvalidHandshake)):
        async with station(wss(csms), "P2", ssl_ctx=ctx):
            pass


async def test_TC_A_07_CSMS_client_certificate_valid(csms: Any, pki: Pki) -> None:
    async with station(wss(csms), "P3", password=None, ssl_ctx=pki.client_context("P3")) as cp:
        assert (await cp.call(BOOT, suppress=False)).status == "Accepted"
    # A valid certificate for another station does not open this one.
    assert await status_of(wss(csms), "P3", password=None,
                           ssl_ctx=pki.client_context("P1")) == 401
    assert await status_of(wss(csms), "P3", password=None,
                           ssl_ctx=pki.client_context(None)) == 401


async def test_TC_A_08_CSMS_client_certificate_invalid(csms: Any, pki: Pki) -> None:
    ctx = pki.client_context("P3", ca=False)  # self-signed: not from the CA
    with pytest.raises((ssl.SSLError, OSError, InvalidHandshake, EOFError)):
        async with station(wss(csms), "P3", password=None, ssl_ctx=ctx) as cp:
            await cp.call(BOOT, suppress=False)


async def test_auto_registration_for_labs(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, auto_register=True)
    async with running_csms(cfg) as server:
        async with station(ws(server), "NEWLAB") as cp:
            assert (await cp.call(BOOT, suppress=False)).status == "Pending"
        record = await server.repo.get_station("NEWLAB")
        assert record is not None and record.security_profile == 1 and not record.approved
        # The password it presented first is now the one it must present (TOFU).
        assert await status_of(ws(server), "NEWLAB", password="another-password") == 401
    cfg = make_config(tmp_path / "off")
    async with running_csms(cfg) as server:  # off by default
        assert await status_of(ws(server), "NEWLAB") == 401
