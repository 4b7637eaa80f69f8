"""The local event source mapping against a real broker (Tansu), with scripted handlers.

The handler here is a plain function standing in for the Lambda function, so that each rule of the
mapping can be made to happen on purpose: a batch that fails, a partial batch response, a stop
request in the middle of an invocation. The broker, the consumer group, its offsets and the
commits are real. The whole path with the real enricher and InfluxDB: test_kafka_e2e.py.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from refinery.kafka_event import describe
from refinery_tools import cli
from refinery_tools.dev.tansu import TansuServer
from refinery_tools.localkafka.connect import KafkaUnavailable
from refinery_tools.localkafka.event import MAX_EVENT_BYTES
from refinery_tools.localkafka.mapping import EventSourceMapping, MappingError, MappingOptions

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def publish(tansu: TansuServer, topic: str, values: list[bytes], partitions: int) -> None:
    tansu.create_topic(topic, partitions)
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", max_request_size=2_000_000)
    for i, value in enumerate(values):
        producer.send(topic, value=value, partition=i % partitions)
    producer.flush()
    producer.close()


def options(tansu: TansuServer, topic: str, group: str, **overrides: Any) -> MappingOptions:
    settings: dict[str, Any] = {
        "batch_size": 10,
        "batching_window": 0.3,
        "session_timeout": 6.0,
        "idle_exit": 1.0,
        "progress_interval": 0,
        "retry_backoff": 0.05,
        "max_retry_wait": 0.2,
        "function_timeout": 30.0,
    }
    settings.update(overrides)
    return MappingOptions(bootstrap=tansu.bootstrap, topics=[topic], group=group, **settings)


class Recorder:
    """A handler that records every event and answers with ``script(call number, event)``."""

    def __init__(self, script: Callable[[int, dict[str, Any]], Any] | None = None):
        self.events: list[dict[str, Any]] = []
        self.script = script

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        describe(event)  # the real handler's validation of the event's shape
        assert 0 < context.get_remaining_time_in_millis() <= 30_000
        self.events.append(json.loads(json.dumps(event)))
        return self.script(len(self.events), event) if self.script else {"batchItemFailures": []}

    def deliveries(self, event: dict[str, Any] | None = None) -> list[tuple[int, int, bytes]]:
        """(partition, offset, value) of every record delivered (of one event, or of all)."""
        out = []
        for ev in [event] if event is not None else self.events:
            for key, records in ev["records"].items():
                for r in records:
                    assert key == f"{r['topic']}-{r['partition']}"
                    out.append((r["partition"], r["offset"], base64.b64decode(r["value"])))
        return out


def values(n: int) -> list[bytes]:
    return [json.dumps({"n": i}).encode() for i in range(n)]


def expected(vals: list[bytes], partitions: int) -> list[tuple[int, int, bytes]]:
    return sorted((i % partitions, i // partitions, v) for i, v in enumerate(vals))


def test_every_record_is_delivered_once_in_batches_of_the_lambda_shape(tansu: TansuServer) -> None:
    topic, group = unique("shape"), unique("g")
    vals = values(45)
    publish(tansu, topic, vals, partitions=3)
    handler = Recorder()
    stats = EventSourceMapping(options(tansu, topic, group, batch_size=7), handler).run()
    assert sorted(handler.deliveries()) == expected(vals, 3)
    for event in handler.events:
        assert event["eventSource"] == "aws:SelfManagedKafka" and "eventSourceArn" not in event
        assert event["bootstrapServers"] == tansu.bootstrap
        assert 0 < sum(len(r) for r in event["records"].values()) <= 7
        for records in event["records"].values():
            offsets = [r["offset"] for r in records]
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
            assert all(r["timestampType"] == "CREATE_TIME" and r["headers"] == [] for r in records)
            assert all("key" not in r and r["timestamp"] > 1_600_000_000_000 for r in records)
    assert tansu.committed_offsets(group) == {0: 15, 1: 15, 2: 15}
    assert (stats.records, stats.batches, stats.retries) == (45, len(handler.events), 0)
    assert stats.committed == {f"{topic}-0": 15, f"{topic}-1": 15, f"{topic}-2": 15}
    assert stats.stop_reason == "done: no new record for 1 s"


def test_msk_events_carry_the_cluster_arn(tansu: TansuServer) -> None:
    topic, group = unique("msk"), unique("g")
    publish(tansu, topic, values(3), partitions=1)
    handler = Recorder()
    EventSourceMapping(options(tansu, topic, group, source="aws:kafka"), handler).run()
    assert handler.events[0]["eventSource"] == "aws:kafka"
    assert handler.events[0]["eventSourceArn"].startswith("arn:aws:kafka:")


def test_a_failed_batch_is_retried_unchanged_and_committed_only_after_it_succeeded(
    tansu: TansuServer,
) -> None:
    topic, group = unique("retry"), unique("g")
    vals = values(8)
    publish(tansu, topic, vals, partitions=2)
    seen_committed: list[dict[int, int]] = []

    def script(call: int, event: dict[str, Any]) -> Any:
        if call <= 2:
            seen_committed.append(tansu.committed_offsets(group))
            raise RuntimeError("InfluxDB is down")
        return {"batchItemFailures": []}

    handler = Recorder(script)
    stats = EventSourceMapping(options(tansu, topic, group, batch_size=100), handler).run()
    assert seen_committed == [{}, {}]
    assert handler.events[0] == handler.events[1] == handler.events[2]
    retried = set(handler.deliveries(handler.events[0]))
    counts = Counter(handler.deliveries())
    assert all(counts[d] == (3 if d in retried else 1) for d in counts)
    assert sorted(counts) == expected(vals, 2)
    assert tansu.committed_offsets(group) == {0: 4, 1: 4}
    assert (stats.retries, stats.failed_invocations, stats.records) == (2, 2, 8)
    assert stats.last_error == "RuntimeError: InfluxDB is down"


def test_a_partial_batch_response_commits_up_to_the_failed_offset_and_redelivers_the_rest(
    tansu: TansuServer,
) -> None:
    topic, group = unique("partial"), unique("g")
    vals = values(40)
    publish(tansu, topic, vals, partitions=2)
    failed_at: dict[str, Any] = {}

    def script(call: int, event: dict[str, Any]) -> Any:
        if call == 1:
            key, records = next((k, r) for k, r in event["records"].items() if len(r) > 3)
            failed_at.update(key=key, partition=records[0]["partition"], offset=records[3]["offset"])
            return {
                "batchItemFailures": [{"itemIdentifier": {"partition": key, "offset": records[3]["offset"]}}]
            }
        return {"batchItemFailures": []}

    handler = Recorder(script)
    stats = EventSourceMapping(options(tansu, topic, group, batch_size=20), handler).run()
    first = handler.deliveries(handler.events[0])
    later = handler.deliveries()[len(first) :]
    partition, offset = failed_at["partition"], failed_at["offset"]
    redelivered = sorted(d for d in first if d[0] == partition and d[1] >= offset)
    acknowledged = [d for d in first if d not in redelivered]
    assert redelivered and acknowledged
    assert sorted(set(later) & set(first)) == redelivered  # exactly the unacknowledged part came again
    assert sorted(acknowledged + later) == expected(vals, 2)  # and nothing else twice, nothing lost
    assert tansu.committed_offsets(group) == {0: 20, 1: 20}
    assert (stats.partial_batches, stats.retries, stats.records) == (1, 1, 40)


def test_a_batch_that_keeps_failing_stops_the_mapping_after_max_retries_uncommitted(
    tansu: TansuServer,
) -> None:
    topic, group = unique("giveup"), unique("g")
    publish(tansu, topic, values(4), partitions=1)

    def script(call: int, event: dict[str, Any]) -> Any:
        raise RuntimeError("still down")

    handler = Recorder(script)
    mapping = EventSourceMapping(options(tansu, topic, group, max_retries=1), handler)
    with pytest.raises(MappingError, match=r"failed 2 time\(s\), more than --max-retries 1.*still down"):
        mapping.run()
    assert len(handler.events) == 2 and tansu.committed_offsets(group) == {}


def test_a_stop_during_an_invocation_commits_it_only_if_it_succeeded(tansu: TansuServer) -> None:
    topic = unique("stop")
    publish(tansu, topic, values(30), partitions=1)
    group = unique("g")
    holder: dict[str, EventSourceMapping] = {}

    def succeed(call: int, event: dict[str, Any]) -> Any:
        holder["m"].request_stop()  # as SIGTERM arriving while the handler runs
        return None

    handler = Recorder(succeed)
    holder["m"] = EventSourceMapping(options(tansu, topic, group), handler)
    stats = holder["m"].run()
    assert len(handler.events) == 1 and stats.stop_reason == "stopped on request"
    assert tansu.committed_offsets(group) == {0: 10}

    def fail(call: int, event: dict[str, Any]) -> Any:
        holder["m"].request_stop()
        raise RuntimeError("down")

    handler = Recorder(fail)
    holder["m"] = EventSourceMapping(options(tansu, topic, group), handler)
    stats = holder["m"].run()
    assert len(handler.events) == 1 and "abandoned, not committed" in stats.stop_reason
    assert [d[1] for d in handler.deliveries()] == list(range(10, 20))  # it went on from the commit
    assert tansu.committed_offsets(group) == {0: 10}

    def interrupt(call: int, event: dict[str, Any]) -> Any:
        raise KeyboardInterrupt  # a second Ctrl-C in the middle of the handler

    handler = Recorder(interrupt)
    stats = EventSourceMapping(options(tansu, topic, group), handler).run()
    assert stats.stop_reason.startswith("interrupted") and tansu.committed_offsets(group) == {0: 10}

    handler = Recorder()  # a new run delivers what was not committed, once
    stats = EventSourceMapping(options(tansu, topic, group, max_batches=1), handler).run()
    assert [d[1] for d in handler.deliveries()] == list(range(10, 20))
    assert stats.stop_reason == "done: 1 batch(es)" and tansu.committed_offsets(group) == {0: 20}

    handler = Recorder()
    stats = EventSourceMapping(options(tansu, topic, group, max_records=5), handler).run()
    assert [d[1] for d in handler.deliveries()] == list(range(20, 25))
    assert stats.stop_reason == "done: 5 records (--max-records)" and tansu.committed_offsets(group) == {
        0: 25
    }


def test_batches_are_cut_at_the_lambda_payload_limit(tansu: TansuServer) -> None:
    topic, group = unique("big"), unique("g")
    vals = [bytes([65 + i]) * 950_000 for i in range(6)]  # base64: 1.27 MB each, 4 fit in 6 MiB
    publish(tansu, topic, vals, partitions=1)
    sizes: list[int] = []

    def script(call: int, event: dict[str, Any]) -> Any:
        sizes.append(len(json.dumps(event)))
        return None

    handler = Recorder(script)
    stats = EventSourceMapping(
        options(tansu, topic, group, batch_size=100, batching_window=1.0), handler
    ).run()
    assert [v for _, _, v in handler.deliveries()] == vals
    assert len(sizes) >= 2 and max(sizes) <= MAX_EVENT_BYTES
    assert stats.records == 6 and tansu.committed_offsets(group) == {0: 6}


def test_a_missing_topic_and_an_unreachable_broker_are_named(tansu: TansuServer) -> None:
    with pytest.raises(MappingError, match=r"topic 'no-such-topic' does not exist on 127\.0\.0\.1:\d+"):
        EventSourceMapping(options(tansu, "no-such-topic", unique("g")), Recorder()).run()
    dead = MappingOptions(bootstrap="127.0.0.1:9", topics=["t"], group="g", connect_timeout=0.5)
    with pytest.raises(
        KafkaUnavailable, match=r"cannot reach a Kafka broker at 127\.0\.0\.1:9 within 0\.5 s"
    ):
        EventSourceMapping(dead, Recorder()).run()


def test_produce_publishes_like_the_nozzle(tansu: TansuServer, tmp_path, capsys) -> None:
    topic = unique("produce")
    saved, snapshot = tmp_path / "sent.jsonl", tmp_path / "snap.json.gz"
    argv = ["produce", "--bootstrap", tansu.bootstrap, "--topic", topic, "--synthetic", "--count", "250"]
    argv += ["--partitions", "4", "--seed", "3", "--save", str(saved), "--write-snapshot", str(snapshot)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "produced 250 records" in err and "(created), 4 partition(s)" in err
    sent = saved.read_bytes().splitlines()
    from refinery.metadata.snapshot import decode_snapshot
    from refinery_tools.localkafka.synthetic import SyntheticTraffic

    assert sent == [v for _, v in SyntheticTraffic(2, 2, 5, seed=3).envelopes(250)]
    assert len(decode_snapshot(snapshot.read_bytes()).apps) == 20
    consumer = KafkaConsumer(bootstrap_servers=tansu.bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in range(4)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    got: list[tuple[int, int, bytes | None, bytes]] = []
    for _ in range(50):
        for tp, records in consumer.poll(timeout_ms=200).items():
            got.extend((tp.partition, r.offset, r.key, r.value) for r in records)
        if len(got) >= 250:
            break
    consumer.close()
    assert sorted(got) == sorted((i % 4, i // 4, None, v) for i, v in enumerate(sent))  # round-robin, no key

    assert (
        cli.main(["produce", "--bootstrap", tansu.bootstrap, "--topic", topic, "--samples", "--count", "8"])
        == 0
    )
    assert "produced 8 records" in capsys.readouterr().err


def test_produce_names_an_unreachable_broker(capsys) -> None:
    argv = ["produce", "--bootstrap", "127.0.0.1:9", "--topic", "t", "--samples", "--connect-timeout", "0.5"]
    assert cli.main(argv) == 1
    assert "cannot reach a Kafka broker at 127.0.0.1:9 within 0.5 s" in capsys.readouterr().err


def test_the_final_lag_counts_every_uncommitted_record_after_a_failed_batch(tansu: TansuServer) -> None:
    """Regression: the lag left out the partitions the failed batch had not read yet (1 333 of 2 000
    uncommitted records over 3 partitions, when the batch came from two of them)."""
    topic, group = unique("lag"), unique("g")
    publish(tansu, topic, values(30), partitions=3)
    stats = EventSourceMapping(options(tansu, topic, group, max_batches=1), Recorder()).run()
    committed = sum(tansu.committed_offsets(group).values())
    assert 0 < committed < 30 and stats.lag == 30 - committed

    def script(call: int, event: dict[str, Any]) -> Any:
        raise RuntimeError("InfluxDB is down")

    handler = Recorder(script)
    mapping = EventSourceMapping(options(tansu, topic, group, max_retries=0), handler)
    with pytest.raises(MappingError):
        mapping.run()
    read = {r[0] for r in handler.deliveries()}
    assert len(read) < 3, "the failed batch read every partition: the regression is not exercised"
    assert sum(tansu.committed_offsets(group).values()) == committed
    assert mapping.stats.lag == 30 - committed
