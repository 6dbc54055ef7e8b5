"""bench/report.py: the figures table built from small results files, targets met or not."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

# bench/ is a program directory, not a package (as in test_learning_loop_inputs.py).
BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))
report: Any = importlib.import_module("report")
figures: Any = importlib.import_module("_figures")


def _write(directory: Path, name: str, data: dict[str, Any]) -> Path:
    path = directory / name
    path.write_text(json.dumps(data))
    return path


def _rows(directory: Path, file: str) -> dict[str, Any]:
    """The report's rows for one results file, by figure label."""
    declared = [r for r in figures.RESULTS if r.file == file]
    return {row.figure: row for row in report.rows(directory, declared)}


LOCAL_DECODE = {
    "sdk_tok_s": 40.0, "raw_tok_s": 42.0, "ratio": 0.96,
    "llama_cpp_logprobs_tok_s": 3.0, "llama_cpp_logprobs_ratio_vs_raw": 0.07,
    "sdk_rss_mb": 620.0, "raw_rss_mb": 600.0,
    # no time to first token: that row must read "not run"
    "machine": {"platform": "Linux-test-x86_64", "cpu_count": 2},
    "loadavg_before": [0.5, 0.4, 0.3], "loadavg_after": [1.25, 0.5, 0.3],
}  # fmt: skip


def test_rows_mark_targets_met_and_not_met_and_missing_figures_not_run(tmp_path: Path) -> None:
    _write(tmp_path, "local_decode.json", LOCAL_DECODE)
    rows = _rows(tmp_path, "local_decode.json")

    decode = rows["decode with per-token confidence (SDK stream)"]
    assert (decode.target, decode.measured, decode.ratio) == ("≥ 0.95x", "40.0 tok/s", "0.96x")
    assert decode.alternative == "42.0 tok/s (raw llama-cpp-python create_completion)"
    assert decode.met is True and decode.mark == "✅ met"

    rss = rows["peak RSS with the model"]
    assert (rss.target, rss.measured) == ("≤ 500 MB", "620 MB")
    assert rss.met is False and rss.mark == "❌ not met"
    assert rss.ratio == "1.03x"  # no stored ratio: measured / alternative

    ttft = rows["Client.local() to the first token"]
    assert ttft.measured == "not run" and ttft.mark == "not run" and ttft.met is None

    untargeted = rows["llama-cpp-python's own logprobs path"]
    assert untargeted.target == "" and untargeted.mark == "" and untargeted.ratio == "0.07x"


def test_a_missing_results_file_reads_not_run_and_a_broken_one_does_not_crash(
    tmp_path: Path,
) -> None:
    (tmp_path / "escalation.json").write_text("{not json")
    summary = {"first_answer_ms": "soon", "static_first_answer_ms": {"p50": "later"}}
    _write(tmp_path, "discovery.json", {"summary": summary})
    for file in ("cascade.json", "escalation.json"):
        rows = _rows(tmp_path, file).values()
        assert rows and all(r.measured == "not run" for r in rows)
        assert all(r.mark in ("", "not run") for r in rows)
        assert all("[json]" not in r.result for r in rows)
    # A value of the wrong type is a missing figure too, not a crash.
    assert all(r.measured == "not run" for r in _rows(tmp_path, "discovery.json").values())


def test_rounding_never_hides_a_missed_target_and_two_targets_must_both_hold(
    tmp_path: Path,
) -> None:
    test = {"cascade_accuracy": 0.9583, "cloud_only_accuracy": 0.9694, "escalation_rate": 0.19,
            "cascade_over_cloud_accuracy": 0.9885, "random_escalation_accuracy_same_rate": 0.93}  # fmt: skip
    _write(tmp_path, "cascade.json", {"test": test})
    cascade = _rows(tmp_path, "cascade.json")["cascade accuracy"]
    assert (cascade.ratio, cascade.mark) == ("0.989x", "❌ not met")  # not "0.99x" beside ≥ 0.99x
    assert (cascade.measured, cascade.alternative.split(" (")[0]) == ("95.8 %", "96.9 %")

    def p50(s: float) -> dict[str, float]:
        return {"p50": s}

    swap = {"swap_to_first_token_s": p50(0.030), "reload_to_first_token_s": p50(0.45),
            "swap_ready_s": p50(0.060), "reload_ready_s": p50(3.0),
            "fetch_and_verify_s": p50(0.04)}  # fmt: skip
    _write(tmp_path, "adapter_swap.json", swap)
    rows = _rows(tmp_path, "adapter_swap.json")
    first = rows["hot swap to the first token p50"]
    assert first.target == "≤ 50 ms; ≤ 0.05x (reload ≥ 20x slower)"
    assert (first.measured, first.ratio, first.met) == ("30.0 ms", "0.067x", False)  # 15x only
    ready = rows["hot swap until ready p50 (set_adapter)"]
    assert (ready.measured, ready.ratio, ready.met) == ("60.0 ms", "0.02x", False)  # > 50 ms


