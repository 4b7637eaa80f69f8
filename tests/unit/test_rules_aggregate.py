"""Recording rules through the pipeline: exact aggregates, accounting, and an identity that retries,
bisected batches and concurrent partitions cannot break (servers: tests/integration)."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refinery.devtools.collecting_sink import CollectingSink
from refinery.devtools.envelopes import http_envelope, log_envelope
from refinery.devtools.events import build_kafka_event
from refinery.devtools.worked_example import (
    APPS,
    MS,
    RULES,
    T0,
    WORKER_EU,
    S,
    worked_example,
)
from refinery.filters import PointFilter
from refinery.lineparse import parse_line, series_end
from refinery.metadata.snapshot import encode_snapshot
from refinery.metadata.store import FileSnapshotSource, MetadataStore
from refinery.pipeline import process_batch
from refinery.point_stage import PointStage
from refinery.quarantine import Quarantine, decode_records
from refinery.rules.aggregate import aggregate_timestamp
from refinery.rules.loader import RuleBook
from refinery.sinks import Deadline, FlushError, Sink, WriteReport
from refinery.sinks.base import Misconfigured, Refused

DEADLINE = Deadline(lambda: 60_000, reserve=1.0)


class RefusingSink(Sink):
    """The base sink's chunking and splitting, refusing (400) any request holding a matching line."""

    def __init__(self, refuse: str, batch_size: int = 5000) -> None:
        super().__init__(batch_size=batch_size)
        self.refuse = re.compile(refuse)
        self.written: list[str] = []

    def post(self, body: bytes, timeout: float) -> None:
        lines = body.decode().splitlines()
        if any(self.refuse.search(line) for line in lines):
            raise Refused("answered 400: refused", 400)
        self.written.extend(lines)


class FailingSink(Sink):
    """Acknowledges the first ``ok`` chunks, then the server refuses the token."""

    def __init__(self, ok: int, batch_size: int) -> None:
        super().__init__(batch_size=batch_size)
        self.ok = ok

    def post(self, body: bytes, timeout: float) -> None:
        if self.ok <= 0:
            raise Misconfigured("answered 401", 401)
        self.ok -= 1


@pytest.fixture
def store(tmp_path) -> MetadataStore:
    path = tmp_path / "snapshot.json.gz"
    path.write_bytes(snapshot_bytes())
    return MetadataStore(FileSnapshotSource(str(path)))


def snapshot_bytes() -> bytes:
    return encode_snapshot(
        {a.guid: a for a in APPS}, "https://api.example.com", datetime(2023, 1, 1, tzinfo=UTC)
    )


def stage_for(tmp_path: Path, rules: str, point_filter: PointFilter | None = None) -> PointStage:
    path = tmp_path / "rules.yaml"
    path.write_text(rules)
    return PointStage(point_filter, RuleBook(FileSnapshotSource(str(path))))


def run(tmp_path, store, values, rules=RULES, sink=None, partitions=1, **kwargs):
    sink = sink if sink is not None else CollectingSink()
    quarantine = Quarantine(None, "quarantine/", directory=str(tmp_path / "q"))
    stage = kwargs.pop("stage", None) or stage_for(tmp_path, rules)
    event = kwargs.pop("event", None) or build_kafka_event(values, partitions=partitions)
    result = process_batch(event, store, sink, quarantine, DEADLINE, stage=stage, **kwargs)
    return result, sink


