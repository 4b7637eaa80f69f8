"""Decoding sonde-go envelopes as kafka-firehose-nozzle writes them to Kafka.

The nozzle writes compact JSON produced by easyjson from the gogo-protobuf structs: camelCase keys,
except snake_case inside ``logMessage``; enums as JSON numbers; 64-bit integers as bare JSON numbers
(they exceed 2**53 and must stay exact, which both orjson and the standard library guarantee);
``message`` bytes as padded standard base64; an ``applicationId`` in ``httpStartStop`` as a UUID
``{"low": u64, "high": u64}`` (bytes little-endian per half).

A record that cannot be decoded raises :class:`Poison` with a reason for the quarantine.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

HTTP_START_STOP = 4
LOG_MESSAGE = 5
VALUE_METRIC = 6
COUNTER_EVENT = 7
ERROR = 8
CONTAINER_METRIC = 9

BODY_KEYS = {
    HTTP_START_STOP: "httpStartStop",
    LOG_MESSAGE: "logMessage",
    VALUE_METRIC: "valueMetric",
    COUNTER_EVENT: "counterEvent",
    ERROR: "error",
    CONTAINER_METRIC: "containerMetric",
}

#: A Kafka value larger than this is not an envelope the nozzle would write (the biggest are
#: log messages, capped by Loggregator at 60 KiB before base64).
MAX_VALUE_BYTES = 1024 * 1024

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
UINT64_MAX = (1 << 64) - 1


try:
    from pybase64 import b64decode as _pybase64_decode

    # Strict base64 (SIMD-accelerated): raises ValueError on anything but padded standard base64.
    # A partial, not a def: one C call per record instead of a Python frame.
    b64decode: Callable[[str], bytes] = partial(_pybase64_decode, validate=True)

except ImportError:  # pragma: no cover - pybase64 is a dependency; this keeps a broken install working

    def b64decode(value: str) -> bytes:
        return binascii.a2b_base64(value, strict_mode=True)


class Poison(ValueError):
    """A record that can never be processed. ``reason`` is a short stable code, ``detail`` says more."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def decode_value(value: Any) -> dict[str, Any]:
    """Base64 Kafka record value -> envelope object. Raises :class:`Poison`."""
    if not isinstance(value, str):
        raise Poison(
            "missing_value", "record has no value" if value is None else "record value is not a string"
        )
    if len(value) > MAX_VALUE_BYTES * 4 // 3 + 4:
        raise Poison(
            "too_large", f"record value is {len(value)} base64 characters (limit {MAX_VALUE_BYTES} bytes)"
        )
    try:
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise Poison("not_base64", f"record value is not base64 ({exc})") from None
    return parse_envelope(raw)


def loads_json(raw: bytes) -> Any:
    """orjson (fast, exact 64-bit integers), or the standard library for what orjson refuses but
    JSON writers emit anyway: easyjson writes NaN/+Inf verbatim for non-finite floats. ValueError if
    neither can read it."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        doc = json.loads(raw)  # UnicodeDecodeError is a ValueError too
        # The standard library accepts lone surrogate escapes ("\\ud800"), which cannot be encoded as
        # UTF-8 and would make every write of the batch fail: refuse them here, as orjson does.
        json.dumps(doc, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"invalid unicode in a string ({exc.reason})") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return doc


def parse_envelope(raw: bytes) -> dict[str, Any]:
    """JSON bytes -> envelope object. Raises :class:`Poison`."""
    try:
        doc = loads_json(raw)
    except ValueError as exc:
        raise Poison("not_json", f"record value is not JSON ({exc})") from None
    if type(doc) is not dict:
        raise Poison("not_envelope", f"JSON value is a {type(doc).__name__}, not an envelope object")
    return doc


_GUIDS: dict[tuple[int, int], str] = {}


def uuid_to_guid(uuid: Any) -> str | None:
    """sonde-go ``{"low": u64, "high": u64}`` -> ``8-4-4-4-12`` lowercase GUID; None if absent/invalid."""
    if type(uuid) is not dict:
        return None
    low = uuid.get("low", 0)
    high = uuid.get("high", 0)
    if type(low) is int and type(high) is int:
        guid = _GUIDS.get((low, high))
        if guid is not None:
            return guid
    guid = _uuid_to_guid(uuid)  # raises Poison unless both are unsigned 64-bit integers
    if len(_GUIDS) > 100_000:
        _GUIDS.clear()
    _GUIDS[(low, high)] = guid
    return guid


def _uuid_to_guid(uuid: dict[str, Any]) -> str:
    low = uuid.get("low", 0)
    high = uuid.get("high", 0)
    if (
        type(low) is not int
        or type(high) is not int
        or not (0 <= low <= UINT64_MAX and 0 <= high <= UINT64_MAX)
    ):
        raise Poison("bad_field", f"applicationId {uuid!r} is not a pair of unsigned 64-bit integers")
    h = (low.to_bytes(8, "little") + high.to_bytes(8, "little")).hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
