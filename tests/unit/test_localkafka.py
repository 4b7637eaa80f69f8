"""The local Kafka tooling without a broker: event shape, acknowledgements, synthetic traffic, commands.

The mapping loop and the producer against a real broker: tests/integration/test_localkafka_mapping.py
and tests/integration/test_kafka_e2e.py.
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

import orjson
import pytest
from kafka.consumer.fetcher import ConsumerRecord

from refinery.kafka_event import describe
from refinery.metadata.store import FileSnapshotSource, MetadataStore
from refinery.pipeline import process_batch
from refinery.quarantine import Quarantine
from refinery.sinks import Deadline
from refinery_tools import cli
from refinery_tools.dev.samples import sample_envelopes, sample_snapshot
from refinery_tools.events import build_kafka_event
from refinery_tools.localkafka.acks import backoff, outcome_of
from refinery_tools.localkafka.connect import describe_error, parse_bootstrap
from refinery_tools.localkafka.event import (
    LOCAL_CLUSTER_ARN,
    MAX_EVENT_BYTES,
    Batch,
    lambda_record,
    record_size,
)
from refinery_tools.localkafka.producer import file_source, kind_of, sample_source
from refinery_tools.localkafka.stats import ConsumeStats
from refinery_tools.localkafka.synthetic import BASE_NS, SyntheticTraffic
from support.collecting_sink import CollectingSink

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tools" / "refinery_tools" / "data" / "nozzle-envelopes.jsonl"


def record(
    value: bytes | None,
    *,
    topic: str = "cf-firehose",
    partition: int = 0,
    offset: int = 0,
    key: bytes | None = None,
    headers: list[tuple[str, bytes | None]] | None = None,
    timestamp_type: int = 0,
) -> ConsumerRecord:
    return ConsumerRecord(
        topic,
        partition,
        -1,
        offset,
        1795284300563 + offset,
        timestamp_type,
        key,
        value,
        headers or [],
        None,
        -1 if key is None else len(key),
        -1 if value is None else len(value),
        -1,
    )


def enrich(tmp_path: Path, event: dict, snapshot: bytes) -> tuple[list[str], dict]:
    """The real pipeline on ``event`` (no server: the sink keeps the lines)."""
    path = tmp_path / "snapshot.json.gz"
    path.write_bytes(snapshot)
    sink = CollectingSink()
    result = process_batch(
        event,
        MetadataStore(FileSnapshotSource(str(path))),
        sink,
        Quarantine(None, "quarantine/", directory=str(tmp_path / "q")),
        Deadline(lambda: 60_000, reserve=1.0),
    )
    return sink.lines, result.summary()


# ----------------------------------------------------------------------------------------- event shape


def test_lambda_record_has_the_shape_lambda_sends() -> None:
    rec = record(b'{"a":1}', partition=2, offset=15, key=b"k", headers=[("headerKey", b"headerValue")])
    assert lambda_record(rec) == {
        "topic": "cf-firehose",
        "partition": 2,
        "offset": 15,
        "timestamp": 1795284300578,
        "timestampType": "CREATE_TIME",
        "key": "aw==",
        "value": "eyJhIjoxfQ==",
        "headers": [{"headerKey": [104, 101, 97, 100, 101, 114, 86, 97, 108, 117, 101]}],
    }
    assert list(lambda_record(rec)) == [
        "topic",
        "partition",
        "offset",
        "timestamp",
        "timestampType",
        "key",
        "value",
        "headers",
    ]


def test_lambda_record_leaves_out_a_missing_key_and_value_and_names_the_timestamp_type() -> None:
    rec = record(None, timestamp_type=1, headers=[("empty", None)])
    out = lambda_record(rec)
    assert "key" not in out and "value" not in out
    assert out["timestampType"] == "LOG_APPEND_TIME"
    assert out["headers"] == [{"empty": []}]


@pytest.mark.parametrize(
    ("source", "arn"), [("aws:kafka", LOCAL_CLUSTER_ARN), ("aws:SelfManagedKafka", None)]
)
def test_batch_event_groups_records_by_topic_partition(source: str, arn: str | None) -> None:
    batch = Batch()
    for offset in (7, 8):
        batch.add(record(b"x", partition=1, offset=offset))
    batch.add(record(b"y", partition=0, offset=3))
    batch.add(record(b"z", topic="other", partition=0, offset=0))
    event = batch.to_event(source, "127.0.0.1:9092")
    assert event["eventSource"] == source
    assert event.get("eventSourceArn") == arn
    assert event["bootstrapServers"] == "127.0.0.1:9092"
    assert list(event["records"]) == ["cf-firehose-0", "cf-firehose-1", "other-0"]
    assert [r["offset"] for r in event["records"]["cf-firehose-1"]] == [7, 8]
    info = describe(event)  # the handler's own validation of the shape
    assert info.source == source and info.bootstrap_servers == ["127.0.0.1:9092"]
    assert batch.first_offsets() == {("cf-firehose", 1): 7, ("cf-firehose", 0): 3, ("other", 0): 0}
    assert batch.next_offsets() == {("cf-firehose", 1): 9, ("cf-firehose", 0): 4, ("other", 0): 1}
    assert batch.without({("cf-firehose", 1)}).count == 2


def test_record_size_bounds_the_json_size_of_the_record() -> None:
    for value in (b"", b"a", b"ab" * 1000, bytes(range(256)) * 50):
        rec = record(value, key=b"key", headers=[("h", b"\xff" * 10)], offset=123456789)
        assert record_size(rec) >= len(json.dumps(lambda_record(rec), separators=(",", ": ")))
    assert MAX_EVENT_BYTES == 6 * 1024 * 1024


def test_an_event_built_from_consumer_records_enriches_like_the_bundled_event(tmp_path: Path) -> None:
    batch = Batch()
    for i, value in enumerate(sample_envelopes()):
        batch.add(record(value, partition=i % 2, offset=i // 2))
    mine, summary = enrich(tmp_path, batch.to_event("aws:kafka", "127.0.0.1:9092"), sample_snapshot())
    bundled, _ = enrich(tmp_path, build_kafka_event(sample_envelopes(), partitions=2), sample_snapshot())
    assert sorted(mine) == sorted(bundled) and len(mine) == 4
    assert summary["partitions"] == {
        "cf-firehose-0": {"first_offset": 0, "last_offset": 2, "records": 3},
        "cf-firehose-1": {"first_offset": 0, "last_offset": 2, "records": 3},
    }


# ------------------------------------------------------------------------------------- acknowledgements

FIRST = {("t", 0): 10, ("t", 1): 0}
NEXT = {("t", 0): 20, ("t", 1): 5}


def fails(*items: tuple[str, object]) -> dict:
    return {"batchItemFailures": [{"itemIdentifier": {"partition": p, "offset": o}} for p, o in items]}


@pytest.mark.parametrize("result", [None, {}, {"batchItemFailures": []}, {"summary": {}}, "ok"])
def test_a_plain_answer_commits_every_partition_whole(result: object) -> None:
    outcome = outcome_of(FIRST, NEXT, result)
    assert not outcome.failed and not outcome.partial
    assert outcome.commit == NEXT and outcome.redeliver == {}


def test_partial_failures_commit_up_to_the_failed_offset_and_redeliver_from_it() -> None:
    outcome = outcome_of(FIRST, NEXT, fails(("t-0", 14)))
    assert outcome.partial and not outcome.failed
    assert outcome.commit == {("t", 0): 14, ("t", 1): 5}
    assert outcome.redeliver == {("t", 0): 14}
    assert "t-0 from 14" in outcome.reason


def test_a_failure_at_the_first_offset_commits_nothing_for_that_partition() -> None:
    outcome = outcome_of(FIRST, NEXT, fails(("t-0", 10), ("t-1", 3), ("t-1", 2)))
    assert outcome.commit == {("t", 1): 2}
    assert outcome.redeliver == {("t", 0): 10, ("t", 1): 2}


@pytest.mark.parametrize(
    ("result", "words"),
    [
        (fails(("t-7", 12)), "names no partition"),
        (fails(("t-0", 20)), "outside the batch (10..19)"),
        (fails(("t-0", 9)), "outside the batch"),
        (fails(("t-0", "12")), "outside the batch"),
        (fails(("t-0", None)), "outside the batch"),
        ({"batchItemFailures": "t-0"}, "not a list"),
        ({"batchItemFailures": [{"partition": "t-0", "offset": 12}]}, "names no partition"),
    ],
)
def test_an_invalid_partial_response_fails_the_whole_batch(result: dict, words: str) -> None:
    outcome = outcome_of(FIRST, NEXT, result)
    assert outcome.failed and outcome.commit == {} and outcome.redeliver == {}
    assert words in outcome.reason


def test_backoff_doubles_up_to_the_maximum() -> None:
    assert [backoff(n, 0.5, 5.0) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff(10_000, 1.0, 30.0) == 30.0


# ----------------------------------------------------------------------------------- synthetic traffic


def test_synthetic_traffic_is_deterministic_and_a_shorter_run_is_a_prefix() -> None:
    long = list(SyntheticTraffic(2, 2, 3, seed=5).envelopes(1500))
    again = list(SyntheticTraffic(2, 2, 3, seed=5).envelopes(1500))
    short = list(SyntheticTraffic(2, 2, 3, seed=5).envelopes(40))
    other = list(SyntheticTraffic(2, 2, 3, seed=6).envelopes(40))
    assert long == again and long[:40] == short and short != other
    kinds = {kind for kind, _ in long}
    assert kinds == {"http", "app_log", "rtr_log", "container", "value_metric", "counter_event"}


def point_time(doc: dict) -> int | None:
    if "httpStartStop" in doc:
        return doc["httpStartStop"]["startTimestamp"]
    if "logMessage" in doc:
        return doc["logMessage"]["timestamp"]
    if "containerMetric" in doc:
        return doc["timestamp"]
    return None


def test_synthetic_envelopes_are_envelopes_of_the_generated_apps_with_increasing_times() -> None:
    traffic = SyntheticTraffic(1, 2, 2, seed=3)
    assert sorted(a.name for a in traffic.apps.values()) == [
        "app-0-0-0",
        "app-0-0-1",
        "app-0-1-0",
        "app-0-1-1",
    ]
    times = []
    for kind, value in traffic.envelopes(3000):
        doc = orjson.loads(value)
        assert kind_of(value) == {"app_log": "log", "rtr_log": "log"}.get(kind, kind)
        when = point_time(doc)
        if kind in ("value_metric", "counter_event"):
            assert when is None
            continue
        app = doc.get("containerMetric", {}).get("applicationId") or doc.get("logMessage", {}).get("app_id")
        assert app is None or app in traffic.apps
        times.append(when)
    assert times[0] >= BASE_NS
    assert all(a < b for a, b in itertools.pairwise(times))


def test_every_synthetic_record_is_one_distinct_point_however_the_stream_is_cut(tmp_path: Path) -> None:
    traffic = SyntheticTraffic(2, 2, 4, seed=9)
    pairs = list(traffic.envelopes(2000))
    values = [v for _, v in pairs]
    whole, summary = enrich(tmp_path, build_kafka_event(values, partitions=3), traffic.snapshot())
    expected = len(values) - sum(1 for k, _ in pairs if k in ("value_metric", "counter_event"))
    assert summary["points"] == summary["written"] == expected == len(set(whole))
    assert summary["identity_collisions"] == summary["resends"] == summary["quarantined"] == 0
    pieces: list[str] = []
    for start in range(0, len(values), 137):  # other batch boundaries, one partition
        lines, _ = enrich(tmp_path, build_kafka_event(values[start : start + 137]), traffic.snapshot())
        pieces.extend(lines)
    assert sorted(pieces) == sorted(whole)


def test_synthetic_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="--orgs, --spaces and --apps"):
        SyntheticTraffic(0, 1, 1)


# ------------------------------------------------------------------------------------------- producer


def test_kind_of_names_the_event_type() -> None:
    assert [kind_of(v) for v in sample_envelopes()] == [
        "http",
        "log",
        "log",
        "container",
        "value_metric",
        "counter_event",
    ]
    assert kind_of(b"not json") == "not_json"
    assert kind_of(b"[1]") == kind_of(b'{"eventType": 42}') == "other"


def test_sample_and_file_sources_send_each_line_verbatim(tmp_path: Path) -> None:
    assert [v for _, v in sample_source()] == sample_envelopes()
    assert len(list(sample_source(14))) == 14
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"eventType":4}\r\n\nnot json\n')
    assert list(file_source(str(path))) == [("http", b'{"eventType":4}'), ("not_json", b"not json")]
    assert len(list(file_source(str(path), 5))) == 5
    forever = file_source(str(path), forever=True)
    assert len([next(forever) for _ in range(100)]) == 100
    with pytest.raises(ValueError, match=r"--file .*missing.jsonl: cannot read it"):
        file_source(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no envelopes"):
        file_source(str(tmp_path / "empty.jsonl"))


def test_bootstrap_addresses_are_checked() -> None:
    assert parse_bootstrap("127.0.0.1:9092, b-1.example.com:9098") == [
        "127.0.0.1:9092",
        "b-1.example.com:9098",
    ]
    assert parse_bootstrap("[::1]:9092") == ["[::1]:9092"]
    for bad in ("127.0.0.1", "host:0", "host:99999", "", "a b:1"):
        with pytest.raises(ValueError, match="--bootstrap"):
            parse_bootstrap(bad)


def test_describe_error_does_not_repeat_the_error_name() -> None:
    from kafka.errors import KafkaTimeoutError

    assert (
        describe_error(KafkaTimeoutError("Unable to bootstrap")) == "KafkaTimeoutError: Unable to bootstrap"
    )
    assert describe_error(ValueError("x")) == "ValueError: x"


# ------------------------------------------------------------------------------------------- commands


def test_events_reproduces_the_bundled_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deep" / "msk.json"
    assert cli.main(["events", "--input", str(SAMPLES), "--output", str(out), "--partitions", "2"]) == 0
    assert out.read_text().rstrip("\n") == (ROOT / "events" / "msk.json").read_text().rstrip("\n")
    assert "6 record(s) in 2 partition(s)" in capsys.readouterr().err
    args = ["--source", "self-managed", "--first-offset", "1000", "--output", "-"]
    assert cli.main(["events", "--input", str(SAMPLES), *args]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed) == json.loads((ROOT / "events" / "self-managed-kafka.json").read_text())


def test_events_with_a_topic_and_partitions(tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    args = ["--topic", "firehose", "--partitions", "4", "--source", "msk"]
    assert cli.main(["events", "--input", str(SAMPLES), "--output", str(out), *args]) == 0
    event = json.loads(out.read_text())
    assert sorted(event["records"]) == ["firehose-0", "firehose-1", "firehose-2", "firehose-3"]
    values = [base64.b64decode(r["value"]) for p in sorted(event["records"]) for r in event["records"][p]]
    assert sorted(values) == sorted(sample_envelopes())


def test_events_names_a_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    assert cli.main(["events", "--input", str(missing), "--output", str(tmp_path / "e.json")]) == 1
    assert f"--input {missing}: cannot read it" in capsys.readouterr().err
    (tmp_path / "blank.jsonl").write_text("\n")
    assert cli.main(["events", "--input", str(tmp_path / "blank.jsonl"), "--output", "-"]) == 1
    assert "no envelopes" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (
            ["consume", "--bootstrap", "h:1", "--topic", "t", "--group", "g", "--batch-size", "0"],
            "--batch-size",
        ),
        (
            ["consume", "--bootstrap", "h:1", "--topic", "t", "--group", "g", "--batching-window", "301"],
            "300",
        ),
        (["consume", "--bootstrap", "nohost", "--topic", "t", "--group", "g"], "--bootstrap entry 'nohost'"),
        (["consume", "--bootstrap", "h:1", "--topic", "t"], "--group"),
        (["produce", "--bootstrap", "h:1", "--topic", "t"], "--samples --file --synthetic"),
        (["produce", "--bootstrap", "h:1", "--topic", "t", "--synthetic", "--rate", "-1"], "--rate"),
        (["produce", "--bootstrap", "h:1", "--topic", "t", "--samples", "--synthetic"], "not allowed"),
    ],
)
def test_bad_options_are_named(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_produce_write_snapshot_needs_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(sample_envelopes()[0] + b"\n")
    argv = ["produce", "--bootstrap", "127.0.0.1:1", "--topic", "t", "--file", str(path)]
    assert cli.main([*argv, "--write-snapshot", str(tmp_path / "s.json.gz")]) == 1
    assert "--write-snapshot needs --samples or --synthetic" in capsys.readouterr().err


def test_summary_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    stats = ConsumeStats()
    stats.mark_active()
    stats.acknowledged(
        10, {"written": 8, "points": 8, "dropped_by_reason": {"value_metric": 2}, "quarantined_by_reason": {}}
    )
    stats.acknowledged(5, {"written": 4, "points": 4, "quarantined_by_reason": {"not_json": 1}})
    stats.mark_done()
    stats.retries, stats.failed_invocations, stats.last_error = 1, 1, "FlushError: down"
    stats.committed = {"t-0": 15}
    stats.stop_reason = "done"
    stats.print_summary(sys.stderr)
    table = capsys.readouterr().err
    for words in (
        "records",
        "15",
        "written",
        "12",
        "value_metric 2",
        "not_json 1",
        "FlushError: down",
        "t-0 15",
    ):
        assert words in table
    data = stats.as_dict()
    assert (data["records"], data["written"], data["dropped"], data["quarantined"], data["batches"]) == (
        15,
        12,
        2,
        1,
        2,
    )
    assert "records (" in stats.progress_line() and "retries 1" in stats.progress_line()


def test_sink_urls_are_shown_without_credentials() -> None:
    from refinery_tools.localkafka.commands import _safe_url

    assert _safe_url("http://user:secret@[::1]:8086/x?db=cf") == "http://[::1]:8086/x?db=cf"
    assert _safe_url("https://influx.example.com") == "https://influx.example.com"


def test_the_summary_says_where_quarantined_records_went(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    stats = ConsumeStats(quarantine_root="refinery-quarantine/quarantine/")
    stats.mark_active()
    for n, where in ((1, "refinery-quarantine/quarantine/2018/09/21/t-0-0-a.jsonl.gz"), (2, None)):
        stats.acknowledged(
            5, {"written": 4, "quarantined_by_reason": {"not_json": n}, "quarantine_object": where}
        )
    stats.committed = {"t-0": 10}
    stats.print_summary(sys.stderr)
    table = capsys.readouterr().err
    assert (
        f"  {'quarantine':<13} {'1':>12}  object(s) under refinery-quarantine/quarantine/; latest"
        " refinery-quarantine/quarantine/2018/09/21/t-0-0-a.jsonl.gz; replay them with:"
        " refinery replay refinery-quarantine/quarantine/"
    ) in table
    assert f"  {'committed':<13} {'':>12}  t-0 10" in table
    assert stats.as_dict()["quarantine_objects"] == [
        "refinery-quarantine/quarantine/2018/09/21/t-0-0-a.jsonl.gz"
    ]

    stats.dry_run = True
    stats.print_summary(sys.stderr)
    table = capsys.readouterr().err
    assert "dry run: nothing written (the records were printed on stderr)" in table
    assert "nothing (dry run); would have committed t-0 10" in table
