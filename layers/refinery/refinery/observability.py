"""Logger, metrics and their names, in one place.

Logs are Powertools structured JSON (stdout in Lambda; stderr for local runs, so stdout stays the
command's output), at the level of ``POWERTOOLS_LOG_LEVEL`` (default INFO). Metrics are CloudWatch
embedded metric format, namespace from ``POWERTOOLS_METRICS_NAMESPACE`` (default ``Refinery``), with
one dimension, ``service`` (``POWERTOOLS_SERVICE_NAME``): never per app, org or partition (each
dimension value is a separately billed metric).

Enricher, per invocation (only the reasons and tiers that occurred are emitted):

=========================  ============  ==========================================================
``RecordsIn``              Count         records in the batch
``RecordsWritten``         Count         records whose point InfluxDB acknowledged
``PointsWritten``          Count         distinct points written
``RecordsDropped``         Count         dropped by policy; ``Dropped.<reason>`` per reason
``RecordsQuarantined``     Count         quarantined; ``Quarantined.<reason>`` per reason
``EnrichmentMisses``       Count         records whose app could not be named (``unknown_app`` and
                                         the ``metadata_*`` quarantine reasons)
``HitRatio.<tier>``        Percent       share of the app resolutions answered by ``cache``,
                                         ``snapshot``, ``live`` or ``negative``
``SinkSeconds``            Seconds       time spent writing to the sink (latency of the flush)
``SinkRetries``            Count         write requests retried
``BatchLag``               Milliseconds  now minus the oldest record's Kafka timestamp
``SnapshotAge``            Seconds       since the snapshot in use was last known current: its
                                         ``generated_at``, or a later refresh that found the same
                                         content (the object's ``refinery-checked-at`` tag)
``BatchFailures``          Count         1 when the batch failed (the mapping retries it)
``BatchPartialFailures``   Count         1 when a partial batch response was returned
=========================  ============  ==========================================================

Refresh function: ``RefreshApps``, ``RefreshSpaces``, ``RefreshOrgs``, ``RefreshPages`` (Count),
``RefreshSeconds`` (Seconds), ``SnapshotBytes`` (Bytes) and ``RefreshFailures`` (Count, 0 or 1).
"""

from __future__ import annotations

import logging
import operator
import os
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

LOCAL_RUN_ENV = "REFINERY_LOCAL_RUN"
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "refinery")
DEFAULT_NAMESPACE = "Refinery"

#: Metric name -> unit, for every metric the functions emit (``<prefix>.<reason>`` families aside).
ENRICHER_METRICS: dict[str, str] = {
    "RecordsIn": MetricUnit.Count.value,
    "RecordsWritten": MetricUnit.Count.value,
    "PointsWritten": MetricUnit.Count.value,
    "RecordsDropped": MetricUnit.Count.value,
    "RecordsQuarantined": MetricUnit.Count.value,
    "Resends": MetricUnit.Count.value,
    "IdentityCollisions": MetricUnit.Count.value,
    "EnrichmentMisses": MetricUnit.Count.value,
    "SinkSeconds": MetricUnit.Seconds.value,
    "SinkRetries": MetricUnit.Count.value,
    "BatchLag": MetricUnit.Milliseconds.value,
    "SnapshotAge": MetricUnit.Seconds.value,
    "BatchFailures": MetricUnit.Count.value,
    "BatchPartialFailures": MetricUnit.Count.value,
}
REFRESH_METRICS: dict[str, str] = {
    "RefreshApps": MetricUnit.Count.value,
    "RefreshSpaces": MetricUnit.Count.value,
    "RefreshOrgs": MetricUnit.Count.value,
    "RefreshPages": MetricUnit.Count.value,
    "RefreshSeconds": MetricUnit.Seconds.value,
    "SnapshotBytes": MetricUnit.Bytes.value,
    "RefreshFailures": MetricUnit.Count.value,
}
#: Families of metrics named ``<prefix>.<suffix>``: prefix -> unit.
METRIC_FAMILIES: dict[str, str] = {
    "Dropped": MetricUnit.Count.value,
    "Quarantined": MetricUnit.Count.value,
    "HitRatio": MetricUnit.Percent.value,
}
#: Metadata tiers that answer a lookup (``HitRatio.<tier>``); the other outcomes are misses.
HIT_TIERS = ("cache", "snapshot", "live", "negative")
MISS_OUTCOMES = ("unknown", "live_failures", "deferred")
#: Reasons that mean "the app could not be named" (an enrichment miss), dropped or quarantined.
MISS_REASONS = frozenset(
    {
        "unknown_app",
        "metadata_unavailable",
        "metadata_lookup_failed",
        "metadata_lookup_deferred",
        "metadata_entry_invalid",
    }
)
#: Library loggers that print request or response bodies at DEBUG (a Secrets Manager or SSM answer
#: holds the secret): held at INFO whatever the root logger's level (Lambda's ApplicationLogLevel).
BODY_LOGGERS = ("botocore.parsers", "botocore.endpoint")


