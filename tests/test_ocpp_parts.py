"""The OCPP client's parts (issue 20): the OCPP limit's fallback, the secret password, the
frame guard's error spelling, and a package without import loops."""

from __future__ import annotations

import ast
import json
import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp_fixtures import station_config

from controller.limits import STATION, LimitBook, LimitKey, gun
from controller.ocpp.config import OcppConfig
from controller.ocpp.frame_guard import FrameGuard
from controller.ocpp.smart_charging import Profiles
from controller.ocpp.v16.service import Ocpp16Service
from controller.ocpp.v201.service import OcppService

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
MONO0 = 1000.0  # the monotonic time of T0


def _profile(pid: int, purpose: str, unit: str, periods: list[tuple[int, float]],
             duration: int | None = None, level: int = 0) -> dict[str, Any]:
    sched: dict[str, Any] = {"id": pid, "charging_rate_unit": unit, "start_schedule":
                             T0.isoformat(), "charging_schedule_period": [
                                 {"start_period": s, "limit": v} for s, v in periods]}
    if duration is not None:
        sched["duration"] = duration
    return {"id": pid, "stack_level": level, "charging_profile_purpose": purpose,
            "charging_profile_kind": "Absolute", "charging_schedule": [sched]}


def _profiles(tmp_path: Path) -> Profiles:
    p = Profiles(sqlite3.connect(tmp_path / "p.sqlite3"), 2, [1000.0, 1000.0])
    # the station's cap steps down, up and down again, then ends
    p.install(0, _profile(1, "ChargingStationMaxProfile", "W",
                          [(0, 900_000.0), (600, 300_000.0), (1200, 800_000.0),
                           (1500, 200_000.0)], duration=1800))
    # gun 1's default goes up, down, up; a higher stack level ends half way on gun 2
    p.install(1, _profile(2, "TxDefaultProfile", "A",
                          [(0, 300.0), (600, 100.0), (1200, 500.0)], duration=2400))
    p.install(2, _profile(3, "TxDefaultProfile", "A", [(0, 700.0)]))
    p.install(2, _profile(4, "TxDefaultProfile", "A", [(0, 200.0), (300, 900.0)],
                          duration=900, level=1))
    return p


def _wall(mono: float) -> datetime:
    return T0 + timedelta(seconds=mono - MONO0)


def test_a_missed_period_write_never_lifts_the_ocpp_limit_above_the_profile(
        tmp_path: Path) -> None:
    """The limits are written once (at ``t``) and then never again (a stalled loop): until
    the end of the period after the one written, every scope stays at or below what the
    profiles allow at that moment — the expired limit falls back to min(this, next)."""
    profiles = _profiles(tmp_path)
    checked = 0
    for t in range(0, 2400, 50):
        book = LimitBook()
        written = MONO0 + t
        profiles.apply(book, written, _wall(written))
        for scope, evse in ((STATION, 0), (gun(0), 1), (gun(1), 2)):
            lim = book.get(scope, LimitKey.OCPP)
            if lim is None:
                continue
            assert lim.expires_at is not None
            for later in range(t + 1, t + 2400, 7):
                now = MONO0 + later
                got = (profiles.station_limit(_wall(now)) if evse == 0
                       else profiles.evse_limit(evse, _wall(now)))
                allowed = math.inf if got is None else profiles.to_unit(
                    got[0], got[1], "W" if evse == 0 else "A", evse)
                # within one missed write: the period written and the next one
                first_end = lim.expires_at
                nxt = (profiles.station_limit(_wall(first_end)) if evse == 0
                       else profiles.evse_limit(evse, _wall(first_end)))
                horizon = first_end if nxt is None else MONO0 + (
                    nxt[2] - T0).total_seconds()
                if now >= horizon or got is None:
                    continue
                value = book.effective(scope, now).value
                assert value <= allowed + 1e-9, (scope, t, later, value, allowed)
                checked += 1
    assert checked > 1000


