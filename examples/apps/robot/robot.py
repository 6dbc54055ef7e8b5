"""Spoken-style commands become validated robot actions, on the device, with the cloud
for the commands the device is unsure of.

    python examples/apps/robot/robot.py                # a scripted session, with a network drop
    python examples/apps/robot/robot.py --interactive  # type commands (":drop" cuts the network)

Each clause of a command ("pick up the apples crate, then go to bay 3") becomes one tool
call: the embedded 270M base model writes it under the grammar of the robot's tools
(``tools=``), from a few-shot prompt. The hybrid engine watches the answer's confidence
and hands an unsure one to the cloud, whose knowledge base is the robot's manual
(``manual/*.md``). Every call is validated (pydantic, then the robot's state) before
anything runs, and a command runs whole or not at all. With the cloud gone, confident
commands still run from the device; unsure ones are refused rather than guessed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from warehouse import Rejected, Robot, tools

from edgecloud import Client
from edgecloud.config import RouterConfig, Settings
from edgecloud.router import window_extremes
from edgecloud.types import GenerationResult, ToolCall

HERE = Path(__file__).resolve().parent
MANUAL = HERE / "manual"

ROUTER = {"window": 3, "min_mean_logprob": -0.65, "min_tokens": 3}
"""Hand off when three tokens in a row average below -0.65 nats. Measured on the
embedded model with the prompt below: clear clauses stay above -0.45 (worst: "stop"),
vague ones ("go to the cold store", "put it over there") fall below -0.85."""
MAX_TOKENS = 32
"""The longest call ({"name": "move_to", "arguments": {"bay": 3, "speed": "slow"}}) is
23 tokens."""

_EXAMPLES = [
    ("slowly head over to bay 1", "move_to", {"bay": 1, "speed": "slow"}),
    ("pick up the bolts crate", "pick", {"crate": "bolts"}),
    ("halt!", "stop", {}),
    ("drive to bay 5 quickly", "move_to", {"bay": 5, "speed": "fast"}),
    ("put the crate down in bay 6", "place", {"bay": 6}),
    ("grab the flour crate", "pick", {"crate": "flour"}),
    ("go to bay 2", "move_to", {"bay": 2, "speed": "normal"}),
]
FEW_SHOT = "Robot commands and the call that carries each one out.\n" + "".join(
    f"Q: {q}\nA:\n{json.dumps({'name': n, 'arguments': a})}\n" for q, n, a in _EXAMPLES
)
"""A base model continues a pattern: commands and their JSON calls. The call starts on
its own line, as in the examples, so the grammar's first token (``{"``) is also the
model's. ``Q:`` marks the question the cloud searches its manual with."""

_CLAUSES = re.compile(r"\s*(?:,\s*(?:and\s+)?then\s+|\s+and\s+then\s+|\s+then\s+|;\s*)")

Status = Literal["executed", "rejected", "refused"]


def clauses(command: str) -> list[str]:
    """A spoken command's clauses, each one call: "pick up the apples crate, then go to
    bay 3" is two. The model writes one call per answer (as ``tools=`` does), and a
    270M base model keeps to one instruction far better than it splits several."""
    return [c.strip(" .!") for c in _CLAUSES.split(command) if c.strip(" .!")]


@dataclass
class Outcome:
    """What became of one command."""

    command: str
    status: Status
    message: str
    calls: list[ToolCall] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    """Where each call came from: local, cloud or mixed (a mid-answer hand-off)."""
    escalated: bool = False


class Controller:
    """Turns commands into tool calls and runs them on the robot.

    Args:
        client: a client whose hybrid engine may hand answers to the cloud.
        robot: the robot the calls run on.
        router: the router's thresholds, to tell an unsure local answer (one the router
            would have handed off, had the cloud been there) from a confident one.
    """

    def __init__(self, client: Client, robot: Robot, router: RouterConfig) -> None:
        self.client = client
        self.robot = robot
        self.router = router
        self.tools = tools()

    def _unsure(self, result: GenerationResult, logprobs: Sequence[float],
                entropies: Sequence[float]) -> str | None:  # fmt: skip
        """Why a local answer cannot be trusted offline, or None when it can."""
        route = result.route
        if route is not None and route.fallback is not None:
            return "the router handed it off, and the cloud did not answer"
        if route is not None and route.escalated:
            return None  # the cloud answered
        r = self.router
        lo, hi = window_extremes(logprobs, entropies, r.window, r.min_tokens)
        if lo < r.min_mean_logprob or hi > r.max_mean_entropy:
            return f"low confidence (window mean logprob {lo:.2f}), and no cloud to ask"
        return None

    def _call(self, clause: str) -> tuple[ToolCall, GenerationResult, str | None]:
        prompt = f"{FEW_SHOT}Q: {clause}\nA:\n"
        with self.client.stream(prompt, tools=self.tools, max_tokens=MAX_TOKENS) as stream:
            tokens = [c for c in stream if c.token_id >= 0]
        result = stream.result
        local = [c for c in tokens if c.source == "local"]
        unsure = self._unsure(result, [c.logprob for c in local], [c.entropy for c in local])
        if not result.tool_calls:  # cut by max_tokens: the grammar did not get to close it
            raise Rejected(f"no complete call within {MAX_TOKENS} tokens: {result.text!r}")
        return result.tool_calls[0], result, unsure

    def handle(self, command: str) -> Outcome:
        """One command: a call per clause, all validated, then all executed (or none)."""
        out = Outcome(command, "rejected", "")
        try:
            for clause in clauses(command):
                call, result, unsure = self._call(clause)
                out.calls.append(call)
                out.sources.append(result.source)
                out.escalated |= result.route is not None and result.route.escalated
                if unsure is not None:
                    out.status = "refused"
                    out.message = f"offline and unsure: not executing ({clause!r}: {unsure})"
                    return out
            steps = self.robot.run([(c.name, c.arguments) for c in out.calls])
        except Rejected as exc:
            out.message = f"rejected, nothing executed: {exc}"
            return out
        out.status = "executed"
        out.message = "; ".join(map(str, steps)) or "nothing to do"
        return out


