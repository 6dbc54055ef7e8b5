"""Run toga-gtk 0.5.5 on PyGObject 3.50: the GTK stack Debian 12 can build.

PyGObject 3.51 and later need GLib 2.80 (``girepository-2.0``); Debian 12 has GLib 2.74,
where only PyGObject 3.50 builds, and toga-gtk 0.5.5 is the last release that accepts it
(``pygobject>=3.50``). That toga-gtk creates its event loop as PyGObject 3.52 allows,
``GLibEventLoop()`` with no main context and ``with loop:`` around the application's
run, which 3.50 does not have. On 3.50, ``Gtk.Application.run()`` itself marks the
policy's loop as running, so handing toga that loop and making ``with loop:`` a no-op
is all it takes. Nothing is changed anywhere else (other backends, PyGObject 3.52+).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from typing import Any


def apply() -> bool:
    """Patch when the GTK backend will run on PyGObject 3.50; returns whether it did."""
    if os.environ.get("TOGA_BACKEND", "toga_gtk") != "toga_gtk":
        return False
    if importlib.util.find_spec("toga_gtk") is None or importlib.util.find_spec("gi") is None:
        return False
    import gi.events

    loop_class: Any = gi.events.GLibEventLoop
    if hasattr(loop_class, "__enter__"):  # PyGObject 3.52 or later
        return False
    import toga_gtk.app

    class Policy(gi.events.GLibEventLoopPolicy):  # type: ignore[misc]
        def set_event_loop(self, loop: Any) -> None:
            if loop is not self.get_event_loop():  # toga sets the loop it was handed
                super().set_event_loop(loop)

    policy = Policy()
    asyncio.set_event_loop_policy(policy)
    loop_class.__enter__ = lambda self: self
    loop_class.__exit__ = lambda self, *exc: None
    toga_gtk.app.GLibEventLoop = policy.get_event_loop  # type: ignore[attr-defined]
    return True
