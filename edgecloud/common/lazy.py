"""Package attributes that load their module on first use (PEP 562).

``import edgecloud`` and the command line must not pay for numpy, grpc, onnx or
torch; a package lists where each public name lives and imports it when asked.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``homes`` maps each public name to the
    module that defines it (a name starting with ``_`` is a submodule of ``package``).
    The value is cached in the package once imported."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = f"{package}.{home}" if home.startswith("_") else home
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
