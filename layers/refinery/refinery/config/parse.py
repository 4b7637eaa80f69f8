"""How a setting's text becomes its value: the parsers (each with the kind it shows), errors, redaction.

Every parser is a :class:`Parser`: a function from the variable's text to its value that says its
*kind* (``int``, ``duration``, ``url``, ...), which ``refinery config`` and the README's settings table
show. A parser raises ``ValueError`` with a message a person can read; the loader prefixes it with
the setting's name (:class:`ConfigError`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from ..filters import parse_extra_tags as _parse_extra_tags
from ..filters import parse_regex as _parse_regex

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more settings are missing or malformed. ``problems`` holds one line per setting."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


class Parser(Generic[T]):
    """A setting's parser: called with the variable's text, it returns the value or raises ValueError.

    ``kind`` is what ``refinery config`` and the README call the value; ``free_text`` says the setting
    takes any text (a name, a path, a secret) rather than a value of a kind (only such a parser's kind
    is ``string``).
    """

    def __init__(self, kind: str, parse: Callable[[str], T], *, free_text: bool = False) -> None:
        self.kind = kind
        self.free_text = free_text
        self._parse = parse
        self.__name__ = parse.__name__
        self.__doc__ = parse.__doc__

    def __call__(self, text: str) -> T:
        return self._parse(text)

    def __repr__(self) -> str:
        return f"<parser {self.__name__}: {self.kind}>"


def parser(kind: str, *, free_text: bool = False) -> Callable[[Callable[[str], T]], Parser[T]]:
    """Decorate a parsing function as a :class:`Parser` of ``kind``."""

    def make(parse: Callable[[str], T]) -> Parser[T]:
        return Parser(kind, parse, free_text=free_text)

    return make


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@parser("duration")
def parse_duration(text: str) -> float:
    """``"90"`` / ``"90s"`` / ``"1.5m"`` / ``"500ms"`` / ``"2h"`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 500ms, 30s, 3m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


@parser("bool")
def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def _whole_number(text: str) -> int:
    """An integer, or a ValueError a person can read (not Python's "invalid literal for int()")."""
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number (for example 50)") from None


@parser("int")
def parse_positive_int(text: str) -> int:
    value = _whole_number(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be a positive integer")
    return value


def parse_bounded_int(low: int, high: int) -> Parser[int]:
    """Whole numbers from ``low`` to ``high``."""

    def parse(text: str) -> int:
        value = _whole_number(text)
        if not low <= value <= high:
            raise ValueError(f"{text!r} must be an integer from {low} to {high}")
        return value

    return Parser("int", parse)


@parser("int")
def parse_non_negative_int(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise ValueError(f"{text!r} must be zero or a positive integer")
    return value


@parser("duration")
def parse_positive_duration(text: str) -> float:
    """A duration that must be more than zero (a timeout, a longest wait): 0 is an error, not "default"."""
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be more than 0 (examples: 500ms, 10s)")
    return value


#: Query parameters that carry credentials (InfluxDB 1.x's ``u`` and ``p``, tokens, keys, signatures):
#: a URL setting holding one is refused like one with ``user:password@``.
CREDENTIAL_PARAMETERS = frozenset(
    {
        "u",
        "p",
        "user",
        "username",
        "password",
        "passwd",
        "pass",
        "pwd",
        "token",
        "access_token",
        "auth",
        "authorization",
        "api_key",
        "apikey",
        "api-key",
        "key",
        "secret",
        "client_secret",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    }
)
_PATH_VALUE = re.compile(r"=[^/;&]*")


def redact_url(text: str) -> str:
    """``text`` with what could be a credential replaced by ``***``: user-info, query values, fragment.

    For errors, logs and ``refinery config``. It works on anything a URL setting may hold, however
    malformed (no scheme, unencoded ``/`` ``?`` ``@`` in a password): everything up to the last ``@``
    is user-info; query parameters keep their names only (a bare ``?token`` is hidden whole).
    """
    value = text.strip()
    scheme, sep, rest = value.partition("://")
    head = f"{scheme}://" if sep else ""
    if not sep:
        rest = value
    at = rest.rfind("@")
    if at >= 0:
        head += "***@"
        rest = rest[at + 1 :]
    rest, hashed, _ = rest.partition("#")
    path, asked, query = rest.partition("?")
    path = _PATH_VALUE.sub("=***", path)
    if asked:
        pairs = []
        for pair in query.split("&"):
            name, equals, _ = pair.partition("=")
            pairs.append(f"{name}=***" if equals else ("***" if pair else ""))
        path += "?" + "&".join(pairs)
    return head + path + ("#***" if hashed else "")


def _check_url(text: str, *, base: bool) -> str:
    value = text.strip()
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        # Not echoed: without a scheme, user:password@host cannot be told from a host and a port.
        raise ValueError("is not an http(s) URL: it must start with http:// or https:// (value not shown)")
    before_query = value.split("?", 1)[0].split("#", 1)[0]
    if "@" in before_query or "@" in urlsplit(value).netloc:  # not echoed: a credential precedes the @
        raise ValueError("must not hold credentials (user:password@); give them in their own secret setting")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("has a port that is not a number (value not shown)") from None
    if not parts.hostname:
        raise ValueError(f"{redact_url(value)!r} has no host")
    for pair in parts.query.split("&") if parts.query else ():
        name, equals, _ = pair.partition("=")
        if equals and name.strip().lower() in CREDENTIAL_PARAMETERS:  # (a bare ?value is never echoed)
            raise ValueError(
                f"must not hold credentials in its query string ({name}=…); give them in their own "
                "secret setting"
            )
    if base and (parts.query or parts.fragment):
        raise ValueError(
            f"{redact_url(value)!r} must be a base URL, without a query string (?…) or fragment (#…)"
        )
    return value.rstrip("/")


@parser("url")
def parse_url(text: str) -> str:
    """An http(s) URL without credentials (user-info or a credential query parameter)."""
    return _check_url(text, base=False)


@parser("url")
def parse_base_url(text: str) -> str:
    """:func:`parse_url` for a base URL that paths are appended to: no query string or fragment."""
    return _check_url(text, base=True)


@parser("string", free_text=True)
def parse_s3_key(text: str) -> str:
    key = text.strip().lstrip("/")
    if not key:
        raise ValueError("must not be empty")
    return key


@parser("share")
def parse_share(text: str) -> float:
    try:
        value = float(text.strip().rstrip("%")) / (100.0 if text.strip().endswith("%") else 1.0)
    except ValueError:
        raise ValueError(f"{text!r} is not a share (for example 0.5 or 50%)") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text!r} must be a share between 0 and 1 (or 0% and 100%)")
    return value


@parser("string", free_text=True)
def parse_text(text: str) -> str:
    """Any text, as given (a name, a path, a secret)."""
    return text


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL_KEY = re.compile(rf"^({_DNS_LABEL}(\.{_DNS_LABEL})*/)?[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$")


@parser("list")
def parse_label_keys(text: str) -> tuple[str, ...]:
    """``a.example.com/database, tier`` -> the label keys, each as Cloud Foundry allows one."""
    keys = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        if not _LABEL_KEY.match(key) or len(name) > 63 or len(key) - len(name) > 254:
            raise ValueError(f"{key!r} is not a Cloud Foundry label key (like metrics.example.com/database)")
    return keys


#: Regular expressions (filters) and extra tags: parsed by :mod:`refinery.filters`.
parse_regex = Parser("regex", _parse_regex)
parse_extra_tags = Parser("tags", _parse_extra_tags)
