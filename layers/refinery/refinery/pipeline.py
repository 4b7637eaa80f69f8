"""One batch through the stages: decode -> enrich -> convert -> sink, and the accounting.

Every record ends in exactly one of three fates, so that for every invocation::

    records_in == written + dropped (by reason) + quarantined (by reason)

*written*: its point was acknowledged by the sink; *dropped*: policy (not an app event, a log
source we do not keep, an app unknown to the metadata); *quarantined*: it cannot be processed
(written to the quarantine with the reason). Only an unacknowledged flush, or a failed quarantine
write, raises — and then the whole batch is retried by the event source mapping.

A point's identity (measurement, tags, timestamp) is a pure function of its record
(:mod:`refinery.identity`: the timestamp's last digits come from a fingerprint of the record's
bytes), never of the batch, position, partition or offset, so any retry, re-cut, replay or order of
invocations writes the same points. Within a batch, records whose points are identical (a nozzle
re-send) are written once and counted as ``resends``; points of one series at one time with other
fields (a fingerprint collision, or any distinct events with ``TIMESTAMP_HASH_DIGITS=0``) are counted
as ``identity_collisions``: InfluxDB keeps one of them.

Lines the server refuses for good (a field type conflict, say) are isolated by the sink and their
records quarantined with the server's message; the rest of the batch is written. With
``MAX_RECORD_AGE_SECONDS``, records older than that are quarantined (``too_old``) instead of written.
With partial batch responses (``REPORT_BATCH_ITEM_FAILURES``), a flush that fails part-way reports,
per partition, the first offset not acknowledged instead of failing the whole batch.
"""

from __future__ import annotations

import time
from binascii import a2b_base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .batch import BatchPoints, BatchResult, Origin
from .convert import DROP_UNKNOWN_APP, Dropped, convert
from .envelope import MAX_VALUE_BYTES, Poison, b64decode, decode_value
from .identity import DEFAULT_DIGITS, stamp_line
from .lineparse import series_end
from .metadata.store import (
    LOOKUP_DEFERRED,
    LOOKUP_FAILED,
    METADATA_INVALID,
    METADATA_UNAVAILABLE,
    MetadataStore,
)
from .quarantine import Quarantine, QuarantinedRecord, batch_object_key
from .sinks import Deadline, FlushError, Sink, WriteReport
from .sinks.base import DESTINATION_UNAVAILABLE
from .sinks.fanout import families, write_routed
from .speedups import convert_run

if TYPE_CHECKING:
    from .point_stage import PointStage

MISS_DETAILS = {
    METADATA_UNAVAILABLE: "no metadata snapshot could be loaded and no live lookup is configured",
    LOOKUP_FAILED: "the app is not in the snapshot and its live Cloud Controller lookup failed",
    LOOKUP_DEFERRED: "the app is not in the snapshot and this invocation's live-lookup budget was spent",
    METADATA_INVALID: "the app's entry in the snapshot is malformed",
}


MAX_VALUE_CHARS = MAX_VALUE_BYTES * 4 // 3 + 4
TOO_OLD = "too_old"
REJECTED = "rejected_by_server"


def refusal_reason(message: str) -> str:
    """The quarantine reason of a line a sink refused: ``destination_unavailable`` for a routed line whose
    destination is missing or refuses us (sinks/routed.py), else ``rejected_by_server``."""
    return DESTINATION_UNAVAILABLE if message.startswith(DESTINATION_UNAVAILABLE) else REJECTED


class AppLookup(Protocol):
    """What the decode stage asks of the metadata (:class:`~refinery.metadata.store.MetadataStore`, or a
    tool's wrapper of it): an app's tags, and why the last lookup that found none could not tell."""

    def lookup(self, guid: str) -> Any: ...

    @property
    def last_miss(self) -> str | None: ...


class _SameTime:
    """The points of a batch that share one timestamp: by line (re-sends) and by series (collisions)."""

    __slots__ = ("lines", "series")

    def __init__(self, line: str, index: int):
        self.lines = {line: index}
        self.series = {line[: series_end(line)]}


class _Placement:
    """Points placed in the batch: one dict insert per timestamp; lines compared only when two points
    share a timestamp (the compiled fast path does the common case inline, with the same ``by_time``)."""

    def __init__(self, points: BatchPoints):
        self.t = points
        self.by_time: dict[int, int | _SameTime] = {}

    def collide(self, line: str, timestamp: int, origin: Origin) -> None:
        t = self.t
        same = self.by_time[timestamp]
        if isinstance(same, int):
            same = self.by_time[timestamp] = _SameTime(t.lines[same], same)
        index = same.lines.get(line)
        if index is not None:  # the same point again: a re-send of the same record
            t.result.resends += 1
            t.more_origins.setdefault(index, []).append(origin)
            return
        series = line[: series_end(line)]
        if series in same.series:
            t.result.identity_collisions += 1
        else:
            same.series.add(series)
        same.lines[line] = len(t.lines)
        t.lines.append(line)
        t.origins.append(origin)


