"""Nozzle-format envelopes built to order (tests and examples): HTTP requests, logs, container metrics.

Each function returns the Kafka value exactly as kafka-firehose-nozzle writes it (compact JSON,
camelCase, enums as numbers, the app of an HTTP event as a sonde-go ``{"low", "high"}`` UUID).
"""

from __future__ import annotations

import base64
import json
import uuid

HTTP_START_STOP, LOG_MESSAGE, CONTAINER_METRIC = 4, 5, 9
METHODS = {"GET": 1, "POST": 2, "PUT": 3, "DELETE": 4}


def guid_to_uuid(guid: str) -> dict[str, int]:
    """``8-4-4-4-12`` GUID -> sonde-go ``{"low": u64, "high": u64}`` (little-endian halves)."""
    raw = uuid.UUID(guid).bytes
    return {"low": int.from_bytes(raw[:8], "little"), "high": int.from_bytes(raw[8:], "little")}


def _dump(envelope: dict[str, object]) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode()


def http_envelope(
    app_guid: str,
    start_ns: int,
    *,
    duration_ns: int = 12_345_678,
    status: int = 200,
    method: str = "GET",
    size: int = 1532,
    instance: int = 0,
) -> bytes:
    return _dump(
        {
            "origin": "gorouter",
            "eventType": HTTP_START_STOP,
            "timestamp": start_ns + duration_ns,
            "deployment": "cf",
            "job": "router",
            "httpStartStop": {
                "startTimestamp": start_ns,
                "stopTimestamp": start_ns + duration_ns,
                "peerType": 1,
                "method": METHODS[method],
                "uri": "http://app.example.com/",
                "statusCode": status,
                "contentLength": size,
                "applicationId": guid_to_uuid(app_guid),
                "instanceIndex": instance,
            },
        }
    )


def log_envelope(
    app_guid: str,
    timestamp_ns: int,
    *,
    message: bytes = b"hello\n",
    source_type: str = "APP/PROC/WEB",
    message_type: int = 1,
    instance: str = "0",
) -> bytes:
    return _dump(
        {
            "origin": "rep",
            "eventType": LOG_MESSAGE,
            "timestamp": timestamp_ns,
            "deployment": "cf",
            "job": "diego_cell",
            "logMessage": {
                "message": base64.b64encode(message).decode(),
                "message_type": message_type,
                "timestamp": timestamp_ns,
                "app_id": app_guid,
                "source_type": source_type,
                "source_instance": instance,
            },
        }
    )


def container_envelope(
    app_guid: str,
    timestamp_ns: int,
    *,
    cpu: float = 0.5,
    memory: int = 100_000_000,
    memory_quota: int = 500_000_000,
    disk: int = 200_000_000,
    disk_quota: int = 1_000_000_000,
    instance: int = 0,
) -> bytes:
    return _dump(
        {
            "origin": "rep",
            "eventType": CONTAINER_METRIC,
            "timestamp": timestamp_ns,
            "deployment": "cf",
            "job": "diego_cell",
            "containerMetric": {
                "applicationId": app_guid,
                "instanceIndex": instance,
                "cpuPercentage": cpu,
                "memoryBytes": memory,
                "diskBytes": disk,
                "memoryBytesQuota": memory_quota,
                "diskBytesQuota": disk_quota,
            },
        }
    )
