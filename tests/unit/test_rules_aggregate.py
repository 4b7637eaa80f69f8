"""Recording rules through the pipeline: exact outputs, routing per sink, accounting, and identities that
retries, re-cut batches, rewinds and concurrent partitions cannot break (servers: tests/integration)."""

from __future__ import annotations

import base64
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refinery.filters import PointFilter
from refinery.identity import fingerprint
from refinery.lineparse import parse_line, series_end
from refinery.metadata.snapshot import encode_snapshot
from refinery.metadata.store import FileSnapshotSource, MetadataStore
from refinery.pipeline import process_batch
from refinery.point_stage import PointStage
from refinery.quarantine import Quarantine, decode_records
from refinery.rules.aggregate import REMOTE_WRITE, aggregate_timestamp, contribution_timestamp
from refinery.rules.ledger import AggregateLedger
from refinery.rules.loader import RuleBook
from refinery.sinks import Deadline, FlushError, Sink, WriteReport
from refinery.sinks.base import Misconfigured, Refused
from refinery.sinks.chunked import ChunkedSink
from refinery.sinks.fanout import FanoutSink
from refinery_tools.dev.envelopes import http_envelope, log_envelope
from refinery_tools.dev.worked_example import (
    APPS,
    MS,
    RULES,
    T0,
    WORKER_EU,
    S,
    worked_example,
)
from refinery_tools.events import build_kafka_event
from support.collecting_sink import CollectingSink

DEADLINE = Deadline(lambda: 60_000, reserve=1.0)
WINDOW = 60 * S


class RemoteCollectingSink(CollectingSink):
    """Keeps what it is given, as a remote-write sink (it is sent aggregates, not contributions)."""

    name = "remote"
    family = REMOTE_WRITE


class RefusingSink(ChunkedSink):
    """The base sink's chunking and splitting, refusing (400) any request holding a matching line."""

    def __init__(self, refuse: str, batch_size: int = 5000, family: str = "influx") -> None:
        super().__init__(batch_size=batch_size)
        self.refuse = re.compile(refuse)
        self.family = family
        self.name = f"refusing-{family}"
        self.written: list[str] = []

    def post(self, body: bytes, timeout: float) -> None:
        lines = body.decode().splitlines()
        if any(self.refuse.search(line) for line in lines):
            raise Refused("answered 400: refused", 400)
        self.written.extend(lines)


class FailingSink(ChunkedSink):
    """Acknowledges the first ``ok`` chunks, then the server refuses the token."""

    def __init__(self, ok: int, batch_size: int, family: str = "influx") -> None:
        super().__init__(batch_size=batch_size)
        self.ok = ok
        self.family = family

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


def stage_for(
    tmp_path: Path, rules: str, point_filter: PointFilter | None = None, ledger: str | None = None
) -> PointStage:
    """A stage with the rules; ``ledger``: the name of a local aggregation-ledger directory under tmp_path."""
    path = tmp_path / "rules.yaml"
    path.write_text(rules)
    book = AggregateLedger(None, directory=str(tmp_path / ledger)) if ledger else None
    return PointStage(point_filter, RuleBook(FileSnapshotSource(str(path))), book)


def run(tmp_path, store, values, rules=RULES, sink=None, partitions=1, **kwargs):
    sink = sink if sink is not None else CollectingSink()
    quarantine = Quarantine(None, "quarantine/", directory=str(tmp_path / "q"))
    stage = kwargs.pop("stage", None) or stage_for(tmp_path, rules)
    event = kwargs.pop("event", None) or build_kafka_event(values, partitions=partitions)
    result = process_batch(event, store, sink, quarantine, DEADLINE, stage=stage, **kwargs)
    return result, sink


def contribution_at(value: bytes, start: int = T0, window: int = WINDOW) -> int:
    """Where a record's contribution goes: its window's start plus its bytes' fingerprint (base64 text)."""
    return start + fingerprint(base64.b64encode(value)) % window


