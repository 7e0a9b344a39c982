"""The station's boundaries under hostile input, as plain functions for the tests and for
``bench/fuzz.py``: each returns ``{"cases", "crashes", "internal_errors", "unanswered",
"closed", "rss_growth_mb"}`` plus what else it checked (``wrong_code``, ``honest_max_s``,
``stored_invalid``, ...), and never raises for what the input does to the station.

- :func:`fuzz_station`: the OCPP 2.0.1 or 1.6J station client (the real ``OcppService`` /
  ``Ocpp16Service`` on a fake station) connected to a hostile backend on a real websocket that
  sends generated CALLs (:mod:`fuzz.gen_ocpp`) and checks every answer; an honest request
  runs between batches, and the OCPP database is opened again afterwards.
- :func:`fuzz_mqtt`: grid limit payloads through a private Mosquitto into
  ``GridLimitSource`` (:mod:`fuzz.gen_mqtt`).
- :func:`fuzz_config`: configuration files (:mod:`fuzz.gen_config`) through ``load_config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:  # the fixtures are imported the way the test modules do
    sys.path.insert(0, _TESTS)

import websockets  # noqa: E402
from ocpp_fixtures import FakeStation, SimWall, ocpp_config, station_config  # noqa: E402

from controller.ocpp.smart_charging import shape_problem  # noqa: E402
from fuzz.gen_ocpp import (  # noqa: E402
    BAD_DATES,
    Case,
    Generator,
    deep,
    dumps,
    hostile_value,
    mutate,
    templates16,
    templates201,
)

WINDOW = 16  # CALLs in flight at once
REPLY_TIMEOUT_S = 10.0  # generous: the machine is shared
HONEST_EVERY = 250


def rss_mb() -> float:
    """Resident set size of this process now (not the peak)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _now() -> str:
    return "2026-01-05T08:00:00.000Z"


def _answer(version: str, action: str, payload: Any) -> dict[str, Any]:
    """The honest answer of the backend to a CALL of the station."""
    if action == "BootNotification":
        return {"currentTime": _now(), "interval": 300, "status": "Accepted"}
    if action == "Heartbeat":
        return {"currentTime": _now()}
    if version == "1.6":
        if action == "Authorize":
            return {"idTagInfo": {"status": "Accepted"}}
        if action == "StartTransaction":
            return {"idTagInfo": {"status": "Accepted"}, "transactionId": 1}
        if action == "DataTransfer":
            return {"status": "Accepted"}
        return {}
    if action == "Authorize":
        return {"idTokenInfo": {"status": "Accepted"}}
    return {}


class HostileBackend:
    """A CSMS on a real websocket: answers the station's CALLs honestly, sends the fuzz
    CALLs and collects the station's answers by message id (``"-1"`` ones counted)."""

    def __init__(self, version: str, hostile_answers: float = 0.0, seed: int = 0) -> None:
        self.version = version
        #: Share of the station's CALLs (but its boot) answered with a hostile response.
        self.hostile_answers = hostile_answers
        self.rng = random.Random(seed)
        self.hostile_sent = 0
        self.ws: Any = None
        self.connections = 0
        self.closes = 0
        self.replies: dict[str, list[Any]] = {}
        self.minus_one: list[list[Any]] = []
        self.station_calls: list[str] = []
        self.arrived = asyncio.Event()
        self.server: Any = None
        self.port = 0

    async def start(self) -> None:
        proto = websockets.Subprotocol("ocpp1.6" if self.version == "1.6" else "ocpp2.0.1")
        self.server = await websockets.serve(self._handler, "127.0.0.1", 0,
                                             subprotocols=[proto], max_size=2 ** 22)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _handler(self, ws: Any) -> None:
        self.connections += 1
        self.ws = ws
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if msg[0] == 2:
                    self.station_calls.append(msg[2])
                    answer = [3, msg[1], _answer(self.version, msg[2], msg[3])]
                    if (msg[2] != "BootNotification"
                            and self.rng.random() < self.hostile_answers):
                        self.hostile_sent += 1
                        await ws.send(self._hostile(answer))
                    else:
                        await ws.send(json.dumps(answer))
                elif msg[1] == "-1":
                    self.minus_one.append(msg)
                else:
                    self.replies[msg[1]] = msg
                self.arrived.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closes += 1
            if self.ws is ws:
                self.ws = None

    def _hostile(self, answer: list[Any]) -> str:
        """A hostile response to one of the station's CALLs."""
        rng = self.rng
        pick = rng.randrange(5)
        if pick == 0:
            return dumps([4, answer[1], "InternalError", "backend refuses", {}])
        if pick == 1:
            return dumps([3, answer[1], {"currentTime": rng.choice(BAD_DATES),
                                         "interval": hostile_value(rng)}])
        if pick == 2:
            return dumps([3, answer[1], deep(rng.choice((40, 1000, 5000)), rng)])
        if pick == 3:
            return dumps([3, "not-" + str(answer[1]), answer[2]])  # an id never sent
        return dumps([3, answer[1], mutate(rng, answer[2] or {"x": 1})[0]])

    async def wait(self, pred: Any, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not pred():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(left, 0.2))
        return True

    async def send(self, frame: str | bytes) -> bool:
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send(frame)
        except websockets.ConnectionClosed:
            return False
        return True


