"""ocpp_server's operator console at ``/`` and its OpenAPI docs, served with local assets."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from csms_fixtures import API_TOKEN, make_config, running_csms


def external_urls(text: str) -> list[str]:
    """Absolute http(s) URLs a browser would load (not namespaces or licence comments)."""
    found = re.findall(r"""(?:src|href)\s*=\s*["'](https?://[^"']+)""", text)
    return [u for u in found if not u.startswith(("http://127.0.0.1", "http://localhost"))]


async def test_console_page_and_assets_hold_no_data_and_load_nothing_outside(
        tmp_path: Path) -> None:
    async with running_csms(make_config(tmp_path)) as server:
        base = f"http://127.0.0.1:{server.api_port}"
        async with httpx.AsyncClient(base_url=base) as c:
            page = await c.get("/")
            js = await c.get("/console/console.js")
            css = await c.get("/console/console.css")
            anon = await c.get("/api/v1/stations")
            missing = await c.get("/console/nothing.js")
    assert page.status_code == 200 and "mwcharge CSMS" in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert external_urls(page.text) == []
    assert js.status_code == 200 and "Authorization" in js.text
    assert css.status_code == 200
    assert anon.status_code == 401  # the data stays behind the operator token
    assert missing.status_code == 404


async def test_docs_are_served_from_local_assets(tmp_path: Path) -> None:
    async with running_csms(make_config(tmp_path)) as server:
        base = f"http://127.0.0.1:{server.api_port}"
        async with httpx.AsyncClient(base_url=base) as c:
            docs = await c.get("/docs")
            redoc = await c.get("/redoc")
            local = re.findall(r"""(?:src|href)=["'](/docs-assets/[^"']+)""", docs.text)
            assets = [await c.get(u) for u in local]
            schema = await c.get("/openapi.json")
            tokens = await c.get("/api/v1/tokens",
                                 headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert external_urls(docs.text) == [] and "cdn" not in docs.text.lower()
    assert redoc.status_code == 200 and external_urls(redoc.text) == []
    assert len(assets) >= 2 and all(a.status_code == 200 and len(a.content) > 1000
                                    for a in assets)
    assert "/api/v1/tokens" in schema.json()["paths"]
    assert tokens.status_code == 200
