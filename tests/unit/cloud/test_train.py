"""Training by stage: which records become examples, the holdout split, label masks, the loss,
the vote, the replay check, the canary, the record window."""

from __future__ import annotations

from typing import Any

import pytest

from edgecloud.cloud._records import StoredRecord
from edgecloud.cloud.train._examples import (
    TrainingExample,
    examples_from_records,
    grounded,
    split_holdout,
)
from edgecloud.cloud.train._loss import encode
from edgecloud.common.records import EscalationRecord
from tests.fakes_cloud import CharTokenizer

PASSAGE = "The maximum payload of the Kestrel robot is 22.0 kg. It recharges at the D-497 dock."


def stored(**kwargs: Any) -> StoredRecord:
    fields: dict[str, Any] = {
        "prompt": "Q: payload?\nA:", "local_partial": "", "cloud_answer": " 22.0 kg",
        "route_policy": "confidence-window", "route_reason": "low",
        "extra": {"passages": [{"text": PASSAGE, "source": "k.md"}], "stop": ["\n"],
                  "finish": "stop"},
    }  # fmt: skip
    fields.update(kwargs)
    return StoredRecord(EscalationRecord(**fields), "dev", 0.0)


def test_grounded_needs_every_number_and_content_word_in_the_evidence() -> None:
    assert grounded(" 22.0 kg", [PASSAGE])
    assert grounded("D-497", [PASSAGE])
    assert not grounded(" 100 kg", [PASSAGE])  # the small model's prior, not the manual
    assert not grounded("22 kg", [PASSAGE])  # numbers whole: 22 is not 22.0
    assert not grounded("8", ["runs for 8.5 hours"])
    assert not grounded(" ", [PASSAGE])  # nothing to check is not evidence


def test_examples_keep_grounded_answers_with_their_terminator() -> None:
    kept, _ = examples_from_records([stored(), stored(cloud_answer=" 100 kg")])
    assert [(e.answer, e.terminator) for e in kept] == [(" 22.0 kg", "\n")]
    assert kept[0].passages == (PASSAGE,) and not kept[0].replay
    kept, to_relabel = examples_from_records(
        [stored(cloud_answer=" 100 kg")], require_grounded=False
    )
    assert len(kept) == 1 and to_relabel == []


def test_examples_join_the_local_start_and_pick_the_terminator() -> None:
    handed_off = stored(local_partial=" 22", cloud_answer=".0 kg")
    no_stop = stored(extra={"finish": "stop"})  # ended on EOS: no stop sequence to learn
    cut = stored(extra={"stop": ["\n"], "finish": "length"})  # max_tokens: no ending at all
    (a, b, c), _ = examples_from_records([handed_off, no_stop, cut])
    assert (a.answer, a.terminator) == (" 22.0 kg", "\n")
    assert b.terminator is None and c.terminator == ""


def test_cancelled_empty_and_chat_records_are_skipped() -> None:
    records = [
        stored(extra={"finish": "cancelled"}),
        stored(cloud_answer="  "),
        stored(extra={"messages": [{"role": "user", "content": "hi"}], "finish": "stop"}),
    ]
    assert examples_from_records(records) == ([], [])


def test_replay_records_become_replay_examples() -> None:
    rec = stored(local_partial=" Paris", cloud_answer="",
                 extra={"kind": "replay", "stop": ["\n"], "finish": "stop", "passages": []})  # fmt: skip
    [ex], _ = examples_from_records([rec])
    assert ex.replay and ex.answer == " Paris" and ex.terminator == "\n"


