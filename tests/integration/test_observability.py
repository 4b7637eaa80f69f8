"""What operators see in CloudWatch: the EMF documents and the summary line, for real batches.

The real enricher and refresh handlers run against InfluxDB 1.x, S3 on moto and the fake Cloud
Controller. Everything they print is captured: the Powertools logger's stream and stdout, where
Powertools Metrics prints the embedded-metric-format documents.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from mixed_batch import CC_SECRET, LAG_MS, SNAPSHOT_AGE_S, MixedBatch, mixed_batch

from refinery.handlers import enricher, metadata_refresh
from refinery.observability import ENRICHER_METRICS, METRIC_FAMILIES, REFRESH_METRICS
from refinery.quarantine import QuarantineError
from refinery.sinks import FlushError
from refinery_tools.dev.fake_cc import FakeCloudController
from refinery_tools.dev.servers import free_port
from refinery_tools.lambda_context import LocalContext

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "metadata/apps.json.gz"
SUMMARY_KEYS = {
    "records_in",
    "written",
    "points",
    "dropped",
    "dropped_by_reason",
    "quarantined",
    "quarantined_by_reason",
    "partitions",
    "metadata",
    "sink",
    "sink_chunks",
    "sink_bytes",
    "sink_retries",
    "sink_seconds",
    "seconds",
    "batch_lag_ms",
    "snapshot_age_s",
    "event_source",
}


@pytest.fixture
def printed(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], tuple[list[dict], list[dict]]]]:
    """Read (log records, EMF documents) printed since the last call."""
    buffer = io.StringIO()
    handler = enricher.logger.registered_handler
    previous = handler.setStream(buffer)  # type: ignore[attr-defined]

    def read() -> tuple[list[dict], list[dict]]:
        logs = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
        buffer.seek(0)
        buffer.truncate()
        out = capsys.readouterr().out
        docs = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
        return logs, docs

    capsys.readouterr()
    yield read
    handler.setStream(previous)  # type: ignore[attr-defined]


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch, s3_bucket: str, influxdb1: Any, influx_db: str) -> Iterator[Any]:
    batch = mixed_batch()
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=KEY, Body=batch.snapshot)
    with FakeCloudController(batch.foundation, client_id="refinery", client_secret=CC_SECRET) as cc:
        for name in list(os.environ):
            if name.startswith(("INFLUX_", "CF_", "METADATA_", "QUARANTINE_", "LIVE_", "PIPELINE_")):
                monkeypatch.delenv(name)
        monkeypatch.setenv("METADATA_BUCKET", s3_bucket)
        monkeypatch.setenv("INFLUX_URL", influxdb1.url)
        monkeypatch.setenv("INFLUX_DATABASE", influx_db)
        monkeypatch.setenv("CF_API_URL", cc.url)
        monkeypatch.setenv("CF_CLIENT_ID", "refinery")
        monkeypatch.setenv("CF_CLIENT_SECRET", CC_SECRET)
        enricher.reset_runtime()
        new_container(monkeypatch)
        yield batch, cc
        enricher.reset_runtime()


def new_container(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh Lambda container as Powertools sees it: its Logger and Metrics mark the next invocation
    as a cold start (their process-wide flags)."""
    from aws_lambda_powertools.logging import logger as powertools_logger
    from aws_lambda_powertools.metrics.provider import cold_start

    monkeypatch.setattr(powertools_logger, "is_cold_start", True)
    monkeypatch.setattr(cold_start, "is_cold_start", True)


