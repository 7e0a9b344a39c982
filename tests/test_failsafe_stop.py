"""Fail-safe stop (issue 14, item 1): the stop sequence leaves no coil on.

The real `mwc run` process charges two trucks (real Modbus servers in this process); SIGTERM
or SIGINT stops it. An independent Modbus master reads the matrix coils: all off within the
drain timeout + 1 s, still off afterwards, every module output off, no contactor switched
under load, exit code 0. The OCPP-free Reset path (``Station.restart()``) does the same in
process and charges again. A module that cannot drain is disabled anyway, named in one error
line, and the process exits non-zero.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from failsafe_fixtures import DRAIN_S, MODULES, controller, end, rig, until

from controller.config import load_config
from controller.station import Station
from controller.vehicle import VehicleLink
from controller.vehicle_modbus import ModbusVehicleLink

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stop_with_two_trucks_charging_leaves_no_coil_on(
        tmp_path: Path, sig: signal.Signals) -> None:
    async with rig(tmp_path) as r:
        proc = await controller(r)
        try:
            await until("both trucks charging", lambda: min(r.gun_a()) > 100.0, 60, proc)
            assert await r.master.coils_on() > 0
            t0 = time.monotonic()
            proc.send_signal(sig)

            async def no_coil() -> bool:
                return await r.master.coils_on() == 0

            took = await until("every coil off", no_coil, DRAIN_S + 1.0)
            print(f"{sig.name}: all {MODULES * 2} coils off {took * 1000:.0f} ms after the "
                  "signal")
            code = await asyncio.wait_for(proc.wait(), 30)
            assert code == 0, r.log.read_text()[-3000:]
            assert time.monotonic() - t0 < 30
            await asyncio.sleep(1.0)  # nothing switches back on after the exit
            assert await r.master.coils_on() == 0
            assert r.modules_on() == []
            assert max(abs(a) for a in r.gun_a()) < 1.0
            assert r.physics.hot_switches() == [], r.physics.hot_switches()[:5]
            assert r.violations() == []
            lines = r.log_lines()
            assert any(x.get("event") == "station stopped safely" for x in lines)
            assert not any("Traceback" in str(x) for x in lines)
        finally:
            await end(proc)


async def test_module_that_cannot_drain_is_named_and_exit_is_non_zero(tmp_path: Path) -> None:
    """Module 0 stops answering mid-charge: it cannot be seen to drain; it is disabled anyway
    (its watchdog also cuts it), named in the one error line, and `mwc run` exits 1."""
    async with rig(tmp_path, station={"drain_timeout_s": 1.0}) as r:
        proc = await controller(r)
        try:
            await until("both trucks charging", lambda: min(r.gun_a()) > 100.0, 60, proc)
            r.physics.set_comm_loss(0)
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
            assert code == 1
            errors = [x for x in r.log_lines()
                      if str(x.get("event", "")).startswith("stop sequence incomplete")]
            assert len(errors) == 1, errors
            msg = errors[0]["event"]
            assert "module 0 (unreachable)" in msg and "not drained within 1 s" in msg, msg
            assert "module 1 " not in msg
            r.physics.set_comm_loss(0, False)
            # every other module drained and opened; module 0's own watchdog cut it
            await until("module 0 off by its watchdog", lambda: not r.modules_on(), 3.0)
            coils = r.physics.matrix.coils
            assert not any(coils[2:]), coils
        finally:
            await end(proc)


async def test_reset_path_restart_opens_everything_then_charges_again(tmp_path: Path) -> None:
    """OCPP Reset without OCPP: ``Station.restart()`` runs the stop sequence (0 coils, every
    module disabled, confirmed) and starts again; charging resumes by itself."""
    async with rig(tmp_path) as r:
        cfg = load_config(r.config)
        links: list[VehicleLink] = []
        secc = []
        for g in range(2):
            ep = cfg.vehicle_endpoint(g)
            assert ep is not None
            link = ModbusVehicleLink(ep, cfg.link_settings(), name=f"SECC gun {g}")
            await link.start_io()
            secc.append(link)
            links.append(link)
        station = Station(cfg, links)
        await station.start()
        stop = asyncio.Event()
        run = asyncio.create_task(station.run(stop))
        try:
            await until("both trucks charging", lambda: min(r.gun_a()) > 100.0, 60)
            station.stop()
            await asyncio.wait_for(run, 5)
            seen_zero: list[float] = []
            t0 = time.monotonic()

            async def watch() -> None:
                while True:
                    if await r.master.coils_on() == 0 and not r.modules_on():
                        seen_zero.append(time.monotonic() - t0)
                        return
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            await station.restart()
            await asyncio.wait_for(watcher, 2.0)
            assert seen_zero and seen_zero[0] <= DRAIN_S + 1.0, seen_zero
            rep = station.stop_report
            assert rep is not None and rep.ok, rep
            assert station.restarts == 1
            run = asyncio.create_task(station.run(stop))
            await until("charging again after the reset", lambda: min(r.gun_a()) > 100.0, 30)
            assert station.violations == 0
            assert r.physics.hot_switches() == []
        finally:
            stop.set()
            await asyncio.wait_for(run, 5)
            await station.close()
            for link in secc:
                await link.close()
        assert station.stop_report is not None and station.stop_report.ok
        assert await r.master.coils_on() == 0


async def test_sigterm_ends_open_transactions_with_reboot_then_no_coil(tmp_path: Path) -> None:
    """With the OCPP 2.0.1 backend: SIGTERM leaves no coil on and ends both open
    transactions with stoppedReason Reboot (queued by the station, delivered when it starts
    again; seqNo gap-free)."""
    from csms_fixtures import PASSWORD, add_token, make_config, provision

    from ocpp_server.app import CsmsServer
    from ocpp_server.repository import TxFilter

    csms_cfg = make_config(tmp_path)
    server = CsmsServer(csms_cfg)
    await server.start()
    try:
        await provision(server, "FAILSAFE-1")
        for n in "AB":
            await add_token(server, f"TRUCK-{n}")
        ocpp = (f'[ocpp]\nurl = "ws://127.0.0.1:{server.ocpp_port}/ocpp"\n'
                f'security_profile = 1\npassword = "{PASSWORD}"\n'
                f'database = "{tmp_path / "station.sqlite3"}"\nsampled_interval_s = 1.0\n'
                "heartbeat_interval_s = 30.0\n")
        async with rig(tmp_path, station={"free_charging": False}, sections=ocpp) as r:
            proc = await controller(r)
            try:
                async def both() -> bool:
                    txs = await server.repo.list_transactions(TxFilter(station_id="FAILSAFE-1"))
                    return (len([t for t in txs if t["active"]]) == 2
                            and min(r.gun_a()) > 100.0)

                await until("both trucks charging in transactions", both, 60, proc)
                proc.send_signal(signal.SIGTERM)

                async def no_coil() -> bool:
                    return await r.master.coils_on() == 0

                await until("every coil off", no_coil, DRAIN_S + 1.0)
                assert await asyncio.wait_for(proc.wait(), 30) == 0
                # the Ended events wait in the station's queue: sent on the next start
                r.trucks[0].unplug()
                r.trucks[1].unplug()
                proc = await controller(r)

                async def ended() -> bool:
                    txs = await server.repo.list_transactions(TxFilter(station_id="FAILSAFE-1"))
                    return bool(txs) and not any(t["active"] for t in txs)

                await until("transactions ended at the backend", ended, 60, proc)
                for t in await server.repo.list_transactions(TxFilter(station_id="FAILSAFE-1")):
                    tx = await server.repo.get_transaction(t["id"])
                    assert tx is not None
                    seqs = [e["seq_no"] for e in tx["events"]]
                    assert seqs == list(range(len(seqs))), seqs
                    assert tx["stop_reason"] == "Reboot", tx["stop_reason"]
                assert r.physics.hot_switches() == []
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 30) == 0
            finally:
                await end(proc)
    finally:
        await server.stop()
