"""``refinery replay s3://bucket/prefix``: run quarantined and failed records through the pipeline again.

Reads, under the prefix:

* quarantine objects (``*.jsonl.gz``, written by the enricher): each line is one record with its
  topic, partition, offset, timestamp and raw value;
* on-failure destination objects of the event source mapping (JSON, possibly gzip): the original
  invocation record is found under ``payload`` (an object, a JSON string, or base64 of one) or the
  object itself is a Kafka event with ``records``.

Records are regrouped by topic-partition into Kafka events and processed by the same pipeline as
the enricher (same configuration, same sink), so points are identical to what a first successful
run would have written: replaying twice creates no duplicates. Records that are still refused are
quarantined again under ``<QUARANTINE_PREFIX>replay/…`` (keys derived from their coordinates), never
over the objects being replayed; replay skips that folder when it replays the quarantine itself, so
a second replay does not read its own output (replay ``…/replay/`` explicitly to retry those).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .quarantine import decode_records

REPLAY_PREFIX = "replay/"
#: Records per replayed invocation (the Lambda default batch size is far smaller; memory-bound here).
REPLAY_BATCH = 5000


class ReplayError(ValueError):
    pass


@dataclass
class ReplayReport:
    objects: int = 0
    records: int = 0
    written: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    still_refused: Counter[str] = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)
    quarantine_objects: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "records": self.records,
            "written": self.written,
            "dropped": dict(self.dropped),
            "still_refused": dict(self.still_refused),
            "unreadable_objects": self.unreadable,
            "new_quarantine_objects": self.quarantine_objects,
        }


def parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or len(url) <= 5:
        raise ReplayError(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise ReplayError(f"{url!r} names no bucket")
    return bucket, prefix


def _maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def records_of_failure_object(data: bytes) -> list[dict[str, Any]]:
    """Kafka records of an on-failure destination object (see the module doc for the shapes)."""
    doc = json.loads(_maybe_gunzip(data))
    event = doc.get("payload", doc) if isinstance(doc, dict) else None
    if isinstance(event, str):
        try:
            event = json.loads(event)
        except ValueError:
            try:
                event = json.loads(base64.b64decode(event, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise ReplayError("payload is neither JSON nor base64 JSON") from exc
    if not isinstance(event, dict) or not isinstance(event.get("records"), dict):
        raise ReplayError("no Kafka event with 'records' found (under 'payload' or at the top)")
    records = []
    for key, batch in event["records"].items():
        for record in batch:
            records.append({**record, "partition_key": key})
    return records


def read_objects(
    client: Any, bucket: str, prefix: str, skip: str | None = None
) -> Iterator[tuple[str, list[dict[str, Any]] | str]]:
    """(key, records) per object, or (key, error message) when the object cannot be read.

    Objects under ``skip`` (replay's own output) are left out, unless ``prefix`` is inside it.
    """
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/") or (skip and key.startswith(skip) and not prefix.startswith(skip)):
                continue
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            try:
                if key.endswith(".jsonl.gz"):
                    yield key, decode_records(data)
                else:
                    yield key, records_of_failure_object(data)
            except (ReplayError, ValueError, OSError, EOFError) as exc:
                yield key, f"{type(exc).__name__}: {exc}"


def to_events(records: list[dict[str, Any]], size: int = REPLAY_BATCH) -> Iterator[dict[str, Any]]:
    """Kafka events of at most ``size`` records, grouped by topic-partition in offset order."""

    def order(r: dict[str, Any]) -> tuple[str, int]:
        offset = r.get("offset")
        return (str(r.get("partition_key")), offset if isinstance(offset, int) else -1)

    for start in range(0, len(records), size):
        grouped: dict[str, list[dict[str, Any]]] = {}
        for record in sorted(records[start : start + size], key=order):
            key = record.get("partition_key") or f"{record.get('topic')}-{record.get('partition')}"
            grouped.setdefault(key, []).append(
                {
                    "topic": record.get("topic"),
                    "partition": record.get("partition"),
                    "offset": record.get("offset"),
                    "timestamp": record.get("timestamp"),
                    "timestampType": record.get("timestamp_type") or record.get("timestampType"),
                    "key": record.get("key"),
                    "value": record.get("value"),
                    "headers": [],
                }
            )
        yield {"eventSource": "aws:kafka", "records": grouped}


def replay(url: str, *, client: Any = None, timeout: float = 600.0) -> ReplayReport:
    """Replay every readable object under ``url`` with the enricher's configuration."""
    import boto3

    from . import enricher
    from .config import load_config
    from .pipeline import process_batch
    from .quarantine import Quarantine
    from .sinks import Deadline

    bucket, prefix = parse_s3_url(url)
    client = client or boto3.client("s3")
    config = load_config()
    runtime = enricher.build_runtime(config)
    replay_quarantine = Quarantine(
        runtime.quarantine.bucket,
        runtime.quarantine.prefix + REPLAY_PREFIX,
        runtime.quarantine.directory,
        client=client,
    )
    report = ReplayReport()
    all_records: list[dict[str, Any]] = []
    try:
        own_output = replay_quarantine.prefix if replay_quarantine.bucket == bucket else None
        for key, content in read_objects(client, bucket, prefix, skip=own_output):
            report.objects += 1
            if isinstance(content, str):
                report.unreadable.append(f"s3://{bucket}/{key}: {content}")
                continue
            all_records.extend(content)
        for event in to_events(all_records):
            deadline = Deadline(lambda: int(timeout * 1000), reserve=0.0)
            result = process_batch(
                event,
                runtime.store,
                runtime.sink,
                replay_quarantine,
                deadline,
                stage=runtime.stage,
                timestamp_digits=config.timestamp_digits,  # the same point times as the first run
            )
            report.records += result.records_in
            report.written += result.written
            report.dropped.update(result.dropped)
            report.still_refused.update(result.quarantined)
            if result.quarantine_object:
                report.quarantine_objects.append(result.quarantine_object)
    finally:
        runtime.sink.close()
    return report
