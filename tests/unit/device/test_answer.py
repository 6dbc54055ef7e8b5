"""Transcript (an answer with retractions applied) and Emitter (the app's chunks)."""

from __future__ import annotations

from collections.abc import Sequence

from edgecloud.device._answer import Emitter, Transcript
from edgecloud.types import Chunk


def tok(text: str, i: int = 0, source: str = "cloud") -> Chunk:
    return Chunk(text, 100 + i, -0.1, 0.5, source, i)  # type: ignore[arg-type]


def applied(chunks: Sequence[Chunk], text: str = "") -> str:
    for c in chunks:
        text = text[: len(text) - c.retracted] + c.text
    return text


def test_retracting_takes_whole_chunks_then_part_of_one() -> None:
    t = Transcript([tok("one"), tok(" two"), tok(" three")])
    t.retract(len(" three") + 2)
    assert t.text == "one t" and [c.text for c in t.chunks] == ["one", " t"] and t.tokens == 2
    t.add(Chunk("wo", 7, -0.1, 0.5, "cloud", 2, retracted=1))  # " t" -> " " then "wo"
    assert t.text == "one wo" and t.end(2) == len("one ")
    t.retract(100)
    assert t.text == "" and t.chunks == []


def test_truncate_keeps_the_first_chunks() -> None:
    t = Transcript([tok("a"), tok(" b"), tok(" c")])
    t.truncate(1)
    assert t.text == "a" and t.tokens == 1


def test_the_emitter_hands_out_new_chunks_and_retracts_on_the_next_one() -> None:
    answer = Transcript(
        [tok("one", 0, "local"), tok(" two", 1, "local"), tok(" three", 2, "local")]
    )
    out = Emitter(answer, emitted=2)  # the app has "one two"; " three" is held
    answer.retract(len(" two three"))
    assert out.emit() == []  # nothing to add yet: the retraction waits for the next chunk
    answer.add(tok(" six", 9))
    [six] = out.emit()
    assert (six.text, six.retracted, six.index) == (" six", len(" two"), 1)
    assert applied([six], "one two") == answer.text == "one six" and out.retracted == 4


def test_a_pending_retraction_is_sent_at_the_end_on_an_empty_chunk() -> None:
    answer = Transcript([tok("one"), tok(" two")])
    out = Emitter(answer, emitted=2)
    answer.retract(4)
    [last] = out.emit(final=True)
    assert (last.text, last.token_id, last.retracted) == ("", -1, 4)


def test_held_chunks_the_answer_keeps_are_handed_out_cut_to_what_stands() -> None:
    answer = Transcript([tok("one"), tok(" two"), tok(" three")])
    out = Emitter(answer, emitted=1)
    answer.retract(len("ree"))
    assert [(c.text, c.index) for c in out.emit()] == [(" two", 1), (" th", 2)]


def test_stop_sequences_are_found_across_pieces_and_never_shown() -> None:
    answer = Transcript()
    out = Emitter(answer, stops=["END"])
    answer.extend([tok("a", 0), tok(" E", 1)])
    first = out.emit()
    assert applied(first) == "a " and not out.stopped  # "E" may begin the stop sequence
    answer.extend([tok("N", 2), tok("D more", 3)])
    rest = out.emit()
    assert out.stopped and applied(first + rest) == "a " == answer.text
    assert answer.tokens == 2  # the tokens after the stop sequence are not part of the answer


def test_held_text_that_is_no_stop_sequence_is_released_at_the_end() -> None:
    answer = Transcript([tok("a"), tok(" E")])
    out = Emitter(answer, stops=["END"])
    chunks = out.emit()
    chunks += out.emit(final=True)
    assert applied(chunks) == "a E" and not out.stopped


def test_a_transcript_can_start_from_chunks_that_retract() -> None:
    t = Transcript([tok("one"), Chunk("uno", 5, -0.1, 0.5, "cloud", 0, retracted=3)])
    assert t.text == "uno" and t.tokens == 1
