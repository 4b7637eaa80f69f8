"""Misbehaving servers (issue 14): every I/O bounded by the invocation's deadline, every refusal isolated
in a few requests. The real enricher handler against InfluxDB 1.6, VictoriaMetrics and moto S3, behind
the fault proxy (``FaultProxy``) or a scripted one (``misbehaving.ScriptedProxy``: any status and body,
answers that trickle, requests that are never answered).

Every invocation here goes through :func:`timed` (the ``run`` fixture), which asserts that it ended —
returned or raised — before its context's deadline.
"""

from __future__ import annotations

import base64
import copy
import gzip
import logging
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from faults import (
    APPS,
    GUIDS,
    KEY,
    SNAPSHOT,
    WEEK_A_NS,
    WEEK_B_NS,
    Stack,
    accounted,
    expected_lines,
    make_stack,
    make_values,
    quarantined_records,
    reference_points,
    snapshot_of,
    stored,
)
from misbehaving import Answer, Request, ScriptedProxy

from refinery.config import ConfigError
from refinery.metadata.snapshot import MAX_SNAPSHOT_BYTES
from refinery.quarantine import QuarantineError
from refinery.sinks import FlushError
from refinery_tools.dev.servers import InfluxDB1Server, VictoriaMetricsServer, free_port
from refinery_tools.events import build_kafka_event
from support.faultproxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(invoke: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``invoke``, asserting that every invocation ends (returns or raises) before its deadline."""

    def timed(event: dict[str, Any], timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        try:
            return invoke(event, timeout=timeout)
        finally:
            elapsed = time.monotonic() - started
            assert elapsed < timeout, f"the invocation ran {elapsed:.2f} s, past its {timeout} s deadline"

    return timed


@pytest.fixture
def fault_proxy(influxdb1: InfluxDB1Server) -> Iterator[FaultProxy]:
    p = FaultProxy(influxdb1.url).start()
    yield p
    threading.Thread(target=p.stop, daemon=True).start()


@pytest.fixture
def stack(monkeypatch, influxdb1, influx_db, fault_proxy, s3_bucket) -> Stack:
    return make_stack(monkeypatch, influxdb1, influx_db, fault_proxy, s3_bucket)


def event_of(
    kinds: tuple[str, ...], count: int, partitions: int = 2, start_ns: int = WEEK_A_NS
) -> dict[str, Any]:
    values = make_values(count, GUIDS, kinds=kinds, start_ns=start_ns).values
    return build_kafka_event(values, partitions=partitions)


def lines_of(event: dict[str, Any]) -> list[str]:
    return expected_lines(event, SNAPSHOT).lines


def http_records(event: dict[str, Any]) -> list[tuple[str, int]]:
    """(partition key, offset) of the event's HTTP records."""
    out = []
    for key, batch in event["records"].items():
        for record in batch:
            if orjson.loads(base64.b64decode(record["value"]))["eventType"] == 4:
                out.append((key, record["offset"]))
    return sorted(out)


def without_seed(points: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {m: [p for p in ps if "seed" not in p["tags"]] for m, ps in points.items()}


# ------------------------------------------------------------------ 1. field type conflicts

CONFLICT = (
    'field type conflict: input field "duration" on measurement "http_request" is type float, '
    "already exists as type integer"
)


@pytest.mark.parametrize(
    ("share", "kinds"),
    [("10%", ("http",) + ("log",) * 9), ("50%", ("http", "log")), ("100%", ("http",))],
)
def test_a_field_type_conflict_costs_one_or_two_requests_per_chunk(stack, run, share, kinds) -> None:
    """InfluxDB 1.x's partial write names the conflict (measurement, field, type): every conflicting line
    is found without bisection, the good points are written, the batch succeeds."""
    stack.setenv(INFLUX_BATCH_SIZE="250", INFLUX_WRITE_CONCURRENCY="2")
    http = 500
    event = event_of(kinds, http * len(kinds), partitions=1)  # interleaved, as the issue found them
    lines = lines_of(event)
    good = [line for line in lines if not line.startswith("http_request,")]
    assert len(lines) - len(good) == http
    expected = reference_points(stack.influx, good)
    # An integer "duration" in the batch's shard, just before it: every float duration now conflicts.
    stack.influx.write(stack.db, f"http_request,seed=1 duration=1i {WEEK_A_NS - 1}")

    result = run(event, timeout=20)
    summary = result["summary"]
    assert not result["batchItemFailures"] and accounted(summary)
    assert summary["quarantined_by_reason"] == {"rejected_by_server": http}
    assert summary["written"] == len(good)
    chunks = [lines[i : i + 250] for i in range(0, len(lines), 250)]
    mixed = sum(1 for c in chunks if any(x in good for x in c) and not all(x in good for x in c))
    requests = stack.proxy.requests_seen["/write"]
    # one request per chunk, and one more to re-send the other lines of a chunk that has both kinds
    assert requests == len(chunks) + mixed, (requests, len(chunks), mixed)
    assert mixed == (0 if share == "100%" else len(chunks))
    print(f"\n{share} conflicting: {len(lines)} lines, {len(chunks)} chunks, {requests} write requests")
    records = quarantined_records(stack.quarantine())
    assert sorted((r["partition_key"], r["offset"]) for r in records) == http_records(event)
    assert all(CONFLICT in r["detail"] and "answered 400" in r["detail"] for r in records)
    assert without_seed(stack.points()) == expected


def test_influxdb2_partial_write_422_isolates_by_the_named_conflict(stack, run) -> None:
    """InfluxDB 2.x answers a partial write with 422 and a JSON body (``message``): the same isolation.
    Emulated by the fault proxy answering the first request as 2.x does (the suspects are then never
    sent again, so what InfluxDB 1.x stores is what 2.x would have)."""
    event = event_of(("http", "log", "container"), 120)
    lines = lines_of(event)
    first_chunk = lines[:50]
    suspects = [line for line in first_chunk if line.startswith("http_request,")]
    message = f"failure writing points to database: partial write: {CONFLICT} dropped={len(suspects)}"
    stack.proxy.fail_next(
        1, status=422, body=orjson.dumps({"code": "unprocessable entity", "message": message})
    )
    result = run(event, timeout=10)
    summary = result["summary"]
    assert summary["quarantined_by_reason"] == {"rejected_by_server": len(suspects)} and accounted(summary)
    chunks = -(-len(lines) // 50)
    assert stack.proxy.requests_seen["/write"] == chunks + 1  # and the first chunk's other lines again
    records = quarantined_records(stack.quarantine())
    assert len(records) == len(suspects)
    assert all("answered 422" in r["detail"] and CONFLICT in r["detail"] for r in records)
    assert stack.points() == reference_points(stack.influx, [x for x in lines if x not in suspects])


def test_influxdb3_partial_write_names_the_refused_lines(stack, run) -> None:
    """InfluxDB 3 lists the refused lines by number with their own message: they are quarantined at once,
    the rest is sent again (emulated by the fault proxy answering the first request as 3.x does)."""
    event = event_of(("http", "log", "container"), 120)
    lines = lines_of(event)
    refused = [lines[1], lines[6]]
    body = {
        "error": "partial write of line protocol occurred",
        "data": [
            {
                "original_line": lines[n - 1][:40],
                "line_number": n,
                "error_message": f"invalid column type for column 'x{n}', expected "
                "iox::column_type::field::integer, got iox::column_type::field::float",
            }
            for n in (2, 7)
        ],
    }
    stack.proxy.fail_next(1, status=400, body=orjson.dumps(body))
    result = run(event, timeout=10)
    summary = result["summary"]
    assert summary["quarantined_by_reason"] == {"rejected_by_server": 2} and accounted(summary)
    assert stack.proxy.requests_seen["/write"] == -(-len(lines) // 50) + 1
    details = sorted(r["detail"] for r in quarantined_records(stack.quarantine()))
    assert len(details) == 2 and "answered 400: partial write of line protocol occurred" in details[0]
    assert "; line 2: invalid column type for column 'x2'" in details[0]
    assert "; line 7: invalid column type for column 'x7'" in details[1]
    assert stack.points() == reference_points(stack.influx, [x for x in lines if x not in refused])


def test_victoriametrics_takes_an_integer_and_a_float_field_alike(
    monkeypatch, victoriametrics: VictoriaMetricsServer, snapshot_bucket, run
) -> None:
    """VictoriaMetrics stores every field as a float64 sample: the lines that conflict in InfluxDB are
    written, with one request per chunk (through the v2 API, as the v2 sink writes)."""
    guid = str(uuid.uuid4())
    app = f"vm-{uuid.uuid4().hex[:12]}"  # a series of its own on the session's server
    info = APPS[GUIDS[0]]
    apps = {guid: type(info)(guid, app, info.space_guid, info.space_name, info.org_guid, info.org_name)}
    boto3.client("s3").put_object(Bucket=snapshot_bucket, Key=KEY, Body=snapshot_of(apps))
    with FaultProxy(victoriametrics.url) as proxy:
        monkeypatch.setenv("INFLUX_URL", proxy.url)
        monkeypatch.setenv("INFLUX_TOKEN", "unused")
        monkeypatch.setenv("INFLUX_ORG", "cf")
        monkeypatch.setenv("INFLUX_BUCKET", "cf")
        monkeypatch.setenv("INFLUX_BATCH_SIZE", "100")
        victoriametrics.write(f"http_request,app={app},seed=1 duration=1i {WEEK_A_NS - 1}")
        event = build_kafka_event(make_values(200, [guid], kinds=("http", "log")).values)
        result = run(event, timeout=10)
        assert result["summary"]["written"] == 200 and result["summary"]["quarantined"] == 0
        assert proxy.requests_seen["/api/v2/write"] == 2
    series = victoriametrics.export(f'{{__name__="http_request_duration",app="{app}"}}', min_samples=101)
    assert sum(len(x["values"]) for x in series) == 101  # the seeded integer and the 100 floats


# ---------------------------------------------------------------------- 2. a 200 is not a write


def test_a_200_with_a_web_page_is_an_error_quoting_it_and_nothing_counts_as_written(stack, run) -> None:
    event = event_of(("http", "log", "container"), 60)
    page = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Corporate proxy</body></html>"
    stack.proxy.fail_next(1, status=200, body=page)
    with pytest.raises(FlushError) as caught:
        run(event, timeout=10)
    message = str(caught.value)
    assert (
        "answered 200, not 204 No Content" in message
        and "its answer begins '<!DOCTYPE html><html><head><title>Sign in" in message
    )
    assert "configuration error" in message and caught.value.acknowledged == 0
    assert stack.proxy.requests_seen["/write"] == 1  # not retried: it cannot help
    result = run(event, timeout=10)  # the mapping's retry, once the proxy is fixed
    assert result["summary"]["written"] == 60
    assert stack.points() == stack.expected(event)


# ---------------------------------------------------------------- 3. a trickling answer


@pytest.mark.parametrize(
    ("api", "where", "influx_timeout", "invocation"),
    [
        ("v1", "body", "2s", 5.0),  # the request's own limit ends each attempt (headers at once)
        ("v2", "headers", "30s", 3.0),  # the invocation's deadline ends the only attempt
    ],
)
def test_a_trickling_answer_cannot_outlast_the_timeout_or_the_deadline(
    monkeypatch, snapshot_bucket, run, api, where, influx_timeout, invocation
) -> None:
    trickle = {"trickle": 0.5} if where == "body" else {"trickle_headers": 0.5}
    boto3.client("s3").put_object(Bucket=snapshot_bucket, Key=KEY, Body=SNAPSHOT)
    with ScriptedProxy() as server:
        server.rule = lambda request: Answer(status=200, body=b"x" * 100, **trickle)
        monkeypatch.setenv("INFLUX_URL", server.url)
        monkeypatch.setenv("INFLUX_TIMEOUT", influx_timeout)
        monkeypatch.setenv("FLUSH_TIME_RESERVE", "500ms")
        if api == "v1":
            monkeypatch.setenv("INFLUX_DATABASE", "cf")
        else:
            monkeypatch.setenv("INFLUX_TOKEN", "t")
            monkeypatch.setenv("INFLUX_ORG", "o")
            monkeypatch.setenv("INFLUX_BUCKET", "b")
        event = event_of(("http", "log"), 20)
        started = time.monotonic()
        with pytest.raises(FlushError, match="no complete answer within") as caught:
            run(event, timeout=invocation)
        elapsed = time.monotonic() - started
        attempts = server.count("/")
    print(f"\ntrickling {where}: {attempts} attempt(s), {elapsed:.2f} s of a {invocation} s invocation")
    assert "gave up after" in str(caught.value)
    if api == "v1":  # 2 s each (while 2 s are left), then what is left
        assert 2 <= attempts <= 4 and elapsed >= 2 * 2.0
    else:  # one attempt until the deadline (less FLUSH_TIME_RESERVE)
        assert 1 <= attempts <= 2 and elapsed >= invocation - 0.5 - 0.3


# ------------------------------------------------------------------------- 4. a hung S3


@pytest.fixture
def s3_proxy(monkeypatch, moto_server, aws_env) -> Iterator[ScriptedProxy]:
    """moto S3 behind the scripted proxy; the enricher's S3 goes through it."""
    with ScriptedProxy(moto_server.url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        yield proxy


def snapshot_get(request: Request) -> bool:
    return request.method == "GET" and request.path.split("?")[0].endswith("/" + KEY)


def test_hung_s3_cold_quarantines_as_metadata_unavailable_within_the_deadline(stack, s3_proxy, run) -> None:
    s3_proxy.rule = lambda r: Answer(stall=True) if snapshot_get(r) else None
    event = event_of(("http", "log", "container"), 30)
    result = run(event, timeout=6)
    summary = result["summary"]
    assert summary["quarantined_by_reason"] == {"metadata_unavailable": 30} and accounted(summary)
    assert summary["snapshot_failures"] == 1 and "did not answer within" in summary["snapshot_error"]
    assert summary["snapshot_age_s"] is None
    s3_proxy.rule = lambda r: None
    assert len(quarantined_records(stack.quarantine())) == 30


def test_hung_s3_warm_keeps_its_snapshot_and_reports_its_age(stack, s3_proxy, run, caplog) -> None:
    first = event_of(("http", "log", "container"), 30)
    assert run(first, timeout=6)["summary"]["written"] == 30
    s3_proxy.rule = lambda r: Answer(stall=True)  # S3 accepts connections, never answers
    time.sleep(0.15)  # SNAPSHOT_CHECK_INTERVAL=100ms: the next invocation checks
    second = event_of(("http", "log"), 30, start_ns=WEEK_A_NS + 10**9)
    with caplog.at_level(logging.WARNING, logger="refinery.metadata.store"):
        result = run(second, timeout=6)
    summary = result["summary"]
    assert summary["written"] == 30 and summary["snapshot_failures"] == 1
    assert "did not answer within" in summary["snapshot_error"]
    assert summary["snapshot_age_s"] is not None and summary["snapshot_age_s"] > 0
    assert any("keeping the snapshot this container has" in r.getMessage() for r in caplog.records)


def test_s3_hung_for_the_quarantine_too_fails_the_batch_within_the_deadline(stack, s3_proxy, run) -> None:
    s3_proxy.rule = lambda r: Answer(stall=True)
    event = event_of(("http", "log", "container"), 30)
    with pytest.raises(QuarantineError, match="did not answer within"):
        run(event, timeout=6)


# --------------------------------------------------------------------------- 5. a gzip bomb


def gzip_bomb(expanded_gib: int = 3) -> bytes:
    """About 3 MB expanding to ``expanded_gib`` GiB of zeros (gzip members of 1 MiB each)."""
    member = gzip.compress(b"\0" * 2**20, compresslevel=9, mtime=0)
    return member * (1024 * expanded_gib)


@pytest.mark.parametrize("container", ["warm", "cold"])
def test_a_gzip_bomb_snapshot_is_refused_at_the_limit(stack, run, caplog, container) -> None:
    bomb = gzip_bomb()
    assert len(bomb) < 4 * 2**20
    event = event_of(("http", "log", "container"), 30)
    if container == "warm":
        assert run(event, timeout=10)["summary"]["written"] == 30
    stack.put_snapshot(bomb)
    time.sleep(0.15)
    later = build_kafka_event(make_values(30, GUIDS, start_ns=WEEK_A_NS + 10**9).values)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="refinery.metadata.store"):
        result = run(later, timeout=10)
    summary = result["summary"]
    assert summary["snapshot_failures"] == 1
    assert f"expands to more than {MAX_SNAPSHOT_BYTES // 2**20} MiB" in summary["snapshot_error"]
    assert any("snapshot check failed" in r.getMessage() for r in caplog.records)
    assert time.monotonic() - started < 5
    if container == "warm":
        assert summary["written"] == 20 and summary["quarantined"] == 0
    else:
        assert summary["quarantined_by_reason"] == {"metadata_unavailable": 20}


# --------------------------------------------------------------- 7. accounting and escaping


def test_a_refused_line_in_a_later_concurrent_chunk_is_left_to_the_redelivery(stack, run) -> None:
    """Chunk 1 fails (503 until the deadline) while chunk 2, written at the same time, holds a line
    InfluxDB refuses. With partial batch responses the write acknowledged nothing: the refused line is
    neither counted nor quarantined now (before: written=-1 and no quarantine object for it); the
    redelivery quarantines it once and writes everything else."""
    generated = make_values(150, GUIDS, kinds=("http", "log", "container"))
    values = list(generated.values)
    # record 60 (chunk 2): an HTTP request in week B, where response_size is a string
    values[60] = make_values(1, GUIDS, start_ns=WEEK_B_NS, kinds=("http",), salt=9).values[0]
    event = build_kafka_event(values, partitions=1)
    lines = lines_of(event)
    refused = lines[60]
    assert len(lines) == 150 and refused.startswith("http_request,")
    assert int(refused.rsplit(" ", 1)[1]) < WEEK_A_NS
    stack.influx.write(stack.db, f'http_request,seed=1 response_size="text" {WEEK_B_NS - 1}')
    with ScriptedProxy(stack.influx.url) as proxy:
        stack.setenv(INFLUX_URL=proxy.url, INFLUX_WRITE_CONCURRENCY="3", REPORT_BATCH_ITEM_FAILURES="true")
        first_line = lines[0]
        proxy.rule = lambda r: Answer(status=503) if first_line in r.lines else None
        result = run(event, timeout=3)
        summary = result["summary"]
        assert result["batchItemFailures"] == [
            {"itemIdentifier": {"partition": "cf-firehose-0", "offset": 0}}
        ]
        assert accounted(summary), summary
        assert (summary["written"], summary["quarantined"], summary["quarantine_object"]) == (0, 0, None)
        assert summary["redelivered"] == summary["records_in"] == 150
        assert any(refused in r.lines for r in proxy.requests)  # chunk 2 was written meanwhile
        proxy.rule = lambda r: None
        again = run(event, timeout=10)
    assert again["summary"]["quarantined_by_reason"] == {"rejected_by_server": 1}
    (record,) = quarantined_records(stack.quarantine())
    assert (record["offset"], record["reason"]) == (60, "rejected_by_server")
    assert without_seed(stack.points()) == reference_points(stack.influx, [x for x in lines if x != refused])


def log_envelope(app_guid: str, source_instance: str, n: int) -> bytes:
    return orjson.dumps(
        {
            "origin": "rep",
            "eventType": 5,
            "timestamp": 1,
            "logMessage": {
                "message": "aGk=",
                "message_type": 1,
                "timestamp": WEEK_A_NS + n,
                "app_id": app_guid,
                "source_type": "APP/PROC/WEB",
                "source_instance": source_instance,
            },
        }
    )


def test_escaping_and_field_types_as_the_readme_promises(stack, run) -> None:
    """A lone backslash as source_instance is written as "0"; a carriage return in a name or instance
    becomes a space; an applicationId of the wrong type is quarantined as bad_field (not dropped)."""
    guid = GUIDS[0]
    values = [
        log_envelope(guid, "\\", 1),
        log_envelope(guid, "cr\rin", 2),
        log_envelope(guid, "lf\nin", 3),
    ]
    template = orjson.loads(make_values(1, GUIDS, kinds=("http",)).values[0])
    for n, wrong in enumerate(["e7b6e4d2", 5, [1, 2]]):
        http = copy.deepcopy(template)
        http["httpStartStop"]["applicationId"] = wrong
        http["httpStartStop"]["startTimestamp"] += n
        values.append(orjson.dumps(http))
    renamed = {g: info for g, info in APPS.items()}
    info = APPS[guid]
    renamed[guid] = type(info)(guid, "my\rapp", info.space_guid, "sp\rce", info.org_guid, info.org_name)
    stack.put_snapshot(snapshot_of(renamed))
    result = run(build_kafka_event(values), timeout=10)
    summary = result["summary"]
    assert summary["written"] == 3 and summary["quarantined_by_reason"] == {"bad_field": 3}
    points = stored(stack.influx, stack.db)["log"]
    assert sorted(p["tags"]["instance"] for p in points) == ["0", "cr in", "lf in"]
    assert {(p["tags"]["app"], p["tags"]["space"]) for p in points} == {("my app", "sp ce")}


# ----------------------------------------------------------------------- 8. settings


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"INFLUX_TOKEN": "t"}, "INFLUX_TOKEN: v2 API setting(s) given with INFLUX_DATABASE"),
        ({"INFLUX_PASSWORD": "pw"}, "INFLUX_USERNAME: required with INFLUX_PASSWORD"),
        ({"METADATA_FILE": str(ROOT / "events" / "sample-snapshot.json.gz")}, "METADATA_FILE: give"),
        ({"INFLUX_TIMEOUT": "0"}, "INFLUX_TIMEOUT: '0' must be more than 0"),
        ({"INFLUX_MAX_RETRY_WAIT": "0s"}, "INFLUX_MAX_RETRY_WAIT: '0s' must be more than 0"),
        ({"FLUSH_TIME_RESERVE": "5s"}, "FLUSH_TIME_RESERVE: 5 s is not less than the"),
    ],
)
def test_settings_that_were_accepted_silently_are_configuration_errors(stack, run, settings, named) -> None:
    stack.setenv(**settings)
    with pytest.raises(ConfigError, match=re.escape(named)):
        run(event_of(("http",), 6), timeout=4)
    assert stack.proxy.requests_seen["/write"] == 0


