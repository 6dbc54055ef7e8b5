"""Maintained detectors of secrets and personal data, for the privacy policy.

The built-in regular expressions of :data:`~edgecloud.router.DEFAULT_PRIVACY_PATTERNS`
catch e-mail, phone, card, SSN and IBAN. Credentials and the rest of the personal
data a prompt may carry have too many shapes for a handful of patterns, so two
maintained libraries look too, both in-process and without any model:

* ``secrets``: the plugins of `detect-secrets <https://github.com/Yelp/detect-secrets>`_
  (AWS, GitHub, GitLab, Slack, Stripe, JWT, private keys, ``password = …`` and ~20
  more), each run on the prompt with ``analyze_string`` and the library's own
  false-positive heuristics; plus a pattern for today's ``sk-…`` API keys, which its
  OpenAI plugin (legacy key format only) misses.
* ``pii``: the *pattern* recognizers of
  `presidio-analyzer <https://github.com/microsoft/presidio>`_ (IP and MAC addresses,
  dates of birth) and three of ours in the same form (street addresses, ``password:``
  text, dates of birth written with a month name). No spaCy model is loaded: each
  recognizer is called directly, without an NLP engine.

Both come with the ``privacy`` extra and load when the policy is built, not at
``import edgecloud``. Without them each detector falls back, with a warning, to a
smaller set of our own patterns (:data:`FALLBACK_PATTERNS`); ``strict`` makes a
missing library an error instead. Detection stays pure computation (no I/O, no
clock), as the router requires.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias, cast

from edgecloud.errors import ConfigError

__all__ = [
    "DEFAULT_PII_ENTITIES",
    "DETECTORS",
    "FALLBACK_PATTERNS",
    "OWN_PII_PATTERNS",
    "PrivacyDetectors",
]

log = logging.getLogger(__name__)

Detector: TypeAlias = Literal["secrets", "pii"]
DETECTORS: tuple[Detector, ...] = ("secrets", "pii")

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DOB_CUE = r"(?i:\bborn\b|\bbirth(?:day|date)?\b|\bd\.?o\.?b\b\.?|\bdate\s+of\s+birth\b)"
_DATE = (
    r"(?:\d{1,4}[./-]\d{1,2}[./-]\d{2,4}"
    rf"|(?:\d{{1,2}}(?:st|nd|rd|th)?\s+)?(?i:{_MONTH})\.?\s+(?:\d{{1,2}}(?:st|nd|rd|th)?,?\s+)?\d{{4}})"
)
_STREET_SUFFIX = (
    r"(?i:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl"
    r"|square|sq|terrace|way|parkway|pkwy|highway|hwy|crescent|close)"
)

OWN_PII_PATTERNS: Mapping[str, str] = {
    # A house number, one to four capitalised words, a street type ("221B Baker Street",
    # "1600 Pennsylvania Avenue NW"); a German-style "Hauptstraße 5"; a P.O. box. The
    # capitals keep "5 hours on the way" out.
    "STREET_ADDRESS": (
        r"\b\d{1,5}[A-Za-z]?(?:[-/]\d{1,4})?,?\s+(?:[A-Z][A-Za-z'.-]*\s+){1,4}"
        rf"{_STREET_SUFFIX}\b\.?"
        r"|\b[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|weg|gasse|platz|allee)\s+\d{1,4}[a-z]?\b"
        r"|\bP\.?\s?O\.?\s+Box\s+\d{1,6}\b"
    ),
    # "password: x", "passwd=x", "PIN: 1234", "my password is hunter2": a value of 4+
    # characters with a digit or a symbol, so "the password is case-sensitive" is not one.
    "PASSWORD": (
        r"(?:(?i:(?<![A-Za-z0-9])(?:pass(?:word|wd|phrase|code)|pwd)\b)\s*(?:[:=]|\bis\b)|(?i:\bpin\b)\s*[:=])"
        r"\s*[\"']?"
        r"(?=[^\s\"']*(?:\d|[^\w\s\"'.,;:!?-]))[^\s\"']{4,}"
    ),
    # A cue ("born", "DOB", "date of birth") then, within a few words, a full date.
    "DATE_OF_BIRTH": rf"{_DOB_CUE}[^.\n\d]{{0,20}}?{_DATE}",
}
"""Our own pattern recognizers (presidio has none for these), in presidio's form when
it is installed and as plain regular expressions when not."""

DEFAULT_PII_ENTITIES: tuple[str, ...] = (
    "IP_ADDRESS",
    "MAC_ADDRESS",
    "DATE_OF_BIRTH",
    "STREET_ADDRESS",
    "PASSWORD",
)
"""Presidio entity names checked by default; any of presidio's pattern recognizers
(e.g. ``CRYPTO``, ``US_PASSPORT``, ``UK_NHS``) may be named in ``entities``."""

_SK_KEY = r"\bsk-(?:[a-z]+-)?(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{20,}"

FALLBACK_PATTERNS: Mapping[Detector, Mapping[str, str]] = {
    "secrets": {
        "aws_access_key": r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
        "api_key": _SK_KEY,
        "github_token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b",
        "gitlab_token": r"\bglpat-[A-Za-z0-9_-]{20,}",
        "slack_token": r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
        "private_key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        "jwt_token": r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        "secret_keyword": (
            r"(?i:(?<![A-Za-z0-9])(?:api_?key|secret(?:_?access)?(?:_?key)?|access_?token"
            r"|auth_?token|token)\b)"
            r"\s*[:=]\s*[\"']?[A-Za-z0-9_/+.-]{12,}"
        ),
    },
    "pii": {
        # IPv4 only; the digits first keep it fast on long prompts
        "ip_address": r"\b\d{1,3}(?:\.\d{1,3}){3}\b(?!\.\d)",
        **{k.lower(): v for k, v in OWN_PII_PATTERNS.items()},
    },
}
"""Used, with a warning, for a detector whose library is not installed."""


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


Finder: TypeAlias = Callable[[str], list[str]]


def _regex_finder(patterns: Mapping[str, str]) -> Finder:
    compiled = [(k, re.compile(v)) for k, v in patterns.items()]

    def find(text: str) -> list[str]:
        return [k for k, rx in compiled if rx.search(text)]

    return find


def _secrets_finder() -> Finder:
    """detect-secrets' plugins, each asked about the whole prompt (no settings, no
    verification requests: ``analyze_string`` is the pure part of a plugin)."""
    import detect_secrets  # noqa: F401 - first: whether the package itself is installed
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.filters import heuristic
    from detect_secrets.plugins.base import BasePlugin
    from detect_secrets.plugins.keyword import DENYLIST_REGEX, REGEX_BY_FILETYPE, KeywordDetector
    from detect_secrets.util.filetype import FileType

    # IP addresses are the pii detector's (and a public-IP plugin would miss private ones).
    # The high-entropy plugins flag any quoted random-looking string: the property names of
    # a JSON schema, tool names, hashes in a log line; a prompt for structured output was
    # kept off the cloud by them. Credentials are caught by the keyword plugin (a secret
    # after "password", "secret", "token"...), the providers' own plugins and the key
    # pattern below.
    skipped = {"IPPublicDetector", "Base64HighEntropyString", "HexHighEntropyString"}
    plugins: list[BasePlugin] = [
        cls()
        for cls in cast(
            Iterable[type[BasePlugin]], get_mapping_from_secret_type_to_class().values()
        )
        if cls.__name__ not in skipped
    ]
    # `key: value` and `key = value` without quotes, as in a config file: how a prompt
    # pastes credentials (the default form needs quotes).
    keyword_rx: dict[re.Pattern[str], int] = REGEX_BY_FILETYPE[FileType.CONFIG]
    # the keyword plugin's regexes are the slowest part on a long prompt: asked only when
    # one of its keywords is there at all
    has_keyword = re.compile(DENYLIST_REGEX, re.IGNORECASE)
    sk_key = re.compile(_SK_KEY)

    def false_positive(secret: str, line: str, plugin: BasePlugin) -> bool:
        return bool(
            heuristic.is_sequential_string(secret)
            or heuristic.is_potential_uuid(secret)
            or heuristic.is_templated_secret(secret)
            or heuristic.is_prefixed_with_dollar_sign(secret)
            or heuristic.is_likely_id_string(secret, line, plugin)
            or heuristic.is_indirect_reference(line)
            # prose after "password:" is a question about passwords, not one
            or (isinstance(plugin, KeywordDetector) and any(ch.isspace() for ch in secret))
        )

    def find(text: str) -> list[str]:
        kinds: list[str] = []
        for plugin in plugins:
            kwargs: dict[str, Any] = {}
            if isinstance(plugin, KeywordDetector):
                if not has_keyword.search(text):
                    continue
                kwargs["denylist_regex_to_group"] = keyword_rx
            for secret in plugin.analyze_string(text, **kwargs):
                if not false_positive(secret, text, plugin):
                    kinds.append(_slug(plugin.secret_type))
                    break
        if sk_key.search(text):
            kinds.append("api_key")
        return kinds

    return find


def _pii_finder(entities: Sequence[str]) -> Finder:
    """presidio's pattern recognizers for ``entities``, and ours in the same form.

    Each is called as ``recognizer.analyze(text, entities, None)``: with no NLP
    artifacts there is no spaCy model to load and no context scoring, so a match at
    or above ``_MIN_SCORE`` counts (dates count only next to a birth cue).
    """
    from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer
    from presidio_analyzer import predefined_recognizers as predefined

    wanted = set(entities)
    recognizers: list[EntityRecognizer] = []
    for entity, rx in OWN_PII_PATTERNS.items():
        if entity in wanted:
            recognizers.append(
                PatternRecognizer(
                    supported_entity=entity,
                    name=f"edgecloud_{entity.lower()}",
                    patterns=[Pattern(entity.lower(), rx, 0.6)],
                    # our patterns carry their own case rules: (?i:…) where case is free
                    global_regex_flags=re.MULTILINE,
                )
            )
    for name in dir(predefined):
        cls: object = getattr(predefined, name)
        if (
            isinstance(cls, type)
            and issubclass(cls, PatternRecognizer)
            and cls is not PatternRecognizer
            and _default_entity(cls) in wanted
        ):
            recognizers.append(cls())  # type: ignore[call-arg]  # predefined: no argument
    dates = predefined.DateRecognizer() if "DATE_OF_BIRTH" in wanted else None
    cue = re.compile(rf"{_DOB_CUE}[^.\n\d]{{0,20}}$")
    targets = sorted(wanted)

    def find(text: str) -> list[str]:
        kinds: set[str] = set()
        for rec in recognizers:
            # a pattern recognizer takes no NLP artifacts (None): no spaCy model runs
            for r in rec.analyze(text, targets, None) or []:  # type: ignore[arg-type]
                if r.score >= _MIN_SCORE and r.entity_type in wanted:
                    kinds.add(r.entity_type.lower())
        if dates is not None and "date_of_birth" not in kinds and _has_cue(text):
            for r in dates.analyze(text, ["DATE_TIME"], None) or []:
                if r.score >= _MIN_SCORE and cue.search(text, 0, r.start):
                    kinds.add("date_of_birth")
                    break
        return sorted(kinds)

    return find


_MIN_SCORE = 0.3


def _default_entity(cls: type) -> str | None:
    """The entity a predefined recognizer finds when built with no argument (read off
    its signature: building all of them just to ask would take a while)."""
    param = inspect.signature(cls).parameters.get("supported_entity")
    default = None if param is None else param.default
    return default if isinstance(default, str) else None


_CUE_RX = re.compile(_DOB_CUE)


def _has_cue(text: str) -> bool:
    return _CUE_RX.search(text) is not None


_LIBRARIES: Mapping[Detector, tuple[str, str]] = {
    "secrets": ("detect_secrets", "detect-secrets"),
    "pii": ("presidio_analyzer", "presidio-analyzer"),
}


_WARNED: set[str] = set()


class PrivacyDetectors:
    """The detectors beyond the built-in patterns, as one ``matches(text)``.

    Args:
        detectors: which to run (:data:`DETECTORS`).
        entities: presidio entity names for ``pii``; None = :data:`DEFAULT_PII_ENTITIES`.
        strict: a detector whose library is missing is a :class:`~edgecloud.errors.ConfigError`
            (default: fall back to :data:`FALLBACK_PATTERNS`, with a warning).

    Raises:
        ConfigError: an unknown detector, or (``strict``) a missing library.
    """

    def __init__(
        self,
        detectors: Iterable[str] = DETECTORS,
        *,
        entities: Sequence[str] | None = None,
        strict: bool = False,
    ) -> None:
        self.detectors: tuple[str, ...] = tuple(dict.fromkeys(detectors))
        self.check(self.detectors)
        self.entities = tuple(DEFAULT_PII_ENTITIES if entities is None else entities)
        self.fallback: list[str] = []
        """The detectors running on :data:`FALLBACK_PATTERNS` (their library is missing)."""
        self._finders: list[Finder] = []
        for name in self.detectors:
            module, package = _LIBRARIES[name]  # type: ignore[index]
            try:
                finder = _secrets_finder() if name == "secrets" else _pii_finder(self.entities)
            except ImportError as exc:
                if strict:
                    raise ConfigError(
                        f"privacy detector {name!r} needs {package} ({exc}); "
                        "install the extra: pip install 'edgecloud[privacy]'"
                    ) from exc
                if name not in _WARNED:  # once per process, not per engine
                    _WARNED.add(name)
                    log.warning(
                        "privacy detector %r: %s is not installed (pip install "
                        "'edgecloud[privacy]'); using the built-in fallback patterns, which "
                        "catch less",
                        name,
                        module,
                    )
                self.fallback.append(name)
                fallback = FALLBACK_PATTERNS[name]  # type: ignore[index]
                if name == "pii":
                    wanted = {e.lower() for e in self.entities}
                    fallback = {k: v for k, v in fallback.items() if k in wanted}
                finder = _regex_finder(fallback)
            self._finders.append(finder)

    @staticmethod
    def check(detectors: Iterable[str], *, strict: bool = False) -> None:
        """Fail now, without importing them, where :class:`PrivacyDetectors` would fail:
        an unknown detector, or (``strict``) a library that is not installed.

        Raises:
            ConfigError: as :class:`PrivacyDetectors` would.
        """
        for name in detectors:
            if name not in DETECTORS:
                raise ConfigError(f"unknown privacy detector {name!r}; known: {list(DETECTORS)}")
            module, package = _LIBRARIES[name]
            if strict and importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"privacy detector {name!r} needs {package}, which is not installed; "
                    "install the extra: pip install 'edgecloud[privacy]'"
                )

    def matches(self, text: str) -> list[str]:
        """Kinds of sensitive data found in ``text`` (e.g. ``aws_access_key``, ``ip_address``)."""
        found: list[str] = []
        for find in self._finders:
            found.extend(k for k in find(text) if k not in found)
        return found