def without_cold_start(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The function's own EMF documents (Powertools adds a ColdStart one on a container's first call)."""
    return [d for d in docs if "ColdStart" not in d]


def _definitions(doc: dict[str, Any]) -> dict[str, str]:
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    return {m["Name"]: m["Unit"] for m in directive["Metrics"]}


def _check_emf_shape(doc: dict[str, Any]) -> None:
    """One namespace, the single ``service`` dimension, and nothing per app in the document."""
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == enricher.metrics.namespace
    assert directive["Dimensions"] == [["service"]]
    assert doc["service"] == "refinery"
    assert set(doc) == {"_aws", "service", *_definitions(doc)}, "no per-app property or dimension"
    assert abs(doc["_aws"]["Timestamp"] / 1000 - time.time()) < 60


def _value(doc: dict[str, Any], name: str) -> float:
    value = doc[name]
    return value[0] if isinstance(value, list) else value


def _expected_unit(name: str) -> str:
    if name in ENRICHER_METRICS:
        return ENRICHER_METRICS[name]
    if name in REFRESH_METRICS:
        return REFRESH_METRICS[name]
    return METRIC_FAMILIES[name.split(".", 1)[0]]


def test_a_mixed_batch_emits_its_metrics_and_one_summary_line(ops, printed) -> None:
    batch: MixedBatch = ops[0]
    started = time.time()
    result = enricher.handler(batch.event, LocalContext(timeout_seconds=60))
    logs, docs = printed()
    summary = result["summary"]

    # --- the summary line: one per invocation, everything the issue lists
    (line,) = [r for r in logs if r["message"] == "batch done"]
    assert line["level"] == "INFO" and line["service"] == "refinery"
    assert line["summary"] == json.loads(json.dumps(summary))
    assert set(summary) >= SUMMARY_KEYS
    assert summary["records_in"] == batch.records
    assert summary["records_in"] == summary["written"] + summary["dropped"] + summary["quarantined"]
    assert summary["quarantined_by_reason"] == {"not_base64": 1, "not_json": 1}
    assert summary["dropped_by_reason"]["unknown_app"] > 0
    assert {"value_metric", "counter_event"} <= set(summary["dropped_by_reason"])
    assert summary["partitions"] == {
        key: {"first_offset": 0, "last_offset": len(records) - 1, "records": len(records)}
        for key, records in batch.event["records"].items()
    }
    tiers = summary["metadata"]
    assert 0 < tiers["snapshot"] <= len(batch.snapshot_apps)  # each app is resolved once per batch
    assert tiers["live"] == len(batch.live_apps) and tiers["unknown"] == 1
    assert summary["sink"] == "influxdb-v1" and summary["sink_chunks"] >= 1 and summary["sink_seconds"] > 0
    lag_now = (time.time() * 1000) - batch.oldest_timestamp_ms
    assert LAG_MS <= summary["batch_lag_ms"] <= lag_now + 1
    assert SNAPSHOT_AGE_S <= summary["snapshot_age_s"] <= SNAPSHOT_AGE_S + (time.time() - started) + 60

    # --- Powertools' conventions: every log line carries the Lambda context and the batch's coordinates
    for record in logs:
        assert record["function_name"] == "refinery-local" and record["cold_start"] is True, record
        assert record["function_request_id"] and record["partitions"] == summary["partitions"], record

    # --- the EMF documents: the batch's, and Powertools' ColdStart (first invocation of a container)
    (cold,) = [d for d in docs if "ColdStart" in d]
    assert _value(cold, "ColdStart") == 1 and cold["function_name"] == "refinery-local"
    assert cold["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["function_name", "service"]]
    (doc,) = without_cold_start(docs)
    _check_emf_shape(doc)
    definitions = _definitions(doc)
    for name, unit in definitions.items():
        assert unit == _expected_unit(name), name
    assert {
        "RecordsIn",
        "RecordsWritten",
        "PointsWritten",
        "RecordsDropped",
        "RecordsQuarantined",
        "EnrichmentMisses",
        "SinkSeconds",
        "SinkRetries",
        "BatchLag",
        "SnapshotAge",
        "HitRatio.cache",
        "HitRatio.snapshot",
        "HitRatio.live",
        "HitRatio.negative",
        "Quarantined.not_base64",
        "Quarantined.not_json",
        "Dropped.unknown_app",
        "Dropped.value_metric",
        "Dropped.counter_event",
    } <= set(definitions)
    assert "BatchFailures" not in definitions
    assert _value(doc, "RecordsIn") == summary["records_in"]
    assert _value(doc, "RecordsWritten") == summary["written"]
    assert _value(doc, "PointsWritten") == summary["points"]
    assert _value(doc, "RecordsDropped") == summary["dropped"]
    assert _value(doc, "RecordsQuarantined") == 2
    assert _value(doc, "Dropped.unknown_app") == summary["dropped_by_reason"]["unknown_app"]
    assert _value(doc, "EnrichmentMisses") == summary["dropped_by_reason"]["unknown_app"]
    assert _value(doc, "BatchLag") == summary["batch_lag_ms"]
    assert _value(doc, "SnapshotAge") == summary["snapshot_age_s"]
    assert _value(doc, "SinkSeconds") == summary["sink_seconds"]
    resolved = tiers["snapshot"] + tiers["live"] + tiers["unknown"]
    assert _value(doc, "HitRatio.snapshot") == round(100 * tiers["snapshot"] / resolved, 2)
    assert _value(doc, "HitRatio.live") == round(100 * len(batch.live_apps) / resolved, 2)
    assert _value(doc, "HitRatio.cache") == 0

    # --- a warm container: the second invocation answers from the warm cache and the negative cache
    enricher.handler(batch.event, LocalContext(timeout_seconds=60))
    logs, docs = printed()
    assert not [d for d in docs if "ColdStart" in d] and all(r["cold_start"] is False for r in logs)
    (line,) = [r for r in logs if r["message"] == "batch done"]
    assert line["summary"]["metadata"]["cache"] == tiers["snapshot"] + tiers["live"]
    assert line["summary"]["metadata"]["negative"] == 1
    (doc,) = without_cold_start(docs)
    _check_emf_shape(doc)
    assert _value(doc, "HitRatio.cache") == round(100 * (resolved - 1) / resolved, 2)
    assert _value(doc, "HitRatio.negative") == round(100 / resolved, 2)


def test_a_failed_batch_logs_the_error_its_cause_and_offsets_and_counts_a_failure(
    ops, printed, monkeypatch
) -> None:
    batch: MixedBatch = ops[0]
    monkeypatch.setenv("INFLUX_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("FLUSH_TIME_RESERVE", "1s")
    enricher.reset_runtime()
    with pytest.raises(FlushError):
        enricher.handler(batch.event, LocalContext(timeout_seconds=2.5))
    logs, docs = printed()
    (line,) = [r for r in logs if r["level"] == "ERROR"]
    assert line["message"] == "batch failed; the event source mapping will retry it"
    assert line["error"].startswith("FlushError: influxdb-v1: ")
    assert "ConnectionError" in line["error"] or "ConnectionError" in line.get("cause", "")
    assert line["partitions"]["cf-firehose-1"] == {
        "first_offset": 0,
        "last_offset": len(batch.event["records"]["cf-firehose-1"]) - 1,
        "records": len(batch.event["records"]["cf-firehose-1"]),
    }
    assert line["batch_lag_ms"] >= LAG_MS
    assert not [r for r in logs if r["message"] == "batch done"]
    (doc,) = without_cold_start(docs)
    _check_emf_shape(doc)
    assert _definitions(doc) == {"BatchFailures": "Count"}
    assert _value(doc, "BatchFailures") == 1


def _pipeline_points(server: Any, db: str) -> list[dict[str, Any]]:
    """Every ``refinery_batch`` point: time (ns), tags and fields by name."""
    (result,) = server.query(db, 'SELECT * FROM "refinery_batch"', epoch="ns")["results"]
    points = []
    for series in result.get("series", []):
        for row in series["values"]:
            points.append(dict(zip(series["columns"], row, strict=True)))
    return points


def test_pipeline_metrics_write_one_point_per_batch_beside_unchanged_emf(
    ops, printed, monkeypatch, influxdb1, influx_db
) -> None:
    """PIPELINE_METRICS=true: one refinery_batch point per invocation, at its start, with the summary's
    counts and bounded tags only; the EMF documents are the same as without it."""
    batch: MixedBatch = ops[0]
    enricher.handler(batch.event, LocalContext(timeout_seconds=60))  # off (the default): no point
    _, off_docs = printed()
    assert _pipeline_points(influxdb1, influx_db) == []
    monkeypatch.setenv("PIPELINE_METRICS", "true")
    enricher.reset_runtime()
    before = time.time_ns()
    result = enricher.handler(batch.event, LocalContext(timeout_seconds=60, function_name="cf-enricher"))
    after = time.time_ns()
    logs, docs = printed()
    summary = result["summary"]
    assert summary["pipeline_metrics"] == "written"
    (line,) = [r for r in logs if r["message"] == "batch done"]
    assert line["summary"]["pipeline_metrics"] == "written"
    (point,) = _pipeline_points(influxdb1, influx_db)
    assert before <= point["time"] <= after
    assert point["function"] == "cf-enricher" and point["topic"] == "cf-firehose"
    expected = {name: summary[name] for name in ("records_in", "written", "points", "dropped", "quarantined")}
    expected |= {name: summary[name] for name in ("resends", "identity_collisions", "sink_retries")}
    expected |= {"redelivered": 0, "failures": 0, "partial_failures": 0}
    expected |= {"enrichment_misses": summary["dropped_by_reason"]["unknown_app"]}
    expected |= {"batch_lag_ms": summary["batch_lag_ms"]}
    assert {k: point[k] for k in expected} == expected
    assert (
        point["sink_seconds"] == summary["sink_seconds"]
        and point["snapshot_age_s"] == summary["snapshot_age_s"]
    )
    assert set(point) == {"time", "function", "topic", *expected, "sink_seconds", "snapshot_age_s"}
    # InfluxDB's schema: integers stay integers, seconds are floats, and the only tags are the two
    (fields,) = influxdb1.query(influx_db, 'SHOW FIELD KEYS FROM "refinery_batch"')["results"][0]["series"]
    types = dict(fields["values"])
    assert types.pop("sink_seconds") == types.pop("snapshot_age_s") == "float"
    assert set(types.values()) == {"integer"}
    (tags,) = influxdb1.query(influx_db, 'SHOW TAG KEYS FROM "refinery_batch"')["results"][0]["series"]
    assert {row[0] for row in tags["values"]} == {"function", "topic"}
    # the CloudWatch metrics do not change
    (doc,) = without_cold_start(docs)
    (off_doc,) = without_cold_start(off_docs)
    assert _definitions(doc) == _definitions(off_doc)


def test_a_pipeline_point_the_server_refuses_neither_fails_nor_repeats_the_batch(
    ops, printed, monkeypatch, influxdb1, influx_db
) -> None:
    """The pipeline point is refused (a field type conflict planted in the database): the batch succeeds,
    written by its one request, and the summary and a warning say the point was not written."""
    batch: MixedBatch = ops[0]
    planted = (
        time.time_ns() - 10**9
    )  # in the shard the invocation's point goes to (type conflicts are per shard)
    influxdb1.write(influx_db, f'refinery_batch,topic=x written="text" {planted}')
    monkeypatch.setenv("PIPELINE_METRICS", "true")
    enricher.reset_runtime()
    result = enricher.handler(batch.event, LocalContext(timeout_seconds=60))
    logs, docs = printed()
    summary = result["summary"]
    assert result["batchItemFailures"] == [] and summary["quarantined"] == 2
    assert summary["pipeline_metrics"].startswith("not written: POST "), summary["pipeline_metrics"]
    assert "field type conflict" in summary["pipeline_metrics"]
    assert summary["sink_requests"] == 1 and summary["sink_retries"] == 0  # the batch's request, once
    (warning,) = [r for r in logs if r["level"] == "WARNING"]
    assert warning["message"].startswith("pipeline metrics point not written (the batch is not affected)")
    assert [p["time"] for p in _pipeline_points(influxdb1, influx_db)] == [planted]  # only the planted one
    (result_,) = influxdb1.query(influx_db, 'SELECT count("count") FROM "http_request"')["results"]
    assert result_["series"][0]["values"][0][1] > 0
    (doc,) = without_cold_start(docs)
    assert "BatchFailures" not in _definitions(doc)


def test_a_failed_batch_writes_a_failure_point_and_still_fails(
    ops, printed, monkeypatch, influxdb1, influx_db
):
    """The batch fails after its flush (its quarantine bucket does not exist): the mapping retries it,
    and the pipeline point says failures=1 without counting its records (their retry counts them)."""
    batch: MixedBatch = ops[0]
    monkeypatch.setenv("PIPELINE_METRICS", "true")
    monkeypatch.setenv("QUARANTINE_BUCKET", "no-such-bucket-for-refinery")
    enricher.reset_runtime()
    with pytest.raises(QuarantineError):
        enricher.handler(batch.event, LocalContext(timeout_seconds=60))
    logs, _ = printed()
    assert [r["message"] for r in logs if r["level"] == "ERROR"] == [
        "batch failed; the event source mapping will retry it"
    ]
    (point,) = _pipeline_points(influxdb1, influx_db)
    assert point["failures"] == 1 and point["partial_failures"] == 0 and point["batch_lag_ms"] >= LAG_MS
    assert point.get("records_in") is None and point.get("written") is None


def test_the_refresh_function_emits_apps_spaces_orgs_pages_duration_and_failures(ops, printed) -> None:
    batch, cc = ops
    summary = metadata_refresh.handler({}, LocalContext(function_name="refresh", timeout_seconds=60))
    logs, docs = printed()
    (line,) = [r for r in logs if r["message"] == "metadata refresh done"]
    assert line["summary"]["apps"] == len(batch.foundation.apps) == summary["apps"]
    (doc,) = without_cold_start(docs)
    _check_emf_shape(doc)
    assert _definitions(doc) == REFRESH_METRICS
    assert _value(doc, "RefreshApps") == len(batch.foundation.apps)
    assert _value(doc, "RefreshSpaces") == len(batch.foundation.spaces)
    assert _value(doc, "RefreshOrgs") == len(batch.foundation.orgs)
    assert _value(doc, "RefreshPages") == summary["pages"] >= 1
    assert _value(doc, "RefreshSeconds") == summary["duration_s"]
    assert _value(doc, "RefreshFailures") == 0

    cc.clients["refinery"] = "another-secret"  # UAA now refuses the client
    with pytest.raises(Exception, match="UAA rejected"):
        metadata_refresh.handler({}, LocalContext(function_name="refresh", timeout_seconds=60))
    logs, docs = printed()
    (line,) = [r for r in logs if r["level"] == "ERROR"]
    assert line["message"] == "metadata refresh failed; the previous snapshot is unchanged"
    assert line["error"].startswith("CloudControllerAuthError: POST /uaa/oauth/token: HTTP 401")
    (doc,) = without_cold_start(docs)
    _check_emf_shape(doc)
    assert _value(doc, "RefreshFailures") == 1
    assert set(_definitions(doc)) == {"RefreshFailures", "RefreshSeconds"}


def test_a_configuration_error_of_the_refresh_counts_as_a_failure(ops, printed, monkeypatch) -> None:
    monkeypatch.delenv("CF_CLIENT_ID")
    with pytest.raises(Exception, match="CF_CLIENT_ID"):
        metadata_refresh.handler({}, LocalContext(function_name="refresh", timeout_seconds=60))
    logs, docs = printed()
    (line,) = [r for r in logs if r["level"] == "ERROR"]
    assert "CF_CLIENT_ID: required" in line["error"]
    (doc,) = docs
    assert _definitions(doc) == {"RefreshFailures": "Count"}


@pytest.mark.parametrize(("level", "summary_logged"), [("INFO", True), ("ERROR", False)])
def test_the_log_level_and_namespace_come_from_the_powertools_settings(
    level: str, summary_logged: bool, tmp_path: Path
) -> None:
    """A fresh process, as in a new container: POWERTOOLS_LOG_LEVEL and POWERTOOLS_METRICS_NAMESPACE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFLUX_", "CF_", "METADATA_"))}
    env |= {
        "METADATA_FILE": str(ROOT / "events" / "sample-snapshot.json.gz"),
        "POWERTOOLS_LOG_LEVEL": level,
        "POWERTOOLS_METRICS_NAMESPACE": "Refinery/Test",
        "QUARANTINE_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "refinery_tools.cli",
            "invoke",
            "enricher",
            "--event",
            str(ROOT / "events" / "msk.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [json.loads(x) for x in done.stderr.splitlines() if x.startswith('{"')]
    logged = [x for x in lines if x.get("message") == "batch done"]
    assert bool(logged) is summary_logged
    docs = [x for x in lines if "_aws" in x]
    assert len(docs) == 2 and {"ColdStart", "RecordsIn"} <= {k for d in docs for k in d}  # a new process
    for doc in docs:
        assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Refinery/Test"
