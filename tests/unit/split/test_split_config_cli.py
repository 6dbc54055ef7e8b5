from __future__ import annotations

import pytest

from edgecloud.cli.split import parse_link
from edgecloud.config import Settings
from edgecloud.errors import ConfigError, InvalidRequestError


def test_split_settings_have_bounds_and_name_the_field() -> None:
    s = Settings.load(None)
    assert s.split.encoding == "float16" and s.split.device_slowdown == 1.0
    with pytest.raises(ConfigError, match="device_slowdown"):
        Settings.load(None, split={"device_slowdown": 0.5})
    with pytest.raises(ConfigError, match="chunk_bytes"):
        Settings.load(None, split={"chunk_bytes": 10})
    with pytest.raises(ConfigError, match="encoding"):
        Settings.load(None, split={"encoding": "int4"})


@pytest.mark.parametrize(
    ("text", "bps"),
    [("10mbit", 10e6), ("1Mbit", 1e6), ("100mbps", 100e6), ("512kbit", 512e3), ("2.5gbit", 2.5e9)],
)
def test_parse_link(text: str, bps: float) -> None:
    assert parse_link(text) == pytest.approx(bps)


@pytest.mark.parametrize("text", ["fast", "0mbit", "-1mbit", "10 apples"])
def test_parse_link_refuses_nonsense(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="not a link bandwidth"):
        parse_link(text)
