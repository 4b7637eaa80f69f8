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


# -- What Go's encoding/json accepts: cf-metrics-refinery decoded envelopes with it. ---------------
#
# Go matches an object's keys to a struct's fields by exact name, else case-insensitively
# (``bytes.EqualFold``: ASCII case, plus the Kelvin sign and long s, which fold to k and s), key by
# key in order: the last key that matches a field wins, and an object given twice for one struct
# field is decoded into the same struct (merged). Enums (eventType, method, message_type) take a
# JSON number or the enum's name as a string (gogo-protobuf's ``UnmarshalJSONEnum``). The nozzle
# writes exact keys and numbers; cf-metrics-refinery's own test fixtures spell ``HttpStartStop``.

_UUID_FIELDS = ("low", "high")
_BODY_FIELDS = {
    "httpStartStop": (
        "startTimestamp",
        "stopTimestamp",
        "method",
        "statusCode",
        "contentLength",
        "instanceIndex",
        "applicationId",
    ),
    "logMessage": ("timestamp", "message", "message_type", "app_id", "source_type", "source_instance"),
    "containerMetric": (
        "applicationId",
        "instanceIndex",
        "cpuPercentage",
        "memoryBytes",
        "diskBytes",
        "memoryBytesQuota",
        "diskBytesQuota",
    ),
}
_ENVELOPE_FIELDS = ("eventType", "timestamp", *_BODY_FIELDS)
METHODS = (
    "GET POST PUT DELETE HEAD ACL BASELINE_CONTROL BIND CHECKIN CHECKOUT CONNECT COPY DEBUG LABEL LINK LOCK"
    " MERGE MKACTIVITY MKCALENDAR MKCOL MKREDIRECTREF MKWORKSPACE MOVE OPTIONS ORDERPATCH PATCH PRI PROPFIND"
    " PROPPATCH REBIND REPORT SEARCH SHOWMETHOD SPACEJUMP TEXTSEARCH TRACE TRACK UNBIND UNCHECKOUT UNLINK"
    " UNLOCK UPDATE UPDATEREDIRECTREF VERSION_CONTROL"
).split()  # the sonde-go Method enum, numbered from 1
METHOD_NUMBERS = {name: number for number, name in enumerate(METHODS, start=1)}
EVENT_TYPE_NAMES = {
    "HttpStartStop": HTTP_START_STOP,
    "LogMessage": LOG_MESSAGE,
    "ValueMetric": VALUE_METRIC,
    "CounterEvent": COUNTER_EVENT,
    "Error": ERROR,
    "ContainerMetric": CONTAINER_METRIC,
}
MESSAGE_TYPE_NAMES = {"OUT": 1, "ERR": 2}
_GO_FOLD = {0x17F: "s", 0x212A: "k"}  # ſ and the Kelvin sign: the non-ASCII runes that fold into ASCII


def go_fold(key: str) -> str | None:
    """Go's case folding of an object key for matching ASCII field names (None: it matches none)."""
    folded = key.translate(_GO_FOLD)
    return folded.upper() if folded.isascii() else None


def _by_fold(fields: tuple[str, ...]) -> dict[str, str]:
    return {name.upper(): name for name in fields}


Struct = tuple[dict[str, str], dict[str, "Struct"]]  # (folded key -> field, the fields that are structs)
_UUID: Struct = (_by_fold(_UUID_FIELDS), {})
_ENVELOPE: Struct = (
    _by_fold(_ENVELOPE_FIELDS),
    {
        "httpStartStop": (_by_fold(_BODY_FIELDS["httpStartStop"]), {"applicationId": _UUID}),
        "logMessage": (_by_fold(_BODY_FIELDS["logMessage"]), {}),
        "containerMetric": (_by_fold(_BODY_FIELDS["containerMetric"]), {}),
    },
)
_READ = frozenset((*_ENVELOPE_FIELDS, *_UUID_FIELDS, *(f for fs in _BODY_FIELDS.values() for f in fs)))
_READ_FOLDED = frozenset(name.upper() for name in _READ)
_VARIANT: dict[str, bool] = {}  # key -> it folds to a field name without being one (a bounded cache)


def _has_variant(obj: dict[str, Any]) -> bool:
    for key in obj:
        if key in _READ:
            continue
        variant = _VARIANT.get(key)
        if variant is None:
            if len(_VARIANT) > 10_000:
                _VARIANT.clear()
            variant = _VARIANT[key] = go_fold(key) in _READ_FOLDED
        if variant:
            return True
    return False


def _resolve(obj: dict[str, Any], struct: Struct) -> dict[str, Any]:
    """The fields Go fills from ``obj``'s members, in order: the last key matching a field wins, and
    an object given again for a struct field is decoded into the struct the first one filled."""
    by_fold, structs = struct
    out: dict[str, Any] = {}
    for key, value in obj.items():
        folded = go_fold(key)
        name = by_fold.get(folded) if folded is not None else None
        if name is None:
            continue
        inner = structs.get(name)
        if inner is not None and type(value) is dict:
            value = _resolve(value, inner)
            before = out.get(name)
            if type(before) is dict:
                value = {**before, **value}
        out[name] = value
    return out


def go_view(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope as Go's decoder reads it, for the fields the conversion reads: the same dict when
    its keys are the exact ones (the nozzle's), else a copy with the keys resolved; enum names given
    as strings become their numbers. Raises :class:`Poison` for an enum name that does not exist."""
    variant = _has_variant(envelope)
    if not variant:
        for body_key in _BODY_FIELDS:
            body = envelope.get(body_key)
            if type(body) is dict and (
                _has_variant(body)
                or (type(body.get("applicationId")) is dict and _has_variant(body["applicationId"]))
            ):
                variant = True
                break
    if variant:
        envelope = _resolve(envelope, _ENVELOPE)
    event_type = envelope.get("eventType")
    if type(event_type) is str:
        envelope = {**envelope, "eventType": _enum(EVENT_TYPE_NAMES, event_type, "eventType")}
    event_type = envelope.get("eventType")  # the body of this type is the only one read
    http = envelope.get("httpStartStop") if event_type == HTTP_START_STOP else None
    if type(http) is dict and type(http.get("method")) is str:
        method = _enum(METHOD_NUMBERS, http["method"], "method")
        envelope = {**envelope, "httpStartStop": {**http, "method": method}}
    log = envelope.get("logMessage") if event_type == LOG_MESSAGE else None
    if type(log) is dict and type(log.get("message_type")) is str:
        kind = _enum(MESSAGE_TYPE_NAMES, log["message_type"], "message_type")
        envelope = {**envelope, "logMessage": {**log, "message_type": kind}}
    return envelope


def _enum(names: dict[str, int], value: str, field: str) -> int:
    number = names.get(value)
    if number is None:
        raise Poison("bad_field", f"{field} {value[:64]!r} is not a name of the enum")
    return number
