"""Ed25519 signatures over adapter manifests.

The cloud signs :meth:`Manifest.to_json`; a device checks the signature over
those exact bytes with a key it trusts (``device.adapters.public_keys``) and
only then parses them. A key is named by its *key id*: the first 16 hex digits
of the sha256 of its 32 raw public bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgecloud.adapters._manifest import Manifest
from edgecloud.errors import AdapterSignatureError, ConfigError

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "SignedManifest",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_keys",
    "public_key_b64",
    "sign",
    "verify",
]

PRIVATE_KEY_FILE = "signing_key.pem"
PUBLIC_KEY_FILE = "signing_key.pub"


@dataclass(frozen=True)
class SignedManifest:
    """Manifest bytes as signed, the signature, and the id of the signing key."""

    manifest_json: bytes
    signature: bytes
    key_id: str

    def unverified(self) -> Manifest:
        """The manifest parsed *without* checking the signature (for listings, not trust).

        Raises:
            AdapterFormatError: the bytes are not a valid manifest.
        """
        return Manifest.from_json(self.manifest_json)


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 over the 32 raw public key bytes."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def public_key_b64(public: Ed25519PublicKey) -> str:
    """The public key as base64 of its 32 raw bytes (the form settings take)."""
    return base64.b64encode(_raw(public)).decode("ascii")


def generate_keypair(out_dir: Path) -> tuple[Path, str]:
    """Make a new signing key in ``out_dir``.

    Writes ``signing_key.pem`` (PKCS#8 PEM, mode 0600, never overwritten) and
    ``signing_key.pub`` (base64 of the raw public key, for ``public_keys``).

    Returns:
        The private key's path and the base64 public key.

    Raises:
        ConfigError: a key already exists there, or the directory is not writable.
    """
    out_dir = out_dir.expanduser()
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = public_key_b64(private.public_key())
    path = out_dir / PRIVATE_KEY_FILE
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never replace a key that may already sign a fleet's adapters;
        # 0600 from the start, so the key is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; refusing to overwrite a signing key") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    (out_dir / PUBLIC_KEY_FILE).write_text(public + "\n", encoding="ascii")
    return path, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file.

    Raises:
        ConfigError: unreadable, not PEM, encrypted, or not an Ed25519 key.
    """
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


def _public_key(value: str | Path) -> Ed25519PublicKey:
    text = str(value).strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == 32:
        return Ed25519PublicKey.from_public_bytes(raw)
    path = Path(text).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"public key {text[:60]!r} is neither base64 of 32 raw bytes nor a readable file"
        ) from exc
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == 32:  # a signing_key.pub file
        return Ed25519PublicKey.from_public_bytes(raw)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} holds no PEM or base64 public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def load_public_keys(values: Iterable[str | Path]) -> dict[str, Ed25519PublicKey]:
    """Trusted keys by key id, from base64 strings, ``.pub`` files or PEM files.

    Raises:
        ConfigError: a value is none of those.
    """
    keys = (_public_key(v) for v in values)
    return {key_id(k): k for k in keys}


def sign(manifest: Manifest, key: Ed25519PrivateKey) -> SignedManifest:
    """Sign the manifest's canonical JSON bytes."""
    data = manifest.to_json()
    return SignedManifest(data, key.sign(data), key_id(key.public_key()))


def verify(signed: SignedManifest, trusted: Mapping[str, Ed25519PublicKey]) -> Manifest:
    """Check the signature over the exact bytes, then parse them.

    Raises:
        AdapterSignatureError: unsigned, signed by a key not in ``trusted``, or the
            signature does not match the bytes.
        AdapterFormatError: correctly signed, but not a valid manifest.
    """
    if not signed.signature:
        raise AdapterSignatureError("adapter manifest is unsigned")
    public = trusted.get(signed.key_id)
    if public is None:
        raise AdapterSignatureError(
            f"adapter manifest is signed by untrusted key {signed.key_id[:16]!r}"
        )
    try:
        public.verify(signed.signature, signed.manifest_json)
    except InvalidSignature:
        raise AdapterSignatureError(
            f"adapter manifest signature does not verify (key {signed.key_id})"
        ) from None
    return Manifest.from_json(signed.manifest_json)
