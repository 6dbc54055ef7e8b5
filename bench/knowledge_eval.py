"""Does the cloud's knowledge base make its answers right? Fleet questions, with and without.

Runs the real service in-process (grpc.aio on 127.0.0.1, port 0, the embedded
Gemma 3 270M base model, CPU) with ``bench/data/fleet_manual`` as its knowledge
base, and asks every fleet question of ``bench/data/router_eval.jsonl`` twice
over gRPC: once with knowledge, once with ``skip_knowledge`` (the strongest
alternative here: the same model and prompt without retrieval). Few-shot Q/A
prompt, greedy, stop at a newline.

An answer is right when one of the question's ``answers`` appears in its first
line (numbers compared as numbers, words case-insensitively on word boundaries).
Retrieval hit: one of the passages put into the prompt contains an answer.

    python bench/knowledge_eval.py [--limit N] [--top-k K]
    python bench/knowledge_eval.py --compare-formats --sample 46

Prints a table and writes ``bench/results/knowledge_eval.json``; ``--compare-formats``
asks a sample with each of a few prompt formats (knowledge only) and writes
``bench/results/knowledge_eval_formats.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _cloud import local_cloud
from _results import RESULTS as RESULTS_DIR

from edgecloud.cloud._settings import READING_FORMAT, CloudKnowledgeConfig

ROOT = Path(__file__).resolve().parents[1]
MANUAL = ROOT / "bench" / "data" / "fleet_manual"
EVAL = ROOT / "bench" / "data" / "router_eval.jsonl"
RESULTS = RESULTS_DIR / "knowledge_eval.json"

FEW_SHOT = (
    "Q: What is the capital of France?\nA: Paris\n"
    "Q: How many legs does a spider have?\nA: 8\n"
    "Q: What is the boiling point of water in degrees Celsius?\nA: 100\n"
)
FORMATS = [
    READING_FORMAT,
    "Context: {context}\n\n{prompt}",
    "{context}\n\n{prompt}",
    "Use the context to answer.\nContext: {context}\n\n{prompt}",
    "Q: What does the manual say?\nA: {context}\n{prompt}",
    "{head}Context: {context}\n{tail}",
]
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")


def few_shot_prompt(question: str) -> str:
    return f"{FEW_SHOT}Q: {question}\nA:"


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def is_right(answer: str, expected: list[str]) -> bool:
    """One of ``expected`` is in the first line of ``answer``."""
    line = answer.strip().split("\n", 1)[0]
    numbers = [_as_number(m.group()) for m in _NUMBER.finditer(line)]
    for want in expected:
        value = _as_number(want)
        if value is not None:
            if value in numbers:
                return True
        elif re.search(rf"\b{re.escape(want)}\b", line, re.IGNORECASE):
            return True
    return False


def passage_hit(passages: list[str], expected: list[str]) -> bool:
    return any(is_right(p.replace("\n", " "), expected) for p in passages)


async def ask(client: Any, question: str, *, skip: bool) -> tuple[str, list[str], list[str]]:
    from edgecloud.types import Finish

    text, passages, sources = "", [], []
    async for event in client.stream(
        few_shot_prompt(question), max_tokens=24, temperature=0.0, stop=["\n"],
        skip_knowledge=skip,
    ):  # fmt: skip
        if isinstance(event, Finish):
            passages = [p.text for p in event.passages]
            sources = [p.source for p in event.passages]
        else:
            text += event.text
    return text, passages, sources


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgecloud.transport import CloudClient

    rows = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]
    fleet = [r for r in rows if r["domain"] == "fleet"][: args.limit or None]
    if args.sample:
        fleet = fleet[:: max(1, len(fleet) // args.sample)][: args.sample]
    per_question = []
    started = time.perf_counter()
    cloud = local_cloud(knowledge=MANUAL, threads=args.threads, top_k=args.top_k,
                        min_score=args.min_score, prompt_format=args.prompt_format)  # fmt: skip
    async with (
        cloud as (server, backend, config),
        CloudClient(f"127.0.0.1:{server.port}", tls=False, timeout_s=600) as client,
    ):
        sem = asyncio.Semaphore(args.concurrency)

        async def one(row: dict[str, Any]) -> dict[str, Any]:
            async with sem:
                with_kb, passages, sources = await ask(client, row["question"], skip=False)
                without = ""
                if not args.no_baseline:
                    without, _, _ = await ask(client, row["question"], skip=True)
            return {
                "id": row["id"],
                "question": row["question"],
                "answers": row["answers"],
                "with_knowledge": with_kb.strip(),
                "without_knowledge": without.strip(),
                "right_with": is_right(with_kb, row["answers"]),
                "right_without": is_right(without, row["answers"]),
                "retrieval_hit": passage_hit(passages, row["answers"]),
                "sources": sources,
            }

        per_question = await asyncio.gather(*(one(r) for r in fleet))
    n = len(per_question)
    return {
        "questions": n,
        "accuracy_with_knowledge": sum(q["right_with"] for q in per_question) / n,
        "accuracy_without_knowledge": sum(q["right_without"] for q in per_question) / n,
        "retrieval_hit_rate": sum(q["retrieval_hit"] for q in per_question) / n,
        "right_given_hit": (
            sum(q["right_with"] for q in per_question if q["retrieval_hit"])
            / max(1, sum(q["retrieval_hit"] for q in per_question))
        ),
        "settings": {
            "top_k": args.top_k,
            "min_score": args.min_score,
            "prompt_format": config.model.prompt_format,
            "few_shot": FEW_SHOT,
            "max_tokens": 24,
            "stop": ["\n"],
            "temperature": 0.0,
        },
        "model": backend.info.model,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "wall_s": round(time.perf_counter() - started, 1),
        "per_question": per_question,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--limit", type=int, default=0, help="First N fleet questions (0: all).")
    parser.add_argument("--top-k", type=int, default=CloudKnowledgeConfig().top_k)
    parser.add_argument("--min-score", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--sample", type=int, default=0, help="N evenly spaced questions.")
    parser.add_argument("--prompt-format", default=FORMATS[0], help="cloud.model.prompt_format")
    parser.add_argument("--no-baseline", action="store_true", help="Skip the no-knowledge run.")
    parser.add_argument("--compare-formats", action="store_true", help="Each of FORMATS.")
    args = parser.parse_args()
    if args.compare_formats:
        compare_formats(args)
        return
    result = asyncio.run(run(args))
    n = result["questions"]
    print(f"{'fleet questions':<28}{n:>8}")
    for key in ("accuracy_without_knowledge", "accuracy_with_knowledge", "retrieval_hit_rate",
                "right_given_hit"):  # fmt: skip
        print(f"{key:<28}{result[key]:>8.3f}  ({round(result[key] * n)}/{n})")
    base = result["accuracy_without_knowledge"]
    ratio = result["accuracy_with_knowledge"] / base if base else float("inf")
    print(f"{'with / without':<28}{ratio:>8.2f}x   wall {result['wall_s']}s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}", file=sys.stderr)


def compare_formats(args: argparse.Namespace) -> None:
    args.no_baseline = True
    rows = []
    for template in FORMATS:
        args.prompt_format = template
        result = asyncio.run(run(args))
        rows.append({"prompt_format": template, "questions": result["questions"],
                     "accuracy_with_knowledge": result["accuracy_with_knowledge"],
                     "retrieval_hit_rate": result["retrieval_hit_rate"]})  # fmt: skip
        print(f"{result['accuracy_with_knowledge']:>6.3f}  {template!r}", flush=True)
    out = RESULTS.with_name("knowledge_eval_formats.json")
    out.write_text(json.dumps({"top_k": args.top_k, "formats": rows}, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