def test_the_worked_example_gives_three_series(tmp_path, store) -> None:
    result, sink = run(tmp_path, store, worked_example())
    aggregates = [line for line in sink.lines if line.startswith("bytes_batch_workers")]
    # First offsets: eu = 1 (record 2), ap = 3, us = 4 (one partition, offsets 0..5): in the timestamp.
    assert aggregates == [
        f"bytes_batch_workers,app=worker,org=eu,partition=cf-firehose-0,space=batch sum=120i {T0 + 1 * MS}",
        f"bytes_batch_workers,app=worker,org=ap,partition=cf-firehose-0,space=batch sum=30i {T0 + 3 * MS}",
        f"bytes_batch_workers,app=worker,org=us,partition=cf-firehose-0,space=batch sum=40i {T0 + 4 * MS}",
    ]
    assert len(sink.lines) == 6 + 3  # keep_raw: the six raw points are written too
    assert result.rules == {"aggregates": 3, "points_consumed": 4}
    assert (result.records_in, result.written, result.points) == (6, 6, 9) and result.balanced
    assert result.summary()["rules"] == {"aggregates": 3, "points_consumed": 4}


def test_keep_raw_false_drops_the_consumed_points_and_keeps_the_accounting(tmp_path, store) -> None:
    rules = RULES + "    keep_raw: false\n"
    result, sink = run(tmp_path, store, worked_example(), rules=rules)
    assert [line.split(",")[0] for line in sink.lines] == [
        "log",
        "http_request",  # the api app's request: not consumed, kept
        "bytes_batch_workers",
        "bytes_batch_workers",
        "bytes_batch_workers",
    ]
    assert "app=api" in sink.lines[1]
    # The four consumed records are written as part of the aggregates they went into.
    assert (result.records_in, result.written, result.points, sum(result.dropped.values())) == (6, 6, 5, 0)
    assert result.rules == {"aggregates": 3, "points_consumed": 4, "raw_points_dropped": 4}
    assert result.balanced


def test_count_min_max_and_value_types(tmp_path, store) -> None:
    rules = """
rules:
  - {name: n, source: http_request, keep: [org], aggregation: count, window: 60s}
  - {name: small, source: http_request, keep: [org], field: response_size, aggregation: min, window: 60s}
  - {name: slow, source: http_request, keep: [org], field: duration, aggregation: max, window: 60s}
  - {name: total, source: http_request, field: duration, aggregation: sum, window: 60s, output_field: s}
"""
    values = [
        http_envelope(WORKER_EU.guid, T0, size=5, duration_ns=2 * MS),
        http_envelope(WORKER_EU.guid, T0 + S, size=3, duration_ns=7 * MS),
        http_envelope(WORKER_EU.guid, T0 + 61 * S, size=9, duration_ns=1 * MS),  # the next window
    ]
    _, sink = run(tmp_path, store, values, rules=rules)
    got = sorted(line for line in sink.lines if not line.startswith("http_request"))
    next_window = T0 + 60 * S
    assert got == sorted(
        [
            f"n,org=eu,partition=cf-firehose-0 count=2i {T0}",
            f"n,org=eu,partition=cf-firehose-0 count=1i {next_window + 2 * MS}",
            f"small,org=eu,partition=cf-firehose-0 min=3i {T0}",
            f"small,org=eu,partition=cf-firehose-0 min=9i {next_window + 2 * MS}",
            f"slow,org=eu,partition=cf-firehose-0 max=0.007 {T0}",
            f"slow,org=eu,partition=cf-firehose-0 max=0.001 {next_window + 2 * MS}",
            f"total,partition=cf-firehose-0 s=0.009000000000000001 {T0}",
            f"total,partition=cf-firehose-0 s=0.001 {next_window + 2 * MS}",
        ]
    )


def test_the_timestamp_stays_in_the_window_and_carries_the_first_offset() -> None:
    window_ms = 60_000
    window = T0
    stamps = {aggregate_timestamp(window, window_ms, offset) for offset in range(0, 3_000_000, 7)}
    assert len(stamps) == len(range(0, 3_000_000, 7))  # one per first offset
    assert all(window <= s < window + window_ms * MS for s in stamps)
    assert aggregate_timestamp(window, window_ms, 12_345) // MS == window // MS + 12_345  # exact in ms
    assert aggregate_timestamp(window, window_ms, 60_000 + 5) == window + 5 * MS + 1


