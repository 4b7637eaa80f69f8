"""Recording rules, filters and extra tags through the real handler into a real InfluxDB 1.x.

The seed's worked example, restated with CF events: six inputs, one of another type (a log, not
an HTTP request), one of another app (filtered by tag), two summed into one series: three series.
InfluxDB gets each record's contribution (README: Recording rules), so any redelivery — a retry,
a re-cut, a rewind over committed offsets — leaves every window's sum exact.
"""

from __future__ import annotations

import base64

import boto3
import pytest
from cfworld import kafka_event, put_snapshot

from refinery.handlers import enricher
from refinery.identity import fingerprint
from refinery.rules.loader import RulesError
from refinery_tools.dev.envelopes import http_envelope
from refinery_tools.dev.worked_example import (
    RULES,
    T0,
    WORKER_EU,
    S,
    worked_example,
)


@pytest.fixture
def rules_env(monkeypatch, snapshot_bucket, influxdb1, influx_db, tmp_path):
    put_snapshot(snapshot_bucket)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    monkeypatch.setenv("INFLUX_URL", influxdb1.url)
    monkeypatch.setenv("INFLUX_DATABASE", influx_db)
    monkeypatch.setenv("RULES_FILE", str(rules))
    return rules


def aggregates(influxdb1, db: str) -> list[tuple[dict, dict, int]]:
    return [(p["tags"], p["fields"], p["time"]) for p in influxdb1.points(db, "bytes_batch_workers")]


def at(value: bytes) -> int:
    """A record's contribution's time: its window's start plus its bytes' fingerprint (mod 60 s)."""
    return T0 + fingerprint(base64.b64encode(value)) % (60 * S)


def window_totals(influxdb1, db: str, start: int = T0) -> dict[str, float]:
    """How the README says to query an aggregate: sum every partial point of the window."""
    body = influxdb1.query(
        db,
        f'SELECT sum("sum") FROM "bytes_batch_workers" WHERE time >= {start} AND time < {start + 60 * S}'
        ' GROUP BY time(60s), "org"',
    )
    return {
        series["tags"]["org"]: series["values"][0][1]
        for series in body["results"][0].get("series", [])
        if series["values"][0][1] is not None
    }


def test_the_worked_example_writes_three_series_and_a_retry_leaves_them(
    rules_env, influxdb1, influx_db, invoke
) -> None:
    event = kafka_event({0: (0, worked_example())})
    result = invoke(event)
    summary = result["summary"]
    assert (summary["records_in"], summary["written"], summary["dropped"], summary["quarantined"]) == (
        6,
        6,
        0,
        0,
    )
    assert summary["rules"] == {"contributions": 4, "aggregates": 0, "points_consumed": 4}
    values = worked_example()
    common = {"app": "worker", "space": "batch"}
    expected = sorted(
        [
            ({**common, "org": "eu"}, {"sum": 20}, at(values[1])),
            ({**common, "org": "ap"}, {"sum": 30}, at(values[3])),
            ({**common, "org": "us"}, {"sum": 40}, at(values[4])),
            ({**common, "org": "eu"}, {"sum": 100}, at(values[5])),
        ],
        key=lambda p: p[2],
    )
    assert aggregates(influxdb1, influx_db) == expected
    series = influxdb1.query(influx_db, 'SHOW SERIES FROM "bytes_batch_workers"')["results"][0]["series"]
    assert len(series[0]["values"]) == 3
    assert influxdb1.count(influx_db, "http_request") == 5 and influxdb1.count(influx_db, "log") == 1

    invoke(event)  # the event source mapping retries the batch
    assert aggregates(influxdb1, influx_db) == expected
    assert window_totals(influxdb1, influx_db) == {"eu": 120, "ap": 30, "us": 40}


def test_partitions_and_consecutive_batches_add_their_records(
    rules_env, influxdb1, influx_db, invoke
) -> None:
    values = worked_example()
    # The same six records arriving on two partitions, both starting at offset 0.
    invoke(kafka_event({0: (0, values[:3]), 1: (0, values[3:])}))
    assert window_totals(influxdb1, influx_db) == {"eu": 120, "ap": 30, "us": 40}
    eu = sorted(fields["sum"] for tags, fields, _ in aggregates(influxdb1, influx_db) if tags["org"] == "eu")
    assert eu == [20, 100]  # eu's records were on both partitions: one point each, no partition tag

    # A later batch of partition 0 in the same window adds its record's point.
    invoke(kafka_event({0: (3, [http_envelope(WORKER_EU.guid, T0 + 30 * S, size=5)])}))
    assert window_totals(influxdb1, influx_db) == {"eu": 125, "ap": 30, "us": 40}
    assert len(aggregates(influxdb1, influx_db)) == 5


def test_a_failed_batch_retried_in_halves_gives_the_same_totals(
    rules_env, influxdb1, influx_db, invoke
) -> None:
    values = worked_example()
    invoke(kafka_event({0: (0, values)}))  # say its response was lost: Lambda retries it bisected
    invoke(kafka_event({0: (0, values[:3])}))
    invoke(kafka_event({0: (3, values[3:])}))
    assert window_totals(influxdb1, influx_db) == {"eu": 120, "ap": 30, "us": 40}