def test_counts_and_before_after_rows(tmp_path: Path) -> None:
    _write(tmp_path, "structured.json", {"device": {"valid": "7/8"}})
    valid = _rows(tmp_path, "structured.json")["device: valid JSON"]
    assert (valid.target, valid.measured, valid.mark) == ("all", "7/8", "❌ not met")

    summary = {"domain_local_right_rate": [0.0, 0.9], "domain_escalation_rate": [0.9, 0.5],
               "general_system_accuracy": [0.5, 0.5], "round_s": 1000.0}  # fmt: skip
    _write(tmp_path, "learning_loop-fleet.json", {"summary": summary})
    rows = _rows(tmp_path, "learning_loop-fleet.json")
    local = rows["held-out phrasings answered locally and right, after one round"]
    assert (local.measured, local.alternative, local.ratio, local.mark) == (
        "90.0 %", "0.0 % (before the round)", "", "✅ met")  # fmt: skip
    escalated = rows["held-out phrasings escalated, after"]
    assert (escalated.ratio, escalated.mark) == ("0.56x", "❌ not met")  # a 44 % cut, not 60 %
    general = rows["device-plus-cloud accuracy on the general set, after"]
    assert (general.ratio, general.mark) == ("1.00x", "✅ met")
    assert rows["the round (train, export, sign, publish, swap)"].mark == "❌ not met"


def test_collect_writes_the_report_with_provenance_and_plots(tmp_path: Path) -> None:
    path = _write(tmp_path, "local_decode.json", LOCAL_DECODE)
    written = time.time() - 30
    os.utime(path, (written, written))
    (tmp_path / "local_decode.png").write_bytes(b"\x89PNG")
    (tmp_path / "split_encoder.png").write_bytes(b"\x89PNG")
    _write(tmp_path, "local_decode-old.json", {})  # no figures declared for it
    # A run recorded by report.py, but of a file written since: its entry is ignored.
    runs = {"local_decode.json": {"command": "python bench/local_decode.py --rounds 1",
            "started": written - 3600, "seconds": 10, "exit": 0, "machine": "recorded",
            "loadavg_before": [9.0], "loadavg_after": [9.0]}}  # fmt: skip
    (tmp_path / "report-runs.json").write_text(json.dumps(runs))

    assert report.main(["--collect", "--results", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| benchmark | figure | target | measured |")
    decode = next(line for line in table if "decode with per-token confidence" in line)
    assert decode == (
        "| local decode ([json](local_decode.json)) | decode with per-token confidence (SDK stream)"
        " | ≥ 0.95x | 40.0 tok/s | 42.0 tok/s (raw llama-cpp-python create_completion) | 0.96x"
        " | ✅ met |"
    )
    assert (
        "| cloud batching | aggregate decode, 16 concurrent gRPC streams | ≥ 5x | not run |" in text
    )
    assert "Targets: 1 met, 1 not met," in text

    where = next(line for line in table if line.startswith("| local decode ([local_decode.json]"))
    assert "(file written)" in where and "Linux-test-x86_64, 2 CPUs" in where
    assert "0.50 → 1.25" in where and "`python bench/local_decode.py`" in where
    old = next(line for line in table if "local_decode-old.json" in line)
    assert "no figures declared" in old and "| local_decode |" in old
    assert "![local_decode.png](local_decode.png)" in text
    assert "![split_encoder.png](split_encoder.png)" in text  # under the split_graph results


def test_a_run_recorded_by_the_report_gives_the_date_machine_and_command(tmp_path: Path) -> None:
    path = _write(tmp_path, "discovery.json", {"summary": {}})
    started = path.stat().st_mtime - 2
    runs = {"discovery.json": {"command": "python bench/discovery.py --trials 1",
            "started": started, "seconds": 4.0, "exit": 3, "machine": "box, 2 CPUs",
            "loadavg_before": [1.0, 1, 1], "loadavg_after": [2.0, 1, 1]}}  # fmt: skip
    (tmp_path / "report-runs.json").write_text(json.dumps(runs))
    [[title, bench, date, machine, load, how]] = [
        row for row in report.provenance(tmp_path, quick=True) if "discovery" in row[0]
    ]
    assert title == "LAN discovery ([discovery.json](discovery.json))"
    assert (bench, machine, load) == ("discovery", "box, 2 CPUs", "1.00 → 2.00")
    assert date.endswith("UTC (run, 4 s)")
    assert how == "`python bench/discovery.py --trials 1 — failed, exit 3`"


def test_every_bench_has_its_runs_and_every_results_file_a_run_that_writes_it() -> None:
    benches = report.benches()
    assert "report" not in benches and "cascade" in benches
    assert {r.bench for r in report.RUNS} == set(benches)
    for result in figures.RESULTS:
        writers = [r for r in report.RUNS if result.file in r.writes]
        assert [r.bench for r in writers] == [result.bench], result.file
    # Every bench has a CI-sized run, which never writes into the full results.
    assert {r.bench for r in report.runs_for(benches, quick=True)} == set(benches)
    assert report.QUICK != report.RESULTS and report.QUICK.parent == report.RESULTS


def test_every_flag_a_run_passes_is_one_its_bench_declares() -> None:
    # The benches load models at import, so their argparse is read as text, not run.
    for run in report.RUNS:
        source = (BENCH / f"{run.bench}.py").read_text()
        for arg in (*run.args, *(run.quick or ())):
            if arg.startswith("-") and not arg.lstrip("-").isdigit():
                assert f'"{arg}"' in source, f"{run.bench}: {arg}"


def test_only_rejects_an_unknown_bench(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        report.main(["--collect", "--only", "cascade,nope"])
    assert "no bench nope" in capsys.readouterr().err
