"""fit_wrong_rate: the fewest escalations that leave at most a target share wrong and unescalated."""

from __future__ import annotations

import math

import pytest

from edgecloud.router import fit_wrong_rate, window_extremes


def _answer(*lps: float, right: bool) -> tuple[list[float], bool]:
    return list(lps), right


def test_a_confident_number_mixup_is_caught_by_a_short_window() -> None:
    # Right answers are confident throughout; the wrong ones hide one doubtful token (the
    # figure) among confident ones, which a long window averages away.
    right = [_answer(-0.05, -0.1, -0.05, -0.02, right=True) for _ in range(18)]
    wrong = [_answer(-0.02, -1.6, -0.03, -0.01, right=False) for _ in range(2)]
    fit = fit_wrong_rate(right + wrong, 0.0, windows=(1, 4))
    assert fit.wrong_unescalated_rate == 0.0
    assert fit.escalation_rate == pytest.approx(2 / 20)  # only the two wrong ones
    assert fit.window == 1
    assert all(fit.escalates(lps, lps) for lps, _ in wrong)
    assert not any(fit.escalates(lps, lps) for lps, _ in right)


def test_the_target_allows_some_wrong_answers_through() -> None:
    answers = [_answer(-0.1 * i, right=i % 5 != 0) for i in range(1, 21)]  # 4 wrong of 20
    strict = fit_wrong_rate(answers, 0.0, windows=(1,))
    lenient = fit_wrong_rate(answers, 0.1, windows=(1,))
    assert strict.wrong_unescalated_rate == 0.0
    assert lenient.wrong_unescalated_rate <= 0.1
    assert lenient.escalation_rate < strict.escalation_rate
    # Achieved rates are what the thresholds do to the answers fitted on.
    esc = sum(lenient.escalates(lps, lps) for lps, _ in answers) / len(answers)
    assert esc == pytest.approx(lenient.escalation_rate)


def test_all_right_means_no_escalation() -> None:
    fit = fit_wrong_rate([_answer(-2.0, -3.0, right=True) for _ in range(5)], 0.0)
    assert fit.escalation_rate == 0.0 and fit.min_mean_logprob == -math.inf


def test_unreachable_target_takes_the_fewest_wrong() -> None:
    # An empty answer cannot be escalated by a confidence window: wrong whatever the fit.
    answers = [_answer(right=False), _answer(-0.5, right=False), _answer(-0.1, right=True)]
    fit = fit_wrong_rate(answers, 0.0, windows=(1,))
    assert fit.wrong_unescalated_rate == pytest.approx(1 / 3)
    assert fit.escalates([-0.5], [-0.5])


def test_threshold_sits_between_scores_with_a_margin() -> None:
    answers = [_answer(-0.2, right=True), _answer(-1.0, right=False), _answer(-0.3, right=True)]
    fit = fit_wrong_rate(answers, 0.0, windows=(1,))
    assert fit.min_mean_logprob == pytest.approx((-1.0 + -0.3) / 2)
    lo, _ = window_extremes([-0.3], [-0.3], 1, 1)
    assert lo > fit.min_mean_logprob


@pytest.mark.parametrize("bad", [{"answers": []}, {"target": 1.5}, {"windows": ()}])
def test_bad_arguments(bad: dict[str, object]) -> None:
    kwargs: dict[str, object] = {"answers": [_answer(-0.1, right=True)], "target": 0.0}
    kwargs.update(bad)
    with pytest.raises(ValueError):
        fit_wrong_rate(**kwargs)  # type: ignore[arg-type]


def test_answers_another_rule_escalates_need_no_threshold() -> None:
    # The two wrong answers are as confident as the right ones; a second rule (the
    # answer memory) escalates them, so no threshold needs to.
    answers = [_answer(-0.05, right=True) for _ in range(8)]
    answers += [_answer(-0.05, right=False), _answer(-0.06, right=False)]
    alone = fit_wrong_rate(answers, 0.0, windows=(1,))
    forced = fit_wrong_rate(answers, 0.0, windows=(1,), forced=[False] * 8 + [True, True])
    assert alone.escalation_rate >= 0.9  # only escalating nearly everything catches them
    assert forced.escalation_rate == pytest.approx(0.2) and forced.wrong_unescalated_rate == 0
    assert forced.min_mean_logprob == -math.inf
    with pytest.raises(ValueError, match="one flag per answer"):
        fit_wrong_rate(answers, 0.0, forced=[True])
