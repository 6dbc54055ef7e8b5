"""The learning loop end to end, on any domain: escalations → LoRA → signed GGUF → hot-swap.

On the embedded default models, all in this process and over gRPC on 127.0.0.1:

1. A cloud service (torch, the Gemma 3 270M base dequantized) with the domain's
   knowledge directory (``--knowledge``; the fleet manual by default) as its
   knowledge base, an adapter registry and a fresh Ed25519 signing key.
2. A device (llama.cpp, the same base as Q4_K_M GGUF) with the hybrid engine:
   the confidence-window router (window 4, from the first token, 4 tokens held
   back so a hand-off lets the cloud answer from scratch) and an escalation log.
3. **Collect**: the device asks the first ``--asked`` phrasings of each fact
   (``--facts``) through the hybrid engine; what it escalates is answered by the
   cloud (with retrieval), logged, and uploaded to the cloud's record store. It
   also serves its everyday traffic (``--traffic``, disjoint from the general set):
   confident local answers are logged as replay records
   (``device.log.replay_rate``), so the round keeps them.
4. **Before**: on the held-out phrasings (the rest of each fact's, which no device
   ever sends) and on a general set (``--general``), the whole system answers:
   the device with automatic routing, the cloud where the engine escalates (the
   system pass), and the device alone (``route="local"``, the local pass). The
   evaluation asks through a second engine on the same backend and cloud whose
   escalation log is off: held-out questions never become training records.
5. **Round** (timed): ``run_round`` reads the records, trains a LoRA (peft) on
   the device's base, exports the llama.cpp GGUF, signs and publishes it with
   100% rollout; the device's ``AdapterManager``, watching the cloud over
   ``WatchAdapters``, fetches, verifies, installs, hot-swaps and runs its canary,
   and hands both engines the version's routing (its scope and calibrated
   escalation thresholds, ``manifest.calibration``).
6. **After**: step 4 again with the adapter swapped in.

Reported before and after, on the held-out phrasings: answered locally and right,
answered wrong with no escalation, the escalation rate (and its cut), and the
accuracy of device plus cloud, also on the general set; and the round's time.

    python bench/learning_loop.py --domain greenhouse [--facts-limit 24] [--passages]
    python bench/learning_loop.py --knowledge DIR --facts FACTS.json [--general G.jsonl]
        [--traffic T.txt] [--asked 3] [--name NAME]

Prints a table; writes bench/results/learning_loop-<name>.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _domain import DOMAINS, Domain, InputError, Item, resolve
from _results import RESULTS
from knowledge_eval import few_shot_prompt, is_right

ROOT = Path(__file__).resolve().parents[1]

ROUTER = {
    "window": 4,
    "min_tokens": 1,
    "holdback_tokens": 4,
}
RATES = (
    ("domain_local_right_rate", "domain", "local_right_rate", "answered locally and right"),
    ("domain_wrong_unescalated_rate", "domain", "wrong_unescalated_rate",
     "answered wrong, not escalated"),
    ("domain_escalation_rate", "domain", "escalation_rate", "escalation rate"),
    ("domain_system_accuracy", "domain", "accuracy", "device + cloud accuracy"),
    ("general_system_accuracy", "general", "accuracy", "general: device + cloud accuracy"),
)  # fmt: skip
"""The system pass's figures for the table and the plot: (summary key, set, key of
:func:`rates`, label); the first four are on the held-out domain phrasings."""


async def ask(engine: Any, question: str, route: str | None) -> tuple[str, Any]:
    """The final answer (the cloud's retractions applied) and its ``RouteInfo``."""
    from edgecloud.device._answer import Transcript
    from edgecloud.device._hybrid import CancelScope
    from edgecloud.types import Chunk, Finish, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=24, stop=("\n",))
    answer, info = Transcript(), None
    async for ev in engine.stream(few_shot_prompt(question), params, route=route,
                                  cancel=CancelScope()):  # fmt: skip
        if isinstance(ev, Chunk):
            answer.add(ev)
        elif isinstance(ev, Finish):
            info = ev.route
    return answer.text, info


