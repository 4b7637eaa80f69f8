"""InfluxDB line protocol: escaping and number formatting, in one place.

Escaping follows InfluxDB's own parser (checked against a real InfluxDB 1.6 by the integration
tests; InfluxDB 2.x shares the parser), so that user-given names read back unchanged:

* in tag keys and values, ``,`` ``=`` and space are escaped with a backslash; other characters,
  including backslashes, quotes, tabs and any Unicode, are written as they are (InfluxDB understands
  no ``\\`` escape: a backslash before a special character simply stays);
* a **line feed** or **carriage return** cannot be carried (a line ends at either, for many readers):
  each is replaced by a space (``NEWLINE_REPLACEMENT``), as the README promises;
* a **trailing backslash** cannot be stored by InfluxDB (it escapes the delimiter that follows):
  it is removed;
* an empty tag value cannot be written: the tag is omitted (as the anchor's Go client did);
* measurement names: ``,`` and space are escaped; a backslash before a special character or at the
  end cannot be stored and is removed; a leading ``#`` (a comment) gets a ``_`` prefix.

VictoriaMetrics reads ``\\`` as one backslash, so names holding a backslash followed by another
backslash or a special character read back differently there; nothing else does.

Floats are written like Go's ``strconv.FormatFloat(v, 'f', -1, 64)`` (shortest round-trip digits,
never an exponent, no trailing ``.0``) so output stays byte-identical to cf-metrics-refinery.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

NEWLINE_REPLACEMENT = " "

_MEASUREMENT_BAD_BACKSLASH = re.compile(r'\\+(?=[, ="]|$)')


def escape_tag(value: str) -> str:
    """Escape a tag key or value so that InfluxDB reads it back unchanged (but see the module doc)."""
    if "," in value:
        value = value.replace(",", "\\,")
    if "=" in value:
        value = value.replace("=", "\\=")
    if "\n" in value:
        value = value.replace("\n", NEWLINE_REPLACEMENT)
    if "\r" in value:
        value = value.replace("\r", NEWLINE_REPLACEMENT)
    if " " in value:
        value = value.replace(" ", "\\ ")
    if value[-1:] == "\\":
        value = value.rstrip("\\")
    return value


def escape_measurement(name: str) -> str:
    """Escape a measurement name so that InfluxDB reads it back unchanged (but see the module doc)."""
    if "\n" in name:
        name = name.replace("\n", NEWLINE_REPLACEMENT)
    if "\r" in name:
        name = name.replace("\r", NEWLINE_REPLACEMENT)
    if "\\" in name:
        name = _MEASUREMENT_BAD_BACKSLASH.sub("", name)
    if name[:1] == "#":
        name = "_" + name
    if "," in name:
        name = name.replace(",", "\\,")
    if " " in name:
        name = name.replace(" ", "\\ ")
    return name


def tag_pair(key: str, value: str) -> str:
    """``,key=value`` with escaping, or ``""`` when the value is empty (a tag cannot be empty)."""
    escaped = escape_tag(value)
    if not escaped:
        return ""
    return f",{escape_tag(key)}={escaped}"


def format_float(value: float) -> str | None:
    """Go ``'f', -1`` formatting; None for NaN/Inf, which the line protocol cannot carry."""
    text = repr(value)
    if "e" in text:
        if not math.isfinite(value):
            return None
        text = format(Decimal(text), "f")
    elif text.endswith(".0"):
        return text[:-2]
    elif text[-1] in "nf":  # 'nan', 'inf', '-inf'
        return None
    return text
