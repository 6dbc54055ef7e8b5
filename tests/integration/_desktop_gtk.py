"""Run by tests/integration/test_desktop_app.py in its own process, under Xvfb: opens the
desktop app with the real GTK backend, asks one question of this computer (a scripted
model) and one of the device announced on 127.0.0.1 at the port given (it hands its
answers to a cloud), takes a screenshot of the window with GTK, writes what the window
showed as JSON, and quits.

    python tests/integration/_desktop_gtk.py PORT SCREENSHOT.png RESULT.json
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from edgecloud_desktop import gtk_compat
from edgecloud_desktop.app import LAN, EdgecloudChat
from edgecloud_desktop.connections import LocalConnection

from edgecloud import AsyncClient
from tests.fakes import ScriptedBackend


class Driven(EdgecloudChat):
    def __init__(self, port: int, screenshot: Path, result: Path) -> None:
        self.port, self.screenshot, self.result = port, screenshot, result
        local = LocalConnection(AsyncClient(ScriptedBackend("Honey, mostly.")))
        super().__init__(local=local, interfaces=["127.0.0.1"], browse_s=2.0, refresh_s=0.5)

    async def on_running(self) -> None:  # type: ignore[override]
        out: dict[str, Any] = {}
        try:
            out = await self.drive()
        except BaseException:
            out["error"] = traceback.format_exc()
        self.result.write_text(json.dumps(out))
        self.request_exit()

    async def drive(self) -> dict[str, Any]:
        await self.ask("What do bumblebees make?")
        self.mode.value = LAN  # starts looking for devices
        ours = f"http://127.0.0.1:{self.port}/v1"
        for _ in range(300):
            if any(d.url == ours for d in self.devices):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"{ours} was not found in 30 s: {self.devices}")
        self.stop_refreshing()
        found = [d.label for d in self.devices]
        self.device_select.value = next(d.label for d in self.devices if d.url == ours)
        self.prompt.value = "What was the capital of Japan before Tokyo?"
        await self.on_send(self.send_button)
        await asyncio.sleep(1.0)  # let GTK lay out and paint
        from gi.repository import Gdk

        window = self.main_window._impl.native.get_window()
        pixbuf = Gdk.pixbuf_get_from_window(window, 0, 0, window.get_width(), window.get_height())
        pixbuf.savev(str(self.screenshot), "png", [], [])
        return {
            "found": found,
            "status": self.status.text,
            "turns": [
                {"badge": v.badge.text.strip(), "answer": v.answer.text, "why": v.why.text}
                for v in self.views
            ],
            "size": [window.get_width(), window.get_height()],
        }


if __name__ == "__main__":
    gtk_compat.apply()
    Driven(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])).main_loop()
