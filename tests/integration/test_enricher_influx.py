"""The enricher's whole path into real servers: InfluxDB 1.x (v1 API) and VictoriaMetrics (v2 API)."""

from __future__ import annotations

import time

import boto3
import pytest

from refinery.identity import DEFAULT_DIGITS, point_time
from refinery.metadata.snapshot import AppInfo, encode_snapshot
from refinery.sinks import FlushError
from refinery_tools.dev.samples import SAMPLE_APP, sample_envelopes
from refinery_tools.events import build_kafka_event
from support.faultproxy import FaultProxy

ENRICHMENT = {
    "app": "myapp",
    "app_guid": SAMPLE_APP.guid,
    "space": "dev",
    "space_guid": SAMPLE_APP.space_guid,
    "org": "acme",
    "org_guid": SAMPLE_APP.org_guid,
}
EXPECTED = {
    "http_request": [
        {
            "tags": {**ENRICHMENT, "instance": "1", "method": "GET", "status_code": "200"},
            "fields": {"count": 1, "duration": 0.012345678, "response_size": 1532},
            "time": 1537510364123456789,
        },
    ],
    "log": [
        {
            "tags": {**ENRICHMENT, "instance": "0", "type": "RTR"},
            "fields": {"count": 1, "size": 365},
            "time": 1537510364136506789,
        },
        {
            "tags": {**ENRICHMENT, "instance": "1", "type": "OUT"},
            "fields": {"count": 1, "size": 93},
            "time": 1537510364199999999,
        },
    ],
    "instance": [
        {
            "tags": {**ENRICHMENT, "instance": "1"},
            "fields": {
                "cpu": 0.4518379826149203,
                "disk": 142938112,
                "disk_pct": 0.13312149047851562,
                "disk_quota": 1073741824,
                "memory": 187654144,
                "memory_pct": 0.3495330810546875,
                "memory_quota": 536870912,
            },
            "time": 1537510366623456789,
        },
    ],
}


#: The sample record (``sample_envelopes()`` index) each expected point comes from.
SOURCES = {("http_request", 0): 0, ("log", 0): 2, ("log", 1): 1, ("instance", 0): 3}


def at_identity_times(expected: dict[str, list[dict]], modulus: int) -> dict[str, list[dict]]:
    """The anchor's points at their identity times: the last digits from each sample record's bytes."""
    samples = sample_envelopes()
    return {
        m: [
            {**p, "time": point_time(p["time"], samples[SOURCES[m, i]], modulus)}
            for i, p in enumerate(points)
        ]
        for m, points in expected.items()
    }


def stored(influxdb1, db: str) -> dict[str, list[dict]]:
    return {
        m: [{k: p[k] for k in ("tags", "fields", "time")} for p in influxdb1.points(db, m)] for m in EXPECTED
    }


@pytest.fixture
def v1_env(monkeypatch, snapshot_bucket, influxdb1, influx_db) -> str:
    monkeypatch.setenv("INFLUX_URL", influxdb1.url)
    monkeypatch.setenv("INFLUX_DATABASE", influx_db)
    return influx_db


@pytest.mark.parametrize("digits", [None, "0", "6"])
def test_v1_writes_exactly_the_expected_points_and_a_retry_adds_none(
    v1_env, influxdb1, invoke, msk_event, monkeypatch, digits
):
    """The anchor's points: with TIMESTAMP_HASH_DIGITS=0 exactly its lines, otherwise (default 3) the
    same points with the last digits of each time taken from the record."""
    if digits is not None:
        monkeypatch.setenv("TIMESTAMP_HASH_DIGITS", digits)
    expected = at_identity_times(EXPECTED, 10 ** int(digits or DEFAULT_DIGITS))
    result = invoke(msk_event)
    assert result["batchItemFailures"] == []
    summary = result["summary"]
    assert (summary["records_in"], summary["written"], summary["dropped"], summary["quarantined"]) == (
        6,
        4,
        2,
        0,
    )
    assert stored(influxdb1, v1_env) == expected
    invoke(msk_event)
    assert stored(influxdb1, v1_env) == expected


NASTY_NAMES = [
    "my app",
    "a,b=c",
    'quote"d',
    "back\\slash",
    "trailing\\",
    "\\\\double",
    "ünïcødé 日本 🚀",
    " lead and trail ",
    "tab\there",
    "eq=,sp ace\\,",
    "a\\,b and a\\ b and a\\=b",
    "cr\rinside",
    "#hash",
    "'single'",
]


