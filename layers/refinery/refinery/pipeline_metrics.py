"""The enricher's own health, as points in the InfluxDB it writes to (``PIPELINE_METRICS=true``).

One point per invocation in the measurement ``refinery_batch``, timestamped at the invocation's start,
so that operators who live in Grafana see lag, misses, quarantine and failures beside the data (as
Telegraf users see its ``internal_*`` measurements). The CloudWatch EMF metrics are unchanged.

Tags are bounded: ``function`` (the Lambda function's name) and ``topic`` (the batch's Kafka topic;
several, sorted and comma-joined, in the rare batch that spans topics). Never an app, org, partition
or offset. Fields, from the batch summary (integers unless noted): ``records_in``, ``written``,
``points``, ``dropped``, ``quarantined``, ``redelivered``, ``resends``, ``identity_collisions``,
``enrichment_misses``, ``sink_retries``, ``sink_seconds`` (float), ``batch_lag_ms``, ``snapshot_age_s``
(float; the last two only when known), ``failures`` (1: the batch failed and the mapping retries it)
and ``partial_failures`` (1: a partial batch response was returned). A failed batch's point carries
only ``failures``, ``partial_failures`` and ``batch_lag_ms``: its records are counted once, by the
invocation that processes them.

**When and how it is written.** After the batch's own flush, in one more request to each InfluxDB sink
(the same kept-alive connection, so no new handshake): the fields are the flush's outcome (written,
latency, retries, failure), which is not known while the flush is in flight, and a pipeline point in
the batch's flush would share its fate (a refusal would quarantine it, a failure would fail the
batch). The request is made once, never retried, within the invocation's remaining time (less
``FLUSH_TIME_RESERVE``) and at most :data:`MAX_SECONDS`; any error is logged as a warning and
otherwise ignored, so it can neither fail nor repeat the batch. Prometheus remote write and the dry-run
printer get no pipeline point.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .lineproto import escape_measurement, format_float, tag_pair
from .observability import enrichment_misses
from .sinks.base import MIN_REQUEST_SECONDS, Deadline, Sink, SinkError
from .sinks.chunked import ChunkedSink
from .sinks.fanout import members

log = logging.getLogger(__name__)

MEASUREMENT = "refinery_batch"
#: Sinks that take the pipeline point: InfluxDB's write APIs.
INFLUX_SINKS = ("influxdb-v1", "influxdb-v2")
#: Longest time the pipeline point's request may take.
MAX_SECONDS = 2.0
#: Integer fields copied from the summary.
COUNTS = (
    "records_in",
    "written",
    "points",
    "dropped",
    "quarantined",
    "redelivered",
    "resends",
    "identity_collisions",
    "sink_retries",
)


def batch_topics(event: Any) -> str:
    """The batch's topic(s), sorted and comma-joined (records keyed ``<topic>-<partition>``)."""
    records = event.get("records") if isinstance(event, Mapping) else None
    if not isinstance(records, Mapping):
        return ""
    topics = set()
    for key, batch in records.items():
        first = batch[0] if isinstance(batch, list) and batch else None
        topic = first.get("topic") if isinstance(first, dict) else None
        topics.add(str(topic) if isinstance(topic, str) and topic else str(key).rpartition("-")[0])
    return ",".join(sorted(t for t in topics if t))


def _fields(values: Sequence[tuple[str, Any]]) -> str:
    parts = []
    for name, value in values:
        if value is None:
            continue
        if isinstance(value, float):
            text = format_float(value)
            if text is not None:
                parts.append(f"{name}={text}")
        else:
            parts.append(f"{name}={int(value)}i")
    return ",".join(parts)


def _line(function: str, topic: str, fields: str, at_ns: int) -> str:
    tags = tag_pair("function", function) + tag_pair("topic", topic)
    return f"{escape_measurement(MEASUREMENT)}{tags} {fields} {at_ns}"


def batch_line(summary: Mapping[str, Any], *, function: str, topic: str, at_ns: int) -> str:
    """The pipeline point of a batch that was processed (written, or partly with a partial response)."""
    values: list[tuple[str, Any]] = [(name, summary.get(name) or 0) for name in COUNTS]
    values += [
        ("enrichment_misses", enrichment_misses(summary)),
        ("sink_seconds", float(summary.get("sink_seconds") or 0.0)),
        ("batch_lag_ms", summary.get("batch_lag_ms")),
        ("snapshot_age_s", _float_or_none(summary.get("snapshot_age_s"))),
        ("failures", 0),
        ("partial_failures", 1 if summary.get("batch_item_failures") else 0),
    ]
    return _line(function, topic, _fields(values), at_ns)


def failure_line(*, function: str, topic: str, at_ns: int, batch_lag_ms: int | None) -> str:
    """The pipeline point of a batch that failed (the event source mapping retries it)."""
    values = [("failures", 1), ("partial_failures", 0), ("batch_lag_ms", batch_lag_ms)]
    return _line(function, topic, _fields(values), at_ns)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def write_line(sink: Sink, line: str, deadline: Deadline) -> str:
    """Send ``line`` once to each InfluxDB sink of ``sink``; ``"written"``, ``"no influxdb sink"`` or
    what went wrong (logged as a warning). Never raises, never retries."""
    targets = [
        influx
        for member in members(sink)
        # with tenant routing, the pipeline's point goes to the INFLUX_* settings' own destination
        if isinstance(influx := getattr(member, "inner", member), ChunkedSink) and influx.name in INFLUX_SINKS
    ]
    if not targets:
        return "no influxdb sink"
    problems = []
    for target in targets:
        try:
            left = deadline.remaining()
            if left < MIN_REQUEST_SECONDS:
                problems.append(f"{target.name}: no time left before the invocation's deadline")
                continue
            target.post(target.encode([line], [0]), min(target.timeout, MAX_SECONDS, left))
        except SinkError as exc:
            problems.append(str(exc))
        except Exception as exc:  # whatever happens, the batch's outcome stands
            problems.append(f"{target.name}: {type(exc).__name__}: {exc}")
    if not problems:
        return "written"
    outcome = "; ".join(problems)
    log.warning("pipeline metrics point not written (the batch is not affected): %s", outcome)
    return f"not written: {outcome}"
