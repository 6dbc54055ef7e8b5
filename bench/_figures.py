"""What each benchmark's JSON says: the one table of figure extractors ``report.py`` reads.

Every results file of ``bench/results`` gets a tuple of :class:`Figure` here, nowhere
else: where its measured value, the alternative run beside it in the same bench (the
strongest baseline: raw llama-cpp-python, the direct upstream, the cloud alone...) and
the ratio between them sit in the JSON, and the target the project's issues set for it.
A value is a dotted path into the JSON (``"modes.http.decode_tok_s"``, list items by
index) or, where the bench stores no single number, a small function of the JSON. A
path the JSON lacks (a quick run without 16 streams, an older result) reads as missing,
which the report shows as "not run", so a changed bench never breaks the report.

Ratios are always measured / alternative, so a target on a ratio reads the same way in
every row (a hot swap 20x faster than a reload is "<= 0.05x").
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Json = Mapping[str, Any]
Get = str | Callable[[Json], Any]


class Missing(LookupError):
    """A figure's value is not in this results file (the bench or this part did not run)."""


@dataclass(frozen=True)
class Count:
    """``n`` of ``d`` (identical answers, valid outputs): shown as "12/12", compared as n/d."""

    n: int
    d: int

    def __float__(self) -> float:
        return self.n / self.d if self.d else 0.0

    def __str__(self) -> str:
        return f"{self.n}/{self.d}"


def lookup(data: Json, get: Get) -> Any:
    """The value ``get`` names in ``data``; :class:`Missing` when it is not there."""
    try:
        if callable(get):
            value = get(data)
        else:
            value = data
            for part in get.split("."):
                value = value[int(part)] if isinstance(value, list) else value[part]
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise Missing(str(get)) from exc
    if value is None:
        raise Missing(str(get))
    return value


_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Target:
    """A target from the project's issues, on the figure's value or on its ratio."""

    op: str
    threshold: float
    on: str = "value"  # or "ratio"
    note: str = ""  # said after the threshold: "not lower", "a cut of ≥ 60 %"
    text: str = ""  # said instead of the threshold: "all"

    def __post_init__(self) -> None:
        if self.op not in _OPS or self.on not in ("value", "ratio"):
            raise ValueError(f"bad target: {self}")

    def met(self, value: float, ratio: float | None) -> bool | None:
        """Whether the target holds; None when its input (the ratio) was not measured."""
        x = ratio if self.on == "ratio" else value
        return None if x is None else _OPS[self.op](float(x), self.threshold)


@dataclass(frozen=True)
class Figure:
    """One row of the report: a measured figure, its alternative, ratio and targets."""

    label: str
    value: Get
    unit: str = ""
    scale: float = 1.0  # applied to value and alternative before display (s -> ms: 1000)
    alternative: Get | None = None
    alternative_label: str = ""
    ratio: Get | None = None  # the bench's own ratio; default value / alternative
    targets: tuple[Target, ...] = ()


@dataclass(frozen=True)
class Result:
    """A results file: which bench writes it, what to call it and its figures."""

    file: str
    bench: str
    title: str
    figures: tuple[Figure, ...]
    plots: tuple[str, ...] = ()  # besides <stem>.png


def at_least(threshold: float, on: str = "value", note: str = "", text: str = "") -> Target:
    return Target(">=", threshold, on, note, text)


def at_most(threshold: float, on: str = "value", note: str = "", text: str = "") -> Target:
    return Target("<=", threshold, on, note, text)


def count(text_or_n: str, d: str | None = None) -> Callable[[Json], Count]:
    """A :class:`Count` from a stored "n/d" string, or from two paths (n and d)."""

    def get(data: Json) -> Count:
        if d is None:
            n, _, of = str(lookup(data, text_or_n)).partition("/")
            return Count(int(n), int(of))
        return Count(int(lookup(data, text_or_n)), int(lookup(data, d)))

    return get


def const(value: float) -> Callable[[Json], float]:
    return lambda _data: value


def where(items: str, key: str, equals: Any, field: str) -> Callable[[Json], Any]:
    """``field`` of the item of list ``items`` whose ``key`` equals ``equals``."""
    return lambda data: next(i for i in lookup(data, items) if i[key] == equals)[field]


def diff(a: str, b: str) -> Callable[[Json], float]:
    return lambda data: float(lookup(data, a)) - float(lookup(data, b))


