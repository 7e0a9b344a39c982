"""Issue 16 item 1: a remote start carries the backend's idToken (F01/F02), in 2.0.1 and 1.6.

The backend here knows only its operator token ``REMOTE-OP-1``: a transaction that carried
the truck's own token would be answered ``Unknown`` and stopped (StopTxOnInvalidId), as the
independent backend did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interop_fixtures import InteropBackend, lost_exceptions
from ocpp.v16 import call as call16
from ocpp.v201 import call
from ocpp16_fixtures import Backend16, online16, until
from ocpp16_fixtures import charge as charge16
from ocpp_fixtures import SimWall, ocpp_config, shutdown, started
from test_ocpp_transactions import charge, events, finish

from controller.session import GunState

OP = {"id_token": "REMOTE-OP-1", "type": "ISO14443"}


async def _online(tmp: Path, **cfg: Any) -> tuple[InteropBackend, Any, Any, Any]:
    be = InteropBackend()
    await be.start()
    svc, st, task = await started(ocpp_config(tmp, be.port, **cfg), SimWall())
    await be.wait_for(lambda: svc.online and len(svc.queue) == 0)
    return be, svc, st, task


def _started(be: InteropBackend) -> dict[str, Any]:
    return next(e for e in events(be) if e["event_type"] == "Started")


async def test_TC_F_01_CS_cable_first_transaction_carries_requested_token(
        tmp_path: Path) -> None:
    async with lost_exceptions():
        be, svc, st, task = await _online(tmp_path)
        try:
            st.go(0, GunState.PREPARING, "vehicle plugged", token="TRUCK-1")
            assert be.cp is not None
            r = await be.cp.call(call.RequestStartTransaction(
                id_token=OP, remote_start_id=7, evse_id=1), suppress=False)
            assert r.status == "Accepted" and st.auth == {0: True}
            # the station's own authorization of the truck, answered after the remote start,
            # does not take the gun back
            assert await svc.authorize(0, "TRUCK-1") is True
            charge(st)  # the station reports the truck's token in its events
            finish(st, "StoppedByEV")
            await be.wait_for(lambda: len(events(be)) == 2 and len(svc.queue) == 0)
            ev = _started(be)
            assert ev["trigger_reason"] == "RemoteStart"
            assert ev["transaction_info"]["remote_start_id"] == 7
            assert ev["id_token"] == OP  # the backend's token and type, not TRUCK-1
            assert st.stops == []  # not DeAuthorized
            assert not any(e.get("id_token", {}).get("id_token") == "TRUCK-1"
                           for e in events(be))
        finally:
            await shutdown(svc, task)
            await be.stop()


async def test_TC_F_03_CS_remote_first_no_authorize_carries_requested_token(
        tmp_path: Path) -> None:
    be, svc, st, task = await _online(tmp_path)
    try:
        assert be.cp is not None
        r = await be.cp.call(call.RequestStartTransaction(
            id_token=OP, remote_start_id=8, evse_id=2), suppress=False)
        assert r.status == "Accepted"
        st.go(1, GunState.PREPARING, "vehicle plugged", token="TRUCK-1")
        assert await svc.authorize(1, "TRUCK-1") is True
        assert not be.of("Authorize")  # AuthorizeRemoteStart false: no Authorize
        charge(st, 1)
        await be.wait_for(lambda: len(events(be)) == 1 and len(svc.queue) == 0)
        ev = _started(be)
        assert ev["id_token"] == OP and ev["transaction_info"]["remote_start_id"] == 8
        assert ev["trigger_reason"] == "RemoteStart" and st.stops == []
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_F_02_CS_remote_first_authorize_remote_start_true(tmp_path: Path) -> None:
    be, svc, st, task = await _online(tmp_path)
    try:
        assert be.cp is not None
        s = await be.cp.call(call.SetVariables(set_variable_data=[{
            "component": {"name": "AuthCtrlr"}, "variable": {"name": "AuthorizeRemoteStart"},
            "attribute_value": "true"}]), suppress=False)
        assert s.set_variable_result[0]["attribute_status"] == "Accepted"
        # an idToken the backend does not know: accepted as a request, refused on plug-in
        r = await be.cp.call(call.RequestStartTransaction(
            id_token={"id_token": "STRANGER", "type": "Central"}, remote_start_id=1,
            evse_id=1), suppress=False)
        assert r.status == "Accepted"
        st.go(0, GunState.PREPARING, "vehicle plugged", token="TRUCK-1")
        assert await svc.authorize(0, "TRUCK-1") is False
        assert be.of("Authorize")[-1]["id_token"]["id_token"] == "STRANGER"
        st.go(0, GunState.AVAILABLE, "vehicle left")
        r = await be.cp.call(call.RequestStartTransaction(
            id_token=OP, remote_start_id=2, evse_id=1), suppress=False)
        assert r.status == "Accepted"
        st.go(0, GunState.PREPARING, "vehicle plugged", token="TRUCK-1")
        assert await svc.authorize(0, "TRUCK-1") is True
        assert be.of("Authorize")[-1]["id_token"] == OP  # authorized first, with its type
        charge(st)
        await be.wait_for(lambda: len(events(be)) == 1 and len(svc.queue) == 0)
        ev = _started(be)
        assert ev["id_token"] == OP and ev["transaction_info"]["remote_start_id"] == 2
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_F_01_CS_tx_started_at_plug_in_gets_remote_token(tmp_path: Path) -> None:
    be, svc, st, task = await _online(tmp_path, tx_start_point=["EVConnected"])
    try:
        st.go(0, GunState.PREPARING, "vehicle plugged", token=None)
        await be.wait_for(lambda: len(events(be)) == 1)
        assert be.cp is not None
        r = await be.cp.call(call.RequestStartTransaction(
            id_token=OP, remote_start_id=9, evse_id=1), suppress=False)
        tx_id = events(be)[0]["transaction_info"]["transaction_id"]
        assert r.status == "Accepted" and r.transaction_id == tx_id
        st.event("authorized", 0, token="TRUCK-1")
        await be.wait_for(lambda: len(events(be)) == 2 and len(svc.queue) == 0)
        upd = events(be)[1]
        assert upd["trigger_reason"] == "RemoteStart" and upd["id_token"] == OP
        assert upd["transaction_info"]["remote_start_id"] == 9 and st.stops == []
    finally:
        await shutdown(svc, task)
        await be.stop()


# ------------------------------------------------------------------ OCPP 1.6


async def test_16_remote_start_for_waiting_truck_carries_requested_tag(tmp_path: Path) -> None:
    be = Backend16(tokens={"REMOTE-OP-1"})
    async with online16(tmp_path, be) as (_, svc, st, _wall):
        st.go(0, GunState.PREPARING, "vehicle plugged", "TRUCK-1")
        assert be.cp is not None
        r = await be.cp.call(call16.RemoteStartTransaction(id_tag="REMOTE-OP-1",
                                                           connector_id=1), suppress=False)
        assert r.status == "Accepted" and st.auth == {0: True}
        assert await svc.authorize(0, "TRUCK-1") is True  # asked, Invalid: the remote wins
        charge16(st, token="TRUCK-1")
        await until(lambda: len(be.of("StartTransaction")) == 1 and len(svc.queue) == 0)
        assert be.of("StartTransaction")[0]["id_tag"] == "REMOTE-OP-1"
        assert st.stops == []


async def test_16_remote_start_first_and_authorize_remote_tx_requests(tmp_path: Path) -> None:
    be = Backend16(tokens={"REMOTE-OP-1"})
    async with online16(tmp_path, be) as (_, svc, st, _wall):
        assert be.cp is not None
        r = await be.cp.call(call16.RemoteStartTransaction(id_tag="REMOTE-OP-1",
                                                           connector_id=2), suppress=False)
        assert r.status == "Accepted"
        assert await svc.authorize(1, "TRUCK-1") is True
        charge16(st, 1, token="TRUCK-1")
        await until(lambda: len(be.of("StartTransaction")) == 1 and len(svc.queue) == 0)
        assert be.of("StartTransaction")[0]["id_tag"] == "REMOTE-OP-1"
        c = await be.cp.call(call16.ChangeConfiguration(key="AuthorizeRemoteTxRequests",
                                                        value="true"), suppress=False)
        assert c.status == "Accepted"
        st.go(0, GunState.PREPARING, "vehicle plugged", "TRUCK-1")
        r = await be.cp.call(call16.RemoteStartTransaction(id_tag="NOBODY", connector_id=1),
                             suppress=False)
        assert r.status == "Accepted"
        await until(lambda: any(a["id_tag"] == "NOBODY" for a in be.of("Authorize")))
        await until(lambda: not svc._tasks)  # the authorization of NOBODY has ended
        assert 0 not in st.auth  # refused: the gun is not started
        r = await be.cp.call(call16.RemoteStartTransaction(id_tag="REMOTE-OP-1",
                                                           connector_id=1), suppress=False)
        await until(lambda: st.auth.get(0) is True)
        # REMOTE-OP-1 is in the cache (StartTransaction answered Accepted): LocalPreAuthorize
        # starts it without asking again
        assert svc.auth_cache.get("REMOTE-OP-1") == "Accepted"
        assert [a["id_tag"] for a in be.of("Authorize")] == ["NOBODY"]