def test_influxdb_gets_one_contribution_per_record_at_a_time_from_its_bytes(tmp_path, store) -> None:
    values = worked_example()
    result, sink = run(tmp_path, store, values)
    outputs = [line for line in sink.lines if line.startswith("bytes_batch_workers")]
    head = "bytes_batch_workers,app=worker"
    # Records 2 and 6 (eu), 4 (ap), 5 (us): one point each, no partition tag, in their window.
    assert sorted(outputs) == sorted(
        [
            f"{head},org=eu,space=batch sum=20i {contribution_at(values[1])}",
            f"{head},org=ap,space=batch sum=30i {contribution_at(values[3])}",
            f"{head},org=us,space=batch sum=40i {contribution_at(values[4])}",
            f"{head},org=eu,space=batch sum=100i {contribution_at(values[5])}",
        ]
    )
    assert len(sink.lines) == 6 + 4  # keep_raw: the six raw points are written too
    assert result.rules == {"contributions": 4, "aggregates": 0, "points_consumed": 4}
    assert (result.records_in, result.written, result.points) == (6, 6, 10) and result.balanced


def test_remote_write_gets_one_aggregate_per_group_window_and_partition(tmp_path, store) -> None:
    result, sink = run(tmp_path, store, worked_example(), sink=RemoteCollectingSink())
    aggregates = [line for line in sink.lines if line.startswith("bytes_batch_workers")]
    # First offsets: eu = 1 (record 2), ap = 3, us = 4: in the timestamp, one ms after the window's start.
    assert aggregates == [
        f"bytes_batch_workers,app=worker,org=eu,partition=cf-firehose-0,space=batch sum=120i {T0 + 2 * MS}",
        f"bytes_batch_workers,app=worker,org=ap,partition=cf-firehose-0,space=batch sum=30i {T0 + 4 * MS}",
        f"bytes_batch_workers,app=worker,org=us,partition=cf-firehose-0,space=batch sum=40i {T0 + 5 * MS}",
    ]
    assert sink.lines[-3:] == aggregates  # written last
    assert result.rules == {"contributions": 0, "aggregates": 3, "points_consumed": 4}
    assert (result.records_in, result.written, result.points) == (6, 6, 9) and result.balanced


def test_both_sinks_each_get_their_own_output_and_the_raw_points(tmp_path, store) -> None:
    influx, remote = CollectingSink(), RemoteCollectingSink()
    result, _ = run(tmp_path, store, worked_example(), sink=FanoutSink([influx, remote]))
    assert len(influx.lines) == 6 + 4 and len(remote.lines) == 6 + 3
    assert influx.lines[:6] == remote.lines[:6]
    assert all("partition=" not in line for line in influx.lines[6:])
    assert all("partition=cf-firehose-0" in line for line in remote.lines[6:])
    assert result.rules == {"contributions": 4, "aggregates": 3, "points_consumed": 4}
    assert result.written == 6 and result.points == 13 and result.balanced


def test_influx_output_aggregates_sends_influxdb_the_aggregates(tmp_path, store) -> None:
    rules = RULES + "    influx_output: aggregates\n"
    _, sink = run(tmp_path, store, worked_example(), rules=rules)
    aggregates = [line for line in sink.lines if line.startswith("bytes_batch_workers")]
    assert [line.rsplit(" ", 1)[1] for line in aggregates] == [str(T0 + k * MS) for k in (2, 4, 5)]
    assert all("partition=cf-firehose-0" in line for line in aggregates)


def test_keep_raw_false_drops_the_consumed_points_and_keeps_the_accounting(tmp_path, store) -> None:
    rules = RULES + "    keep_raw: false\n"
    result, sink = run(tmp_path, store, worked_example(), rules=rules, sink=RemoteCollectingSink())
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
    assert result.rules == {
        "contributions": 0,
        "aggregates": 3,
        "points_consumed": 4,
        "raw_points_dropped": 4,
    }
    assert result.balanced
    result, sink = run(tmp_path, store, worked_example(), rules=rules)  # InfluxDB: their contributions
    assert [line.split(",")[0] for line in sink.lines].count("bytes_batch_workers") == 4
    assert (result.written, result.points) == (6, 6) and result.balanced


