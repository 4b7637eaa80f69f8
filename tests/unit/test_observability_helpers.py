"""The metric helpers, the EMF document of a summary, the secret-safe loggers and the lazy tracer."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refinery import tracing
from refinery.config import load_enricher_config
from refinery.observability import (
    BODY_LOGGERS,
    ENRICHER_METRICS,
    batch_lag_ms,
    emit_batch_metrics,
    error_fields,
    hit_ratios,
    make_logger,
    make_metrics,
    oldest_record_ms,
    partition_ranges,
    protect_secret_loggers,
    reset_tls_warnings,
    snapshot_age_s,
    warn_if_tls_unverified,
)

EVENT = {
    "eventSource": "aws:kafka",
    "records": {
        "t-0": [{"offset": 5, "timestamp": 1_000_500}, {"offset": 6, "timestamp": 1_000_100}],
        "t-1": [{"offset": 9, "timestamp": 1_000_300}, "not a record"],
        "t-2": [],
    },
}


def test_batch_lag_is_now_minus_the_oldest_record_of_any_partition() -> None:
    assert oldest_record_ms(EVENT) == 1_000_100
    assert batch_lag_ms(EVENT, now=1_060.1) == 60_000
    assert batch_lag_ms({"records": {"t-0": [{"offset": 1}]}}) is None
    assert partition_ranges(EVENT) == {
        "t-0": {"first_offset": 5, "last_offset": 6, "records": 2},
        "t-1": {"first_offset": 9, "last_offset": None, "records": 2},
    }


STAMPS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
RECORDS = st.one_of(
    st.fixed_dictionaries({"timestamp": STAMPS}),
    st.fixed_dictionaries({"offset": st.integers()}),
    st.text(max_size=3),
    st.none(),
)


@given(st.dictionaries(st.text(max_size=3), st.lists(RECORDS, max_size=6), max_size=3))
def test_oldest_record_is_the_smallest_integer_timestamp_whatever_else_the_batch_holds(
    records: dict[str, list[Any]],
) -> None:
    """The C fast way (min/max over the batch) answers like the plain loop over integer stamps."""
    stamps = [
        r["timestamp"]
        for batch in records.values()
        for r in batch
        if type(r) is dict and type(r.get("timestamp")) is int
    ]
    assert oldest_record_ms({"records": records}) == (min(stamps) if stamps else None)


def test_snapshot_age_from_generated_at() -> None:
    generated = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    now = (generated + timedelta(minutes=25)).timestamp()
    assert snapshot_age_s("2026-11-21T10:00:00Z", now=now) == 1500.0
    assert snapshot_age_s("2026-11-21T10:00:00.5+00:00", now=now) == 1499.5
    assert snapshot_age_s("yesterday", now=now) is None
    assert snapshot_age_s("2026-11-21T10:00:00", now=now) is None  # no zone: not trusted
    assert snapshot_age_s(None) is None


def test_hit_ratios_are_shares_of_all_resolutions() -> None:
    tiers = {"cache": 6, "snapshot": 2, "live": 1, "negative": 0, "unknown": 1, "live_lookups": 2}
    assert hit_ratios(tiers) == {"cache": 60.0, "snapshot": 20.0, "live": 10.0, "negative": 0.0}
    assert hit_ratios({"cache": 0, "snapshot": 0}) == {}


def _summary(**changes: Any) -> dict[str, Any]:
    summary = {
        "records_in": 10,
        "written": 6,
        "points": 6,
        "dropped": 3,
        "dropped_by_reason": {"unknown_app": 2, "value_metric": 1},
        "quarantined": 1,
        "quarantined_by_reason": {"metadata_lookup_failed": 1},
        "resends": 2,
        "identity_collisions": 1,
        "metadata": {"cache": 1, "snapshot": 1, "live": 0, "negative": 1, "unknown": 1, "live_failures": 1},
        "sink_retries": 2,
        "sink_seconds": 0.25,
        "batch_lag_ms": 1234,
        "snapshot_age_s": 42.5,
    }
    return summary | changes


def test_a_summary_becomes_one_emf_document_with_the_service_dimension_only(monkeypatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Ops/Test")
    metrics = make_metrics()
    emit_batch_metrics(metrics, _summary())
    doc = metrics.serialize_metric_set()
    metrics.clear_metrics()
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Ops/Test"
    assert directive["Dimensions"] == [["service"]]
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["BatchLag"] == "Milliseconds" and units["SnapshotAge"] == "Seconds"
    assert units["SinkSeconds"] == "Seconds" and units["HitRatio.cache"] == "Percent"
    assert units["Dropped.unknown_app"] == units["Quarantined.metadata_lookup_failed"] == "Count"
    values = {name: doc[name][0] if isinstance(doc[name], list) else doc[name] for name in units}
    assert values["EnrichmentMisses"] == 3.0  # unknown_app (dropped) + metadata_lookup_failed
    assert values["HitRatio.cache"] == values["HitRatio.negative"] == 20.0
    assert values["BatchLag"] == 1234.0 and values["SnapshotAge"] == 42.5
    assert values["Resends"] == 2.0 and values["IdentityCollisions"] == 1.0
    assert set(doc) == {"_aws", "service", *units}
    assert {n for n in units if "." not in n} <= set(ENRICHER_METRICS)


def test_no_lag_or_age_metric_without_timestamps_or_snapshot() -> None:
    metrics = make_metrics()
    emit_batch_metrics(metrics, _summary(batch_lag_ms=None, snapshot_age_s=None, metadata={}))
    doc = metrics.serialize_metric_set()
    metrics.clear_metrics()
    names = {m["Name"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert not names & {"BatchLag", "SnapshotAge"} and not any(n.startswith("HitRatio.") for n in names)


def test_error_fields_name_the_cause() -> None:
    try:
        try:
            raise ConnectionError("refused")
        except ConnectionError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as exc:
        assert error_fields(exc) == {
            "error": "RuntimeError: write failed",
            "cause": "ConnectionError: refused",
        }
    assert error_fields(ValueError("x")) == {"error": "ValueError: x"}


def test_body_loggers_stay_at_info_even_under_a_debug_root_logger() -> None:
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in BODY_LOGGERS}
    try:
        root.setLevel(logging.DEBUG)
        for name in BODY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        protect_secret_loggers()
        for name in ("botocore.parsers", "botocore.endpoint"):
            assert not logging.getLogger(name).isEnabledFor(logging.DEBUG)
        assert logging.getLogger("botocore.hooks").isEnabledFor(logging.DEBUG)  # others untouched
    finally:
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


def test_tls_warnings_are_logged_once_per_setting_and_only_when_off(tmp_path, monkeypatch) -> None:
    snapshot = tmp_path / "s.json.gz"
    snapshot.write_bytes(b"")
    env = {
        "METADATA_FILE": str(snapshot),
        "INFLUX_URL": "https://influx.example.com",
        "INFLUX_DATABASE": "cf",
    }
    env |= {"CF_API_URL": "https://api.example.com", "CF_CLIENT_ID": "r", "CF_CLIENT_SECRET": "s"}
    stream = tmp_path / "log"
    logger = make_logger(service=f"tls-test-{time.monotonic_ns()}")
    handler = logger.registered_handler
    with stream.open("w") as out:
        handler.setStream(out)  # type: ignore[attr-defined]
        reset_tls_warnings()
        warn_if_tls_unverified(logger, load_enricher_config(env))  # defaults: verification on
        off = env | {"INFLUX_VERIFY_TLS": "false", "CF_VERIFY_TLS": "false"}
        for _ in range(3):
            warn_if_tls_unverified(logger, load_enricher_config(off))
    records = [json.loads(line) for line in stream.read_text().splitlines()]
    assert [(r["level"], r["setting"]) for r in records] == [
        ("WARNING", "INFLUX_VERIFY_TLS"),
        ("WARNING", "CF_VERIFY_TLS"),
    ]
    assert "https://api.example.com" in records[1]["message"]
    reset_tls_warnings()


def test_credentials_inside_a_url_are_refused_without_being_echoed() -> None:
    from refinery.config import ConfigError

    env = {"METADATA_FILE": __file__, "INFLUX_URL": "https://writer:hunter2@influx.example.com"}
    with pytest.raises(ConfigError) as caught:
        load_enricher_config(env | {"INFLUX_DATABASE": "cf"})
    assert "INFLUX_URL: must not hold credentials" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_tracing_off_costs_a_flag_check_and_imports_nothing() -> None:
    tracing.reset_for_tests(enabled=False)
    try:

        @tracing.traced("## test")
        def work(x: int) -> int:
            return x * 2

        assert work(21) == 42 and work.__name__ == "work"
        with tracing.subsegment("## nothing", key="v") as segment:
            assert segment is None
        assert tracing.tracer() is None
        handler = tracing.trace_handler(lambda event, context: (event, context))
        assert handler("e", "c") == ("e", "c")
    finally:
        tracing.reset_for_tests()


def test_tracing_follows_powertools_rule(monkeypatch) -> None:
    cases = [
        ({}, False),  # not in Lambda
        ({"LAMBDA_TASK_ROOT": "/var/task"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "false"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),
    ]
    for env, expected in cases:
        for name in (
            "LAMBDA_TASK_ROOT",
            "POWERTOOLS_TRACE_DISABLED",
            "AWS_SAM_LOCAL",
            "AWS_CHALICE_CLI_MODE",
        ):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        tracing.reset_for_tests()
        assert tracing.tracing_enabled() is expected, env
    tracing.reset_for_tests()
