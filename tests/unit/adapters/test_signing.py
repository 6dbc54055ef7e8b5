"""Ed25519 keys, signing and verification of manifest bytes."""

from __future__ import annotations

import dataclasses
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgecloud.adapters._manifest import Manifest
from edgecloud.adapters._signing import (
    SignedManifest,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_keys,
    sign,
    verify,
)
from edgecloud.errors import AdapterFormatError, AdapterSignatureError, ConfigError

SHA = "cd" * 32


def _manifest() -> Manifest:
    return Manifest(
        adapter_id="a", version=1, base_model_sha256=SHA, base_architecture="gemma3", rank=4,
        alpha=8, target_modules=("q_proj",), created_at=datetime(2026, 1, 1, tzinfo=UTC),
        files={"adapter.gguf": {"sha256": SHA, "size": 3}},
    )  # fmt: skip


def test_keygen_writes_private_0600_and_loadable_public(tmp_path: Path) -> None:
    priv_path, public = generate_keypair(tmp_path / "keys")
    assert stat.S_IMODE(priv_path.stat().st_mode) == 0o600
    key = load_private_key(priv_path)
    keys = load_public_keys([public])
    assert list(keys) == [key_id(key.public_key())]
    # the .pub file and a PEM public key load to the same key id
    pem = tmp_path / "pub.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert load_public_keys([str(pem), priv_path.with_suffix(".pub")]).keys() == keys.keys()
    with pytest.raises(ConfigError):
        generate_keypair(tmp_path / "keys")  # never overwrites


def test_bad_key_material_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_public_keys(["not-a-key"])
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    with pytest.raises(ConfigError):
        load_private_key(junk)
    with pytest.raises(ConfigError):
        load_private_key(tmp_path / "missing.pem")


def test_sign_verify_round_trip_and_failures() -> None:
    key = Ed25519PrivateKey.generate()
    trusted = load_public_keys([_b64(key)])
    signed = sign(_manifest(), key)
    assert verify(signed, trusted) == _manifest()

    tampered = dataclasses.replace(
        signed, manifest_json=signed.manifest_json.replace(b'"rank":4', b'"rank":5')
    )
    with pytest.raises(AdapterSignatureError, match="does not verify"):
        verify(tampered, trusted)
    with pytest.raises(AdapterSignatureError, match="unsigned"):
        verify(dataclasses.replace(signed, signature=b""), trusted)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(AdapterSignatureError, match="untrusted"):
        verify(sign(_manifest(), other), trusted)
    with pytest.raises(AdapterSignatureError, match="untrusted"):
        verify(signed, {})
    # a signature by another key under the trusted key's id does not verify
    forged = dataclasses.replace(sign(_manifest(), other), key_id=signed.key_id)
    with pytest.raises(AdapterSignatureError):
        verify(forged, trusted)


def test_signed_garbage_is_a_format_error() -> None:
    key = Ed25519PrivateKey.generate()
    data = b'{"adapter_id": "../../etc"}'
    signed = SignedManifest(data, key.sign(data), key_id(key.public_key()))
    with pytest.raises(AdapterFormatError):
        verify(signed, load_public_keys([_b64(key)]))


def _b64(key: Ed25519PrivateKey) -> str:
    from edgecloud.adapters._signing import public_key_b64

    return public_key_b64(key.public_key())