COUNT_MIN_MAX = """
rules:
  - {name: n, source: http_request, keep: [org], aggregation: count, window: 60s}
  - {name: small, source: http_request, keep: [org], field: response_size, aggregation: min, window: 60s}
  - {name: slow, source: http_request, keep: [org], field: duration, aggregation: max, window: 60s}
  - {name: total, source: http_request, field: duration, aggregation: sum, window: 60s, output_field: s}
"""


def test_count_min_max_and_value_types(tmp_path, store) -> None:
    values = [
        http_envelope(WORKER_EU.guid, T0, size=5, duration_ns=2 * MS),
        http_envelope(WORKER_EU.guid, T0 + S, size=3, duration_ns=7 * MS),
        http_envelope(WORKER_EU.guid, T0 + 61 * S, size=9, duration_ns=1 * MS),  # the next window
    ]
    _, sink = run(tmp_path, store, values, rules=COUNT_MIN_MAX, sink=RemoteCollectingSink())
    got = sorted(line for line in sink.lines if not line.startswith("http_request"))
    later = T0 + 60 * S + 3 * MS  # first offset 2
    assert got == sorted(
        [
            f"n,org=eu,partition=cf-firehose-0 count=2i {T0 + MS}",
            f"n,org=eu,partition=cf-firehose-0 count=1i {later}",
            f"small,org=eu,partition=cf-firehose-0 min=3i {T0 + MS}",
            f"small,org=eu,partition=cf-firehose-0 min=9i {later}",
            f"slow,org=eu,partition=cf-firehose-0 max=0.007 {T0 + MS}",
            f"slow,org=eu,partition=cf-firehose-0 max=0.001 {later}",
            f"total,partition=cf-firehose-0 s=0.009000000000000001 {T0 + MS}",
            f"total,partition=cf-firehose-0 s=0.001 {later}",
        ]
    )
    _, sink = run(tmp_path, store, values, rules=COUNT_MIN_MAX)
    got = sorted(line for line in sink.lines if not line.startswith("http_request"))
    assert len(got) == 4 * 3  # one contribution per record and rule
    assert sorted(line.split(" ")[1] for line in got if line.startswith("n,")) == ["count=1i"] * 3
    assert sorted(line.split(" ")[1] for line in got if line.startswith("small,")) == [
        "min=3i",
        "min=5i",
        "min=9i",
    ]
    assert all(T0 + 60 * S <= int(line.rsplit(" ", 1)[1]) < T0 + 120 * S for line in got if "=0.001" in line)


def test_aggregate_timestamps_stay_inside_the_window_never_on_its_start_and_carry_the_first_offset() -> None:
    for window_ms in (1_000, 60_000):
        stamps = {aggregate_timestamp(T0, window_ms, offset) for offset in range(0, 3_000_000, 7)}
        assert len(stamps) == len(range(0, 3_000_000, 7))  # one per first offset
        assert all(T0 + MS <= s < T0 + window_ms * MS for s in stamps)  # never on the window's start
    assert aggregate_timestamp(T0, 60_000, 0) == T0 + MS
    assert aggregate_timestamp(T0, 60_000, 12_345) // MS == T0 // MS + 12_346  # exact in ms
    assert aggregate_timestamp(T0, 60_000, 59_999 + 5) == T0 + 6 * MS + 1


def test_a_contribution_timestamp_depends_on_the_record_bytes_only() -> None:
    values = [http_envelope(WORKER_EU.guid, T0 + i, size=i) for i in range(2000)]
    stamps = [contribution_timestamp(T0, WINDOW, base64.b64encode(v).decode()) for v in values]
    assert stamps == [contribution_timestamp(T0, WINDOW, base64.b64encode(v)) for v in values]
    assert all(T0 <= s < T0 + WINDOW for s in stamps) and len(set(stamps)) == len(stamps)
    spread = sorted(s - T0 for s in stamps)
    assert spread[0] < WINDOW // 100 and spread[-1] > WINDOW - WINDOW // 100  # the whole window


