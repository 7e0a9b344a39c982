"""Device model (B05–B07) and Reset (B11, B12)."""

from __future__ import annotations

from pathlib import Path

from ocpp.v201 import call
from ocpp_fixtures import Backend, SimWall, ocpp_config, online, shutdown, started
from test_ocpp_transactions import charge, events, finish

from controller.session import GunState


def gv(comp: str, var: str, **kw: object) -> dict[str, object]:
    c: dict[str, object] = {"name": comp}
    if "evse" in kw:
        c["evse"] = kw.pop("evse")
    v: dict[str, object] = {"name": var}
    if "instance" in kw:
        v["instance"] = kw.pop("instance")
    return {"component": c, "variable": v, **kw}


async def test_TC_B_06_07_09_11_get_and_set_variables(tmp_path: Path) -> None:
    be = Backend()
    await be.start()
    wall = SimWall()
    cfg = ocpp_config(tmp_path, be.port)
    svc, _st, task = await started(cfg, wall)
    try:
        await be.wait_for(lambda: svc.online)
        assert be.cp is not None
        r = await be.cp.call(call.GetVariables(get_variable_data=[
            gv("OCPPCommCtrlr", "HeartbeatInterval"),
            gv("OCPPCommCtrlr", "MessageAttempts", instance="TransactionEvent"),
            gv("EVSE", "Power", evse={"id": 2}),
            gv("SecurityCtrlr", "BasicAuthPassword"),
            gv("NoSuchCtrlr", "X"),
            gv("TxCtrlr", "NoSuchVariable"),
            gv("OCPPCommCtrlr", "HeartbeatInterval", attributeType="Target"),
            gv("EVSE", "Power", evse={"id": 5}),
        ]), suppress=False)
        res = [(x["attribute_status"], x.get("attribute_value"))
               for x in r.get_variable_result]
        assert res == [("Accepted", "60"), ("Accepted", "3"), ("Accepted", "1500000.0"),
                       ("Rejected", None), ("UnknownComponent", None),
                       ("UnknownVariable", None), ("NotSupportedAttributeType", None),
                       ("UnknownComponent", None)]
        s = await be.cp.call(call.SetVariables(set_variable_data=[
            {**gv("SampledDataCtrlr", "TxUpdatedInterval"), "attributeValue": "30"},
            {**gv("TxCtrlr", "TxStartPoint"), "attributeValue": "EVConnected,Authorized"},
            {**gv("SecurityCtrlr", "SecurityProfile"), "attributeValue": "3"},  # read-only
            {**gv("TxCtrlr", "TxStopPoint"), "attributeValue": "Parked"},  # not a member
            {**gv("AuthCtrlr", "LocalPreAuthorize"), "attributeValue": "maybe"},
            {**gv("OCPPCommCtrlr", "HeartbeatInterval"), "attributeValue": "-5"},
            {**gv("Nope", "X"), "attributeValue": "1"},
        ]), suppress=False)
        assert [x["attribute_status"] for x in s.set_variable_result] == [
            "Accepted", "Accepted", "Rejected", "Rejected", "Rejected", "Rejected",
            "UnknownComponent"]
    finally:
        await shutdown(svc, task)
    # persisted: a restarted controller keeps what the backend set
    svc, _st, task = await started(cfg, wall)
    try:
        assert svc.dm.num("SampledDataCtrlr", "TxUpdatedInterval") == 30
        assert svc.dm.members("TxCtrlr", "TxStartPoint") == ["EVConnected", "Authorized"]
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_B_13_15_get_base_report_in_parts(tmp_path: Path) -> None:
    be = Backend()
    await be.start()
    svc, _st, task = await started(ocpp_config(tmp_path, be.port), SimWall())
    try:
        await be.wait_for(lambda: svc.online)
        assert be.cp is not None
        r = await be.cp.call(call.GetBaseReport(request_id=11, report_base="SummaryInventory"),
                             suppress=False)
        assert r.status == "NotSupported"
        r = await be.cp.call(call.GetBaseReport(request_id=12, report_base="FullInventory"),
                             suppress=False)
        assert r.status == "Accepted"
        await be.wait_for(lambda: any(not x.get("tbc") for x in be.of("NotifyReport")))
        parts = be.of("NotifyReport")
        assert len(parts) == 2 and [p["seq_no"] for p in parts] == [0, 1]
        assert parts[0]["tbc"] is True and parts[0]["request_id"] == 12
        data = [d for p in parts for d in p["report_data"]]
        pw = next(d for d in data if d["variable"]["name"] == "BasicAuthPassword")
        assert "value" not in pw["variable_attribute"][0]  # write-only: never reported
        evse = [d for d in data if d["component"]["name"] == "EVSE"
                and d["variable"]["name"] == "Power"]
        assert len(evse) == 2 and evse[0]["variable_characteristics"]["max_limit"] == 1.5e6
        r = await be.cp.call(call.GetBaseReport(request_id=13,
                                                report_base="ConfigurationInventory"),
                             suppress=False)
        await be.wait_for(lambda: any(p["request_id"] == 13 for p in be.of("NotifyReport")))
        conf = [d for p in be.of("NotifyReport") if p["request_id"] == 13
                for d in p["report_data"]]
        assert all(d["variable_attribute"][0]["mutability"] != "ReadOnly" for d in conf)
    finally:
        await shutdown(svc, task)
        await be.stop()


async def test_TC_B_22_CS_reset_immediate_ends_tx_and_reboots_TC_B_28(tmp_path: Path) -> None:
    async with online(tmp_path) as (be, svc, st, _wall):
        charge(st)
        assert be.cp is not None
        r = await be.cp.call(call.Reset(type="Immediate", evse_id=1), suppress=False)
        assert r.status == "Rejected"
        r = await be.cp.call(call.Reset(type="Immediate"), suppress=False)
        assert r.status == "Accepted"
        await be.wait_for(lambda: st.stops == [(0, "ImmediateReset")])
        finish(st, "ImmediateReset")
        await be.wait_for(lambda: len(be.of("BootNotification")) == 2 and len(svc.queue) == 0)
        assert be.of("BootNotification")[1]["reason"] == "RemoteReset"
        end = events(be)[-1]
        assert end["event_type"] == "Ended" and end["trigger_reason"] == "ResetCommand"
        assert end["transaction_info"]["stopped_reason"] == "ImmediateReset"
        assert any(e["type"] == "ResetOrReboot" for e in be.of("SecurityEventNotification"))


async def test_TC_B_21_CS_reset_on_idle_waits_for_the_transaction(tmp_path: Path) -> None:
    async with online(tmp_path) as (be, _svc, st, _wall):
        charge(st)
        assert be.cp is not None
        r = await be.cp.call(call.Reset(type="OnIdle"), suppress=False)
        assert r.status == "Scheduled" and st.stops == []
        finish(st, "StoppedByEV")
        st.go(0, GunState.AVAILABLE)
        await be.wait_for(lambda: len(be.of("BootNotification")) == 2)
        assert be.of("BootNotification")[1]["reason"] == "RemoteReset"