def _code(reply: list[Any]) -> str:
    return "result" if reply[0] == 3 else str(reply[2])


async def _honest(be: HostileBackend, version: str, n: int) -> float | None:
    """Seconds an honest request took to be answered (None: not answered in time)."""
    uid = f"honest-{n}"
    action, payload = (("GetConfiguration", {"key": ["HeartbeatInterval"]}) if version == "1.6"
                       else ("GetVariables", {"getVariableData": [{
                           "component": {"name": "OCPPCommCtrlr"},
                           "variable": {"name": "HeartbeatInterval"}}]}))
    t0 = time.monotonic()
    if not await be.send(json.dumps([2, uid, action, payload])):
        return None
    ok = await be.wait(lambda: uid in be.replies, REPLY_TIMEOUT_S)
    return time.monotonic() - t0 if ok and be.replies[uid][0] == 3 else None


def _stored_invalid(db_path: str, guns: int) -> int:
    """Persisted profiles that would not load again (should be none: nothing invalid is
    stored)."""
    db = sqlite3.connect(db_path)
    try:
        bad = 0
        for _i, e, d in db.execute("SELECT id, evse, data FROM profiles"):
            try:
                p = json.loads(d)
            except ValueError:
                bad += 1
                continue
            bad += shape_problem(e, p, guns, 24) is not None
        return bad
    finally:
        db.close()


@contextlib.asynccontextmanager
async def linked(version: str, directory: Path, hostile_answers: float = 0.0, seed: int = 0,
                 **cfg: Any) -> AsyncIterator[tuple[HostileBackend, Any, FakeStation]]:
    """A hostile backend and the station client of ``version`` on a fake station, online
    (the start-up traffic over); both stopped afterwards. ``hostile_answers``: the share of
    the station's own CALLs answered with a hostile response once it is online."""
    from controller.ocpp.v16.service import Ocpp16Service
    from controller.ocpp.v201.service import OcppService

    be = HostileBackend(version)
    await be.start()
    kw: dict[str, Any] = {"password": "s3cret-pass-16-chars", **cfg}
    if version == "1.6":
        kw["version"] = "1.6"
    wall = SimWall()
    cls: Any = Ocpp16Service if version == "1.6" else OcppService
    svc = cls(ocpp_config(directory, be.port, **kw), station_config(), wall=wall)
    st = FakeStation(wall)
    svc.attach(st)
    task = asyncio.ensure_future(svc.run())
    svc.fuzz_task = task
    try:
        if not await be.wait(lambda: svc.online and be.ws is not None, 30.0):
            raise RuntimeError("the station client never came online")
        await be.wait(lambda: be.station_calls.count("StatusNotification") >= 2, 5.0)
        be.hostile_answers = hostile_answers
        be.rng = random.Random(seed)
        yield be, svc, st
    finally:
        with contextlib.suppress(Exception):
            await svc.close()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await be.stop()


async def call(be: HostileBackend, uid: str, frame: str | bytes) -> list[Any] | None:
    """Send one frame and return the answer with ``uid`` (None: none in time)."""
    if not await be.send(frame):
        return None
    if uid == "-1":
        n = len(be.minus_one)
        ok = await be.wait(lambda: len(be.minus_one) > n, REPLY_TIMEOUT_S)
        return be.minus_one[-1] if ok else None
    ok = await be.wait(lambda: uid in be.replies, REPLY_TIMEOUT_S)
    return be.replies.pop(uid) if ok else None


