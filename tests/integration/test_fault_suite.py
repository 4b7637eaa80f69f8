"""Data safety under faults ("Data safety" issue): the real enricher handler, a real InfluxDB 1.6 behind
a fault-injecting proxy, moto S3 and the fake Cloud Controller.

Each scenario emulates the event source mapping (invoke; on an exception invoke again, bounded) and
then compares EXACTLY the points stored with the points expected — computed without faults from the
same batch and snapshot, and parsed by the same InfluxDB in a scratch database — so that nothing is
lost and nothing is duplicated. Every invocation's summary must balance:
records_in == written + dropped + quarantined (+ redelivered).
"""

from __future__ import annotations

import base64
import gzip
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from faults import (
    APPS,
    BATCH_SIZE,
    GUIDS,
    KEY,
    POINT_KINDS,
    SNAPSHOT,
    WEEK_A_NS,
    WEEK_B_NS,
    Generated,
    RecordOracle,
    Stack,
    accounted,
    assert_distinct_identities,
    assert_each_record_once,
    count_points,
    deliver,
    deliver_partial,
    event_values,
    expected_lines,
    make_stack,
    make_values,
    pass_then_fail,
    quarantined_records,
    records_from,
    reference_points,
    requests_to_isolate,
    snapshot_of,
    stored_points,
    twin,
    uuid_pair,
    wait_until,
)

from refinery.handlers import enricher, metadata_refresh
from refinery.metadata.cc_client import CloudControllerAuthError, CloudControllerUnavailable
from refinery.metadata.snapshot import AppInfo, decode_snapshot
from refinery.quarantine import QuarantineError
from refinery.sinks import FlushError
from refinery_tools.dev.fake_cc import FakeCloudController, Foundation
from refinery_tools.dev.servers import InfluxDB1Server
from refinery_tools.events import build_kafka_event
from refinery_tools.lambda_context import LocalContext
from refinery_tools.replay import replay
from support.faultproxy import FaultProxy

pytestmark = [
    pytest.mark.integration,
    # A handler that raises something else than FlushError/QuarantineError publishes no metric (the
    # known bugs pinned below): Powertools then warns that there is nothing to publish.
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]

RECORDS = 360  # 240 points (4 kinds of 6 make one) -> 5 chunks of at most 50 lines
POINTS = RECORDS * 4 // 6


@pytest.fixture
def proxy(influxdb1: InfluxDB1Server) -> Iterator[FaultProxy]:
    p = FaultProxy(influxdb1.url).start()
    yield p
    # stop() waits for serve_forever's 0.5 s poll: let it finish in the background.
    threading.Thread(target=p.stop, name="faultproxy-stop", daemon=True).start()


@pytest.fixture
def stack(monkeypatch, influxdb1, influx_db, proxy, s3_bucket) -> Stack:
    return make_stack(monkeypatch, influxdb1, influx_db, proxy, s3_bucket)


