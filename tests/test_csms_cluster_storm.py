"""Connection storms are admitted at the configured rate (``[ocpp] admit_rate_per_s``):
the excess gets HTTP 503 with Retry-After, comes back, and every station gets in."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import websockets
from csms_fixtures import make_config, provision, running_csms
from websockets.exceptions import InvalidStatus


async def test_storm_is_admitted_at_the_configured_rate(tmp_path: Path) -> None:
    n, rate, burst = 40, 40.0, 10
    cfg = make_config(tmp_path, admit_rate_per_s=rate, admit_burst=burst)
    async with running_csms(cfg) as server:
        for i in range(n):
            await provision(server, f"ST-{i:02d}", password=None, profile=0)
        refused: list[int] = []
        admitted: list[float] = []
        stalls: list[float] = []
        stop = asyncio.Event()

        async def watch() -> None:  # the loop keeps turning while the storm is let in
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                t = loop.time()
                await asyncio.sleep(0.01)
                stalls.append(loop.time() - t - 0.01)

        async def station(i: int) -> websockets.ClientConnection:
            while True:
                try:
                    ws = await websockets.connect(
                        f"ws://127.0.0.1:{server.ocpp_port}/ocpp/ST-{i:02d}",
                        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                        open_timeout=10)
                except InvalidStatus as exc:
                    assert exc.response.status_code == 503
                    assert int(exc.response.headers["Retry-After"]) >= 1
                    refused.append(i)
                    await asyncio.sleep(0.2)  # stations back off; 1 s here would slow the test
                    continue
                admitted.append(time.monotonic())
                return ws

        watcher = asyncio.create_task(watch())
        t0 = time.monotonic()
        conns = await asyncio.wait_for(asyncio.gather(*(station(i) for i in range(n))), 30)
        stop.set()
        await watcher
        try:
            assert len(server.backend.sessions) == n or len(conns) == n
            assert refused, "the burst should have been exceeded"
            # no faster than burst + rate × time (10 % slack for timer granularity)
            spread = max(admitted) - t0
            assert n - burst <= rate * spread * 1.1 + 1
            # the 100 ms stall goal is measured by bench/csms_load.py --storm; here only a
            # gross block of the loop (a storm admitted all at once) fails the test
            assert max(stalls) < 1.0, max(stalls)
        finally:
            for ws in conns:
                await ws.close()
