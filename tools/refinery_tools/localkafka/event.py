"""Kafka consumer records → the event an MSK / self-managed Kafka event source mapping sends.

The shape (see ``kafka_event.py``): ``eventSource``, ``eventSourceArn`` (MSK only),
``bootstrapServers`` (one comma-separated string) and ``records`` keyed by ``"<topic>-<partition>"``,
each record with ``topic``, ``partition``, ``offset``, ``timestamp`` (epoch ms), ``timestampType``,
``key`` and ``value`` (base64; left out when the record has none) and ``headers`` (a list of
one-key objects whose value is the header's bytes as a list of integers).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Protocol

SOURCES = {"msk": "aws:kafka", "self-managed": "aws:SelfManagedKafka"}
# Lambda sends the cluster's ARN with MSK events; a local broker has none, so a recognisable stand-in.
LOCAL_CLUSTER_ARN = (
    "arn:aws:kafka:us-east-1:000000000000:cluster/refinery-local/00000000-0000-0000-0000-000000000000-1"
)
TIMESTAMP_TYPES = {0: "CREATE_TIME", 1: "LOG_APPEND_TIME"}
# Lambda cuts a batch at the synchronous-invocation payload limit (6 MB).
MAX_EVENT_BYTES = 6 * 1024 * 1024
_RECORD_OVERHEAD = 160  # the JSON keys, numbers and punctuation of one record, generously


class KafkaRecord(Protocol):
    """What we read of kafka-python's ``ConsumerRecord``."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def timestamp_type(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> list[tuple[str, bytes | None]]: ...


def partition_key(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def _b64_len(size: int) -> int:
    return (size + 2) // 3 * 4


def record_size(record: KafkaRecord) -> int:
    """An upper bound of the record's size in the event's JSON."""
    size = _RECORD_OVERHEAD + len(record.topic)
    if record.key is not None:
        size += _b64_len(len(record.key))
    if record.value is not None:
        size += _b64_len(len(record.value))
    for name, value in record.headers or ():
        size += len(name) + 8 + 4 * len(value or b"")
    return size


def lambda_record(record: KafkaRecord) -> dict[str, Any]:
    """One record as Lambda delivers it (keys in the order of AWS's example event)."""
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "timestampType": TIMESTAMP_TYPES.get(record.timestamp_type, "NO_TIMESTAMP_TYPE"),
    }
    if record.key is not None:
        out["key"] = base64.b64encode(record.key).decode("ascii")
    if record.value is not None:
        out["value"] = base64.b64encode(record.value).decode("ascii")
    out["headers"] = [{name: list(value or b"")} for name, value in record.headers or ()]
    return out


@dataclass
class Batch:
    """Records gathered for one invocation, in offset order per partition."""

    records: dict[tuple[str, int], list[KafkaRecord]] = field(default_factory=dict)
    count: int = 0
    size: int = 0

    def add(self, record: KafkaRecord, size: int | None = None) -> None:
        self.records.setdefault((record.topic, record.partition), []).append(record)
        self.count += 1
        self.size += record_size(record) if size is None else size

    def first_offsets(self) -> dict[tuple[str, int], int]:
        return {tp: recs[0].offset for tp, recs in self.records.items()}

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """Per partition, the offset to commit when the whole batch succeeded (last + 1)."""
        return {tp: recs[-1].offset + 1 for tp, recs in self.records.items()}

    def without(self, partitions: set[tuple[str, int]]) -> Batch:
        kept = Batch()
        for tp, recs in self.records.items():
            if tp not in partitions:
                for record in recs:
                    kept.add(record)
        return kept

    def to_event(self, source: str, bootstrap: str) -> dict[str, Any]:
        """The Lambda event; ``source`` is ``aws:kafka`` (MSK) or ``aws:SelfManagedKafka``."""
        event: dict[str, Any] = {"eventSource": source}
        if source == SOURCES["msk"]:
            event["eventSourceArn"] = LOCAL_CLUSTER_ARN
        event["bootstrapServers"] = bootstrap
        event["records"] = {
            partition_key(topic, partition): [lambda_record(r) for r in recs]
            for (topic, partition), recs in sorted(self.records.items())
        }
        return event
