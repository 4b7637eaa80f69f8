"""Logger, metrics and their names, in one place.

Logs are Powertools structured JSON (stdout in Lambda; stderr for local runs, so stdout stays the
command's output). Metrics are CloudWatch embedded metric format, namespace from
``POWERTOOLS_METRICS_NAMESPACE`` (default ``Refinery``), with no per-app dimensions.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

LOCAL_RUN_ENV = "REFINERY_LOCAL_RUN"
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "refinery")


def make_logger(service: str = SERVICE) -> Logger:
    stream = sys.stderr if os.environ.get(LOCAL_RUN_ENV) else None
    return Logger(service=service, stream=stream)


def make_metrics(service: str = SERVICE) -> Metrics:
    return Metrics(service=service, namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Refinery"))


def emit_batch_metrics(metrics: Metrics, summary: dict[str, Any]) -> None:
    """Metric names of the enricher's batch summary."""
    metrics.add_metric(name="RecordsIn", unit=MetricUnit.Count, value=summary["records_in"])
    metrics.add_metric(name="RecordsWritten", unit=MetricUnit.Count, value=summary["written"])
    metrics.add_metric(name="PointsWritten", unit=MetricUnit.Count, value=summary["points"])
    metrics.add_metric(name="RecordsDropped", unit=MetricUnit.Count, value=summary["dropped"])
    metrics.add_metric(name="RecordsQuarantined", unit=MetricUnit.Count, value=summary["quarantined"])
    for reason, count in summary["dropped_by_reason"].items():
        metrics.add_metric(name=f"Dropped.{reason}", unit=MetricUnit.Count, value=count)
    for reason, count in summary["quarantined_by_reason"].items():
        metrics.add_metric(name=f"Quarantined.{reason}", unit=MetricUnit.Count, value=count)
    metrics.add_metric(name="SinkRetries", unit=MetricUnit.Count, value=summary["sink_retries"])
    metrics.add_metric(name="SinkSeconds", unit=MetricUnit.Seconds, value=summary["sink_seconds"])
