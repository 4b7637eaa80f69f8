"""The aggregation ledger (rules/ledger.py): what it stores, where, when it writes, and that it fails a
batch rather than guess. Exactness under histories of retries and rewinds: test_rules_aggregate.py
(hypothesis) and tests/integration/test_rules_redelivery.py (real servers)."""

from __future__ import annotations

import base64
import gzip
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from refinery.lineparse import parse_line
from refinery.metadata.snapshot import encode_snapshot
from refinery.metadata.store import FileSnapshotSource, MetadataStore
from refinery.pipeline import process_batch
from refinery.point_stage import PointStage
from refinery.quarantine import Quarantine
from refinery.rules.aggregate import REMOTE_WRITE
from refinery.rules.ledger import AggregateLedger
from refinery.rules.ledger_state import Intent, LedgerError, PartitionState, StoredAggregate
from refinery.rules.loader import RuleBook
from refinery.sinks import Deadline
from refinery_tools.dev.envelopes import http_envelope
from refinery_tools.dev.worked_example import APPS, T0, WORKER_EU, S
from support.collecting_sink import CollectingSink

DEADLINE = Deadline(lambda: 60_000, reserve=1.0)
RULES = "rules:\n  - {name: req, source: http_request, keep: [org], aggregation: count, window: 10s}\n"
KEY = "cf-firehose-0"


class Remote(CollectingSink):
    name = "remote"
    family = REMOTE_WRITE