def convert_batch(
    event: dict[str, Any],
    store: AppLookup,
    oldest_timestamp_ms: float | None = None,
    *,
    timestamp_digits: int = DEFAULT_DIGITS,
    fast_path: bool = True,
) -> BatchPoints:
    """Decode, enrich and convert every record to its point (no I/O but metadata lookups).

    ``origins[i]`` lists the records whose point is ``lines[i]`` (more than one for duplicates).
    The common record is handled by the compiled fast path when it is built
    (:mod:`refinery.speedups`); every other record (and all of them without it) takes the reference
    path: a validating base64 decoder and orjson, and for a record that fails that the reference
    decoder (:func:`~refinery.envelope.decode_value`), which names the reason it is quarantined (or
    reads what only the standard library can, such as NaN). ``fast_path=False`` sends every record the
    reference way (tests and the benchmark compare the two).

    Each point's timestamp is its identity time (:func:`refinery.identity.point_time`, the last
    ``timestamp_digits`` digits from the record's bytes; 0: the envelope's own time).
    """
    modulus = 10**timestamp_digits
    result = BatchResult()
    points = BatchPoints([], [], result)
    placement = _Placement(points)
    collide = placement.collide
    by_time = placement.by_time
    lines = points.lines
    origins = points.origins
    bad = points.quarantine
    lookup = store.lookup
    loads = orjson.loads
    run = convert_run if fast_path else None
    partitions = result.partitions
    dropped = result.dropped
    first_timestamp = None
    written = 0
    for key, batch in event["records"].items():
        if not batch:
            continue
        first, last = batch[0], batch[-1]
        partitions[key] = [
            first.get("offset") if type(first) is dict else None,
            last.get("offset") if type(last) is dict else None,
            len(batch),
        ]
        if first_timestamp is None and type(first) is dict:
            first_timestamp = first.get("timestamp")
        index, size = 0, len(batch)
        while index < size:
            outcome: Any = None  # the compiled path's, a Point, a Dropped, or the stamped line
            if run is not None:
                # Compiled: places and counts records until one needs the handling below; its
                # outcome, if computed, comes back with it (None: take the reference path).
                index, outcome, placed = run(
                    batch, index, key, lookup, by_time, lines, origins, dropped, oldest_timestamp_ms, modulus
                )
                written += placed
                if index >= size:
                    break
            record = batch[index]
            index += 1
            if type(record) is not dict:
                record = {"value": record}
            value: Any = record.get("value")
            if oldest_timestamp_ms is not None:
                stamp_ms = record.get("timestamp")
                if type(stamp_ms) is int and stamp_ms < oldest_timestamp_ms:
                    bad.append(QuarantinedRecord(key, record, TOO_OLD, "older than MAX_RECORD_AGE_SECONDS"))
                    continue
            if outcome is None:
                raw: Any = None  # the value's bytes, once decoded (the identity's fingerprint)
                envelope: Any = None
                try:
                    if len(value) <= MAX_VALUE_CHARS:
                        raw = b64decode(value)
                        envelope = loads(raw)
                except (ValueError, TypeError):
                    pass
                try:
                    if type(envelope) is not dict:
                        envelope = decode_value(value)  # strict: raises Poison naming the reason
                        raw = a2b_base64(value, strict_mode=True)  # decode_value could: so can this
                    outcome = convert(envelope, lookup)
                except Poison as exc:
                    bad.append(QuarantinedRecord(key, record, exc.reason, exc.detail))
                    continue
                if type(outcome) is tuple:
                    outcome = stamp_line(outcome[0], outcome[1], raw, modulus)
            if type(outcome) is Dropped:
                if outcome is DROP_UNKNOWN_APP and store.last_miss is not None:
                    # Not known to be absent: metadata could not be had now. Keep it for replay.
                    reason = store.last_miss
                    bad.append(QuarantinedRecord(key, record, reason, MISS_DETAILS[reason]))
                else:
                    dropped[outcome.reason] += 1
                continue
            written += 1
            timestamp = outcome[1]
            if timestamp in by_time:  # another point of this batch has that time: compare them
                collide(outcome[0], timestamp, (key, record))
            else:
                by_time[timestamp] = len(lines)
                lines.append(outcome[0])
                origins.append((key, record))
    result.records_in = sum(span[2] for span in partitions.values())
    result.written = written
    for item in bad:
        result.quarantined[item.reason] += 1
    result.points = len(points.lines)
    points.first_timestamp = first_timestamp
    return points


