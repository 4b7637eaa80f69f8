"""Reading refinery's line protocol back: series key, tags, fields and timestamp.

The inverse of :mod:`refinery.lineproto`, for the stages that look at points after the conversion
(filters, extra tags, recording rules) and for sinks that are not InfluxDB (Prometheus remote
write). It follows InfluxDB's own parser: a ``,`` ``=`` or space preceded by a backslash is part of
the name, and unescaping removes that backslash (``\\,`` ``\\=`` ``\\ ``); any other backslash stays.

Only the stages that are configured call this module: the enricher's hot path never does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .lineproto import escape_measurement, format_float, tag_pair

FieldValue = int | float | str | bool

_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_UNESCAPED_EQUALS = re.compile(r"(?<!\\)=")
_FIELD_KEY_ESCAPE = re.compile(r"([,= ])")
_ESCAPED = r"\\\1"


class LineError(ValueError):
    """A line that is not line protocol as refinery writes it."""


def series_end(line: str) -> int:
    """Index of the space that ends the series key (measurement and tags)."""
    index = line.find(" ")
    while index > 0 and line[index - 1] == "\\":
        index = line.find(" ", index + 1)
    if index <= 0:
        raise LineError(f"no field set in {line[:200]!r}")
    return index


def unescape_tag(text: str) -> str:
    if "\\" not in text:
        return text
    return text.replace("\\,", ",").replace("\\=", "=").replace("\\ ", " ")


def unescape_measurement(text: str) -> str:
    if "\\" not in text:
        return text
    return text.replace("\\,", ",").replace("\\ ", " ")


def split_series(series: str) -> tuple[str, list[str]]:
    """``measurement,k=v,k2=v2`` -> (escaped measurement, escaped ``k=v`` pairs)."""
    parts = series.split(",") if "\\" not in series else _UNESCAPED_COMMA.split(series)
    return parts[0], parts[1:]


def pair_key(pair: str) -> str:
    """The (escaped) key of an escaped ``k=v`` tag pair."""
    if "\\" not in pair:
        return pair.partition("=")[0]
    match = _UNESCAPED_EQUALS.search(pair)
    return pair[: match.start()] if match else pair


def parse_series(series: str) -> tuple[str, dict[str, str]]:
    """Unescaped measurement and tags of a series key."""
    measurement, pairs = split_series(series)
    tags: dict[str, str] = {}
    for pair in pairs:
        if "\\" in pair:
            match = _UNESCAPED_EQUALS.search(pair)
            if match is None:
                raise LineError(f"tag without '=' in {series[:200]!r}")
            tags[unescape_tag(pair[: match.start()])] = unescape_tag(pair[match.end() :])
        else:
            key, sep, value = pair.partition("=")
            if not sep:
                raise LineError(f"tag without '=' in {series[:200]!r}")
            tags[key] = value
    return unescape_measurement(measurement), tags


def _field_value(text: str) -> FieldValue:
    last = text[-1:]
    if last == "i" or last == "u":
        return int(text[:-1])
    if last == '"':
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if text in ("t", "T", "true", "True", "TRUE"):
        return True
    if text in ("f", "F", "false", "False", "FALSE"):
        return False
    return float(text)


def _split_fields(text: str) -> list[str]:
    """Split a field set on the commas outside string values and not escaped."""
    if '"' not in text and "\\" not in text:
        return text.split(",")
    parts: list[str] = []
    start = 0
    quoted = False
    i = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def parse_fields(text: str) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    for part in _split_fields(text):
        if "\\" in part:
            match = _UNESCAPED_EQUALS.search(part)
            if match is None:
                raise LineError(f"field without '=' in {text[:200]!r}")
            key = unescape_tag(part[: match.start()])
            raw = part[match.end() :]
        else:
            key, sep, raw = part.partition("=")
            if not sep:
                raise LineError(f"field without '=' in {text[:200]!r}")
        try:
            fields[key] = _field_value(raw)
        except ValueError as exc:
            raise LineError(f"field {key!r} has no valid value in {text[:200]!r}") from exc
    return fields


@dataclass(frozen=True, slots=True)
class ParsedLine:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    timestamp: int


def parse_line(line: str) -> ParsedLine:
    """One line of line protocol (with a timestamp) -> its parts, unescaped."""
    end = series_end(line)
    measurement, tags = parse_series(line[:end])
    fields_text, _, stamp = line[end + 1 :].rpartition(" ")
    if not fields_text:
        raise LineError(f"no timestamp in {line[:200]!r}")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise LineError(f"bad timestamp in {line[:200]!r}") from exc
    return ParsedLine(measurement, tags, parse_fields(fields_text), timestamp)


def format_field(key: str, value: FieldValue) -> str | None:
    """``key=value`` in line protocol, or None for a float the protocol cannot carry (NaN, ±Inf)."""
    if type(value) is bool:
        text = "true" if value else "false"
    elif type(value) is int:
        text = f"{value}i"
    elif type(value) is float:
        formatted = format_float(value)
        if formatted is None:
            return None
        text = formatted
    else:
        text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _FIELD_KEY_ESCAPE.sub(_ESCAPED, key) + "=" + text


def render_line(measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], timestamp: int) -> str:
    """A line with sorted tags (empty values left out) and sorted fields."""
    tag_text = "".join(tag_pair(k, v) for k, v in sorted(tags.items()))
    field_text = ",".join(f for k in sorted(fields) if (f := format_field(k, fields[k])) is not None)
    if not field_text:
        raise LineError(f"no field of {measurement!r} can be written")
    return f"{escape_measurement(measurement)}{tag_text} {field_text} {timestamp}"
