"""InfluxDB line protocol: escaping and number formatting, in one place.

Escaping (checked against a real InfluxDB 1.x and VictoriaMetrics by the integration tests):

* tag keys and values: ``,`` ``=`` and space are escaped with a backslash; a backslash that would
  otherwise be read as an escape (before one of those, or at the end) is doubled;
* measurement names: ``,`` and space are escaped;
* line feed and carriage return cannot be carried by the line protocol at all: each is replaced by
  a space (``NEWLINE_REPLACEMENT``), in tag values and measurement names alike;
* an empty tag value cannot be written: the tag is omitted (as the anchor's Go client did).

Floats are written like Go's ``strconv.FormatFloat(v, 'f', -1, 64)`` (shortest round-trip digits,
never an exponent, no trailing ``.0``) so output stays byte-identical to cf-metrics-refinery.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

NEWLINE_REPLACEMENT = " "

_NEWLINES = str.maketrans({"\n": NEWLINE_REPLACEMENT, "\r": NEWLINE_REPLACEMENT})
_TAG_SPECIAL = re.compile(r"[,= \\\n\r]")
_MEASUREMENT_SPECIAL = re.compile(r"[, \\\n\r]")
# A run of backslashes followed by a special character or the end of the value.
_BACKSLASH_RUN = re.compile(r"(\\+)(?=[,= ]|$)")


def escape_tag(value: str) -> str:
    """Escape a tag key or value so that InfluxDB reads it back unchanged."""
    if not _TAG_SPECIAL.search(value):
        return value
    value = value.translate(_NEWLINES)
    if "\\" in value:
        value = _BACKSLASH_RUN.sub(lambda m: m.group(1) * 2, value)
    return value.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def escape_measurement(name: str) -> str:
    """Escape a measurement name so that InfluxDB reads it back unchanged."""
    if not _MEASUREMENT_SPECIAL.search(name):
        return name
    name = name.translate(_NEWLINES)
    if "\\" in name:
        name = _BACKSLASH_RUN.sub(lambda m: m.group(1) * 2, name)
    return name.replace(",", "\\,").replace(" ", "\\ ")


def tag_pair(key: str, value: str) -> str:
    """``,key=value`` with escaping, or ``""`` when the value is empty (a tag cannot be empty)."""
    if not value:
        return ""
    return f",{escape_tag(key)}={escape_tag(value)}"


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
