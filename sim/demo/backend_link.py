"""The station's OCPP 2.0.1 client (``controller.ocpp.v201.service``) as the demo's backend link.

``OcppLink`` starts the client next to the station (same event loop, same simulated clock for
timestamps and sampling), takes the backend away (the ``ocpp_server`` process is stopped)
and brings it back (restarted on the same ports and database), and at the end reads what the
backend stored through its REST API, for the ``transactions_complete`` and
``energy_matches_meters`` verdicts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from sim.demo.services import Backend
from sim.demo.tasks import join


async def _logged(what: str, step: Awaitable[Any]) -> None:
    """Await ``step``; a failure is logged (the demo goes on), never swallowed."""
    try:
        await step
    except Exception as exc:
        from controller import logs

        logs.get_logger("sim.demo").warning("demo backend step failed", step=what,
                                            error=repr(exc)[:200])


def available() -> str | None:
    """None when the OCPP station client can be used, else why not."""
    try:
        from controller.ocpp.v201.service import OcppService  # noqa: F401
    except Exception as exc:  # not there yet, or broken while it is being built
        return f"OCPP station client not importable ({type(exc).__name__}: {exc})"
    return None


class OcppLink:
    def __init__(self, backend: Backend, station: Any, wall: Any, directory: Path) -> None:
        self.backend = backend
        self.station = station
        self.wall = wall  # simulated wall clock, epoch seconds
        self.directory = directory
        self.svc: Any = None
        self.task: asyncio.Task[None] | None = None
        self._switch: asyncio.Task[None] | None = None
        self.offline_periods = 0

    async def start(self, timeout: float = 20.0) -> None:
        from pydantic import SecretStr

        from controller.ocpp.config import OcppConfig
        from controller.ocpp.v201.service import OcppService

        self.directory.mkdir(parents=True, exist_ok=True)
        cfg = OcppConfig(url=f"{self.backend.ocpp_url}/ocpp", password=SecretStr(Backend.PASSWORD),
                         database=str(self.directory / "station.sqlite3"),
                         sampled_interval_s=60.0, retry_backoff_wait_minimum_s=0.5,
                         retry_backoff_random_range_s=0.5, response_timeout_s=10.0,
                         message_attempt_interval_s=1.0, heartbeat_interval_s=30.0)
        self.svc = OcppService(cfg, self.station.config,
                               wall=lambda: dt.datetime.fromtimestamp(self.wall(), dt.UTC))
        self.svc.attach(self.station)
        self.task = asyncio.create_task(self.svc.run())
        deadline = time.monotonic() + timeout
        while not self.svc.online:
            if time.monotonic() > deadline:
                raise RuntimeError("the OCPP client did not come online")
            await asyncio.sleep(0.05)

    def set_online(self, online: bool) -> None:
        """Take the backend away (stop its process) or bring it back (restart it)."""
        prev = self._switch

        async def go() -> None:
            if prev is not None:
                await _logged("previous backend switch", prev)
            if online:
                await self.backend.serve()
            else:
                self.offline_periods += 1
                await asyncio.to_thread(self.backend.stop)

        self._switch = asyncio.ensure_future(go())

    async def drain(self, timeout: float = 30.0) -> bool:
        """Wait until the backend is back and the client's queue is empty."""
        if self._switch is not None:
            await _logged("backend switch", self._switch)
        if self.backend.proc is None:
            await self.backend.serve()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.svc.online and len(self.svc.queue) == 0:
                await asyncio.sleep(0.3)  # the last reply is stored
                return True
            await asyncio.sleep(0.05)
        return False

    async def transactions(self, station_id: str) -> list[dict[str, Any]]:
        import httpx

        headers = {"Authorization": f"Bearer {Backend.API_TOKEN}"}
        async with httpx.AsyncClient(base_url=self.backend.api_url, headers=headers,
                                     timeout=10) as client:
            reply = await client.get("/api/v1/transactions", params={"station_id": station_id})
            reply.raise_for_status()
            listed = reply.json()
            out = []
            for tx in listed:
                r = await client.get(f"/api/v1/transactions/{tx['id']}")
                out.append(r.json())
            return out

    async def stop(self) -> None:
        if self._switch is not None:
            await join(self._switch, "backend switch")
        if self.svc is not None:
            await _logged("OCPP client close", self.svc.close())
        if self.task is not None:
            self.task.cancel()
            await join(self.task, "OCPP client")