def rates(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A pass's shares of its questions (the local pass never escalates, so its
    ``accuracy`` is its ``local_right_rate``)."""
    n = max(len(rows), 1)
    scoped = [r for r in rows if r["adapter_in_scope"] is not None]
    return {
        "questions": len(rows),
        "accuracy": sum(r["right"] for r in rows) / n,
        "local_right_rate": sum(r["right"] and not r["escalated"] for r in rows) / n,
        "wrong_unescalated_rate": sum(not r["right"] and not r["escalated"] for r in rows) / n,
        "escalation_rate": sum(r["escalated"] for r in rows) / n,
        "adapter_rate": (
            sum(bool(r["adapter_in_scope"]) for r in scoped) / len(scoped) if scoped else None
        ),
    }


async def answer_pass(engine: Any, items: Sequence[Item], route: str | None) -> dict[str, Any]:
    """Ask each (question, answers): ``route`` None routes as the device does (the
    system pass), ``"local"`` keeps every answer on the device (the local pass)."""
    rows = []
    for question, answers in items:
        text, info = await ask(engine, question, route)
        signals = info.signals if info is not None else {}
        rows.append({"question": question, "answer": text.strip(), "right": is_right(text, answers),
                     "escalated": bool(info is not None and info.escalated),
                     "policy": info.policy if info is not None else None,
                     "adapter_in_scope": signals.get("adapter_in_scope")})  # fmt: skip
    return {**rates(rows), "rows": rows}


async def measure(engine: Any, domain: Domain, *, system: bool = True) -> dict[str, Any]:
    """The held-out domain questions and the general set, each through the local pass
    and (``system``) the system pass."""
    out: dict[str, Any] = {}
    for key, items in (("domain", domain.heldout), ("general", domain.general)):
        out[key] = {"local": await answer_pass(engine, items, "local")}
        if system:
            out[key]["system"] = await answer_pass(engine, items, None)
    return out


async def collect(engine: Any, questions: list[str]) -> dict[str, Any]:
    """Ask through the hybrid engine (auto routing); escalations are logged, then uploaded."""
    escalated = 0
    for q in questions:
        _, info = await ask(engine, q, None)
        escalated += bool(info is not None and info.escalated)
    uploaded = 0
    while True:
        sent = await engine.upload_pending()
        uploaded += sent
        if not sent:
            break
    return {"asked": len(questions), "escalated": escalated, "uploaded": uploaded}


def progress_printer(started: float) -> Any:
    last = [0.0]

    def on_step(step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if now - last[0] >= 5 or step == total:
            last[0] = now
            print(f"  train step {step}/{total}  loss {loss:.3f}  {now - started:.0f}s",
                  flush=True)  # fmt: skip

    return on_step


def _setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--train``; the value is JSON when it parses as JSON."""
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--train takes KEY=VALUE, not {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def fan_out(engines: Sequence[Any], encoder: Any, swaps: list[Any]) -> Callable[[Any], None]:
    """The adapter manager's ``on_swap``: every engine on the backend gets the routing
    of the version swapped in (scope, calibrated thresholds), with one sentence
    encoder for the scope; ``swaps`` keeps each routing."""

    def on_swap(routing: Any) -> None:
        swaps.append(routing)
        for engine in engines:
            engine.set_adapter_routing(routing, encoder=encoder)

    return on_swap


async def run(args: argparse.Namespace, domain: Domain) -> dict[str, Any]:
    from edgecloud.adapters._registry import AdapterRegistry
    from edgecloud.adapters._signing import generate_keypair
    from edgecloud.backends import LlamaCppBackend
    from edgecloud.cloud import CloudServer, TorchBackend
    from edgecloud.cloud._knowledge import KnowledgeBase
    from edgecloud.cloud._records import RecordStore
    from edgecloud.cloud.train import base_model, run_round
    from edgecloud.common.encoder import SentenceEncoder
    from edgecloud.common.models import ensure_default_model
    from edgecloud.config import Settings
    from edgecloud.device._adapters import AdapterManager
    from edgecloud.device._factory import build_engine
    from edgecloud.transport import AdapterSyncClient

    name = domain.name
    tmp = Path(tempfile.mkdtemp(prefix="edgecloud-loop."))
    print(f"work directory: {tmp} (records.sqlite3 there can be reused with --records)")
    if args.records is not None:
        import shutil

        shutil.copyfile(args.records, tmp / "records.sqlite3")
    key_path, public = generate_keypair(tmp / "keys")
    base = Settings.load()
    settings = Settings.load(
        cache_dir=base.cache_dir,
        cloud={
            "insecure": True, "port": 0,
            "model": {"threads": args.threads},
            "knowledge": {"directory": str(domain.knowledge), "index_dir": str(tmp / "idx")},
            "records": {"path": str(tmp / "records.sqlite3")},
            "registry": {"url": str(tmp / "registry"), "signing_key": str(key_path)},
            "train": {**({"epochs": args.epochs} if args.epochs else {}),
                      "include_passages": args.passages,
                      "threads": args.threads, "adapter_id": name,
                      # The "before" the round compares with is this bench's device.
                      "calibration": {"device_window": ROUTER["window"],
                                      "device_min_tokens": ROUTER["min_tokens"],
                                      "device_min_mean_logprob": args.threshold},
                      **dict(_setting(kv) for kv in args.train)},
        },
    )  # fmt: skip
    t_setup = time.perf_counter()
    kb = KnowledgeBase(domain.knowledge, SentenceEncoder(), index_dir=tmp / "idx")
    cloud_backend = TorchBackend.load(settings)
    registry = AdapterRegistry(str(tmp / "registry"))
    server = await CloudServer.start(
        cloud_backend, settings.cloud, knowledge=kb,
        records=RecordStore(tmp / "records.sqlite3"), registry=registry,
    )  # fmt: skip
    target = f"127.0.0.1:{server.port}"

    def device_settings(log: dict[str, Any]) -> Any:
        return Settings.load(
            cache_dir=base.cache_dir,
            device={
                "model": {"n_threads": args.threads},
                # One CPU cloud shared with the device on 2 cores: a slow first token is
                # load, not an outage, so neither the timeout nor the breaker may drop the
                # cloud here.
                "cloud": {"endpoints": [{"target": target, "tls": False}], "timeout_s": 600,
                          "first_token_timeout_s": 300, "breaker_failures": 100},
                "router": {**ROUTER, "min_mean_logprob": args.threshold},
                "log": log,
                "adapters": {"enabled": True, "adapter_id": name, "device_id": "bench-device",
                             "public_keys": [public], "directory": str(tmp / "adapters"),
                             "reconnect_s": 1.0, "canary_min_pass": args.canary_min_pass},
            },
        )  # fmt: skip

    device = device_settings({"path": str(tmp / "device-log.sqlite3"),
                              "replay_rate": args.replay_rate})  # fmt: skip
    gguf = ensure_default_model(base.cache_dir)
    backend = LlamaCppBackend(gguf, n_threads=args.threads)
    engine = build_engine(backend, device)
    # The evaluation's engine: the same backend, cloud and router, no escalation log, so
    # that no held-out question becomes a training record.
    evaluator = build_engine(backend, device_settings({"enabled": False, "replay_rate": 0.0}))
    if evaluator.log is not None:
        raise RuntimeError("the evaluation engine must not record escalations")
    swaps: list[Any] = []
    scope_encoder = SentenceEncoder()
    _, _, base_sha, arch = base_model(settings)
    sync = AdapterSyncClient(target, tls=False)
    manager = AdapterManager(
        backend, device.device.adapters, base_sha256=base_sha, base_architecture=arch,
        root=tmp / "adapters", client=sync,
        on_swap=fan_out([engine, evaluator], scope_encoder, swaps),
    )  # fmt: skip
    manager.start()
    setup_s = time.perf_counter() - t_setup
    try:
        t0 = time.time()
        if args.records is not None:
            t0 = 0.0  # every record of the earlier run
            collected: dict[str, Any] = {"reused": str(args.records)}
        else:
            print(f"collect: the device asks {len(domain.sent)} domain questions "
                  f"({domain.asked} phrasings x {len(domain.facts)} facts) and "
                  f"{len(domain.traffic)} everyday ones")  # fmt: skip
            collected = await collect(engine, domain.sent)
            collected["traffic"] = await collect(engine, domain.traffic)
            if not collected["uploaded"]:
                raise RuntimeError("no escalation reached the cloud's record store (see the log)")
            print(f"  domain: escalated {collected['escalated']}, uploaded "
                  f"{collected['uploaded']}; everyday: escalated "
                  f"{collected['traffic']['escalated']}, uploaded "
                  f"{collected['traffic']['uploaded']} (escalations + replay records)")  # fmt: skip
        if engine.log is not None and engine.log.pending(1):
            raise RuntimeError("records of the collection are still waiting for upload")
        print(f"before: {len(domain.heldout)} held-out domain questions, "
              f"{len(domain.general)} general")  # fmt: skip
        before = await measure(evaluator, domain)
        watcher = manager.start_watching()
        t_round = time.perf_counter()
        result = await asyncio.to_thread(
            run_round, settings, tmp / "round", since=t0 - 1, publish=True,
            progress=progress_printer(t_round), on_stage=lambda s: print(f"round: {s}", flush=True),
        )  # fmt: skip
        t_published = time.perf_counter()
        refused = False
        if result.version is None:  # the round itself refused to publish the version
            print(f"round: not published: {result.refused}")
        while result.version is not None and manager.current_version != result.version:
            if result.version in manager.bad_versions:
                refused = True  # canary failed: the device rolled back, as it should
                print(f"round: the device refused v{result.version} (canary) and rolled back")
                break
            if watcher.done():
                watcher.result()  # raises what stopped it
            if time.perf_counter() - t_published > 300:
                raise TimeoutError("the device did not install the new version within 300 s")
            await asyncio.sleep(0.05)
        t_swapped = time.perf_counter()
        print(f"round: device runs v{manager.current_version} "
              f"({t_swapped - t_published:.2f} s after publishing)")  # fmt: skip
        after = await measure(evaluator, domain)
        unscoped = None
        if result.scope is not None and not refused and swaps:
            # The same adapter on every request (device.adapters.scope = false): what the
            # scope spares the general answers, and what it costs the domain.
            evaluator.set_adapter_scope(None)
            unscoped = await measure(evaluator, domain, system=False)
            evaluator.set_adapter_routing(swaps[-1], encoder=scope_encoder)
        forced = None
        if refused or result.version is None:
            # What the refused adapter would have done (diagnostic; the device runs the base).
            backend.set_adapter(result.gguf)
            forced = await measure(evaluator, domain, system=False)
            backend.set_adapter(None)
        manifest = (
            registry.manifest(name, result.version).unverified()
            if result.version is not None
            else None
        )
    finally:
        await manager.stop()
        await sync.close()
        await evaluator.aclose()
        await engine.aclose()
        await server.stop(0)
        cloud_backend.close()
        backend.close()

    # The field is new: read it so that a manifest without it still reports.
    calibration = getattr(manifest, "calibration", None)
    if calibration is None and result.calibration is not None:
        calibration = result.calibration.calibration  # fitted, though not published
    applied = getattr(swaps[-1], "calibration", None) if swaps else None
    summary = summarize(before, after, round_s=t_swapped - t_round)
    summary.update({
        "device_refused_by_canary": refused,
        "round_refused": result.refused,
        "round_measured": result.calibration.measured if result.calibration else None,
        "scope": result.scope is not None,
        "calibration": calibration is not None,
        "calibration_applied": applied is not None and not refused,
        "unscoped_domain_local_accuracy": unscoped["domain"]["local"]["accuracy"] if unscoped else None,
        "unscoped_general_local_accuracy": unscoped["general"]["local"]["accuracy"] if unscoped else None,
        "ship_and_swap_s": t_swapped - t_published,
        "stage_s": result.stage_seconds,
    })  # fmt: skip
    report = result.report
    out = {
        "domain": name,
        "summary": summary,
        "targets": targets(summary),
        "calibration": calibration.model_dump(mode="json") if calibration is not None else None,
        "collect": collected,
        "train": {
            "records": result.records,
            "examples": report.examples,
            "train": report.train,
            "holdout": report.holdout,
            "passages": report.passages,
            "epochs": report.epochs,
            "steps": report.steps,
            "seconds": report.seconds,
            "losses": report.losses,
            "metrics": report.metrics(),
        },
        "version": result.version,
        "before": before,
        "after": after,
        "refused_adapter_forced": forced,
        "after_unscoped": unscoped,
        "canary": [c["expect"] for c in report.canary],
        "inputs": {
            "files": domain.sources,
            "asked": domain.asked,
            "facts": len(domain.facts),
            "sent": len(domain.sent),
            "heldout": len(domain.heldout),
            "general": len(domain.general),
            "traffic": len(domain.traffic),
        },
        "settings": {
            "epochs": settings.cloud.train.epochs,
            "passages": args.passages,
            "threshold": args.threshold,
            "replay_rate": args.replay_rate,
            "router": ROUTER,
            "threads": args.threads,
            "train": settings.cloud.train.model_dump(mode="json"),
        },
        "setup_s": setup_s,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
        },
    }
    print_table(out)
    plot(out, args.out.with_suffix(".png"))
    return out