def make_logger(service: str = SERVICE) -> Logger:
    protect_secret_loggers()
    stream = sys.stderr if os.environ.get(LOCAL_RUN_ENV) else None
    return Logger(service=service, stream=stream)


def make_metrics(service: str = SERVICE) -> Metrics:
    return Metrics(
        service=service, namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or DEFAULT_NAMESPACE
    )


def protect_secret_loggers() -> None:
    """Keep the loggers in :data:`BODY_LOGGERS` from printing bodies, even with a DEBUG root logger."""
    for name in BODY_LOGGERS:
        library = logging.getLogger(name)
        if library.level < logging.INFO:  # unset (inherits the root's level) or DEBUG
            library.setLevel(logging.INFO)


# ------------------------------------------------------------------------------------ enricher


_TIMESTAMP = operator.itemgetter("timestamp")


def oldest_record_ms(event: Mapping[str, Any]) -> int | None:
    """The smallest Kafka ``timestamp`` (epoch ms) of the batch's records, or None."""
    oldest: int | None = None
    records = event.get("records")
    if not isinstance(records, Mapping):
        return None
    for batch in records.values():
        if not isinstance(batch, list) or not batch:
            continue
        try:  # the common batch, in C: every record a dict with an integer timestamp
            low = min(map(_TIMESTAMP, batch))
            # An int smallest of all is also the smallest of the ints (a NaN is never picked, except
            # first, and then low is not an int): the loop below would find the same.
            if type(low) is int:
                oldest = low if oldest is None else min(oldest, low)
                continue
        except (TypeError, KeyError):
            pass
        for record in batch:  # anything else, record by record
            stamp = record.get("timestamp") if type(record) is dict else None
            if type(stamp) is int and (oldest is None or stamp < oldest):
                oldest = stamp
    return oldest


def batch_lag_ms(event: Mapping[str, Any], now: float | None = None) -> int | None:
    """Now minus the oldest record's timestamp, in milliseconds (None without timestamps)."""
    oldest = oldest_record_ms(event)
    if oldest is None:
        return None
    return max(0, int((time.time() if now is None else now) * 1000) - oldest)


def partition_ranges(event: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"topic-partition": {"first_offset", "last_offset", "records"}}`` of the event (for errors)."""
    ranges: dict[str, dict[str, Any]] = {}
    records = event.get("records")
    if not isinstance(records, Mapping):
        return ranges
    for key, batch in records.items():
        if isinstance(batch, list) and batch:
            first, last = batch[0], batch[-1]
            ranges[str(key)] = {
                "first_offset": first.get("offset") if isinstance(first, dict) else None,
                "last_offset": last.get("offset") if isinstance(last, dict) else None,
                "records": len(batch),
            }
    return ranges


def snapshot_age_s(generated_at: str | None, now: float | None = None) -> float | None:
    """Seconds since a snapshot's RFC 3339 ``generated_at`` (None when absent or unreadable)."""
    if not generated_at:
        return None
    try:
        moment = datetime.fromisoformat(generated_at)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return round(max(0.0, (time.time() if now is None else now) - moment.timestamp()), 3)


def hit_ratios(tiers: Mapping[str, int]) -> dict[str, float]:
    """Percent of the app resolutions each tier answered; empty when nothing was resolved."""
    total = sum(tiers.get(k, 0) for k in (*HIT_TIERS, *MISS_OUTCOMES))
    if total <= 0:
        return {}
    return {tier: round(100.0 * tiers.get(tier, 0) / total, 2) for tier in HIT_TIERS}


def enrichment_misses(summary: Mapping[str, Any]) -> int:
    reasons: Iterable[tuple[str, int]] = (
        *summary["dropped_by_reason"].items(),
        *summary["quarantined_by_reason"].items(),
    )
    return sum(count for reason, count in reasons if reason in MISS_REASONS)


