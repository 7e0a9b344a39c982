"""The live view and the operator console in a real browser (chromium via Playwright).

The tests share one running stack (conftest.py) and run in this order: each leaves the
station in the state the next one starts from (truck A charging on gun 1, then truck B on
gun 2). Every test saves a screenshot under its own tmp_path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from browser_stack import API_TOKEN, MODULES, Stack, needs_browser
from helpers import eventually

pytestmark = [needs_browser, pytest.mark.asyncio(loop_scope="module")]


async def gun_current(page: Any, g: int) -> float | None:
    raw = await page.get_attribute(f"#gun-{g} .current", "data-value")
    return float(raw) if raw not in (None, "") else None


async def test_live_view_loads_with_no_console_errors(stack: Stack, tmp_path: Path) -> None:
    page = await stack.page(stack.view_url)
    await page.wait_for_selector("#conn.up", timeout=10_000)
    await page.wait_for_selector(f'.tile[data-n="{MODULES}"]', timeout=5_000)
    assert await page.locator(".tile").count() == MODULES  # numbered from 1
    assert await page.text_content("#station-id") == "TEST-1"
    assert await page.text_content("#cap-source") != "–"
    await stack.shot(page, "live-view")
    (tmp_path / "live-view.png").write_bytes((stack.out / "live-view.png").read_bytes())
    assert stack.errors == []
    await page.close()


async def test_gun_current_follows_the_simulated_truck(stack: Stack, tmp_path: Path) -> None:
    page = await stack.page(stack.view_url)
    truck = stack.trucks[0]
    truck.plug_in()

    async def near(target: float) -> bool:
        shown = await gun_current(page, 1)
        return shown is not None and abs(shown - target) < 0.1 * target + 15

    await eventually(lambda: near(300.0), 20, 0.1, "gun 1 reaches the truck's 300 A maximum",
                     detail=lambda: stack.station.last_record.guns[0])  # type: ignore[union-attr]
    truck.params = dataclasses.replace(truck.params, ev_max_current_a=150.0)
    await eventually(lambda: near(150.0), 10, 0.1, "gun 1 follows the truck down to 150 A")
    shown = await gun_current(page, 1)
    assert shown is not None and abs(shown - truck.current_a) < 0.1 * 150 + 15
    assert await page.text_content("#gun-1 .state") == "Charging"
    await page.screenshot(path=str(tmp_path / "gun-follows-truck.png"), full_page=True)
    assert stack.errors == []
    await page.close()


async def publish_grid(stack: Stack, limit_kw: float, ident: str) -> float:
    """Publish a grid limit as the EMS would; returns the monotonic time of the publish."""
    async with aiomqtt.Client("127.0.0.1", stack.broker_port) as c:
        body = {"id": ident, "limit_kw": limit_kw, "valid_for_s": 120,
                "issued_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
                "source": "ems-test"}
        t = time.monotonic()
        await c.publish("mwc/TEST-1/grid/limit", json.dumps(body).encode(), qos=1)
        return t


async def test_grid_limit_over_mqtt_shows_as_binding_within_2_s(stack: Stack,
                                                                tmp_path: Path) -> None:
    page = await stack.page(stack.view_url)
    await eventually(lambda: gun_current(page, 1), 10, 0.1, "gun 1 charging")
    t0 = await publish_grid(stack, 60.0, "browser-peak-1")

    async def bound() -> bool:
        b = await page.get_attribute("#gun-1 .binding", "data-binding")
        src = await page.get_attribute("#gun-1 .binding", "data-source") or ""
        return b == "STATION" and src == "grid:ems-test:browser-peak-1"

    await eventually(bound, 5, 0.1, "gun 1 bound by the grid limit")
    took = time.monotonic() - t0
    assert await page.text_content("#cap-source") == "grid:ems-test:browser-peak-1"
    assert (await page.text_content("#station-cap")).startswith("60.0")  # type: ignore[union-attr]
    print(f"grid limit shown as binding after {took:.2f} s")
    await page.screenshot(path=str(tmp_path / "grid-binding.png"), full_page=True)
    assert took < 2.0
    await publish_grid(stack, 3000.0, "browser-release-1")  # the later tests want power
    assert stack.errors == []
    await page.close()


async def test_a_module_fault_turns_its_tile(stack: Stack, tmp_path: Path) -> None:
    page = await stack.page(stack.view_url)
    await page.wait_for_selector('.tile[data-n="3"]', timeout=10_000)
    assert "fault" not in (await page.get_attribute('.tile[data-n="3"]', "class") or "")
    stack.sim.physics.inject_module_fault(2, 5)  # module 3 on the cabinet label
    try:
        await page.wait_for_selector('.tile.fault[data-n="3"]', timeout=5_000)
        assert await page.locator(".tile.fault").count() == 1
        await page.screenshot(path=str(tmp_path / "module-fault.png"), full_page=True)
    finally:
        stack.sim.physics.clear_module_fault(2)
    assert stack.errors == []
    await page.close()


async def sign_in(stack: Stack) -> Any:
    page = await stack.page(stack.console_url)
    await page.fill("#token", API_TOKEN)
    await page.click("#login button[type=submit]")
    await page.wait_for_selector('#stations tr[data-station="TEST-1"]', timeout=10_000)
    return page


async def test_console_adds_and_blocks_a_token(stack: Stack, tmp_path: Path) -> None:
    page = await sign_in(stack)
    await page.fill("#new-token", "FLEET-42")
    await page.click("#token-add button[type=submit]")
    row = '#tokens tr[data-token="FLEET-42"]'
    await page.wait_for_selector(f'{row}[data-status="Accepted"]', timeout=5_000)
    await page.click(f"{row} button.block")
    await page.wait_for_selector(f'{row}[data-status="Blocked"]', timeout=5_000)
    stored = {t.id_token: t.status for t in await stack.csms.repo.list_tokens()}
    assert stored["FLEET-42"] == "Blocked"
    await page.screenshot(path=str(tmp_path / "console-tokens.png"), full_page=True)
    assert stack.errors == []
    await page.close()


async def test_console_charging_limit_brings_the_gun_current_down(stack: Stack,
                                                                  tmp_path: Path) -> None:
    live = await stack.page(stack.view_url)
    stack.trucks[1].plug_in()

    async def above(g: int, amps: float) -> bool:
        shown = await gun_current(live, g)
        return shown is not None and shown > amps

    await eventually(lambda: above(2, 250.0), 20, 0.1, "gun 2 charging above 250 A")
    page = await sign_in(stack)
    await page.select_option("#cmd-station", "TEST-1")
    await page.fill("#cmd-evse", "2")
    await page.fill("#cmd-limit", "100")
    await page.click("#cmd-set-limit")
    await page.wait_for_selector("#results li:has-text('set limit 100')", timeout=10_000)
    text = await page.text_content("#results li")
    assert text is not None and "Accepted" in text, text

    async def below() -> bool:
        shown = await gun_current(live, 2)
        return shown is not None and shown < 110.0

    await eventually(below, 10, 0.1, "gun 2 down to the 100 A charging limit on the live view",
                     detail=lambda: stack.station.last_record.guns[1])  # type: ignore[union-attr]
    source = await live.get_attribute("#gun-2 .binding", "data-source") or ""
    assert source.lower().startswith("ocpp"), source
    await page.screenshot(path=str(tmp_path / "console-limit.png"), full_page=True)
    await live.screenshot(path=str(tmp_path / "live-limit.png"), full_page=True)
    await stack.shot(page, "console")
    assert stack.errors == []
    await page.close()
    await live.close()


async def test_console_remote_stop_ends_the_session(stack: Stack, tmp_path: Path) -> None:
    page = await sign_in(stack)
    running = '#transactions tr.running'
    await page.wait_for_selector(running, timeout=10_000)
    txs = await stack.csms.repo.list_transactions(
        __import__("ocpp_server.repository", fromlist=["TxFilter"]).TxFilter(
            "TEST-1", None, True, None, None, 10, 0))
    tx = next(t for t in txs if t["evse_id"] == 1)
    row = f'#transactions tr[data-tx="{tx["transaction_id"]}"]'
    await page.click(f"{row} button.remote-stop")
    await page.wait_for_selector(f'{row}[data-state="ended"]', timeout=15_000)
    cells = await page.locator(f"{row} td").all_text_contents()
    assert "Remote" in cells[9], cells
    assert stack.station.sessions[0].state.value != "Charging"
    await page.screenshot(path=str(tmp_path / "console-remote-stop.png"), full_page=True)
    assert stack.errors == []
    await page.close()


async def test_console_flags_a_seqno_gap(stack: Stack, tmp_path: Path) -> None:
    """A transaction whose events 0 and 3 arrived but not 1 and 2 (another station's)."""
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    for seq, kind in ((0, "Started"), (3, "Ended")):
        await stack.csms.repo.record_transaction_event("TEST-1", {
            "eventType": kind, "timestamp": now, "triggerReason": "Authorized", "seqNo": seq,
            "transactionInfo": {"transactionId": "GAPPY-1", "stoppedReason": "Local"},
            "evse": {"id": 2, "connectorId": 1}, "idToken": {"idToken": "TRUCK-B",
                                                             "type": "Central"}})
    page = await sign_in(stack)
    row = '#transactions tr[data-tx="GAPPY-1"]'
    await page.wait_for_selector(f"{row}.gap", timeout=10_000)
    assert (await page.text_content(f"{row} td.seq")) == "gap: 1,2"
    ok_rows = page.locator("#transactions tr:not(.gap) td.seq")
    assert await ok_rows.count() >= 1 and set(await ok_rows.all_text_contents()) == {"ok"}
    await page.screenshot(path=str(tmp_path / "console-seqno-gap.png"), full_page=True)
    assert stack.errors == []
    await page.close()


async def test_api_docs_render_offline(stack: Stack, tmp_path: Path) -> None:
    """Swagger UI draws the operator API from local assets: no request leaves loopback."""
    page = await stack.browser.new_page()
    hosts: list[str] = []
    page.on("request", lambda req: hosts.append(req.url.split("/")[2]))
    await page.goto(stack.console_url + "docs")
    await page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
    try:
        await page.wait_for_selector('[data-path="/api/v1/tokens"]', timeout=10_000)
    finally:
        await page.screenshot(path=str(tmp_path / "api-docs.png"))
    assert hosts and all(h.startswith("127.0.0.1:") for h in hosts if h), set(hosts)
    await page.close()


async def test_clear_fault_button_asks_first_then_clears_the_gun(stack: Stack,
                                                                 tmp_path: Path) -> None:
    page = await stack.page(stack.view_url)
    stack.station._faults[0] = "test: insulation monitor tripped"  # a latched gun fault
    button = "#gun-1 button.clear-fault"
    await page.wait_for_selector(button, state="visible", timeout=5_000)
    assert await page.text_content("#gun-1 .state") == "Faulted"
    asked: list[str] = []

    async def decline(dialog: Any) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    page.once("dialog", decline)
    await page.click(button)
    await eventually(lambda: asked, 5, 0.1, "the confirmation dialog")
    await asyncio.sleep(0.6)  # three pushes: still faulted, nothing was sent
    assert await page.text_content("#gun-1 .state") == "Faulted"
    assert "gun 1" in asked[0]

    async def accept(dialog: Any) -> None:
        await dialog.accept()

    page.once("dialog", accept)
    await page.click(button)
    await page.wait_for_selector(button, state="hidden", timeout=5_000)
    assert await page.text_content("#gun-1 .state") != "Faulted"
    assert stack.station._faults[0] is None
    await page.screenshot(path=str(tmp_path / "fault-cleared.png"), full_page=True)
    assert stack.errors == []
    await page.close()
