"""Every benchmark in one report: runs them, then writes ``bench/results/report.md``.

Runs each ``bench/*.py`` (all but ``_*`` modules and this one) with the arguments its
committed results were made with, then builds one table: per figure, the benchmark, the
figure, its target (from the project's issues), the measured value, the alternative run
beside it in the same bench and the ratio between them, target met or not; then where
and when each result was made (machine, load average, date, command) and the plots. The
figures each JSON holds are declared once, in ``bench/_figures.py``; a result or figure
that is missing shows as "not run".

    python bench/report.py --collect           # no runs: report the JSON already there
    python bench/report.py --quick             # CI-sized runs into bench/results/quick/
    python bench/report.py --quick --only cascade,discovery
    python bench/report.py                     # every bench in full: hours on 2 cores

``--quick`` passes small limits to each bench and points them (``BENCH_RESULTS_DIR``) at
``bench/results/quick/``, so it never overwrites the full results; ``--results DIR``
picks another directory. ``--only NAME[,NAME]`` runs only those benches (with
``--collect``: reports only those); the report still covers every result in the
directory, so it is never partial. Each run's start, duration, exit status, machine and
load average go to ``report-runs.json`` beside the results, and into the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _figures import RESULTS as DECLARED
from _figures import Count, Figure, Missing, Result, Target, lookup
from _results import ENV, RESULTS

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
QUICK = RESULTS / "quick"
RUNS_FILE = "report-runs.json"
REPORT_FILE = "report.md"
OUT = "{out}"  # an argument naming a file in the results directory


@dataclass(frozen=True)
class Run:
    """One invocation of a bench: its full and quick arguments and the files it writes.

    ``quick=None``: a variant of another run of the same bench, skipped by ``--quick``.
    """

    bench: str
    args: tuple[str, ...]
    quick: tuple[str, ...] | None
    writes: tuple[str, ...]


def _writes(stem: str) -> tuple[str, str]:
    return f"{stem}.json", f"{stem}.png"


RUNS: tuple[Run, ...] = (
    Run("local_decode", (), ("--rounds", "1", "--tokens", "16"), _writes("local_decode")),
    Run("cloud_batching", ("--threads", "2"),
        ("--quick", "--no-compare-transformers", "--no-adapters"), _writes("cloud_batching")),
    Run("escalation", (), ("--pairs", "3"), ("escalation.json",)),
    Run("handoff", (), ("--questions", "4", "--gap-questions", "2", "--spec-questions", "2"),
        _writes("handoff")),
    Run("handoff", ("--facts", "bench/data/greenhouse_facts.json",
                    "--manual", "bench/data/greenhouse_manual"), None, _writes("handoff-greenhouse")),
    Run("handoff", ("--dtype", "bfloat16", "--questions", "12", "--gap-questions", "6",
                    "--out", f"{OUT}/handoff-bfloat16.json"), None, _writes("handoff-bfloat16")),
    Run("router_eval", (), ("--limit", "8"), _writes("router_eval")),
    Run("knowledge_eval", (), ("--limit", "4"), ("knowledge_eval.json",)),
    Run("knowledge_eval", ("--compare-formats", "--sample", "46"), None,
        ("knowledge_eval_formats.json",)),
    Run("learning_loop", ("--domain", "fleet", "--passages", "--train", "synthesize=false"),
        ("--domain", "fleet", "--facts-limit", "2", "--general-limit", "4", "--traffic-limit",
         "2", "--epochs", "1"), _writes("learning_loop-fleet")),
    Run("learning_loop", ("--domain", "greenhouse", "--passages", "--train", "synthesize=false"),
        None,
        _writes("learning_loop-greenhouse")),
    *(Run("learning_loop", ("--domain", d, "--passages", "--train", "synthesize=true",
                            "--name", f"{d}-synth"), None, _writes(f"learning_loop-{d}-synth"))
      for d in ("fleet", "greenhouse")),
    Run("device_http", (), ("--rounds", "1", "--tokens", "8", "--prompts", "1"),
        _writes("device_http")),
    Run("discovery", (), ("--trials", "1"), ("discovery.json",)),
    Run("adapter_swap", (), ("--swaps", "2"), _writes("adapter_swap")),
    Run("split", (), ("--quick",), _writes("split")),
    Run("split", ("--part", "graph"), ("--part", "graph", "--quick"),
        ("split_graph.json", "split_vgg_small.png", "split_encoder.png")),
    Run("split", ("--encoding", "int8", "--compression", "zstd", "--tag", "int8_zstd"),
        ("--quick", "--encoding", "int8", "--compression", "zstd", "--tag", "int8_zstd"),
        _writes("split_int8_zstd")),
    Run("cascade", (), (), _writes("cascade")),
    Run("structured", ("--cloud",), ("--rounds", "1", "--tokens", "8"), ("structured.json",)),
    # 8 prompts, not --quick's 4: --quick writes upstream-quick.json, which no row reads.
    Run("upstream", (), ("--tokens", "16", "--rounds", "1"), ("upstream.json",)),
    Run("privacy", (), ("--repeat", "2"), ("privacy.json",)),
    Run("scale", (), ("--tokens", "8", "--rounds", "1"), _writes("scale")),
    Run("scale", ("--threads", "1", "--out", f"{OUT}/scale-1thread.json"), None,
        _writes("scale-1thread")),
    Run("knowledge_reading", (), ("--domain", "fleet"), ("knowledge_reading.json",)),
)  # fmt: skip


def benches() -> list[str]:
    """The bench scripts: every ``bench/*.py`` but private modules and this report."""
    return sorted(
        p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_") and p.stem != "report"
    )


def runs_for(names: Iterable[str], *, quick: bool) -> list[Run]:
    """The runs of these benches; a bench with no declared run runs with no arguments."""
    chosen: list[Run] = []
    for name in names:
        declared = [r for r in RUNS if r.bench == name]
        if not declared:
            declared = [Run(name, (), None, ())]
        chosen += [r for r in declared if not quick or r.quick is not None]
    return chosen


def command(run: Run, *, quick: bool, out: Path | None = None) -> list[str]:
    args = run.quick if quick else run.args
    assert args is not None
    where = str(out) if out is not None else "bench/results" + ("/quick" if quick else "")
    return ["python", f"bench/{run.bench}.py", *(a.replace(OUT, where) for a in args)]


def _machine() -> str:
    return f"{platform.platform()}, {os.cpu_count()} CPUs"


def execute(runs: Sequence[Run], out: Path, *, quick: bool) -> list[str]:
    """Runs each bench with its results sent to ``out``; returns the commands that failed.

    Every run's start, duration, exit status, machine and load average are merged into
    ``out/report-runs.json`` under each file the run declares, for the report.
    """
    out = out.resolve()  # the benches run from the checkout's root
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / RUNS_FILE
    failed = []
    for run in runs:
        argv = command(run, quick=quick, out=out)
        shown = shlex.join(command(run, quick=quick))
        print(f"\n=== {shown}", flush=True)
        load_before, started, t0 = os.getloadavg(), time.time(), time.perf_counter()
        env = {**os.environ, ENV: str(out)}
        code = subprocess.run(
            [sys.executable, *argv[1:]], cwd=ROOT, env=env, check=False
        ).returncode
        entry = {
            "command": shown, "started": started, "seconds": round(time.perf_counter() - t0, 1),
            "exit": code, "machine": _machine(), "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
        }  # fmt: skip
        if code:
            failed.append(shown)
        meta = _read_json(meta_path) or {}
        meta.update({name: entry for name in run.writes if name.endswith(".json")})
        meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return failed


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _num(x: float) -> str:
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.1 or a == 0:
        return f"{x:.2f}"
    return f"{x:.2g}"


def _fmt(x: float, scale: float = 1.0, targets: Iterable[Target] = (), on: str = "value",
         decimals: int | None = None) -> str:  # fmt: skip
    """``x * scale`` shown, with more digits where rounding would hide which side of a
    target it is on (a ratio of 0.9885 against ">= 0.99" shows as 0.989, not 0.99)."""
    text = _num(x * scale) if decimals is None else f"{x * scale:.{decimals}f}"
    for t in targets:
        d = len(text.partition(".")[2])
        while (
            t.on == on and d < 8 and t.met(float(text) / scale, float(text) / scale) != t.met(x, x)
        ):
            d += 1
            text = f"{x * scale:.{d}f}"
    return text


def _show(value: Any, figure: Figure) -> str:
    if isinstance(value, Count):
        return str(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if figure.unit == "%":
        return f"{_fmt(float(value), 100, figure.targets, decimals=1)} %"
    return f"{_fmt(float(value), figure.scale, figure.targets)} {figure.unit}".strip()


def _target_text(target: Target, figure: Figure) -> str:
    if target.text:
        return target.text
    sign = {">=": "≥", "<=": "≤"}[target.op]
    if target.on == "ratio":
        x = f"{target.threshold:.3g}x"
    elif figure.unit == "%":
        x = f"{target.threshold * 100:.3g} %"
    else:
        x = f"{target.threshold * figure.scale:.3g} {figure.unit}".strip()
    return f"{sign} {x}" + (f" ({target.note})" if target.note else "")


@dataclass(frozen=True)
class Row:
    """A rendered row of the figures table; ``met`` is None without a target or data."""

    result: str
    figure: str
    target: str
    measured: str
    alternative: str
    ratio: str
    met: bool | None

    @property
    def mark(self) -> str:
        if not self.target:
            return ""
        if self.met is None:
            return "not run"
        return "✅ met" if self.met else "❌ not met"

    def cells(self) -> list[str]:
        return [self.result, self.figure, self.target or "—", self.measured, self.alternative,
                self.ratio, self.mark]  # fmt: skip


NOT_RUN = "not run"
NOT_RECORDED = "not recorded"


def _optional(data: Any, get: Any) -> float | Count | None:
    """The figure ``get`` names, or None when the JSON lacks it or it is not a number."""
    if data is None or get is None:
        return None
    try:
        value = lookup(data, get)
    except Missing:
        return None
    return value if isinstance(value, (int, float, Count)) else None


def figure_row(result: Result, figure: Figure, data: Any) -> Row:
    """One figure of one results file (``data`` None: the file is not there)."""
    name = f"{result.title} ([json]({result.file}))" if data is not None else result.title
    targets = "; ".join(_target_text(t, figure) for t in figure.targets)
    value = _optional(data, figure.value)
    if value is None:
        return Row(name, figure.label, targets, NOT_RUN, "", "", None)
    alt = _optional(data, figure.alternative)
    ratio = _optional(data, figure.ratio)
    if ratio is None and figure.ratio is None and alt is not None and float(alt):
        ratio = float(value) / float(alt)
    alt_text = ""
    if figure.alternative is not None:
        shown = _show(alt, figure) if alt is not None else NOT_RUN
        alt_text = f"{shown} ({figure.alternative_label})" if figure.alternative_label else shown
    verdicts = [
        t.met(float(value), None if ratio is None else float(ratio)) for t in figure.targets
    ]
    met = None if not verdicts or None in verdicts else all(v is True for v in verdicts)
    ratio_text = f"{_fmt(float(ratio), 1, figure.targets, 'ratio')}x" if ratio is not None else ""
    return Row(name, figure.label, targets, _show(value, figure), alt_text, ratio_text, met)


def rows(results_dir: Path, declared: Sequence[Result] = DECLARED) -> list[Row]:
    """Every declared figure, read from the JSON files of ``results_dir``."""
    out = []
    for result in declared:
        data = _read_json(results_dir / result.file)
        out += [figure_row(result, f, data) for f in result.figures]
    return out


def _loads(data: Any, meta: dict[str, Any] | None) -> str:
    src = meta if meta else data if isinstance(data, dict) else {}
    before, after = src.get("loadavg_before"), src.get("loadavg_after")
    machine = data.get("machine") if isinstance(data, dict) else None
    if before is None and isinstance(machine, dict):
        before = machine.get("loadavg") or machine.get("load_average_1m")
    first = [x[0] if isinstance(x, list) else x for x in (before, after) if x is not None]
    return " → ".join(f"{x:.2f}" for x in first) if first else NOT_RECORDED


def _machine_of(data: Any, meta: dict[str, Any] | None) -> str:
    if meta:
        return str(meta["machine"])
    if not isinstance(data, dict):
        return NOT_RECORDED
    m, host = data.get("machine"), data.get("host")
    cpus = data.get("cpu_count")
    if isinstance(m, dict):
        cpus = m.get("cpu_count") or m.get("cpus") or cpus
        m = m.get("platform") or m.get("processor") or m.get("cpu")
    elif m is None and isinstance(host, dict):
        m = host.get("machine")
    parts = [str(m)] if m and m != "?" else []
    return ", ".join([*parts, f"{cpus} CPUs"] if cpus else parts) or NOT_RECORDED


def _git_date(path: Path) -> str | None:
    """The commit date of ``path``, when it is committed and unchanged since."""
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", path.name], cwd=path.parent,
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        date = subprocess.run(["git", "log", "-1", "--format=%cI", "--", path.name],
                              cwd=path.parent, capture_output=True, text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return date.strip()[:16].replace("T", " ") if date.strip() and not dirty.strip() else None


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _date(path: Path, data: Any, meta: dict[str, Any] | None) -> str:
    if meta:
        return f"{_stamp(meta['started'])} UTC (run, {meta['seconds']:.0f} s)"
    stored = data.get("date") if isinstance(data, dict) else None
    if stored:
        return str(stored)
    committed = _git_date(path)
    if committed:
        return f"{committed} (committed)"
    return f"{_stamp(path.stat().st_mtime)} UTC (file written)"


def _run_meta(meta: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """This file's entry of report-runs.json, if that run wrote the file that is there now."""
    entry = meta.get(path.name)
    if not isinstance(entry, dict) or not path.exists():
        return None
    written = path.stat().st_mtime
    return (
        entry
        if entry["started"] - 1 <= written <= entry["started"] + entry["seconds"] + 5
        else None
    )


def _bench_of(file: str) -> str:
    """The bench an undeclared results file is likely from: the longest name it starts with."""
    return max((b for b in benches() if file.startswith(b)), key=len, default="?")


def provenance(
    results_dir: Path, *, quick: bool, declared: Sequence[Result] = DECLARED
) -> list[list[str]]:
    """Per results file: what, which bench, when, on what machine, under what load, how."""
    meta = _read_json(results_dir / RUNS_FILE) or {}
    known = {r.file: r for r in declared}
    files = [r.file for r in declared]
    files += sorted(
        p.name for p in results_dir.glob("*.json") if p.name not in known and p.name != RUNS_FILE
    )
    table = []
    for name in files:
        path = results_dir / name
        result = known.get(name)
        title = result.title if result else "no figures declared"
        bench = result.bench if result else _bench_of(name)
        runs = [r for r in RUNS if name in r.writes]
        how = (
            shlex.join(command(runs[0], quick=quick))
            if runs and (not quick or runs[0].quick is not None)
            else ""
        )
        if not path.exists():
            table.append([f"{title} ({name})", bench, NOT_RUN, "", "", f"`{how}`" if how else ""])
            continue
        data = _read_json(path)
        entry = _run_meta(meta, path)
        if entry:
            how = entry["command"] + (f" — failed, exit {entry['exit']}" if entry["exit"] else "")
        table.append([f"{title} ([{name}]({name}))", bench, _date(path, data, entry),
                      _machine_of(data, entry), _loads(data, entry), f"`{how}`" if how else ""])  # fmt: skip
    return table


def plots(results_dir: Path, declared: Sequence[Result] = DECLARED) -> list[tuple[str, list[str]]]:
    """The plots of the results directory, grouped under the results they belong to."""
    present = {p.name for p in results_dir.glob("*.png")}
    groups, claimed = [], set()
    for result in declared:
        names = [f"{Path(result.file).stem}.png", *result.plots]
        found = [n for n in names if n in present and n not in claimed]
        claimed.update(found)
        if found:
            groups.append((result.title, found))
    if present - claimed:
        groups.append(("other plots", sorted(present - claimed)))
    return groups


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in body)]


WHERE = ("results", "bench", "date", "machine", "load average (1 min, before → after)", "command")
HEADER = (
    "benchmark",
    "figure",
    "target",
    "measured",
    "alternative (same run)",
    "ratio",
    "target met",
)


def render(results_dir: Path, *, quick: bool, only: Sequence[str] = (), how: str = "--collect",
           declared: Sequence[Result] = DECLARED) -> str:  # fmt: skip
    """The report, as markdown, from the JSON files of ``results_dir``."""
    chosen = [r for r in declared if not only or r.bench in only]
    figure_rows = rows(results_dir, chosen)
    targeted = [r for r in figure_rows if r.target]
    met = sum(r.met is True for r in targeted)
    missed = sum(r.met is False for r in targeted)
    lines = ["# Benchmark report", ""]
    if quick:
        lines += ["**Quick, CI-sized runs** (`bench/report.py --quick`): they prove every bench",
                  "runs; their figures are not the project's.", ""]  # fmt: skip
    lines += [
        f"Built by `python bench/report.py {how}` on {_stamp(time.time())} UTC from the JSON in this",
        "directory. Ratio: the measured figure over the alternative measured beside it in the",
        "same run. Targets are the project's issues'; \"not run\": no result for it here.",
        f"Targets: {met} met, {missed} not met, {len(targeted) - met - missed} not run.",
        "",
        *_table(HEADER, (r.cells() for r in figure_rows)),
        "",
        "## Where and when each result was made",
        "",
        *_table(WHERE, provenance(results_dir, quick=quick, declared=chosen)),
        "",
        "## Plots",
    ]
    for title, names in plots(results_dir, chosen):
        lines += ["", f"### {title}", "", *(f"![{n}]({n})" for n in names)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--collect", action="store_true", help="run nothing: report the JSON already there"
    )
    ap.add_argument("--quick", action="store_true",
                    help="CI-sized arguments; results in bench/results/quick/ unless --results")  # fmt: skip
    ap.add_argument("--only", default="", metavar="NAME[,NAME]",
                    help="run only these benches (with --collect: report only these)")  # fmt: skip
    ap.add_argument("--results", type=Path, default=None, help="the results directory")
    ap.add_argument("--list", action="store_true", help="print the commands and exit")
    args = ap.parse_args(argv)
    known = benches()
    only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(only) - set(known))
    if unknown:
        ap.error(f"--only: no bench {', '.join(unknown)} (benches: {', '.join(known)})")
    results_dir = args.results or (QUICK if args.quick else RESULTS)
    todo = runs_for(only or known, quick=args.quick)
    if args.list:
        print("\n".join(shlex.join(command(r, quick=args.quick)) for r in todo))
        return 0
    failed = [] if args.collect else execute(todo, results_dir, quick=args.quick)
    skipped = sorted({n for n in only or known} - {r.bench for r in todo})
    how = shlex.join(a for a in (argv if argv is not None else sys.argv[1:]))
    report = render(results_dir, quick=args.quick, only=only if args.collect else (), how=how)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / REPORT_FILE).write_text(report)
    print(report.split("\n## ", 1)[0])
    if skipped and not args.collect:
        print(f"no quick arguments declared, not run: {', '.join(skipped)}")
    print(f"wrote {results_dir / REPORT_FILE}")
    if failed:
        print("failed:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
