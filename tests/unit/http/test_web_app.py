"""The web app's routes (``device.http.web_app``) and what ``/health`` tells it, on a
scripted backend: the files are served with their types, without a key, and never in
the way of the API's own routes and statuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud import AsyncClient
from edgecloud.config import Settings
from edgecloud.errors import ConfigError
from edgecloud.http import create_app
from edgecloud.http._app import WEB_APP
from tests.fakes import ScriptedBackend

KEY = "a-key-for-the-web-app"


def get(paths: list[str], *, settings: Settings | None = None, **http: Any) -> list[httpx.Response]:
    settings = settings or Settings.load(device={"http": http})
    app = create_app(settings, client=AsyncClient(ScriptedBackend()))

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://device") as c:
            return [await c.get(p) for p in paths]

    return asyncio.run(main())


def test_the_shipped_app_is_served_at_the_root_with_its_types_and_no_key() -> None:
    paths = ["/", "/app.js", "/style.css", "/sw.js", "/manifest.webmanifest", "/v1/models"]
    page, js, css, sw, manifest, models = get(paths, api_keys=[KEY])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<link rel="manifest" href="manifest.webmanifest">' in page.text
    assert (
        js.headers["content-type"].startswith("text/javascript")
        and "v1/chat/completions" in js.text
    )
    assert css.headers["content-type"].startswith("text/css")
    assert sw.headers["content-type"].startswith("text/javascript") and "caches" in sw.text
    assert manifest.headers["content-type"] == "application/manifest+json"
    assert page.headers["cache-control"] == "no-cache" and page.headers["etag"]
    assert models.status_code == 401  # the page loads without a key; the API it calls does not


def test_every_file_the_manifest_and_the_service_worker_name_is_there() -> None:
    manifest = json.loads((WEB_APP / "manifest.webmanifest").read_text())
    assert manifest["display"] == "standalone" and manifest["start_url"] == "./"
    icons = [i["src"] for i in manifest["icons"]]
    assert {"192x192", "512x512"} <= {i["sizes"] for i in manifest["icons"]}
    responses = get([f"/{name}" for name in icons])
    assert [r.status_code for r in responses] == [200] * len(icons)
    assert responses[1].content.startswith(b"\x89PNG")
    shell = (WEB_APP / "sw.js").read_text().split("const SHELL = [", 1)[1].split("]", 1)[0]
    cached = [s.strip().strip('"') for s in shell.replace("\n", "").split(",") if s.strip()]
    assert set(cached) - {"./"} == {p.name for p in WEB_APP.iterdir()} - {"sw.js"}


def test_the_api_keeps_its_statuses_and_nothing_outside_the_folder_is_served() -> None:
    wrong_method, missing, outside, hidden, health = get(
        ["/v1/chat/completions", "/nothing.js", "/..%2Fpyproject.toml", "/.hidden", "/health"]
    )
    assert wrong_method.status_code == 405  # not the web app's 404
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert outside.status_code == 404 and hidden.status_code == 404
    assert health.json()["cloud"] is None and health.json()["adapter_version"] is None


def test_the_app_can_be_replaced_or_turned_off(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>my app</p>")
    [mine] = get(["/"], web_app=str(tmp_path))
    assert mine.text == "<p>my app</p>"
    [off] = get(["/"], web_app_enabled=False)
    assert off.status_code == 404
    with pytest.raises(ConfigError, match=r"no index\.html"):
        get(["/"], web_app=str(tmp_path / "missing"))


def test_health_says_a_cloud_is_configured_before_the_first_request_checks_it() -> None:
    settings = Settings.load(
        device={"cloud": {"endpoints": [{"target": "127.0.0.1:1", "tls": False}]}}
    )
    [health] = get(["/health"], settings=settings)
    assert health.json()["cloud"] == {"endpoints": 1, "available": None, "healthy": None}
