"""Settings of delivery: where and how the enricher writes (InfluxDB, remote write), its safety nets,
and the quarantine. Part of the settings table (:mod:`refinery.config.settings`).
"""

from __future__ import annotations

from ..identity import DEFAULT_DIGITS, MAX_DIGITS
from .parse import (
    parse_base_url,
    parse_bool,
    parse_bounded_int,
    parse_duration,
    parse_positive_duration,
    parse_positive_int,
    parse_text,
    parse_url,
)
from .setting import Setting

#: InfluxDB sink, flush and own metrics (group ``influx``), then delivery safety (group ``safety``).
INFLUX: tuple[Setting, ...] = (
    Setting(
        "INFLUX_URL",
        parse_base_url,
        None,
        "InfluxDB base URL. Unset: write nothing; `refinery invoke` prints the line protocol.",
        "influx",
    ),
    Setting(
        "INFLUX_TOKEN",
        parse_text,
        None,
        "v2 API token (InfluxDB 2.x/3.x/Cloud; for 1.8+ use `user:password`).",
        "influx",
        secret=True,
    ),
    Setting("INFLUX_ORG", parse_text, None, "v2 API organisation (name or ID).", "influx"),
    Setting(
        "INFLUX_BUCKET",
        parse_text,
        None,
        "v2 API bucket (for InfluxDB 1.8+: `database/retention-policy`).",
        "influx",
    ),
    Setting(
        "INFLUX_DATABASE",
        parse_text,
        None,
        "Set to use the v1 `/write` API (InfluxDB 1.x up to 1.7): the target database.",
        "influx",
    ),
    Setting(
        "INFLUX_RETENTION_POLICY",
        parse_text,
        "",
        "v1 API retention policy (empty: the database default).",
        "influx",
    ),
    Setting("INFLUX_USERNAME", parse_text, "", "v1 API user name (empty: no authentication).", "influx"),
    Setting("INFLUX_PASSWORD", parse_text, "", "v1 API password.", "influx", secret=True),
    Setting("INFLUX_BATCH_SIZE", parse_positive_int, "5000", "Lines per write request (chunk).", "influx"),
    Setting(
        "INFLUX_WRITE_CONCURRENCY",
        parse_bounded_int(1, 16),
        "2",
        "Chunks of one batch written at the same time (v1 API, 1 to 16); 1 writes them one by one.",
        "influx",
    ),
    Setting(
        "INFLUX_TIMEOUT",
        parse_positive_duration,
        "10s",
        "Longest time one write request may take, wall clock: connecting, sending and the whole answer.",
        "influx",
    ),
    Setting("INFLUX_GZIP", parse_bool, "true", "Gzip-compress write requests.", "influx"),
    Setting("INFLUX_VERIFY_TLS", parse_bool, "true", "Verify the server's TLS certificate.", "influx"),
    Setting(
        "INFLUX_CA_BUNDLE",
        parse_text,
        None,
        "CA certificate(s) InfluxDB's TLS certificate is verified against, instead of the default trust "
        "store (a private CA): the path of a PEM file (absolute, or relative to the function's "
        "directory) or the PEM text; `INFLUX_CA_BUNDLE_SECRET` / `_PARAMETER` read it from a secret.",
        "influx",
        secret=True,
    ),
    Setting(
        "INFLUX_MAX_RETRY_WAIT",
        parse_positive_duration,
        "30s",
        "Longest single wait between write retries (Retry-After is honoured up to this).",
        "influx",
    ),
    Setting(
        "FLUSH_TIME_RESERVE",
        parse_duration,
        "3s",
        "Time kept back from the invocation's deadline: retries stop when less than this remains. "
        "Must be less than the function's timeout (checked when an invocation starts).",
        "influx",
    ),
    Setting(
        "PIPELINE_METRICS",
        parse_bool,
        "false",
        "Also write the enricher's own per-batch metrics to InfluxDB, measurement `refinery_batch` "
        "(tags `function`, `topic`; README: Operating it), one small request after each batch's flush.",
        "influx",
    ),
    Setting(
        "MAX_RECORD_AGE_SECONDS",
        parse_duration,
        "0",
        "Records older than this (Kafka timestamp) are quarantined as too_old instead of written; 0: off.",
        "safety",
    ),
    Setting(
        "REPORT_BATCH_ITEM_FAILURES",
        parse_bool,
        "false",
        "Report per-partition failures (the mapping must have ReportBatchItemFailures) instead of "
        "failing the whole batch when a flush fails part-way.",
        "safety",
    ),
    Setting(
        "TIMESTAMP_HASH_DIGITS",
        parse_bounded_int(0, MAX_DIGITS),
        str(DEFAULT_DIGITS),
        "Last digits of each point's nanosecond timestamp taken from a hash of its record, so that "
        "distinct events never share a point and a re-sent one always does (README: Point identity). "
        "3 keeps microseconds (1 in 1000 chance per pair of same-series events in one microsecond); "
        "6 keeps milliseconds (1 in a million per pair in one millisecond); 0 writes the envelope's "
        "exact time (distinct events with the same series and time overwrite each other).",
        "safety",
    ),
)


