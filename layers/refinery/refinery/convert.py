"""Envelope + app metadata -> one line of InfluxDB line protocol, in the cf-metrics-refinery schema.

Measurements (tags are written sorted; the six enrichment tags are app, app_guid, space, space_guid,
org, org_guid):

* ``http_request`` (HttpStartStop): tags + ``instance``, ``method``, ``status_code``; fields
  ``count=1i``, ``duration`` (seconds, float), ``response_size`` (int); time ``startTimestamp``.
* ``log`` (LogMessage from APP*/App* or RTR sources): tags + ``instance``, ``type`` (OUT, ERR or
  RTR); fields ``count=1i``, ``size`` (decoded message bytes, int); time ``logMessage.timestamp``.
* ``instance`` (ContainerMetric): tags + ``instance``; fields ``cpu``, ``disk``, ``disk_pct``,
  ``disk_quota``, ``memory``, ``memory_pct``, ``memory_quota``; time: the envelope's timestamp.

Fixes of the anchor's hazards: a zero or missing quota omits the ratio field instead of writing
NaN/Inf; a non-finite cpu value omits the field; an unknown method or message type number is
written as its decimal; a missing or empty instance becomes ``"0"``.

:func:`convert` returns the point (``(series, fields, timestamp)``, see :func:`render`) or a
:class:`Dropped` reason, and raises :class:`~refinery.envelope.Poison` for a record whose fields
have the wrong types. Each measurement has a reference builder (``*_point``: every field validated
with a precise reason) and a fast path for the well-typed common case that defers to it otherwise;
tests check that both give byte-identical lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from .envelope import (
    CONTAINER_METRIC,
    COUNTER_EVENT,
    ERROR,
    HTTP_START_STOP,
    INT64_MAX,
    INT64_MIN,
    LOG_MESSAGE,
    METHODS,
    VALUE_METRIC,
    Poison,
    go_view,
    uuid_to_guid,
)
from .lineproto import escape_tag, format_float
from .metadata.tags import AppTags

METHOD_NAMES = {number: name for number, name in enumerate(METHODS, start=1)}
MESSAGE_TYPES = {1: "OUT", 2: "ERR"}
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
NS_PER_S = 1_000_000_000


class Dropped(NamedTuple):
    """A record dropped by policy; ``reason`` is a stable code used in logs and metrics."""

    reason: str


DROP_VALUE_METRIC = Dropped("value_metric")
DROP_COUNTER_EVENT = Dropped("counter_event")
DROP_ERROR_EVENT = Dropped("error_event")
DROP_UNSUPPORTED_TYPE = Dropped("unsupported_event_type")
DROP_LOG_SOURCE = Dropped("log_source_not_app_or_rtr")
DROP_NO_APP_ID = Dropped("no_app_id")
DROP_UNKNOWN_APP = Dropped("unknown_app")
_TYPE_DROPS = {VALUE_METRIC: DROP_VALUE_METRIC, COUNTER_EVENT: DROP_COUNTER_EVENT, ERROR: DROP_ERROR_EVENT}


Lookup = Callable[[str], "AppTags | None"]


def _int(body: dict[str, Any], key: str, default: int | None, where: str, lo: int, hi: int) -> int:
    value = body.get(key, default)
    if type(value) is not int:
        if value is None:
            raise Poison("bad_field", f"{where}.{key} is missing")
        raise Poison("bad_field", f"{where}.{key} is {type(value).__name__}, expected an integer")
    if not lo <= value <= hi:
        raise Poison("bad_field", f"{where}.{key} = {value} is out of range")
    return value


def _str(body: dict[str, Any], key: str, where: str) -> str:
    value = body.get(key, "")
    if type(value) is not str:
        raise Poison("bad_field", f"{where}.{key} is {type(value).__name__}, expected a string")
    return value


def go_seconds(ns: int) -> float:
    """Go's ``time.Duration(ns).Seconds()``: whole seconds plus the remainder, each as float64."""
    ns = max(INT64_MIN, min(INT64_MAX, ns))  # time.Time.Sub saturates
    sec = abs(ns) // NS_PER_S
    if ns < 0:
        sec = -sec
    return float(sec) + float(ns - sec * NS_PER_S) / 1e9


def base64_length(text: str) -> int:
    """Decoded byte length of padded standard base64, without decoding it."""
    n = len(text)
    if n == 0:
        return 0
    return n // 4 * 3 - (text[-1] == "=") - (text[-2] == "=")


def _instance(value: str) -> str:
    return escape_tag(value) or "0"  # empty, or nothing a tag value can hold (a lone backslash)


Point = tuple[str, int]
"""(line, timestamp): the whole line of line protocol, and its timestamp for identity checks."""


def render(point: Point) -> str:
    return point[0]


# -- The reference builders: every field validated, a precise Poison for each problem. -------------


