"""Helpers for the OCPP 1.6J client tests: a 1.6 test backend built from ``ocpp.v16`` on a
real websocket (the 2.0.1 :class:`ocpp_fixtures.Backend` with another ChargePoint and
subprotocol), the client started on a fake station, the station's event sequences (``finish``
and ``run_for`` are the 2.0.1 tests')."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ocpp.exceptions import InternalError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp_fixtures import Backend, Csms, FakeStation, SimWall, ocpp_config, station_config
from test_ocpp_transactions import finish, run_for  # the station's sequences, shared

from controller.ocpp.config import OcppConfig
from controller.ocpp.v16.service import Ocpp16Service
from controller.session import GunState

__all__ = ["Backend16", "charge", "config16", "finish", "online16", "run_for", "shutdown16",
           "started16", "until"]


def _ack(action: str, name: str) -> Any:
    """A handler (attribute ``name``: the library routes by function name) that records
    the CALL and answers with the empty confirmation."""
    def handler(self: Csms16, **kw: Any) -> Any:
        self._rec(action, kw)
        return getattr(call_result, action)()
    handler.__name__ = handler.__qualname__ = name
    return on(action)(handler)


class Csms16(ChargePoint):  # type: ignore[misc]
    """The 1.6 test backend's view of one station: records every CALL it receives (the
    recording of the 2.0.1 test backend's ChargePoint, another protocol)."""

    _rec = Csms._rec  # plain recording, no super()
    status = _ack("StatusNotification", "status")
    meter = _ack("MeterValues", "meter")
    security = _ack("SecurityEventNotification", "security")
    diag = _ack("DiagnosticsStatusNotification", "diag")

    def __init__(self, cid: str, ws: Any, backend: Backend16) -> None:
        super().__init__(cid, ws, response_timeout=5, logger=logging.getLogger("csms16"))
        self.backend = backend

    async def route_message(self, raw_msg: str) -> None:
        self.backend.raw.append(raw_msg)
        await super().route_message(raw_msg)

    def _info(self, tag: str) -> dict[str, Any]:
        return {"status": "Accepted" if tag in self.backend.tokens else "Invalid"}

    @on("BootNotification")
    def boot(self, **kw: Any) -> Any:
        self._rec("BootNotification", kw)
        b = self.backend
        status = b.boot.pop(0) if len(b.boot) > 1 else b.boot[0]
        return call_result.BootNotification(current_time=b.now(), interval=b.interval,
                                            status=status)

    @on("Heartbeat")
    def heartbeat(self, **kw: Any) -> Any:
        self._rec("Heartbeat", kw)
        return call_result.Heartbeat(current_time=self.backend.now())

    @on("Authorize")
    def authorize(self, **kw: Any) -> Any:
        self._rec("Authorize", kw)
        return call_result.Authorize(id_tag_info=self._info(kw["id_tag"]))

    @on("StartTransaction")
    def start_tx(self, **kw: Any) -> Any:
        self._rec("StartTransaction", kw)
        self.backend.next_tx += 1
        return call_result.StartTransaction(transaction_id=self.backend.next_tx,
                                            id_tag_info=self._info(kw["id_tag"]))

    @on("StopTransaction")
    def stop_tx(self, **kw: Any) -> Any:
        self._rec("StopTransaction", kw)
        if self.backend.reject_stop > 0:
            self.backend.reject_stop -= 1
            raise InternalError(description="test backend refuses")
        return call_result.StopTransaction()


@dataclass
class Backend16(Backend):
    """A 1.6J CSMS on a real websocket server (optionally TLS, optionally Basic auth)."""

    subprotocol: ClassVar[str] = "ocpp1.6"
    next_tx: int = 100
    reject_stop: int = 0
    tokens: set[str] = field(default_factory=lambda: {"TRUCK-1"})

    def make_cp(self, cid: str, ws: Any) -> Any:
        return Csms16(cid, ws, self)

    def tx_msgs(self) -> list[tuple[str, dict[str, Any]]]:
        return [(a, kw) for a, kw in self.got
                if a in ("StartTransaction", "MeterValues", "StopTransaction")
                and (a != "MeterValues" or "transaction_id" in kw)]


def config16(tmp: Path, port: int, **kw: Any) -> OcppConfig:
    kw.setdefault("password", "s3cret-pass-16-chars")
    return ocpp_config(tmp, port, version="1.6", **kw)


async def started16(cfg: OcppConfig, wall: SimWall) -> tuple[Ocpp16Service, FakeStation,
                                                              asyncio.Task[None]]:
    svc = Ocpp16Service(cfg, station_config(), wall=wall)
    st = FakeStation(wall)
    svc.attach(st)
    return svc, st, asyncio.ensure_future(svc.run())


async def shutdown16(svc: Ocpp16Service, task: asyncio.Task[None]) -> None:
    await svc.close()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


@contextlib.asynccontextmanager
async def online16(tmp: Path, backend: Backend16 | None = None, **cfg: Any) -> AsyncIterator[
        tuple[Backend16, Ocpp16Service, FakeStation, SimWall]]:
    """A 1.6 test backend and a booted client on a fake station, both stopped afterwards."""
    be = backend or Backend16()
    await be.start()
    wall = SimWall()
    svc, st, task = await started16(config16(tmp, be.port, **cfg), wall)
    try:
        await be.wait_for(lambda: svc.online and len(be.of("StatusNotification")) >= 3
                          and len(svc.queue) == 0)  # the start-up traffic is over
        yield be, svc, st, wall
    finally:
        await shutdown16(svc, task)
        await be.stop()


def charge(st: FakeStation, g: int = 0, token: str = "TRUCK-1") -> None:
    """The station's event sequence from plug-in to energy transfer."""
    st.go(g, GunState.PREPARING, "vehicle plugged", token)
    st.event("authorized", g, token=token)
    st.go(g, GunState.CABLE_CHECK, "authorized", token)
    st.go(g, GunState.PRECHARGE, "cable check passed", token)
    st.event("charging_started", g, token=token)
    st.go(g, GunState.CHARGING, "pre-charge done", token)


async def until(pred: Any, timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not pred():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(loop(), timeout)