def standard(count: int = RECORDS, **kwargs: Any) -> tuple[Generated, dict[str, Any]]:
    generated = make_values(count, GUIDS, **kwargs)
    return generated, build_kafka_event(generated.values, partitions=2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def append_raw(event: dict[str, Any], key: str, values: list[Any]) -> list[int]:
    """Append records with raw (already base64 or malformed) values to a partition; their offsets."""
    batch = event["records"][key]
    topic, partition = batch[0]["topic"], batch[0]["partition"]
    offsets = []
    for value in values:
        offset = batch[-1]["offset"] + 1
        batch.append(
            {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "timestamp": batch[-1]["timestamp"] + 1,
                "timestampType": "CREATE_TIME",
                "value": value,
                "headers": [],
            }
        )
        offsets.append(offset)
    return offsets


def point_records_in_order(generated: Generated, partitions: int = 2) -> list[tuple[str, int]]:
    """(partition key, offset) of the records that make a point, in the order the pipeline meets them
    (build_kafka_event spreads value i over partition i % partitions at offset i // partitions)."""
    order = []
    for p in range(partitions):
        for i in range(p, len(generated.values), partitions):
            if generated.kinds[i] in POINT_KINDS and generated.guids[i] in APPS:
                order.append((f"cf-firehose-{p}", i // partitions))
    return order


def refused_by_conflict(line: str) -> bool:
    """An http_request line in week B, where ``seed_conflict`` made response_size a string."""
    return line.startswith("http_request,") and int(line.rsplit(" ", 1)[1]) < WEEK_A_NS


def clear_on_failure(proxy: FaultProxy) -> Callable[[int, BaseException], None]:
    def recover(attempt: int, error: BaseException) -> None:
        proxy.clear()

    return recover


# ------------------------------------------------------------------------------------- InfluxDB


WRITE_CONCURRENCY = pytest.mark.parametrize("concurrency", ["1", "3"], ids=["in-order", "3-at-once"])


@WRITE_CONCURRENCY
def test_influxdb_down_at_start_fails_the_batch_then_the_retry_writes_everything(stack, invoke, concurrency):
    stack.setenv(INFLUX_WRITE_CONCURRENCY=concurrency)
    _, event = standard()
    expected = stack.expected(event)
    assert count_points(expected) == POINTS
    stack.proxy.reset_connections(True)
    delivery = deliver(invoke, event, timeout=2.5, recover=clear_on_failure(stack.proxy))

    assert len(delivery.attempts) == 2
    first = delivery.errors[0]
    assert isinstance(first, FlushError) and "gave up after" in str(first)
    assert first.acknowledged == 0
    assert delivery.attempts[0].seconds < 2.5  # it gave up within the invocation
    assert stack.proxy.forwarded["/write"] == 5  # nothing reached InfluxDB before the recovery
    assert stack.proxy.requests_seen["/write"] >= 5 + 3  # the first chunk was retried a few times
    summary = delivery.summary
    assert (summary["records_in"], summary["written"], summary["dropped"], summary["quarantined"]) == (
        RECORDS,
        POINTS,
        RECORDS - POINTS,
        0,
    )
    assert summary["sink_chunks"] == 5
    assert stack.points() == expected


def test_influxdb_down_mid_batch_the_retried_batch_rewrites_without_duplicates(stack, invoke):
    _, event = standard()
    expected = stack.expected(event)
    pass_then_fail(stack.proxy, 2, 10_000)
    seen_after_first: dict[str, int] = {}

    def recover(attempt: int, error: BaseException) -> None:
        seen_after_first.update(
            forwarded=stack.proxy.forwarded["/write"], points=count_points(stack.points())
        )
        stack.proxy.clear()

    delivery = deliver(invoke, event, timeout=2.5, recover=recover)
    assert len(delivery.attempts) == 2
    assert isinstance(delivery.errors[0], FlushError) and "503" in str(delivery.errors[0])
    assert delivery.errors[0].acknowledged == 2 * BATCH_SIZE
    # InfluxDB went away after the first two chunks: exactly those points were stored...
    assert seen_after_first == {"forwarded": 2, "points": 2 * BATCH_SIZE}
    # ...and the retry rewrote them with the rest: the same 240 points, none twice.
    assert stack.points() == expected
    assert stack.proxy.forwarded["/write"] == 2 + 5


@WRITE_CONCURRENCY
def test_slow_influxdb_times_out_then_recovers_and_late_writes_duplicate_nothing(stack, invoke, concurrency):
    stack.setenv(INFLUX_WRITE_CONCURRENCY=concurrency)
    _, event = standard()
    expected = stack.expected(event)
    stack.proxy.set_delay(1.5)  # beyond INFLUX_TIMEOUT=1s: the request is sent on after the client gave up
    delivery = deliver(invoke, event, timeout=2.8, recover=clear_on_failure(stack.proxy))
    assert len(delivery.attempts) == 2
    error = delivery.errors[0]
    assert isinstance(error, FlushError) and "ReadTimeout" in str(error)
    assert delivery.attempts[0].seconds < 2.8
    # The timed-out requests still reach InfluxDB late ("ghost" writes of chunk 1): wait for them.
    assert wait_until(lambda: stack.proxy.forwarded["/write"] == stack.proxy.requests_seen["/write"])
    if concurrency == "1":
        assert stack.proxy.requests_seen["/write"] == 2 + 5  # two timed-out attempts, then the five chunks
    else:  # up to three chunks timed out together, each tried at most twice
        assert 5 + 2 <= stack.proxy.requests_seen["/write"] <= 5 + 2 * 3
    assert stack.points() == expected


def test_a_slow_request_never_outlives_the_invocation(stack, invoke):
    """Regression, found by this suite (failed on commit 0a46ca6): a write request is started whatever the
    time left, and its timeout (INFLUX_TIMEOUT) is not bounded by the invocation deadline (sinks/base.py
    Sink._post_with_retries checks the deadline only after a failure; influx_v1.py post() uses
    config.timeout). With the defaults (10s timeout, 3s reserve) a slow server makes Lambda kill the
    invocation instead of failing the batch cleanly."""
    _, event = standard(60)
    stack.setenv(INFLUX_TIMEOUT="3s")
    stack.proxy.set_delay(5)
    started = time.monotonic()
    with pytest.raises(FlushError):
        invoke(event, timeout=2.5)
    assert time.monotonic() - started <= 2.5


def test_resetting_connections_are_retried_within_the_invocation(stack, invoke):
    _, event = standard()
    expected = stack.expected(event)
    stack.proxy.reset_connections(True)
    timer = threading.Timer(0.6, stack.proxy.reset_connections, [False])
    timer.start()
    try:
        delivery = deliver(invoke, event, timeout=6, tries=1)
    finally:
        timer.cancel()
    summary = delivery.summary
    assert summary["sink_retries"] >= 2 and delivery.attempts[0].seconds >= 0.6
    assert summary["sink_chunks"] == 5 and stack.proxy.forwarded["/write"] == 5
    assert stack.points() == expected


def test_503_then_recovering_is_retried_within_the_invocation(stack, invoke):
    _, event = standard()
    expected = stack.expected(event)
    stack.proxy.fail_next(3, status=503)
    delivery = deliver(invoke, event, timeout=6, tries=1)
    assert delivery.summary["sink_retries"] == 3
    assert stack.proxy.requests_seen["/write"] == 3 + 5 and stack.proxy.forwarded["/write"] == 5
    assert stack.points() == expected


def test_429_retry_after_is_honoured(stack, invoke):
    _, event = standard()
    expected = stack.expected(event)
    stack.setenv(INFLUX_MAX_RETRY_WAIT="5s")
    stack.proxy.fail_next(2, status=429, retry_after="1")
    delivery = deliver(invoke, event, timeout=10, tries=1)
    assert delivery.summary["sink_retries"] == 2
    assert delivery.attempts[0].seconds >= 2.0  # two waits of Retry-After: 1 s each
    assert stack.points() == expected


def test_429_retry_after_is_capped_by_the_max_retry_wait(stack, invoke):
    _, event = standard()
    stack.setenv(INFLUX_MAX_RETRY_WAIT="300ms")
    stack.proxy.fail_next(1, status=429, retry_after="30")
    delivery = deliver(invoke, event, timeout=10, tries=1)
    assert delivery.summary["sink_retries"] == 1
    assert 0.3 <= delivery.attempts[0].seconds < 2.0
    assert stack.points() == stack.expected(event)


def test_a_retry_after_beyond_the_deadline_fails_the_batch_at_once(stack, invoke):
    _, event = standard()
    stack.setenv(INFLUX_MAX_RETRY_WAIT="30s")
    stack.proxy.fail_next(1, status=429, retry_after="20")
    delivery = deliver(invoke, event, timeout=5, recover=clear_on_failure(stack.proxy))
    error = delivery.errors[0]
    assert isinstance(error, FlushError) and "gave up after 1 attempt" in str(error) and "429" in str(error)
    assert delivery.attempts[0].seconds < 1.0  # no pointless sleep past the deadline
    assert stack.points() == stack.expected(event)


@WRITE_CONCURRENCY
def test_a_field_type_conflict_quarantines_exactly_the_refused_lines(stack, invoke, concurrency):
    stack.setenv(INFLUX_WRITE_CONCURRENCY=concurrency)
    stack.seed_conflict()
    main = make_values(RECORDS, GUIDS)
    odd = make_values(12, GUIDS, start_ns=WEEK_B_NS, kinds=("http", "log", "container"), salt=5)
    generated = main + odd
    event = build_kafka_event(generated.values, partitions=2)
    refused = [
        (f"cf-firehose-{i % 2}", i // 2)
        for i in range(RECORDS, len(generated.values))
        if generated.kinds[i] == "http"
    ]
    assert len(refused) == 4
    refused_offsets = {offset for _, offset in refused}
    kept = expected_lines(event, SNAPSHOT)
    keep_lines = [line for line in kept.lines if not refused_by_conflict(line)]
    assert len(keep_lines) == len(kept.lines) - 4
    expected = reference_points(stack.influx, keep_lines)

    delivery = deliver(invoke, event, timeout=10, tries=1)  # the invocation succeeds
    summary = delivery.summary
    assert summary["quarantined_by_reason"] == {"rejected_by_server": 4}
    assert summary["written"] == POINTS + 12 - 4 and summary["points"] == POINTS + 12 - 4
    assert summary["sink_splits"] > 0
    records = quarantined_records(stack.quarantine())
    assert sorted((r["partition_key"], r["offset"]) for r in records) == sorted(refused)
    assert {r["offset"] for r in records} == refused_offsets
    for record in records:
        assert record["reason"] == "rejected_by_server"
        assert "field type conflict" in record["detail"] and "400" in record["detail"]
        assert orjson.loads(base64.b64decode(record["value"]))["eventType"] == 4
    got = stack.points()
    got["http_request"] = [p for p in got["http_request"] if p["tags"].get("app") != "seed"]
    assert got == expected


def test_413_splits_the_chunk_and_every_point_arrives(stack, invoke):
    _, event = standard()
    stack.proxy.fail_next(1, status=413)
    delivery = deliver(invoke, event, timeout=10, tries=1)
    summary = delivery.summary
    assert summary["sink_splits"] == 1 and summary["quarantined"] == 0
    assert stack.proxy.requests_seen["/write"] == 1 + 2 + 4  # the first chunk went as two halves
    assert stack.points() == stack.expected(event)


@pytest.mark.parametrize("status", [401, 403, 404])
def test_authentication_and_missing_database_fail_the_batch_at_once(stack, invoke, status):
    _, event = standard()
    stack.proxy.fail_next(1, status=status)
    delivery = deliver(invoke, event, timeout=10, recover=clear_on_failure(stack.proxy))
    error = delivery.errors[0]
    assert isinstance(error, FlushError) and "configuration error" in str(error) and str(status) in str(error)
    assert delivery.attempts[0].seconds < 1.0  # not retried
    assert stack.proxy.requests_seen["/write"] == 1 + 5
    assert stack.points() == stack.expected(event)


# ---------------------------------------------------------------------------- malformed records


def malformed_values() -> dict[str, Any]:
    return {
        "not_base64": "%%% not base64 %%%",
        "not_json": b64(b"{oops"),
        "bad_field": b64(
            orjson.dumps(
                {
                    "eventType": 4,
                    "timestamp": 1,
                    "httpStartStop": {"startTimestamp": "soon", "applicationId": uuid_pair(GUIDS[0])},
                }
            )
        ),
        "missing_value": None,
        "not_envelope": b64(b"[1,2,3]"),
        "bad_envelope": b64(b'{"eventType":9,"timestamp":1}'),
    }


def test_a_mixed_batch_writes_the_good_quarantines_the_bad_and_is_idempotent(stack, invoke):
    stack.seed_conflict()
    generated = make_values(120, GUIDS) + make_values(6, GUIDS, start_ns=WEEK_B_NS, kinds=("http",), salt=3)
    event = build_kafka_event(generated.values, partitions=2)
    bad = malformed_values()
    offsets = dict(zip(bad, append_raw(event, "cf-firehose-1", list(bad.values())), strict=True))
    full = expected_lines(event, SNAPSHOT)
    assert full.result.quarantined == dict.fromkeys(bad, 1)
    keep = [line for line in full.lines if not refused_by_conflict(line)]
    expected = reference_points(stack.influx, keep)
    assert count_points(expected) == 80

    first = deliver(invoke, event, timeout=10, tries=1)
    objects_first = stack.quarantine()
    points_first = stack.points()
    second = deliver(invoke, event, timeout=10, tries=1)  # the same batch again (a redelivery)
    objects_second = stack.quarantine()

    for delivery in (first, second):
        summary = delivery.summary
        assert summary["quarantined_by_reason"] == {**dict.fromkeys(bad, 1), "rejected_by_server": 6}
        assert summary["written"] == 80 and summary["records_in"] == 126 + len(bad)
        assert summary["dropped_by_reason"] == {"value_metric": 20, "counter_event": 20}
    assert len(objects_first) == 1 and objects_first == objects_second  # same key, same bytes
    records = quarantined_records(objects_second)
    by_reason = Counter(r["reason"] for r in records)
    assert by_reason == {**dict.fromkeys(bad, 1), "rejected_by_server": 6}
    assert {r["reason"]: r["offset"] for r in records if r["reason"] in bad} == offsets
    assert all(r["value"] == bad[r["reason"]] for r in records if r["reason"] in bad)
    for points in (points_first, stack.points()):
        points["http_request"] = [p for p in points["http_request"] if p["tags"].get("app") != "seed"]
        assert points == expected


def test_quarantine_write_failure_fails_the_batch_and_nothing_is_dropped(stack, invoke):
    missing = f"{stack.bucket}-missing"
    stack.setenv(QUARANTINE_BUCKET=missing)
    _, event = standard(120)
    bad = malformed_values()
    offsets = append_raw(event, "cf-firehose-0", [bad["not_json"], bad["not_base64"], bad["bad_field"]])

    def recover(attempt: int, error: BaseException) -> None:
        stack.s3.create_bucket(Bucket=missing)  # S3 (the bucket) is back

    delivery = deliver(invoke, event, timeout=10, recover=recover)
    assert len(delivery.attempts) == 2
    error = delivery.errors[0]
    assert isinstance(error, QuarantineError) and "cannot write 3 quarantined record(s)" in str(error)
    assert delivery.summary["quarantined"] == 3
    records = quarantined_records(stack.quarantine(missing))
    assert sorted(r["offset"] for r in records) == offsets
    assert stack.quarantine() == {}
    assert stack.points() == stack.expected(event)


# ------------------------------------------------------------------------ partial batch responses


def test_partial_batch_response_reports_the_first_unacknowledged_offsets(stack, invoke):
    stack.setenv(REPORT_BATCH_ITEM_FAILURES="true")
    generated, event = standard()
    # Malformed records: one early in partition 0 (before the failure), one late in partition 1.
    assert generated.kinds[4] == "value" and generated.kinds[RECORDS - 1] == "counter"
    early, late = event["records"]["cf-firehose-0"][2], event["records"]["cf-firehose-1"][-1]
    early["value"], late["value"] = "%%%", b64(b"{oops")
    expected = stack.expected(event)
    order = point_records_in_order(generated)
    assert len(order) == POINTS
    acknowledged = 2 * BATCH_SIZE
    first: dict[str, int] = {}
    for key, offset in order[acknowledged:]:
        first.setdefault(key, offset)
    assert first == {"cf-firehose-0": order[acknowledged][1], "cf-firehose-1": 0}

    pass_then_fail(stack.proxy, 2, 10_000)

    def recover(attempt: int, outcome: dict[str, Any] | BaseException) -> None:
        assert count_points(stack.points()) == acknowledged
        stack.proxy.clear()

    runs = deliver_partial(invoke, event, timeout=2.5, recover=recover)
    assert len(runs) == 2
    (_, failed), (again_event, done) = runs
    assert isinstance(failed, dict) and isinstance(done, dict)
    assert failed["batchItemFailures"] == [
        {"itemIdentifier": {"partition": key, "offset": offset}} for key, offset in first.items()
    ]
    summary = failed["summary"]
    redelivered = sum(
        len(batch) for batch in records_from(event, failed["batchItemFailures"])["records"].values()
    )
    assert summary["redelivered"] == redelivered == (180 - first["cf-firehose-0"]) + 180
    assert summary["written"] == acknowledged and summary["quarantined_by_reason"] == {"not_base64": 1}
    assert "503" in summary["flush_error"] and accounted(summary)
    assert done["summary"]["records_in"] == redelivered
    assert done["summary"]["quarantined_by_reason"] == {"not_json": 1}
    assert done["summary"]["written"] == POINTS - acknowledged
    assert stack.points() == expected
    records = quarantined_records(stack.quarantine())
    assert sorted((r["partition_key"], r["offset"], r["reason"]) for r in records) == [
        ("cf-firehose-0", 2, "not_base64"),
        ("cf-firehose-1", 179, "not_json"),
    ]
    assert again_event["records"]["cf-firehose-0"][0]["offset"] == first["cf-firehose-0"]


def test_partial_batch_response_with_chunks_at_once_still_writes_every_point_once(stack, invoke):
    """Three chunks in flight when InfluxDB goes away after two requests: which two got through is up
    to the race, but the reported offsets cover every unacknowledged point and the redelivery ends
    with the exact point set."""
    stack.setenv(REPORT_BATCH_ITEM_FAILURES="true", INFLUX_WRITE_CONCURRENCY="3")
    _, event = standard()
    expected = stack.expected(event)
    pass_then_fail(stack.proxy, 2, 10_000)

    def recover(attempt: int, outcome: dict[str, Any] | BaseException) -> None:
        stack.proxy.clear()

    runs = deliver_partial(invoke, event, timeout=2.5, recover=recover)
    assert len(runs) == 2
    (_, failed), (_, done) = runs
    assert isinstance(failed, dict) and isinstance(done, dict)
    summary = failed["summary"]
    assert failed["batchItemFailures"] and "503" in summary["flush_error"] and accounted(summary)
    assert summary["written"] in (0, BATCH_SIZE, 2 * BATCH_SIZE)  # the chunks before the first failure
    assert done["summary"]["written"] == POINTS - summary["written"] and accounted(done["summary"])
    assert stack.points() == expected


def test_partial_batch_response_keeps_refused_lines_of_acknowledged_chunks(stack, invoke):
    """Regression, found by this suite (failed on commit 0a46ca6): with REPORT_BATCH_ITEM_FAILURES, lines
    the server refused (isolated by splitting) in the acknowledged chunks are neither written nor
    quarantined: Sink.write raises FlushError without its WriteReport.rejected (sinks/base.py
    Sink.write), and pipeline.process_batch's partial-failure branch never quarantines them although
    their offsets are committed: the record is silently lost and counted as written."""
    stack.setenv(REPORT_BATCH_ITEM_FAILURES="true")
    stack.seed_conflict()
    generated, event = standard()
    assert generated.kinds[0] == "http"
    week_b = make_values(1, GUIDS, start_ns=WEEK_B_NS, kinds=("http",), salt=9)
    event["records"]["cf-firehose-0"][0]["value"] = b64(week_b.values[0])  # line 0: refused (type conflict)
    full = expected_lines(event, SNAPSHOT)
    expected = reference_points(stack.influx, [line for line in full.lines if not refused_by_conflict(line)])
    # Chunk 1 costs the isolation requests, chunk 2 one request; then InfluxDB is gone.
    pass_then_fail(stack.proxy, requests_to_isolate(BATCH_SIZE, {0}) + 1, 10_000)
    runs = deliver_partial(invoke, event, timeout=2.5, recover=lambda n, r: stack.proxy.clear())
    first = runs[0][1]
    assert isinstance(first, dict) and first["batchItemFailures"], first
    # The refused record (offset 0, committed by the partial response) is quarantined, exactly once.
    records = quarantined_records(stack.quarantine())
    assert [(r["partition_key"], r["offset"], r["reason"]) for r in records] == [
        ("cf-firehose-0", 0, "rejected_by_server")
    ], first["summary"]
    got = stack.points()
    got["http_request"] = [p for p in got["http_request"] if p["tags"].get("app") != "seed"]
    assert got == expected


def test_partial_batch_response_keeps_both_records_of_a_timestamp_collision(stack, invoke):
    """Two different records of one series at one event time, A acknowledged (the last line of chunk 2)
    and B not (the first of chunk 3): with REPORT_BATCH_ITEM_FAILURES only B is redelivered, alone. Both
    survive, because a point's time comes from its own record (the event time, its last digits from the
    record's bytes: refinery.identity), never from the batch it came in.

    Regression, found by this suite (failed on commit 0a46ca6): the later of two colliding records of a
    batch was told apart by moving it +1 ns; redelivered alone, it kept the original timestamp and
    overwrote the acknowledged point of the earlier record: one record was lost."""
    stack.setenv(REPORT_BATCH_ITEM_FAILURES="true")
    generated, event = standard()
    order = point_records_in_order(generated)
    (key_a, offset_a), (key_b, offset_b) = order[2 * BATCH_SIZE - 1], order[2 * BATCH_SIZE]
    assert key_a == key_b == "cf-firehose-0"
    records = event["records"][key_a]
    oracle = RecordOracle(SNAPSHOT)
    a = base64.b64decode(records[offset_a]["value"])
    b = twin(a)  # same series and event time as A, other fields
    records[offset_b]["value"] = b64(b)
    values = event_values(event)
    assert_distinct_identities(values, oracle, "the records of the batch (A and its twin B)")
    full = expected_lines(event, SNAPSHOT)
    assert full.result.identity_collisions == full.result.resends == 0
    # The point times come from the records: A's and B's lines are each record's own, at distinct times
    # within the microsecond of their common event time.
    line_a, line_b = full.lines[2 * BATCH_SIZE - 1], full.lines[2 * BATCH_SIZE]
    assert (line_a, line_b) == (oracle.line(a), oracle.line(b))
    time_a, time_b = int(line_a.rsplit(" ", 1)[1]), int(line_b.rsplit(" ", 1)[1])
    assert time_a != time_b and time_a // 1000 == time_b // 1000
    expected = reference_points(stack.influx, full.lines)
    pass_then_fail(stack.proxy, 2, 10_000)
    runs = deliver_partial(invoke, event, timeout=2.5, recover=lambda n, r: stack.proxy.clear())
    assert len(runs) == 2
    again = runs[1][0]["records"][key_b]
    assert again[0]["offset"] <= offset_b < offset_a + len(again)  # B was redelivered, A committed
    assert offset_a < again[0]["offset"]
    got = stack.points()
    assert count_points(got) == count_points(expected) == POINTS
    assert got == expected
    assert_each_record_once(stored_points(stack.influx, stack.db), values, oracle)


def test_a_record_that_cannot_be_encoded_is_quarantined_not_a_poison_pill(stack, invoke):
    """Regression: a lone surrogate in source_instance used to make every write of the batch raise
    UnicodeEncodeError out of the handler (the partition blocked for good)."""
    _, event = standard(12)
    raw = (
        b'{"origin":"rep","eventType":5,"timestamp":1,"logMessage":{"message":"aGk=","message_type":1,'
        b'"timestamp":1537510364000000001,"app_id":"%s","source_type":"APP/PROC/WEB",'
        b'"source_instance":"\\ud800"}}' % GUIDS[0].encode()
    )
    [offset] = append_raw(event, "cf-firehose-0", [b64(raw)])
    summary = deliver(invoke, event, timeout=10, tries=1).summary
    assert summary["quarantined_by_reason"] == {"not_json": 1} and summary["written"] == 8
    [record] = quarantined_records(stack.quarantine())
    assert (record["offset"], record["reason"]) == (offset, "not_json")
    assert stack.points() == stack.expected(event)


# ------------------------------------------------------------------------------ Cloud Controller


@pytest.fixture
def fake_cc() -> Iterator[FakeCloudController]:
    with FakeCloudController(Foundation.generate(orgs=1, spaces_per_org=2, apps_per_space=3, seed=3)) as cc:
        yield cc


@dataclass
class CCStack:
    stack: Stack
    cc: FakeCloudController
    known: dict[str, AppInfo]
    new: list[str]

    def batch(self, guids: list[str], count: int, first_offset: int = 0, start_ns: int = 0):
        generated = make_values(
            count, guids, kinds=("http", "log", "container"), start_ns=start_ns or 1_537_510_364_000_000_000
        )
        return generated, build_kafka_event(generated.values, first_offset=first_offset)

    def expected(self, event: dict[str, Any], apps: list[str]) -> dict[str, list[dict[str, Any]]]:
        infos = self.cc.foundation.app_infos()
        return self.stack.expected(event, snapshot_of({g: infos[g] for g in apps}))


@pytest.fixture
def cc_stack(stack, fake_cc) -> CCStack:
    infos = fake_cc.foundation.app_infos()
    guids = list(infos)
    known = {g: infos[g] for g in guids[:3]}
    stack.put_snapshot(snapshot_of(known))
    stack.setenv(
        INFLUX_URL=stack.influx.url,
        CF_API_URL=fake_cc.url,
        CF_CLIENT_ID="refinery",
        CF_CLIENT_SECRET="refinery-secret",
        CF_TIMEOUT="1s",
        LIVE_LOOKUP_BUDGET="1s",
    )
    return CCStack(stack, fake_cc, known, guids[3:])


def merged(*parts: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Expected points of several batches, in the order InfluxDB1Server.points() returns them."""
    return {
        m: sorted(
            (p for part in parts for p in part[m]), key=lambda p: (p["time"], sorted(p["tags"].items()))
        )
        for m in parts[0]
    }


def per_app(generated: Generated) -> Counter[str]:
    return Counter(g for g, k in zip(generated.guids, generated.kinds, strict=True) if k in POINT_KINDS)


def test_cc_down_at_start_quarantines_new_apps_and_replay_brings_them_in(cc_stack, invoke):
    s, cc = cc_stack.stack, cc_stack.cc
    guids = [*cc_stack.known, *cc_stack.new]
    generated, event = cc_stack.batch(guids, 120)
    counts = per_app(generated)
    cc.down()
    delivery = deliver(invoke, event, timeout=10, tries=1)  # the batch never fails for metadata
    summary = delivery.summary
    first_new = next(g for g in generated.guids if g in cc_stack.new)
    assert summary["quarantined_by_reason"] == {
        "metadata_lookup_failed": counts[first_new],
        "metadata_lookup_deferred": sum(counts[g] for g in cc_stack.new) - counts[first_new],
    }
    assert summary["metadata"]["live_lookups"] == 1 and summary["metadata"]["live_failures"] == 1
    assert delivery.attempts[0].seconds < 2.5  # bounded by LIVE_LOOKUP_BUDGET=1s
    assert s.points() == cc_stack.expected(event, list(cc_stack.known))

    cc.up()
    expected_all = cc_stack.expected(event, guids)
    for _ in range(2):
        report = replay(f"s3://{s.bucket}/quarantine/")
        assert report.written == sum(counts[g] for g in cc_stack.new) and not report.still_refused
        assert s.points() == expected_all


def test_cc_down_mid_run_keeps_serving_what_it_knows(cc_stack, invoke):
    s, cc = cc_stack.stack, cc_stack.cc
    a, b = cc_stack.new[0], cc_stack.new[1]
    known = list(cc_stack.known)
    _, event1 = cc_stack.batch([*known, a], 24)
    first = deliver(invoke, event1, timeout=10, tries=1)
    assert first.summary["metadata"]["live"] == 1 and first.summary["quarantined"] == 0
    cc.down()
    gen2, event2 = cc_stack.batch([a, *known, b], 40, first_offset=24, start_ns=1_537_510_365_000_000_000)
    second = deliver(invoke, event2, timeout=10, tries=1)
    assert second.summary["quarantined_by_reason"] == {"metadata_lookup_failed": per_app(gen2)[b]}
    # `a` came from the warm cache (looked up before the outage); known apps from the snapshot
    assert s.points() == merged(
        cc_stack.expected(event1, [*known, a]), cc_stack.expected(event2, [*known, a])
    )


def test_cc_429_is_waited_for_within_the_budget_and_given_up_beyond_it(cc_stack, invoke):
    s, cc = cc_stack.stack, cc_stack.cc
    s.setenv(LIVE_LOOKUP_BUDGET="3s")
    a = cc_stack.new[0]
    generated, event = cc_stack.batch([*cc_stack.known, a], 24)
    cc.rate_limit(100, retry_after=30)  # longer than the lookup budget: give up at once
    delivery = deliver(invoke, event, timeout=10, tries=1)
    assert delivery.summary["quarantined_by_reason"] == {"metadata_lookup_failed": per_app(generated)[a]}
    assert delivery.attempts[0].seconds < 1.0
    cc.clear_faults()
    enricher.reset_runtime()  # a new container (the warm one pauses live lookups for a minute)
    cc.rate_limit(1, retry_after=1)
    delivery = deliver(invoke, event, timeout=10, tries=1)
    assert delivery.summary["quarantined"] == 0 and delivery.summary["metadata"]["live"] == 1
    assert delivery.attempts[0].seconds >= 1.0  # Retry-After honoured
    assert s.points() == cc_stack.expected(event, [*cc_stack.known, a])


def test_cc_expired_token_is_renewed_once_and_revoked_credentials_quarantine(cc_stack, invoke):
    s, cc = cc_stack.stack, cc_stack.cc
    a, b, c = cc_stack.new
    known = list(cc_stack.known)
    _, event1 = cc_stack.batch([*known, a], 12)
    tiers1 = deliver(invoke, event1, timeout=10, tries=1).summary["metadata"]
    assert tiers1["live"] == 1 and cc.token_requests == 1
    cc.expire_all_tokens()
    _, event2 = cc_stack.batch([b], 6, first_offset=12, start_ns=1_537_510_365_000_000_000)
    summary = deliver(invoke, event2, timeout=10, tries=1).summary
    # (the summary's metadata tiers count since the container started)
    assert summary["metadata"]["live"] == 1  # counters are per invocation and summary["quarantined"] == 0
    assert cc.token_requests == 2 and cc.count(f"/v3/apps/{b}") == 2  # 401, then with a new token
    cc.expire_all_tokens()
    cc.clients = {"refinery": "rotated"}  # and the client secret no longer works
    gen3, event3 = cc_stack.batch([c], 6, first_offset=18, start_ns=1_537_510_366_000_000_000)
    summary = deliver(invoke, event3, timeout=10, tries=1).summary
    assert summary["quarantined_by_reason"] == {"metadata_lookup_failed": per_app(gen3)[c]}
    assert cc.token_requests == 3
    assert s.points() == merged(cc_stack.expected(event1, [*known, a]), cc_stack.expected(event2, [b]))


def test_cc_slow_lookups_are_cut_at_the_budget(cc_stack, invoke):
    s, cc = cc_stack.stack, cc_stack.cc
    generated, event = cc_stack.batch([*cc_stack.known, *cc_stack.new], 36)
    counts = per_app(generated)
    cc.latency(2.5)
    delivery = deliver(invoke, event, timeout=10, tries=1)
    first_new = next(g for g in generated.guids if g in cc_stack.new)
    assert delivery.summary["quarantined_by_reason"] == {
        "metadata_lookup_failed": counts[first_new],
        "metadata_lookup_deferred": sum(counts[g] for g in cc_stack.new) - counts[first_new],
    }
    assert delivery.attempts[0].seconds < 2.0  # LIVE_LOOKUP_BUDGET=1s, not the 2.5 s latency
    assert s.points() == cc_stack.expected(event, list(cc_stack.known))


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("503", None),
        ("429", None),
        ("down", CloudControllerUnavailable),
        ("slow", CloudControllerUnavailable),
        ("bad_credentials", CloudControllerAuthError),
    ],
)
def test_refresh_under_cc_faults_retries_or_keeps_the_old_snapshot(cc_stack, fault, error):
    s, cc = cc_stack.stack, cc_stack.cc
    before = s.s3.get_object(Bucket=s.bucket, Key=KEY)["Body"].read()
    if fault == "503":
        cc.fail_next(2, status=503)
    elif fault == "429":
        cc.rate_limit(1, retry_after=1)
    elif fault == "down":
        cc.down()
    elif fault == "slow":
        cc.latency(3)
    else:
        cc.clients = {"refinery": "rotated"}
    started = time.monotonic()
    if error is None:
        summary = metadata_refresh.handler({}, LocalContext(timeout_seconds=8))
        assert summary["apps"] == 6 and summary["replaced"] is True
        after = decode_snapshot(s.s3.get_object(Bucket=s.bucket, Key=KEY)["Body"].read())
        assert dict(after.apps) == cc.foundation.app_infos()
        if fault == "429":
            assert time.monotonic() - started >= 1.0
        else:
            assert cc.count("/v3/apps") == 3  # two 503 answers, then the page
    else:
        with pytest.raises(error):
            metadata_refresh.handler({}, LocalContext(timeout_seconds=6.5))  # 1.5 s after the 5 s reserve
        assert time.monotonic() - started < 3.0
        assert s.s3.get_object(Bucket=s.bucket, Key=KEY)["Body"].read() == before


# ------------------------------------------------------------------------------------- snapshot


def bit_flipped(snapshot: bytes) -> bytes:
    """A snapshot with one byte of its deflate stream flipped (the gzip header stays valid)."""
    data = bytearray(snapshot)
    data[12] ^= 0xFF
    return bytes(data)


def deeply_nested() -> bytes:
    return gzip.compress(b'{"schema_version":1,"apps":' + b"[" * 5_000 + b"]" * 5_000 + b"}", mtime=0)


SNAPSHOT_BUG = (  # found by this suite; failed on commit 0a46ca6
    "metadata/snapshot.py decode_snapshot catches only OSError/EOFError/BadGzipFile from "
    "gzip.decompress: a corrupt deflate stream (valid gzip header) raises zlib.error, which "
    "MetadataStore.refresh_if_due (metadata/store.py, 'never raises') does not catch either (only "
    "SnapshotUnavailable/SnapshotError), so the handler raises on every invocation instead of keeping the "
    "snapshot it has or quarantining records as metadata_unavailable."
)


@pytest.mark.parametrize(
    "state",
    [
        "missing",
        "corrupt",
        "truncated",
        "bit_flipped",  # regression: see SNAPSHOT_BUG
        "deeply_nested",
    ],
)
def test_no_usable_snapshot_quarantines_then_replay_writes_exactly_once(stack, invoke, state):
    if state == "missing":
        stack.s3.delete_object(Bucket=stack.bucket, Key=KEY)
    elif state == "corrupt":
        stack.put_snapshot(b"this is not a snapshot")
    elif state == "truncated":
        stack.put_snapshot(SNAPSHOT[: len(SNAPSHOT) // 2])
    elif state == "bit_flipped":
        stack.put_snapshot(bit_flipped(SNAPSHOT))
    else:
        stack.put_snapshot(deeply_nested())
    _, event = standard(120)
    result = invoke(event, timeout=10)  # the first delivery must succeed
    summary = result["summary"]
    assert accounted(summary) and not result["batchItemFailures"]
    assert summary["quarantined_by_reason"] == {"metadata_unavailable": 80}
    assert summary["dropped_by_reason"] == {"value_metric": 20, "counter_event": 20}
    assert summary["snapshot_failures"] == 1 and summary["snapshot_error"]
    assert count_points(stack.points()) == 0
    objects = stack.quarantine()
    assert len(objects) == 1 and len(quarantined_records(objects)) == 80

    stack.put_snapshot()
    expected = stack.expected(event)
    for _ in range(2):  # replaying twice writes nothing twice
        report = replay(f"s3://{stack.bucket}/quarantine/")
        assert (report.objects, report.records, report.written) == (1, 80, 80)
        assert not report.still_refused and not report.quarantine_objects
        assert stack.points() == expected
    # the warm container picks the snapshot up too
    time.sleep(0.15)
    _, later = standard(12, start_ns=1_537_510_366_000_000_000)
    for batch in later["records"].values():
        for record in batch:
            record["offset"] += 1000
    assert deliver(invoke, later, timeout=10, tries=1).summary["written"] == 8


def test_records_of_an_app_with_a_malformed_snapshot_entry_are_not_dropped(stack, invoke):
    """Regression, found by this suite (failed on commit 0a46ca6): (lazy snapshot, metadata/store.py
    MetadataStore._resolve + snapshot.py LazyApps): a snapshot entry that is not valid (here 'name': 5)
    now raises SnapshotError only when the app is read; _resolve counts a failure and treats the app as
    absent, so with no live lookup its records are DROPPED as unknown_app (final, not replayable)
    although the app exists; before, the whole snapshot was refused (records quarantined as
    metadata_unavailable, or the previous snapshot kept)."""
    doc = orjson.loads(gzip.decompress(SNAPSHOT))  # schema 2: the apps' names are one column
    doc["apps"]["name"][doc["apps"]["guid"].index(GUIDS[0])] = 5
    stack.put_snapshot(gzip.compress(orjson.dumps(doc)))
    generated, event = standard(60)
    victims = per_app(generated)[GUIDS[0]]
    summary = deliver(invoke, event, timeout=10, tries=1).summary
    assert summary["written"] == 40 - victims
    assert summary["dropped_by_reason"] == {"value_metric": 10, "counter_event": 10}, summary
    assert summary["quarantined"] == victims


def test_a_warm_container_keeps_its_snapshot_when_the_new_one_is_corrupt(stack, invoke):
    """Regression, found by this suite (failed on commit 0a46ca6): metadata/snapshot.py decode_snapshot
    catches only OSError/EOFError/BadGzipFile from gzip.decompress: a corrupt deflate stream (valid gzip
    header) raises zlib.error, which MetadataStore.refresh_if_due (metadata/store.py, 'never raises')
    does not catch either (only SnapshotUnavailable/SnapshotError), so the handler raises on every
    invocation instead of keeping the snapshot it has or quarantining records as metadata_unavailable."""
    _, first = standard(12)
    assert deliver(invoke, first, timeout=10, tries=1).summary["written"] == 8
    stack.put_snapshot(bit_flipped(SNAPSHOT))
    time.sleep(0.15)  # SNAPSHOT_CHECK_INTERVAL=100ms
    _, second = standard(12, start_ns=1_537_510_366_000_000_000)
    result = invoke(second, timeout=10)
    assert result["summary"]["written"] == 8 and result["summary"]["snapshot_failures"] == 1


def test_the_refresh_replaces_a_corrupt_snapshot(cc_stack):
    """Regression, found by this suite (failed on commit 0a46ca6): metadata/refresh.py _read_previous
    catches only SnapshotError from decode_snapshot: a corrupt deflate stream in the published snapshot
    raises zlib.error, so the refresh function fails on every run and can never replace the corrupt
    snapshot it is meant to repair."""
    s, cc = cc_stack.stack, cc_stack.cc
    s.put_snapshot(bit_flipped(SNAPSHOT))
    summary = metadata_refresh.handler({}, LocalContext(timeout_seconds=8))
    assert summary["apps"] == 6
    after = decode_snapshot(s.s3.get_object(Bucket=s.bucket, Key=KEY)["Body"].read())
    assert dict(after.apps) == cc.foundation.app_infos()


def test_replaying_twice_does_not_multiply_still_refused_records(stack, invoke):
    """Regression, found by this suite (failed on commit 0a46ca6): replay.py replay(): records still
    refused are re-quarantined under <QUARANTINE_PREFIX>replay/, which is inside the prefix being
    replayed (s3://bucket/quarantine/); the next replay reads them again next to the originals, so the
    replay object is rewritten with one more copy of each such record per run (and ReplayReport.records
    / still_refused grow accordingly)."""
    stack.s3.delete_object(Bucket=stack.bucket, Key=KEY)
    _, event = standard(12)
    append_raw(event, "cf-firehose-0", [b64(b"{oops")])
    deliver(invoke, event, timeout=10, tries=1)
    stack.put_snapshot()
    reports = [replay(f"s3://{stack.bucket}/quarantine/") for _ in range(3)]
    assert [r.written for r in reports] == [8, 8, 8]
    assert stack.points() == stack.expected(event)  # the points themselves are not duplicated
    replayed = {k: v for k, v in stack.quarantine().items() if "/replay/" in k}
    records = quarantined_records(replayed)
    assert [(r["offset"], r["reason"]) for r in records] == [(6, "not_json")], [
        (r.records, dict(r.still_refused)) for r in reports
    ]
