"""A small foundation for the rules, filters and remote-write tests: apps, their snapshot, events."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import boto3

from refinery.metadata.snapshot import encode_snapshot
from refinery_tools.dev.worked_example import APPS

METADATA_KEY = "metadata/apps.json.gz"


def put_snapshot(bucket: str) -> None:
    """The foundation's snapshot where the enricher reads it (replacing the sample one)."""
    data = encode_snapshot({a.guid: a for a in APPS}, "https://api.example.com", datetime.now(UTC))
    boto3.client("s3").put_object(Bucket=bucket, Key=METADATA_KEY, Body=data)


def kafka_event(partitions: dict[int, tuple[int, list[bytes]]], topic: str = "cf-firehose") -> dict[str, Any]:
    """An MSK event from, per partition number, (first offset, values)."""
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/cf/1",
        "records": {
            f"{topic}-{p}": [
                {
                    "topic": topic,
                    "partition": p,
                    "offset": first + i,
                    "timestamp": 1_700_000_000_000,
                    "timestampType": "CREATE_TIME",
                    "value": base64.b64encode(value).decode(),
                    "headers": [],
                }
                for i, value in enumerate(values)
            ]
            for p, (first, values) in partitions.items()
            if values
        },
    }