def test_rule_outputs_carry_the_extra_tags_and_see_filtered_points_removed(tmp_path, store) -> None:
    point_filter = PointFilter(
        exclude_orgs=re.compile("us"), extra_tags=(("foundation", "eu prod"), ("region", "x"))
    )
    stage = stage_for(tmp_path, RULES, point_filter)
    result, sink = run(tmp_path, store, worked_example(), stage=stage, sink=RemoteCollectingSink())
    aggregates = [line for line in sink.lines if line.startswith("bytes_batch_workers")]
    head = "bytes_batch_workers,app=worker,foundation=eu\\ prod"
    assert aggregates == [
        f"{head},org=eu,partition=cf-firehose-0,region=x,space=batch sum=120i {T0 + 2 * MS}",
        f"{head},org=ap,partition=cf-firehose-0,region=x,space=batch sum=30i {T0 + 4 * MS}",
    ]
    assert result.dropped == {"filtered": 1} and result.written == 5 and result.balanced
    _, sink = run(tmp_path, store, worked_example(), stage=stage_for(tmp_path, RULES, point_filter))
    contributions = [line for line in sink.lines if line.startswith("bytes_batch_workers")]
    assert len(contributions) == 3 and all(line.startswith(head + ",org=") for line in contributions)


def test_a_refused_aggregate_quarantines_each_of_its_records_once_for_that_sink(tmp_path, store) -> None:
    sink = RefusingSink(r"^bytes_batch_workers.*org=eu", family=REMOTE_WRITE)
    result, _ = run(tmp_path, store, worked_example(), sink=sink, rules=RULES)
    assert result.quarantined == {"rejected_by_server": 2}  # records 2 and 6 (their raw points were written)
    assert result.written == 4 and result.balanced
    assert not any("org=eu" in line and line.startswith("bytes") for line in sink.written)
    records = decode_records(Path(result.quarantine_object).read_bytes())
    assert sorted(r["offset"] for r in records) == [1, 5]
    assert {r["sink"] for r in records} == {"refusing-remote_write"}
    assert all(r["aggregate"] is True for r in records)  # replayed as aggregates (one request)
    assert {r["line"] for r in records} == {
        f"bytes_batch_workers,app=worker,org=eu,partition=cf-firehose-0,space=batch sum=120i {T0 + 2 * MS}"
    }


def test_a_refused_contribution_quarantines_its_record_with_its_own_line(tmp_path, store) -> None:
    values = worked_example()
    sink = RefusingSink(r"^bytes_batch_workers.*sum=100i")
    result, _ = run(tmp_path, store, values, sink=sink, rules=RULES)
    assert result.quarantined == {"rejected_by_server": 1} and result.written == 5 and result.balanced
    (record,) = decode_records(Path(result.quarantine_object).read_bytes())
    assert record["offset"] == 5 and record["sink"] == "refusing-influx" and "aggregate" not in record
    assert record["line"].endswith(f"sum=100i {contribution_at(values[5])}")


def test_a_flush_failing_part_way_fails_the_whole_batch_when_it_holds_aggregates(tmp_path, store) -> None:
    with pytest.raises(FlushError):
        run(
            tmp_path,
            store,
            worked_example(),
            sink=FailingSink(ok=1, batch_size=2, family=REMOTE_WRITE),
            partial_failures=True,
        )
    # Contributions are per record: the same failure is reported per partition (from offset 1: the
    # unacknowledged lines include the contribution of record 1, written after the raw points).
    result, _ = run(
        tmp_path,
        store,
        worked_example(),
        sink=FailingSink(ok=1, batch_size=2),
        partial_failures=True,
    )
    assert result.batch_item_failures == [{"itemIdentifier": {"partition": "cf-firehose-0", "offset": 1}}]


def test_aggregates_are_written_only_once_everything_else_was_acknowledged(tmp_path, store) -> None:
    remote = RemoteCollectingSink()
    with pytest.raises(FlushError):
        run(tmp_path, store, worked_example(), sink=FanoutSink([FailingSink(ok=0, batch_size=5000), remote]))
    assert remote.lines == []  # the first sink failed: nothing at all reached the second
    remote = RemoteCollectingSink()
    influx = FailingSink(ok=1, batch_size=6)  # takes the six raw points, then fails on the contributions
    with pytest.raises(FlushError):
        run(tmp_path, store, worked_example(), sink=FanoutSink([influx, remote]), rules=RULES)
    assert len(remote.lines) == 6  # the raw points InfluxDB acknowledged, but no aggregate
    assert not any(line.startswith("bytes_batch_workers") for line in remote.lines)