async def fuzz_station(cases: int, seed: int, version: str, *,
                       hostile_answers: float = 0.2) -> dict[str, Any]:
    """``cases`` hostile CALLs from a backend to the station client of ``version``
    ("2.0.1" or "1.6"), while ``hostile_answers`` of the station's own CALLs get a hostile
    response; see the module docstring for what is counted."""
    from controller.ocpp.v16.service import Ocpp16Service
    from controller.ocpp.v201.service import OcppService

    gen = Generator(templates16() if version == "1.6" else templates201(), seed)
    tmp = tempfile.TemporaryDirectory(prefix="mwc-fuzz-")
    cls: Any = Ocpp16Service if version == "1.6" else OcppService
    out: dict[str, Any] = {"cases": 0, "crashes": 0, "internal_errors": 0, "unanswered": 0,
                           "closed": 0, "rss_growth_mb": 0.0, "wrong_code": 0,
                           "honest_max_s": 0.0, "honest_unanswered": 0, "stored_invalid": 0,
                           "reload_ok": False, "codes": {}, "hostile_answers": 0,
                           "examples": []}
    try:
        async with linked(version, Path(tmp.name), hostile_answers, seed) as (be, svc, _st):
            out["closed"] = await _run(gen, be, svc, version, cases, out)
    except Exception as exc:  # reported, not raised: the caller asserts on it
        out["crashes"] += 1
        out["examples"].append(f"run failed: {exc!r}"[:300])
    db = str(Path(tmp.name) / "ocpp.sqlite3")
    out["stored_invalid"] = _stored_invalid(db, 2)
    try:  # the stored state loads again
        kw: dict[str, Any] = {"version": "1.6"} if version == "1.6" else {}
        again = cls(ocpp_config(Path(tmp.name), 1, **kw), station_config(), wall=SimWall())
        out["reload_ok"] = True
        with contextlib.suppress(Exception):
            await again.close()
    except Exception as exc:
        out["examples"].append(f"reload failed: {exc!r}"[:300])
    tmp.cleanup()
    return out


async def _run(gen: Generator, be: HostileBackend, svc: Any, version: str, cases: int,
               out: dict[str, Any]) -> int:
    """The fuzz loop; returns how many times the connection closed."""
    gc.collect()
    rss0 = rss_mb()
    pending: dict[str, Case] = {}
    minus_expected = 0

    def settle(uid: str, case: Case) -> None:
        got = _code(be.replies[uid])
        out["codes"][got] = out["codes"].get(got, 0) + 1
        if got == "InternalError":
            out["internal_errors"] += 1
        if got not in case.expect:
            out["wrong_code"] += 1
            if len(out["examples"]) < 10:
                out["examples"].append(f"{case.what}: got {got}, expected "
                                       f"{sorted(case.expect)}")

    async def drain(limit: int) -> None:
        """Wait until at most ``limit`` CALLs are in flight (unanswered after the
        timeout are counted and given up)."""
        if len(pending) <= limit:
            return
        ok = await be.wait(lambda: sum(u not in be.replies for u in pending) <= limit,
                           REPLY_TIMEOUT_S)
        for uid, case in list(pending.items()):
            if uid in be.replies:
                settle(uid, case)
                del pending[uid]
            elif not ok and len(pending) > limit:
                out["unanswered"] += 1
                if len(out["examples"]) < 10:
                    out["examples"].append(f"unanswered: {case.what}")
                del pending[uid]

    for i in range(cases):
        case = gen.case()
        if not await be.send(case.frame):
            out["unanswered"] += 1
        elif case.uid is None:
            minus_expected += 1
        else:
            pending[case.uid] = case
        out["cases"] += 1
        await drain(WINDOW)
        if (i + 1) % HONEST_EVERY == 0:
            await drain(0)
            took = await _honest(be, version, i)
            if took is None:
                out["honest_unanswered"] += 1
            else:
                out["honest_max_s"] = max(out["honest_max_s"], round(took, 3))
    await drain(0)
    await be.wait(lambda: len(be.minus_one) >= minus_expected, REPLY_TIMEOUT_S)
    out["unanswered"] += max(0, minus_expected - len(be.minus_one))
    took = await _honest(be, version, cases)
    if took is None:
        out["honest_unanswered"] += 1
    else:
        out["honest_max_s"] = max(out["honest_max_s"], round(took, 3))
    gc.collect()
    out["rss_growth_mb"] = round(rss_mb() - rss0, 1)
    if svc.fuzz_task.done():
        out["crashes"] += 1
        out["examples"].append(f"service task ended: {svc.fuzz_task!r}"[:300])
    out["hostile_answers"] = be.hostile_sent
    return be.closes


async def fuzz_mqtt(cases: int, seed: int) -> dict[str, Any]:
    from fuzz.gen_mqtt import run_mqtt
    return await run_mqtt(cases, seed)


def fuzz_config(cases: int, seed: int) -> dict[str, Any]:
    from fuzz.gen_config import run_config
    return run_config(cases, seed)
