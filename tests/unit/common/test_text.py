import itertools

from hypothesis import given
from hypothesis import strategies as st

from edgecloud.common.text import StopMatcher, Utf8Stream


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces)
    if not m.stopped:
        out += m.flush()
    return out, m.stopped


def test_stop_sequence_split_across_pieces() -> None:
    assert _run(["\nUser:"], ["Hello", "\n", "Us", "er:", " more"]) == ("Hello", True)


def test_held_prefix_is_released_when_it_does_not_complete() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("abc ST") == "abc "
    assert m.feed("ART") == "START"
    assert not m.stopped


def test_the_stop_that_completes_first_wins_whatever_the_split() -> None:
    # "X" completes at 2 before "YXX" (which starts earlier) completes at 3
    assert _run(["X", "YXX"], ["YXX"]) == ("Y", True)
    assert _run(["X", "YXX"], ["YX", "X"]) == ("Y", True)
    assert _run(["X", "YXX"], ["Y", "X", "X"]) == ("Y", True)


def test_no_stops_passes_through() -> None:
    assert _run([], ["a", "b"]) == ("ab", False)


@given(
    text=st.text(alphabet="abc\nXY", max_size=40),
    stops=st.lists(st.text(alphabet="abc\nXY", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_output_is_text_before_first_stop_for_any_split(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    # the stop that completes first wins (earliest start on a tie)
    hits = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    expected = text[: min(hits)[1]] if hits else text
    assert _run(stops, pieces) == (expected, bool(hits))


@given(text=st.text(max_size=30), cuts=st.lists(st.integers(0, 200), max_size=10))
def test_utf8_stream_reassembles_split_characters(text: str, cuts: list[int]) -> None:
    data = text.encode("utf-8", "surrogatepass")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    u = Utf8Stream()
    out = "".join(u.feed(data[a:b]) for a, b in itertools.pairwise(bounds)) + u.flush()
    assert out == text


def test_utf8_stream_replaces_invalid_bytes() -> None:
    u = Utf8Stream()
    assert u.feed(b"ok\xff") == "ok\ufffd"
    assert u.feed(b"\xe2\x82") == ""  # incomplete euro sign is held back
    assert u.feed(b"\xac") == "€"