def test_the_fallback_is_the_lower_of_this_period_and_the_next(tmp_path: Path) -> None:
    profiles = _profiles(tmp_path)
    book = LimitBook()
    profiles.apply(book, MONO0 + 100, _wall(MONO0 + 100))  # gun 1: 300 A now, 100 A next
    assert book.effective(gun(0), MONO0 + 599).value == 300.0
    assert book.effective(gun(0), MONO0 + 600).value == 100.0  # no write: the fallback
    fb = book.fallback(gun(0), LimitKey.OCPP)
    assert fb is not None and fb.value == 100.0 and fb.expires_at is None
    profiles.apply(book, MONO0 + 700, _wall(MONO0 + 700))  # 100 A now, 500 A next
    assert book.effective(gun(0), MONO0 + 5000).value == 100.0  # never above this period
    profiles.apply(book, MONO0 + 1300, _wall(MONO0 + 1300))  # 500 A, the profile ends
    assert book.fallback(gun(0), LimitKey.OCPP) is None
    assert book.effective(gun(0), MONO0 + 2400).value == math.inf  # ended: no limit
    # gun 2: the level-1 profile ends at 900 s, the level-0 one (700 A) takes over
    profiles.apply(book, MONO0 + 400, _wall(MONO0 + 400))  # 900 A now
    assert book.effective(gun(1), MONO0 + 950).value == 700.0


def test_a_cleared_or_ended_profile_leaves_no_limit_and_no_fallback(tmp_path: Path) -> None:
    profiles = _profiles(tmp_path)
    book = LimitBook()
    profiles.apply(book, MONO0, _wall(MONO0))
    assert book.fallback(STATION, LimitKey.OCPP) is not None
    profiles.clear(purpose="ChargingStationMaxProfile")
    profiles.apply(book, MONO0 + 1, _wall(MONO0 + 1))
    assert book.get(STATION, LimitKey.OCPP) is None
    assert book.fallback(STATION, LimitKey.OCPP) is None
    assert book.effective(STATION, MONO0 + 10_000).value == math.inf  # OCPP: no profile
    profiles.apply(book, MONO0 + 3000, _wall(MONO0 + 3000))  # gun 1's default has ended
    assert book.get(gun(0), LimitKey.OCPP) is None
    assert book.fallback(gun(0), LimitKey.OCPP) is None


SECRET = "a-secret-password-16+"


@pytest.mark.parametrize("version", ["2.0.1", "1.6"])
async def test_the_ocpp_password_is_a_secret_and_still_sent(tmp_path: Path,
                                                          version: str) -> None:
    cfg = OcppConfig(url="ws://127.0.0.1:9/ocpp", password=SECRET,  # type: ignore[arg-type]
                     version=version, database=str(tmp_path / "o.sqlite3"))
    assert SECRET not in repr(cfg) and SECRET not in str(cfg.model_dump())
    assert cfg.password is not None and cfg.password.get_secret_value() == SECRET
    svc = (OcppService if version == "2.0.1" else Ocpp16Service)(cfg, station_config())
    try:
        assert svc.link_password() == SECRET  # the device model / AuthorizationKey seed
    finally:
        await svc.close()
    with pytest.raises(ValueError, match="needs a password"):
        OcppConfig(url="ws://127.0.0.1:9/ocpp", password="")  # type: ignore[arg-type]


@pytest.mark.parametrize("spelling", ["FormatViolation", "FormationViolation"])
async def test_the_frame_guard_answers_in_the_versions_spelling(spelling: str) -> None:
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    class Quiet:
        def info(self, event: str, /, **fields: object) -> None: ...
        def warning(self, event: str, /, **fields: object) -> None: ...
        def error(self, event: str, /, **fields: object) -> None: ...
        def exception(self, event: str, /, **fields: object) -> None: ...

    async def never(raw: str) -> None:
        raise AssertionError("a bad frame reached the library")

    guard = FrameGuard(Quiet(), send, spelling)
    await guard.route('[2, "u-1", "Reset", {"type": NaN}]', never)
    assert json.loads(sent[-1])[:3] == [4, "u-1", spelling]
    with pytest.raises(ValueError, match="unknown format error code"):
        FrameGuard(Quiet(), send, "FormatError")


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports at module level (run time)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            out |= {n for n in names if n.startswith(package)}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith(package)}
    return out


def test_the_ocpp_package_has_no_import_loops() -> None:
    root = Path(__file__).resolve().parents[1]
    pkg = root / "controller" / "ocpp"
    mods = {}
    for f in pkg.rglob("*.py"):
        name = ".".join(f.relative_to(root).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    graph = {m: _imports(f, "controller.ocpp") & set(mods) for m, f in mods.items()}
    for f in mods.values():
        assert "TYPE_CHECKING" not in f.read_text(), f  # nothing held apart for mypy only

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return seen

    loops = sorted(m for m in graph if m in reach(m))
    assert not loops, loops