class LocalCloud:
    """A cloud service on 127.0.0.1 in this process: the default model (in torch) with
    the robot's manual as its knowledge base. :meth:`drop` stops it: the network drop."""

    def __init__(self, workdir: Path, **overrides: Any) -> None:
        from edgecloud.cloud import CloudServer, KnowledgeBase, RecordStore, TorchBackend
        from edgecloud.common.aio import LoopThread
        from edgecloud.common.encoder import SentenceEncoder

        cloud = {
            "insecure": True, "port": 0, "max_running_sequences": 2, "max_new_tokens": 64,
            "default_max_tokens": MAX_TOKENS, "max_context_tokens": 1024, "model": {"threads": 1},
            "registry": {"url": str(workdir / "registry")},
            # The manual's bays are described a paragraph each, and a command names a
            # place, not a figure: whole paragraphs, the best two, serve it better than
            # the default sentence passages (made for questions after one fact).
            "knowledge": {"chunk_chars": 160, "top_k": 2},
        }  # fmt: skip
        settings = Settings.load(cloud=cloud, **overrides)
        self.backend = TorchBackend.load(settings)
        knowledge = KnowledgeBase(MANUAL, SentenceEncoder(), index_dir=workdir / "index",
                                  max_chars=settings.cloud.knowledge.chunk_chars)  # fmt: skip
        self._runner = LoopThread("robot-cloud")
        records = RecordStore(workdir / "records.db")
        self.server = self._runner.run(
            CloudServer.start(self.backend, settings.cloud, knowledge=knowledge, records=records)
        )
        self.port = self.server.port
        self.up = True

    def drop(self) -> None:
        if self.up:
            self.up = False
            self._runner.run(self.server.stop(0))

    def close(self) -> None:
        self.drop()
        self._runner.close()
        self.backend.close()


def device_settings(port: int | None, workdir: Path, **overrides: Any) -> Settings:
    """The device's settings: the embedded model, the router's thresholds, and the cloud
    on 127.0.0.1:``port`` (none when ``port`` is None)."""
    endpoints = [] if port is None else [{"target": f"127.0.0.1:{port}", "tls": False}]
    device = {
        "model": {"n_threads": 2, "n_ctx": 1024},
        "generation": {"temperature": 0.0},
        "router": ROUTER,
        "cloud": {"endpoints": endpoints, "first_token_timeout_s": 60, "timeout_s": 120,
                  "health_interval_s": 60},
        "log": {"path": str(workdir / "escalations.db")},
    }  # fmt: skip
    return Settings.load(device=device, **overrides)


@contextmanager
def session(workdir: Path, *, cloud: bool = True, **overrides: Any) -> Iterator[
    tuple[Controller, LocalCloud | None]
]:  # fmt: skip
    """A controller on a fresh robot, and the local cloud it escalates to (when asked);
    ``overrides`` are top-level settings for both (``cache_dir``)."""
    local = LocalCloud(workdir, **overrides) if cloud else None
    try:
        settings = device_settings(local.port if local else None, workdir, **overrides)
        with Client.local(settings=settings) as client:
            yield Controller(client, Robot(), settings.device.router), local
    finally:
        if local is not None:
            local.close()


SCRIPT = [
    "go to bay 4",
    "pick up the apples crate, then move to bay 3 slowly, then put it down in bay 3",
    "go to the cold store",
    ":drop",
    "move to bay 5 slowly",
    "go to the charging dock",
]
"""Clear commands, a vague one the cloud (with the manual) answers, the network drop,
then a clear command the device runs alone and a vague one it refuses."""


def show(out: Outcome) -> None:
    where = ",".join(out.sources) or "-"
    esc = " escalated" if out.escalated else ""
    print(f"> {out.command}\n  [{out.status}; {where}{esc}] {out.message}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactive", action="store_true", help="type commands")
    parser.add_argument("--no-cloud", action="store_true", help="start offline")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        what = "the device model" + (
            "" if args.no_cloud else " and the local cloud (model + manual)"
        )
        print(f"loading {what}...", flush=True)
        with session(Path(tmp), cloud=not args.no_cloud) as (controller, cloud):
            lines = _typed() if args.interactive else iter(SCRIPT)
            for line in lines:
                if line in (":drop", ":offline"):
                    if cloud is not None:
                        cloud.drop()
                    print("~~ network drop: the cloud is gone ~~")
                elif line == ":state":
                    print(f"  robot: {controller.robot.describe()}")
                elif line:
                    show(controller.handle(line))
            print(f"robot: {controller.robot.describe()}")
            print("log:", *controller.robot.log, sep="\n  ")
    return 0


def _typed() -> Iterator[str]:
    print('commands, ":drop" to cut the network, ":state", ":quit"')
    while True:
        try:
            line = input("robot> ").strip()
        except EOFError:
            return
        if line in (":quit", ":q"):
            return
        yield line


if __name__ == "__main__":
    sys.exit(main())