def test_aggregates_carry_the_extra_tags_and_see_filtered_points_removed(tmp_path, store) -> None:
    point_filter = PointFilter(
        exclude_orgs=re.compile("us"), extra_tags=(("foundation", "eu prod"), ("region", "x"))
    )
    stage = stage_for(tmp_path, RULES, point_filter)
    result, sink = run(tmp_path, store, worked_example(), stage=stage)
    aggregates = [line for line in sink.lines if line.startswith("bytes_batch_workers")]
    head = "bytes_batch_workers,app=worker,foundation=eu\\ prod"
    assert aggregates == [
        f"{head},org=eu,partition=cf-firehose-0,region=x,space=batch sum=120i {T0 + 1 * MS}",
        f"{head},org=ap,partition=cf-firehose-0,region=x,space=batch sum=30i {T0 + 3 * MS}",
    ]
    assert result.dropped == {"filtered": 1} and result.written == 5 and result.balanced


def test_a_refused_aggregate_quarantines_each_of_its_records_once(tmp_path, store) -> None:
    sink = RefusingSink(r"^bytes_batch_workers.*org=eu")
    result, _ = run(tmp_path, store, worked_example(), sink=sink, rules=RULES)
    assert result.quarantined == {"rejected_by_server": 2}  # records 2 and 6 (their raw points were written)
    assert result.written == 4 and result.balanced
    assert not any("org=eu" in line and line.startswith("bytes") for line in sink.written)
    records = decode_records(Path(result.quarantine_object).read_bytes())
    assert sorted(r["offset"] for r in records) == [1, 5]


def test_a_flush_failing_part_way_fails_the_whole_batch_when_it_holds_aggregates(tmp_path, store) -> None:
    with pytest.raises(FlushError):
        run(
            tmp_path,
            store,
            worked_example(),
            sink=FailingSink(ok=1, batch_size=2),
            partial_failures=True,
        )
    # Without rules the same failure is reported per partition (the existing behaviour).
    result, _ = run(
        tmp_path,
        store,
        worked_example(),
        rules="rules: []",
        sink=FailingSink(ok=1, batch_size=2),
        partial_failures=True,
    )
    assert result.batch_item_failures == [{"itemIdentifier": {"partition": "cf-firehose-0", "offset": 2}}]


# -- identity: any history of retried, bisected and resized batches sums to the truth ------------------

STREAM_RULES = """
rules:
  - {name: req, source: http_request, keep: [org], field: response_size, aggregation: sum, window: 10s}
  - {name: n, source: log, keep: [app], aggregation: count, window: 10s, keep_raw: false}
"""


def stream(seed: int, partitions: int, per_partition: int) -> dict[str, list[bytes]]:
    rng = random.Random(seed)
    out: dict[str, list[bytes]] = {}
    for p in range(partitions):
        values = []
        for i in range(per_partition):
            app = rng.choice(APPS)
            stamp = T0 + rng.randrange(0, 40) * S // 2 + i  # several windows, out of order
            if rng.random() < 0.5:
                values.append(http_envelope(app.guid, stamp, size=rng.randrange(1, 1000)))
            else:
                values.append(log_envelope(app.guid, stamp))
        out[f"cf-firehose-{p}"] = values
    return out


def event_of(batches: dict[str, tuple[int, list[bytes]]]) -> dict:
    """A Lambda event from, per partition, (first offset, values)."""
    import base64

    records = {
        key: [
            {
                "topic": "cf-firehose",
                "partition": int(key.rsplit("-", 1)[1]),
                "offset": first + i,
                "timestamp": 1,
                "value": base64.b64encode(v).decode(),
            }
            for i, v in enumerate(values)
        ]
        for key, (first, values) in batches.items()
        if values
    }
    return {"eventSource": "aws:kafka", "records": records}


