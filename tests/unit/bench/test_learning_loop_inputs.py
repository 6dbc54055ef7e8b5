"""bench/learning_loop.py's inputs (any domain, checked before a model loads) and figures."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

# bench/ is a program directory, not a package (as in tests/integration/test_lora_gguf.py).
BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))
_domain: Any = importlib.import_module("_domain")
loop: Any = importlib.import_module("learning_loop")

InputError = _domain.InputError


def _facts(path: Path, rows: list[Any], *, jsonl: bool) -> Path:
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows, indent=1))
    return path


def _fact(i: int, n: int = 4) -> dict[str, Any]:
    return {"phrasings": [f"Question {i} phrased {j}?" for j in range(n)], "answers": [str(i)]}


@pytest.fixture
def knowledge(tmp_path: Path) -> Path:
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "manual.md").write_text("The answer to question 1 is 1.\n")
    return tmp_path / "kb"


def test_greenhouse_resolves_its_files_and_holds_out_the_fourth_phrasing() -> None:
    shipped = json.loads((BENCH / "data" / "greenhouse_facts.json").read_text())
    d = _domain.resolve(domain="greenhouse", facts_limit=5, general_limit=6, traffic_limit=6)
    assert d.name == "greenhouse"
    assert d.knowledge == BENCH / "data" / "greenhouse_manual"
    assert d.sources["facts"] == str(BENCH / "data" / "greenhouse_facts.json")
    assert [f.phrasings for f in d.facts] == [f["phrasings"] for f in shipped[:5]]
    assert d.sent == [p for f in shipped[:5] for p in f["phrasings"][:3]]
    assert d.heldout == [(f["phrasings"][3], f["answers"]) for f in shipped[:5]]
    assert len(d.general) == 6 and len(d.traffic) == 6


@pytest.mark.parametrize("name", _domain.DOMAINS)
def test_every_shipped_domain_has_facts_with_a_held_out_phrasing(name: str) -> None:
    d = _domain.resolve(domain=name, facts_limit=0)
    assert len(d.facts) >= 40
    assert all(len(f.phrasings) >= 4 for f in d.facts)
    assert len(d.heldout) == len(d.facts)
    # The default general set is the "general" rows of router_eval.jsonl, all of them.
    rows = [json.loads(x) for x in (BENCH / "data" / "router_eval.jsonl").read_text().splitlines()]
    assert [q for q, _ in d.general] == [r["question"] for r in rows if r["domain"] == "general"]


@pytest.mark.parametrize("jsonl", [False, True])
def test_held_out_is_every_phrasing_after_the_asked_ones(
    tmp_path: Path, knowledge: Path, jsonl: bool
) -> None:
    facts = _facts(tmp_path / "f.json", [_fact(1, 5), _fact(2, 3)], jsonl=jsonl)
    d = _domain.resolve(knowledge=knowledge, facts=facts, asked=2)
    assert d.name == "f"
    assert d.sent == ["Question 1 phrased 0?", "Question 1 phrased 1?",
                      "Question 2 phrased 0?", "Question 2 phrased 1?"]  # fmt: skip
    assert d.heldout == [("Question 1 phrased 2?", ["1"]), ("Question 1 phrased 3?", ["1"]),
                         ("Question 1 phrased 4?", ["1"]), ("Question 2 phrased 2?", ["2"])]  # fmt: skip


def test_a_malformed_json_line_is_named_by_its_number(tmp_path: Path, knowledge: Path) -> None:
    facts = tmp_path / "shop_facts.jsonl"
    facts.write_text(json.dumps(_fact(1)) + "\n\n" + '{"phrasings": ["a", "b",\n')
    with pytest.raises(InputError, match=r"shop_facts\.jsonl: line 3: not valid JSON"):
        _domain.resolve(knowledge=knowledge, facts=facts)


def test_a_malformed_json_list_is_named_by_its_line(tmp_path: Path, knowledge: Path) -> None:
    facts = tmp_path / "facts.json"
    facts.write_text('[\n {"phrasings": ["a"],\n  "answers": ["1"]\n ,]\n')
    with pytest.raises(InputError, match=r"facts\.json: line 4: not valid JSON"):
        _domain.resolve(knowledge=knowledge, facts=facts)


def test_a_fact_without_a_phrasing_to_hold_out_is_refused(tmp_path: Path, knowledge: Path) -> None:
    facts = _facts(tmp_path / "f.json", [_fact(1), _fact(2, 3)], jsonl=False)
    with pytest.raises(InputError, match=r"item 2: 3 phrasings; the device sends 3 \(--asked\)"):
        _domain.resolve(knowledge=knowledge, facts=facts)
    # With two asked, the same file holds one phrasing out of the short fact.
    assert len(_domain.resolve(knowledge=knowledge, facts=facts, asked=2).heldout) == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"phrasings": "one string", "answers": ["1"]}, "'phrasings' must be a non-empty list"),
        ({"phrasings": ["a", "b", "c", "d"], "answers": []}, "'answers' must be a non-empty list"),
        (["not", "an", "object"], "'phrasings' must be a non-empty list"),
    ],
)
def test_a_fact_of_the_wrong_shape_is_named(
    tmp_path: Path, knowledge: Path, row: Any, message: str
) -> None:
    facts = _facts(tmp_path / "f.jsonl", [_fact(1), row], jsonl=True)
    with pytest.raises(InputError, match=f"line 2: {message}"):
        _domain.resolve(knowledge=knowledge, facts=facts)


def test_missing_inputs_are_named(tmp_path: Path, knowledge: Path) -> None:
    facts = _facts(tmp_path / "f.json", [_fact(1)], jsonl=False)
    with pytest.raises(InputError, match=r"knowledge directory not found: .*nowhere"):
        _domain.resolve(knowledge=tmp_path / "nowhere", facts=facts)
    with pytest.raises(InputError, match="facts file not found"):
        _domain.resolve(knowledge=knowledge, facts=tmp_path / "none.json")
    with pytest.raises(InputError, match="general set file not found"):
        _domain.resolve(knowledge=knowledge, facts=facts, general=tmp_path / "g.jsonl")
    with pytest.raises(InputError, match="go together"):
        _domain.resolve(knowledge=knowledge)


def test_general_rows_of_another_domain_are_skipped(tmp_path: Path, knowledge: Path) -> None:
    facts = _facts(tmp_path / "f.json", [_fact(1)], jsonl=False)
    general = tmp_path / "g.jsonl"
    general.write_text(
        json.dumps({"question": "Capital of Peru?", "answers": ["Lima"]}) + "\n"
        + json.dumps({"question": "Kestrel payload?", "answers": ["22"], "domain": "fleet"}) + "\n"
        + json.dumps({"question": "Capital of Chad?", "answers": ["N'Djamena"], "domain": "general"})
    )  # fmt: skip
    d = _domain.resolve(knowledge=knowledge, facts=facts, general=general)
    assert d.general == [("Capital of Peru?", ["Lima"]), ("Capital of Chad?", ["N'Djamena"])]
    general.write_text(json.dumps({"q": "Capital of Peru?", "answers": ["Lima"]}) + "\n")
    with pytest.raises(InputError, match="line 1: 'question' must be a non-empty string"):
        _domain.resolve(knowledge=knowledge, facts=facts, general=general)


def test_an_evaluation_question_the_device_sends_is_refused(
    tmp_path: Path, knowledge: Path
) -> None:
    facts = _facts(tmp_path / "f.json", [_fact(1)], jsonl=False)
    traffic = tmp_path / "t.txt"
    traffic.write_text("What is 2 + 2?\n  question 1 PHRASED 3?\n")
    with pytest.raises(InputError, match=r"1 evaluation question.*sent by the device"):
        _domain.resolve(knowledge=knowledge, facts=facts, traffic=traffic)


def test_the_command_line_names_the_results_after_the_domain(
    tmp_path: Path, knowledge: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = loop.parse_args(["--domain", "greenhouse", "--facts-limit", "4"])
    assert args.out == BENCH / "results" / "learning_loop-greenhouse.json"
    assert len(args.domain_data.heldout) == 4
    assert loop.parse_args([]).domain_data.name == "fleet"
    facts = _facts(tmp_path / "shop_facts.json", [_fact(1)], jsonl=False)
    args = loop.parse_args(["--knowledge", str(knowledge), "--facts", str(facts)])
    assert args.out.name == "learning_loop-shop.json"
    with pytest.raises(SystemExit) as exc:
        loop.parse_args(["--knowledge", str(tmp_path / "nowhere"), "--facts", str(facts)])
    assert exc.value.code == 2
    assert "knowledge directory not found" in capsys.readouterr().err


def _row(right: bool, escalated: bool) -> dict[str, Any]:
    return {"right": right, "escalated": escalated, "adapter_in_scope": None}


def test_rates_split_the_answers_by_who_answered() -> None:
    rows = [_row(True, False), _row(True, False), _row(False, False), _row(True, True),
            _row(False, True)]  # fmt: skip
    r = loop.rates(rows)
    assert r["local_right_rate"] == pytest.approx(0.4)
    assert r["wrong_unescalated_rate"] == pytest.approx(0.2)
    assert r["escalation_rate"] == pytest.approx(0.4)
    assert r["accuracy"] == pytest.approx(0.6)
    assert r["adapter_rate"] is None


def _phase(domain: list[dict[str, Any]], general: list[dict[str, Any]]) -> dict[str, Any]:
    local = loop.rates([_row(r["right"], False) for r in domain])
    return {"domain": {"system": loop.rates(domain), "local": local},
            "general": {"system": loop.rates(general), "local": local}}  # fmt: skip


def test_targets_judge_the_round_on_the_system_pass() -> None:
    before = _phase([_row(True, True)] * 9 + [_row(False, True)], [_row(True, False)] * 2)
    after = _phase(
        [_row(True, False)] * 9 + [_row(True, True)], [_row(True, False), _row(False, True)]
    )
    summary = loop.summarize(before, after, round_s=600)
    assert summary["domain_escalation_cut"] == pytest.approx(0.9)
    assert summary["domain_local_right_rate"] == [0.0, 0.9]
    assert summary["domain_system_accuracy"] == [0.9, 1.0]
    assert loop.targets(summary) == {
        "local_right_ge_85pct": True,
        "wrong_unescalated_le_5pct": True,
        "escalation_cut_ge_60pct": True,
        "system_domain_not_lower": True,
        "system_general_not_lower": False,  # 2/2 right before, 1/2 after
        "round_le_15min": True,
    }
