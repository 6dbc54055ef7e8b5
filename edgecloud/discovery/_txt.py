"""The TXT records of edgecloud services: what they say, written and read defensively.

Everything in a TXT record comes from whoever answered on the LAN, so reading one
never trusts it: sizes are capped, every field is checked, unknown keys are ignored
(newer services may add some), and a record that breaks a rule is refused whole
(:class:`~edgecloud.errors.DiscoveryError`) so the browser skips that service. None of
it is proof of identity: the fingerprint is checked against the certificate the
service presents (see :mod:`edgecloud.discovery._tls`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgecloud.errors import DiscoveryError

__all__ = [
    "MAX_TXT_BYTES",
    "PROTOCOL_VERSION",
    "CloudAdvert",
    "DeviceAdvert",
    "RawTxt",
    "decode_txt",
]

PROTOCOL_VERSION = 1
"""The ``v`` key; a record of another version is skipped (its meaning is unknown)."""
MAX_TXT_BYTES = 1300
"""Largest TXT record read (and written): what fits one mDNS packet with the rest of the
answer. A larger one is refused as a flood, not truncated."""
MAX_ENTRY_BYTES = 255
"""One ``key=value`` string: DNS's limit for a character-string."""
MAX_ITEMS = 16
"""Entries of one list (kinds, models, adapters)."""

RawTxt = Mapping[bytes, bytes | None] | Mapping[str, str | None]
"""A TXT record as zeroconf gives it (bytes) or as code writes it (str)."""

_KIND = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_ADAPTER = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})(?:@([0-9]{1,9}))?$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_PATH = re.compile(r"^/[A-Za-z0-9._~/-]{0,63}$")
_MAX_NAME = 128
_MAX_LOAD = 1000.0


def decode_txt(properties: RawTxt | None) -> dict[str, str]:
    """Keys (lower case) to values of a raw TXT record, as zeroconf gives it.

    Raises:
        DiscoveryError: too large, an entry over 255 bytes, a key that is not printable
            ASCII, or a value that is not UTF-8.
    """
    if not properties:
        raise DiscoveryError("the service has no TXT record")
    total = 0
    out: dict[str, str] = {}
    for raw_key, raw_value in properties.items():
        key_b = raw_key.encode() if isinstance(raw_key, str) else bytes(raw_key)
        value_b = raw_value.encode() if isinstance(raw_value, str) else bytes(raw_value or b"")
        size = len(key_b) + 1 + len(value_b)
        total += size + 1
        if size > MAX_ENTRY_BYTES:
            raise DiscoveryError(f"TXT entry {key_b[:16]!r}... is {size} bytes (limit 255)")
        if total > MAX_TXT_BYTES:
            raise DiscoveryError(f"TXT record over {MAX_TXT_BYTES} bytes")
        try:
            key = key_b.decode("ascii")
            value = value_b.decode("utf-8")
        except UnicodeDecodeError:
            raise DiscoveryError(f"TXT entry {key_b[:16]!r} is not text") from None
        if not key.isprintable() or not value.isprintable():
            raise DiscoveryError(f"TXT entry {key[:16]!r} holds control characters")
        out[key.lower()] = value
    return out


def _version(txt: Mapping[str, str]) -> int:
    v = txt.get("v")
    if v != str(PROTOCOL_VERSION):
        raise DiscoveryError(f"protocol version {v!r} is not {PROTOCOL_VERSION}")
    return PROTOCOL_VERSION


def _items(txt: Mapping[str, str], key: str) -> list[str]:
    value = txt.get(key, "")
    items = [s for s in value.split(",") if s] if value else []
    if len(items) > MAX_ITEMS:
        raise DiscoveryError(f"TXT {key!r} lists {len(items)} entries (limit {MAX_ITEMS})")
    return items


def _tls(txt: Mapping[str, str]) -> tuple[bool, str | None]:
    raw = txt.get("tls", "1")
    if raw not in ("0", "1"):
        raise DiscoveryError(f"TXT 'tls' is {raw[:16]!r}, not 0 or 1")
    tls = raw == "1"
    fp = txt.get("fp")
    if fp is not None:
        fp = fp.lower()
        if not _FINGERPRINT.match(fp):
            raise DiscoveryError("TXT 'fp' is not a SHA-256 fingerprint (64 hex digits)")
    if tls and fp is None:
        raise DiscoveryError("the service advertises TLS but no certificate fingerprint")
    return tls, fp


def _name(value: str, what: str) -> str:
    if len(value) > _MAX_NAME:
        raise DiscoveryError(f"TXT {what} name is {len(value)} characters (limit {_MAX_NAME})")
    return value


def _clean(value: str) -> str:
    """A name as it can travel in a comma list: no commas, no control characters."""
    return "".join(c for c in value if c.isprintable() and c != ",")[:_MAX_NAME]


