"""The ``edgecloud`` command."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from edgecloud import __version__
from edgecloud.adapters import _cli as _adapters_cli
from edgecloud.cloud import _cli as _cloud_cli
from edgecloud.config import Settings
from edgecloud.errors import ConfigError, EdgeCloudError, InvalidRequestError
from edgecloud.split import _cli as _split_cli

app = typer.Typer(help="edgecloud: edge-cloud collaborative inference.", no_args_is_help=True)
device_app = typer.Typer(help="Run models on this device.", no_args_is_help=True)
app.add_typer(device_app, name="device")
app.add_typer(_cloud_cli.cloud_app, name="cloud")
app.add_typer(_split_cli.split_app, name="split")
app.add_typer(_adapters_cli.adapters_app, name="adapters")
router_app = typer.Typer(help="Escalation policies: calibrate thresholds.", no_args_is_help=True)
app.add_typer(router_app, name="router")

err = Console(stderr=True)

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="TOML settings file (else $EDGECLOUD_CONFIG)."),
]


def _settings(config: Path | None, verbose: bool = False) -> Settings:
    settings = Settings.load(config)
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("edgecloud.native").setLevel(logging.DEBUG if verbose else logging.ERROR)
    return settings


class _AssemblyProgress:
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


def _fail(exc: EdgeCloudError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    code = 2 if isinstance(exc, (InvalidRequestError, ConfigError)) else 1
    return typer.Exit(code)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@device_app.command("generate")
def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt text; use '-' to read it from stdin.")],
    max_tokens: Annotated[Optional[int], typer.Option(help="Most new tokens.")] = None,
    model: Annotated[
        Optional[Path], typer.Option(help="GGUF file (default: embedded Gemma 3 270M).")
    ] = None,
    temperature: Annotated[Optional[float], typer.Option(help="0 = greedy.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass.")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Keep the k best tokens; 0 = all.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop sequence (repeatable).")] = None,
    chat: Annotated[bool, typer.Option(help="Treat the prompt as a user chat message.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads.")] = None,
    n_ctx: Annotated[Optional[int], typer.Option(help="Context window in tokens.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per token, then a summary.")
    ] = False,
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's log.")] = False,
) -> None:
    """Stream an answer from the local model, with per-token confidence."""
    from edgecloud import Client

    progress = _AssemblyProgress()
    try:
        text = sys.stdin.read() if prompt == "-" else prompt
        settings = _settings(config, verbose)
        client = Client.local(
            model, settings=settings, progress=progress, n_threads=threads, n_ctx=n_ctx
        )
    except EdgeCloudError as exc:
        progress.stop()
        raise _fail(exc) from None
    out = sys.stdout
    with client:
        try:
            request: Any = [{"role": "user", "content": text}] if chat else text
            stream = client.stream(request, max_tokens=max_tokens, temperature=temperature,
                                   top_p=top_p, top_k=top_k, seed=seed, stop=stop)  # fmt: skip
            with stream:
                for chunk in stream:
                    if as_json:
                        out.write(json.dumps({
                            "type": "token", "text": chunk.text, "token_id": chunk.token_id,
                            "logprob": chunk.logprob, "entropy": chunk.entropy,
                            "source": chunk.source, "index": chunk.index,
                        }) + "\n")  # fmt: skip
                    else:
                        out.write(chunk.text)
                    out.flush()
        except EdgeCloudError as exc:
            raise _fail(exc) from None
        except KeyboardInterrupt:
            stream.cancel()
    result = stream.result
    if result is None:
        return
    c, t = result.confidence, result.timings
    tok_s = result.usage.completion_tokens / t.total_s if t.total_s > 0 else math.nan
    if as_json:
        out.write(json.dumps({"type": "summary", **result.to_dict(), "tokens_per_s": tok_s}) + "\n")
    else:
        out.write(
            f"\n-- {result.usage.completion_tokens} tokens | {tok_s:.1f} tok/s | "
            f"mean logprob {_fmt(c.mean_logprob)} | min logprob {_fmt(c.min_logprob)} | "
            f"mean entropy {_fmt(c.mean_entropy)} | {result.source} | {result.finish_reason}\n"
        )
    out.flush()


@device_app.command("assemble")
def assemble(
    force: Annotated[bool, typer.Option(help="Rebuild even if a verified copy exists.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Build the embedded default model into the cache (sha256-checked) and print its path."""
    from edgecloud.device import ensure_default_model

    progress = _AssemblyProgress()
    try:
        path = ensure_default_model(_settings(config).cache_dir, progress=progress, force=force)
    except EdgeCloudError as exc:
        raise _fail(exc) from None
    finally:
        progress.stop()
    typer.echo(str(path))


