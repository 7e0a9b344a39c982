"""The demo's windows on the run: the station's live view (its URL printed at the start), a
progress lines while a first run compiles the allocator, and screenshots of the live view
and the operator console beside the report when Debian's chromium is installed.

Why here and not in the runner: the runner is the scenario's clock; these are conveniences
around it that must never fail a run (each step logs a note and goes on).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

CHROMIUM = "/usr/bin/chromium"
SHOTS = (("live_view.png", "Live view at the end of the run"),
         ("console.png", "Operator console at the end of the run"))
T = TypeVar("T")


async def start_view(station: Any, live: Any) -> Any:
    """The live view on a free loopback port; its URL is printed. None when it cannot bind."""
    from controller.config import WebviewConfig
    from controller.webview import start_webview

    view = await start_webview(station, WebviewConfig(enabled=True, port=0))
    if view is not None:
        live.note(f"live view: {view.url} (open it while the demo runs)")
    return view


async def with_progress(work: Awaitable[T], live: Any, what: str,
                        quiet_s: float = 1.0) -> T:
    """Await ``work``; past ``quiet_s`` print a line each second (a first run compiles the
    allocator into the numba cache, a pause of a minute or more on a slow machine)."""
    task = asyncio.ensure_future(work)
    t0 = time.monotonic()
    shown = False
    while True:
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if done:
            break
        if time.monotonic() - t0 >= quiet_s:
            if not shown:
                live.note(f"{what} (first run only: the result is cached) …")
                shown = True
            elif live.tty:
                live.stream.write(f"\r    … {time.monotonic() - t0:.0f} s")
                live.stream.flush()
    if shown:
        if live.tty:
            live.stream.write("\n")
        live.note(f"{what}: done in {time.monotonic() - t0:.1f} s")
    return task.result()


async def compile_progress(station: Any, live: Any, every_s: float = 5.0) -> None:
    """While a first run compiles the allocator in the background (the station starts at
    once on the pure-Python reference), say so, every ``every_s`` how long it has been, and
    when the compiled kernel took over. Silent on a warm cache."""
    if not getattr(station, "jit_cold", False):
        return
    t0 = time.monotonic()
    live.note("compiling the allocator in the background (first run only: cached "
              "afterwards); the cycles use the pure-Python reference meanwhile")
    next_note = t0 + every_s
    while station.jit_source in ("none", "reference"):
        await asyncio.sleep(0.25)
        if time.monotonic() >= next_note:
            live.note(f"… still compiling the allocator ({time.monotonic() - t0:.0f} s)")
            next_note += every_s
    live.note(f"allocator compiled ({station.jit_source}) after "
              f"{time.monotonic() - t0:.1f} s: the compiled kernel allocates from now on")


async def screenshots(view: Any, api_url: str | None, token: str | None, out: Path,
                      live: Any) -> list[Path]:
    """PNG of the live view and (with a backend) the signed-in console, beside the report.
    Nothing when chromium or Playwright is missing; a failure is a note, never an error."""
    if view is None or not os.path.exists(CHROMIUM):
        return []
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return []
    made: list[Path] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                await page.goto(view.url)
                await page.wait_for_selector("#conn.up", timeout=10_000)
                await page.wait_for_timeout(800)  # a few pushes: the chart has a line
                await page.screenshot(path=str(out / SHOTS[0][0]), full_page=True)
                made.append(out / SHOTS[0][0])
                if api_url and token:
                    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                    await page.goto(api_url + "/")
                    await page.fill("#token", token)
                    await page.click("#login button[type=submit]")
                    await page.wait_for_selector("#stations tbody tr", timeout=10_000)
                    await page.wait_for_timeout(500)
                    await page.screenshot(path=str(out / SHOTS[1][0]), full_page=True)
                    made.append(out / SHOTS[1][0])
            finally:
                await browser.close()
    except Exception as exc:  # a screenshot is a convenience: the run's report still comes
        live.note(f"screenshots not taken: {exc!r}"[:300])
    return made


async def close_view(view: Any) -> None:
    if view is not None:
        try:
            await view.close()
        except Exception as exc:  # the run is over; say so, do not fail the report
            from controller import logs

            logs.get_logger("sim.demo").warning("live view not closed cleanly",
                                                error=repr(exc)[:200])


def listed(out: Path) -> list[tuple[str, str]]:
    """(file, title) of the screenshots present in ``out`` (for the report's HTML)."""
    return [(f, title) for f, title in SHOTS if (out / f).exists()]