def http_point(body: dict[str, Any], tags: AppTags) -> Point:
    w = "httpStartStop"
    start = _int(body, "startTimestamp", None, w, INT64_MIN, INT64_MAX)
    stop = _int(body, "stopTimestamp", None, w, INT64_MIN, INT64_MAX)
    method = _int(body, "method", 1, w, INT32_MIN, INT32_MAX)
    status = _int(body, "statusCode", 0, w, INT32_MIN, INT32_MAX)
    size = _int(body, "contentLength", 0, w, INT64_MIN, INT64_MAX)
    index = _int(body, "instanceIndex", 0, w, INT32_MIN, INT32_MAX)
    duration = format_float(go_seconds(stop - start))
    return (
        f"http_request{tags.head},instance={index},method={METHOD_NAMES.get(method) or method}{tags.tail}"
        f",status_code={status} count=1i,duration={duration},response_size={size}i {start}",
        start,
    )


def log_point(body: dict[str, Any], tags: AppTags, kind: str) -> Point:
    w = "logMessage"
    timestamp = _int(body, "timestamp", None, w, INT64_MIN, INT64_MAX)
    message = _str(body, "message", w)
    if len(message) % 4:
        raise Poison("bad_field", "logMessage.message is not padded base64")
    if kind != "RTR":
        message_type = _int(body, "message_type", 1, w, INT32_MIN, INT32_MAX)
        kind = MESSAGE_TYPES.get(message_type) or str(message_type)
    instance = _instance(_str(body, "source_instance", w))
    return (
        f"log{tags.head},instance={instance}{tags.tail},type={kind} count=1i,size={base64_length(message)}i"
        f" {timestamp}",
        timestamp,
    )


def container_point(body: dict[str, Any], timestamp: Any, tags: AppTags) -> Point:
    w = "containerMetric"
    if type(timestamp) is not int or not INT64_MIN <= timestamp <= INT64_MAX:
        raise Poison("bad_field", "envelope timestamp of a containerMetric is missing or not an int64")
    index = _int(body, "instanceIndex", 0, w, INT32_MIN, INT32_MAX)
    memory = _int(body, "memoryBytes", 0, w, 0, INT64_MAX)
    disk = _int(body, "diskBytes", 0, w, 0, INT64_MAX)
    memory_quota = _int(body, "memoryBytesQuota", 0, w, 0, INT64_MAX)
    disk_quota = _int(body, "diskBytesQuota", 0, w, 0, INT64_MAX)
    cpu = body.get("cpuPercentage", 0.0)
    if type(cpu) is not float and type(cpu) is not int:
        raise Poison("bad_field", f"containerMetric.cpuPercentage is {type(cpu).__name__}, expected a number")
    try:
        cpu_value = float(cpu)
    except OverflowError:  # an integer beyond the float range: not finite, so the field is omitted
        cpu_value = math.inf
    return (
        f"instance{tags.head},instance={index}{tags.tail}"
        f" {_container_fields(cpu_value, memory, disk, memory_quota, disk_quota)} {timestamp}",
        timestamp,
    )


def _container_fields(cpu: float, memory: int, disk: int, memory_quota: int, disk_quota: int) -> str:
    cpu_text = format_float(cpu)
    fields = f"cpu={cpu_text},disk={disk}i" if cpu_text is not None else f"disk={disk}i"
    if disk_quota:
        fields += f",disk_pct={format_float(float(disk) / float(disk_quota))}"
    fields += f",disk_quota={disk_quota}i,memory={memory}i"
    if memory_quota:
        fields += f",memory_pct={format_float(float(memory) / float(memory_quota))}"
    return f"{fields},memory_quota={memory_quota}i"


# -- The fast paths: the common, well-typed case checked in one expression; anything else is -------
# -- handed to the reference builder above, which gives the same output or the precise Poison. -----

_INSTANCES: dict[str, str] = {}


def _instance_tag(value: str) -> str:
    tag = _INSTANCES.get(value)
    if tag is None:
        if len(_INSTANCES) > 10_000:
            _INSTANCES.clear()
        tag = _INSTANCES[value] = _instance(value)
    return tag


def _http(body: dict[str, Any], tags: AppTags) -> Point:
    get = body.get
    start = get("startTimestamp")
    stop = get("stopTimestamp")
    method = get("method", 1)
    status = get("statusCode", 0)
    size = get("contentLength", 0)
    index = get("instanceIndex", 0)
    if not (
        type(start) is int
        and type(stop) is int
        and type(method) is int
        and type(status) is int
        and type(size) is int
        and type(index) is int
        and INT64_MIN <= start <= INT64_MAX
        and INT64_MIN <= stop <= INT64_MAX
        and INT64_MIN <= size <= INT64_MAX
        and INT32_MIN <= status <= INT32_MAX
        and INT32_MIN <= index <= INT32_MAX
        and INT32_MIN <= method <= INT32_MAX
    ):
        return http_point(body, tags)
    elapsed = stop - start
    # Below one second Go's Duration.Seconds() is exactly float(ns) / 1e9.
    duration = format_float(elapsed / 1e9 if 0 <= elapsed < NS_PER_S else go_seconds(elapsed))
    return (
        f"http_request{tags.head},instance={index},method={METHOD_NAMES.get(method) or method}{tags.tail}"
        f",status_code={status} count=1i,duration={duration},response_size={size}i {start}",
        start,
    )


