"""OCPP 1.6J security extension: Basic auth (profile 1), TLS (profiles 2 and 3), a changed
AuthorizationKey used at the next connection, SecurityEventNotification."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ocpp.v16 import call
from ocpp16_fixtures import Backend16, config16, shutdown16, started16, until
from ocpp_fixtures import Pki, SimWall, make_pki, server_ssl

from controller import logs
from controller.ocpp.connection import auth_headers
from controller.ocpp.v16.service import Ocpp16Service

KEY = "s3cret-pass-16-chars"


async def test_profile1_wrong_key_refused_then_authorization_key_changed(
        tmp_path: Path) -> None:
    be = Backend16(password="another-key-of-20-ch")
    await be.start()
    svc, _st, task = await started16(config16(tmp_path, be.port), SimWall())
    try:
        await be.wait_for(lambda: len(be.auth_seen) >= 2)  # refused, retried with back-off
        assert not be.of("BootNotification") and not svc.online
        assert be.auth_seen[0] == auth_headers(1, "MWC-T1", KEY)["Authorization"]
    finally:
        await shutdown16(svc, task)
    be.password = KEY
    svc, _st, task = await started16(config16(tmp_path, be.port), SimWall())
    try:
        await be.wait_for(lambda: svc.online and bool(be.of("SecurityEventNotification")))
        r = await be.cp.call(call.ChangeConfiguration(key="AuthorizationKey",
                                                      value="rotated-key-0123456789"),
                             suppress=False)
        assert r.status == "Accepted"
        assert "rotated-key-0123456789" not in logs.scrub("key rotated-key-0123456789")
        be.password = "rotated-key-0123456789"
        seen, statuses = len(be.auth_seen), len(be.of("StatusNotification"))
        await be.cp._connection.close()  # the next connection must use the new key
        await be.wait_for(lambda: len(be.of("StatusNotification")) == statuses + 3)
        assert len(be.of("BootNotification")) == 1  # a reconnect is not a reboot
        assert len(be.auth_seen) == seen + 1
        assert be.auth_seen[-1] == auth_headers(1, "MWC-T1",
                                                "rotated-key-0123456789")["Authorization"]
    finally:
        await shutdown16(svc, task)
        await be.stop()


async def tls(tmp_path: Path, pki: Pki, client_auth: bool, ca: Path, **kw: Any
              ) -> tuple[Backend16, Ocpp16Service, asyncio.Task[None]]:
    """A TLS backend with the test PKI's server certificate and a client trusting ``ca``."""
    be = Backend16(password=None if client_auth else KEY,
                   ssl_ctx=server_ssl(pki, client_auth=client_auth))
    await be.start()
    cfg = config16(tmp_path, be.port, url=f"wss://127.0.0.1:{be.port}/ocpp",
                   ca_file=str(ca), **kw)
    svc, _st, task = await started16(cfg, SimWall())
    return be, svc, task


async def test_profile2_tls_with_basic_auth(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    be, svc, task = await tls(tmp_path, pki, False, pki.ca, security_profile=2)
    try:
        await be.wait_for(lambda: svc.online and bool(be.of("SecurityEventNotification")))
        assert be.of("SecurityEventNotification")[0]["type"] == "StartupOfTheDevice"
        r = await be.cp.call(call.GetConfiguration(key=["SecurityProfile"]), suppress=False)
        assert r.configuration_key == [{"key": "SecurityProfile", "readonly": True,
                                        "value": "2"}]
        r = await be.cp.call(call.ChangeConfiguration(key="SecurityProfile", value="3"),
                             suppress=False)
        assert r.status == "Rejected"  # another profile needs another URL / CA: config file
    finally:
        await shutdown16(svc, task)
        await be.stop()


async def test_profile2_untrusted_server_certificate_reported(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    be, svc, task = await tls(tmp_path, pki, False, pki.other_ca, security_profile=2)
    try:
        await until(lambda: any(m.payload["type"] == "InvalidCsmsCertificate"
                                for m in svc.queue.all()))
        await asyncio.sleep(0.2)  # more failed attempts (no back-off wait in the tests)
        assert not svc.online and not be.of("BootNotification")
        types = [m.payload["type"] for m in svc.queue.all()]
        assert types.count("InvalidCsmsCertificate") == 1  # once, not per attempt
    finally:
        await shutdown16(svc, task)
        await be.stop()


async def test_profile3_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    be, svc, task = await tls(tmp_path, pki, True, pki.ca, security_profile=3, password=None,
                              cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    try:
        await be.wait_for(lambda: svc.online)
        assert be.auth_seen == [None]  # no Basic auth with a client certificate
    finally:
        await shutdown16(svc, task)
        await be.stop()
