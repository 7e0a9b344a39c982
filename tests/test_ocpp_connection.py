"""Connection, security profiles 1–3, back-off, boot (A00, A01, B01–B03, G01, A04)."""

from __future__ import annotations

import random
from pathlib import Path

from ocpp.v201 import call
from ocpp_fixtures import Backend, SimWall, make_pki, ocpp_config, server_ssl, shutdown, started

from controller.ocpp.connection import auth_headers, backoff
from controller.session import GunState


async def test_TC_B_01_CS_cold_boot_accepted_profile1(tmp_path: Path) -> None:
    be = Backend(password="s3cret-pass", interval=1)
    await be.start()
    svc, st, task = await started(ocpp_config(tmp_path, be.port), SimWall())
    try:
        await be.wait_for(lambda: len(be.of("StatusNotification")) == 2
                          and bool(be.of("SecurityEventNotification")))
        boot = be.of("BootNotification")[0]
        assert boot["reason"] == "PowerUp"
        assert boot["charging_station"]["vendor_name"] == "mwcharge"
        assert be.auth_seen[0] == auth_headers(1, "MWC-T1", "s3cret-pass")["Authorization"]
        assert [s["evse_id"] for s in be.of("StatusNotification")] == [1, 2]
        assert all(s["connector_status"] == "Available" and s["connector_id"] == 1
                   for s in be.of("StatusNotification"))
        assert be.of("SecurityEventNotification")[0]["type"] == "StartupOfTheDevice"
        # G01: a status change is reported at once
        st.go(0, GunState.PREPARING, "vehicle plugged")
        await be.wait_for(lambda: len(be.of("StatusNotification")) == 3)
        assert be.of("StatusNotification")[2]["connector_status"] == "Occupied"
        # heartbeat at the interval of the boot response (1 s)
        await be.wait_for(lambda: bool(be.of("Heartbeat")), timeout=3)
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_A_03_CS_wrong_password_refused_then_A01_new_password(tmp_path: Path) -> None:
    be = Backend(password="other-password")
    await be.start()
    svc, _st, task = await started(ocpp_config(tmp_path, be.port), SimWall())
    try:
        await be.wait_for(lambda: len(be.auth_seen) >= 2)  # refused, retried with back-off
        assert not be.of("BootNotification")
    finally:
        await shutdown(svc, task)
    # A01: the backend sets a new BasicAuthPassword; the next connection uses it
    be.password = "s3cret-pass"
    svc, _st, task = await started(ocpp_config(tmp_path, be.port), SimWall())
    try:
        await be.wait_for(lambda: bool(be.of("BootNotification")))
        assert be.cp is not None
        r = await be.cp.call(call.SetVariables(set_variable_data=[{
            "component": {"name": "SecurityCtrlr"},
            "variable": {"name": "BasicAuthPassword"},
            "attributeValue": "new-password-123"}]), suppress=False)
        assert r.set_variable_result[0]["attribute_status"] == "Accepted"
        be.password = "new-password-123"
        n = len(be.of("BootNotification"))
        await be.wait_for(lambda: len(be.of("SecurityEventNotification")) >= 2)
        seen = len(be.of("StatusNotification"))
        await be.cp._connection.close()
        await be.wait_for(lambda: be.auth_seen[-1] == auth_headers(
            1, "MWC-T1", "new-password-123")["Authorization"]
            and len(be.of("StatusNotification")) >= seen + 2)
        assert len(be.of("BootNotification")) == n  # reconnect: no second boot
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_B_02_CS_boot_pending_then_accepted_by_trigger(tmp_path: Path) -> None:
    be = Backend(boot=["Pending", "Accepted"], interval=30)
    await be.start()
    wall = SimWall()
    svc, _st, task = await started(
        ocpp_config(tmp_path, be.port, security_profile=0, password=None,
                    heartbeat_interval_s=1), wall)
    try:
        await be.wait_for(lambda: bool(be.of("BootNotification")))
        assert be.cp is not None
        # Pending: the backend may configure the station before accepting it
        r = await be.cp.call(call.GetVariables(get_variable_data=[{
            "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}]),
            suppress=False)
        assert r.get_variable_result[0]["attribute_status"] == "Accepted"
        assert not be.of("StatusNotification")  # nothing else is sent while Pending
        # F06 during Pending: a triggered boot is accepted and ends the 30 s wait
        t = await be.cp.call(call.TriggerMessage(requested_message="BootNotification"),
                             suppress=False)
        assert t.status == "Accepted"
        await be.wait_for(lambda: len(be.of("BootNotification")) == 2
                          and len(be.of("StatusNotification")) == 2, timeout=4)
        assert be.of("BootNotification")[1]["reason"] == "Triggered"
        assert svc.boot_status == "Accepted"
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_B_03_CS_boot_rejected_retries_after_interval(tmp_path: Path) -> None:
    be = Backend(boot=["Rejected", "Rejected", "Accepted"], interval=1)
    await be.start()
    svc, _st, task = await started(
        ocpp_config(tmp_path, be.port, security_profile=0, password=None), SimWall())
    try:
        await be.wait_for(lambda: len(be.of("BootNotification")) == 2, timeout=3)
        assert not be.of("StatusNotification") and not be.of("SecurityEventNotification")
        await be.wait_for(lambda: len(be.of("StatusNotification")) == 2, timeout=4)
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_A_04_CS_profile2_tls_server_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    be = Backend(password="s3cret-pass", ssl_ctx=server_ssl(pki, client_auth=False))
    await be.start()
    cfg = ocpp_config(tmp_path, be.port, url=f"wss://127.0.0.1:{be.port}/ocpp",
                      security_profile=2, ca_file=str(pki.ca))
    svc, _st, task = await started(cfg, SimWall())
    try:
        await be.wait_for(lambda: len(be.of("StatusNotification")) == 2)
        assert be.auth_seen[-1] is not None
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_A_05_CS_invalid_server_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    be = Backend(ssl_ctx=server_ssl(pki, client_auth=False))
    await be.start()
    cfg = ocpp_config(tmp_path, be.port, url=f"wss://127.0.0.1:{be.port}/ocpp",
                      security_profile=2, ca_file=str(pki.other_ca))
    svc, _st, task = await started(cfg, SimWall())
    try:
        await be.wait_for(lambda: any(m.payload["type"] == "InvalidCsmsCertificate"
                                      for m in svc.queue.all()))
        assert not be.of("BootNotification")
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_A_07_CS_profile3_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    be = Backend(ssl_ctx=server_ssl(pki, client_auth=True))
    await be.start()
    cfg = ocpp_config(tmp_path, be.port, url=f"wss://127.0.0.1:{be.port}/ocpp",
                      security_profile=3, password=None, ca_file=str(pki.ca),
                      cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    svc, _st, task = await started(cfg, SimWall())
    try:
        await be.wait_for(lambda: len(be.of("StatusNotification")) == 2)
        assert be.auth_seen[-1] is None  # profile 3: no Basic auth
    finally:
        await shutdown(svc, task)
        await be.stop()


def test_reconnect_backoff_doubles_then_stays() -> None:
    waits = backoff(3.0, 0.0, 3, random.Random(1))
    assert [next(waits) for _ in range(6)] == [3.0, 6.0, 12.0, 24.0, 24.0, 24.0]
    rnd = backoff(3.0, 10.0, 2, random.Random(1))
    first = [next(rnd) for _ in range(4)]
    assert 3.0 <= first[0] < 13.0 and 12.0 <= first[3] < 22.0


async def test_setting_system_time_from_the_backend_is_a_critical_security_event(
        tmp_path: Path) -> None:
    """Appendix 1 SettingSystemTime: the boot's currentTime is an hour ahead of the station's
    clock: the service adopts it as the time base of OCPP timestamps (an offset, not the OS
    clock) and reports it; a drift within the tolerance is neither adopted nor reported."""
    import datetime as dt

    wall = SimWall()
    skew = dt.timedelta(hours=1)
    be = Backend(clock=lambda: wall() + skew)
    await be.start()
    svc, st, task = await started(
        ocpp_config(tmp_path, be.port, security_profile=0, password=None,
                    csms_time_tolerance_s=20), wall)
    try:
        await be.wait_for(lambda: svc.online and len(be.of("SecurityEventNotification")) == 2)
        kinds = [e["type"] for e in be.of("SecurityEventNotification")]
        assert kinds == ["StartupOfTheDevice", "SettingSystemTime"]
        assert svc.wall() == wall() + skew
        st.go(0, GunState.PREPARING, "vehicle plugged")
        await be.wait_for(lambda: len(be.of("StatusNotification")) == 3)
        assert be.of("StatusNotification")[2]["timestamp"].startswith("2026-01-05T09:00")
        skew += dt.timedelta(seconds=10)  # within the tolerance
        svc.sync_clock(be.now())
        assert svc.wall() == wall() + skew - dt.timedelta(seconds=10)
        assert len(svc.queue) == 0 and len(be.of("SecurityEventNotification")) == 2
    finally:
        await shutdown(svc, task)
        await be.stop()


def test_queue_bound_never_drops_critical_security_events(tmp_path: Path) -> None:
    import sqlite3

    from controller.ocpp.queue import MessageQueue

    q = MessageQueue(sqlite3.connect(tmp_path / "q.sqlite3"), limit=10)
    q.put("SecurityEventNotification", {"type": "SettingSystemTime"})
    for _ in range(9):
        q.put("NotifyChargingLimit", {"chargingLimit": {"chargingLimitSource": "EMS"}})
    q.put("SecurityEventNotification", {"type": "ResetOrReboot"})
    actions = [m.action for m in q.all()]
    assert len(q) == 10 and actions[0] == "SecurityEventNotification"
    assert actions.count("NotifyChargingLimit") == 8