def _log(body: dict[str, Any], tags: AppTags, rtr: bool) -> Point:
    get = body.get
    timestamp = get("timestamp")
    message = get("message", "")
    instance = get("source_instance", "")
    if rtr:
        kind: str | None = "RTR"
    else:
        message_type = get("message_type", 1)
        kind = MESSAGE_TYPES.get(message_type) if type(message_type) is int else None
    if not (
        kind is not None
        and type(timestamp) is int
        and type(message) is str
        and type(instance) is str
        and INT64_MIN <= timestamp <= INT64_MAX
        and not len(message) % 4
    ):
        return log_point(body, tags, "RTR" if rtr else "APP")
    return (
        f"log{tags.head},instance={_instance_tag(instance)}{tags.tail},type={kind}"
        f" count=1i,size={base64_length(message)}i {timestamp}",
        timestamp,
    )


def _container(body: dict[str, Any], timestamp: Any, tags: AppTags) -> Point:
    get = body.get
    index = get("instanceIndex", 0)
    cpu = get("cpuPercentage", 0.0)
    memory = get("memoryBytes", 0)
    disk = get("diskBytes", 0)
    memory_quota = get("memoryBytesQuota", 0)
    disk_quota = get("diskBytesQuota", 0)
    if not (
        type(timestamp) is int
        and type(index) is int
        and type(cpu) is float
        and type(memory) is int
        and type(disk) is int
        and type(memory_quota) is int
        and type(disk_quota) is int
        and INT64_MIN <= timestamp <= INT64_MAX
        and INT32_MIN <= index <= INT32_MAX
        and 0 <= memory <= INT64_MAX
        and 0 <= disk <= INT64_MAX
        and 0 <= memory_quota <= INT64_MAX
        and 0 <= disk_quota <= INT64_MAX
    ):
        return container_point(body, timestamp, tags)
    return (
        f"instance{tags.head},instance={index}{tags.tail}"
        f" {_container_fields(cpu, memory, disk, memory_quota, disk_quota)} {timestamp}",
        timestamp,
    )


def _body(envelope: dict[str, Any], key: str) -> dict[str, Any]:
    body = envelope.get(key)
    if type(body) is not dict:
        raise Poison("bad_envelope", f"eventType {envelope.get('eventType')} but no {key!r} object")
    return body


def convert(envelope: dict[str, Any], lookup: Lookup) -> Point | Dropped:
    """One envelope -> its point, or why it was dropped. Raises Poison for malformed envelopes.

    Keys and enums are read as Go's encoding/json reads them (:func:`~refinery.envelope.go_view`)."""
    envelope = go_view(envelope)
    event_type = envelope.get("eventType")
    if type(event_type) is not int:
        if event_type is None:
            raise Poison("bad_envelope", "envelope has no eventType")
        raise Poison("bad_field", f"eventType is {type(event_type).__name__}, expected an integer")
    if event_type == LOG_MESSAGE:
        body = _body(envelope, "logMessage")
        source = body.get("source_type", "")
        if type(source) is not str:
            source = _str(body, "source_type", "logMessage")
        if source.startswith(("APP", "App")):
            rtr = False
        elif source.startswith("RTR"):
            rtr = True
        else:
            return DROP_LOG_SOURCE
        guid = body.get("app_id", "")
        if type(guid) is not str:
            guid = _str(body, "app_id", "logMessage")
        if not guid:
            return DROP_NO_APP_ID
        tags = lookup(guid)
        if tags is None:
            return DROP_UNKNOWN_APP
        return _log(body, tags, rtr)
    if event_type == HTTP_START_STOP:
        body = _body(envelope, "httpStartStop")
        app_id = body.get("applicationId")
        if app_id is None:
            return DROP_NO_APP_ID
        if type(app_id) is not dict:
            raise Poison(
                "bad_field", f"httpStartStop.applicationId is {type(app_id).__name__}, expected an object"
            )
        guid = uuid_to_guid(app_id)
        if not guid:
            return DROP_NO_APP_ID
        tags = lookup(guid)
        if tags is None:
            return DROP_UNKNOWN_APP
        return _http(body, tags)
    if event_type == CONTAINER_METRIC:
        body = _body(envelope, "containerMetric")
        guid = body.get("applicationId", "")
        if type(guid) is not str:
            guid = _str(body, "applicationId", "containerMetric")
        if not guid:
            return DROP_NO_APP_ID
        tags = lookup(guid)
        if tags is None:
            return DROP_UNKNOWN_APP
        return _container(body, envelope.get("timestamp"), tags)
    return _TYPE_DROPS.get(event_type, DROP_UNSUPPORTED_TYPE)
