"""Remote control and authorization: F01–F06, E14, C01 offline rules, TxStartPoint, queue."""

from __future__ import annotations

from pathlib import Path

from ocpp.v201 import call
from ocpp_fixtures import Backend, SimWall, ocpp_config, online, shutdown, started
from test_ocpp_transactions import charge, events, finish, run_for

from controller.ocpp.queue import MessageQueue
from controller.session import GunState


async def test_TC_F_03_F_08_E_28_CS_remote_start_first_then_remote_stop(tmp_path: Path) -> None:
    async with online(tmp_path) as (be, svc, st, _wall):
        assert be.cp is not None
        r = await be.cp.call(call.RequestStartTransaction(
            id_token={"idToken": "FLEET-7", "type": "Central"}, remote_start_id=42, evse_id=1),
            suppress=False)
        assert r.status == "Accepted"
        st.go(0, GunState.PREPARING, "vehicle plugged", token=None)
        assert await svc.authorize(0, None) is True  # the remote start authorizes the gun
        assert not be.of("Authorize")
        charge(st)
        # the station drops the row when the answer reaches it, a moment after the backend
        # stored the event: wait for both before asking E14 about the queue
        await be.wait_for(lambda: len(events(be)) == 1 and len(svc.queue) == 0)
        started_ev = events(be)[0]
        assert started_ev["trigger_reason"] == "RemoteStart"
        assert started_ev["transaction_info"]["remote_start_id"] == 42
        tx_id = started_ev["transaction_info"]["transaction_id"]
        # E14
        s = await be.cp.call(call.GetTransactionStatus(transaction_id=tx_id), suppress=False)
        assert s.ongoing_indicator is True and s.messages_in_queue is False
        # F05: connector with a transaction stays locked
        u = await be.cp.call(call.UnlockConnector(evse_id=1, connector_id=1), suppress=False)
        assert u.status == "OngoingAuthorizedTransaction"
        u = await be.cp.call(call.UnlockConnector(evse_id=9, connector_id=1), suppress=False)
        assert u.status == "UnknownConnector"
        # F03
        r2 = await be.cp.call(call.RequestStopTransaction(transaction_id="nope"), suppress=False)
        assert r2.status == "Rejected"
        r2 = await be.cp.call(call.RequestStopTransaction(transaction_id=tx_id), suppress=False)
        assert r2.status == "Accepted" and st.stops == [(0, "Remote")]
        finish(st, "Remote")
        await be.wait_for(lambda: len(events(be)) == 2 and len(svc.queue) == 0)
        end = events(be)[1]
        assert end["trigger_reason"] == "RemoteStop"
        assert end["transaction_info"]["stopped_reason"] == "Remote"
        s = await be.cp.call(call.GetTransactionStatus(transaction_id=tx_id), suppress=False)
        assert s.ongoing_indicator is False


async def test_TC_F_01_F_04_CS_remote_start_cable_plugged_first_and_timeout(tmp_path: Path) -> None:
    async with online(tmp_path) as (be, svc, st, wall):
        st.go(1, GunState.PREPARING, "vehicle plugged")
        assert be.cp is not None
        r = await be.cp.call(call.RequestStartTransaction(
            id_token={"idToken": "FLEET-7", "type": "Central"}, remote_start_id=5),
            suppress=False)
        assert r.status == "Accepted" and st.auth == {1: True}
        # F04: a remote start for an empty gun lapses after EVConnectionTimeOut
        r = await be.cp.call(call.RequestStartTransaction(
            id_token={"idToken": "FLEET-7", "type": "Central"}, remote_start_id=6, evse_id=1),
            suppress=False)
        assert r.status == "Accepted"
        wall.advance(61)
        st.go(0, GunState.PREPARING, "vehicle plugged", token=None)
        assert await svc.authorize(0, None) is False


async def test_TC_F_20_23_27_trigger_messages(tmp_path: Path) -> None:
    async with online(tmp_path) as (be, _svc, st, wall):
        assert be.cp is not None
        charge(st)
        run_for(st, wall, 5)
        for what, status in [("Heartbeat", "Accepted"), ("LogStatusNotification",
                                                           "NotImplemented"),
                             ("BootNotification", "Rejected"), ("TransactionEvent", "Accepted"),
                             ("MeterValues", "Accepted"), ("StatusNotification", "Accepted")]:
            r = await be.cp.call(call.TriggerMessage(requested_message=what), suppress=False)
            assert r.status == status, what
        await be.wait_for(lambda: bool(be.of("Heartbeat")) and bool(be.of("MeterValues"))
                          and len(events(be)) == 2 and len(be.of("StatusNotification")) >= 5)
        assert events(be)[1]["trigger_reason"] == "Trigger"
        r = await be.cp.call(call.TriggerMessage(requested_message="StatusNotification",
                                                 evse={"id": 7}), suppress=False)
        assert r.status == "Rejected"


