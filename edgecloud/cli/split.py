"""``edgecloud split``: serve tails, profile cuts, run a model split between here and the cloud."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from edgecloud.cli._common import (
    CaOpt,
    ClientCertOpt,
    ClientKeyOpt,
    ConfigOpt,
    InsecureOpt,
    TokenOpt,
    emit,
    fail,
    load_settings,
)
from edgecloud.common.settings import format_validation_error
from edgecloud.errors import ConfigError, EdgeCloudError, InvalidRequestError

__all__ = ["parse_link", "split_app"]

split_app = typer.Typer(
    help="Split inference of ONNX models between this device and the cloud.",
    no_args_is_help=True,
)

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_link(text: str) -> float:
    """``"10mbit"`` -> 10e6 bits per second (units: bit, kbit, mbit, gbit; suffix 'ps' allowed).

    Raises:
        InvalidRequestError: not a bandwidth.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]?)(?:bit|b)(?:ps|/s)?\s*", text.lower())
    if m is None or float(m.group(1)) <= 0:
        raise InvalidRequestError(f"not a link bandwidth: {text!r} (try 1mbit, 10mbit, 100mbit)")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class _Cloud:
    """Where the split service is and how to reach it (the client options)."""

    address: Optional[str]
    token: Optional[str]
    insecure: bool
    ca: Optional[Path]
    client_cert: Optional[Path]
    client_key: Optional[Path]


def _model(
    path: Path,
    cloud: _Cloud,
    link: Optional[str],
    rtt_ms: float,
    slowdown: float,
    config: Optional[Path],
) -> object:
    from edgecloud.split import EmulatedLink, SplitClient, SplitModel

    cfg = load_settings(config).split
    client = None
    if cloud.address:
        emulated = EmulatedLink(parse_link(link), rtt_ms / 1e3) if link else None
        client = SplitClient(
            cloud.address,
            link=emulated,
            chunk_bytes=cfg.chunk_bytes,
            max_activation_bytes=cfg.max_activation_bytes,
            token=cloud.token,
            tls=not cloud.insecure,
            root_certificates=cloud.ca,
            client_cert=cloud.client_cert,
            client_key=cloud.client_key,
        )
    return SplitModel(
        path,
        client,
        objective=cfg.objective,
        encoding=cfg.encoding,
        compression=cfg.compression,
        device_slowdown=max(slowdown, cfg.device_slowdown),
        link_alpha=cfg.link_alpha,
    )


CloudOpt = Annotated[Optional[str], typer.Option(help="host:port of the split service.")]
LinkOpt = Annotated[
    Optional[str], typer.Option(help="Emulate a link of this bandwidth (e.g. 10mbit).")
]
RttOpt = Annotated[float, typer.Option(help="RTT of the emulated link, in ms.")]
SlowOpt = Annotated[float, typer.Option(help="Emulate a device this many times slower.")]


