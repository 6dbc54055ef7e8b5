"""The round's choice between thresholds alone and thresholds with the answer memory."""

from __future__ import annotations

from edgecloud.cloud._settings import CloudCalibrationConfig
from edgecloud.cloud.train._calibrate import _Answer, _fit, _Row, _with_memory
from edgecloud.cloud.train._examples import TrainingExample


def _row(answer: str, label: str, logprob: float, *, unlearned: bool) -> _Row:
    said = _Answer(answer, (logprob,), (0.1,))
    row = _Row(TrainingExample("Q: ?\nA:", label, "\n"), True, said, said, False, False)
    row.unlearned = unlearned
    return row


def test_the_memory_catches_mixups_and_the_thresholds_the_rest() -> None:
    cal = CloudCalibrationConfig(target_wrong_rate=0.0, windows=[1])
    rows = [_row("22 kg", "22 kg", -0.02 * (i + 1), unlearned=False) for i in range(10)]
    # A mix-up, as confident as the right answers: not what was learned for its question.
    rows.append(_row("D-156", "D-577", -0.03, unlearned=True))
    # Wrong, but what the nearest trained prompt was taught: the thresholds must catch it.
    rows.append(_row("5.0 hours", "4.0 hours", -0.25, unlearned=False))
    alone = _fit(cal.target_wrong_rate, cal.windows, rows)
    assert alone.escalation_rate > 0.5  # only a threshold above most right answers
    chosen = _with_memory(cal, rows, alone, -1.0)
    assert chosen is not None
    fit, taught_wrong = chosen
    assert taught_wrong == 1
    assert fit.escalation_rate == 2 / 12 and fit.wrong_unescalated_rate == 0.0
    assert -0.25 < fit.min_mean_logprob < -0.2
    # When the memory catches nothing the thresholds alone do not, it is left out.
    plain = [_row("22 kg", "22 kg", -0.01, unlearned=False) for _ in range(5)]
    plain.append(_row("9 kg", "22 kg", -0.9, unlearned=False))
    plain[-1].unlearned = True
    alone = _fit(0.0, [1], plain)
    assert alone.wrong_unescalated_rate == 0.0 and alone.escalation_rate == 1 / 6
    assert _with_memory(cal, plain, alone, -1.0) is not None  # a tie: memory kept
    worse = [_row("22 kg", "22 kg", -0.01, unlearned=True) for _ in range(5)]
    worse.append(_row("9 kg", "22 kg", -0.9, unlearned=True))
    alone = _fit(0.0, [1], worse)
    assert _with_memory(cal, worse, alone, -1.0) is None  # it would escalate every right answer


def test_requests_far_from_anything_learned_are_left_to_the_base_model() -> None:
    from edgecloud.cloud.train._calibrate import _floor

    cal = CloudCalibrationConfig(target_wrong_rate=0.0, windows=[1])
    domain = [_row("22 kg", "22 kg", -0.01, unlearned=False) for _ in range(6)]
    for i, r in enumerate(domain):
        r.nearest = 0.8 + 0.01 * i
    general = _row("Earth", "Jupiter", -0.01, unlearned=True)  # in the scope, but far
    general.example = TrainingExample("Q: planet?\nA:", "Jupiter", "\n", replay=True)
    general.nearest, general.base_escalates = 0.3, True
    rows = [*domain, general]
    floor = _floor(rows, 0.05)
    assert floor == 0.75  # just under the least similar domain example
    alone = _fit(0.0, [1], rows)
    chosen = _with_memory(cal, rows, alone, floor)
    assert chosen is not None
    fit, _ = chosen
    assert fit.examples == 6  # fitted on what the adapter still answers
    assert _floor([general], 0.05) == -1.0  # no domain examples: no floor