def _encode(entries: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Entries as a TXT dict; lists that would break a limit lose their tail items."""
    out: dict[str, str] = {}
    total = 0
    for key, value in entries:
        while len(key) + 1 + len(value.encode()) > MAX_ENTRY_BYTES and "," in value:
            value = value.rsplit(",", 1)[0]
        value = value.encode()[: MAX_ENTRY_BYTES - len(key) - 1].decode("utf-8", "ignore")
        size = len(key) + 2 + len(value.encode())
        if total + size > MAX_TXT_BYTES:
            break
        total += size
        out[key] = value
    return out


@dataclass(frozen=True)
class CloudAdvert:
    """What a cloud service says about itself (``_edgecloud._tcp``).

    Attributes:
        kinds: services on the port: ``inference``, ``adapters``, ``split``.
        models: model names served.
        adapters: adapter lines and their stable versions (None: not known).
        tls: whether the port speaks TLS.
        fingerprint: SHA-256 (hex) of the DER server certificate; a claim to check.
        load: sequences running and queued per running slot (0 idle, 1 full, more:
            a queue); None: not said.
    """

    kinds: tuple[str, ...] = ("inference",)
    models: tuple[str, ...] = ()
    adapters: tuple[tuple[str, int | None], ...] = ()
    tls: bool = True
    fingerprint: str | None = None
    load: float | None = None
    version: int = field(default=PROTOCOL_VERSION)

    def to_txt(self) -> dict[str, str]:
        """The TXT record (lists trimmed to fit the size limits)."""
        adapters = [f"{_clean(a)}@{v}" if v is not None else _clean(a) for a, v in self.adapters]
        entries = [
            ("v", str(self.version)),
            ("tls", "1" if self.tls else "0"),
            *([("fp", self.fingerprint)] if self.fingerprint else []),
            *([("load", f"{self.load:.2f}")] if self.load is not None else []),
            ("kinds", ",".join(self.kinds[:MAX_ITEMS])),
            ("models", ",".join(_clean(m) for m in self.models[:MAX_ITEMS])),
            ("adapters", ",".join(adapters[:MAX_ITEMS])),
        ]
        return _encode(entries)

    @classmethod
    def from_txt(cls, properties: RawTxt | None) -> CloudAdvert:
        """Read a TXT record.

        Raises:
            DiscoveryError: it breaks a rule (size, version, a malformed field).
        """
        txt = decode_txt(properties)
        version = _version(txt)
        kinds = _items(txt, "kinds")
        if not kinds or not all(_KIND.match(k) for k in kinds):
            raise DiscoveryError("TXT 'kinds' is missing or malformed")
        models = [_name(m, "model") for m in _items(txt, "models")]
        adapters: list[tuple[str, int | None]] = []
        for item in _items(txt, "adapters"):
            m = _ADAPTER.match(item)
            if m is None:
                raise DiscoveryError(f"TXT adapter entry {item[:32]!r} is malformed")
            adapters.append((m.group(1), int(m.group(2)) if m.group(2) else None))
        tls, fp = _tls(txt)
        load = None
        if "load" in txt:
            try:
                load = float(txt["load"])
            except ValueError:
                raise DiscoveryError(f"TXT 'load' is {txt['load'][:16]!r}") from None
            if not math.isfinite(load) or not 0.0 <= load <= _MAX_LOAD:
                raise DiscoveryError(f"TXT 'load' {load} is out of range")
        return cls(tuple(kinds), tuple(models), tuple(adapters), tls, fp, load, version)


@dataclass(frozen=True)
class DeviceAdvert:
    """What a device says about its HTTP endpoint (``_edgecloud-dev._tcp``).

    Attributes:
        path: the API root (``/v1`` for the OpenAI-compatible endpoint).
        model: the model it answers with.
        tls: whether the port speaks TLS (https).
        fingerprint: SHA-256 (hex) of its certificate, when TLS.
    """

    path: str = "/v1"
    model: str = ""
    tls: bool = False
    fingerprint: str | None = None
    version: int = field(default=PROTOCOL_VERSION)

    def to_txt(self) -> dict[str, str]:
        entries = [
            ("v", str(self.version)),
            ("tls", "1" if self.tls else "0"),
            *([("fp", self.fingerprint)] if self.fingerprint else []),
            ("path", self.path),
            ("model", _clean(self.model)),
        ]
        return _encode(entries)

    @classmethod
    def from_txt(cls, properties: RawTxt | None) -> DeviceAdvert:
        """Read a TXT record.

        Raises:
            DiscoveryError: it breaks a rule.
        """
        txt = decode_txt(properties)
        version = _version(txt)
        path = txt.get("path", "/v1")
        if not _PATH.match(path):
            raise DiscoveryError(f"TXT 'path' {path[:32]!r} is malformed")
        model = _name(txt.get("model", ""), "model")
        tls, fp = _tls(txt)
        return cls(path, model, tls, fp, version)