#: Where records that cannot be processed are kept (group ``quarantine``).
QUARANTINE: tuple[Setting, ...] = (
    Setting(
        "QUARANTINE_BUCKET",
        parse_text,
        None,
        "S3 bucket for records that cannot be processed (default: METADATA_BUCKET).",
        "quarantine",
    ),
    Setting(
        "QUARANTINE_PREFIX", parse_text, "quarantine/", "Key prefix of quarantine objects.", "quarantine"
    ),
    Setting(
        "QUARANTINE_DIR",
        parse_text,
        "refinery-quarantine",
        "Local directory for quarantine objects when no bucket is set (local runs).",
        "quarantine",
    ),
)


#: Prometheus remote write (:mod:`refinery.sinks.prometheus_rw`, group ``prometheus``).
PROMETHEUS: tuple[Setting, ...] = (
    Setting(
        "PROM_REMOTE_WRITE_URL",
        parse_url,
        None,
        "Prometheus remote-write URL (Prometheus with --web.enable-remote-write-receiver or "
        "VictoriaMetrics: `…/api/v1/write`), alone or beside InfluxDB. Unset: no remote write.",
        "prometheus",
    ),
    Setting(
        "PROM_USERNAME",
        parse_text,
        "",
        "Remote-write basic-auth user name (with PROM_PASSWORD).",
        "prometheus",
    ),
    Setting("PROM_PASSWORD", parse_text, "", "Remote-write basic-auth password.", "prometheus", secret=True),
    Setting(
        "PROM_BEARER_TOKEN",
        parse_text,
        "",
        "Remote-write bearer token (instead of basic auth).",
        "prometheus",
        secret=True,
    ),
    Setting(
        "PROM_BATCH_SIZE",
        parse_positive_int,
        "2000",
        "Points per remote-write request (each numeric field is one sample).",
        "prometheus",
    ),
    Setting(
        "PROM_TIMEOUT",
        parse_positive_duration,
        "10s",
        "Longest time one remote-write request may take, wall clock (connecting, sending, the answer).",
        "prometheus",
    ),
    Setting(
        "PROM_VERIFY_TLS",
        parse_bool,
        "true",
        "Verify the remote-write server's TLS certificate.",
        "prometheus",
    ),
    Setting(
        "PROM_CA_BUNDLE",
        parse_text,
        None,
        "CA certificate(s) the remote-write server's TLS certificate is verified against, instead of the "
        "default trust store: a PEM file's path or the PEM text, as INFLUX_CA_BUNDLE "
        "(`PROM_CA_BUNDLE_SECRET` / `_PARAMETER` read it from a secret).",
        "prometheus",
        secret=True,
    ),
    Setting(
        "PROM_MAX_RETRY_WAIT",
        parse_positive_duration,
        "30s",
        "Longest single wait between remote-write retries (Retry-After is honoured up to this).",
        "prometheus",
    ),
)
