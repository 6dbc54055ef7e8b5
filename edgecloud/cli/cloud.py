"""``edgecloud cloud ...``: serve the inference service, and talk to one."""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgecloud.cli._common import (
    CaOpt,
    ClientCertOpt,
    ClientKeyOpt,
    ConfigOpt,
    InsecureOpt,
    TokenOpt,
    emit,
    err,
    fail,
    load_settings,
)
from edgecloud.errors import EdgeCloudError

__all__ = ["cloud_app"]

cloud_app = typer.Typer(help="Serve or query the cloud inference service.", no_args_is_help=True)


@cloud_app.command("serve")
def serve_command(
    host: Annotated[Optional[str], typer.Option(help="Address to listen on.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port; 0 picks a free one.")] = None,
    model: Annotated[
        Optional[Path], typer.Option(help="GGUF file or HF model directory (default: embedded).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plain text without TLS (loopback hosts only).")
    ] = False,
    knowledge: Annotated[
        Optional[Path],
        typer.Option(help="Documents (*.md, *.txt) to ground answers on (cloud.knowledge)."),
    ] = None,
    metrics_port: Annotated[
        Optional[int],
        typer.Option(help="Serve Prometheus /metrics on this port (cloud.metrics; 0 picks one)."),
    ] = None,
    backend: Annotated[
        Optional[str],
        typer.Option(
            "--backend",
            "--engine",
            help="'torch' (the model in this process), 'openai' or 'ray' (cloud.backend).",
        ),
    ] = None,
    upstream: Annotated[
        Optional[str],
        typer.Option(help="OpenAI-compatible base URL for --backend openai (cloud.upstream.url)."),
    ] = None,
    records: Annotated[
        Optional[str],
        typer.Option(help="postgresql://user@host/db for escalation records (cloud.records.url)."),
    ] = None,
    replicas: Annotated[
        Optional[int], typer.Option(min=1, help="--engine ray: replicas at least (cloud.ray).")
    ] = None,
    max_replicas: Annotated[
        Optional[int],
        typer.Option(min=1, help="--engine ray: replicas at most (cloud.ray.max_replicas)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve edgecloud.v1.InferenceService until SIGTERM, then drain in-flight streams."""
    from edgecloud.cloud._server import build_service, serve

    try:
        settings = load_settings(config)
        cloud: dict[str, Any] = settings.cloud.model_dump()
        if host is not None:
            cloud["host"] = host
        if port is not None:
            cloud["port"] = port
        if insecure:
            cloud["insecure"] = True
        if model is not None:
            cloud["model"]["path"] = model
        if knowledge is not None:
            cloud["knowledge"]["directory"] = knowledge
        if metrics_port is not None:
            cloud["metrics"].update(enabled=True, port=metrics_port)
        if backend is not None:
            cloud["backend"] = backend
        if upstream is not None:
            cloud["upstream"]["url"] = upstream
        if records is not None:
            cloud["records"]["url"] = records
        if replicas is not None:
            cloud["ray"]["replicas"] = replicas
            cloud["ray"]["max_replicas"] = max(replicas, cloud["ray"]["max_replicas"])
        if max_replicas is not None:
            cloud["ray"]["max_replicas"] = max_replicas
        settings = settings.model_copy(update={"cloud": type(settings.cloud).model_validate(cloud)})
        if settings.cloud.knowledge.directory is not None and settings.cloud.knowledge.enabled:
            typer.echo(f"knowledge: loading {settings.cloud.knowledge.directory}", err=True)
        parts = build_service(settings, _knowledge_progress)
    except EdgeCloudError as exc:
        raise fail(exc) from None
    try:
        asyncio.run(
            serve(parts.backend, parts.config, knowledge=parts.knowledge, records=parts.records,
                  registry=parts.registry)
        )  # fmt: skip
    except EdgeCloudError as exc:
        raise fail(exc) from None
    finally:
        parts.close()


def _knowledge_progress(done: int, total: int) -> None:
    typer.echo(f"\rindexing knowledge: {done}/{total} chunks", err=True, nl=done >= total)


@cloud_app.command("generate")
def generate_command(
    prompt: Annotated[str, typer.Argument(help="Prompt text; '-' reads stdin.")],
    target: Annotated[str, typer.Option(help="host:port of the service.")] = "localhost:50051",
    max_tokens: Annotated[Optional[int], typer.Option(help="Most new tokens.")] = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    adapter: Annotated[
        Optional[str], typer.Option(help="LoRA adapter id loaded on the service.")
    ] = None,
    chat: Annotated[bool, typer.Option(help="Send the prompt as a user chat message.")] = False,
    prefix: Annotated[
        str, typer.Option(help="Answer text already produced; the service continues after it.")
    ] = "",
    no_knowledge: Annotated[
        bool, typer.Option("--no-knowledge", help="Answer without the service's knowledge base.")
    ] = False,
    token: TokenOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
) -> None:
    """Stream an answer from a cloud service, with per-token confidence.

    TLS unless --insecure, which only a loopback target (127.0.0.1, ::1, localhost) takes.
    """
    from edgecloud.transport import CloudClient
    from edgecloud.types import Finish

    text = sys.stdin.read() if prompt == "-" else prompt
    request: Any = [{"role": "user", "content": text}] if chat else text

    async def run() -> None:
        async with CloudClient(
            target,
            token=token,
            tls=not insecure,
            root_certificates=ca,
            client_cert=client_cert,
            client_key=client_key,
            timeout_s=timeout,
        ) as c:
            overrides: dict[str, Any] = {"temperature": temperature}
            if max_tokens is not None:
                overrides["max_tokens"] = max_tokens
            n, lp = 0, 0.0
            stream = c.stream(
                request, adapter_id=adapter, assistant_prefix=prefix,
                skip_knowledge=no_knowledge, **overrides,
            )  # fmt: skip
            async for event in stream:
                if isinstance(event, Finish):
                    passages = [{"text": p.text, "source": p.source, "score": p.score}
                                for p in event.passages]  # fmt: skip
                    if as_json:
                        emit("finish", reason=event.reason, prompt_tokens=event.prompt_tokens,
                             completion_tokens=event.completion_tokens,
                             passages=passages)  # fmt: skip
                    else:
                        mean = lp / n if n else math.nan
                        print(f"\n-- {event.completion_tokens} tokens | mean logprob {mean:.3f} | "
                              f"{event.reason}")  # fmt: skip
                        for p in event.passages:
                            print(f"-- knowledge [{p.score:.2f}] {p.source}: {p.text}")
                    continue
                if event.token_id >= 0:
                    n, lp = n + 1, lp + event.logprob
                if as_json:
                    emit("token", text=event.text, token_id=event.token_id,
                         logprob=event.logprob, entropy=event.entropy,
                         index=event.index)  # fmt: skip
                else:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()

    try:
        asyncio.run(run())
    except EdgeCloudError as exc:
        raise fail(exc) from None


@cloud_app.command("info")
def info_command(
    target: Annotated[str, typer.Option(help="host:port of the service.")] = "localhost:50051",
    token: TokenOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
) -> None:
    """Print the service's models, adapters, version and load as a JSON line.

    TLS unless --insecure, which only a loopback target (127.0.0.1, ::1, localhost) takes.
    """
    from edgecloud.transport import CloudClient

    async def run() -> dict[str, Any]:
        async with CloudClient(
            target,
            token=token,
            tls=not insecure,
            root_certificates=ca,
            client_cert=client_cert,
            client_key=client_key,
        ) as c:
            return dict(await c.info())

    try:
        emit("info", **asyncio.run(run()))
    except EdgeCloudError as exc:
        raise fail(exc) from None


@cloud_app.command("hash-token")
def hash_token_command(
    token: Annotated[
        Optional[str], typer.Argument(help="Token to hash; omitted: make a new one.")
    ] = None,
) -> None:
    """Print a token and the sha256 digest to put in cloud.auth.tokens."""
    from edgecloud.transport import hash_token, new_token

    token = token or new_token()
    emit("token_hash", token=token, sha256=hash_token(token))


@cloud_app.command("shadow")
def shadow_command(
    since: Annotated[
        Optional[str],
        typer.Option(help="Records received since: a duration (24h, 7d) or ISO time; default all."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Print the devices' confidently-wrong rate per adapter version, from shadow checks.

    One `shadow` JSON line per version (the base model first): how many confident device
    answers the cloud checked (device.shadow) and how many it disagreed with.
    """
    import time

    from edgecloud.cloud._server import open_records

    start = _since_option(since, time.time()) if since is not None else None
    try:
        settings = load_settings(config)
        store = open_records(settings.cloud, settings.cache_dir)
    except EdgeCloudError as exc:
        raise fail(exc) from None
    try:
        rows = store.shadow_stats(start)
    finally:
        store.close()
    for row in rows:
        emit("shadow", adapter_version=row.adapter_version, checked=row.checked,
             disagreed=row.disagreed,
             confidently_wrong_rate=round(row.confidently_wrong_rate, 4))  # fmt: skip


def _since_option(text: str, now: float) -> float:
    """``--since`` as Unix seconds (see :func:`edgecloud.cloud.train.parse_since`)."""
    from edgecloud.cloud.train import parse_since
    from edgecloud.errors import InvalidRequestError

    try:
        return parse_since(text, now)
    except InvalidRequestError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--since'") from None


class _RoundProgress:
    """A round's stages and training steps, shown with rich on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._bar.add_task("starting", total=None, loss="-")

    def __enter__(self) -> _RoundProgress:
        self._bar.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._bar.stop()

    def stage(self, text: str) -> None:
        # a line per stage as well: logs and non-terminals see no live bar
        self._bar.console.print(text, highlight=False, markup=False)
        self._bar.update(self._task, description=text)

    def step(self, step: int, total: int, loss: float) -> None:
        self._bar.update(self._task, completed=step, total=total, loss=f"{loss:.3f}")


@cloud_app.command("train")
def train_command(
    since: Annotated[
        str, typer.Option(help="Records received since: a duration (24h, 7d) or ISO time.")
    ] = "24h",
    publish: Annotated[
        bool, typer.Option("--publish", help="Sign the version into the registry and roll it out.")
    ] = False,
    percent: Annotated[
        float,
        typer.Option(min=0.0, max=100.0, help="Rollout share with --publish (100 promotes)."),
    ] = 100.0,
    out: Annotated[
        Optional[Path], typer.Option(help="Output directory (default: a new one in the cache).")
    ] = None,
    adapter_id: Annotated[
        Optional[str], typer.Option(help="Adapter line to publish to (cloud.train.adapter_id).")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="cloud.train.epochs.")] = None,
    with_passages: Annotated[
        Optional[bool],
        typer.Option(
            "--with-passages/--no-passages",
            help="Also train on the retrieved passages (cloud.train.include_passages).",
        ),
    ] = None,
    base_gguf: Annotated[
        Optional[Path],
        typer.Option(help="The GGUF the devices run (when cloud.model.path is a directory)."),
    ] = None,
    knowledge: Annotated[
        Optional[Path],
        typer.Option(
            help="Documents to check replayed answers against and to write questions from "
            "(cloud.knowledge.directory; as `cloud serve --knowledge`)."
        ),
    ] = None,
    on_ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run the round as a Ray task reserving cloud.ray.train_cpus (cloud.ray.address).",
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Train a LoRA adapter on recent escalations; with --publish, sign and roll it out."""
    import time

    from edgecloud.cloud.train import run_round

    now = time.time()
    start = _since_option(since, now)
    options = {"adapter_id": adapter_id, "epochs": epochs, "include_passages": with_passages}
    try:
        settings = load_settings(config)
        train = {
            **settings.cloud.train.model_dump(),
            **{k: v for k, v in options.items() if v is not None},
        }
        update: dict[str, Any] = {"train": type(settings.cloud.train).model_validate(train)}
        if knowledge is not None:
            update["knowledge"] = settings.cloud.knowledge.model_copy(
                update={"directory": knowledge}
            )
        cloud = settings.cloud.model_copy(update=update)
        settings = settings.model_copy(update={"cloud": cloud})
        out_dir = out or settings.cache_dir / "rounds" / time.strftime("%Y%m%d-%H%M%S")
        if on_ray:
            from edgecloud.cloud._ray import connect_ray, run_on_ray

            connect_ray(settings.cloud.ray)
            cpus = settings.cloud.ray.train_cpus
            err.print(f"training in a Ray task with {cpus:g} CPUs (no live progress)")
            result = run_on_ray(
                run_round, settings, out_dir, num_cpus=cpus, since=start, until=now,
                publish=publish, rollout_percent=percent, base_gguf=base_gguf,
            )  # fmt: skip
        else:
            with _RoundProgress() as shown:
                result = run_round(
                    settings, out_dir, since=start, until=now, publish=publish,
                    rollout_percent=percent, base_gguf=base_gguf, progress=shown.step,
                    on_stage=shown.stage,
                )  # fmt: skip
    except EdgeCloudError as exc:
        raise fail(exc) from None
    emit(
        "round",
        out=str(result.out_dir),
        records=result.records,
        version=result.version,
        rollout_percent=result.rollout_percent,
        metrics=result.report.metrics(),
        scope=result.scope is not None,
        calibration=(
            result.calibration.calibration.model_dump(mode="json")
            if result.calibration is not None and result.calibration.calibration is not None
            else None
        ),
        refused=result.refused,
        stage_seconds={k: round(v, 2) for k, v in result.stage_seconds.items()},
    )
    if publish and result.refused is not None:
        err.print(f"[bold red]not published:[/] {result.refused}", markup=True, soft_wrap=True)
        raise typer.Exit(3)
