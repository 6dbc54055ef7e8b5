"""The server's state, without a model."""

from __future__ import annotations

import pytest

from edgecloud.config import Settings
from edgecloud.errors import ConfigError
from edgecloud.http import OpenAIServer


def test_short_api_keys_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match="api_keys") as info:
        OpenAIServer(Settings.load(device={"http": {"api_keys": ["a-long-enough-key", "tiny"]}}))
    assert "tiny" not in str(info.value) and "a-long-enough-key" not in str(info.value)