def _cloud_batching() -> tuple[Figure, ...]:
    at16 = "16 concurrent gRPC streams"
    return (
        Figure(f"aggregate decode, {at16}", where("levels", "streams", 16, "tokens_per_s"),
               "tok/s", alternative="baseline_sequential_generate.tokens_per_s",
               alternative_label="the 16 requests one at a time, transformers generate",
               ratio="figures.speedup_16_vs_sequential", targets=(at_least(5, "ratio"),)),
        Figure("time to first token p99, 16 streams", where("levels", "streams", 16, "ttft_p99_s"),
               "ms", 1000, where("levels", "streams", 1, "ttft_p99_s"), "one stream",
               ratio="figures.ttft_p99_16_over_1", targets=(at_most(3, "ratio"),)),
        Figure("one stream over gRPC", "grpc_overhead.grpc_tokens_per_s", "tok/s",
               alternative="grpc_overhead.in_process_tokens_per_s",
               alternative_label="the same backend in-process", ratio="grpc_overhead.ratio",
               targets=(at_least(0.9, "ratio"),)),
        Figure(f"our scheduler, {at16}", where("levels", "streams", 16, "tokens_per_s"), "tok/s",
               alternative="transformers_generate_batch.tokens_per_s",
               alternative_label="transformers' own generate_batch",
               ratio="figures.ours_16_over_generate_batch_16"),
        Figure("16 streams mixing two LoRA adapters", "lora.mixed_two_adapters.tokens_per_s",
               "tok/s", alternative="lora.base_only.tokens_per_s",
               alternative_label="all 16 on the base model", ratio="lora.mixed_over_base"),
    )  # fmt: skip


def _handoff() -> tuple[Figure, ...]:
    direct = "the same questions straight to the cloud"
    return (
        Figure("escalated answers right, the cloud verifying the hand-off",
               "verified.escalated_accuracy", "%",
               alternative="verified.same_questions_direct_accuracy", alternative_label=direct,
               ratio="verified.ratio", targets=(at_least(0.95, "ratio"),)),
        Figure("escalated answers right, the cloud continuing unchecked",
               "blind.escalated_accuracy", "%", alternative="blind.same_questions_direct_accuracy",
               alternative_label=direct, ratio="blind.ratio"),
        Figure("hand-off gap p50 (last local token to first cloud token)",
               "handoff_gap.gap_ms.p50", "ms", alternative="handoff_gap.own_ttft_ms.p50",
               alternative_label="the service's own time to first token, same request",
               ratio="handoff_gap.ratio_p50", targets=(at_most(1.2, "ratio"),)),
        Figure("speculative decoding: answers identical to the cloud's greedy",
               count("speculative.identical", "speculative.prompts"),
               targets=(at_least(1.0, text="all"),)),
        Figure("speculative decoding: cloud forward passes per token",
               "speculative.cloud_passes_per_token", alternative=const(1.0),
               alternative_label="the cloud alone"),
    )  # fmt: skip


def _learning_loop() -> tuple[Figure, ...]:
    before = "before the round"
    return (
        Figure("held-out phrasings answered locally and right, after one round",
               "summary.domain_local_right_rate.1", "%",
               alternative="summary.domain_local_right_rate.0", alternative_label=before,
               targets=(at_least(0.85),)),
        Figure("held-out phrasings wrong with no escalation, after",
               "summary.domain_wrong_unescalated_rate.1", "%",
               alternative="summary.domain_wrong_unescalated_rate.0", alternative_label=before,
               targets=(at_most(0.05),)),
        Figure("held-out phrasings escalated, after", "summary.domain_escalation_rate.1", "%",
               alternative="summary.domain_escalation_rate.0", alternative_label=before,
               targets=(at_most(0.40, "ratio", "a cut of ≥ 60 %"),)),
        Figure("device-plus-cloud accuracy on the domain, after",
               "summary.domain_system_accuracy.1", "%",
               alternative="summary.domain_system_accuracy.0", alternative_label=before,
               targets=(at_least(1.0, "ratio", "not lower"),)),
        Figure("device-plus-cloud accuracy on the general set, after",
               "summary.general_system_accuracy.1", "%",
               alternative="summary.general_system_accuracy.0", alternative_label=before,
               targets=(at_least(1.0, "ratio", "not lower"),)),
        Figure("the round (train, export, sign, publish, swap)", "summary.round_s", "s",
               targets=(at_most(900),)),
    )  # fmt: skip