# ------------------------------------------------------------ 9. retries said, and the last word


def test_each_retry_is_logged_with_its_cause_and_the_final_error_reads_clearly(stack, run, caplog) -> None:
    stack.setenv(INFLUX_URL=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with (
        caplog.at_level(logging.WARNING, logger="refinery.sinks.chunked"),
        pytest.raises(FlushError) as caught,
    ):
        run(event_of(("http", "log"), 20), timeout=3)
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) >= 3
    assert all(r.levelno == logging.WARNING and "connection refused" in r.getMessage() for r in retries)
    message = str(caught.value)
    assert message.startswith(f"influxdb-v1: gave up after {len(retries) + 1} attempt(s) in ")
    assert "the last one failed with POST http://127.0.0.1:" in message and "connection refused" in message
    assert "no time is left for another before the invocation's deadline (FLUSH_TIME_RESERVE=1 s" in message


def test_a_local_invoke_says_each_retry_on_stderr(tmp_path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "refinery_tools.cli",
            "invoke",
            "enricher",
            "--event",
            "events/msk.json",
            "--timeout",
            "3",
        ],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "METADATA_FILE": "events/sample-snapshot.json.gz",
            "INFLUX_URL": f"http://127.0.0.1:{free_port()}",
            "INFLUX_DATABASE": "cf",
            "FLUSH_TIME_RESERVE": "1s",
            "QUARANTINE_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    retries = [line for line in done.stderr.splitlines() if "retrying in" in line]
    assert retries and all("connection refused" in line for line in retries), done.stderr[-2000:]
    assert "gave up after" in done.stderr
