"""The ``edgecloud`` command: one group per role, registered here."""

from __future__ import annotations

from typing import Annotated

import typer

from edgecloud._version import __version__
from edgecloud.cli.adapters import adapters_app
from edgecloud.cli.cloud import cloud_app
from edgecloud.cli.device import device_app
from edgecloud.cli.discover import discover
from edgecloud.cli.router import router_app
from edgecloud.cli.split import split_app

__all__ = ["app", "main"]

app = typer.Typer(help="edgecloud: edge-cloud collaborative inference.", no_args_is_help=True)
app.add_typer(device_app, name="device")
app.add_typer(cloud_app, name="cloud")
app.add_typer(split_app, name="split")
app.add_typer(adapters_app, name="adapters")
app.add_typer(router_app, name="router")
app.command("discover")(discover)


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


def main() -> None:
    """Entry point of the ``edgecloud`` script."""
    app()