def _split(links: Sequence[float] = (1, 10, 100)) -> tuple[Figure, ...]:
    per_link = tuple(
        Figure(f"chosen cut at {mbit:g} Mbit/s, 20 ms RTT", f"links.{i}.chosen_measured_ms", "ms",
               alternative=f"links.{i}.best_measured_ms",
               alternative_label="the fastest of every cut, measured",
               ratio=f"links.{i}.chosen_over_best", targets=(at_most(1.10, "ratio"),))
        for i, mbit in enumerate(links)
    )  # fmt: skip
    return (
        *per_link,
        Figure("chosen cut at 10 Mbit/s against no split", "links.1.chosen_measured_ms", "ms",
               alternative=lambda d: min(lookup(d, "links.1.all_local_ms"),
                                         lookup(d, "links.1.all_cloud_ms")),
               alternative_label="the better of all on the device and all in the cloud"),
        Figure("accuracy lost with int8 activations, worst cut", "accuracy.int8_max_loss_points",
               "points", targets=(at_most(0.5),)),
    )  # fmt: skip


def _split_graph() -> tuple[Figure, ...]:
    rows: list[Figure] = []
    for model in ("vgg_small", "encoder"):
        for i, mbit in enumerate((1, 10, 100)):
            link = f"models.{model}.links.{i}"
            rows.append(Figure(
                f"{model}: chosen cut at {mbit:g} Mbit/s", f"{link}.chosen_measured_ms", "ms",
                alternative=f"{link}.best_measured_ms",
                alternative_label="the best cut measured", ratio=f"{link}.chosen_over_best",
                targets=(at_most(1.10, "ratio"),)))  # fmt: skip
    for i, mbit in enumerate((1, 10, 100)):
        link = f"models.vgg_small.links.{i}"
        rows.append(Figure(
            f"vgg_small: best middle cut at {mbit:g} Mbit/s", f"{link}.best_middle_ms", "ms",
            alternative=lambda d, link=link: min(lookup(d, f"{link}.all_local_ms"),
                                                 lookup(d, f"{link}.all_cloud_ms")),
            alternative_label="the better of all-local and all-cloud",
            ratio=f"{link}.best_middle_over_best_fixed"))  # fmt: skip
        rows.append(Figure(
            f"vgg_small: pipelined frames at the best middle cut, {mbit:g} Mbit/s",
            f"{link}.pipeline_best_middle.pipelined_fps", "frames/s",
            alternative=f"{link}.pipeline_best_middle.one_at_a_time_fps",
            alternative_label="one frame at a time", ratio=f"{link}.pipeline_best_middle.speedup",
            targets=(at_least(1.5, "ratio", "where head and link are each ≥ 1/3 of a frame"),)))  # fmt: skip
    return tuple(rows)


def _adapter_swap() -> tuple[Figure, ...]:
    targets = (at_most(0.050), at_most(1 / 20, "ratio", "reload ≥ 20x slower"))
    return (
        Figure("hot swap to the first token p50", "swap_to_first_token_s.p50", "ms", 1000,
               "reload_to_first_token_s.p50", "reloading the model with the adapter",
               targets=targets),
        Figure("hot swap until ready p50 (set_adapter)", "swap_ready_s.p50", "ms", 1000,
               "reload_ready_s.p50", "reload until ready", targets=targets),
        Figure("fetch and verify the signed adapter over loopback p50",
               "fetch_and_verify_s.p50", "ms", 1000),
    )  # fmt: skip


