"""The window: a connection selector, the devices found on the LAN, the transcript and the
question box. Everything it shows comes from the plain-Python modules beside it; this
module only lays out widgets and moves events between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
from collections.abc import Sequence
from typing import Any, Literal

import toga

from edgecloud_desktop import gtk_compat
from edgecloud_desktop.connections import Connection, HttpConnection, LocalConnection
from edgecloud_desktop.devices import (
    BROWSE_S,
    REFRESH_S,
    DeviceEntry,
    discover,
    keep_selection,
    manual_entry,
    merge,
)
from edgecloud_desktop.prompts import STOP, qa_prompt
from edgecloud_desktop.transcript import Transcript, Turn

THIS_COMPUTER = "this computer"
LAN = "a device on the LAN"
NO_DEVICES = "(no device found yet)"

# The web app's colours (edgecloud/http/web/style.css), so both apps read the same way.
COLOURS = {"local": "#1d4ed8", "cloud": "#9333ea", "mixed": "#9333ea", "error": "#b91c1c"}
MUTED = "#5f665c"
ACCENT = "#14532d"


def local_model_available() -> bool:
    """Whether this build can run the model in-process (desktop builds carry edgecloud
    and llama.cpp; phone builds only talk to devices)."""
    return all(importlib.util.find_spec(m) is not None for m in ("edgecloud", "llama_cpp"))


def interfaces_from_env() -> Sequence[str] | Literal["all"]:
    """``EDGECLOUD_DESKTOP_INTERFACES=192.168.1.20,10.0.0.3`` limits discovery to those
    interfaces (default: all)."""
    value = os.environ.get("EDGECLOUD_DESKTOP_INTERFACES", "").strip()
    return [v.strip() for v in value.split(",") if v.strip()] if value else "all"


class TurnView:
    """The widgets of one turn: the question, a badge, the answer and why."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.question = toga.Label(f"You: {turn.question}", font_weight="bold")
        self.via = toga.Label(f"asked {turn.via}" if turn.via else "", color=MUTED,
                              font_size=9, margin_left=8, margin_top=2)  # fmt: skip
        self.badge = toga.Label("", color="#ffffff", margin_right=8, margin_top=1)
        self.answer = toga.Label("", flex=1)
        self.why = toga.Label("", color=MUTED, font_size=9)
        self.box = toga.Box(
            direction="column",
            margin_bottom=4,
            children=[
                toga.Box(direction="row", margin_top=8, children=[self.question, self.via]),
                toga.Box(direction="row", margin_top=4, children=[self.badge, self.answer]),
                self.why,
            ],
        )
        self.update()

    def update(self) -> None:
        turn = self.turn
        self.badge.text = f" {turn.badge} "
        self.badge.style.background_color = COLOURS.get(turn.badge, MUTED)
        self.answer.text = turn.answer.strip() or ("…" if not turn.done else "(no answer)")
        self.why.text = turn.why()


