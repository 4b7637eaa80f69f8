"""Prometheus remote write into a real Prometheus and a real VictoriaMetrics, beside a real InfluxDB.

The same batch goes through the real handler; the raw series read back from Prometheus
(``/api/v1/query``) and VictoriaMetrics (``/api/v1/export``) must be exactly what InfluxDB got,
field by field: ``<measurement>_<field>``, the tags as labels, the time in milliseconds. Recording
rules write InfluxDB a point per record and remote write an aggregate per batch and partition: their
window sums must agree.

Prometheus refuses samples far older than its newest: every batch here is near the present, and
each test labels its points with its own ``run`` (an extra tag) so they never mix in the shared
servers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import boto3
import pytest
from cfworld import kafka_event, put_snapshot

from refinery.handlers import enricher
from refinery.quarantine import decode_records
from refinery.sinks import FlushError
from refinery_tools.dev.envelopes import container_envelope, http_envelope, log_envelope
from refinery_tools.dev.servers import VictoriaMetricsServer, free_port
from refinery_tools.dev.worked_example import API_EU, MS, WORKER_AP, WORKER_EU, WORKER_US, S
from support.faultproxy import FaultProxy

RULES = """
rules:
  - name: requests_by_status
    source: http_request
    keep: [org, status_code]
    aggregation: count
    window: 60s
  - name: log_bytes
    source: log
    filter: ['type != "RTR"']
    keep: [app]
    field: size
    aggregation: sum
    window: 60s
    keep_raw: false
"""
MEASUREMENTS = ("http_request", "log", "instance")
RULE_OUTPUTS = {"requests_by_status": "count", "log_bytes": "sum"}
WINDOW_MS = 60_000

Sample = tuple[str, frozenset[tuple[str, str]], int, float]


def recent_minute() -> int:
    """A minute boundary five minutes ago (ns)."""
    return (time.time_ns() // (60 * S)) * 60 * S - 5 * 60 * S


def a_batch(start: int) -> dict:
    values = [
        http_envelope(WORKER_EU.guid, start + 1 * S, size=20, status=200),
        http_envelope(WORKER_EU.guid, start + 2 * S, size=25, status=503, method="POST", instance=1),
        http_envelope(WORKER_AP.guid, start + 3 * S, size=30, status=200),
        http_envelope(API_EU.guid, start + 4 * S, size=1, status=404, duration_ns=1_500_000),
        log_envelope(WORKER_US.guid, start + 5 * S, message=b"a" * 40),
        log_envelope(WORKER_US.guid, start + 6 * S, message=b"b" * 2, message_type=2),
        log_envelope(API_EU.guid, start + 7 * S, message=b"router line", source_type="RTR"),
        container_envelope(WORKER_EU.guid, start + 8 * S, cpu=12.75, memory=123_456_789),
        container_envelope(WORKER_EU.guid, start + 61 * S, cpu=0.0, instance=1, memory_quota=0),
    ]
    return kafka_event({0: (100, values[0::2]), 1: (7, values[1::2])})


@pytest.fixture(scope="module")
def deduplicating_vm(victoriametrics: VictoriaMetricsServer) -> Iterator[VictoriaMetricsServer]:
    """VictoriaMetrics keeps every copy of a re-sent sample unless told to deduplicate: a retried
    batch is exact only with ``-dedup.minScrapeInterval=1ms`` (see README). The session server shows
    the binary is there (or fails in CI)."""
    with VictoriaMetricsServer(extra_args=["-dedup.minScrapeInterval=1ms"]) as server:
        yield server


@pytest.fixture
def run_id(monkeypatch, snapshot_bucket, influxdb1, influx_db, tmp_path) -> str:
    """Influx v1 + rules + a unique ``run`` tag; the caller sets PROM_REMOTE_WRITE_URL."""
    put_snapshot(snapshot_bucket)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    run = uuid.uuid4().hex[:12]
    monkeypatch.setenv("INFLUX_URL", influxdb1.url)
    monkeypatch.setenv("INFLUX_DATABASE", influx_db)
    monkeypatch.setenv("RULES_FILE", str(rules))
    monkeypatch.setenv("EXTRA_TAGS", f"run={run},foundation=eu prod")
    return run


def influx_rule_sums(influxdb1, db: str) -> dict[tuple[str, frozenset[tuple[str, str]], int], float]:
    """Per rule series (without ``partition``) and window (ms): the window's sum, as the README queries it."""
    out: dict[tuple[str, frozenset[tuple[str, str]], int], float] = {}
    for measurement, field in RULE_OUTPUTS.items():
        for point in influxdb1.points(db, measurement):
            key = (
                f"{measurement}_{field}",
                frozenset(point["tags"].items()),
                point["time"] // MS // WINDOW_MS,
            )
            out[key] = out.get(key, 0.0) + point["fields"][field]
    return out


