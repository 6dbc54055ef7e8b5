"""Security settings of a gRPC server, shared by every service edgecloud serves.

``[cloud.tls]`` / ``[cloud.auth]`` and ``[split.serve.tls]`` / ``[split.serve.auth]``
are these models (the cloud's auth adds its adapter permissions), so both
services read certificates and token digests the same way.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from edgecloud.common.settings import Section

__all__ = ["AuthConfig", "TlsConfig"]


class TlsConfig(Section):
    """TLS of a service; mTLS when `client_ca` is set."""

    cert: Path | None = Field(None, description="PEM server certificate chain.")
    key: Path | None = Field(None, description="PEM private key of `cert`.")
    client_ca: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed."
    )


class AuthConfig(Section):
    """Per-device bearer tokens, stored as sha256 hex digests (`edgecloud cloud hash-token`)."""

    tokens: dict[str, str] = Field(
        default_factory=dict,
        description="device id -> sha256 hex digest of its token; empty disables auth.",
    )

    @field_validator("tokens")
    @classmethod
    def _hashes_are_sha256(cls, value: dict[str, str]) -> dict[str, str]:
        for device, digest in value.items():
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"token of {device!r} must be a sha256 hex digest, not a token")
        return value
