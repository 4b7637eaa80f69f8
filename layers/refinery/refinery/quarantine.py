"""Records that cannot be processed, kept in S3 with the reason, so they can be replayed.

One object per invocation holds every quarantined record of the batch, one JSON object per line
(gzip): ``topic, partition, offset, timestamp, timestamp_type, key, reason, detail, value`` (the raw
base64 value as received). A record one sink refused (``rejected_by_server``) also names the ``sink``
and the ``line`` it refused (one entry per refused line): a replay writes that line to that sink
only, so it never adds again what another sink (or the same sink, in another point) acknowledged.
The key is derived from the batch's Kafka coordinates only, so a retried batch rewrites the same
object instead of adding a second::

    <QUARANTINE_PREFIX><yyyy>/<mm>/<dd>/<first topic-partition>-<first offset>-<digest>.jsonl.gz

If the write fails the batch fails: a record is never dropped silently.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .s3 import LazyS3Client
from .tracing import traced


class QuarantineError(RuntimeError):
    """The quarantine object could not be written: the batch must fail."""


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    partition_key: str
    record: dict[str, Any]
    reason: str
    detail: str
    sink: str | None = None  # the sink that refused ``line`` (None: the record was not written anywhere)
    line: str | None = None
    aggregate: bool = False  # ``line`` is a recording rule's per-batch aggregate

    def as_dict(self) -> dict[str, Any]:
        r = self.record
        refused: dict[str, Any] = {"sink": self.sink, "line": self.line} if self.sink is not None else {}
        if self.aggregate:
            refused["aggregate"] = True
        return {
            "topic": r.get("topic"),
            "partition": r.get("partition"),
            "offset": r.get("offset"),
            "timestamp": r.get("timestamp"),
            "timestamp_type": r.get("timestampType"),
            "key": r.get("key"),
            "partition_key": self.partition_key,
            "reason": self.reason,
            "detail": self.detail,
            "value": r.get("value"),
            **refused,
        }


def batch_object_key(prefix: str, coordinates: list[tuple[str, Any, Any]], first_timestamp_ms: Any) -> str:
    """Deterministic key from (topic-partition, first offset, last offset) of every partition."""
    digest = hashlib.sha256(repr(sorted(coordinates, key=repr)).encode()).hexdigest()[:16]
    try:
        day = datetime.fromtimestamp(int(first_timestamp_ms) / 1000, UTC).strftime("%Y/%m/%d")
    except (TypeError, ValueError, OverflowError, OSError):
        day = "undated"
    first = sorted(coordinates, key=repr)[0] if coordinates else ("empty", 0, 0)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(first[0]))
    return f"{prefix}{day}/{safe}-{first[1]}-{digest}.jsonl.gz"


def encode_records(records: list[QuarantinedRecord]) -> bytes:
    body = b"".join(orjson.dumps(r.as_dict()) + b"\n" for r in records)
    return gzip.compress(body, mtime=0)


def decode_records(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in gzip.decompress(data).splitlines() if line.strip()]


class Quarantine(LazyS3Client):
    """Writes a batch's quarantine object to S3 (``bucket``) or, for local runs, a directory."""

    def __init__(self, bucket: str | None, prefix: str, directory: str | None = None, client: Any = None):
        self.bucket = bucket
        self.prefix = prefix
        self.directory = directory
        self._client = client

    def location(self, key: str) -> str:
        if self.bucket:
            return f"s3://{self.bucket}/{key}"
        return os.path.join(self.directory or ".", key)

    @traced("## quarantine write")
    def write(self, key: str, records: list[QuarantinedRecord]) -> str:
        body = encode_records(records)
        where = self.location(key)
        try:
            if self.bucket:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/x-ndjson",
                    ContentEncoding="gzip",
                )
            else:
                os.makedirs(os.path.dirname(where), exist_ok=True)
                with open(where, "wb") as handle:
                    handle.write(body)
        except Exception as exc:
            raise QuarantineError(
                f"cannot write {len(records)} quarantined record(s) to {where}: {exc}"
            ) from exc
        return where
