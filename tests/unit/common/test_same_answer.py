"""same_answer: the judge of whether a short answer says what a reference says."""

from __future__ import annotations

import pytest

from edgecloud.common.text import same_answer


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("4.2 bar", "4.2 bar"),
        (" The pressure is 4.2 bar.", "4.2 bar"),
        ("red", "The status lamp turns red"),
        ("1,200 rpm", "1200 rpm"),
        ("42", "42"),
        ("Amber\nQ: next question", "amber"),
        ("3.5", "3.5 hours"),
        ("D-768", "768"),  # a code's hyphen is no minus sign
        ("-5 degrees", "-5 degrees"),
        ("3.5 hours", "3.5"),
    ],
)
def test_agreeing_answers(answer: str, reference: str) -> None:
    assert same_answer(answer, reference)


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("4.5 bar", "4.2 bar"),  # another fact's figure
        ("4.2 bar and 30 s", "4.2 bar"),  # a number the reference does not have
        ("amber", "red"),
        ("", "red"),
        ("red", ""),
        ("the", "the lamp is red"),  # fillers say nothing
        ("42 volts", "42 amperes"),
        ("hours", "3.5 hours"),
        ("-5 degrees", "5 degrees"),
    ],
)
def test_disagreeing_answers(answer: str, reference: str) -> None:
    assert not same_answer(answer, reference)