def process_batch(
    event: dict[str, Any],
    store: MetadataStore,
    sink: Sink,
    quarantine: Quarantine,
    deadline: Deadline,
    *,
    max_record_age: float | None = None,
    partial_failures: bool = False,
    timestamp_digits: int = DEFAULT_DIGITS,
    now: Callable[[], float] = time.time,
    stage: PointStage | None = None,
) -> BatchResult:
    """The whole batch: convert, flush the points, quarantine what cannot be processed."""
    started = time.monotonic()
    store.begin_invocation()
    if stage is not None:  # filters, extra tags, recording rules (point_stage.py)
        stage.begin_invocation()
    oldest = (now() - max_record_age) * 1000.0 if max_record_age else None
    done = convert_batch(event, store, oldest, timestamp_digits=timestamp_digits)
    if stage is not None:
        stage.apply(done, families(sink))
    result = done.result
    bad = done.quarantine
    try:
        result.sink = write_routed(sink, done.lines, done.routes, deadline)
    except FlushError as exc:
        if not partial_failures or done.whole_batch_only:
            # Without partial responses the whole batch is retried (and with recording rules, whose
            # aggregates a partial redelivery could split).
            raise
        result.flush_error = str(exc)
        result.batch_item_failures = _first_unacknowledged(done, exc.acknowledged)
        failed = {
            item["itemIdentifier"]["partition"]: item["itemIdentifier"]["offset"]
            for item in result.batch_item_failures
        }
        # What comes at or after a partition's failed offset is delivered again: do not quarantine it
        # now, and count it as redelivered rather than as written, dropped or quarantined.
        bad = [q for q in bad if not _redelivered(q, failed)]
        _quarantine_rejected(done, exc.report, bad, result, failed)
        again_done = convert_batch(
            _records_from(event, failed), store, oldest, timestamp_digits=timestamp_digits
        )
        if stage is not None:
            stage.apply(again_done, families(sink))
        again = again_done.result
        result.redelivered = again.records_in
        result.written -= again.written
        result.dropped.subtract(again.dropped)
        result.quarantined.subtract(again.quarantined)
        result.dropped = +result.dropped
        result.quarantined = +result.quarantined
        result.sink = exc.report or WriteReport(lines=len(done.lines))
        result.points = exc.acknowledged - sum(1 for i, _ in result.sink.rejected if i < exc.acknowledged)
    else:
        _quarantine_rejected(done, result.sink, bad, result)
    if bad:
        coordinates = [(k, v[0], v[1]) for k, v in result.partitions.items()]
        key = batch_object_key(quarantine.prefix, coordinates, done.first_timestamp)
        result.quarantine_object = quarantine.write(key, bad)
    result.seconds = time.monotonic() - started
    return result


def _quarantine_rejected(
    done: BatchPoints,
    report: WriteReport | None,
    bad: list[QuarantinedRecord],
    result: BatchResult,
    failed: dict[str, Any] | None = None,
) -> None:
    """Lines a sink refused for good: their records go to the quarantine with the sink's message, the
    sink and the refused line (a replay writes that line to that sink only). A record the mapping will
    deliver again (at or after its partition's ``failed`` offset) is left to that delivery."""
    if report is None:
        return
    refusals = getattr(report, "refusals", None)
    if refusals is None:
        refusals = [(index, None, message) for index, message in report.rejected]
    seen: set[int] = set()  # a record in several refused points (a rule's aggregate) counts once
    lines: set[int] = set()
    for index, sink_name, message in refusals:
        if index not in lines:
            lines.add(index)
            result.points -= 1
        line = done.lines[index] if sink_name is not None else None
        aggregate = bool(getattr(done.routes.get(index), "last", False))
        reason = refusal_reason(message)
        for key, record in done.origins_of(index):
            if failed and _delivered_again(key, record, failed):
                continue
            bad.append(QuarantinedRecord(key, record, reason, message, sink_name, line, aggregate))
            if id(record) in seen:
                continue
            seen.add(id(record))
            result.written -= 1
            result.quarantined[reason] += 1


def _first_unacknowledged(done: BatchPoints, acknowledged: int) -> list[dict[str, Any]]:
    """Per partition, the lowest offset among records whose line was not acknowledged."""
    first: dict[str, Any] = {}
    for index in range(acknowledged, len(done.lines)):
        for key, record in done.origins_of(index):
            offset = record.get("offset")
            if key not in first or (offset is not None and offset < first[key]):
                first[key] = offset
    return [{"itemIdentifier": {"partition": key, "offset": offset}} for key, offset in first.items()]


def _records_from(event: dict[str, Any], failed: dict[str, Any]) -> dict[str, Any]:
    """The part of the event that the mapping will deliver again."""
    records = {}
    for key, batch in event["records"].items():
        if key in failed:
            offset = failed[key]
            records[key] = [
                r
                for r in batch
                if not isinstance(r, dict)
                or r.get("offset") is None
                or offset is None
                or r["offset"] >= offset
            ]
    return {**event, "records": records}


def _redelivered(item: QuarantinedRecord, failed: dict[str, Any]) -> bool:
    return _delivered_again(item.partition_key, item.record, failed)


def _delivered_again(key: str, record: dict[str, Any], failed: dict[str, Any]) -> bool:
    """The record is at or after its partition's failed offset: the mapping delivers it again."""
    offset = failed.get(key)
    record_offset = record.get("offset")
    return offset is not None and (record_offset is None or record_offset >= offset)