def emit_batch_metrics(metrics: Metrics, summary: Mapping[str, Any]) -> None:
    """The enricher's metrics for one batch, from its summary line."""
    add = metrics.add_metric
    unit = ENRICHER_METRICS
    add(name="RecordsIn", unit=unit["RecordsIn"], value=summary["records_in"])
    add(name="RecordsWritten", unit=unit["RecordsWritten"], value=summary["written"])
    add(name="PointsWritten", unit=unit["PointsWritten"], value=summary["points"])
    add(name="RecordsDropped", unit=unit["RecordsDropped"], value=summary["dropped"])
    add(name="RecordsQuarantined", unit=unit["RecordsQuarantined"], value=summary["quarantined"])
    add(name="Resends", unit=unit["Resends"], value=summary["resends"])
    add(name="IdentityCollisions", unit=unit["IdentityCollisions"], value=summary["identity_collisions"])
    for reason, count in summary["dropped_by_reason"].items():
        add(name=f"Dropped.{reason}", unit=METRIC_FAMILIES["Dropped"], value=count)
    for reason, count in summary["quarantined_by_reason"].items():
        add(name=f"Quarantined.{reason}", unit=METRIC_FAMILIES["Quarantined"], value=count)
    add(name="EnrichmentMisses", unit=unit["EnrichmentMisses"], value=enrichment_misses(summary))
    for tier, ratio in hit_ratios(summary.get("metadata") or {}).items():
        add(name=f"HitRatio.{tier}", unit=METRIC_FAMILIES["HitRatio"], value=ratio)
    add(name="SinkRetries", unit=unit["SinkRetries"], value=summary["sink_retries"])
    add(name="SinkSeconds", unit=unit["SinkSeconds"], value=summary["sink_seconds"])
    if summary.get("batch_lag_ms") is not None:
        add(name="BatchLag", unit=unit["BatchLag"], value=summary["batch_lag_ms"])
    if summary.get("snapshot_age_s") is not None:
        add(name="SnapshotAge", unit=unit["SnapshotAge"], value=summary["snapshot_age_s"])


def emit_failure_metric(metrics: Metrics, name: str) -> None:
    """``BatchFailures``, ``BatchPartialFailures`` or ``RefreshFailures``: 1."""
    unit = ENRICHER_METRICS.get(name) or REFRESH_METRICS[name]
    metrics.add_metric(name=name, unit=unit, value=1)


# ------------------------------------------------------------------------------------- refresh


def emit_refresh_metrics(metrics: Metrics, result: Any) -> None:
    """The refresh function's metrics after a successful run (a ``RefreshResult``)."""
    add = metrics.add_metric
    unit = REFRESH_METRICS
    add(name="RefreshApps", unit=unit["RefreshApps"], value=result.apps)
    add(name="RefreshSpaces", unit=unit["RefreshSpaces"], value=result.spaces)
    add(name="RefreshOrgs", unit=unit["RefreshOrgs"], value=result.orgs)
    add(name="RefreshPages", unit=unit["RefreshPages"], value=result.pages)
    add(name="RefreshSeconds", unit=unit["RefreshSeconds"], value=result.duration_s)
    add(name="SnapshotBytes", unit=unit["SnapshotBytes"], value=result.bytes)
    add(name="RefreshFailures", unit=unit["RefreshFailures"], value=0)


# ------------------------------------------------------------------------------------- errors


def error_fields(exc: BaseException) -> dict[str, str]:
    """``error`` (type and message) and, when there is one, its ``cause`` (the chained exception)."""
    fields = {"error": f"{type(exc).__name__}: {exc}"}
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        fields["cause"] = f"{type(cause).__name__}: {cause}"
    return fields


# ---------------------------------------------------------------------------------------- TLS

_tls_warned: set[str] = set()
#: Config attribute -> (its TLS setting, its URL attribute).
_TLS_SETTINGS = {
    "influx": ("INFLUX_VERIFY_TLS", "url"),
    "cf": ("CF_VERIFY_TLS", "api_url"),
    "prometheus": ("PROM_VERIFY_TLS", "url"),
}


def warn_if_tls_unverified(logger: Logger, config: Any) -> None:
    """Log once per container for each ``*_VERIFY_TLS`` setting that is false (verification is on
    by default; switching it off exposes the credentials sent to that server)."""
    for attribute, (setting, url_attribute) in _TLS_SETTINGS.items():
        endpoint = getattr(config, attribute, None)
        if endpoint is None or getattr(endpoint, "verify_tls", True) or setting in _tls_warned:
            continue
        _tls_warned.add(setting)
        logger.warning(
            f"TLS certificate verification is disabled ({setting}=false): connections to"
            f" {getattr(endpoint, url_attribute, '?')} can be intercepted, with the credentials they"
            " carry; set it to true (the default) once the server has a trusted certificate",
            extra={"setting": setting},
        )


def reset_tls_warnings() -> None:
    """Forget which warnings were logged: tests only."""
    _tls_warned.clear()


def log_implementation(logger: Any) -> None:
    """Once per container: which per-record path runs (compiled, or pure Python and why)."""
    from . import speedups

    if speedups.convert_run is not None:
        logger.info("per-record fast path: compiled", extra={"implementation": speedups.IMPLEMENTATION})
    else:
        logger.warning(
            "per-record fast path: pure Python (same output, about twice the CPU per record)",
            extra={"implementation": speedups.IMPLEMENTATION, "reason": speedups.UNAVAILABLE_REASON},
        )