def summarize(before: dict[str, Any], after: dict[str, Any], *, round_s: float) -> dict[str, Any]:
    """[before, after] of each figure, the escalation cut and the round's time."""
    summary: dict[str, Any] = {}
    for name, part, key, _ in RATES:
        summary[name] = [before[part]["system"][key], after[part]["system"][key]]
    summary["general_escalation_rate"] = [
        before["general"]["system"]["escalation_rate"],
        after["general"]["system"]["escalation_rate"],
    ]
    for part in ("domain", "general"):
        summary[f"{part}_local_accuracy"] = [before[part]["local"]["accuracy"],
                                             after[part]["local"]["accuracy"]]  # fmt: skip
    e0, e1 = summary["domain_escalation_rate"]
    summary["domain_escalation_cut"] = 1 - e1 / e0 if e0 else None
    summary["round_s"] = round_s
    return summary


def targets(summary: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets, after one round."""
    cut = summary["domain_escalation_cut"]
    domain, general = summary["domain_system_accuracy"], summary["general_system_accuracy"]
    return {
        "local_right_ge_85pct": summary["domain_local_right_rate"][1] >= 0.85,
        "wrong_unescalated_le_5pct": summary["domain_wrong_unescalated_rate"][1] <= 0.05,
        "escalation_cut_ge_60pct": cut is not None and cut >= 0.60,
        "system_domain_not_lower": domain[1] >= domain[0],
        "system_general_not_lower": general[1] >= general[0],
        "round_le_15min": summary["round_s"] <= 900,
    }


def print_table(out: dict[str, Any]) -> None:
    s = out["summary"]
    print(f"\n{out['domain']}: held-out phrasings, then the general set")
    print(f"{'':36}{'before':>10}{'after':>10}")
    rows = [(name, label) for name, _, _, label in RATES]
    rows += [("general_escalation_rate", "general: escalation rate"),
             ("domain_local_accuracy", "device alone: domain accuracy"),
             ("general_local_accuracy", "device alone: general accuracy")]  # fmt: skip
    for key, label in rows:
        b, a = s[key]
        print(f"{label:36}{b:>10.1%}{a:>10.1%}")
    cut = s["domain_escalation_cut"]
    print(f"escalation cut {'-' if cut is None else f'{cut:.1%}'}; round {s['round_s']:.0f} s "
          f"(ship+swap {s['ship_and_swap_s']:.2f} s); stages "
          + ", ".join(f"{k} {v:.0f}s" for k, v in s["stage_s"].items()))  # fmt: skip
    cal = out["calibration"]
    print("calibration: " + ("none in the manifest" if cal is None else
          f"window {cal['window']}, min mean logprob {cal['min_mean_logprob']:.3f}, "
          f"fitted on {cal['examples']} examples" + ("" if s["calibration_applied"]
                                                      else " (not applied)")))  # fmt: skip
    print("targets:", ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in out["targets"].items()))


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = out["summary"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), width_ratios=[1.6, 1])
    labels = [textwrap.fill(label, 16) for *_, label in RATES]
    xs = range(len(RATES))
    for i, (when, shift) in enumerate((("before", -0.2), ("after one round", 0.2))):
        bars = ax.bar([x + shift for x in xs], [100 * s[name][i] for name, *_ in RATES], 0.4,
                      label=when)  # fmt: skip
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("% of questions")
    ax.set_ylim(0, 130)
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    ax.set_title(f"{out['domain']}: device + cloud, held-out phrasings "
                 f"({out['inputs']['heldout']}) and general set ({out['inputs']['general']})",
                 fontsize=9)  # fmt: skip
    losses = out["train"]["losses"]
    ax2.plot(range(1, len(losses) + 1), losses, marker="o")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("training loss (answer tokens)")
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in s["stage_s"].items())
    ax2.set_title(f"round {s['round_s']:.0f} s:\n" + textwrap.fill(stages, 48), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--domain", choices=DOMAINS, default=None,
                    help="a domain of bench/data: fills --knowledge and --facts (default: fleet)")  # fmt: skip
    ap.add_argument("--knowledge", type=Path, default=None,
                    help="the cloud's knowledge base directory (.md, .txt)")  # fmt: skip
    ap.add_argument("--facts", type=Path, default=None,
                    help='JSON list or JSON lines of {"phrasings": [...], "answers": [...]}')  # fmt: skip
    ap.add_argument("--asked", type=int, default=3,
                    help="phrasings of each fact the device sends; the rest are held out")  # fmt: skip
    ap.add_argument(
        "--facts-limit", type=int, default=24, help="first N facts (default 24; 0: all)"
    )
    ap.add_argument("--general", type=Path, default=None,
                    help='JSON lines of {"question", "answers"} (rows of another "domain" are '
                         "skipped; default: bench/data/router_eval.jsonl)")  # fmt: skip
    ap.add_argument(
        "--general-limit", type=int, default=0, help="first N general questions (0: all)"
    )
    ap.add_argument("--traffic", type=Path, default=None,
                    help="everyday questions the device serves during collection, one a line "
                         "(default: bench/data/general_traffic.txt)")  # fmt: skip
    ap.add_argument(
        "--traffic-limit", type=int, default=0, help="first N everyday questions (0: all)"
    )
    ap.add_argument("--name", default=None,
                    help="names the results and the adapter (default: the domain, or the facts "
                         "file's stem less _facts)")  # fmt: skip
    ap.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: cloud.train.epochs)"
    )
    ap.add_argument("--passages", action=argparse.BooleanOptionalAction, default=False,
                    help="also train on the retrieved passages")  # fmt: skip
    ap.add_argument("--threshold", type=float, default=-1.0,
                    help="device.router.min_mean_logprob: escalate when a window's mean logprob "
                         "falls below this (requests the adapter answers use its calibration)")  # fmt: skip
    ap.add_argument(
        "--replay-rate",
        type=float,
        default=1.0,
        help="device.log.replay_rate: confident local answers logged for replay",
    )
    ap.add_argument("--canary-min-pass", type=float, default=0.8,
                    help="device.adapters.canary_min_pass")  # fmt: skip
    ap.add_argument("--records", type=Path, default=None,
                    help="train on the records.sqlite3 of an earlier run instead of collecting "
                         "(faster when only training changes)")  # fmt: skip
    ap.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                    help="a cloud.train setting for the round (repeatable), e.g. rank=32")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (and .png beside it); default: "
                         "bench/results/learning_loop-<name>.json")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        args.domain_data = resolve(
            domain=args.domain, knowledge=args.knowledge, facts=args.facts, general=args.general,
            traffic=args.traffic, asked=args.asked, facts_limit=args.facts_limit,
            general_limit=args.general_limit, traffic_limit=args.traffic_limit, name=args.name,
        )  # fmt: skip
    except InputError as exc:
        ap.error(str(exc))
    if args.records is not None and not args.records.is_file():
        ap.error(f"--records: file not found: {args.records}")
    if args.out is None:
        args.out = RESULTS / f"learning_loop-{args.domain_data.name}.json"
    return args


def main() -> None:
    args = parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args, args.domain_data))
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
