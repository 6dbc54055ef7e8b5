"""``edgecloud router``: calibrate the confidence window, train the learned router."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from edgecloud.cli._common import AssemblyProgress, ConfigOpt, err, fail, load_settings
from edgecloud.errors import EdgeCloudError, InvalidRequestError

__all__ = ["router_app"]

router_app = typer.Typer(help="Escalation policies: calibrate thresholds.", no_args_is_help=True)


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
        raise fail(InvalidRequestError("--signal must be 'logprob' or 'entropy'"))
    try:
        records = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise fail(InvalidRequestError(f"cannot read {data}: {exc}")) from None
    if not records:
        raise fail(InvalidRequestError(f"{data} holds no records"))
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
        raise fail(InvalidRequestError(str(exc))) from None
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
    from edgecloud.common.encoder import SentenceEncoder
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
        raise fail(InvalidRequestError(f"cannot train from {data}: {exc}")) from None
    except EdgeCloudError as exc:
        raise fail(exc) from None
    head.save(out)
    typer.echo(f"{out} ({len(rows)} examples, {sum(labels)} poor)")


def _local_signals(
    records: list[dict[str, Any]], config: Path | None, max_tokens: int
) -> list[tuple[list[float], list[float]]]:
    from edgecloud import Client

    try:
        client = Client.local(settings=load_settings(config), progress=AssemblyProgress())
    except EdgeCloudError as exc:
        raise fail(exc) from None
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
