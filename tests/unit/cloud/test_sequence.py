"""Incremental detokenization and stop handling of one sequence (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from edgecloud.cloud._sequence import Sequence_, TokenStep
from edgecloud.types import Chunk, Finish, Retraction, SamplingParams

# A byte-level toy vocabulary: token i is one byte of "héllo wörld" in UTF-8, so
# multi-byte characters span two tokens, as they do with real byte-fallback tokens.
TEXT = "héllo wörld".encode()


def decode(ids: Sequence[int]) -> str:
    return bytes(TEXT[i] for i in ids).decode("utf-8", errors="replace")


def run(stop: tuple[str, ...] = (), max_tokens: int = 100) -> list[Chunk | Finish | BaseException]:
    events: list[Chunk | Finish | BaseException] = []
    seq = Sequence_("r", [1], SamplingParams(max_tokens=max_tokens, stop=stop), None,
                    events.append, decode, frozenset({999}), max_tokens)  # fmt: skip
    for i in range(len(TEXT)):
        if seq.push(TokenStep(i, -1.0, 2.0)):
            break
    else:
        seq.finish("length")
    return events


def test_split_characters_are_held_until_complete() -> None:
    events = run()
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert "".join(c.text for c in chunks) == "héllo wörld"
    assert all("\ufffd" not in c.text for c in chunks)
    # One chunk per token (the first byte of "é" yields an empty text).
    assert [c.index for c in chunks if c.token_id >= 0] == list(range(len(TEXT)))
    assert "" in [c.text for c in chunks]


def test_stop_sequence_is_not_emitted_and_ends_with_stop() -> None:
    events = run(stop=("wör",))
    text = "".join(e.text for e in events if isinstance(e, Chunk))
    assert text == "héllo "
    end = events[-1]
    assert isinstance(end, Finish) and end.reason == "stop"


def test_partial_stop_prefix_is_released_at_the_end() -> None:
    events = run(stop=("ldx",), max_tokens=len(TEXT))
    text = "".join(e.text for e in events if isinstance(e, Chunk))
    assert text == "héllo wörld"
    end = events[-1]
    assert isinstance(end, Finish) and end.reason == "length"
    assert end.completion_tokens == len(TEXT)


def verifying(prefix: str) -> tuple[Sequence_, list[Chunk | Finish | Retraction | BaseException]]:
    """A sequence whose prompt (2 tokens) ends with ``prefix``, one token per UTF-8 byte."""
    events: list[Chunk | Finish | Retraction | BaseException] = []
    ids = [TEXT.index(b) for b in prefix.encode()]
    seq = Sequence_("r", [0, 0, *ids], SamplingParams(max_tokens=3), None, events.append,
                    decode, frozenset({999}), 3, verify_tokens=len(ids), prefix_text=prefix)  # fmt: skip
    return seq, events


def test_an_accepted_prefix_is_not_retracted() -> None:
    seq, events = verifying("hél")
    assert seq.prefix_ids == [0, 1, 2, 3]
    assert seq.accept_prefix(4) == 4
    seq.push(TokenStep(4, -1.0, 2.0))
    assert not [e for e in events if isinstance(e, Retraction)]
    assert isinstance(events[0], Chunk) and events[0].text == "l" and events[0].index == 0


def test_a_rejected_tail_is_retracted_before_the_first_chunk() -> None:
    seq, events = verifying("héll")
    assert seq.accept_prefix(3) == 3
    assert events == []  # nothing before the first token
    seq.push(TokenStep(5, -1.0, 2.0))
    assert events[0] == Retraction(kept=2, rejected="ll", kept_tokens=3)
    assert isinstance(events[1], Chunk) and events[1].text == "o" and events[1].index == 0
    seq.finish("length")
    end = events[-1]
    # Usage: every prompt token prefilled (the whole prefix); only the new token is new.
    assert isinstance(end, Finish) and (end.prompt_tokens, end.completion_tokens) == (7, 1)


def test_the_retraction_comes_even_when_the_first_token_ends_the_answer() -> None:
    seq, events = verifying("hé")
    assert seq.accept_prefix(0) == 0
    assert seq.push(TokenStep(999, -0.1, 0.1))  # end of sequence at once
    assert events[0] == Retraction(kept=0, rejected="hé", kept_tokens=0)
    assert isinstance(events[1], Finish) and events[1].completion_tokens == 0


def test_kept_tokens_never_end_inside_a_character() -> None:
    # "é" is two byte tokens; keeping only its first would keep half a character.
    seq, events = verifying("hél")
    assert seq.accept_prefix(2) == 1  # the first byte goes back to the model too
    seq.push(TokenStep(1, -1.0, 2.0))
    assert events[0] == Retraction(kept=1, rejected="él", kept_tokens=1)


def test_kept_characters_are_the_common_prefix_when_decoding_differs() -> None:
    # A tokenizer whose decode does not give the text back (it drops a space).
    events: list[Chunk | Finish | BaseException] = []
    seq = Sequence_("r", [7, 1, 2, 3], SamplingParams(), None, events.append,
                    lambda ids: "".join({1: "a", 2: "b", 3: "c"}[i] for i in ids),
                    frozenset(), 4, verify_tokens=3, prefix_text="a bc")  # fmt: skip
    assert seq.accept_prefix(2) == 2  # "ab" against "a bc": only "a" is common
    seq.push(TokenStep(3, -1.0, 1.0))
    assert events[0] == Retraction(kept=1, rejected=" bc", kept_tokens=2)


def test_the_prefix_must_follow_a_prompt_token() -> None:
    with pytest.raises(ValueError, match="prompt token"):
        Sequence_("r", [1, 2], SamplingParams(), None, lambda e: None, decode,
                  frozenset(), 4, verify_tokens=2, prefix_text="he")  # fmt: skip