def test_user_names_round_trip_through_a_real_influxdb(v1_env, influxdb1, invoke, snapshot_bucket):
    apps = {}
    values = []
    for i, name in enumerate([*NASTY_NAMES, "line\nfeed\r\nname"]):
        guid = f"00000000-0000-4000-8000-{i:012d}"
        apps[guid] = AppInfo(guid, name, f"space-{i}", f"space {name}", f"org-{i}", f"org,{name}")
        values.append(
            b'{"origin":"rep","eventType":5,"timestamp":1,"logMessage":{"message":"aGk=","message_type":1,'
            b'"timestamp":%d,"app_id":"%s","source_type":"APP/PROC/WEB","source_instance":"0"}}'
            % (1537510364000000000 + i, guid.encode())
        )
    boto3.client("s3").put_object(
        Bucket=snapshot_bucket,
        Key="metadata/apps.json.gz",
        Body=encode_snapshot(apps, "https://api.example.com", __import__("datetime").datetime.now()),
    )
    result = invoke(build_kafka_event(values))
    assert result["summary"]["written"] == len(values)
    points = influxdb1.points(v1_env, "log")
    got = {p["tags"]["app_guid"]: p["tags"] for p in points}
    for guid, info in apps.items():
        # Documented losses: a line feed or carriage return becomes a space, a trailing backslash
        # cannot be stored.
        expected_name = info.name.replace("\n", " ").replace("\r", " ").rstrip("\\")
        assert got[guid]["app"] == expected_name, repr(info.name)
        assert got[guid]["space"] == f"space {expected_name}"
        assert got[guid]["org"] == f"org,{expected_name}"
    assert len(points) == len(values)


def test_v2_api_through_influxdb_client_into_victoriametrics(
    monkeypatch, snapshot_bucket, victoriametrics, invoke, msk_event
):
    monkeypatch.setenv("INFLUX_URL", victoriametrics.url)
    monkeypatch.setenv("INFLUX_TOKEN", "unused-by-victoriametrics")
    monkeypatch.setenv("INFLUX_ORG", "cf")
    monkeypatch.setenv("INFLUX_BUCKET", "cf")
    result = invoke(msk_event)
    assert result["summary"]["points"] == 4
    series = victoriametrics.export(f'{{app_guid="{SAMPLE_APP.guid}"}}', min_samples=14)
    by_name = {}
    for s in series:
        labels = dict(s["metric"])
        name = labels.pop("__name__")
        by_name[(name, labels.get("type", ""))] = (labels, s["values"], s["timestamps"])
    assert by_name[("http_request_duration", "")][1] == [0.012345678]
    assert by_name[("http_request_duration", "")][0] == {
        **ENRICHMENT,
        "instance": "1",
        "method": "GET",
        "status_code": "200",
    }
    assert by_name[("log_size", "RTR")][1] == [365]
    assert by_name[("log_size", "OUT")][1] == [93]
    # VictoriaMetrics stores about 12 significant digits; InfluxDB is checked exactly above.
    assert by_name[("instance_memory_pct", "")][1] == [pytest.approx(0.3495330810546875, rel=1e-11)]
    assert by_name[("instance_memory_pct", "")][2] == [1537510366623]
    assert len(by_name) == 3 + 2 * 2 + 7
    # A retry rewrites identical samples. VictoriaMetrics keeps such duplicates unless started with
    # -dedup.minScrapeInterval (InfluxDB replaces them: the exact count is checked there, above).
    invoke(msk_event)
    again = victoriametrics.export(f'{{app_guid="{SAMPLE_APP.guid}"}}', min_samples=28)
    assert len(again) == 14
    for s in again:
        assert len(set(s["timestamps"])) == 1 and len(set(s["values"])) == 1, s


def test_a_server_that_is_down_fails_the_batch_after_bounded_retries(
    monkeypatch, snapshot_bucket, invoke, msk_event
):
    from refinery_tools.dev.servers import free_port

    monkeypatch.setenv("INFLUX_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("INFLUX_DATABASE", "cf")
    monkeypatch.setenv("FLUSH_TIME_RESERVE", "1s")
    started = time.monotonic()
    with pytest.raises(FlushError, match="gave up after"):
        invoke(msk_event, timeout=4.0)
    assert time.monotonic() - started < 4.0


def test_503_fails_the_batch_and_honours_retry_after(
    monkeypatch, snapshot_bucket, influxdb1, influx_db, invoke, msk_event
):
    with FaultProxy(influxdb1.url) as proxy:
        monkeypatch.setenv("INFLUX_URL", proxy.url)
        monkeypatch.setenv("INFLUX_DATABASE", influx_db)
        monkeypatch.setenv("FLUSH_TIME_RESERVE", "1s")
        proxy.fail_next(1000, status=503, retry_after="1")
        started = time.monotonic()
        with pytest.raises(FlushError, match="503"):
            invoke(msk_event, timeout=4.5)
        elapsed = time.monotonic() - started
        attempts = proxy.requests_seen["/write"]
        assert 2 <= attempts <= 4 and elapsed < 4.5
        assert proxy.forwarded["/write"] == 0
        assert influxdb1.count(influx_db, "log") == 0

        proxy.clear()
        proxy.fail_next(2, status=503, retry_after="0")
        result = invoke(msk_event, timeout=30)
        assert result["summary"]["sink_retries"] == 2
        assert stored(influxdb1, influx_db) == at_identity_times(EXPECTED, 10**DEFAULT_DIGITS)


def test_wrong_database_is_a_configuration_error(monkeypatch, snapshot_bucket, influxdb1, invoke, msk_event):
    monkeypatch.setenv("INFLUX_URL", influxdb1.url)
    monkeypatch.setenv("INFLUX_DATABASE", "does_not_exist")
    with pytest.raises(FlushError, match=r"configuration error.*does not exist"):
        invoke(msk_event)
