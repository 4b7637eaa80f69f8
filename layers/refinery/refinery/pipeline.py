"""One batch through the stages: decode -> enrich -> transform -> sink, and the accounting.

Every record ends in exactly one of three fates, so that for every invocation::

    records_in == written + dropped (by reason) + quarantined (by reason)

*written*: its point was acknowledged by the sink; *dropped*: policy (not an app event, a log
source we do not keep, an app unknown to the metadata); *quarantined*: it cannot be processed
(written to the quarantine with the reason). Only an unacknowledged flush, or a failed quarantine
write, raises — and then the whole batch is retried by the event source mapping.

Point identity is (measurement, tags, timestamp). Retrying a batch rewrites the same points. Two
*different* records of one batch that map to the same identity would silently overwrite each other
in InfluxDB; the later one's timestamp is moved forward by 1 ns until it is unique (counted as
``timestamp_adjusted``). Identical records (e.g. a nozzle re-send) give identical points: written
once, counted as ``duplicate_points``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .envelope import Poison, decode_value
from .kafka_event import iter_records
from .metadata.store import LOOKUP_DEFERRED, LOOKUP_FAILED, METADATA_UNAVAILABLE, MetadataStore
from .quarantine import Quarantine, QuarantinedRecord, batch_object_key
from .sinks import Deadline, Sink, WriteReport
from .transform import DROP_UNKNOWN_APP, Dropped, convert

MISS_DETAILS = {
    METADATA_UNAVAILABLE: "no metadata snapshot could be loaded and no live lookup is configured",
    LOOKUP_FAILED: "the app is not in the snapshot and its live Cloud Controller lookup failed",
    LOOKUP_DEFERRED: "the app is not in the snapshot and this invocation's live-lookup budget was spent",
}


@dataclass
class BatchResult:
    records_in: int = 0
    written: int = 0
    points: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    duplicate_points: int = 0
    timestamp_adjusted: int = 0
    partitions: dict[str, list[Any]] = field(default_factory=dict)
    quarantine_object: str | None = None
    sink: WriteReport | None = None
    seconds: float = 0.0

    @property
    def balanced(self) -> bool:
        return self.records_in == self.written + sum(self.dropped.values()) + sum(self.quarantined.values())

    def summary(self) -> dict[str, Any]:
        sink = self.sink or WriteReport()
        return {
            "records_in": self.records_in,
            "written": self.written,
            "points": self.points,
            "dropped": sum(self.dropped.values()),
            "dropped_by_reason": dict(self.dropped),
            "quarantined": sum(self.quarantined.values()),
            "quarantined_by_reason": dict(self.quarantined),
            "duplicate_points": self.duplicate_points,
            "timestamp_adjusted": self.timestamp_adjusted,
            "partitions": {
                k: {"first_offset": v[0], "last_offset": v[1], "records": v[2]}
                for k, v in self.partitions.items()
            },
            "quarantine_object": self.quarantine_object,
            "sink_chunks": sink.chunks,
            "sink_bytes": sink.bytes,
            "sink_retries": sink.retries,
            "sink_seconds": round(sink.seconds, 4),
            "seconds": round(self.seconds, 4),
        }


@dataclass
class Transformed:
    lines: list[str]
    quarantine: list[QuarantinedRecord]
    result: BatchResult
    first_timestamp: Any = None


def transform_batch(event: dict[str, Any], store: MetadataStore) -> Transformed:
    """Decode, enrich and transform every record (no I/O but metadata lookups)."""
    result = BatchResult()
    lines: list[str] = []
    bad: list[QuarantinedRecord] = []
    seen: dict[tuple[str, int], str] = {}
    lookup = store.lookup
    partitions = result.partitions
    first_timestamp = None
    for key, record in iter_records(event):
        result.records_in += 1
        offset = record.get("offset")
        span = partitions.get(key)
        if span is None:
            partitions[key] = [offset, offset, 1]
            if first_timestamp is None:
                first_timestamp = record.get("timestamp")
        else:
            span[1] = offset
            span[2] += 1
        try:
            outcome = convert(decode_value(record.get("value")), lookup)
        except Poison as exc:
            bad.append(QuarantinedRecord(key, record, exc.reason, exc.detail))
            result.quarantined[exc.reason] += 1
            continue
        if type(outcome) is Dropped:
            if outcome is DROP_UNKNOWN_APP and store.last_miss is not None:
                # Not known to be absent: metadata could not be had now. Keep it for replay.
                reason = store.last_miss
                bad.append(QuarantinedRecord(key, record, reason, MISS_DETAILS[reason]))
                result.quarantined[reason] += 1
            else:
                result.dropped[outcome.reason] += 1
            continue
        result.written += 1
        series, fields, stamp = outcome.rsplit(" ", 2)
        timestamp = int(stamp)
        previous = seen.get((series, timestamp))
        if previous is None:
            seen[(series, timestamp)] = fields
            lines.append(outcome)
            continue
        if previous == fields:
            result.duplicate_points += 1
            continue
        while (series, timestamp) in seen:
            timestamp += 1
        seen[(series, timestamp)] = fields
        result.timestamp_adjusted += 1
        lines.append(f"{series} {fields} {timestamp}")
    result.points = len(lines)
    return Transformed(lines, bad, result, first_timestamp)


def process_batch(
    event: dict[str, Any],
    store: MetadataStore,
    sink: Sink,
    quarantine: Quarantine,
    deadline: Deadline,
) -> BatchResult:
    """The whole batch: transform, quarantine what cannot be processed, flush the points."""
    started = time.monotonic()
    store.begin_invocation()
    done = transform_batch(event, store)
    result = done.result
    if done.quarantine:
        coordinates = [(k, v[0], v[1]) for k, v in result.partitions.items()]
        key = batch_object_key(quarantine.prefix, coordinates, done.first_timestamp)
        result.quarantine_object = quarantine.write(key, done.quarantine)
    result.sink = sink.write(done.lines, deadline)
    result.seconds = time.monotonic() - started
    return result