def remote_rule_sums(samples: set[Sample]) -> dict[tuple[str, frozenset[tuple[str, str]], int], float]:
    """The same from remote-write samples: each partition's aggregates of a window summed."""
    names = {f"{m}_{f}" for m, f in RULE_OUTPUTS.items()}
    out: dict[tuple[str, frozenset[tuple[str, str]], int], float] = {}
    for name, labels, ms, value in samples:
        if name in names:
            key = (name, frozenset(kv for kv in labels if kv[0] != "partition"), ms // WINDOW_MS)
            out[key] = out.get(key, 0.0) + value
    return out


def raw(samples: set[Sample]) -> set[Sample]:
    """The samples of raw points (not of a rule's aggregates)."""
    names = {f"{m}_{f}" for m, f in RULE_OUTPUTS.items()}
    return {s for s in samples if s[0] not in names}


def influx_samples(influxdb1, db: str) -> set[Sample]:
    out: set[Sample] = set()
    for measurement in MEASUREMENTS:
        for point in influxdb1.points(db, measurement):
            labels = frozenset(point["tags"].items())
            for field, value in point["fields"].items():
                out.add((f"{measurement}_{field}", labels, point["time"] // MS, float(value)))
    return out


def prometheus_samples(prometheus, run: str, expected: int) -> set[Sample]:
    found = prometheus.wait_for(f'{{run="{run}"}}', expected, at=time.time() + 60)
    samples = [
        (labels["__name__"], frozenset((k, v) for k, v in labels.items() if k != "__name__"), ms, value)
        for labels, values in found
        for ms, value in values
    ]
    assert len(samples) == len(set(samples))  # no sample twice
    return set(samples)


def victoria_samples(victoriametrics, run: str, expected: int) -> set[Sample]:
    found = victoriametrics.export(f'{{run="{run}"}}', min_samples=expected)
    samples = [
        (
            series["metric"]["__name__"],
            frozenset((k, v) for k, v in series["metric"].items() if k != "__name__"),
            ms,
            float(value),
        )
        for series in found
        for ms, value in zip(series["timestamps"], series["values"], strict=True)
    ]
    assert len(samples) == len(set(samples))  # no sample twice
    return set(samples)


def test_prometheus_and_victoriametrics_get_what_influxdb_got(
    run_id, monkeypatch, influxdb1, influx_db, prometheus, victoriametrics, deduplicating_vm, invoke
) -> None:
    event = a_batch(recent_minute())
    monkeypatch.setenv("PROM_REMOTE_WRITE_URL", prometheus.write_url)
    result = invoke(event)
    summary = result["summary"]
    assert summary["sink"] == "influxdb-v1+prometheus-remote-write"
    assert (summary["records_in"], summary["written"], summary["quarantined"]) == (9, 9, 0)
    assert summary["rules"]["aggregates"] > 0 and summary["rules"]["raw_points_dropped"] == 2

    expected = influx_samples(influxdb1, influx_db)
    sums = influx_rule_sums(influxdb1, influx_db)
    names = {name for name, *_ in expected}
    assert {"http_request_duration", "instance_cpu"} <= names
    assert {name for name, *_ in sums} == {"log_bytes_sum", "requests_by_status_count"}
    assert "instance_memory_pct" in names  # present on one point, absent (quota 0) on the other
    assert all(
        ("run", run_id) in labels and ("foundation", "eu prod") in labels for _, labels, _, _ in expected
    )
    aggregates = summary["rules"]["aggregates"]
    everything = prometheus_samples(prometheus, run_id, len(expected) + aggregates)
    assert raw(everything) == expected and remote_rule_sums(everything) == sums
    assert len(everything) == len(expected) + aggregates

    invoke(event)  # a retried batch rewrites both: no new samples, same values
    assert prometheus_samples(prometheus, run_id, len(everything)) == everything
    series = prometheus.series(f'{{run="{run_id}"}}', start=time.time() - 3600, end=time.time() + 60)
    assert len(series) == len({(name, labels) for name, labels, _, _ in everything})

    for vm in (deduplicating_vm, victoriametrics):
        enricher.reset_runtime()
        monkeypatch.setenv("PROM_REMOTE_WRITE_URL", f"{vm.url}/api/v1/write")
        invoke(event)
        invoke(event)  # retried
    # By default VictoriaMetrics keeps both copies of every sample (a retry would double a sum) ...
    copies = victoriametrics.export(f'{{run="{run_id}"}}', min_samples=2 * len(everything))
    assert sum(len(series["values"]) for series in copies) == 2 * len(everything)
    # ... with -dedup.minScrapeInterval=1ms it keeps one: exactly what Prometheus holds.
    assert victoria_samples(deduplicating_vm, run_id, len(everything)) == everything
    assert influx_samples(influxdb1, influx_db) == expected  # InfluxDB rewritten, unchanged
    assert influx_rule_sums(influxdb1, influx_db) == sums


def test_remote_write_alone_with_retries_through_a_faulty_proxy(
    run_id, monkeypatch, prometheus, invoke
) -> None:
    monkeypatch.delenv("INFLUX_URL")
    event = a_batch(recent_minute())
    with FaultProxy(prometheus.url) as proxy:
        monkeypatch.setenv("PROM_REMOTE_WRITE_URL", f"{proxy.url}/api/v1/write")
        proxy.fail_next(2, status=503, retry_after="0")
        summary = invoke(event)["summary"]
    assert summary["sink"] == "prometheus-remote-write"
    assert summary["sink_retries"] == 2 and summary["written"] == 9
    found = prometheus.wait_for(f'log_bytes_sum{{run="{run_id}"}}', 2, at=time.time() + 60)
    # worker's two log lines came on two partitions: one partial aggregate each.
    assert [(labels["partition"], [v for _, v in values]) for labels, values in found] == [
        ("cf-firehose-0", [40.0]),
        ("cf-firehose-1", [2.0]),
    ]


def test_both_sinks_must_acknowledge(run_id, monkeypatch, influxdb1, influx_db, prometheus, invoke) -> None:
    event = a_batch(recent_minute())
    monkeypatch.setenv("PROM_REMOTE_WRITE_URL", f"http://127.0.0.1:{free_port()}/api/v1/write")  # nobody
    monkeypatch.setenv("FLUSH_TIME_RESERVE", "1s")
    with pytest.raises(FlushError, match="prometheus-remote-write: gave up"):
        invoke(event, timeout=3.0)
    assert influx_samples(influxdb1, influx_db)  # InfluxDB took it; the batch failed all the same

    enricher.reset_runtime()
    monkeypatch.setenv("PROM_REMOTE_WRITE_URL", prometheus.write_url)
    summary = invoke(event)["summary"]  # the retry rewrites both
    expected = influx_samples(influxdb1, influx_db)
    everything = prometheus_samples(prometheus, run_id, len(expected) + summary["rules"]["aggregates"])
    assert raw(everything) == expected
    assert remote_rule_sums(everything) == influx_rule_sums(influxdb1, influx_db)


def test_a_sample_prometheus_refuses_is_quarantined_with_its_message(
    run_id, monkeypatch, snapshot_bucket, influxdb1, influx_db, prometheus, invoke
) -> None:
    monkeypatch.setenv("PROM_REMOTE_WRITE_URL", prometheus.write_url)
    monkeypatch.delenv("RULES_FILE")
    now = time.time_ns()
    invoke(kafka_event({0: (0, [http_envelope(WORKER_EU.guid, now - 60 * S)])}))
    stale = http_envelope(WORKER_AP.guid, now - 3 * 3600 * S)  # older than Prometheus' head accepts
    fresh = http_envelope(WORKER_US.guid, now - 30 * S)
    summary = invoke(kafka_event({0: (1, [stale, fresh])}))["summary"]
    assert summary["quarantined_by_reason"] == {"rejected_by_server": 1} and summary["written"] == 1
    key = summary["quarantine_object"].removeprefix(f"s3://{snapshot_bucket}/")
    body = boto3.client("s3").get_object(Bucket=snapshot_bucket, Key=key)["Body"].read()
    (record,) = decode_records(body)
    assert record["offset"] == 1 and "out of bounds" in record["detail"]
    # Quarantined for Prometheus only, with the sample's point: a replay writes it there, nowhere else.
    assert record["sink"] == "prometheus-remote-write" and record["line"].startswith(
        "http_request,app=worker"
    )
    assert {p["tags"]["org"] for p in influxdb1.points(influx_db, "http_request")} == {"eu", "ap", "us"}


def test_a_wrong_path_fails_the_batch_saying_what_to_fix(run_id, monkeypatch, prometheus, invoke) -> None:
    monkeypatch.setenv("PROM_REMOTE_WRITE_URL", f"{prometheus.url}/api/v1/writ")
    with pytest.raises(FlushError, match="not a remote-write endpoint"):
        invoke(a_batch(recent_minute()))
