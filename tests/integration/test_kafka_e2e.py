"""End to end as an operator runs it: ``refinery produce`` → Tansu → ``refinery consume`` → InfluxDB 1.x.

Real broker, real InfluxDB, the real enricher, the commands as subprocesses. What is produced
(``refinery produce --file``) is synthetic traffic with the hazards of point identity mixed in: distinct
events of one series in one nanosecond (the next line, so in the next partition), and byte-identical
re-sends of a record, right after it (in the next partition) or 400 records later (another batch). Every
expected point (computed by ``refinery events`` + ``refinery invoke enricher --dry-run`` over the very
envelopes the producer sent, one batch in which the re-sends are counted as such; and per record by
``faults.RecordOracle``) must be in InfluxDB exactly once, and nothing else: every distinct record stored
exactly once, a re-send never twice, however the consumer cuts, retries and redelivers the batches:

(a) a plain run; (b) InfluxDB stopped in the middle of the run and started again: the consumer
retries without committing and finishes; (c) the consumer SIGKILLed in the middle of the run and
started again with the same group: it resumes from the committed offsets, and what was written but
not committed is written again as identical points.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from faults import (
    MEASUREMENTS,
    RecordOracle,
    assert_distinct_identities,
    assert_each_record_once,
    parse_line,
    printed_result,
    stored_points,
    twin_apart,
)

from refinery_tools.dev.servers import InfluxDB1Server
from refinery_tools.dev.tansu import TansuServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COUNT = 1500  # synthetic envelopes; the hazards come on top
DROPPED_KINDS = ("value_metric", "counter_event")
CLEAN = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("INFLUX_", "METADATA_", "CF_", "QUARANTINE", "AWS_", "POWERTOOLS_", "REFINERY_"))
}


def refinery(*args: str) -> list[str]:
    return [sys.executable, "-m", "refinery_tools.cli", *args]


# ------------------------------------------------------------------------------------------ checks


def assert_exactly(influx: InfluxDB1Server, db: str, workload: dict[str, Any]) -> None:
    """Every distinct record stored exactly once (per record, by the oracle), and exactly the points that
    the dry run of the whole file prints."""
    got = stored_points(influx, db)
    assert_each_record_once(got, workload["values"], workload["oracle"])
    expected = workload["expected"]
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (
        f"{sum(missing.values())} expected point(s) missing, {sum(extra.values())} unexpected;"
        f" e.g. missing {list(missing)[:2]}, extra {list(extra)[:2]}"
    )
    assert sum(got.values()) == sum(expected.values())


def point_count(influx: InfluxDB1Server, db: str) -> int:
    return sum(influx.count(db, m) for m in MEASUREMENTS)


# ------------------------------------------------------------------------------------------ fixtures


def with_hazards(
    envelopes: list[tuple[str, bytes]], oracle: RecordOracle
) -> tuple[list[tuple[str, bytes]], int, int]:
    """The synthetic envelopes with, after some that make points, a distinct event of the same series in
    the same nanosecond (every 20th; half of them with the same line), a byte-identical re-send right
    after (every 30th) or 400 records later (every 30th): (the records, twins, re-sends)."""
    taken = {oracle.identity(v) for _, v in envelopes if oracle.line(v) is not None}
    out: list[tuple[str, bytes]] = []
    later: dict[int, list[tuple[str, bytes]]] = {}
    twins = resends = 0
    for i, (kind, value) in enumerate(envelopes):
        out.append((kind, value))
        out.extend(later.pop(i, []))
        if kind in DROPPED_KINDS:
            continue
        if i % 20 == 5:
            out.append((kind, twin_apart(value, oracle, taken, same_fields=twins % 2 == 1)))
            twins += 1
        if i % 30 == 11:
            out.append((kind, value))
            resends += 1
        elif i % 30 == 26 and i + 400 < len(envelopes):
            later.setdefault(i + 400, []).append((kind, value))
            resends += 1
    assert not later
    return out, twins, resends


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The envelopes every scenario produces (``--file``), their snapshot and expected points."""
    from refinery_tools.localkafka.synthetic import SyntheticTraffic

    folder = tmp_path_factory.mktemp("kafka-e2e")
    sent, snapshot, event = folder / "sent.jsonl", folder / "snapshot.json.gz", folder / "event.json"
    # What `refinery produce --synthetic --orgs 2 --spaces 2 --apps 4 --seed 11` sends, the snapshot its
    # --write-snapshot writes, and the hazards (each scenario checks its --save copy is byte for byte this).
    traffic = SyntheticTraffic(2, 2, 4, seed=11)
    oracle = RecordOracle(traffic.snapshot())
    envelopes, twins, resends = with_hazards(list(traffic.envelopes(COUNT)), oracle)
    values = [v for _, v in envelopes]
    assert_distinct_identities(values, oracle, "the produced records (synthetic traffic and twins)")
    sent.write_bytes(b"".join(v + b"\n" for v in values))
    snapshot.write_bytes(traffic.snapshot())
    done = subprocess.run(
        refinery("events", "--input", str(sent), "--output", str(event), "--partitions", "3"),
        env=CLEAN,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        refinery("invoke", "enricher", "--dry-run", "--event", str(event)),
        env={**CLEAN, "METADATA_FILE": str(snapshot)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    expected = Counter(parse_line(line) for line in done.stdout.splitlines())
    dropped = sum(1 for kind, _ in envelopes if kind in DROPPED_KINDS)
    distinct = oracle.points(values)
    # One point per distinct record, the same as the per-record oracle's; the re-sends (all in this one
    # batch) counted as such, and no identity shared.
    assert sum(expected.values()) == len(expected) == len(values) - dropped - resends == len(distinct)
    assert expected == Counter(distinct.values())
    summary = printed_result(done.stderr)["summary"]
    assert (summary["resends"], summary["identity_collisions"]) == (resends, 0), summary
    assert twins >= 40 and resends >= 80
    return {
        "sent": sent.read_bytes(),
        "file": sent,
        "count": len(values),
        "values": values,
        "oracle": oracle,
        "snapshot": snapshot,
        "expected": expected,
        "dropped": dropped,
        "kinds": [kind for kind, _ in envelopes],
    }


class Consumer:
    """``refinery consume`` as a subprocess; its stderr is read as it comes."""

    def __init__(
        self, tansu: TansuServer, topic: str, group: str, env: dict[str, str], folder: Path, *extra: str
    ):
        self.summary_path = folder / f"summary-{time.monotonic_ns()}.json"
        args = ["consume", "--bootstrap", tansu.bootstrap, "--topic", topic, "--group", group]
        args += ["--batch-size", "100", "--batching-window", "0.2", "--session-timeout", "6"]
        args += ["--progress-interval", "2", "--summary-file", str(self.summary_path), *extra]
        self.process = subprocess.Popen(
            refinery(*args),
            env={**CLEAN, **env},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.assigned = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if "refinery consume: assigned" in line:
                self.assigned.set()

    def wait_assigned(self, timeout: float = 40.0) -> None:
        assert self.assigned.wait(timeout), "the consumer got no partitions:\n" + self.log()

    def wait(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail("refinery consume did not finish:\n" + self.log())
        self._reader.join(5)
        assert code == 0, f"refinery consume exited {code}:\n{self.log()}"
        return json.loads(self.summary_path.read_text())

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def log(self) -> str:
        return "\n".join(self.lines[-40:])


def produce(
    tansu: TansuServer, topic: str, folder: Path, workload: dict[str, Any], *extra: str
) -> subprocess.Popen[str]:
    args = ["produce", "--bootstrap", tansu.bootstrap, "--topic", topic, "--file", str(workload["file"])]
    args += ["--partitions", "3", "--save", str(folder / f"{topic}.jsonl"), *extra]
    return subprocess.Popen(
        refinery(*args), env=CLEAN, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def produced(process: subprocess.Popen[str], folder: Path, topic: str, workload: dict[str, Any]) -> None:
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"produced {workload['count']:,} records" in err
    assert (folder / f"{topic}.jsonl").read_bytes() == workload["sent"]  # exactly the expected envelopes


def wait_for_points(
    influx: InfluxDB1Server, db: str, at_least: int, consumer: Consumer, timeout: float = 30
) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = point_count(influx, db)
        if n >= at_least:
            return n
        assert consumer.process.poll() is None, "the consumer stopped early:\n" + consumer.log()
        time.sleep(0.05)
    pytest.fail(f"fewer than {at_least} points arrived:\n{consumer.log()}")


def committed(tansu: TansuServer, group: str) -> int:
    return sum(tansu.committed_offsets(group).values())


def pointless_between(kinds: list[str], before: dict[int, int], after: dict[int, int]) -> bool:
    """True when every record committed between ``before`` and ``after`` makes no point (the producer
    sends envelope i to partition i % 3, so it is offset i // 3 there)."""
    return all(
        kinds[offset * 3 + partition] in DROPPED_KINDS
        for partition, end in after.items()
        for offset in range(before.get(partition, 0), end)
    )


@pytest.fixture
def consumer_env(
    workload: dict[str, Any], influxdb1: InfluxDB1Server, influx_db: str, tmp_path: Path
) -> dict:
    return {
        "METADATA_FILE": str(workload["snapshot"]),
        "INFLUX_URL": influxdb1.url,
        "INFLUX_DATABASE": influx_db,
        "QUARANTINE_DIR": str(tmp_path / "quarantine"),
    }


# --------------------------------------------------------------------------------------------- tests


def test_a_plain_run_writes_every_point_exactly_once(
    tansu: TansuServer, influxdb1: InfluxDB1Server, influx_db: str, workload, consumer_env, tmp_path: Path
) -> None:
    topic = "e2e-plain"
    produced(produce(tansu, topic, tmp_path, workload), tmp_path, topic, workload)
    consumer = Consumer(
        tansu, topic, "e2e-plain", consumer_env, tmp_path, "--idle-exit", "1.5", "--source", "msk"
    )
    summary = consumer.wait()
    count = workload["count"]
    assert summary["records"] == count and summary["retries"] == 0
    assert summary["written"] == count - workload["dropped"]
    # A re-send in the batch of its original is one point; in another batch, the same point again.
    assert len(workload["expected"]) <= summary["points"] <= summary["written"]
    assert summary["dropped"] == workload["dropped"] and summary["quarantined"] == 0
    assert sum(summary["committed"].values()) == count and summary["lag"] == 0
    assert_exactly(influxdb1, influx_db, workload)
    assert any(line.startswith("  records") for line in consumer.lines)  # the summary table


@pytest.mark.parametrize("partial", [False, True], ids=["whole-batch-retries", "partial-batch-responses"])
def test_influxdb_stopped_mid_run_is_retried_without_commit_until_it_is_back(
    tansu: TansuServer,
    influxdb1: InfluxDB1Server,
    influx_db: str,
    workload,
    consumer_env,
    tmp_path: Path,
    partial: bool,
) -> None:
    """With partial responses the enricher reports the first unacknowledged offset per partition
    (small chunks make a flush fail part-way) and the consumer commits up to it and redelivers."""
    topic = group = f"e2e-influx-down-{'partial' if partial else 'whole'}"
    tansu.create_topic(topic, 3)
    env = {
        **consumer_env,
        "INFLUX_TIMEOUT": "1s",
        "INFLUX_MAX_RETRY_WAIT": "0.3s",
        "FLUSH_TIME_RESERVE": "0.5s",
    }
    if partial:
        env.update(REPORT_BATCH_ITEM_FAILURES="true", INFLUX_BATCH_SIZE="10", INFLUX_GZIP="false")
    consumer = Consumer(
        tansu, topic, group, env, tmp_path, "--idle-exit", "2", "--timeout", "2", "--retry-backoff", "0.3",
        "--max-retry-wait", "1",
    )  # fmt: skip
    try:
        consumer.wait_assigned()
        producer = produce(tansu, topic, tmp_path, workload, "--rate", "500")
        wait_for_points(influxdb1, influx_db, 200, consumer)
        influxdb1.stop(keep_data=True)
        try:
            # The invocation in flight at the stop may still commit what it wrote before: let it end.
            time.sleep(2.5)
            offsets_while_down = tansu.committed_offsets(group)
            time.sleep(2.5)
            offsets_later = tansu.committed_offsets(group)
            # While InfluxDB is down nothing that makes a point is committed (records that are only
            # dropped by policy need no InfluxDB: a batch or partition made of them alone succeeds).
            assert pointless_between(workload["kinds"], offsets_while_down, offsets_later), (
                offsets_while_down,
                offsets_later,
            )
        finally:
            influxdb1.start()
        produced(producer, tmp_path, topic, workload)
        summary = consumer.wait()
    finally:
        consumer.kill()
    assert summary["retries"] >= 1, consumer.log()
    if partial:  # the enricher answered with batchItemFailures instead of raising
        assert summary["partial_batches"] >= 1, consumer.log()
    else:
        assert summary["failed_invocations"] >= 1 and summary["partial_batches"] == 0, consumer.log()
        assert any("failed (FlushError" in line for line in consumer.lines), consumer.log()
    count = workload["count"]
    assert summary["records"] == count and sum(summary["committed"].values()) == count
    assert_exactly(influxdb1, influx_db, workload)


def test_a_killed_consumer_restarted_with_its_group_leaves_no_gap_and_no_duplicate(
    tansu: TansuServer, influxdb1: InfluxDB1Server, influx_db: str, workload, consumer_env, tmp_path: Path
) -> None:
    topic, group = "e2e-kill", "e2e-kill"
    tansu.create_topic(topic, 3)
    first = Consumer(tansu, topic, group, consumer_env, tmp_path)
    second: Consumer | None = None
    try:
        first.wait_assigned()
        producer = produce(tansu, topic, tmp_path, workload, "--rate", "500")
        wait_for_points(influxdb1, influx_db, 300, first)
        first.kill()
        time.sleep(0.5)  # a commit request already sent before the kill still lands
        acknowledged = committed(tansu, group)
        assert 0 < acknowledged < workload["count"]
        second = Consumer(tansu, topic, group, consumer_env, tmp_path, "--idle-exit", "2")
        produced(producer, tmp_path, topic, workload)
        summary = second.wait(timeout=90)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    # The second run starts exactly at the committed offsets: it sees every record not committed, once.
    assert summary["records"] == workload["count"] - acknowledged, second.log()
    assert sum(summary["committed"].values()) == workload["count"]
    assert_exactly(influxdb1, influx_db, workload)