@split_app.command("serve")
def serve(
    model: Annotated[
        Optional[list[str]], typer.Option(help="NAME=PATH of an ONNX model (repeatable).")
    ] = None,
    host: Annotated[Optional[str], typer.Option(help="Address to listen on.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port; 0 picks a free one.")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plain text without TLS (loopback hosts only).")
    ] = False,
    tls_cert: Annotated[
        Optional[Path], typer.Option(help="PEM server certificate chain (split.serve.tls.cert).")
    ] = None,
    tls_key: Annotated[
        Optional[Path], typer.Option(help="PEM private key of --tls-cert (split.serve.tls.key).")
    ] = None,
    tls_client_ca: Annotated[
        Optional[Path],
        typer.Option(help="PEM CA of client certificates, for mTLS (split.serve.tls.client_ca)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve tails (edgecloud.v1.SplitService) and KServe v2 inference for ONNX models.

    TLS from split.serve.tls (or --tls-cert/--tls-key, and --tls-client-ca for mTLS);
    plain text only with --insecure (split.serve.insecure) on a loopback host. With
    bearer tokens in split.serve.auth (unset: cloud.auth), every call needs one.
    """
    from edgecloud.split import SplitServer

    try:
        settings = load_settings(config)
        split: dict[str, Any] = settings.split.model_dump()
        serving = split["serve"]
        for key, value in (("host", host), ("port", port)):
            if value is not None:
                serving[key] = value
        if insecure:
            serving["insecure"] = True
        for key, file in (("cert", tls_cert), ("key", tls_key), ("client_ca", tls_client_ca)):
            if file is not None:
                serving["tls"][key] = file
        cfg = type(settings.split).model_validate(split)
    except EdgeCloudError as exc:
        raise fail(exc) from None
    except ValidationError as exc:  # an option out of range, e.g. --port 70000
        raise fail(ConfigError(f"split: {format_validation_error(exc)}")) from None
    serve_cfg = cfg.serve
    auth = serve_cfg.auth if serve_cfg.auth is not None else settings.cloud.auth
    models = dict(cfg.models)  # [split.models] in the settings, then --model on top
    for spec in model or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise fail(InvalidRequestError(f"--model wants NAME=PATH, got {spec!r}"))
        models[name] = Path(path)
    if not models:
        raise fail(InvalidRequestError("no models: pass --model NAME=PATH or set split.models"))

    async def main() -> None:
        from edgecloud.transport import stop_signals

        server = await SplitServer.start(
            models,
            host=serve_cfg.host,
            port=serve_cfg.port,
            max_activation_bytes=cfg.max_activation_bytes,
            chunk_bytes=cfg.chunk_bytes,
            tls=serve_cfg.tls,
            insecure=serve_cfg.insecure,
            auth=auth,
        )
        print(f"listening on {serve_cfg.host}:{server.port}", flush=True)
        async with stop_signals() as stop:
            await stop.wait()
            await server.stop(serve_cfg.shutdown_grace_s)

    try:
        asyncio.run(main())
    except EdgeCloudError as exc:
        raise fail(exc) from None


@split_app.command("profile")
def profile(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    device: Annotated[str, typer.Option(help="Where heads run: 'local' (this host).")] = "local",
    cloud: CloudOpt = None,
    link: LinkOpt = None,
    rtt_ms: RttOpt = 20.0,
    device_slowdown: SlowOpt = 1.0,
    repeats: Annotated[int, typer.Option(min=1, max=100, help="Timed runs per cut.")] = 5,
    token: TokenOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Per-cut latency table: device head, cloud tail, bytes, predicted end-to-end latency.

    Single-tensor cuts are measured; multi-tensor cuts (rows m#: a skip connection
    or a mask read by every layer crosses with the hidden state) are priced by the
    node graph, whose min-cut the choice (*) also considers.

    The cloud is reached over TLS unless --insecure (loopback targets only).
    """
    from edgecloud.split import SplitModel, predict

    if device != "local":
        raise fail(InvalidRequestError("only --device local is supported"))
    target = _Cloud(cloud, token, insecure, ca, client_cert, client_key)
    try:
        sm = _model(model, target, link, rtt_ms, device_slowdown, config)
        assert isinstance(sm, SplitModel)
        with sm:
            sm.profile(repeats=repeats)
            best, costs = sm.choose()
            est = sm.link.estimate
            multi_profiles = sm.multi_profiles() if sm.graph_costs is not None else []
    except EdgeCloudError as exc:
        raise fail(exc) from None
    rows = [
        {
            "index": c.profile.cut.index,
            "cut": c.profile.cut.name,
            "head_ms": c.profile.head_s * 1e3,
            "tail_ms": c.profile.tail_s * 1e3,
            "up_bytes": c.profile.up_bytes,
            "predicted_ms": c.latency_s * 1e3,
            "energy_mj": c.energy_j * 1e3,
        }
        for c in costs[: len(sm.profiles)]
        if cloud or c.profile.local
    ]
    # Multi-tensor cuts (skips, shared masks), priced by the node-graph model.
    multi = [
        {
            "index": m.cut.index,
            "cut": m.cut.name,
            "tensors": len(m.cut.tensors),
            "head_ms": m.head_s * 1e3,
            "tail_ms": m.tail_s * 1e3,
            "up_bytes": m.up_bytes,
            "predicted_ms": predict(m, est, sm.power).latency_s * 1e3,
        }
        for m in multi_profiles
        if cloud and len(m.cut.tensors) > 1 and m.cut.index > 0 and not m.local
    ]
    if as_json:
        emit("profile", rtt_ms=est.rtt_s * 1e3, bandwidth_Bps=est.bandwidth_Bps,
             chosen=best.profile.cut.name, cuts=rows, multi_cuts=multi)  # fmt: skip
        return
    table = Table(title=f"{model.name}: link RTT {est.rtt_s * 1e3:.1f} ms, "
                  f"{est.bandwidth_Bps * 8 / 1e6:.2f} Mbit/s")  # fmt: skip
    for col in ("#", "cut", "head ms", "tail ms", "bytes up", "predicted ms"):
        table.add_column(col, justify="left" if col == "cut" else "right")
    for r in rows:
        mark = " *" if r["cut"] == best.profile.cut.name else ""
        table.add_row(
            str(r["index"]), f"{r['cut']}{mark}", f"{r['head_ms']:.2f}", f"{r['tail_ms']:.2f}",
            str(r["up_bytes"]), f"{r['predicted_ms']:.1f}",
        )  # fmt: skip
    for r in multi:
        mark = " *" if r["cut"] == best.profile.cut.name else ""
        table.add_row(
            f"m{r['index']}", f"{r['cut']}{mark}", f"{r['head_ms']:.2f}", f"{r['tail_ms']:.2f}",
            str(r["up_bytes"]), f"{r['predicted_ms']:.1f}",
        )  # fmt: skip
    if best.profile.cut.name not in {r["cut"] for r in rows + multi}:
        Console().print(f"min-cut: {best.profile.cut.name} ({best.latency_s * 1e3:.1f} ms)")
    Console().print(table)


@split_app.command("run")
def run(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    input: Annotated[Path, typer.Option("--input", help=".npy file for the graph's input.")],
    cloud: CloudOpt = None,
    link: LinkOpt = None,
    rtt_ms: RttOpt = 20.0,
    device_slowdown: SlowOpt = 1.0,
    output: Annotated[Optional[Path], typer.Option(help="Write the outputs to this .npz.")] = None,
    token: TokenOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Choose the cut, run the head here and the tail in the cloud; print a JSON summary.

    The cloud is reached over TLS unless --insecure (loopback targets only).
    """
    import numpy as np

    from edgecloud.split import SplitModel

    target = _Cloud(cloud, token, insecure, ca, client_cert, client_key)
    try:
        sm = _model(model, target, link, rtt_ms, device_slowdown, config)
        assert isinstance(sm, SplitModel)
        with sm:
            try:
                frame = np.load(input, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InvalidRequestError(f"cannot read {input} as .npy: {exc}") from exc
            if len(sm.partitioner.inputs) != 1:
                raise InvalidRequestError("run takes one --input; this graph has several inputs")
            feeds = {sm.partitioner.inputs[0]: frame}
            outputs = sm.run(feeds)
            last = sm.last
    except EdgeCloudError as exc:
        raise fail(exc) from None
    assert last is not None
    if output is not None:
        np.savez(output, **outputs)  # type: ignore[arg-type]
    emit(
        "run",
        cut=last.cut.name,
        cut_index=last.cut.index,
        predicted_ms=last.predicted_s * 1e3,
        latency_ms=last.latency_s * 1e3,
        fallback=last.fallback,
        outputs={
            k: {"shape": list(v.shape), "argmax": int(np.argmax(v))} for k, v in outputs.items()
        },
    )
