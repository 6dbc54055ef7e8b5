"""The learning loop end to end: escalations → LoRA → signed GGUF → hot-swap → fewer escalations.

On the embedded default models, all in this process and over gRPC on 127.0.0.1:

1. A cloud service (torch, the Gemma 3 270M base dequantized) with the fleet
   manual (``bench/data/fleet_manual``, made by ``bench/data/make_fleet.py``) as
   its knowledge base, an adapter registry and a fresh Ed25519 signing key.
2. A device (llama.cpp, the same base as Q4_K_M GGUF) with the hybrid engine:
   the confidence-window router (window 4, from the first token, 4 tokens held
   back so a hand-off lets the cloud answer from scratch) and an escalation log.
3. **Before**: on held-out questions of the domain (the fourth phrasing of each
   fact, which no device ever sends) and on a general set, the device answers
   locally (greedy, one line) and we note whether the router would escalate
   (the monitor's own rule, :func:`edgecloud.router.window_extremes`, over the
   same tokens).
4. **Collect**: the device asks the first three phrasings of each fact through
   the hybrid engine; what it escalates is answered by the cloud (with
   retrieval), logged, and uploaded to the cloud's record store. It also
   serves its everyday traffic (``bench/data/general_traffic.txt``, disjoint
   from the general evaluation set): confident local answers are logged as
   replay records (``device.log.replay_rate``), so the round keeps them.
5. **Round** (timed): ``run_round`` reads the records, trains a LoRA (peft) on
   the device's base, exports the llama.cpp GGUF, signs and publishes it with
   100% rollout; the device's ``AdapterManager``, watching the cloud over
   ``WatchAdapters``, fetches, verifies, installs, hot-swaps and runs its canary.
6. **After**: step 3 again with the adapter on.

    python bench/learning_loop.py [--facts 24] [--epochs N] [--passages]

Prints a table; writes bench/results/learning_loop.json and learning_loop.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from knowledge_eval import few_shot_prompt, is_right

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
MANUAL = DATA / "fleet_manual"
RESULTS = ROOT / "bench" / "results"

ROUTER = {
    "window": 4,
    "min_tokens": 1,
    "holdback_tokens": 4,
}


def load_sets(n_facts: int, n_general: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    facts = json.loads((DATA / "fleet_facts.json").read_text())[:n_facts]
    rows = [json.loads(line) for line in (DATA / "router_eval.jsonl").read_text().splitlines()]
    general = [r for r in rows if r["domain"] == "general"][:n_general]
    return facts, general


async def local_pass(
    engine: Any, items: list[tuple[str, list[str]]], threshold: float
) -> dict[str, Any]:
    """Answer each (question, answers) on the device alone; note right/wrong and whether
    the router would have escalated it (the monitor's rule over the same tokens)."""
    from edgecloud.device._hybrid import CancelScope
    from edgecloud.router import window_extremes
    from edgecloud.types import Chunk, Finish, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=24, stop=("\n",))
    rows = []
    for question, answers in items:
        text, lps, ents, scope = "", [], [], None
        async for ev in engine.stream(
            few_shot_prompt(question), params, route="local", cancel=CancelScope()
        ):
            if isinstance(ev, Chunk):
                text += ev.text
                lps.append(ev.logprob)
                ents.append(ev.entropy)
            elif isinstance(ev, Finish) and ev.route is not None:
                scope = ev.route.signals.get("adapter_in_scope")
        lo, _ = window_extremes(lps, ents, ROUTER["window"], ROUTER["min_tokens"])
        rows.append({"question": question, "answer": text.strip(), "right": is_right(text, answers),
                     "escalate": lo < threshold, "min_window_logprob": lo,
                     "adapter_scope": scope})  # fmt: skip
    n = max(len(rows), 1)
    scoped = [r for r in rows if r["adapter_scope"] is not None]
    return {
        "accuracy": sum(r["right"] for r in rows) / n,
        "escalation_rate": sum(r["escalate"] for r in rows) / n,
        "adapter_rate": (
            sum(bool(r["adapter_scope"]) for r in scoped) / len(scoped) if scoped else None
        ),
        "rows": rows,
    }


async def collect(engine: Any, questions: list[str]) -> dict[str, Any]:
    """Ask through the hybrid engine (auto routing); escalations are logged, then uploaded."""
    from edgecloud.device._hybrid import CancelScope
    from edgecloud.types import Finish, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=24, stop=("\n",))
    escalated = 0
    for q in questions:
        async for ev in engine.stream(few_shot_prompt(q), params, cancel=CancelScope()):
            if isinstance(ev, Finish) and ev.route is not None and ev.route.escalated:
                escalated += 1
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


