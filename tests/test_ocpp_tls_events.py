"""A04 critical security events of the TLS layer: a CSMS that offers only TLS < 1.2
(InvalidTLSVersion) or only cipher suites we do not allow (InvalidTLSCipherSuite)."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from pathlib import Path

import pytest
import websockets
from ocpp_fixtures import SimWall, make_pki, ocpp_config, shutdown, started


def _server_ctx(tmp_path: Path, case: str) -> tuple[ssl.SSLContext, Path]:
    pki = make_pki(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if case == "InvalidTLSVersion":
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        else:  # a TLS 1.2 suite without forward-secure AEAD: SHA-1 MAC, not in our list
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA")
    return ctx, pki.ca


@pytest.mark.parametrize("case", ["InvalidTLSVersion", "InvalidTLSCipherSuite"])
async def test_A04_weak_tls_of_the_csms_is_a_critical_security_event(tmp_path: Path,
                                                                 case: str) -> None:
    ctx, ca = _server_ctx(tmp_path, case)

    async def handler(ws: websockets.ServerConnection) -> None:
        await ws.wait_closed()

    server = await websockets.serve(handler, "127.0.0.1", 0, ssl=ctx,
                                    subprotocols=[websockets.Subprotocol("ocpp2.0.1")])
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    cfg = ocpp_config(tmp_path, port, url=f"wss://127.0.0.1:{port}/ocpp",
                      security_profile=2, ca_file=str(ca))
    svc, _st, task = await started(cfg, SimWall())
    try:
        for _ in range(300):
            kinds = [m.payload["type"] for m in svc.queue.all()
                     if m.action == "SecurityEventNotification"]
            if case in kinds:
                break
            await asyncio.sleep(0.02)
        assert kinds.count(case) == 1, kinds  # once per run, not once per attempt
        assert not svc.online
    finally:
        await shutdown(svc, task)
        server.close()
