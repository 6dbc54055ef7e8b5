"""``edgecloud discover``: what edgecloud services are announced on the LAN now."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from edgecloud.cli._common import ConfigOpt, emit, fail, load_settings
from edgecloud.errors import EdgeCloudError

__all__ = ["discover"]


def discover(
    timeout: Annotated[
        Optional[float],
        typer.Option(help="Seconds to listen (else device.discovery.browse_timeout_s)."),
    ] = None,
    interface: Annotated[
        Optional[list[str]],
        typer.Option(
            "--interface",
            "-i",
            help="IP address of an interface to listen on (repeatable; else "
            "device.discovery.interfaces).",
        ),
    ] = None,
    devices: Annotated[
        bool, typer.Option("--devices", help="List devices (their HTTP endpoints), not clouds.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help='One JSON object: {"type": "discover", ...}.')
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """List the edgecloud services announced on the LAN (mDNS/DNS-SD).

    What is listed is what each service claims; nothing here proves who answered (see
    docs/discovery.md). Exit 0 even when nothing is found.
    """
    from edgecloud.discovery import CLOUD_SERVICE_TYPE, DEVICE_SERVICE_TYPE, browse

    settings = load_settings(config)
    cfg = settings.device.discovery
    service_type = DEVICE_SERVICE_TYPE if devices else cfg.service_type or CLOUD_SERVICE_TYPE
    where = list(interface) if interface else cfg.interfaces
    try:
        found = asyncio.run(
            browse(
                service_type,
                interfaces=where,
                timeout_s=cfg.browse_timeout_s if timeout is None else timeout,
                resolve_timeout_s=cfg.resolve_timeout_s,
            )
        )
    except EdgeCloudError as exc:
        raise fail(exc) from exc
    rows = [_row(s) for s in found]
    if as_json:
        emit("discover", service_type=service_type, services=rows)
        return
    table = Table(title=f"{service_type} on {where}: {len(rows)} found", title_justify="left")
    columns = ["name", "address", "port", "tls", "fingerprint"]
    columns += ["path", "model"] if devices else ["kinds", "models", "adapters", "load"]
    for c in columns:
        table.add_column(c)
    for r in rows:
        fp = r["fingerprint"]
        cells = {**r, "address": ", ".join(r["addresses"]), "tls": "yes" if r["tls"] else "no",
                 "fingerprint": f"{fp[:16]}…" if fp else "-"}  # fmt: skip
        table.add_row(*(_cell(cells.get(c)) for c in columns))
    Console().print(table)


def _row(service: Any) -> dict[str, Any]:
    from edgecloud.discovery import CloudAdvert

    advert = service.advert
    row: dict[str, Any] = {
        "name": service.instance,
        "addresses": list(service.addresses),
        "port": service.port,
        "server": service.server,
        "tls": advert.tls,
        "fingerprint": advert.fingerprint,
    }
    if isinstance(advert, CloudAdvert):
        row |= {"kinds": list(advert.kinds), "models": list(advert.models),
                "adapters": [{"id": a, "version": v} for a, v in advert.adapters],
                "load": advert.load}  # fmt: skip
    else:
        row |= {"path": advert.path, "model": advert.model}
    return row


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(
            f"{v['id']}@{v['version']}" if isinstance(v, dict) else str(v) for v in value
        ) or "-"  # fmt: skip
    return str(value)
