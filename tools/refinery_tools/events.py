"""Build Lambda Kafka events (MSK or self-managed) from nozzle-format envelopes."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

SAMPLE_CLUSTER_ARN = (
    "arn:aws:kafka:us-east-1:123456789012:cluster/cf-firehose/1b2c3d4e-0000-4a5b-9c8d-123456789abc-2"
)
SAMPLE_BOOTSTRAP = "b-1.cf-firehose.abcdef.c2.kafka.us-east-1.amazonaws.com:9098"


def build_kafka_event(
    values: Iterable[bytes],
    *,
    topic: str = "cf-firehose",
    partitions: int = 1,
    source: str = "aws:kafka",
    first_offset: int = 0,
    timestamp_ms: int = 1537510364200,
) -> dict[str, Any]:
    """Records are spread round-robin over ``partitions`` (as the nozzle's producer does)."""
    records: dict[str, list[dict[str, Any]]] = {}
    offsets = [first_offset] * partitions
    for i, value in enumerate(values):
        partition = i % partitions
        records.setdefault(f"{topic}-{partition}", []).append(
            {
                "topic": topic,
                "partition": partition,
                "offset": offsets[partition],
                "timestamp": timestamp_ms + i,
                "timestampType": "CREATE_TIME",
                "value": base64.b64encode(value).decode(),
                "headers": [],
            }
        )
        offsets[partition] += 1
    event: dict[str, Any] = {"eventSource": source}
    if source == "aws:kafka":
        event["eventSourceArn"] = SAMPLE_CLUSTER_ARN
    event["bootstrapServers"] = SAMPLE_BOOTSTRAP
    event["records"] = records
    return event
