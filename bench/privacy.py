"""Privacy detectors: false alarms on ordinary prompts, catches, and added routing latency.

The privacy policy keeps a prompt on the device when it finds personal data or a
secret in it. Every false alarm costs an escalation the device could have had, so
this measures, on the project's ordinary question sets (``router_eval.jsonl``,
``general_traffic.txt`` and every phrasing of the fleet and greenhouse facts), how
many prompts each configuration flags, and on ``privacy_samples.jsonl`` (API keys,
cloud credentials, passwords, IP addresses, dates of birth, street addresses) how
many it catches. Latency is the time the policy adds to routing one prompt over
the built-in patterns alone (``PrivacyPolicy.matches``), per ordinary prompt and
per long (4 KB) prompt.

Configurations: ``patterns`` (built-in regular expressions only), ``maintained``
(plus detect-secrets and presidio, the default), ``fallback`` (plus the built-in
fallback patterns used when the ``privacy`` extra is missing).

    python bench/privacy.py [--repeat 20]

Writes bench/results/privacy.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"


def ordinary_prompts() -> dict[str, list[str]]:
    sets = {
        "router_eval": [
            json.loads(line)["question"]
            for line in (DATA / "router_eval.jsonl").read_text().splitlines()
            if line.strip()
        ],
        "general_traffic": [
            q.strip() for q in (DATA / "general_traffic.txt").read_text().splitlines() if q.strip()
        ],
    }
    for name in ("fleet", "greenhouse"):
        facts = json.loads((DATA / f"{name}_facts.json").read_text())
        sets[f"{name}_facts"] = [p for f in facts for p in f["phrasings"]]
    return sets


def build(config: str) -> Any:
    from edgecloud.router import PrivacyDetectors, PrivacyPolicy

    if config == "patterns":
        return PrivacyPolicy()
    if config == "maintained":
        return PrivacyPolicy(detectors=PrivacyDetectors(strict=True))
    # the libraries made unimportable: what a device without the extra runs
    saved = {m: sys.modules.get(m) for m in ("detect_secrets", "presidio_analyzer")}
    sys.modules.update(dict.fromkeys(saved))
    try:
        return PrivacyPolicy(detectors=PrivacyDetectors())
    finally:
        for m, mod in saved.items():
            if mod is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = mod


def timings_ms(fn: Callable[[str], object], prompts: list[str], repeat: int) -> list[float]:
    out = []
    for p in prompts:
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            fn(p)
            best = min(best, time.perf_counter() - t)
        out.append(best * 1e3)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20, help="runs per prompt; the fastest counts")
    args = ap.parse_args()

    sets = ordinary_prompts()
    ordinary = [p for ps in sets.values() for p in ps]
    samples = [json.loads(x) for x in (DATA / "privacy_samples.jsonl").read_text().splitlines()]
    filler = " ".join(ordinary)
    long_prompts = [(filler * 4)[i * 97 : i * 97 + 4096] for i in range(20)]

    results: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "ordinary_prompts": {k: len(v) for k, v in sets.items()},
        "sensitive_samples": len(samples),
        "configs": {},
    }
    base = build("patterns")
    base_short = timings_ms(base.matches, ordinary, args.repeat)
    base_long = timings_ms(base.matches, long_prompts, args.repeat)
    for config in ("patterns", "maintained", "fallback"):
        t = time.perf_counter()
        policy = build(config)
        build_s = time.perf_counter() - t
        flagged = {k: [p for p in ps if policy.matches(p)] for k, ps in sets.items()}
        caught = [s for s in samples if policy.matches(s["text"])]
        short = timings_ms(policy.matches, ordinary, args.repeat)
        long = timings_ms(policy.matches, long_prompts, args.repeat)
        added = [a - b for a, b in zip(short, base_short, strict=True)]
        added_long = [a - b for a, b in zip(long, base_long, strict=True)]
        n_flagged = sum(len(v) for v in flagged.values())
        results["configs"][config] = {
            "build_s": round(build_s, 3),
            "false_positive_rate": round(n_flagged / len(ordinary), 4),
            "false_positives": {k: v for k, v in flagged.items() if v},
            "recall": round(len(caught) / len(samples), 4),
            "missed": [s["text"] for s in samples if s not in caught],
            "route_ms": {"p50": round(pct(short, 0.5), 4), "p99": round(pct(short, 0.99), 4)},
            "added_ms": {"p50": round(pct(added, 0.5), 4), "p99": round(pct(added, 0.99), 4)},
            "added_ms_4kb": {
                "p50": round(pct(added_long, 0.5), 4),
                "p99": round(pct(added_long, 0.99), 4),
            },
            "mean_ms": round(statistics.fmean(short), 4),
        }
        r = results["configs"][config]
        print(
            f"{config:10s} FP {r['false_positive_rate']:.2%} ({n_flagged}/{len(ordinary)})  "
            f"recall {r['recall']:.0%}  added p50 {r['added_ms']['p50']:.3f} ms "
            f"p99 {r['added_ms']['p99']:.3f} ms  (4 KB: p50 {r['added_ms_4kb']['p50']:.3f} ms)  "
            f"build {build_s:.2f} s"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "privacy.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS / 'privacy.json'}")


if __name__ == "__main__":
    main()
