"""The backend process under load: the event loop's work per iteration bounded, the garbage
collector kept from stalling it, and a reconnect storm spread by the admission slots handed
out with HTTP 503."""

from __future__ import annotations

import asyncio
import gc
import json
import selectors
import socket
import weakref
from pathlib import Path

import websockets
from csms_fixtures import make_config, provision, running_csms

from ocpp_server.app import GC_YOUNG, MAX_EVENTS_PER_POLL, GcPauses, fair_event_loop
from ocpp_server.auth import MAX_RETRY_AFTER, Authenticator
from ocpp_server.session import Backend
from ocpp_server.storage import SqliteRepository


async def test_collector_is_tuned_while_serving_and_restored_after(tmp_path: Path) -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    async with running_csms(make_config(tmp_path)) as server:
        assert gc.get_threshold() == (GC_YOUNG, *before[1:])
        assert gc.get_freeze_count() > 0  # what the process holds at start is never walked
        assert server.gc_pauses in gc.callbacks
        server.gc_pauses.warn_s = 0.0  # every collection counts as a pause now
        gc.collect()
        assert server.gc_pauses.pauses[-1][1] == 2  # (when, generation, seconds)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert not any(isinstance(cb, GcPauses) for cb in gc.callbacks)


async def test_two_servers_in_one_process_restore_the_collector_once(tmp_path: Path) -> None:
    before = gc.get_threshold()
    async with running_csms(make_config(tmp_path / "a")):
        async with running_csms(make_config(tmp_path / "b")):
            pass
        assert gc.get_threshold()[0] == GC_YOUNG  # the first is still serving
    assert gc.get_threshold() == before


def test_refused_stations_are_given_distinct_slots(tmp_path: Path) -> None:
    """A storm of 10,000 at 300/s: Retry-After spreads the fleet over the ~34 s admission
    takes instead of bringing all of it back every second; never beyond MAX_RETRY_AFTER."""
    cfg = make_config(tmp_path, admit_rate_per_s=300.0, admit_burst=200)
    auth = Authenticator(Backend(cfg, SqliteRepository(tmp_path / "x.db")), tls=False)
    waits = [auth._retry_after() for _ in range(10_000)]
    assert waits[0] in (1, 2) and waits[299] in (1, 2, 3)
    assert 33 <= waits[-1] <= 35
    assert waits == sorted(waits)
    assert max(waits.count(w) for w in set(waits)) <= 302  # about `rate` per second
    assert max(auth._retry_after() for _ in range(100_000)) == MAX_RETRY_AFTER


async def test_a_closed_session_is_freed_without_the_garbage_collector(tmp_path: Path) -> None:
    """A storm of disconnects must not become a mountain of cyclic garbage: once its
    connection ends, a session is freed by reference counting alone."""
    async with running_csms(make_config(tmp_path)) as server:
        await provision(server, "ST-1", password=None, profile=0)
        gc.collect()
        gc.disable()
        try:
            ws = await websockets.connect(f"ws://127.0.0.1:{server.ocpp_port}/ocpp/ST-1",
                                          subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]
            await ws.send('[2,"1","Heartbeat",{}]')
            assert json.loads(await ws.recv())[0] == 3
            session = weakref.ref(server.backend.sessions["ST-1"])
            await ws.close()
            for _ in range(100):
                if "ST-1" not in server.backend.sessions and session() is None:
                    break
                await asyncio.sleep(0.02)
            assert session() is None, gc.get_referrers(session())
        finally:
            gc.enable()


def test_the_serving_loop_takes_a_bounded_number_of_sockets_per_poll_and_starves_none() -> None:
    """10,000 stations dropping at once must not become one loop iteration of seconds."""
    loop = fair_event_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    pairs = [socket.socketpair() for _ in range(MAX_EVENTS_PER_POLL * 2 + 44)]
    try:
        for a, b in pairs:
            b.send(b"x")  # every socket is readable and stays so (level-triggered)
            selector.register(a, selectors.EVENT_READ)
        seen: set[int] = set()
        for _ in range(3):
            ready = selector.select(0)
            assert 0 < len(ready) <= MAX_EVENTS_PER_POLL
            seen.update(key.fd for key, _ in ready)
        assert len(seen) == len(pairs)  # the kernel rotates its ready list: nobody starves
    finally:
        for a, b in pairs:
            selector.unregister(a)
            a.close()
            b.close()
        loop.close()
