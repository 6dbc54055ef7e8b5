"""Token hashing, and config that refuses plain text off loopback."""

from __future__ import annotations

import pytest

from edgecloud.config import CloudConfig, Settings
from edgecloud.errors import ConfigError
from edgecloud.transport import hash_token, new_token


def test_hash_is_sha256_hex_and_tokens_are_random() -> None:
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 40


def test_config_rejects_raw_tokens_in_place_of_digests() -> None:
    with pytest.raises(ConfigError, match="sha256"):
        Settings.load(cloud={"auth": {"tokens": {"dev1": "my-secret-token"}}})
    ok = Settings.load(cloud={"auth": {"tokens": {"dev1": hash_token("t")}}})
    assert ok.cloud.auth.tokens["dev1"] == hash_token("t")


@pytest.mark.parametrize(
    ("cloud", "message"),
    [
        ({}, "required"),
        ({"insecure": True, "host": "0.0.0.0"}, "loopback"),
        ({"tls": {"cert": "/x.pem"}}, "together"),
    ],
)
def test_plain_text_needs_explicit_loopback(cloud: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _credentials(CloudConfig.model_validate(cloud))


def test_insecure_loopback_is_allowed() -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        assert _credentials(CloudConfig(insecure=True, host=host)) is None


def _credentials(cloud: CloudConfig) -> object:
    from edgecloud.transport import server_credentials

    return server_credentials(cloud.tls, host=cloud.host, insecure=cloud.insecure, section="cloud")


def test_default_max_tokens_must_fit_the_limit() -> None:
    with pytest.raises(ConfigError, match="default_max_tokens"):
        Settings.load(cloud={"max_new_tokens": 64, "default_max_tokens": 128})