def values(n: int) -> list[bytes]:
    return [http_envelope(WORKER_EU.guid, T0 + i * S // 4, size=1) for i in range(n)]


def event(first: int, batch: list[bytes]) -> dict[str, Any]:
    records = [
        {
            "topic": "cf-firehose",
            "partition": 0,
            "offset": first + i,
            "timestamp": 1,
            "value": base64.b64encode(v).decode(),
        }
        for i, v in enumerate(batch)
    ]
    return {"eventSource": "aws:kafka", "records": {KEY: records}}


class Rig:
    def __init__(self, tmp_path: Path, ledger: AggregateLedger):
        (tmp_path / "rules.yaml").write_text(RULES)
        (tmp_path / "s.json.gz").write_bytes(
            encode_snapshot(
                {a.guid: a for a in APPS}, "https://api.example.com", datetime(2023, 1, 1, tzinfo=UTC)
            )
        )
        self.tmp_path = tmp_path
        self.ledger = ledger
        self.store = MetadataStore(FileSnapshotSource(str(tmp_path / "s.json.gz")))
        self.quarantine = Quarantine(None, "q/", directory=str(tmp_path / "q"))
        self.samples: dict[tuple[str, int], float] = {}  # as a server keeps them: one per series and time

    def run(self, first: int, batch: list[bytes]) -> dict[str, Any]:
        stage = PointStage(None, RuleBook(FileSnapshotSource(str(self.tmp_path / "rules.yaml"))), self.ledger)
        sink = Remote()
        result = process_batch(event(first, batch), self.store, sink, self.quarantine, DEADLINE, stage=stage)
        for line in sink.lines:
            point = parse_line(line)
            if point.measurement == "req":
                key = (line.split(" ")[0], point.timestamp)
                assert self.samples.setdefault(key, point.fields["count"]) == point.fields["count"], line
        return result.rules

    def total(self) -> float:
        return sum(self.samples.values())


def test_a_state_round_trips_with_offsets_as_runs() -> None:
    state = PartitionState(
        covered=[[0, 9]],
        intents=[
            Intent(5, 9, [StoredAggregate("req,org=eu count=3i 1", frozenset({REMOTE_WRITE}), (5, 6, 7, 9))])
        ],
        rules="abc",
    )
    again = PartitionState.decode(state.encode(), "here")
    assert again == state
    assert b"[[5,7],[9,9]]" in gzip.decompress(state.encode())


def test_covered_spans_merge_and_a_covered_span_changes_nothing() -> None:
    state = PartitionState()
    assert state.cover(10, 19) and state.cover(0, 9)
    assert state.covered == [[0, 19]]
    assert not state.cover(3, 7)
    assert state.cover(30, 39) and state.covered == [[0, 19], [30, 39]]
    assert state.covers(19) and not state.covers(25) and state.covers(30)


def test_an_unreadable_ledger_object_fails_the_batch_naming_it(tmp_path) -> None:
    ledger = AggregateLedger(None, directory=str(tmp_path / "ledger"))
    path = Path(ledger.location(KEY))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not gzip")
    with pytest.raises(LedgerError, match=r"ledger/rules-state/default/cf-firehose-0\.json\.gz is not"):
        Rig(tmp_path, ledger).run(0, values(3))


def test_in_order_batches_keep_one_span_and_only_the_latest_intent(tmp_path) -> None:
    ledger = AggregateLedger(None, directory=str(tmp_path / "ledger"))
    rig = Rig(tmp_path, ledger)
    data = values(30)
    for first in (0, 10, 20):
        rules = rig.run(first, data[first : first + 10])
        assert rules["ledger"] == {"reads": 1, "writes": 1, "seconds": rules["ledger"]["seconds"]}
    state = ledger.load(KEY)
    assert state.covered == [[0, 29]]
    assert [(i.first, i.last) for i in state.intents] == [(20, 29)]  # 0..19 were acknowledged: dropped
    assert rig.total() == 30


def test_a_retry_cut_smaller_resends_the_stored_aggregates_and_a_rewind_writes_nothing(tmp_path) -> None:
    ledger = AggregateLedger(None, directory=str(tmp_path / "ledger"))
    rig = Rig(tmp_path, ledger)
    data = values(12)
    stored = rig.run(0, data)  # say it failed after the ledger was written: the mapping retries it smaller
    assert stored["aggregates"] > 0
    retry = rig.run(0, data[:5])
    assert retry["aggregates"] == 0 and retry["aggregates_resent"] > 0
    assert retry["ledger"]["writes"] == 0  # nothing new: the ledger is not written again
    rest = rig.run(5, data[5:])
    assert rest["aggregates"] == 0 and rest["aggregates_resent"] > 0
    rewound = rig.run(2, data[2:9])  # a rewind over committed offsets, cut anew
    assert rewound["aggregates"] == 0
    assert rig.total() == 12


def test_a_late_start_then_the_older_offsets_aggregates_each_once(tmp_path) -> None:
    """A mapping created at LATEST (offsets 10..19), then one re-created from TRIM_HORIZON (0..19)."""
    ledger = AggregateLedger(None, directory=str(tmp_path / "ledger"))
    rig = Rig(tmp_path, ledger)
    data = values(20)
    rig.run(10, data[10:])
    rig.run(0, data[:12])
    rig.run(12, data[12:])
    assert ledger.load(KEY).covered == [[0, 19]]
    assert rig.total() == 20


def test_in_s3_a_missing_object_is_an_empty_ledger_and_a_missing_bucket_an_error(s3_bucket, tmp_path) -> None:
    ledger = AggregateLedger(s3_bucket, scope="fn-rules")
    assert ledger.load(KEY) == PartitionState()
    rig = Rig(tmp_path, ledger)
    rig.run(0, values(4))
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["rules-state/fn-rules/cf-firehose-0.json.gz"]
    assert ledger.load(KEY).covered == [[0, 3]]
    with pytest.raises(LedgerError, match=r"cannot read the recording-rules ledger s3://no-such-bucket-x/"):
        AggregateLedger("no-such-bucket-x", scope="fn").load(KEY)


def test_records_out_of_offset_order_within_a_batch_cover_their_whole_span(tmp_path) -> None:
    """The span is the batch's lowest to highest offset, not its first and last record's."""
    ledger = AggregateLedger(None, directory=str(tmp_path / "ledger"))
    rig = Rig(tmp_path, ledger)
    data = values(10)
    shuffled = event(0, data)
    records = shuffled["records"][KEY]
    records[0], records[5] = records[5], records[0]  # the batch begins at offset 5, ends at offset 9
    stage = PointStage(None, RuleBook(FileSnapshotSource(str(tmp_path / "rules.yaml"))), ledger)
    sink = Remote()
    process_batch(shuffled, rig.store, sink, rig.quarantine, DEADLINE, stage=stage)
    assert ledger.load(KEY).covered == [[0, 9]]
    assert rig.run(0, data[:3])["aggregates"] == 0  # a rewind: offsets 0..2 were aggregated


def test_a_dry_run_reads_the_ledger_and_never_writes_it(tmp_path) -> None:
    ledger = AggregateLedger(None, directory=str(tmp_path / "ledger"))
    rig = Rig(tmp_path, ledger)
    rig.run(0, values(4))
    ledger.read_only = True  # refinery invoke --dry-run, refinery consume --dry-run
    rules = rig.run(4, values(8)[4:])
    assert rules["aggregates"] > 0 and rules["ledger"]["writes"] == 0
    assert ledger.load(KEY).covered == [[0, 3]]  # the function will aggregate 4..7 itself


def test_an_unreachable_ledger_fails_the_batch_as_an_expected_retry_not_a_crash() -> None:
    from refinery.handlers.enricher import _expected_failure
    from refinery.quarantine import QuarantineError
    from refinery.rules.ledger import LedgerError
    from refinery.sinks import FlushError

    assert _expected_failure(LedgerError("cannot read s3://b/rules-state/x.json.gz: AccessDenied"))
    assert _expected_failure(FlushError("influxdb-v1: gave up", 0))
    assert _expected_failure(QuarantineError("cannot write the quarantine"))
    assert not _expected_failure(KeyError("a bug"))