async def test_TC_E_09_CS_tx_start_point_ev_connected(tmp_path: Path) -> None:
    be = Backend()
    await be.start()
    wall = SimWall()
    cfg = ocpp_config(tmp_path, be.port, tx_start_point=["EVConnected"],
                      tx_stop_point=["EVConnected"])
    svc, st, task = await started(cfg, wall)
    try:
        await be.wait_for(lambda: svc.online)
        charge(st)
        finish(st, "EVDisconnected")
        await be.wait_for(lambda: len(events(be)) == 5)
        got = [(e["event_type"], e["trigger_reason"], e["transaction_info"]["charging_state"])
               for e in events(be)]
        assert got == [("Started", "CablePluggedIn", "EVConnected"),
                       ("Updated", "Authorized", "EVConnected"),
                       ("Updated", "ChargingStateChanged", "Charging"),
                       ("Updated", "ChargingStateChanged", "EVConnected"),
                       ("Ended", "EVCommunicationLost", "Idle")]
        assert events(be)[1]["id_token"]["id_token"] == "TRUCK-1"
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_C_08_11_26_authorization_cache_and_offline_rules(tmp_path: Path) -> None:
    be = Backend(tokens={"TRUCK-1"})
    await be.start()
    wall = SimWall()
    svc, _st, task = await started(ocpp_config(tmp_path, be.port), wall)
    try:
        await be.wait_for(lambda: svc.online)
        assert await svc.authorize(0, "TRUCK-1") is True
        assert await svc.authorize(0, "STRANGER") is False
        assert len(be.of("Authorize")) == 2
        assert await svc.authorize(0, "TRUCK-1") is True  # LocalPreAuthorize: from the cache
        assert len(be.of("Authorize")) == 2
        await be.stop()
        await be.wait_for(lambda: not svc.online)
        assert await svc.authorize(0, "TRUCK-1") is True  # offline, cached Accepted
        assert await svc.authorize(0, "STRANGER") is False  # cached Invalid
        assert await svc.authorize(0, "UNKNOWN") is False  # OfflineTxForUnknownId false
        svc.dm.write({"name": "AuthCtrlr"}, {"name": "OfflineTxForUnknownIdEnabled"}, "true",
                     None)
        assert await svc.authorize(0, "UNKNOWN") is True
        wall.advance(86_401)  # the cache entry expires (AuthCacheCtrlr.LifeTime)
        svc.dm.write({"name": "AuthCtrlr"}, {"name": "OfflineTxForUnknownIdEnabled"}, "false",
                     None)
        assert await svc.authorize(0, "TRUCK-1") is False
    finally:
        await shutdown(svc, task)
        await be.stop()


def test_queue_bound_drops_periodic_first(tmp_path: Path) -> None:
    import sqlite3
    q = MessageQueue(sqlite3.connect(tmp_path / "q.sqlite3"), limit=10)
    q.put("TransactionEvent", {"eventType": "Started", "seqNo": 0})
    for i in range(1, 9):
        q.put("TransactionEvent", {"eventType": "Updated", "triggerReason": "MeterValuePeriodic",
                                   "seqNo": i})
    q.put("SecurityEventNotification", {"type": "X"})
    q.put("TransactionEvent", {"eventType": "Ended", "seqNo": 9})
    assert len(q) == 10 and q.dropped == 1
    seqs = [m.payload.get("seqNo") for m in q.all()]
    assert seqs == [0, 2, 3, 4, 5, 6, 7, 8, None, 9]
    for m in q.all()[:-1]:
        q.done(m.id)
    for i in range(12):
        q.put("TransactionEvent", {"eventType": "Ended", "seqNo": 10 + i})
    assert len(q) == 13  # Started/Ended are never dropped: the bound is exceeded, logged


async def test_TC_G_11_03_04_18_CS_change_availability_scheduled_and_persisted(
        tmp_path: Path) -> None:
    be = Backend()
    await be.start()
    wall = SimWall()
    cfg = ocpp_config(tmp_path, be.port)
    svc, st, task = await started(cfg, wall)

    def statuses(evse: int) -> list[str]:
        return [s["connector_status"] for s in be.of("StatusNotification")
                if s["evse_id"] == evse]

    try:
        await be.wait_for(lambda: svc.online and len(be.of("StatusNotification")) == 2)
        assert be.cp is not None
        charge(st)
        r = await be.cp.call(call.ChangeAvailability(operational_status="Inoperative",
                                                     evse={"id": 1}), suppress=False)
        assert r.status == "Scheduled" and st.available[0] is True  # the session goes on
        r = await be.cp.call(call.ChangeAvailability(operational_status="Inoperative",
                                                     evse={"id": 2}), suppress=False)
        assert r.status == "Accepted" and st.available[1] is False
        await be.wait_for(lambda: statuses(2)[-1:] == ["Unavailable"])
        finish(st, "Local")  # the transaction ends: the scheduled change takes effect
        await be.wait_for(lambda: statuses(1)[-1:] == ["Unavailable"])
        assert st.available[0] is False
        r = await be.cp.call(call.ChangeAvailability(operational_status="Inoperative",
                                                     evse={"id": 7}), suppress=False)
        assert r.status == "Rejected"
    finally:
        await shutdown(svc, task)
    svc, st, task = await started(cfg, wall)  # TC_G_18: the state survives a restart
    try:
        assert st.available == {0: False, 1: False}
        n = len(be.of("StatusNotification"))
        await be.wait_for(lambda: len(be.of("StatusNotification")) == n + 2)
        assert statuses(1)[-1] == statuses(2)[-1] == "Unavailable"
        assert be.cp is not None
        r = await be.cp.call(call.ChangeAvailability(operational_status="Operative",
                                                     evse={"id": 1}), suppress=False)
        assert r.status == "Accepted" and st.available[0] is True
        await be.wait_for(lambda: statuses(1)[-1:] == ["Available"])
        # G04: the whole station inoperative, then operative again
        r = await be.cp.call(call.ChangeAvailability(operational_status="Inoperative"),
                             suppress=False)
        assert r.status == "Accepted" and st.available == {0: False, 1: False}
        r = await be.cp.call(call.ChangeAvailability(operational_status="Operative"),
                             suppress=False)
        assert r.status == "Accepted" and st.available == {0: True, 1: False}  # EVSE 2 still
    finally:
        await shutdown(svc, task)
        await be.stop()
