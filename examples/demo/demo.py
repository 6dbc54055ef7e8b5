"""edgecloud in a few minutes, on the embedded default models, all on this machine.

1. A cloud service starts (``edgecloud cloud serve``, the Gemma 3 270M base in torch)
   with a small knowledge base: the handbook of a fictional orchard-robot fleet. It
   advertises itself on the LAN (zeroconf, here bound to 127.0.0.1 only).
2. A device (the same base, quantized, in llama.cpp) discovers it, with no address
   configured.
3. The device is asked a mix of everyday questions, which its small model answers on
   its own, and questions about the fleet, which only the cloud's knowledge base can
   answer: a table shows where each answer ran, and why it escalated.
4. The cloud is stopped: the device carries on offline.
5. Where the metrics are.

``--learn`` also runs one learning round (longer, about 10 minutes on 2 cores): the
cloud distils the escalated answers into a signed LoRA adapter, the device hot-swaps
it and then answers the fleet questions itself.

    python examples/demo/demo.py [--learn]

Nothing is left running: the cloud process is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from edgecloud import AsyncClient, GenerationResult
from edgecloud.common.metrics import scrape
from edgecloud.config import Settings

HERE = Path(__file__).resolve().parent
KNOWLEDGE = HERE / "knowledge"

# The embedded model is a base model: few-shot Q/A prompts, not chat.
FEW_SHOT = (
    "Q: What is the capital of France?\nA: Paris\n"
    "Q: How many legs does a spider have?\nA: 8\n"
    "Q: What is the boiling point of water in degrees Celsius?\nA: 100\n"
)
EVERYDAY = [
    "What is the capital of Japan?",
    "What is 2 + 2?",
    "How many hours are in a day?",
]
FLEET = [
    "What is the maximum payload of the Heron robot?",
    "Which charging dock does the Wren use?",
    "What does fault code F-204 mean?",
    "How long does the Heron run on one battery charge?",
]
OFFLINE = [
    "What is the capital of Italy?",
    "What does fault code F-330 mean?",
]
# --learn: the device sends the first two phrasings of each fleet fact (its traffic,
# escalated and uploaded); the third is held out and asked after the round.
PHRASINGS = [
    ("How much weight can the Heron carry?", "What load can a Heron lift at most?",
     "Tell me the Heron's payload limit."),
    ("How many hours does a Heron work per charge?", "What is the battery runtime of the Heron?",
     "On a full charge, how long does the Heron last?"),
    ("Where does the Heron recharge?", "Which dock charges the Heron robot?",
     "At which charging dock does a Heron top up its battery?"),
    ("What colour is the Heron robot?", "What colour is the Heron's chassis painted?",
     "Which colour are Heron robots?"),
    ("What is the maximum payload of the Wren drone?", "How much weight can a Wren carry?",
     "Tell me the Wren's payload limit."),
    ("How long does the Wren fly on one charge?", "What is the flight time of the Wren drone?",
     "On a full battery, how long can a Wren stay in the air?"),
    ("Where does the Wren recharge?", "Which dock charges the Wren drone?",
     "At which charging dock does a Wren top up its battery?"),
    ("What colour is the Wren drone?", "What colour is the Wren's body painted?",
     "Which colour are Wren drones?"),
    ("What does fault F-71 mean?", "A robot shows F-71: what is wrong?",
     "What is fault code F-71?"),
    ("What does fault F-204 mean?", "A robot shows F-204: what is wrong?",
     "What is fault code F-204?"),
    ("What does fault F-330 mean?", "A robot shows F-330: what is wrong?",
     "What is fault code F-330?"),
]  # fmt: skip

# The device's router: watch the first tokens' confidence (a window of 4) and hold 4
# tokens back, so an answer the device is unsure of goes to the cloud before the user
# has seen any of it.
ROUTER = {"window": 4, "min_tokens": 1, "holdback_tokens": 4, "min_mean_logprob": -1.2}

console = Console(highlight=False)


def prompt(question: str) -> str:
    return f"{FEW_SHOT}Q: {question}\nA:"


@dataclass
class Row:
    question: str
    result: GenerationResult


def where(r: GenerationResult) -> str:
    return {"local": "device", "cloud": "cloud", "mixed": "device→cloud"}[r.source]


def why(r: GenerationResult) -> str:
    route = r.route
    if route is None:
        return "no cloud configured"
    text = f"{route.policy}: {route.reason}"
    if route.fallback:  # the full error is in the result; the table says what happened
        text += "; the cloud is unreachable, so the device answered"
    return text


def table(title: str, rows: list[Row]) -> Table:
    t = Table(title=title, title_justify="left", expand=True)
    t.add_column("question", ratio=3)
    t.add_column("answered on", no_wrap=True)
    t.add_column("why", ratio=3)
    t.add_column("answer", ratio=2)
    for row in rows:
        r = row.result
        style = "cyan" if r.source != "local" else None
        t.add_row(row.question, where(r), why(r), r.text.strip().split("\n")[0], style=style)
    return t


@contextlib.contextmanager
def cloud_process(workdir: Path, metrics_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``edgecloud cloud serve`` in its own process group, advertised on 127.0.0.1;
    terminated (and killed if it lingers) on exit."""
    config = write_cloud_config(workdir, metrics_port)
    log = (workdir / "cloud.log").open("wb")
    proc = subprocess.Popen(
        [edgecloud_exe(), "cloud", "serve", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        stop_cloud(proc)
        log.close()


def edgecloud_exe() -> str:
    return str(Path(sys.executable).with_name("edgecloud"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_cloud_config(workdir: Path, metrics_port: int) -> Path:
    """The cloud's settings: loopback, the handbook, discovery and metrics on 127.0.0.1,
    a signing key (``edgecloud adapters keygen``) and a registry for the learning round."""
    keys = workdir / "keys"
    subprocess.run([edgecloud_exe(), "adapters", "keygen", "--out", str(keys)],
                   check=True, capture_output=True)  # fmt: skip
    config = workdir / "cloud.toml"
    config.write_text(
        "[cloud]\n"
        'host = "127.0.0.1"\nport = 0\ninsecure = true\n'
        "[cloud.model]\nthreads = 1\n"
        "[cloud.knowledge]\n"
        f'directory = "{KNOWLEDGE.as_posix()}"\nindex_dir = "{(workdir / "index").as_posix()}"\n'
        "[cloud.discovery]\n"
        'advertise = true\ninterfaces = ["127.0.0.1"]\n'
        "[cloud.metrics]\n"
        f'enabled = true\nhost = "127.0.0.1"\nport = {metrics_port}\n'
        "[cloud.records]\n"
        f'path = "{(workdir / "records.sqlite3").as_posix()}"\n'
        "[cloud.registry]\n"
        f'url = "{(workdir / "registry").as_posix()}"\n'
        f'signing_key = "{(keys / "signing_key.pem").as_posix()}"\n'
    )
    return config


def stop_cloud(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def device_settings(workdir: Path) -> Settings:
    return Settings.load(
        device={
            "model": {"n_threads": 2},
            "generation": {"max_tokens": 24, "temperature": 0.0, "stop": ["\n"]},
            "discovery": {"enabled": True, "interfaces": ["127.0.0.1"]},
            "router": ROUTER,
            "cloud": {"timeout_s": 120.0, "health_interval_s": 1.0},
            "log": {"path": str(workdir / "escalations.sqlite3"), "upload_interval_s": 2.0},
            "adapters": {
                "enabled": True,
                "public_keys": [(workdir / "keys" / "signing_key.pub").read_text().strip()],
                "directory": str(workdir / "adapters"),
            },
        },
    )


async def ask(client: AsyncClient, questions: list[str]) -> list[Row]:
    rows = []
    for q in questions:
        with console.status(f"[dim]asking:[/] {q}"):
            rows.append(Row(q, await client.generate(prompt(q))))
    return rows


async def learn(client: AsyncClient, workdir: Path) -> None:
    """One learning round: the device's fleet traffic is escalated and uploaded, the cloud
    trains, signs and publishes an adapter, the device hot-swaps it; then the held-out
    phrasings, which no device sent, are asked again."""
    engine = client._hybrid()
    assert engine is not None
    traffic = [q for p in PHRASINGS for q in p[:2]]
    with Progress(TextColumn("{task.description}"), BarColumn(), console=console) as bar:
        task = bar.add_task("device traffic", total=len(traffic))
        for q in traffic:
            await client.generate(prompt(q))
            bar.advance(task)
    while await engine.upload_pending():
        pass
    console.print(
        "[bold]learning round[/]: edgecloud cloud train --publish (the cloud's log below)"
    )
    started = time.perf_counter()
    round_ = await asyncio.create_subprocess_exec(
        edgecloud_exe(), "cloud", "train", "--publish", "--since", "1h",
        "--config", str(workdir / "cloud.toml"), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await round_.communicate()  # its progress goes to the terminal (stderr)
    summary = next((json.loads(line) for line in out.splitlines() if line.startswith(b"{")), {})
    console.print(round_table(summary))
    if round_.returncode != 0:
        console.print(f"[bold red]the round did not publish[/] (exit {round_.returncode}): "
                      f"{summary.get('refused') or 'see above'}")  # fmt: skip
        return
    with console.status("waiting for the device to verify and hot-swap the adapter..."):
        while engine.adapter_version is None and time.perf_counter() - started < 1800:
            await asyncio.sleep(0.5)
    console.print(f"round and swap: {time.perf_counter() - started:.0f} s; "
                  f"the device runs adapter version {engine.adapter_version}")  # fmt: skip
    rows = await ask(client, [p[2] for p in PHRASINGS])
    console.print(table("after one round: fleet phrasings no device sent", rows))


def round_table(summary: dict[str, Any]) -> Table:
    """What ``edgecloud cloud train`` reported, in a few rows."""
    t = Table(title="the round", title_justify="left", show_header=False)
    m = summary.get("metrics", {})
    cal = summary.get("calibration") or {}
    measured = cal.get("measured", {})
    t.add_row("escalation records", str(summary.get("records", "?")))
    t.add_row(
        "examples: trained / held out", f"{m.get('train', 0):.0f} / {m.get('holdout', 0):.0f}"
    )
    if cal:
        t.add_row("calibrated escalation", f"window {cal['window']}, mean logprob < "
                  f"{cal['min_mean_logprob']:.2f} (target: at most "
                  f"{cal['target_wrong_rate']:.0%} confidently wrong)")  # fmt: skip
        before = measured.get("domain_before_system_accuracy", 0)
        after = measured.get("domain_after_system_accuracy", 0)
        t.add_row("held out, device+cloud right", f"{before:.0%} before, {after:.0%} after")
    stages = summary.get("stage_seconds", {})
    t.add_row("time", ", ".join(f"{k} {v:.0f} s" for k, v in stages.items() if v >= 1))
    t.add_row("published", f"version {summary['version']}" if summary.get("version") else "no")
    return t


async def wait_for_cloud(client: AsyncClient, timeout_s: float) -> float:
    """Seconds until the device has a healthy cloud endpoint (found over zeroconf)."""
    t0 = time.perf_counter()
    engine = client._hybrid()  # starts discovery and health checks
    assert engine is not None
    while time.perf_counter() - t0 < timeout_s:
        if engine.pool is not None and any(e.healthy for e in engine.pool.endpoints):
            return time.perf_counter() - t0
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no cloud discovered within {timeout_s:.0f} s")


@contextlib.asynccontextmanager
async def device(workdir: Path) -> AsyncIterator[AsyncClient]:
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
        console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("device model", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        client = await AsyncClient.open(settings=device_settings(workdir), progress=progress)
    async with client:
        yield client


def counters(text: str, names: tuple[str, ...]) -> list[tuple[str, str, float]]:
    """(metric, labels, value) of the named counters' samples, from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    rows = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names and sample.value:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                rows.append((sample.name, labels, sample.value))
    return rows


def metrics_table(device: str, cloud: str) -> Table:
    t = Table(title="5. metrics (Prometheus)", title_justify="left")
    t.add_column("side")
    t.add_column("edgecloud_…")
    t.add_column("labels")
    t.add_column("value", justify="right")
    names = ("edgecloud_requests_total", "edgecloud_tokens_total",
             "edgecloud_device_escalations_total", "edgecloud_device_fallbacks_total")  # fmt: skip
    for side, text in (("device", device), ("cloud", cloud)):
        for name, labels, value in counters(text, names):
            short = name.removeprefix("edgecloud_").removesuffix("_total")
            labels = ",".join(p for p in labels.split(",") if not p.startswith("side="))
            t.add_row(side, short, labels, f"{value:g}")
    return t


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="edgecloud-demo."))
    console.rule("[bold]edgecloud demo")
    console.print(f"[dim]work files: {workdir}[/]")
    metrics_port = free_port()
    cloud_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with cloud_process(workdir, metrics_port) as cloud:
        console.print("1. cloud: [bold]edgecloud cloud serve[/] with the orchard fleet handbook "
                      f"({len(list(KNOWLEDGE.glob('*.md')))} documents) - starting...")  # fmt: skip
        async with device(workdir) as client:
            with console.status("2. device: looking for a cloud on the LAN (zeroconf)..."):
                found = await wait_for_cloud(client, timeout_s=600)
            engine = client._hybrid()
            assert engine is not None and engine.pool is not None
            targets = ", ".join(e.target for e in engine.pool.endpoints if e.healthy)
            console.print(f"2. device: found the cloud at {targets} after {found:.1f} s")
            rows = await ask(client, EVERYDAY + FLEET)
            console.print(table("3. everyday and fleet questions", rows))
            if args.learn:
                await learn(client, workdir)
            with urllib.request.urlopen(cloud_url, timeout=10) as r:
                cloud_metrics = r.read().decode()
            stop_cloud(cloud)
            console.print("4. cloud stopped")
            rows = await ask(
                client, OFFLINE + ([p[2] for p in PHRASINGS[:3]] if args.learn else [])
            )
            console.print(table("4. the device carries on offline", rows))
            device_metrics = scrape().decode()
    console.print(metrics_table(device_metrics, cloud_metrics))
    console.print(f"   the cloud served these at {cloud_url} (\\[cloud.metrics]); a device serves "
                  "its own at /metrics of `edgecloud device serve`")  # fmt: skip
    console.rule("[bold]done")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learn", action="store_true", help="also run one learning round")
    args = parser.parse_args()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