def test_two_partitions_write_separate_aggregates_that_sum(tmp_path, store) -> None:
    values = [http_envelope(WORKER_EU.guid, T0 + i * S, size=10 + i) for i in range(6)]
    result, sink = run(tmp_path, store, values, partitions=2, sink=RemoteCollectingSink())
    aggregates = [line for line in sink.lines if line.startswith("bytes_batch_workers")]
    # Both partitions start at offset 0: only the partition tag tells them apart.
    assert aggregates == [
        f"bytes_batch_workers,app=worker,org=eu,partition=cf-firehose-0,space=batch sum=36i {T0 + MS}",
        f"bytes_batch_workers,app=worker,org=eu,partition=cf-firehose-1,space=batch sum=39i {T0 + MS}",
    ]
    assert result.balanced


def test_a_resent_record_is_one_contribution_but_counts_per_kafka_record_in_an_aggregate(
    tmp_path, store
) -> None:
    value = http_envelope(WORKER_EU.guid, T0 + S, size=7)
    _, influx = run(tmp_path, store, [value, value, value], partitions=2)
    assert [line for line in influx.lines if line.startswith("bytes")] == [
        f"bytes_batch_workers,app=worker,org=eu,space=batch sum=7i {contribution_at(value)}"
    ]
    _, remote = run(tmp_path, store, [value, value, value], partitions=2, sink=RemoteCollectingSink())
    assert sorted(line.split(" ")[1] for line in remote.lines if line.startswith("bytes")) == [
        "sum=14i",  # partition 0: offsets 0 and 1
        "sum=7i",  # partition 1
    ]


# -- identity: any history of retried, re-cut, rewound batches gives the exact totals -------------------

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
    """InfluxDB's semantics: a point is identified by series and timestamp; a rewrite replaces it.
    A failing write stores any part of what it was given (worst case) and raises."""

    name = "overwriting"

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


class FirstWriteStore(OverwritingStore):
    """Prometheus' semantics (with an out-of-order window): the first sample at a timestamp stays. Its
    one-request aggregate write is all or nothing."""

    name = "first-write"
    family = REMOTE_WRITE

    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        order = list(lines)
        if self.fail_after is not None:
            self.rng.shuffle(order)
            order = order[: self.fail_after]
        for line in order:
            self.points.setdefault((line[: series_end(line)], int(line.rsplit(" ", 1)[1])), line)
        if self.fail_after is not None:
            raise FlushError("the server went away", 0)
        return WriteReport(lines=len(lines), chunks=1)

    def write_atomic(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        if self.fail_after is not None:
            raise FlushError("the server went away", 0)  # rolled back: nothing stored
        return self.write(lines, deadline)


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


def replay_history(
    tmp_path: Path,
    records: dict[str, list[bytes]],
    sink: OverwritingStore,
    history: list[tuple[int, bool, int, int]],
    *,
    rewinds: bool,
    ledger: str | None = None,
) -> None:
    """Batches start at the committed offset; a failed one may have written any part of its lines, and
    its retry may be larger or smaller; a success commits; with ``rewinds`` a success may be followed by
    an offset reset to any earlier offset (then the same records come again, cut differently)."""
    path = tmp_path / "snapshot.json.gz"
    path.write_bytes(snapshot_bytes())
    store = MetadataStore(FileSnapshotSource(str(path)))
    quarantine = Quarantine(None, "q/", directory=str(tmp_path / "q"))
    stage = stage_for(tmp_path, STREAM_RULES, ledger=ledger)
    committed = dict.fromkeys(records, 0)
    steps = iter(history)
    while any(committed[k] < len(v) for k, v in records.items()):
        size, fails, part, back = next(steps, (50, False, 0, 0))
        batches = {k: (committed[k], v[committed[k] : committed[k] + size]) for k, v in records.items()}
        sink.fail_after = part if fails else None
        try:
            process_batch(event_of(batches), store, sink, quarantine, DEADLINE, stage=stage)
        except FlushError:
            continue
        for key, (first, values) in batches.items():
            committed[key] = first + len(values)
            if rewinds and back:
                committed[key] = max(0, committed[key] - back)


HISTORY = st.lists(
    st.tuples(st.integers(1, 12), st.booleans(), st.integers(0, 30), st.integers(0, 9)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), history=HISTORY)
def test_influxdb_contributions_are_exact_under_any_history_rewinds_included(
    tmp_path_factory, seed: int, history: list[tuple[int, bool, int, int]]
) -> None:
    tmp_path = tmp_path_factory.mktemp("history")
    records = stream(seed, partitions=2, per_partition=25)
    truth_sink = OverwritingStore()
    replay_history(tmp_path, records, truth_sink, [(50, False, 0, 0)], rewinds=False)  # one clean delivery
    truth = totals(truth_sink.points)
    assert truth
    sink = OverwritingStore()
    replay_history(tmp_path, records, sink, history, rewinds=True)
    assert totals(sink.points) == pytest.approx(truth)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), history=HISTORY)