@device_app.command("info")
def info(
    model: Annotated[
        Optional[Path], typer.Option(help="GGUF file (default: embedded model).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Load the model and print what it is, as JSON."""
    from edgecloud.device import load_text_backend

    try:
        backend = load_text_backend(_settings(config), model=model, progress=_AssemblyProgress())
    except EdgeCloudError as exc:
        raise _fail(exc) from None
    with backend:
        i = backend.info
        typer.echo(
            json.dumps({"kind": i.kind, "model": i.model, "path": i.path, **i.details}, indent=2)
        )


@device_app.command("chat")
def chat(
    config: ConfigOpt = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Most new tokens per answer.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's log.")] = False,
) -> None:
    """Chat with the device; each answer shows where it ran (local/cloud) and its confidence.

    With cloud endpoints in the config, the routing policies decide per answer and may hand
    off mid-answer; local text is shown plain, cloud text in blue. Type /quit or Ctrl-D to end.
    """
    from edgecloud import Client

    out = Console(highlight=False)
    progress = _AssemblyProgress()
    try:
        settings = _settings(config, verbose)
        client = Client.local(settings=settings, progress=progress)
    except EdgeCloudError as exc:
        progress.stop()
        raise _fail(exc) from None
    messages: list[dict[str, str]] = []
    with client:
        mode = "hybrid" if client.engine is not None else "local only"
        out.print(f"[dim]edgecloud chat ({mode}, {client.backend.info.model}); /quit to end[/]")
        while True:
            try:
                line = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                break
            if line in ("/quit", "/exit"):
                break
            if not line:
                continue
            messages.append({"role": "user", "content": line})
            out.print("bot>", end="")
            try:
                stream = client.stream(messages, max_tokens=max_tokens)
                for chunk in stream:
                    out.print(chunk.text, end="", style="blue" if chunk.source == "cloud" else None)
            except EdgeCloudError as exc:
                messages.pop()
                out.print(f"\n[bold red]error:[/] {exc}")
                continue
            r = stream.result
            if r is None:
                continue
            messages.append({"role": "assistant", "content": r.text.strip()})
            badge = {"local": "local", "cloud": "cloud", "mixed": "local→cloud"}[r.source]
            why = f" · {r.route.policy}: {r.route.reason}" if r.route is not None else ""
            if r.route is not None and r.route.fallback:
                why += f" · {r.route.fallback}"
            out.print(
                f"\n[dim]\\[{badge}] mean logprob {_fmt(r.confidence.mean_logprob)} · "
                f"min {_fmt(r.confidence.min_logprob)} · entropy {_fmt(r.confidence.mean_entropy)}"
                f"{why}[/]"
            )


@router_app.command("calibrate")
def calibrate(
    data: Annotated[
        Path,
        typer.Argument(
            help="JSONL: {'prompt': ...} or {'question': ...} per line, "
            "optionally with per-token 'logprobs'/'entropies'."
        ),
    ],
    target_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of answers to escalate.")
    ] = 0.2,
    signal: Annotated[
        str, typer.Option(help="'logprob' (low escalates) or 'entropy' (high escalates).")
    ] = "logprob",
    window: Annotated[int, typer.Option(min=1, help="Tokens in the confidence window.")] = 8,
    min_tokens: Annotated[int, typer.Option(min=1, help="Tokens before the window may fire.")] = 4,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per prompt.")] = 32,
    config: ConfigOpt = None,
) -> None:
    """Pick the window threshold that escalates --target-rate of a held-out set; prints the
    [device.router] settings to paste into the device config."""
    from edgecloud.router import calibrate_window

    if signal not in ("logprob", "entropy"):
        raise _fail(InvalidRequestError("--signal must be 'logprob' or 'entropy'"))
    try:
        records = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise _fail(InvalidRequestError(f"cannot read {data}: {exc}")) from None
    if not records:
        raise _fail(InvalidRequestError(f"{data} holds no records"))
    answers = [
        (r["logprobs"], r["entropies"]) for r in records if "logprobs" in r and "entropies" in r
    ]
    if len(answers) < len(records):
        answers = _local_signals(records, config, max_tokens)
    try:
        cal = calibrate_window(
            answers, target_rate, signal=signal, window=window, min_tokens=min_tokens
        )
    except ValueError as exc:
        raise _fail(InvalidRequestError(str(exc))) from None
    t = cal.thresholds
    err.print(
        f"{cal.examples} answers; escalates {cal.achieved_rate:.1%} (target {target_rate:.1%})"
    )
    lines = ["[device.router]", f"window = {t.window}", f"min_tokens = {t.min_tokens}"]
    if signal == "logprob":
        lines.append(f"min_mean_logprob = {t.min_mean_logprob:.4f}")
    else:
        lines.append(f"max_mean_entropy = {t.max_mean_entropy:.4f}")
    typer.echo("\n".join(lines))


@router_app.command("train")
def train(
    data: Annotated[
        Path,
        typer.Argument(
            help="JSONL with 'prompt' (or 'question') and 'poor' (bool: the "
            "local answer was wrong) per line."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where to write the learned router (JSON).")] = Path(
        "router.json"
    ),
) -> None:
    """Train the learned pre-generation router (MiniLM embedding + logistic head) and write
    it as JSON; point device.router.learned_path at the file."""
    from edgecloud.device._encoder import SentenceEncoder
    from edgecloud.router import LearnedRouter

    try:
        rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
        texts = [r.get("prompt") or r["question"] for r in rows]
        labels = [bool(r["poor"]) for r in rows]
        x = SentenceEncoder().encode(texts)
        head = LearnedRouter.fit(
            x, labels, meta={"encoder": "all-MiniLM-L6-v2-int8", "data": str(data)}
        )
    except (OSError, KeyError, ValueError) as exc:
        raise _fail(InvalidRequestError(f"cannot train from {data}: {exc}")) from None
    except EdgeCloudError as exc:
        raise _fail(exc) from None
    head.save(out)
    typer.echo(f"{out} ({len(rows)} examples, {sum(labels)} poor)")


def _local_signals(
    records: list[dict[str, Any]], config: Path | None, max_tokens: int
) -> list[tuple[list[float], list[float]]]:
    from edgecloud import Client

    try:
        client = Client.local(settings=_settings(config), progress=_AssemblyProgress())
    except EdgeCloudError as exc:
        raise _fail(exc) from None
    answers = []
    with client, Progress(console=err, transient=True) as bar:
        task = bar.add_task("running the device model", total=len(records))
        for r in records:
            prompt = r.get("prompt") or f"Q: {r['question']}\nA:"
            stream = client.stream(prompt, max_tokens=max_tokens, stop=r.get("stop", ["\n"]))
            chunks = [c for c in stream if c.token_id >= 0]
            answers.append(([c.logprob for c in chunks], [c.entropy for c in chunks]))
            bar.advance(task)
    return answers


def main() -> None:
    app()
