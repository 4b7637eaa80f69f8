"""The pipeline point (PIPELINE_METRICS): its line protocol, its setting, and where it may go."""

from __future__ import annotations

import io
from typing import Any

import pytest

from refinery.config import ConfigError, load_enricher_config, load_refresh_config
from refinery.lineparse import parse_line
from refinery.pipeline_metrics import MEASUREMENT, batch_line, batch_topics, failure_line, write_line
from refinery.sinks import Deadline, PrintSink


def _summary(**overrides: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "records_in": 10,
        "written": 6,
        "points": 5,
        "dropped": 3,
        "dropped_by_reason": {"unknown_app": 2, "value_metric": 1},
        "quarantined": 1,
        "quarantined_by_reason": {"metadata_lookup_deferred": 1},
        "resends": 1,
        "identity_collisions": 0,
        "redelivered": 0,
        "sink_retries": 2,
        "sink_seconds": 0.25,
        "batch_lag_ms": 1500,
        "snapshot_age_s": 120.0,
        "batch_item_failures": [],
    }
    return summary | overrides


def test_a_batch_line_carries_the_summary_with_bounded_tags_and_stable_types() -> None:
    line = batch_line(_summary(), function="cf enricher,eu", topic="cf-firehose", at_ns=1_700_000_000_123)
    point = parse_line(line)
    assert point.measurement == MEASUREMENT == "refinery_batch"
    assert point.tags == {"function": "cf enricher,eu", "topic": "cf-firehose"}  # escaped, read back
    assert point.timestamp == 1_700_000_000_123
    assert point.fields == {
        "records_in": 10,
        "written": 6,
        "points": 5,
        "dropped": 3,
        "quarantined": 1,
        "redelivered": 0,
        "resends": 1,
        "identity_collisions": 0,
        "sink_retries": 2,
        "enrichment_misses": 3,  # unknown_app and the metadata_* quarantine reasons
        "sink_seconds": 0.25,
        "batch_lag_ms": 1500,
        "snapshot_age_s": 120.0,
        "failures": 0,
        "partial_failures": 0,
    }
    assert " records_in=10i," in line and ",sink_seconds=0.25," in line and ",snapshot_age_s=120," in line


def test_unknown_lag_and_age_are_left_out_and_a_partial_response_is_counted() -> None:
    summary = _summary(batch_lag_ms=None, snapshot_age_s=None, sink_seconds=0, batch_item_failures=[{}])
    fields = parse_line(batch_line(summary, function="f", topic="t", at_ns=1)).fields
    assert "batch_lag_ms" not in fields and "snapshot_age_s" not in fields
    assert fields["partial_failures"] == 1 and fields["sink_seconds"] == 0.0
    assert "sink_seconds=0," in batch_line(summary, function="f", topic="t", at_ns=1)  # a float, as always


def test_a_failure_line_counts_no_records() -> None:
    point = parse_line(failure_line(function="f", topic="", at_ns=5, batch_lag_ms=900))
    assert point.tags == {"function": "f"}  # an empty tag is left out
    assert point.fields == {"failures": 1, "partial_failures": 0, "batch_lag_ms": 900}


def test_the_topic_comes_from_the_records_or_their_keys() -> None:
    assert batch_topics({"records": {"cf-firehose-0": [{"topic": "cf-firehose"}], "cf-firehose-1": []}}) == (
        "cf-firehose"
    )
    assert batch_topics({"records": {"b-topic-3": [{"offset": 1}], "a-0": [{"topic": "a"}]}}) == "a,b-topic"
    assert batch_topics({"records": "nonsense"}) == "" and batch_topics(None) == ""


def test_only_influxdb_sinks_take_the_point() -> None:
    stream = io.StringIO()
    outcome = write_line(PrintSink(stream), "refinery_batch failures=1i 1", Deadline(lambda: 60_000, 3.0))
    assert outcome == "no influxdb sink" and stream.getvalue() == ""  # a dry run prints only the batch


def test_with_tenant_routing_the_point_goes_to_the_influxdb_settings_own_destination() -> None:
    from refinery.config import InfluxConfig
    from refinery.sinks.influx_v1 import InfluxV1Sink
    from refinery.sinks.routed import RoutedSink

    posted: list[tuple[bytes, dict[str, str]]] = []

    class Recording(InfluxV1Sink):
        def post(self, body: bytes, timeout: float) -> None:
            posted.append((body, dict(self.params)))

    inner = Recording(InfluxConfig(url="http://127.0.0.1:9", api="v1", database="cf", gzip=False))
    routed = RoutedSink(inner, router=None)  # type: ignore[arg-type]  # write_line never routes
    outcome = write_line(routed, "refinery_batch failures=1i 1", Deadline(lambda: 60_000, 3.0))
    assert outcome == "written"
    assert posted == [(b"refinery_batch failures=1i 1\n", {"db": "cf", "precision": "ns"})]


def test_the_setting_is_off_by_default_and_needs_influxdb(tmp_path) -> None:
    snapshot = tmp_path / "s.json.gz"
    snapshot.write_bytes(b"x")
    base = {"METADATA_FILE": str(snapshot)}
    assert load_enricher_config(base).pipeline_metrics is False
    influx = {"INFLUX_URL": "http://127.0.0.1:8086", "INFLUX_DATABASE": "cf"}
    assert load_enricher_config(base | influx | {"PIPELINE_METRICS": "true"}).pipeline_metrics is True
    refresh = {"METADATA_BUCKET": "b", "CF_API_URL": "https://api.cf", "CF_CLIENT_ID": "c"}
    refresh |= {"CF_CLIENT_SECRET": "s", "PIPELINE_METRICS": "true"}
    assert not hasattr(load_refresh_config(refresh), "pipeline_metrics")  # the enricher's only
    with pytest.raises(ConfigError) as caught:
        load_enricher_config(base | {"PIPELINE_METRICS": "true"})
    assert caught.value.problems == [
        "PIPELINE_METRICS: requires INFLUX_URL (the points are written to InfluxDB)"
    ]
    with pytest.raises(ConfigError, match="PIPELINE_METRICS: 'maybe' is not a boolean"):
        load_enricher_config(base | influx | {"PIPELINE_METRICS": "maybe"})
