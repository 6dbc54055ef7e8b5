"""The ``edgecloud`` command line: one module per command group.

``app.py`` registers the groups (``device``, ``cloud``, ``split``, ``adapters``,
``router``); ``_common.py`` holds what they share. Commands parse arguments,
call library functions and print; the logic lives in the library. Library code
never imports this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["main"]


def main() -> None:
    """Run the ``edgecloud`` command."""
    from edgecloud.cli.app import main as run

    run()


def __getattr__(name: str) -> Any:
    if name == "app":
        from edgecloud.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
