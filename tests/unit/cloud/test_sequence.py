"""Incremental detokenization and stop handling of one sequence (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from edgecloud.cloud._sequence import Sequence_, TokenStep
from edgecloud.types import Chunk, Finish, SamplingParams

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
