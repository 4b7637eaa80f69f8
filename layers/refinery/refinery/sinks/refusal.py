"""What a server's refusal says about the lines it refused: read so they are isolated in a few requests.

Each server words a refusal its own way; what each says, and what the sink does with it:

* **InfluxDB 1.x** (``/write``, 400) and **2.x** (``/api/v2/write``, 422): ``partial write: field type
  conflict: input field "duration" on measurement "http_request" is type float, already exists as
  type integer dropped=N``. The other points *were written*; only the first conflict is named, and
  ``dropped`` counts every point refused. Field types are kept per shard (a time range), so lines of
  that measurement with that field of that type conflict in some shards and not in others. The sink
  re-sends the other lines (they are confirmed, or name the next conflict), then the suspects:
  when the others went through and ``dropped`` equals the number of suspects, every suspect was
  refused, with no further request; otherwise the suspects, sorted by time (a shard is a time
  range), are halved until each part is all written or all refused (``dropped`` = its size).
* InfluxDB 1.x ``partial write: unable to parse '<line>': <reason>`` (one per line) and 2.x
  ``unable to parse '<line>': <reason>`` (then nothing of the request was written): the lines are
  named; they are refused and the rest is sent again.
* **InfluxDB 3** (Core, Enterprise, Cloud Serverless/Dedicated; 400):
  ``{"error": "partial write of line protocol occurred", "data": [{"original_line": …,
  "line_number": 2, "error_message": "invalid column type for column 'duration', expected
  iox::column_type::field::integer, got iox::column_type::field::float"}, …]}`` names up to 100
  refused lines by number (from 1) with their own message; the rest was written. They are refused
  and the rest sent again (which names the next ones, if more than 100).
* **VictoriaMetrics** refuses nothing line by line: every numeric field is a float64 sample (an
  integer after a float is the same series: no type conflict can happen), and a string field or an
  unparsable line is skipped silently with 204 (counted in its ``vm_rows_invalid_total``).

Anything else (a 413, a refusal the sink cannot read) is bisected: the lines are halved until each
refused line is alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from ..lineparse import LineError, parse_line

_CONFLICT = re.compile(
    r'field type conflict: input field "(?P<field>.*?)" on measurement "(?P<measurement>.*?)" '
    r"is type (?P<type>\w+), already exists as type (?P<existing>\w+)"
)
_DROPPED = re.compile(r"\bdropped=(\d+)")
_UNPARSABLE = re.compile(r"unable to parse '(?P<line>.*)': ")
V3_PARTIAL = "partial write of line protocol occurred"


@dataclass(frozen=True)
class Conflict:
    """A field type conflict: lines of ``measurement`` whose ``field`` is of ``type`` were refused."""

    measurement: str
    field: str
    type: str
    existing: str

    def matches(self, line: str) -> bool:
        if self.field not in line:  # cheap test before parsing
            return False
        try:
            point = parse_line(line)
        except LineError:
            return False
        return (
            point.measurement == self.measurement
            and self.field in point.fields
            and field_type(point.fields[self.field]) == self.type
        )


@dataclass
class Diagnosis:
    """What a refusal of exactly ``lines`` says.

    ``named``: positions (in ``lines``) of lines the server named as refused, with their message;
    ``conflict``: the field type conflict it names; ``dropped``: how many points it says it refused.
    """

    named: dict[int, str] = field(default_factory=dict)
    conflict: Conflict | None = None
    dropped: int | None = None


def field_type(value: object) -> str:
    """InfluxDB's name of a field value's type."""
    if type(value) is bool:
        return "boolean"
    if type(value) is int:
        return "integer"
    if type(value) is float:
        return "float"
    return "string"


def error_text(body: str) -> str:
    """An InfluxDB error body's message: ``error`` (1.x) or ``message`` (2.x) of its JSON, or the text."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(doc, dict):
        for key in ("error", "message"):
            if isinstance(doc.get(key), str):
                return doc[key]
    return body


def diagnose(body: str, lines: Sequence[str]) -> Diagnosis:
    """Read a refusal's body (the answer to sending exactly ``lines``)."""
    found = Diagnosis()
    v3 = _v3_named(body, len(lines))
    if v3:
        found.named = v3
        return found
    text = error_text(body)
    named: dict[int, str] = {}
    if "unable to parse '" in text:
        where = {line: index for index, line in enumerate(lines)}
        for part in text.splitlines():
            match = _UNPARSABLE.search(part)
            if match is None:
                continue
            index = where.get(match.group("line"))
            if index is None:  # a line we did not send as such: do not guess
                named = {}
                break
            named[index] = part.strip()
    if named:
        found.named = named
        return found
    conflict = _CONFLICT.search(text)
    if conflict is not None:
        found.conflict = Conflict(*conflict.group("measurement", "field", "type", "existing"))
    dropped = _DROPPED.search(text)
    if dropped is not None and "partial write" in text:
        found.dropped = int(dropped.group(1))
    return found


def _v3_named(body: str, count: int) -> dict[int, str]:
    """InfluxDB 3's partial write: the refused lines by position (its ``line_number`` counts from 1)."""
    if V3_PARTIAL not in body:
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    data = doc.get("data") if isinstance(doc, dict) else None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        return {}
    named: dict[int, str] = {}
    for item in data:
        if not isinstance(item, dict):
            return {}
        number = item.get("line_number")
        if type(number) is not int or not 1 <= number <= count:
            return {}  # not a line of this request: do not guess
        named[number - 1] = f"line {number}: {item.get('error_message') or 'refused'}"
    return named
