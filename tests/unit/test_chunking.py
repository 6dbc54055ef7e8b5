from edgecloud.cloud._knowledge import chunk_text


def test_chunks_carry_their_heading_path_and_respect_the_size() -> None:
    text = "# Kestrel\n\nIntro line.\n\n## Specs\n\nA is 1. B is 2. C is 3.\n\n# Other\n\nZ."
    chunks = chunk_text(text, max_chars=16)
    assert chunks[0] == "Kestrel: Intro line."
    assert chunks[1] == "Kestrel / Specs: A is 1. B is 2."
    assert chunks[2] == "Kestrel / Specs: C is 3."
    assert chunks[-1] == "Other: Z."


def test_plain_text_without_headings() -> None:
    assert chunk_text("one.\n\n\n two.") == ["one.", "two."]
