"""One batch through the stages: accounting, quarantine, duplicates and collisions."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from refinery.identity import point_time
from refinery.metadata.store import FileSnapshotSource, MetadataStore
from refinery.pipeline import convert_batch, process_batch
from refinery.quarantine import Quarantine, decode_records
from refinery.sinks import Deadline
from refinery_tools.dev.samples import sample_envelopes, sample_snapshot
from refinery_tools.events import build_kafka_event
from support.collecting_sink import CollectingSink


def store_for(tmp_path, data: bytes | None = None) -> MetadataStore:
    path = tmp_path / "snapshot.json.gz"
    if data is not None:
        path.write_bytes(data)
    return MetadataStore(FileSnapshotSource(str(path)))


DEADLINE = Deadline(lambda: 60_000, reserve=1.0)


def run(tmp_path, values: list[bytes], snapshot: bytes | None = None, raw: list[object] | None = None):
    event = build_kafka_event(values, partitions=2)
    if raw:
        event["records"]["cf-firehose-0"].extend(
            {"topic": "cf-firehose", "partition": 0, "offset": 100 + i, "timestamp": 1, "value": v}
            for i, v in enumerate(raw)
        )
    sink = CollectingSink()
    quarantine = Quarantine(None, "quarantine/", directory=str(tmp_path / "q"))
    store = store_for(tmp_path, sample_snapshot() if snapshot is None else snapshot)
    result = process_batch(event, store, sink, quarantine, DEADLINE)
    return result, sink.lines


def test_accounting_on_the_samples(tmp_path) -> None:
    result, lines = run(tmp_path, sample_envelopes())
    assert (result.records_in, result.written, result.points) == (6, 4, 4)
    assert result.dropped == {"value_metric": 1, "counter_event": 1}
    assert not result.quarantined and result.balanced
    assert len(lines) == 4


def test_malformed_records_are_quarantined_with_reasons(tmp_path) -> None:
    raw = ["%%%", base64.b64encode(b"{oops").decode(), None, base64.b64encode(b'{"eventType":"x"}').decode()]
    result, lines = run(tmp_path, sample_envelopes(), raw=raw)
    assert result.quarantined == {"not_base64": 1, "not_json": 1, "missing_value": 1, "bad_field": 1}
    assert result.balanced and result.records_in == 10 and len(lines) == 4
    records = decode_records(Path(result.quarantine_object).read_bytes())
    assert [r["offset"] for r in records] == [100, 101, 102, 103]
    assert [r["reason"] for r in records] == ["not_base64", "not_json", "missing_value", "bad_field"]
    assert records[0]["value"] == "%%%" and records[0]["topic"] == "cf-firehose"


def test_a_retried_batch_rewrites_the_same_quarantine_object(tmp_path) -> None:
    first, _ = run(tmp_path, sample_envelopes(), raw=["%%%"])
    second, _ = run(tmp_path, sample_envelopes(), raw=["%%%"])
    assert first.quarantine_object == second.quarantine_object
    assert len(list((tmp_path / "q").rglob("*.jsonl.gz"))) == 1


def test_without_any_snapshot_records_are_quarantined_not_dropped(tmp_path) -> None:
    result, lines = run(tmp_path, sample_envelopes(), snapshot=b"")
    assert lines == []
    assert result.quarantined == {"metadata_unavailable": 4}
    assert result.dropped == {"value_metric": 1, "counter_event": 1}
    assert result.balanced


def resent_and_twin(tmp_path) -> tuple[dict, list[bytes], MetadataStore]:
    """A log record, the same bytes again (a re-send) and a twin at the same nanosecond with another
    message of another length, with a loaded store."""
    log = json.loads(sample_envelopes()[1])
    other = json.loads(sample_envelopes()[1])
    other["logMessage"]["message"] = base64.b64encode(b"a different message").decode()
    values = [json.dumps(log).encode(), json.dumps(log).encode(), json.dumps(other).encode()]
    store = store_for(tmp_path, sample_snapshot())
    store.refresh_if_due()
    return log, values, store


def test_identical_records_give_one_point_and_distinct_ones_keep_their_own(tmp_path) -> None:
    log, values, store = resent_and_twin(tmp_path)
    done = convert_batch(build_kafka_event(values, partitions=1), store)
    assert done.result.resends == 1 and done.result.identity_collisions == 0
    # Each point's time is the event's microsecond with the last three digits from its record's bytes.
    event_time = log["logMessage"]["timestamp"]
    times = [int(line.rsplit(" ", 1)[1]) for line in done.lines]
    assert times == [point_time(event_time, values[0], 1000), point_time(event_time, values[2], 1000)]
    assert times[0] != times[1] and {t // 1000 for t in times} == {event_time // 1000}
    assert done.result.written == 3 and done.result.balanced
    # Cut differently (each record alone, in another order): the same points.
    alone = [convert_batch(build_kafka_event([v], partitions=1), store).lines for v in reversed(values)]
    assert sorted({line for lines in alone for line in lines}) == sorted(done.lines)


def test_exact_timestamps_count_the_collision_they_cannot_avoid(tmp_path) -> None:
    log, values, store = resent_and_twin(tmp_path)
    done = convert_batch(build_kafka_event(values, partitions=1), store, timestamp_digits=0)
    assert done.result.resends == 1 and done.result.identity_collisions == 1
    assert [line.rsplit(" ", 1)[1] for line in done.lines] == [str(log["logMessage"]["timestamp"])] * 2


class RefuseFirstThenFail(CollectingSink):
    """Acknowledges the first line as refused for good, then fails: a partial write."""

    def write(self, lines, deadline):  # type: ignore[no-untyped-def]
        from refinery.sinks import FlushError, WriteReport

        error = FlushError("down after the first line", acknowledged=1)
        error.report = WriteReport(
            lines=len(lines), chunks=1, attempts=2, rejected=[(0, "field type conflict")]
        )
        raise error


def test_a_refused_line_whose_resend_is_redelivered_is_counted_once(tmp_path) -> None:
    """Partial batch response: line 0 (records at offsets 0 and 2, a re-send) was refused in the
    acknowledged part; the failure puts the partition back at offset 1. The record at offset 0 is
    quarantined; its re-send at offset 2 comes again with the redelivery, so it is neither quarantined
    nor counted twice now (records_in = written + dropped + quarantined + redelivered)."""
    http, log = sample_envelopes()[0], sample_envelopes()[1]
    event = build_kafka_event([http, log, http], partitions=1)
    quarantine = Quarantine(None, "quarantine/", directory=str(tmp_path / "q"))
    store = store_for(tmp_path, sample_snapshot())
    result = process_batch(event, store, RefuseFirstThenFail(), quarantine, DEADLINE, partial_failures=True)
    assert result.batch_item_failures == [{"itemIdentifier": {"partition": "cf-firehose-0", "offset": 1}}]
    assert (result.quarantined, result.redelivered, result.written) == ({"rejected_by_server": 1}, 2, 0)
    assert result.balanced, result.summary()
    (item,) = decode_records((tmp_path / "q").rglob("*.jsonl.gz").__next__().read_bytes())
    assert item["offset"] == 0 and item["reason"] == "rejected_by_server"
    assert result.summary()["sink_requests"] == 2
