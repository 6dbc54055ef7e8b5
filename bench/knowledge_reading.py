"""How the cloud puts knowledge into a prompt: passage size, passages per prompt, format.

A small cloud model given the right passage still answers from its own priors when
the passage is a paragraph of one machine's figures or the prompt is the device's
few-shot lines with the passages in front. This asks the held-out phrasings of each
shipped domain (``bench/data/<domain>_facts.json``: the phrasings after the first
three, in words the manuals do not use) of the embedded Gemma 3 270M base with the
passages the knowledge base retrieves under each configuration:

- ``paragraph``: passages of up to 160 characters (a few sentences), the best two,
  ``Context: {context}\\n\\n{prompt}`` (the defaults before this comparison);
- ``sentence``: one sentence per passage (``chunk_chars`` 60), the best one, the
  same format;
- ``default``: one sentence, the best one, the reading format
  (``cloud.model.prompt_format``'s default: three invented examples of answering from
  a context, then the request's last question after its passage).

The model runs in llama.cpp (the device's Q4_K_M GGUF, greedy, stop at a newline):
the comparison is between prompts, and llama.cpp asks 48 questions in seconds where
the torch cloud on these 2 cores takes minutes. An answer is right as in
``knowledge_eval.py``; a retrieval hit is a passage holding one of the answers.

    python bench/knowledge_reading.py [--domain fleet --domain greenhouse]

Prints a table; writes bench/results/knowledge_reading.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _domain import DATA, DOMAINS, load_facts
from _results import RESULTS
from knowledge_eval import few_shot_prompt, is_right

from edgecloud.cloud._settings import READING_FORMAT, CloudKnowledgeConfig

PLAIN = "Context: {context}\n\n{prompt}"
CONFIGS = {
    "paragraph": (160, 2, PLAIN),
    "sentence": (CloudKnowledgeConfig().chunk_chars, 1, PLAIN),
    "default": (CloudKnowledgeConfig().chunk_chars, CloudKnowledgeConfig().top_k, READING_FORMAT),
}
"""name -> (chunk_chars, top_k, prompt_format)."""


def run(domain: str, llm: Any, encoder: Any, asked: int) -> dict[str, Any]:
    from edgecloud.cloud._knowledge import KnowledgeBase
    from edgecloud.cloud._prompting import apply_format

    facts = load_facts(DATA / f"{domain}_facts.json", asked=asked)
    items = [(p, f.answers) for f in facts for p in f.phrasings[asked:]]
    out: dict[str, Any] = {"questions": len(items)}
    for name, (chars, k, fmt) in CONFIGS.items():
        with tempfile.TemporaryDirectory() as idx:
            kb = KnowledgeBase(DATA / f"{domain}_manual", encoder, index_dir=idx, max_chars=chars)
            right = hits = 0
            for question, answers in items:
                passages = kb.search(question, k=k, min_score=0.3)
                hits += any(is_right(p.text, answers) for p in passages)
                prompt = apply_format(fmt, few_shot_prompt(question), passages)
                reply = llm(prompt, max_tokens=16, temperature=0.0, stop=["\n"])
                right += is_right(reply["choices"][0]["text"].strip(), answers)
        out[name] = {"right": right, "retrieval_hits": hits, "chunk_chars": chars, "top_k": k,
                     "prompt_format": fmt}  # fmt: skip
        print(f"{domain:<11} {name:<10} right {right:>3}/{len(items)}  "
              f"retrieval hits {hits}/{len(items)}", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--domain", action="append", choices=DOMAINS, default=None)
    ap.add_argument("--asked", type=int, default=3, help="phrasings a device sends (not asked)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from llama_cpp import Llama

    from edgecloud.common.encoder import SentenceEncoder
    from edgecloud.common.models import default_model_path
    from edgecloud.common.settings import default_cache_dir

    started = time.perf_counter()
    llm = Llama(str(default_model_path(default_cache_dir())), n_ctx=1024, n_threads=args.threads,
                verbose=False, seed=0)  # fmt: skip
    encoder = SentenceEncoder()
    results = {d: run(d, llm, encoder, args.asked) for d in args.domain or DOMAINS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "knowledge_reading.json"
    out.write_text(json.dumps({
        "domains": results,
        "model": "gemma3-270m Q4_K_M in llama.cpp, greedy",
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "loadavg": list(os.getloadavg())},
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