def test_shadow_records_are_labelled_by_the_cloud() -> None:
    def checked(local: str, cloud: str, agree: bool, finish: str = "stop") -> StoredRecord:
        extra = {"kind": "shadow", "agree": agree, "stop": ["\n"], "finish": finish,
                 "passages": [{"text": PASSAGE, "source": "k.md"}]}  # fmt: skip
        return stored(local_partial=local, cloud_answer=cloud, extra=extra)

    wrong, right = checked(" 100 kg", " 22.0 kg", False), checked(" 22.0 kg", " 22.0 kg.", True)
    cut = checked(" 22", " 22.0 kg", True, finish="length")  # the cloud's answer was cut
    (learned, replayed, replayed_cut), _ = examples_from_records([wrong, right, cut])
    # The cloud answered from scratch: its answer alone, never after the device's.
    assert (learned.answer, learned.terminator, learned.passages) == (" 22.0 kg", "\n", (PASSAGE,))
    assert learned.shadow and not learned.replay
    # Confirmed: the device's answer, replayed; it ended by itself whatever the cloud did.
    assert (replayed.answer, replayed.terminator, replayed.passages) == (" 22.0 kg", "\n", ())
    assert replayed.shadow and replayed.replay
    assert (replayed_cut.answer, replayed_cut.terminator) == (" 22", "\n")
    # A disagreement goes through the grounding check and the vote as an escalation does.
    kept, voted = examples_from_records([checked(" 22.0 kg", " 100 kg", False)])
    assert kept == [] and [(e.answer, e.shadow) for e in voted] == [(" 100 kg", True)]
    kept, voted = examples_from_records([wrong, right], relabel_all=True)
    assert [e.answer for e in kept] == [" 22.0 kg"] and kept[0].replay
    assert [e.answer for e in voted] == [" 22.0 kg"] and not voted[0].replay


def test_holdout_split_is_seeded_stable_and_never_empties_training() -> None:
    exs = [TrainingExample(f"q{i}", "a", record_id=f"r{i}") for i in range(200)]
    train, held = split_holdout(exs, 0.2, seed=0)
    assert 20 <= len(held) <= 60 and len(train) + len(held) == 200
    assert split_holdout(exs, 0.2, seed=0) == (train, held)
    # adding records later leaves every earlier one on its side
    _, more_held = split_holdout([*exs, TrainingExample("new", "a", record_id="x")], 0.2, 0)
    assert set(e.record_id for e in held) <= set(e.record_id for e in more_held)
    assert split_holdout(exs, 0.2, seed=1) != (train, held)
    assert split_holdout(exs[:1], 0.99, seed=0)[0] == exs[:1]
    assert split_holdout(exs, 0.0, seed=0) == (exs, [])


class _Tok:
    """Whitespace tokenizer: ids are word lengths (enough to check masks and truncation)."""

    bos_token_id = 1
    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [10 + len(w) for w in text.split(" ") if w]}


def test_loss_covers_only_the_answer_and_its_terminator() -> None:
    enc = encode(_Tok(), TrainingExample("a bb ccc", "dddd", "\n"), max_length=64)
    assert enc.ids[:4] == [1, 11, 12, 13]
    assert enc.labels[:4] == [-100] * 4 and enc.labels[4:] == enc.ids[4:]
    eos = encode(_Tok(), TrainingExample("a", "dddd", None), max_length=64)
    assert eos.ids[-1] == 2 and eos.labels[-1] == 2  # ends with EOS when no stop sequence


def test_long_prompts_keep_their_end_and_the_whole_answer() -> None:
    prompt = " ".join("x" * (i % 5 + 1) for i in range(100))
    enc = encode(_Tok(), TrainingExample(prompt, "yyyyyy", ""), max_length=16)
    assert len(enc.ids) == 16 and enc.ids[0] == 1  # BOS kept
    assert enc.ids[-1] == 16 and enc.labels[-1] == 16  # the answer survives
    assert enc.ids[-2] == 10 + len(prompt.split(" ")[-1])  # the prompt's end, next to it


def test_the_answer_only_loss_equals_the_full_model_loss() -> None:
    """Logits computed only where an answer token is predicted give the same loss as
    transformers' own (all positions, -100 ignored), on a tiny random Gemma 3."""
    import torch
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM

    from edgecloud.cloud.train._loss import Encoded, collate, loss_sum

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
    )  # fmt: skip
    model = Gemma3ForCausalLM(config).eval()
    items = [
        Encoded([1, 5, 6, 7, 8, 9], [-100, -100, -100, -100, 8, 9]),
        Encoded([1, 5, 6, 40, 41, 42, 43, 2], [-100, -100, -100, 40, 41, 42, 43, 2]),
        Encoded([1, 3, 4], [-100, 3, 4]),
    ]
    batch = collate(items, 0, torch, torch.device("cpu"))
    with torch.no_grad():
        total, n = loss_sum(model, batch, torch)
        reference = model(**batch).loss
    assert n == 2 + 5 + 2
    assert abs(float(total) / n - float(reference)) < 1e-5