RESULTS: tuple[Result, ...] = (
    Result("local_decode.json", "local_decode", "local decode", (
        Figure("decode with per-token confidence (SDK stream)", "sdk_tok_s", "tok/s",
               alternative="raw_tok_s", alternative_label="raw llama-cpp-python create_completion",
               ratio="ratio", targets=(at_least(0.95, "ratio"),)),
        Figure("llama-cpp-python's own logprobs path", "llama_cpp_logprobs_tok_s", "tok/s",
               alternative="raw_tok_s", alternative_label="raw llama-cpp-python",
               ratio="llama_cpp_logprobs_ratio_vs_raw"),
        Figure("peak RSS with the model", "sdk_rss_mb", "MB", alternative="raw_rss_mb",
               alternative_label="raw llama-cpp-python", targets=(at_most(500),)),
        Figure("Client.local() to the first token", "sdk_time_to_first_token_s", "s",
               alternative="raw_time_to_first_token_s", alternative_label="raw llama-cpp-python",
               targets=(at_most(1.5),)),
    )),
    Result("cloud_batching.json", "cloud_batching", "cloud batching", _cloud_batching()),
    Result("escalation.json", "escalation", "escalation overhead", (
        Figure("pre-generation escalation overhead p50", "pre_generation_overhead_ms.p50", "ms",
               alternative="cloud_own_ttft_ms.p50",
               alternative_label="the service's own time to first token",
               ratio=lambda d: 1 + lookup(d, "pre_generation_overhead_ms.p50")
               / lookup(d, "cloud_own_ttft_ms.p50"), targets=(at_most(5.0),)),
        Figure("mid-answer hand-off gap p50", "handoff_gap_ms.p50", "ms",
               alternative="continuation_own_ttft_ms.p50",
               alternative_label="the continuation request's own time to first token"),
    )),
    Result("handoff.json", "handoff", "hand-offs, fleet", _handoff()),
    Result("handoff-greenhouse.json", "handoff", "hand-offs, greenhouse", _handoff()),
    Result("handoff-bfloat16.json", "handoff", "hand-offs, fleet, bfloat16 cloud", _handoff()),
    Result("router_eval.json", "router_eval", "router evaluation", (
        Figure("escalations for 95 % of cloud accuracy, learned router",
               "signals.learned_router.escalation_rate_for_95pct_of_cloud", "%",
               alternative="signals.mean_logprob.escalation_rate_for_95pct_of_cloud",
               alternative_label="mean log-probability"),
        Figure("AUROC of a wrong local answer, learned router", "signals.learned_router.auroc",
               alternative="signals.mean_logprob.auroc",
               alternative_label="mean log-probability"),
    )),
    Result("knowledge_eval.json", "knowledge_eval", "knowledge base", (
        Figure("fleet questions right with the knowledge base", "accuracy_with_knowledge", "%",
               alternative="accuracy_without_knowledge",
               alternative_label="same model and prompt without retrieval"),
        Figure("retrieval hit rate", "retrieval_hit_rate", "%"),
    )),
    Result("knowledge_eval_formats.json", "knowledge_eval", "knowledge base, prompt formats", (
        Figure("best prompt format, sampled fleet questions",
               lambda d: max(f["accuracy_with_knowledge"] for f in d["formats"]), "%",
               alternative="formats.0.accuracy_with_knowledge",
               alternative_label="the default format"),
    )),
    Result("learning_loop-fleet.json", "learning_loop",
           "learning loop, fleet, escalations only (synthesize off)", _learning_loop()),
    Result("learning_loop-greenhouse.json", "learning_loop",
           "learning loop, greenhouse, escalations only (synthesize off)",
           _learning_loop()),
    *(Result(f"learning_loop-{d}-synth.json", "learning_loop",
             f"learning loop, {d}, with questions written from the knowledge base",
             _learning_loop()) for d in ("fleet", "greenhouse")),
    Result("device_http.json", "device_http", "OpenAI endpoint on the device", (
        Figure("decode through the endpoint (official openai client)", "modes.http.decode_tok_s",
               "tok/s", alternative="modes.sdk.decode_tok_s",
               alternative_label="the SDK in-process", ratio="decode_ratio",
               targets=(at_least(0.95, "ratio"),)),
        Figure("time to first token through the endpoint", "modes.http.ttft_ms", "ms",
               alternative="modes.sdk.ttft_ms", alternative_label="the SDK in-process"),
        Figure("identical greedy texts", count("identical_greedy_texts")),
    )),
    Result("discovery.json", "discovery", "LAN discovery", (
        Figure("cloud start to the first answer, discovered", "summary.first_answer_ms.p50",
               "ms", alternative="summary.static_first_answer_ms.p50",
               alternative_label="a configured endpoint", ratio="ratio_first_answer_vs_static"),
        Figure("announcement registered to the first answer",
               diff("summary.first_answer_ms.p50", "summary.registered_ms.p50"), "ms"),
    )),
    Result("adapter_swap.json", "adapter_swap", "adapter hot swap", _adapter_swap()),
    Result("split.json", "split", "split digits CNN", _split()),
    Result("split_int8_zstd.json", "split", "split digits CNN, int8 + zstd", _split()),
    Result("split_graph.json", "split", "split by min-cut over the graph", _split_graph(),
           plots=("split_vgg_small.png", "split_encoder.png")),
    Result("cascade.json", "cascade", "confidence cascade", (
        Figure("cascade accuracy", "test.cascade_accuracy", "%",
               alternative="test.cloud_only_accuracy",
               alternative_label="the cloud model on every input",
               ratio="test.cascade_over_cloud_accuracy", targets=(at_least(0.99, "ratio"),)),
        Figure("inputs sent to the cloud", "test.escalation_rate", "%", alternative=const(1.0),
               alternative_label="the cloud model on every input"),
        Figure("cascade accuracy against random escalation", "test.cascade_accuracy", "%",
               alternative="test.random_escalation_accuracy_same_rate",
               alternative_label="random escalation at the same rate"),
    )),
    Result("structured.json", "structured", "JSON-schema answers", (
        Figure("device: schema-constrained decode", "device.constrained_tok_s", "tok/s",
               alternative="device.free_tok_s", alternative_label="free answers",
               ratio="device.ratio", targets=(at_least(0.8, "ratio"),)),
        Figure("device: valid JSON", count("device.valid"), targets=(at_least(1.0, text="all"),)),
        Figure("cloud batch: schema-constrained decode steps", "cloud.steps_per_s.constrained",
               "steps/s", alternative="cloud.steps_per_s.free", alternative_label="free answers",
               ratio="cloud.ratio", targets=(at_least(0.8, "ratio"),)),
    )),
    Result("upstream.json", "upstream", "OpenAI-compatible upstream", (
        Figure("stream through the service", "service.tokens_per_s", "tok/s",
               alternative="direct.tokens_per_s",
               alternative_label="the same llama_cpp.server called directly",
               ratio="tokens_per_s_ratio", targets=(at_least(0.9, "ratio"),)),
        Figure("time to first token p50 through the service", "service.ttft_p50_s", "ms", 1000,
               "direct.ttft_p50_s", "called directly"),
    )),
    Result("privacy.json", "privacy", "privacy detectors", (
        Figure("ordinary prompts flagged (detect-secrets + presidio patterns)",
               "configs.maintained.false_positive_rate", "%",
               alternative="configs.patterns.false_positive_rate",
               alternative_label="the built-in patterns alone"),
        Figure("sensitive samples kept on the device", "configs.maintained.recall", "%",
               alternative="configs.patterns.recall",
               alternative_label="the built-in patterns alone"),
        Figure("added routing latency p50", "configs.maintained.added_ms.p50", "ms",
               targets=(at_most(2.0),)),
        Figure("added routing latency p50, 4 KB prompt", "configs.maintained.added_ms_4kb.p50",
               "ms", targets=(at_most(2.0),)),
    )),
    *(Result(f"{stem}.json", "scale", title, (
        Figure("one stream through Ray Serve, 1 replica",
               "configs.ray-1.single_stream_tokens_per_s", "tok/s",
               alternative="configs.torch.single_stream_tokens_per_s",
               alternative_label="the torch backend directly",
               targets=(at_least(0.9, "ratio"),)),
        Figure("16 streams, 2 Ray replicas", "configs.ray-2.tokens_per_s", "tok/s",
               alternative="configs.ray-1.tokens_per_s", alternative_label="1 Ray replica"),
        Figure("time to first token p99, 16 streams, 2 Ray replicas", "configs.ray-2.ttft_p99_s",
               "ms", 1000, "configs.ray-1.ttft_p99_s", "1 Ray replica"),
    )) for stem, title in (("scale", "Ray Serve scale-out"),
                           ("scale-1thread", "Ray Serve scale-out, 1 torch thread a replica"))),
    *(Result("knowledge_reading.json", "knowledge_reading", f"knowledge reading, {domain}", (
        Figure("held-out phrasings right, the default passages and prompt",
               count(f"domains.{domain}.default.right", f"domains.{domain}.questions"),
               alternative=count(f"domains.{domain}.paragraph.right",
                                 f"domains.{domain}.questions"),
               alternative_label="paragraph passages, top 2, plain context format"),
    )) for domain in ("fleet", "greenhouse")),
)  # fmt: skip