class EdgecloudChat(toga.App):
    """Chat with the device model: in this process, or on a device found on the LAN.

    Args:
        local: the in-process connection (default: the SDK's default model, opened on
            the first question).
        run_locally: offer "this computer"; default: when edgecloud and llama.cpp are
            installed (desktop builds), not on phones.
        interfaces: where to look for devices (``EDGECLOUD_DESKTOP_INTERFACES``, else all).
        refresh_s: how often the device list is refreshed while the LAN is chosen.
        browse_s: how long each look at the LAN listens.
    """

    def __init__(
        self,
        *,
        local: LocalConnection | None = None,
        run_locally: bool | None = None,
        interfaces: Sequence[str] | Literal["all"] | None = None,
        refresh_s: float = REFRESH_S,
        browse_s: float = BROWSE_S,
        **kwargs: Any,
    ) -> None:
        self.local = local if local is not None else LocalConnection()
        self.can_run_locally = (
            run_locally if run_locally is not None else local is not None or local_model_available()
        )
        self.interfaces = interfaces if interfaces is not None else interfaces_from_env()
        self.refresh_s = refresh_s
        self.browse_s = browse_s
        self.transcript = Transcript()
        self.devices: list[DeviceEntry] = []
        self.busy = False
        self._refresher: asyncio.Task[None] | None = None
        kwargs.setdefault("formal_name", "edgecloud Chat")
        kwargs.setdefault("app_id", "org.edgecloud.desktop")
        super().__init__(**kwargs)

    def startup(self) -> None:
        modes = [THIS_COMPUTER, LAN] if self.can_run_locally else [LAN]
        self.mode = toga.Selection(items=modes, on_change=self.on_mode, flex=1)
        self.status = toga.Label("", color=MUTED)
        self.device_select = toga.Selection(items=[NO_DEVICES], flex=1)
        self.refresh_button = toga.Button("Refresh", on_press=self.on_refresh, margin_left=4)
        self.address = toga.TextInput(
            placeholder="or type an address: 192.168.1.20:8080", flex=1, on_confirm=self.on_use
        )
        self.api_key = toga.PasswordInput(placeholder="API key (if set)", width=140, margin_left=4)
        self.use_button = toga.Button("Use", on_press=self.on_use, margin_left=4)
        self.lan_box = toga.Box(
            direction="column",
            margin_top=6,
            children=[
                toga.Box(direction="row", children=[self.device_select, self.refresh_button]),
                toga.Box(
                    direction="row",
                    margin_top=4,
                    children=[self.address, self.api_key, self.use_button],
                ),
            ],
        )
        self.turns = toga.Box(direction="column", margin=8)
        self.scroll = toga.ScrollContainer(content=self.turns, horizontal=False, flex=1)
        self.prompt = toga.TextInput(
            placeholder="Ask a short question",
            flex=1,
            on_confirm=self.on_send,  # type: ignore[arg-type]  # toga runs coroutine handlers
        )
        self.send_button = toga.Button("Send", on_press=self.on_send, margin_left=4)
        header = toga.Box(
            direction="row",
            children=[
                toga.Label("Answers from", margin_right=8, margin_top=4, color=ACCENT),
                self.mode,
            ],
        )
        self.body = toga.Box(
            direction="column",
            margin=10,
            children=[
                header,
                self.status,
                self.scroll,
                toga.Box(direction="row", margin_top=6, children=[self.prompt, self.send_button]),
            ],
        )
        self.views: list[TurnView] = []
        window = toga.MainWindow(title=self.formal_name, size=(720, 560))  # type: ignore[no-untyped-call]
        window.content = self.body
        self.main_window = window
        self._show_mode()
        if self.on_lan:  # a phone build: the LAN is the only choice
            self.start_refreshing()
        window.show()

    @property
    def on_lan(self) -> bool:
        return self.mode.value == LAN

    def _show_mode(self) -> None:
        if self.on_lan:
            if self.lan_box not in self.body.children:
                self.body.insert(1, self.lan_box)
            self.set_status("looking for devices on the LAN…")
        else:
            if self.lan_box in self.body.children:
                self.body.remove(self.lan_box)
            loaded = self.local.loaded
            self.set_status(
                "the model runs here" if loaded else "the model loads on the first question"
            )

    def on_mode(self, widget: Any, **kwargs: Any) -> None:
        self._show_mode()
        if self.on_lan:
            self.start_refreshing()
        else:
            self.stop_refreshing()

    def set_status(self, text: str) -> None:
        self.status.text = text

    def start_refreshing(self) -> None:
        """Look for devices now and every ``refresh_s`` while the LAN is chosen."""
        if self._refresher is None or self._refresher.done():
            self._refresher = self.loop.create_task(self._refresh_forever())

    def stop_refreshing(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh_devices()
            await asyncio.sleep(self.refresh_s)

    async def on_refresh(self, widget: Any, **kwargs: Any) -> None:
        await self.refresh_devices()

    async def refresh_devices(self) -> list[DeviceEntry]:
        """One look at the LAN; the chosen device stays chosen while it is announced,
        and addresses typed by hand stay in the list."""
        self.refresh_button.enabled = False
        self.set_status("looking for devices on the LAN…")
        try:
            found = await discover(self.interfaces, self.browse_s)
        except Exception as exc:  # noqa: BLE001 - shown in the window; the app keeps going
            self.set_status(f"discovery failed: {exc}")
            return self.devices
        finally:
            self.refresh_button.enabled = True
        self._set_devices(merge(found, self.devices))
        n = len(found)
        self.set_status(f"{n} device{'s' if n != 1 else ''} announced on the LAN")
        return self.devices

    def _set_devices(self, devices: list[DeviceEntry], choose: DeviceEntry | None = None) -> None:
        chosen = choose or keep_selection(self.chosen_device(), devices)
        self.devices = devices
        labels = [d.label for d in devices] or [NO_DEVICES]
        self.device_select.items = labels
        self.device_select.value = chosen.label if chosen is not None else labels[0]

    def chosen_device(self) -> DeviceEntry | None:
        value = self.device_select.value
        return next((d for d in self.devices if d.label == value), None)

    def on_use(self, widget: Any, **kwargs: Any) -> None:
        """Add the typed address to the list and choose it."""
        try:
            entry = manual_entry(self.address.value)
        except ValueError as exc:
            self.set_status(str(exc))
            return
        self._set_devices([*(d for d in self.devices if d.url != entry.url), entry], entry)
        self.set_status(f"using {entry.url}")

    def connection(self) -> Connection:
        """Where the next question goes.

        Raises:
            ValueError: the LAN is chosen but no device is.
        """
        if not self.on_lan:
            return self.local
        device = self.chosen_device()
        if device is None:
            raise ValueError("no device chosen: refresh the list or type an address")
        return HttpConnection(device, api_key=self.api_key.value.strip() or None)

    async def on_send(self, widget: Any, **kwargs: Any) -> None:
        await self.ask(self.prompt.value)

    async def ask(self, question: str) -> Turn | None:
        """Send a question and stream its answer into the transcript."""
        if self.busy or not question.strip():
            return None
        try:
            connection = self.connection()
        except ValueError as exc:
            self.set_status(str(exc))
            return None
        prompt = qa_prompt(question, self.transcript.history())
        turn = self.transcript.ask(question, connection.label)
        view = TurnView(turn)
        self.views.append(view)
        self.turns.add(view.box)
        self.prompt.value = ""
        self._set_busy(True)
        if connection is self.local and not self.local.loaded:
            self.set_status("loading the model…")
        try:
            async for event in connection.answer(prompt, stop=STOP):
                turn.apply(event)
                view.update()
            if turn.final is None:
                turn.fail("the answer ended without its last chunk")
        except Exception as exc:  # noqa: BLE001 - every failure is shown on its turn
            turn.fail(f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))
        finally:
            view.update()
            self._set_busy(False)
            if not self.on_lan:
                self._show_mode()
            with contextlib.suppress(Exception):  # the GTK backend only
                self.scroll.vertical_position = self.scroll.max_vertical_position
        return turn

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.send_button.enabled = not busy
        self.send_button.text = "…" if busy else "Send"

    def on_exit(self) -> bool:
        # The process ends right after: the model's memory goes with it.
        self.stop_refreshing()
        return True

    async def aclose(self) -> None:
        """Stop looking for devices and close the model (for a host that outlives the
        app, such as a test)."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
        await self.local.aclose()


def main(**kwargs: Any) -> EdgecloudChat:
    """The app (Briefcase's entry point calls ``main().main_loop()``)."""
    gtk_compat.apply()
    return EdgecloudChat(**kwargs)