class _Sampler:
    """Stands in for :func:`sample_answers`: one given list of answers per record."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers
        self.prompts: list[str] = []

    def __call__(
        self, model: Any, tokenizer: Any, ids: Any, *, samples: int, **_: Any
    ) -> list[str]:
        self.prompts.append(tokenizer.decode(ids[0].tolist()))
        batch = self.answers.pop(0)
        assert len(batch) == samples
        return batch


def test_relabel_keeps_a_grounded_answer_that_samples_agree_on() -> None:
    import torch

    from edgecloud.cloud.train._relabel import relabel

    ex = TrainingExample("Q: payload?\nA:", " 100 kg", "\n", (PASSAGE,), "r1")
    sampler = _Sampler([
        [" 100 kg\n", " 22.0 kg\nQ:", " 22.0 kg", " 7 kg"],  # 22.0 kg: grounded, twice
        [" 100 kg", " 22.0 kg", " 100 kg", " 9 kg"],  # grounded once only: no label
        [" 100 kg", " 100 kg", " 100 kg", " 100 kg"],  # never grounded
    ])  # fmt: skip
    out = relabel(None, CharTokenizer(), [ex, ex, ex], "Context: {context}\n\n{prompt}",
                  samples=4, temperature=0.8, device=torch.device("cpu"),
                  sampler=sampler)  # fmt: skip
    assert [e.answer for e in out] == [" 22.0 kg"] and out[0].record_id == "r1"
    assert sampler.prompts[0] == f"Context: {PASSAGE}\n\nQ: payload?\nA:"  # the cloud's prompt


def test_ungrounded_records_are_handed_back_for_relabeling() -> None:
    kept, rejected = examples_from_records([stored(), stored(cloud_answer=" 100 kg")])
    assert [e.answer for e in kept] == [" 22.0 kg"] and [e.answer for e in rejected] == [" 100 kg"]


def test_relabel_all_hands_every_escalated_record_to_the_vote() -> None:
    plain = stored(extra={"stop": ["\n"], "finish": "stop"})  # answered without passages
    replayed = stored(extra={"stop": ["\n"], "finish": "stop", "kind": "replay"})
    kept, rejected = examples_from_records(
        [stored(), stored(cloud_answer=" 100 kg"), plain, replayed], relabel_all=True
    )
    assert [e.answer for e in rejected] == [" 22.0 kg", " 100 kg", " 22.0 kg"]
    assert [e.passages for e in rejected][2] == ()
    assert [e.replay for e in kept] == [True]  # a replayed answer is not the cloud's


def test_without_passages_a_label_needs_the_share_of_samples_to_agree() -> None:
    import torch

    from edgecloud.cloud.train._relabel import relabel

    ex = TrainingExample("Q: What colour is snow?\nA:", " Red", "\n", (), "r1")
    sampler = _Sampler([
        [" white", " white", " white", " Red"],  # 3 of 4 agree: kept
        [" white", " white", " Red", " blue"],  # 2 of 4: half is not enough at 0.75
    ])  # fmt: skip
    out = relabel(None, CharTokenizer(), [ex, ex], "Context: {context}\n\n{prompt}", samples=4,
                  temperature=0.8, device=torch.device("cpu"), sampler=sampler,
                  min_share=0.75)  # fmt: skip
    assert [e.answer for e in out] == [" white"]
    assert sampler.prompts[0] == "Q: What colour is snow?\nA:"  # what the cloud ran: no context


def test_replayed_answers_the_knowledge_contradicts_go_to_the_vote() -> None:
    from edgecloud.cloud.train._relabel import check_replay
    from edgecloud.types import Passage

    class Knowledge:
        def search(self, query: str, k: int = 3, min_score: float = 0.0) -> list[Passage]:
            self.asked = (query, k, min_score)
            return [Passage(PASSAGE, "kestrel.md", 0.8)] if "Kestrel" in query else []

    shots = "Q: What is the capital of France?\nA: Paris\n"
    wrong = TrainingExample(f"{shots}Q: Kestrel payload?\nA:", " 100 kg", "\n", replay=True)
    right = TrainingExample(f"{shots}Q: Kestrel payload?\nA:", " 22.0 kg", "\n", replay=True)
    unknown = TrainingExample(f"{shots}Q: Capital of Spain?\nA:", " Madrid", "\n", replay=True)
    learned = TrainingExample(f"{shots}Q: Kestrel colour?\nA:", " orange", "\n", (PASSAGE,))
    kb = Knowledge()
    keep, relabel = check_replay([wrong, right, unknown, learned], kb, top_k=2, min_score=0.3)  # type: ignore[arg-type]
    assert keep == [right, unknown, learned]
    assert [(e.answer, e.replay, e.passages) for e in relabel] == [(" 100 kg", False, (PASSAGE,))]
    assert kb.asked == ("Capital of Spain?", 2, 0.3)  # the question, as the cloud searches


def _tiny_lora_batch() -> tuple[Any, dict[str, Any], Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM

    from edgecloud.cloud.train._loss import Encoded, collate

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
    )  # fmt: skip
    model = get_peft_model(
        Gemma3ForCausalLM(config).eval(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    items = [
        Encoded([1, 5, 6, 7, 8, 9], [-100, -100, -100, -100, 8, 9]),
        Encoded([1, 5, 6, 40, 41, 42], [-100, -100, -100, 40, 41, 42], anchor=True),
    ]
    return model, collate(items, 0, torch, torch.device("cpu")), torch


PEFT_WARNING = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"  # peft reads it
)


@PEFT_WARNING
def test_anchor_rows_cost_nothing_while_the_adapter_changes_nothing() -> None:
    from edgecloud.cloud.train._loss import loss_sum

    model, batch, torch = _tiny_lora_batch()  # LoRA B starts at zero: adapted == base
    with torch.no_grad():
        with_kl, n = loss_sum(model, batch, torch, anchor_kl=True)
        plain_only, _ = loss_sum(
            model, {**batch, "anchor": torch.tensor([False, True])}, torch, anchor_kl=False
        )
    assert n == 2 + 3
    # Only the first row's cross-entropy remains; the anchor row's KL is zero.
    first = {k: v[:1] for k, v in batch.items()}
    with torch.no_grad():
        first_loss, _ = loss_sum(model, first, torch)
    assert abs(float(with_kl) - float(first_loss)) < 1e-4
    assert float(plain_only) > float(with_kl)  # cross-entropy on the anchor row is not zero


@PEFT_WARNING
def test_anchor_rows_pull_a_changed_adapter_back_to_the_base() -> None:
    from edgecloud.cloud.train._loss import loss_sum

    model, batch, torch = _tiny_lora_batch()
    anchor_only = {k: v[1:] for k, v in batch.items()}
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    loss, _ = loss_sum(model, anchor_only, torch, anchor_kl=True)
    assert float(loss.detach()) > 0
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


@PEFT_WARNING
def test_sampled_answers_stop_at_the_terminator_and_share_one_prompt_pass() -> None:
    import torch
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM

    from edgecloud.cloud.train._relabel import sample_answers

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
        eos_token_id=1, bos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = Gemma3ForCausalLM(config).eval()
    calls: list[int] = []
    model.register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(kw["input_ids"].shape[0]), with_kwargs=True
    )

    class Tok:
        eos_token_id = 1

        def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
            return "".join(chr(97 + i % 26) if i > 2 else "" for i in ids)

    answers = sample_answers(
        model, Tok(), torch.tensor([[2, 40, 41, 42]]), samples=6, budget=12,
        temperature=1.0, terminator="e", device=torch.device("cpu"),
    )  # fmt: skip
    assert len(answers) == 6 and len(set(answers)) > 1  # sampled, not six copies
    for a in answers:
        assert len(a) <= 12 and ("e" not in a or a.endswith("e"))  # cut at the terminator
    assert calls[0] == 1 and all(n == 6 for n in calls[1:])  # the prompt ran once


def test_canary_candidates_alternate_learned_and_replayed_short_answers() -> None:
    from edgecloud.cloud.train._evaluate import canary_pool

    learned = [TrainingExample(f"q{i}", f" a{i}", "\n") for i in range(3)]
    replayed = [TrainingExample(f"r{i}", f" b{i}", "\n", replay=True) for i in range(2)]
    long = TrainingExample("x", " " + "y" * 100, "\n")
    multi = TrainingExample("z", " line\nline", "")
    pool = canary_pool([*learned, long, *replayed, multi])
    assert [e.prompt for e in pool] == ["q0", "r0", "q1", "r1", "q2"]


def test_the_record_window_is_a_duration_before_now_or_an_iso_time() -> None:
    from edgecloud.cloud.train import parse_since
    from edgecloud.errors import InvalidRequestError

    now = 1_000_000.0
    assert parse_since("24h", now) == now - 86_400
    assert parse_since(" 30m ", now) == now - 1_800
    assert parse_since("1.5D", now) == now - 1.5 * 86_400
    assert parse_since("2w", now) == now - 2 * 604_800
    assert parse_since("1970-01-02T00:00:00", now) == 86_400  # no zone: UTC
    assert parse_since("1970-01-02T01:00:00+01:00", now) == 86_400
    for bad in ("yesterday-ish", "h", "-5h", "24x"):
        with pytest.raises(InvalidRequestError, match="neither a duration"):
            parse_since(bad, now)


def test_round_stages_are_told_as_they_start_and_timed_until_the_next() -> None:
    from edgecloud.cloud.train._round import _Stages

    told: list[str] = []
    stages = _Stages(told.append)
    stages.start("records", "reading escalation records")
    stages.tell("2 replayed answers contradict the knowledge base")
    stages.start("train", "training")
    seconds = stages.finish()
    assert told == [
        "reading escalation records",
        "2 replayed answers contradict the knowledge base",
        "training",
    ]
    assert list(seconds) == ["records", "train"] and min(seconds.values()) >= 0
    assert stages.finish() == seconds  # nothing running any more


def test_a_round_to_publish_without_a_signing_key_fails_before_reading_records(
    tmp_path: Any,
) -> None:
    from edgecloud.cloud.train import run_round
    from edgecloud.config import Settings
    from edgecloud.errors import ConfigError

    settings = Settings.load(
        cache_dir=tmp_path, cloud={"records": {"path": str(tmp_path / "records.db")}}
    )
    told: list[str] = []
    with pytest.raises(ConfigError, match="signing_key"):
        run_round(settings, tmp_path / "round", publish=True, on_stage=told.append)
    assert told == [] and not (tmp_path / "records.db").exists()


def test_a_round_with_too_few_usable_records_says_how_many_it_had(tmp_path: Any) -> None:
    from edgecloud.cloud._records import RecordStore
    from edgecloud.cloud.train import run_round
    from edgecloud.config import Settings
    from edgecloud.errors import InvalidRequestError

    store = RecordStore(tmp_path / "records.db")
    store.store([stored().record, stored(extra={"finish": "cancelled"}).record], device="d")
    store.close()
    settings = Settings.load(
        cache_dir=tmp_path,
        cloud={"records": {"path": str(tmp_path / "records.db")}, "train": {"min_records": 2}},
    )
    told: list[str] = []
    with pytest.raises(
        InvalidRequestError, match="1 usable examples from 2 records; a round needs at least 2"
    ):
        run_round(settings, tmp_path / "round", on_stage=told.append)
    assert told == ["reading escalation records"] and not (tmp_path / "round").exists()


def test_synthesized_examples_are_trained_on_never_held_out_or_canaries() -> None:
    from edgecloud.cloud._settings import CloudTrainConfig
    from edgecloud.cloud.train._lora import _prepare

    asked = [TrainingExample(f"Q: question {i}?\nA:", f" {i}", "\n", record_id=f"r{i}")
             for i in range(40)]  # fmt: skip
    written = [TrainingExample(f"Q: written {i}?\nA:", f" w{i}", "\n", synthetic=True)
               for i in range(10)]  # fmt: skip
    cfg = CloudTrainConfig(holdout_fraction=0.5)
    data = _prepare(CharTokenizer(), asked, cfg, written)
    assert data.holdout and all(not ex.synthetic for ex in data.holdout)
    assert all(not ex.synthetic for ex in data.pool)
    assert sum(ex.synthetic for ex in data.train) == 10
    assert len(data.items) == len(data.train)
    # Without them the split is the same: the held-out figures stay comparable.
    assert _prepare(CharTokenizer(), asked, cfg).holdout == data.holdout


def test_a_round_without_a_knowledge_base_says_it_did_not_check_replayed_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The replay check needs the knowledge base; a round without one must say so, not
    skip it silently."""
    from edgecloud.cloud.train._examples import TrainingExample
    from edgecloud.cloud.train._round import _check_replay, _Stages
    from edgecloud.config import Settings

    told: list[str] = []
    examples = [TrainingExample("Q: 2 + 2?\nA:", " 4", replay=True)]
    with caplog.at_level("WARNING", logger="edgecloud.cloud.train"):
        keep, wrong, kb = _check_replay(Settings.load(), examples, _Stages(told.append))
    assert keep == examples and wrong == [] and kb is None
    assert any("replayed answers not checked" in t and "--knowledge" in t for t in told)
    assert any("not checked" in r.getMessage() for r in caplog.records)