async def run(args: argparse.Namespace) -> dict[str, Any]:
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

    facts, general = load_sets(args.facts, args.general)
    heldout = [(f["phrasings"][3], f["answers"]) for f in facts]
    general_items = [(g["question"], g["answers"]) for g in general]
    asked = [p for f in facts for p in f["phrasings"][:3]]
    traffic = (DATA / "general_traffic.txt").read_text().split("\n")
    traffic = [q for q in traffic if q.strip()][: args.traffic]
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
            "knowledge": {"directory": str(MANUAL), "index_dir": str(tmp / "idx")},
            "records": {"path": str(tmp / "records.sqlite3")},
            "registry": {"url": str(tmp / "registry"), "signing_key": str(key_path)},
            "train": {**({"epochs": args.epochs} if args.epochs else {}),
                      "include_passages": args.passages,
                      "threads": args.threads, "adapter_id": "fleet",
                      **dict(_setting(kv) for kv in args.train)},
        },
    )  # fmt: skip
    t_setup = time.perf_counter()
    kb = KnowledgeBase(MANUAL, SentenceEncoder(), index_dir=tmp / "idx")
    cloud_backend = TorchBackend.load(settings)
    registry = AdapterRegistry(str(tmp / "registry"))
    server = await CloudServer.start(
        cloud_backend, settings.cloud, knowledge=kb,
        records=RecordStore(tmp / "records.sqlite3"), registry=registry,
    )  # fmt: skip
    target = f"127.0.0.1:{server.port}"
    device = Settings.load(
        cache_dir=base.cache_dir,
        device={
            "model": {"n_threads": args.threads},
            # One CPU cloud shared with the device on 2 cores: a slow first token is load,
            # not an outage, so neither the timeout nor the breaker may drop the cloud here.
            "cloud": {"endpoints": [{"target": target, "tls": False}], "timeout_s": 600,
                      "first_token_timeout_s": 300, "breaker_failures": 100},
            "router": {**ROUTER, "min_mean_logprob": args.threshold},
            "log": {"path": str(tmp / "device-log.sqlite3"), "replay_rate": args.replay_rate},
            "adapters": {"enabled": True, "adapter_id": "fleet", "device_id": "bench-device",
                         "public_keys": [public], "directory": str(tmp / "adapters"),
                         "reconnect_s": 1.0, "canary_min_pass": args.canary_min_pass},
        },
    )  # fmt: skip
    gguf = ensure_default_model(base.cache_dir)
    backend = LlamaCppBackend(gguf, n_threads=args.threads)
    engine = build_engine(backend, device)
    _, _, base_sha, arch = base_model(settings)
    sync = AdapterSyncClient(target, tls=False)
    manager = AdapterManager(
        backend, device.device.adapters, base_sha256=base_sha, base_architecture=arch,
        root=tmp / "adapters", client=sync, on_scope=engine.set_adapter_scope,
    )  # fmt: skip
    manager.start()
    setup_s = time.perf_counter() - t_setup
    try:
        print(f"before: {len(heldout)} held-out domain questions, {len(general_items)} general")
        before = {"domain": await local_pass(engine, heldout, args.threshold),
                  "general": await local_pass(engine, general_items, args.threshold)}  # fmt: skip
        print(f"collect: the device asks {len(asked)} domain questions (3 phrasings x "
              f"{len(facts)} facts) and {len(traffic)} everyday ones")  # fmt: skip
        t0 = time.time()
        if args.records is not None:
            t0 = 0.0  # every record of the earlier run
            collected = {"reused": str(args.records)}
        else:
            collected = await collect(engine, asked)
            collected["traffic"] = await collect(engine, traffic)
        if args.records is None and not collected["uploaded"]:
            raise RuntimeError("no escalation reached the cloud's record store (see the log)")
        if args.records is None:
            print(f"  domain: escalated {collected['escalated']}, uploaded "
                  f"{collected['uploaded']}; everyday: escalated "
                  f"{collected['traffic']['escalated']}, uploaded "
                  f"{collected['traffic']['uploaded']} (escalations + replay records)")  # fmt: skip
        watcher = manager.start_watching()
        t_round = time.perf_counter()
        result = await asyncio.to_thread(
            run_round, settings, tmp / "round", since=t0 - 1, publish=True,
            progress=progress_printer(t_round), on_stage=lambda s: print(f"round: {s}", flush=True),
        )  # fmt: skip
        t_published = time.perf_counter()
        refused = False
        while manager.current_version != result.version:
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
        after = {"domain": await local_pass(engine, heldout, args.threshold),
                 "general": await local_pass(engine, general_items, args.threshold)}  # fmt: skip
        unscoped = None
        if result.scope is not None and not refused:
            # The same adapter on every request (device.adapters.scope = false): what the
            # scope spares the general answers, and what it costs the domain.
            engine.set_adapter_scope(None)
            unscoped = {"domain": await local_pass(engine, heldout, args.threshold),
                        "general": await local_pass(engine, general_items, args.threshold)}  # fmt: skip
            engine.set_adapter_scope(result.scope)
        forced = None
        if refused:
            # What the refused adapter would have done (diagnostic; the device runs the base).
            backend.set_adapter(result.gguf)
            forced = {"domain": await local_pass(engine, heldout, args.threshold),
                      "general": await local_pass(engine, general_items, args.threshold)}  # fmt: skip
            backend.set_adapter(None)
    finally:
        await manager.stop()
        await sync.close()
        await server.stop(0)
        cloud_backend.close()
        backend.close()

    d0, d1 = before["domain"], after["domain"]
    cut = 1 - d1["escalation_rate"] / d0["escalation_rate"] if d0["escalation_rate"] else None
    summary = {
        "domain_local_accuracy": [d0["accuracy"], d1["accuracy"]],
        "domain_escalation_rate": [d0["escalation_rate"], d1["escalation_rate"]],
        "domain_escalation_cut": cut,
        "general_local_accuracy": [before["general"]["accuracy"], after["general"]["accuracy"]],
        "general_points_lost": 100 * (before["general"]["accuracy"] - after["general"]["accuracy"]),
        "device_refused_by_canary": refused,
        "scope": result.scope is not None,
        "unscoped_domain_local_accuracy": unscoped["domain"]["accuracy"] if unscoped else None,
        "unscoped_general_local_accuracy": unscoped["general"]["accuracy"] if unscoped else None,
        "round_s": t_swapped - t_round,
        "ship_and_swap_s": t_swapped - t_published,
        "stage_s": result.stage_seconds,
    }
    targets = {
        "escalation_cut_ge_70pct": cut is not None and cut >= 0.70,
        "domain_accuracy_ge_85pct": d1["accuracy"] >= 0.85,
        "general_loss_le_1pt": summary["general_points_lost"] <= 1.0,
        "round_le_15min": summary["round_s"] <= 900,
    }
    report = result.report
    out = {
        "summary": summary,
        "targets": targets,
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
        "settings": {
            "facts": args.facts,
            "general": args.general,
            "epochs": settings.cloud.train.epochs,
            "passages": args.passages,
            "threshold": args.threshold,
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


def print_table(out: dict[str, Any]) -> None:
    s = out["summary"]
    print(f"\n{'':34}{'before':>10}{'after':>10}")
    for label, key in (("domain local accuracy (held-out)", "domain_local_accuracy"),
                       ("domain escalation rate", "domain_escalation_rate"),
                       ("general local accuracy", "general_local_accuracy")):  # fmt: skip
        b, a = s[key]
        print(f"{label:34}{b:>10.1%}{a:>10.1%}")
    cut = s["domain_escalation_cut"]
    print(f"escalation cut {cut if cut is None else f'{cut:.1%}'}; general points lost "
          f"{s['general_points_lost']:.1f}; round {s['round_s']:.0f} s "
          f"(ship+swap {s['ship_and_swap_s']:.2f} s); stages "
          + ", ".join(f"{k} {v:.0f}s" for k, v in s["stage_s"].items()))  # fmt: skip
    print("targets:", out["targets"])


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = out["summary"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["domain accuracy\n(held-out phrasings)", "domain\nescalation rate",
              "general accuracy"]  # fmt: skip
    keys = ["domain_local_accuracy", "domain_escalation_rate", "general_local_accuracy"]
    xs = range(len(keys))
    unscoped = out.get("after_unscoped")
    width = 0.27 if unscoped else 0.4
    ax.bar([x - width / 2 * (2 if unscoped else 1) for x in xs], [100 * s[k][0] for k in keys],
           width, label="before")  # fmt: skip
    ax.bar([x if unscoped else x + 0.2 for x in xs], [100 * s[k][1] for k in keys], width,
           label="after one round (adapter in its scope)" if unscoped else "after one round")  # fmt: skip
    if unscoped:
        values = [100 * unscoped["domain"]["accuracy"], 100 * unscoped["domain"]["escalation_rate"],
                  100 * unscoped["general"]["accuracy"]]  # fmt: skip
        ax.bar([x + width for x in xs], values, width, label="after, adapter on every request")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("%")
    ax.axhline(85, color="grey", lw=0.8, ls=":")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_ylim(0, 125)
    ax.set_title("Device, local only (llama.cpp + LoRA GGUF)")
    losses = out["train"]["losses"]
    ax2.plot(range(1, len(losses) + 1), losses, marker="o")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("training loss (answer tokens)")
    ax2.set_title(f"round {s['round_s']:.0f} s:\n" + ", ".join(
        f"{k} {v:.0f}s" for k, v in s["stage_s"].items()), fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--facts", type=int, default=24, help="facts of the domain (of 46)")
    ap.add_argument("--general", type=int, default=80, help="general questions (forgetting)")
    ap.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: cloud.train.epochs)"
    )
    ap.add_argument("--passages", action=argparse.BooleanOptionalAction, default=False,
                    help="also train on the retrieved passages")  # fmt: skip
    ap.add_argument("--threshold", type=float, default=-1.0,
                    help="router: escalate when a window's mean logprob falls below this")  # fmt: skip
    ap.add_argument(
        "--traffic",
        type=int,
        default=72,
        help="everyday questions sent during collection (bench/data/general_traffic.txt)",
    )
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
    ap.add_argument("--out", type=Path, default=RESULTS / "learning_loop.json")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