class OverwritingStore(Sink):
    """InfluxDB's semantics: a point is identified by series and timestamp; a rewrite replaces it."""

    def __init__(self) -> None:
        super().__init__()
        self.points: dict[tuple[str, int], str] = {}
        self.fail_after: int | None = None  # acknowledge a random part, then fail
        self.rng = random.Random(0)

    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        order = list(lines)
        if self.fail_after is not None:
            self.rng.shuffle(order)  # worst case: any subset of the lines made it
            order = order[: self.fail_after]
        for line in order:
            self.points[(line[: series_end(line)], int(line.rsplit(" ", 1)[1]))] = line
        if self.fail_after is not None:
            raise FlushError("the server went away", 0)
        return WriteReport(lines=len(lines), chunks=1)


def totals(points: dict[tuple[str, int], str], window_s: int = 10) -> dict[tuple[str, str, int], float]:
    """Per measurement, group and window: the sum over the window's points (how one queries them)."""
    out: dict[tuple[str, str, int], float] = defaultdict(float)
    for line in points.values():
        point = parse_line(line)
        if point.measurement not in ("req", "n"):
            continue
        group = point.tags.get("org") or point.tags.get("app", "")
        window = point.timestamp - point.timestamp % (window_s * S)
        out[(point.measurement, group, window)] += next(iter(point.fields.values()))
    return dict(out)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    history=st.lists(
        st.tuples(st.integers(1, 12), st.booleans(), st.integers(0, 30)), min_size=1, max_size=30
    ),
)
def test_any_history_of_failed_and_resized_batches_gives_the_exact_totals(
    tmp_path_factory, seed: int, history: list[tuple[int, bool, int]]
) -> None:
    tmp_path = tmp_path_factory.mktemp("history")
    path = tmp_path / "snapshot.json.gz"
    path.write_bytes(snapshot_bytes())
    store = MetadataStore(FileSnapshotSource(str(path)))
    records = stream(seed, partitions=2, per_partition=25)
    quarantine = Quarantine(None, "q/", directory=str(tmp_path / "q"))
    stage = stage_for(tmp_path, STREAM_RULES)

    # The truth: everything in one batch, written once.
    truth_sink = OverwritingStore()
    everything = event_of({k: (0, v) for k, v in records.items()})
    process_batch(everything, store, truth_sink, quarantine, DEADLINE, stage=stage)
    truth = totals(truth_sink.points)
    assert truth

    # A history: batches start at the committed offset; a failed one may have written any part of
    # its lines, and its retry may be larger or smaller (bisected); a success commits.
    sink = OverwritingStore()
    committed = dict.fromkeys(records, 0)
    steps = iter(history)
    while any(committed[k] < len(v) for k, v in records.items()):
        size, fails, part = next(steps, (50, False, 0))
        batches = {k: (committed[k], v[committed[k] : committed[k] + size]) for k, v in records.items()}
        sink.fail_after = part if fails else None
        try:
            process_batch(event_of(batches), store, sink, quarantine, DEADLINE, stage=stage)
        except FlushError:
            continue
        for key, (first, values) in batches.items():
            committed[key] = first + len(values)
    assert totals(sink.points) == pytest.approx(truth)


def test_two_partitions_write_separate_aggregates_that_sum(tmp_path, store) -> None:
    values = [http_envelope(WORKER_EU.guid, T0 + i * S, size=10 + i) for i in range(6)]
    result, sink = run(tmp_path, store, values, partitions=2)
    aggregates = [line for line in sink.lines if line.startswith("bytes_batch_workers")]
    # Both partitions start at offset 0: only the partition tag tells them apart.
    assert aggregates == [
        f"bytes_batch_workers,app=worker,org=eu,partition=cf-firehose-0,space=batch sum=36i {T0}",
        f"bytes_batch_workers,app=worker,org=eu,partition=cf-firehose-1,space=batch sum=39i {T0}",
    ]
    assert result.balanced
