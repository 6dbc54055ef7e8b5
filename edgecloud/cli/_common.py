"""What every command group shares: settings loading, errors, progress and JSON lines.

JSON output: every command that prints JSON (``--json``, ``info``, ``list``,
``train``) writes JSON lines, one object per line, each with a ``"type"`` that
names the event (``token``, ``summary``, ``info``, ``adapters``, ``round``, ...).
The schema is documented in ``docs/cli.md``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional, TextIO

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from edgecloud.common import logs
from edgecloud.config import Settings
from edgecloud.errors import ConfigError, EdgeCloudError, InvalidRequestError

__all__ = [
    "AssemblyProgress",
    "CaOpt",
    "ClientCertOpt",
    "ClientKeyOpt",
    "ConfigOpt",
    "InsecureOpt",
    "TokenOpt",
    "emit",
    "err",
    "fail",
    "fmt",
    "load_settings",
]

err = Console(stderr=True)

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="TOML settings file (else $EDGECLOUD_CONFIG)."),
]

# What every client command takes to reach a service: TLS unless --insecure (the one
# plain-text rule: edgecloud.transport.check_plaintext, loopback targets only).
TokenOpt = Annotated[
    Optional[str],
    typer.Option(envvar="EDGECLOUD_TOKEN", help="Bearer token ($EDGECLOUD_TOKEN)."),
]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Plain text instead of TLS (loopback targets only).")
]
CaOpt = Annotated[Optional[Path], typer.Option(help="PEM CA to trust (else the system roots).")]
ClientCertOpt = Annotated[
    Optional[Path], typer.Option(help="PEM client certificate, for a service with mTLS.")
]
ClientKeyOpt = Annotated[Optional[Path], typer.Option(help="PEM private key of --client-cert.")]


def load_settings(config: Path | None, verbose: bool = False) -> Settings:
    """Settings from ``config`` (else ``$EDGECLOUD_CONFIG``) and the environment; sets up
    logging to stderr at the configured level and format (``log_level``, ``log_format``)."""
    settings = Settings.load(config)
    logs.configure(settings.log_format, settings.log_level)
    logging.getLogger("edgecloud.native").setLevel(logging.DEBUG if verbose else logging.ERROR)
    return settings


def fail(exc: EdgeCloudError) -> typer.Exit:
    """Print ``exc`` on stderr and return the exit to raise: 2 for a bad request or config,
    1 for anything else."""
    err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    code = 2 if isinstance(exc, (InvalidRequestError, ConfigError)) else 1
    return typer.Exit(code)


def emit(event: str, out: TextIO | None = None, /, **fields: Any) -> None:
    """Write one JSON-lines event: ``{"type": event, **fields}`` and a newline, flushed."""
    stream = out if out is not None else sys.stdout
    stream.write(json.dumps({"type": event, **fields}) + "\n")
    stream.flush()


def fmt(x: float) -> str:
    """A signal for people: three decimals, or ``n/a``."""
    return "n/a" if math.isnan(x) else f"{x:.3f}"


class AssemblyProgress:
    """A rich progress bar that appears only if the default model must be built."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._progress is None:
            self._progress = Progress(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True,
            )  # fmt: skip
            self._progress.start()
            self._task = self._progress.add_task("preparing model", total=total)
        self._progress.update(self._task, completed=done)
        if done >= total:
            self.stop()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