def test_a_rewind_over_committed_offsets_leaves_the_sums_exact(
    rules_env, influxdb1, influx_db, invoke
) -> None:
    """Observation 2 of issue 19: offsets [1], [5], then [1..5] as one batch (a rewind): each record's
    point is written again, identical. With per-batch aggregates the window would sum eu to 240."""
    values = worked_example()
    invoke(kafka_event({0: (1, values[1:2])}))
    invoke(kafka_event({0: (5, values[5:6])}))
    invoke(kafka_event({0: (1, values[1:])}))
    invoke(kafka_event({0: (0, values)}))  # and everything again from the start
    assert window_totals(influxdb1, influx_db) == {"eu": 120, "ap": 30, "us": 40}
    assert len(aggregates(influxdb1, influx_db)) == 4


def test_per_batch_aggregates_in_influxdb_are_exact_under_a_rewind(
    rules_env, influxdb1, influx_db, invoke
) -> None:
    """``influx_output: aggregates`` (fewer points): exact for retries, re-cut retries and a rewind cut
    across an earlier batch boundary — the aggregation ledger (rules/ledger.py, in the metadata bucket)
    knows offsets 0..5 were aggregated and sends their stored aggregates again, identical."""
    rules_env.write_text(RULES + "    influx_output: aggregates\n")
    values = worked_example()
    invoke(kafka_event({0: (0, values)}))
    invoke(kafka_event({0: (0, values[:3])}))  # a smaller retry of the same start: the same aggregates
    invoke(kafka_event({0: (3, values[3:])}))
    assert window_totals(influxdb1, influx_db) == {"eu": 120, "ap": 30, "us": 40}
    summary = invoke(kafka_event({0: (1, values[1:])}))["summary"]  # rewound to 1, cut as one batch
    assert summary["rules"]["aggregates"] == 0 and summary["rules"]["aggregates_resent"] > 0
    assert window_totals(influxdb1, influx_db) == {"eu": 120, "ap": 30, "us": 40}


def test_keep_raw_false_writes_only_the_aggregates(rules_env, influxdb1, influx_db, invoke) -> None:
    rules_env.write_text(RULES + "    keep_raw: false\n")
    result = invoke(kafka_event({0: (0, worked_example())}))
    assert result["summary"]["written"] == 6 and result["summary"]["points"] == 2 + 4
    assert [p["tags"]["app"] for p in influxdb1.points(influx_db, "http_request")] == ["api"]
    assert window_totals(influxdb1, influx_db) == {"eu": 120, "ap": 30, "us": 40}


def test_filters_and_extra_tags(rules_env, monkeypatch, influxdb1, influx_db, invoke) -> None:
    monkeypatch.setenv("FILTER_EXCLUDE_APPS", "api|test-.*")
    monkeypatch.setenv("FILTER_EXCLUDE_MEASUREMENTS", "log")
    monkeypatch.setenv("EXTRA_TAGS", "foundation=eu prod,region=eu,x=a=b\\c")
    result = invoke(kafka_event({0: (0, worked_example())}))
    summary = result["summary"]
    assert summary["dropped_by_reason"] == {"filtered": 2}
    assert (summary["records_in"], summary["written"], summary["dropped"]) == (6, 4, 2)
    requests = influxdb1.points(influx_db, "http_request")
    assert sorted(p["fields"]["response_size"] for p in requests) == [20, 30, 40, 100]
    assert all(
        (p["tags"]["foundation"], p["tags"]["region"], p["tags"]["x"]) == ("eu prod", "eu", "a=b\\c")
        for p in requests
    )
    assert influxdb1.count(influx_db, "log") == 0
    assert {p[0]["foundation"] for p in aggregates(influxdb1, influx_db)} == {"eu prod"}


def test_an_invalid_rules_file_fails_at_start_naming_rule_and_field(rules_env, invoke) -> None:
    rules_env.write_text(RULES.replace("window: 60s", "window: every minute"))
    with pytest.raises(
        RulesError, match='rule "bytes_batch_workers": field "window": must be a duration like 60s'
    ):
        invoke(kafka_event({0: (0, worked_example())}))


def test_rules_in_s3_are_reloaded_when_they_change(
    monkeypatch, snapshot_bucket, influxdb1, influx_db, invoke
) -> None:
    put_snapshot(snapshot_bucket)
    s3 = boto3.client("s3")
    rules = RULES + "    influx_output: aggregates\n"
    s3.put_object(Bucket=snapshot_bucket, Key="rules/rules.yaml", Body=rules.encode())
    monkeypatch.setenv("INFLUX_URL", influxdb1.url)
    monkeypatch.setenv("INFLUX_DATABASE", influx_db)
    monkeypatch.setenv("RULES_KEY", "rules/rules.yaml")
    monkeypatch.setenv("RULES_CHECK_INTERVAL", "0s")
    monkeypatch.delenv("RULES_FILE", raising=False)
    event = kafka_event({0: (0, worked_example())})
    assert invoke(event)["summary"]["rules"]["aggregates"] == 3

    s3.put_object(
        Bucket=snapshot_bucket, Key="rules/rules.yaml", Body=rules.replace("keep: [org]", "keep: []").encode()
    )
    # The same container, new rules, on new offsets (offsets aggregated already keep their aggregates).
    event = kafka_event({0: (6, worked_example())})
    assert invoke(event)["summary"]["rules"]["aggregates"] == 1

    s3.put_object(Bucket=snapshot_bucket, Key="rules/rules.yaml", Body=b"rules: [")
    summary = invoke(kafka_event({0: (12, worked_example())}))["summary"]
    assert summary["rules"]["aggregates"] == 1  # the rules in force are kept
    assert "not valid YAML" in summary["rules"]["reload_error"]

    enricher.reset_runtime()  # a new container cannot start with that file
    with pytest.raises(RulesError, match=r"s3://.*/rules/rules\.yaml: not valid YAML"):
        invoke(event)
