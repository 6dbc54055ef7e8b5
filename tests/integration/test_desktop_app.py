"""The desktop app (examples/apps/desktop, Toga) driven like a user would: type a
question, press Send, read the transcript.

With toga's dummy backend (no display): answers from this computer (the SDK in-process,
a scripted model) and from a real ``edgecloud.http.Server`` found by a real mDNS
announcement on 127.0.0.1 only, plus a device with an API key typed in by address.
With the GTK backend under Xvfb (skipped where toga-gtk, a recent enough PyGObject or
Xvfb is missing): the real window, and a screenshot of it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edgecloud import AsyncClient
from edgecloud.cloud import CloudServer
from edgecloud.cloud._records import RecordStore
from edgecloud.common.aio import LoopThread
from edgecloud.config import CloudConfig, Settings
from edgecloud.http import Server
from tests.fakes import ScriptedBackend
from tests.fakes_cloud import ScriptedEngine

ROOT = Path(__file__).resolve().parents[2]
APP_SRC = ROOT / "examples" / "apps" / "desktop" / "src"
sys.path.insert(0, str(APP_SRC))
os.environ.setdefault("TOGA_BACKEND", "toga_dummy")
pytest.importorskip("toga", reason="toga-core is not installed (pip install toga-core toga-dummy)")
pytest.importorskip("toga_dummy", reason="toga-dummy is not installed (pip install toga-dummy)")

from edgecloud_desktop.app import LAN, NO_DEVICES, THIS_COMPUTER, EdgecloudChat  # noqa: E402
from edgecloud_desktop.connections import LocalConnection  # noqa: E402

LO = ["127.0.0.1"]
KEY = "desktop-app-key-0001"
DOCS_SCREENSHOT = ROOT / "docs" / "images" / "desktop-app.png"
"""Rewritten by the GTK test only when EDGECLOUD_UPDATE_SCREENSHOT is set."""
T = TypeVar("T")


def device(script: str, **http: Any) -> Server:
    settings = Settings.load(device={"http": {"port": 0, "model_name": "robot-desk", **http}})
    return Server(settings, client=AsyncClient(ScriptedBackend(script)))


@contextmanager
def hybrid_device(where: Path, **http: Any) -> Iterator[Server]:
    """A device with a real gRPC cloud on 127.0.0.1 (a scripted engine) and a confidence
    window every answer trips after 3 tokens: each answer is handed off mid-way."""
    runner = LoopThread("desktop-app-cloud")
    config = CloudConfig.model_validate({"insecure": True, "port": 0})
    engine = ScriptedEngine("Kyoto was the capital until 1869.")
    cloud = runner.run(CloudServer.start(engine, config, records=RecordStore(where / "cloud.db")))
    settings = Settings.load(device={
        "router": {"min_mean_logprob": -0.0001, "min_tokens": 3, "window": 3},
        "cloud": {"endpoints": [{"target": f"127.0.0.1:{cloud.port}", "tls": False}],
                  "first_token_timeout_s": 20, "health_interval_s": 60},
        "log": {"path": str(where / "device-log.db")},
        "http": {"port": 0, "model_name": "robot-desk", **http},
    })  # fmt: skip
    client = AsyncClient(ScriptedBackend("Kyoto was the old capital."), settings=settings)
    try:
        with Server(settings, client=client) as server:
            yield server
    finally:
        runner.run(cloud.stop(0))
        runner.close()


@pytest.fixture
def app() -> Iterator[EdgecloudChat]:
    backend = ScriptedBackend("Tokyo.")
    chat = EdgecloudChat(local=LocalConnection(AsyncClient(backend)), interfaces=LO,
                         browse_s=2.0, refresh_s=0.5)  # fmt: skip
    yield chat
    close(chat)


def close(app: EdgecloudChat) -> None:
    app.loop.run_until_complete(app.aclose())
    app.loop.close()
    asyncio.set_event_loop(None)


def run(app: EdgecloudChat, aw: Awaitable[T], timeout_s: float = 20) -> T:
    return app.loop.run_until_complete(asyncio.wait_for(aw, timeout_s))


def press_send(app: EdgecloudChat, question: str, timeout_s: float = 20) -> None:
    """Type the question, press Send (the handler runs as a task on the app's loop) and
    wait until the answer has ended."""
    before = len(app.transcript.turns)
    app.prompt.value = question
    app.send_button._impl.simulate_press()

    async def answered() -> None:
        while len(app.transcript.turns) == before or not app.transcript.turns[-1].done:
            await asyncio.sleep(0.01)
        while app.busy:
            await asyncio.sleep(0.01)

    run(app, answered(), timeout_s)


def wait_listed(app: EdgecloudChat, url: str) -> None:
    """Run the app's loop until the device at ``url`` is in its list (it looks again
    every ``refresh_s``: the first look may come before the announcement is out)."""

    async def listed() -> None:
        while not any(d.url == url for d in app.devices):
            await asyncio.sleep(0.05)

    run(app, listed())


def test_an_answer_from_this_computer_is_marked_local(app: EdgecloudChat) -> None:
    assert app.mode.value == THIS_COMPUTER and app.lan_box not in app.body.children
    press_send(app, "What is the capital of Japan?")
    [view] = app.views
    assert view.answer.text == "Tokyo." and view.badge.text.strip() == "local"
    assert view.why.text == "on the device; no cloud configured"
    assert view.via.text == "asked this computer"
    assert app.prompt.value == "" and app.send_button.enabled
    # the model got the few-shot Q/A prompt, stopped at the end of the line
    prompt, params = app.local._client.backend.seen[0]  # type: ignore[attr-defined]
    assert prompt.startswith("Q: What is the capital of France?\nA: Paris.\n")
    assert prompt.endswith("Q: What is the capital of Japan?\nA:") and tuple(params.stop) == ("\n",)
    press_send(app, "And of France?")
    second, _ = app.local._client.backend.seen[1]  # type: ignore[attr-defined]
    assert "Q: What is the capital of Japan?\nA: Tokyo.\nQ: And of France?\nA:" in second
    assert [v.badge.text.strip() for v in app.views] == ["local", "local"]


@pytest.mark.model
def test_this_computer_opens_the_real_model_and_answers_the_few_shot_prompt(
    model_cache: Path,
) -> None:
    """The path users take: ``AsyncClient.open()`` on the embedded model, in the app."""
    settings = Settings.load(
        cache_dir=model_cache, device={"model": {"n_threads": 2, "n_ctx": 1024}}
    )
    chat = EdgecloudChat(local=LocalConnection(settings=settings), run_locally=True)
    try:
        assert not chat.local.loaded and chat.status.text == "the model loads on the first question"
        press_send(chat, "What is the capital of Japan?", timeout_s=120)
        [view] = chat.views
        assert "Tokyo" in view.answer.text and "\n" not in view.answer.text
        assert view.badge.text.strip() == "local" and chat.status.text == "the model runs here"
    finally:
        close(chat)


def test_a_device_announced_on_the_lan_is_listed_and_answers(app: EdgecloudChat) -> None:
    with device("Kyoto, then Tokyo.", advertise=True, advertise_interfaces=LO) as server:
        app.mode.value = LAN  # shows the device list and starts looking, again and again
        assert app.lan_box in app.body.children
        ours = f"http://127.0.0.1:{server.port}/v1"
        wait_listed(app, ours)
        app.stop_refreshing()
        entry = next(d for d in app.devices if d.url == ours)
        assert entry.model == "robot-desk"
        assert entry.label in [row.value for row in app.device_select.items]
        app.device_select.value = entry.label
        press_send(app, "What was the capital of Japan?")
        [view] = app.views
        assert view.answer.text == "Kyoto, then Tokyo." and view.badge.text.strip() == "local"
        assert view.why.text == "on the device; no cloud configured"
        assert view.via.text == f"asked {entry.name}"
        prompt, params = server.state.client.backend.seen[0]  # the device got our prompt
        assert prompt.endswith("Q: What was the capital of Japan?\nA:") and tuple(params.stop) == (
            "\n",
        )
        # a refresh keeps the chosen device chosen
        run(app, app.refresh_devices())
        assert app.chosen_device() == entry
    assert app.local._client.backend.seen == []  # type: ignore[attr-defined]  # not asked here


def test_a_phone_build_offers_only_the_lan_and_looks_at_once() -> None:
    with device("Paris.", advertise=True, advertise_interfaces=LO) as server:
        phone = EdgecloudChat(run_locally=False, interfaces=LO, browse_s=2.0, refresh_s=0.5)
        try:
            assert [row.value for row in phone.mode.items] == [LAN]
            assert phone.lan_box in phone.body.children  # no choice to make: the list shows
            wait_listed(phone, f"http://127.0.0.1:{server.port}/v1")  # looked at start-up
            assert "announced on the LAN" in phone.status.text
        finally:
            close(phone)


def test_a_device_typed_by_address_with_an_api_key(app: EdgecloudChat) -> None:
    app.mode.value = LAN
    app.stop_refreshing()
    assert app.device_select.items[0].value == NO_DEVICES  # nothing on our port yet
    run(app, app.ask("anything?"))
    assert "no device chosen" in app.status.text and app.views == []
    with device("Eight legs.", api_keys=[KEY]) as server:
        app.address.value = f"127.0.0.1:{server.port}"
        app.use_button._impl.simulate_press()
        assert app.chosen_device() is not None
        assert app.chosen_device().url == f"http://127.0.0.1:{server.port}/v1"  # type: ignore[union-attr]
        press_send(app, "How many legs does a spider have?")
        assert app.views[0].badge.text.strip() == "error"
        assert "HTTP 401" in app.views[0].why.text and "API key" in app.views[0].why.text
        app.api_key.value = KEY
        press_send(app, "How many legs does a spider have?")
        assert app.views[1].badge.text.strip() == "local"
        assert app.views[1].answer.text == "Eight legs."
        # the failed turn is not sent as context, the answered one is
        assert app.transcript.history() == [("How many legs does a spider have?", "Eight legs.")]


def test_an_answer_handed_to_the_cloud_is_marked_mixed_with_the_reason(
    app: EdgecloudChat, tmp_path: Path
) -> None:
    app.mode.value = LAN
    app.stop_refreshing()
    with hybrid_device(tmp_path) as server:
        app.address.value = f"http://127.0.0.1:{server.port}/v1"
        app.use_button._impl.simulate_press()
        press_send(app, "What was the capital of Japan before Tokyo?")
    [view] = app.views
    # three device tokens, then the cloud's continuation
    assert view.answer.text == "Kyoto was the capital until 1869."
    assert view.badge.text.strip() == "mixed" and app.transcript.turns[0].sources == {
        "local",
        "cloud",
    }
    why = view.why.text
    assert "escalated (confidence-window): mean logprob" in why and "< -0.00" in why
    assert " via 127.0.0.1:" in why and view.via.text == f"asked 127.0.0.1:{server.port}"


def _gtk_missing() -> str | None:
    if shutil.which("Xvfb") is None:
        return "Xvfb is not installed (apt-get install xvfb)"
    if importlib.util.find_spec("toga_gtk") is None or importlib.util.find_spec("gi") is None:
        return "toga-gtk/PyGObject is not installed (pip install toga-gtk; needs GTK 3 and gobject-introspection)"
    return None


def test_the_gtk_window_under_xvfb(tmp_path: Path) -> None:
    """The real window: a question to this computer, one to the device (with a cloud)
    found on 127.0.0.1, then a screenshot taken by GTK itself."""
    missing = _gtk_missing()
    if missing:
        pytest.skip(missing)
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write)
    try:
        with os.fdopen(read) as f:
            display = f.readline().strip()
        assert display, "Xvfb did not start"
        shot, result = tmp_path / "desktop-app.png", tmp_path / "result.json"
        env = dict(os.environ, DISPLAY=f":{display}", TOGA_BACKEND="toga_gtk",
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(APP_SRC)]))  # fmt: skip
        env.pop("WAYLAND_DISPLAY", None)
        with hybrid_device(tmp_path, advertise=True, advertise_interfaces=LO) as server:
            proc = subprocess.run(
                [sys.executable, str(ROOT / "tests/integration/_desktop_gtk.py"),
                 str(server.port), str(shot), str(result)],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        assert result.exists(), proc.stderr[-3000:]
        out = json.loads(result.read_text())
        assert "error" not in out, out["error"]
        assert [t["badge"] for t in out["turns"]] == ["local", "mixed"]
        assert [t["answer"] for t in out["turns"]] == [
            "Honey, mostly.",
            "Kyoto was the capital until 1869.",
        ]
        assert "escalated (confidence-window)" in out["turns"][1]["why"]
        assert any(f"127.0.0.1:{server.port}" in label for label in out["found"])
    finally:
        xvfb.terminate()
        xvfb.wait(10)
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == tuple(reversed(out["size"]))
    assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[2])[::7]}) > 20  # not blank
    if os.environ.get("EDGECLOUD_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, DOCS_SCREENSHOT)