def test_remote_write_aggregates_are_exact_under_any_history_rewinds_included(
    tmp_path_factory, seed: int, history: list[tuple[int, bool, int, int]]
) -> None:
    """With the aggregation ledger: failed batches (any part of their raw points written), retries
    larger or smaller, and offset rewinds to any earlier offset — every window exact."""
    tmp_path = tmp_path_factory.mktemp("history")
    records = stream(seed, partitions=2, per_partition=25)
    truth_sink = FirstWriteStore()
    replay_history(tmp_path, records, truth_sink, [(50, False, 0, 0)], rewinds=False, ledger="truth")
    truth = totals(truth_sink.points)
    assert truth
    sink = FirstWriteStore()
    replay_history(tmp_path, records, sink, history, rewinds=True, ledger="ledger")
    assert totals(sink.points) == pytest.approx(truth)


def rewound(tmp_path: Path, ledger: str | None) -> tuple[dict, dict]:
    """[0..4) delivered, then rewound and cut [0], [1, 2, 3]: the window's totals in both sinks."""
    records = {"cf-firehose-0": [http_envelope(WORKER_EU.guid, T0 + i * S, size=1) for i in range(4)]}
    rules = "rules:\n  - {name: req, source: http_request, keep: [org], aggregation: count, window: 10s}\n"
    (tmp_path / "s.json.gz").write_bytes(snapshot_bytes())
    store = MetadataStore(FileSnapshotSource(str(tmp_path / "s.json.gz")))
    quarantine = Quarantine(None, "q/", directory=str(tmp_path / "q"))
    influx, remote = OverwritingStore(), FirstWriteStore()
    for first, size in ((0, 4), (0, 1), (1, 3)):
        event = event_of({"cf-firehose-0": (first, records["cf-firehose-0"][first : first + size])})
        stage = stage_for(tmp_path, rules, ledger=ledger)  # a new container each time
        process_batch(event, store, FanoutSink([influx, remote]), quarantine, DEADLINE, stage=stage)
    return totals(influx.points), totals(remote.points)


def test_the_ledger_makes_a_finer_rewind_exact_in_remote_write(tmp_path) -> None:
    """Offsets already aggregated add to no new aggregate: their stored aggregates are sent again."""
    influx, remote = rewound(tmp_path, ledger="ledger")
    assert influx == {("req", "eu", T0): 4}
    assert remote == {("req", "eu", T0): 4}


def test_without_the_ledger_a_finer_rewind_double_counts_in_remote_write(tmp_path) -> None:
    """Why the ledger exists (a replay runs without it: its records are in no aggregate)."""
    influx, remote = rewound(tmp_path, ledger=None)
    assert influx == {("req", "eu", T0): 4}
    assert remote == {("req", "eu", T0): 7}  # 4, then [0] kept out, then [1..3] again
