"""``edgecloud adapters``: signing keys, publishing, listing and staged rollout of adapters.

The registry is ``cloud.registry.url`` (else ``<cache_dir>/registry``) unless
``--registry`` names another; the adapter line is ``cloud.train.adapter_id``
unless ``--adapter-id`` names another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from edgecloud.cli._common import ConfigOpt, emit, fail, load_settings
from edgecloud.errors import EdgeCloudError

if TYPE_CHECKING:
    from edgecloud.adapters._registry import AdapterRegistry, RolloutState
    from edgecloud.config import Settings

__all__ = ["adapters_app"]

adapters_app = typer.Typer(
    help="LoRA adapters: signing keys, publishing, listing, staged rollout and rollback.",
    no_args_is_help=True,
)
out = Console()

RegistryOpt = Annotated[
    Optional[str],
    typer.Option(help="Registry directory or fsspec URL (else cloud.registry.url)."),
]
AdapterOpt = Annotated[
    Optional[str],
    typer.Option("--adapter-id", "--target", help="Adapter line (else cloud.train.adapter_id)."),
]


def _open(config: Path | None, registry: str | None) -> tuple[Settings, AdapterRegistry]:
    from edgecloud.adapters._registry import AdapterRegistry
    from edgecloud.cloud._server import registry_url

    settings = load_settings(config)
    url = registry or registry_url(settings.cloud, settings.cache_dir)
    return settings, AdapterRegistry(url)


def _adapter_id(settings: Settings, given: str | None) -> str:
    from edgecloud.adapters._manifest import check_adapter_id

    return check_adapter_id(given or settings.cloud.train.adapter_id)


def _stage(state: RolloutState, version: int) -> str:
    if version == state.stable:
        return "stable"
    if version == state.candidate:
        who = f"{state.percent:g}%"
        return f"candidate {who}" + (f" + cohort {state.cohort}" if state.cohort else "")
    if version in state.withdrawn:
        return "withdrawn"
    return ""


def _state_text(state: RolloutState) -> str:
    stable = f"v{state.stable}" if state.stable is not None else "base model"
    if state.candidate is None:
        return f"stable {stable}"
    return f"stable {stable}, candidate v{state.candidate} ({_stage(state, state.candidate)})"


@adapters_app.command("keygen")
def keygen(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the new key pair.")],
) -> None:
    """Make an Ed25519 signing key (PEM, 0600) and print the public key devices trust."""
    from edgecloud.adapters._signing import generate_keypair

    try:
        private, public = generate_keypair(out_dir)
    except EdgeCloudError as exc:
        raise fail(exc) from None
    out.print(
        f"private key: {private}  (cloud.registry.signing_key)", highlight=False, soft_wrap=True
    )
    out.print(
        f"public key:  {public}  (device.adapters.public_keys)", highlight=False, soft_wrap=True
    )


@adapters_app.command("publish")
def publish(
    directory: Annotated[
        Path, typer.Argument(help="Adapter dir: adapter.gguf and peft/ (adapter_config.json, ...).")
    ],
    base_model: Annotated[
        Path, typer.Option(help="The base GGUF the adapter was trained on (hashed).")
    ],
    architecture: Annotated[
        Optional[str], typer.Option(help="Base architecture (else read from adapter.gguf).")
    ] = None,
    key: Annotated[
        Optional[Path], typer.Option(help="Signing key PEM (else cloud.registry.signing_key).")
    ] = None,
    metrics: Annotated[
        Optional[str], typer.Option(help='Held-out metrics as JSON, e.g. {"accuracy": 0.8}.')
    ] = None,
    canary: Annotated[
        Optional[Path], typer.Option(help='JSONL of {"prompt": ..., "expect": ...} lines.')
    ] = None,
    adapter_id: AdapterOpt = None,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Sign and publish an exported adapter as the next version (not rolled out yet)."""
    from edgecloud.adapters._manifest import load_canary
    from edgecloud.adapters._publish import publish_directory
    from edgecloud.adapters._signing import load_private_key
    from edgecloud.errors import ConfigError

    try:
        settings, reg = _open(config, registry)
        aid = _adapter_id(settings, adapter_id)
        key_path = key or settings.cloud.registry.signing_key
        if key_path is None:
            raise ConfigError("no signing key: pass --key or set cloud.registry.signing_key")
        manifest = publish_directory(
            reg,
            directory,
            key=load_private_key(key_path),
            adapter_id=aid,
            base_model=base_model,
            architecture=architecture,
            metrics=_metrics(metrics),
            canary=load_canary(canary) if canary is not None else (),
        )
    except EdgeCloudError as exc:
        raise fail(exc) from None
    out.print(
        f"published {aid} v{manifest.version} ({len(manifest.files)} files)",
        highlight=False,
        soft_wrap=True,
    )


