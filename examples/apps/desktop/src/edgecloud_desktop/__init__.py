"""edgecloud Chat: a native desktop and phone app (Toga) that talks to the device model.

The widgets are in :mod:`edgecloud_desktop.app`; everything they show is computed by
plain-Python modules that import no Toga, so it is tested without a display:
:mod:`~edgecloud_desktop.prompts` (the few-shot Q/A prompt), :mod:`~edgecloud_desktop.sse`
(the device's OpenAI stream and its ``edgecloud`` extension),
:mod:`~edgecloud_desktop.transcript` (questions, answers, badges and reasons),
:mod:`~edgecloud_desktop.devices` (the devices announced on the LAN) and
:mod:`~edgecloud_desktop.connections` (this computer's model, or a device's endpoint).
"""

from __future__ import annotations

__version__ = "0.1.0"
