"""The backend as a real process: CLI provisioning, ad-hoc calls, and SIGKILL with no loss."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from csms_fixtures import API_TOKEN, PASSWORD, now, running_csms, station
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result

from controller import cli as mwc
from ocpp_server.config import load_config
from ocpp_server.passwords import hash_password
from ocpp_server.repository import StationRecord
from ocpp_server.storage import SqliteRepository

BOOT = call.BootNotification(charging_station={"model": "M", "vendor_name": "V"},
                             reason="PowerUp")


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "csms.toml"
    cfg.write_text(f"""
[storage]
path = "{tmp_path / 'csms.db'}"
[ocpp]
host = "127.0.0.1"
port = 0
call_timeout = 5
[api]
port = 0
tokens = ["{API_TOKEN}"]
""")
    return cfg


async def cli(cfg: Path, *args: str, env: dict[str, str] | None = None,
              stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocpp_server", "--config", str(cfg), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await proc.communicate(stdin)
    return proc.returncode or 0, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def backend(cfg: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, Any]]]:
    ready = cfg.parent / f"ready-{os.urandom(4).hex()}.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocpp_server", "--config", str(cfg), "serve",
        "--ready-file", str(ready), stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(20):
            while not ready.exists():  # the server writes it once every port is bound
                assert proc.returncode is None, "backend exited during start-up"
                await asyncio.sleep(0.02)
        yield proc, json.loads(ready.read_text())
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)


async def test_cli_provisioning_and_adhoc_call(tmp_path: Path, capsys: Any,
                                               monkeypatch: Any) -> None:
    cfg = write_config(tmp_path)

    async def mwc_csms(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = await asyncio.to_thread(mwc.main, ["csms", "--config", str(cfg), *args])
        out, err = capsys.readouterr()
        return rc, out, err

    monkeypatch.setenv("PW", PASSWORD)
    rc, out, err = await mwc_csms("station", "add", "CS1", "--password-env", "PW")
    assert rc == 0, err
    assert json.loads(out)["has_password"] and PASSWORD not in out + err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    rc, _, err = await mwc_csms("station", "add", "CS2", "--password-stdin")
    assert rc == 2 and "password must be" in err
    rc, _, err = await mwc_csms("station", "add", "CS1")
    assert rc == 1 and "already exists" in err
    assert (await mwc_csms("token", "add", "TOK", "--group", "G"))[0] == 0
    rc, out, _ = await mwc_csms("station", "list")
    assert rc == 0 and json.loads(out)["id"] == "CS1"

    class Cs(ChargePoint):
        @on("Reset")
        def on_reset(self, type: str, **_: Any) -> call_result.Reset:
            return call_result.Reset(status="Accepted" if type == "Immediate" else "Rejected")

    async with running_csms(load_config(cfg)) as server, \
            station(f"ws://127.0.0.1:{server.ocpp_port}", "CS1", Cs) as cp:
        await cp.call(BOOT, suppress=False)
        auth = await cp.call(call.Authorize(id_token={"id_token": "TOK", "type": "Central"}),
                             suppress=False)
        assert auth.id_token_info["status"] == "Accepted"
        url = f"http://127.0.0.1:{server.api_port}"
        rc, out, err = await mwc_csms("call", "CS1", "Reset", '{"type": "Immediate"}',
                                      "--url", url)
        assert rc == 0 and json.loads(out) == {"status": "Accepted"}, err
        rc, _, err = await mwc_csms("call", "CS1", "Reset", "{not json", "--url", url)
        assert rc == 2 and "not valid JSON" in err
        rc, out, _ = await mwc_csms("call", "NOPE", "Reset", "{}", "--url", url)
        assert rc == 1 and "not connected" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("[ocpp]\nprot = 9000\n")
    rc, _, err = await cli(bad, "station", "list")  # also: the standalone entry point
    assert rc == 2 and "ocpp.prot" in err


async def test_sigkill_loses_nothing_that_was_confirmed(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    repo = SqliteRepository(tmp_path / "csms.db")
    await repo.open()
    for i in range(4):
        await repo.add_station(StationRecord(f"K{i}", 1, True, hash_password(PASSWORD, n=2**10)))
    await repo.close()
    confirmed: set[tuple[str, int]] = set()
    enough = asyncio.Event()

    async def run_station(url: str, sid: str) -> None:
        with contextlib.suppress(Exception):  # the backend dies under our feet
            async with station(url, sid) as cp:
                await cp.call(BOOT, suppress=False)
                for seq in range(10_000):
                    kind = "Started" if seq == 0 else "Updated"
                    await cp.call(call.TransactionEvent(
                        event_type=kind, timestamp=now(), trigger_reason="MeterValuePeriodic",
                        seq_no=seq, transaction_info={"transaction_id": f"T-{sid}"},
                        meter_value=[{"timestamp": now(), "sampled_value": [
                            {"value": float(seq), "measurand": "Energy.Active.Import.Register"}]}]),
                        suppress=False)
                    confirmed.add((f"T-{sid}", seq))  # the CALLRESULT arrived
                    if len(confirmed) >= 200:
                        enough.set()

    async with backend(cfg) as (proc, ports):
        url = f"ws://127.0.0.1:{ports['ocpp_port']}"
        tasks = [asyncio.create_task(run_station(url, f"K{i}")) for i in range(4)]
        await asyncio.wait_for(enough.wait(), 30)
        proc.send_signal(signal.SIGKILL)  # mid-flight: stations are still sending
        await proc.wait()
        snapshot = set(confirmed)  # what the stations were told is stored
        for task in tasks:  # their pending calls would otherwise wait for a timeout
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    db = sqlite3.connect(tmp_path / "csms.db")
    stored = set(db.execute("SELECT t.transaction_id, e.seq_no FROM transaction_events e"
                            " JOIN transactions t ON t.id = e.tx_pk").fetchall())
    db.close()
    assert snapshot <= stored, f"lost {len(snapshot - stored)} confirmed events"
    # The restarted backend serves the same data and carries on.
    async with backend(cfg) as (_, ports), \
            station(f"ws://127.0.0.1:{ports['ocpp_port']}", "K0") as cp:
        await cp.call(BOOT, suppress=False)
        # Past every seqNo K0 sent: one may be stored but unconfirmed (killed before the
        # answer); reusing its number would make "Ended" a repeat, ignored as such.
        seq = max(s for t, s in stored if t == "T-K0") + 1
        await cp.call(call.TransactionEvent(
            event_type="Ended", timestamp=now(), trigger_reason="StopAuthorized",
            seq_no=seq, transaction_info={"transaction_id": "T-K0"}), suppress=False)
    db = sqlite3.connect(tmp_path / "csms.db")
    ended = db.execute("SELECT ended_at FROM transactions WHERE transaction_id='T-K0'").fetchone()
    assert ended[0] is not None