def _metrics(text: str | None) -> dict[str, float]:
    from edgecloud.errors import ConfigError

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--metrics is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("--metrics must be a JSON object")
    return value


@adapters_app.command("list")
def list_versions(
    adapter_id: AdapterOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Versions with metrics and rollout stage, and which devices run which version."""

    try:
        settings, reg = _open(config, registry)
        ids = [_adapter_id(settings, adapter_id)] if adapter_id else reg.adapters()
        report = [_describe(reg, aid) for aid in ids]
    except EdgeCloudError as exc:
        raise fail(exc) from None
    if as_json:
        emit("adapters", registry=reg.url, adapters=report)
        return
    if not report:
        out.print(f"no adapters in {reg.url}", highlight=False, soft_wrap=True)
    for entry in report:
        _print(entry)


def _describe(reg: AdapterRegistry, adapter_id: str) -> dict[str, Any]:
    state = reg.rollout_state(adapter_id)
    fleet = reg.fleet(adapter_id)
    versions = []
    for v in reg.versions(adapter_id):
        m = reg.manifest(adapter_id, v).unverified()
        versions.append({
            "version": v,
            "created_at": m.created_at.isoformat(),
            "stage": _stage(state, v),
            "metrics": m.metrics,
            "rank": m.rank,
            "records": m.data.records,
            "bytes": sum(f.size for f in m.files.values()),
            "devices": sum(1 for r in fleet if r.version == v and r.status == "running"),
        })  # fmt: skip
    return {
        "adapter_id": adapter_id,
        "rollout": state.model_dump(mode="json"),
        "versions": versions,
        "fleet": [r.model_dump(mode="json") for r in fleet],
    }


def _print(entry: dict[str, Any]) -> None:
    from edgecloud.adapters._registry import RolloutState

    state = RolloutState.model_validate(entry["rollout"])
    table = Table(title=f"{entry['adapter_id']}: {_state_text(state)}", title_justify="left")
    for col in ("version", "created", "stage", "metrics", "rank", "records", "size", "devices"):
        table.add_column(col)
    for v in entry["versions"]:
        metrics = ", ".join(f"{k}={val:.3g}" for k, val in sorted(v["metrics"].items()))
        table.add_row(
            str(v["version"]), v["created_at"][:19].replace("T", " "), v["stage"], metrics,
            str(v["rank"]), str(v["records"]), f"{v['bytes'] / 1e6:.2f} MB", str(v["devices"]),
        )  # fmt: skip
    out.print(table)
    if entry["fleet"]:
        fleet = Table(title="devices", title_justify="left")
        for col in ("device", "version", "status", "detail", "reported"):
            fleet.add_column(col)
        for r in entry["fleet"]:
            fleet.add_row(
                r["device_id"], str(r["version"] or "base"), r["status"], r["detail"][:60],
                r["at"][:19].replace("T", " "),
            )  # fmt: skip
        out.print(fleet)


@adapters_app.command("rollout")
def rollout(
    version: Annotated[int, typer.Argument(help="Published version to roll out.")],
    percent: Annotated[
        float, typer.Option(min=0.0, max=100.0, help="Share of devices; 100 promotes to stable.")
    ],
    cohort: Annotated[Optional[str], typer.Option(help="Also every device of this cohort.")] = None,
    adapter_id: AdapterOpt = None,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Offer a version to a share of the devices (and a cohort); 100 % makes it stable."""

    try:
        settings, reg = _open(config, registry)
        state = reg.rollout(_adapter_id(settings, adapter_id), version, percent, cohort)
    except EdgeCloudError as exc:
        raise fail(exc) from None
    out.print(_state_text(state), highlight=False, soft_wrap=True)


@adapters_app.command("rollback")
def rollback(
    to: Annotated[
        Optional[int], typer.Option(help="Make this version stable (else: withdraw/previous).")
    ] = None,
    adapter_id: AdapterOpt = None,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Withdraw the candidate; without one, return to the previous stable version."""

    try:
        settings, reg = _open(config, registry)
        state = reg.rollback(_adapter_id(settings, adapter_id), to)
    except EdgeCloudError as exc:
        raise fail(exc) from None
    out.print(_state_text(state), highlight=False, soft_wrap=True)
