"""Issue 16 item 4 / issue 15 item 4: one connection, one set of tasks.

Every background task of the client is owned: the heartbeat, the sender, the reader and the
follow-ups of the backend's requests end with their connection, a refused TriggerMessage
starts nothing, and no task ends with an exception nobody retrieved (checked with a loop
exception handler and a garbage collection at the end of each test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interop_fixtures import lost_exceptions
from ocpp.v16 import call as call16
from ocpp.v201 import call
from ocpp16_fixtures import Backend16, online16, until
from ocpp_fixtures import Backend, SimWall, ocpp_config, shutdown, started
from test_ocpp_transactions import charge, run_for


async def test_TC_F_20_trigger_unknown_evse_rejected_without_follow_up(tmp_path: Path) -> None:
    async with lost_exceptions():
        be = Backend(interval=1)
        await be.start()
        wall = SimWall()
        svc, st, task = await started(ocpp_config(tmp_path, be.port), wall)
        try:
            await be.wait_for(lambda: svc.online and len(svc.queue) == 0)
            charge(st)
            run_for(st, wall, 3)
            assert be.cp is not None
            spawned = _spy(svc)
            for what in ("MeterValues", "TransactionEvent", "StatusNotification", "Heartbeat"):
                r = await be.cp.call(call.TriggerMessage(requested_message=what,
                                                         evse={"id": 7}), suppress=False)
                assert r.status == "Rejected", what
                assert r.status_info["reason_code"] == "UnknownEvse"
                assert "triggered" not in spawned, what  # no follow-up started
            r = await be.cp.call(call.TriggerMessage(requested_message="BootNotification"),
                                 suppress=False)
            assert r.status == "Rejected"  # already accepted: and no second boot either
            n_boot = len(be.of("BootNotification"))
            r = await be.cp.call(call.TriggerMessage(requested_message="MeterValues",
                                                     evse={"id": 1}), suppress=False)
            assert r.status == "Accepted"
            await be.wait_for(lambda: len(be.of("MeterValues")) == 1)
            assert spawned.count("triggered") == 1  # the accepted one only
            assert len(be.of("BootNotification")) == n_boot
        finally:
            await shutdown(svc, task)
            await be.stop()


def _spy(svc: Any) -> list[str]:
    """Names of the coroutines ``svc.spawn`` starts from now on (the owned tasks)."""
    names: list[str] = []
    spawn = svc.spawn

    def spy(coro: Any, **kw: Any) -> Any:
        names.append(coro.__qualname__.rsplit(".", 1)[-1])
        return spawn(coro, **kw)

    svc.spawn = spy
    return names


async def test_heartbeat_and_tasks_end_with_their_connection(tmp_path: Path) -> None:
    async with lost_exceptions():
        be = Backend(interval=1)
        await be.start()
        wall = SimWall()
        svc, _st, task = await started(ocpp_config(tmp_path, be.port), wall)
        try:
            await be.wait_for(lambda: svc.online and len(be.of("Heartbeat")) >= 1, timeout=10)
            first = set(svc._conn_tasks)
            names = {t.get_coro().__qualname__ for t in first}  # type: ignore[union-attr]
            assert any(n.endswith("_heartbeat") for n in names), names
            old_cp = be.cp
            assert old_cp is not None
            n_status = len(be.of("StatusNotification"))
            await old_cp._connection.close()  # the backend drops the connection (1000)
            await be.wait_for(lambda: be.cp is not old_cp and svc.online and len(
                be.of("StatusNotification")) >= n_status + 2, timeout=10)
            assert all(t.done() for t in first)  # no heartbeat of the old connection left
            assert not first & svc._conn_tasks
            beats = len(be.of("Heartbeat"))
            await be.wait_for(lambda: len(be.of("Heartbeat")) > beats, timeout=10)
            # the backend side again, this time while a heartbeat may be in flight
            await be.cp._connection.close(code=1001)
            await be.wait_for(lambda: not svc.online, timeout=5)
            await be.wait_for(lambda: svc.online, timeout=10)
        finally:
            await shutdown(svc, task)
            await be.stop()
        assert not svc._conn_tasks and not svc._tasks  # close() leaves nothing running


async def test_16_trigger_unknown_connector_rejected_and_disconnect_clean(
        tmp_path: Path) -> None:
    async with lost_exceptions():
        be = Backend16(interval=1)
        async with online16(tmp_path, be) as (_, svc, _st, _wall):
            assert be.cp is not None
            spawned = _spy(svc)
            r = await be.cp.call(call16.TriggerMessage(requested_message="MeterValues",
                                                       connector_id=9), suppress=False)
            assert r.status == "Rejected"
            assert "_triggered" not in spawned
            first = set(svc._conn_tasks)
            await be.cp._connection.close()
            await until(lambda: all(t.done() for t in first), timeout=10)
            await until(lambda: svc.online, timeout=10)
