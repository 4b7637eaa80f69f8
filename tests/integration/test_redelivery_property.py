"""Redelivery property: however Lambda's Kafka event source mapping cuts, retries, redelivers and
quarantines a stream, InfluxDB ends up with exactly one point per distinct record.

For random seeds (printed in every assertion message and in the test id; ``REDELIVERY_SEED=<n>``
with ``REDELIVERY_DIGITS=<d>`` reruns one, ``REDELIVERY_EXAMPLES=<n>`` sets how many fresh seeds a
run draws), a stream rich in hazards
(redelivery.make_stream: same-nanosecond twins of every measurement, byte-identical re-sends in the
same and in other partitions, records whose lines would be identical, 3-4 partitions) is delivered
to the real handler and a real InfluxDB 1.x behind a fault proxy, in four episodes of one consumer:

1. a backlog whose head is older than MAX_RECORD_AGE_SECONDS (those records are quarantined
   ``too_old``), with or without partial batch responses;
2. whole-batch retries: flushes fail after k chunks with concurrent writes, and the retry is cut
   differently; commits get lost; then the consumer group is rewound;
3. partial batch responses (REPORT_BATCH_ITEM_FAILURES): a partition restarts at the reported offset
   and the next batch may reach further; then rewound again;
4. one invocation per partition, partitions in random order.

Containers restart at random, and every episode takes its own INFLUX_BATCH_SIZE (small: many chunks)
and INFLUX_WRITE_CONCURRENCY (2 or 3). Then ``refinery replay`` of the quarantine, twice.

The oracle: before the replay exactly the records with a fresh Kafka timestamp are stored; after it,
(a) the stored point set equals what one clean delivery of the same records stores in a separate
database, and (b) every distinct record's own point (its line from the pure transform of that record
alone) is stored with its series, time and fields, and the number of points equals the number of
distinct records that make one. With TIMESTAMP_HASH_DIGITS=0 (exact mode, where same-identity
distinct records overwrite each other by design) only (a) is asserted.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from faults import MEASUREMENTS, accounted, stored
from redelivery import (
    Invocation,
    Mapping,
    ProxyFlushFaults,
    Stream,
    check_records,
    diff_point_sets,
    make_stream,
)

from refinery.config import SETTINGS
from refinery.handlers import enricher
from refinery_tools.dev.servers import InfluxDB1Server
from refinery_tools.replay import ReplayReport, replay
from support.faultproxy import FaultProxy

pytestmark = [
    pytest.mark.integration,
    # A failed invocation publishes no metric: Powertools then warns that there is nothing to publish.
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]

KEY = "metadata/apps.json.gz"
QUARANTINE = "quarantine/"
MAX_AGE = "3600s"  # the stream's old head is two hours old (redelivery.OLD_AGE_MS)
INVOKE_TIMEOUT = 20.0  # seconds per invocation (a Retry-After of 60 s is beyond it: give up at once)
EXAMPLE_BOUND = 60.0  # seconds per example, delivery and checks included

_SEED = os.environ.get("REDELIVERY_SEED")
_DIGITS = os.environ.get("REDELIVERY_DIGITS")
if _SEED:
    SEEDS = [int(_SEED)]
else:
    _EXAMPLES = int(os.environ.get("REDELIVERY_EXAMPLES", "10"))
    SEEDS = [random.SystemRandom().randrange(2**32) for _ in range(_EXAMPLES)]
#: (seed, TIMESTAMP_HASH_DIGITS): the default 3 (microseconds kept), and 6 (milliseconds) for the last
#: of three or more; REDELIVERY_DIGITS=<d> sets it for all.
CASES = [
    (seed, int(_DIGITS) if _DIGITS else 6 if i == len(SEEDS) - 1 and len(SEEDS) > 2 else 3)
    for i, seed in enumerate(SEEDS)
]


@dataclass
class Rig:
    influx: InfluxDB1Server
    db: str
    proxy: FaultProxy
    bucket: str
    monkeypatch: pytest.MonkeyPatch
    invoke: Callable[..., dict[str, Any]]

    def points(self, db: str | None = None) -> dict[str, list[dict[str, Any]]]:
        return stored(self.influx, db or self.db)

    def configure(self, **values: str) -> None:
        """Settings for the next container (the warm one is dropped: it read the old ones)."""
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)
        enricher.reset_runtime()


@pytest.fixture
def proxy(influxdb1: InfluxDB1Server) -> Iterator[FaultProxy]:
    p = FaultProxy(influxdb1.url).start()
    yield p
    # stop() waits for serve_forever's 0.5 s poll: let it finish in the background.
    threading.Thread(target=p.stop, name="faultproxy-stop", daemon=True).start()


@pytest.fixture
def rig(monkeypatch, influxdb1, influx_db, proxy, s3_bucket, invoke) -> Iterator[Rig]:
    for setting in SETTINGS:  # nothing from the caller's environment
        for suffix in ("", "_SECRET", "_PARAMETER"):
            monkeypatch.delenv(setting.name + suffix, raising=False)
    monkeypatch.setenv("METADATA_BUCKET", s3_bucket)  # the quarantine goes there too
    monkeypatch.setenv("QUARANTINE_PREFIX", QUARANTINE)
    monkeypatch.setenv("INFLUX_TIMEOUT", "5s")
    monkeypatch.setenv("FLUSH_TIME_RESERVE", "1s")
    monkeypatch.setenv("INFLUX_MAX_RETRY_WAIT", "60s")
    enricher.reset_runtime()
    yield Rig(influxdb1, influx_db, proxy, s3_bucket, monkeypatch, invoke)
    enricher.reset_runtime()


@dataclass
class Run:
    """One example's stream, mapping, and the point sets the oracle compares."""

    tag: str
    stream: Stream
    mapping: Mapping
    reference: dict[str, list[dict[str, Any]]]
    clean_summary: dict[str, Any]
    before_replay: dict[str, list[dict[str, Any]]]
    replays: list[ReplayReport] = field(default_factory=list)
    after_replay: list[dict[str, list[dict[str, Any]]]] = field(default_factory=list)
    seconds: float = 0.0

    def volume(self) -> str:
        return (
            f"{self.tag} {self.stream.describe()}; {self.mapping.stats.describe()}; replays wrote "
            f"{[r.written for r in self.replays]}; {self.seconds:.1f} s"
        )


def clean_delivery(
    rig: Rig, stream: Stream, tag: str
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Every record once, in one invocation, no fault, no age limit, straight to InfluxDB, into a
    separate database: the point set a redelivering run must end with."""
    name = f"clean_{rig.db}"
    rig.influx.create_database(name)
    try:
        rig.configure(
            INFLUX_URL=rig.influx.url,
            INFLUX_DATABASE=name,
            INFLUX_BATCH_SIZE="5000",
            INFLUX_WRITE_CONCURRENCY="1",
            MAX_RECORD_AGE_SECONDS="0",
            REPORT_BATCH_ITEM_FAILURES="false",
            TIMESTAMP_HASH_DIGITS=str(stream.digits),
        )
        result = rig.invoke(stream.whole_event(), timeout=INVOKE_TIMEOUT)
        summary = result["summary"]
        assert accounted(summary) and not result["batchItemFailures"], f"{tag} clean delivery: {summary}"
        assert summary["quarantined"] == 0, f"{tag} clean delivery quarantined: {summary}"
        return rig.points(name), summary
    finally:
        rig.influx.drop_database(name)


@contextmanager
def reproducible(tag: str) -> Iterator[None]:
    """An assertion failing inside names the seed that reproduces it."""
    try:
        yield
    except AssertionError as exc:
        if tag in str(exc):
            raise
        raise AssertionError(f"{tag} {exc}") from exc


def run_example(rig: Rig, seed: int, digits: int) -> Run:
    started = time.monotonic()
    rng = random.Random(seed)
    tag = f"[REDELIVERY_SEED={seed} REDELIVERY_DIGITS={digits}]"
    with reproducible(tag):
        stream = make_stream(
            rng,
            partitions=rng.choice((3, 4)),
            digits=digits,
            records=rng.randint(250, 400),
            old_head=rng.uniform(0.08, 0.2),
            now_ms=int(time.time() * 1000),
        )
    boto3.client("s3").put_object(Bucket=rig.bucket, Key=KEY, Body=stream.snapshot)
    for hazard in (
        "resend_same_partition",
        "resend_other_partition",
        "twinned_http_request",
        "twinned_log",
        "twinned_instance",
    ):
        assert stream.hazards[hazard], f"{tag} the stream lacks {hazard}: {stream.describe()}"
    reference, clean_summary = clean_delivery(rig, stream, tag)

    age_limit = False

    def check(invocation: Invocation) -> None:
        summary = invocation.summary or {}
        reasons = set(summary["quarantined_by_reason"])
        allowed = {"too_old"} if age_limit else set()
        assert reasons <= allowed, f"{tag} quarantined {summary['quarantined_by_reason']}: {summary}"
        # no two distinct records of the stream share an identity with different fields
        assert summary["identity_collisions"] == 0, f"{tag} {summary}"

    mapping = Mapping(
        stream,
        lambda event: rig.invoke(event, timeout=INVOKE_TIMEOUT),
        rng,
        new_container=enricher.reset_runtime,
        check=check,
        label=tag,
    )

    def episode(*, partial: bool, max_age: str = "0") -> None:
        batch_size = rng.choice((4, 6, 9))
        rig.configure(
            INFLUX_URL=rig.proxy.url,
            INFLUX_DATABASE=rig.db,
            INFLUX_BATCH_SIZE=str(batch_size),
            INFLUX_WRITE_CONCURRENCY=rng.choice(("2", "3")),
            MAX_RECORD_AGE_SECONDS=max_age,
            REPORT_BATCH_ITEM_FAILURES="true" if partial else "false",
            TIMESTAMP_HASH_DIGITS=str(digits),
        )
        mapping.faults = ProxyFlushFaults(rig.proxy, batch_size)

    ends, old = stream.ends, stream.old_heads
    backlog = [min(end, head + rng.randint(2, 8)) for head, end in zip(old, ends, strict=True)]
    middle = [b + (end - b) // 2 + rng.randint(-3, 3) for b, end in zip(backlog, ends, strict=True)]
    middle = [min(max(m, b), end) for m, b, end in zip(middle, backlog, ends, strict=True)]
    common = {"lost_commit_rate": 0.1, "cold_start_rate": 0.1}

    # 1. A backlog whose head is beyond the age limit: quarantined as too_old.
    age_limit = True
    mapping.not_written = lambda record: record.old
    partial = rng.random() < 0.5
    episode(partial=partial, max_age=MAX_AGE)
    mapping.consume(backlog, partial=partial, max_batch=rng.choice((8, 20)), fault_rate=0.3, **common)
    age_limit = False
    mapping.not_written = lambda record: False
    assert mapping.stats.quarantined["too_old"] >= sum(old), f"{tag} {mapping.stats.describe()}"
    # 2. Whole-batch retries, re-cut; then an offset reset (never back into the backlog).
    episode(partial=False)
    errors = mapping.stats.errors
    mapping.consume(
        middle,
        partial=False,
        cut="mixed",
        max_batch=rng.choice((10, 30, 60)),
        fault_rate=0.35,
        first_faulted=1,
        **common,
    )
    assert mapping.stats.errors > errors, f"{tag} no whole-batch retry: {mapping.stats.describe()}"
    mapping.rewind(backlog)
    # 3. Partial batch responses; then another offset reset.
    episode(partial=True)
    partials = mapping.stats.partial
    mapping.consume(
        ends,
        partial=True,
        cut="mixed",
        max_batch=rng.choice((10, 30, 60)),
        fault_rate=0.35,
        first_faulted=1,
        **common,
    )
    assert mapping.stats.partial > partials, f"{tag} no partial batch response: {mapping.stats.describe()}"
    mapping.rewind(backlog)
    # 4. One invocation per partition, in random order.
    partial = rng.random() < 0.5
    episode(partial=partial)
    mapping.consume(
        ends, partial=partial, cut="per_partition", max_batch=rng.choice((15, 40)), fault_rate=0.3
    )
    assert mapping.committed == ends, f"{tag} {mapping.committed} != {ends}"

    run = Run(tag, stream, mapping, reference, clean_summary, rig.points())
    rig.configure(INFLUX_URL=rig.proxy.url, INFLUX_DATABASE=rig.db, TIMESTAMP_HASH_DIGITS=str(digits))
    for _ in range(2):  # replaying twice writes nothing twice
        report = replay(f"s3://{rig.bucket}/{QUARANTINE}")
        assert not report.still_refused and not report.unreadable, f"{tag} replay: {report.as_dict()}"
        assert report.records >= sum(old), f"{tag} replay: {report.as_dict()}"
        run.replays.append(report)
        run.after_replay.append(rig.points())
    run.seconds = time.monotonic() - started
    print(run.volume())
    assert run.seconds < EXAMPLE_BOUND, f"{tag} took {run.seconds:.1f} s: {run.volume()}"
    return run


@pytest.mark.parametrize(("seed", "digits"), CASES, ids=[f"seed={s}-digits={d}" for s, d in CASES])
def test_every_distinct_record_is_stored_exactly_once_however_it_is_redelivered(rig, seed, digits):
    run = run_example(rig, seed, digits)
    tag, stream = run.tag, run.stream
    # The clean delivery itself: every distinct record's point, re-sends written once.
    point_records = sum(1 for r in stream.records if r.value in stream.expected)
    assert run.clean_summary["resends"] == point_records - len(stream.expected), f"{tag} {run.clean_summary}"
    problems = check_records(run.reference, stream.expected)
    assert not problems, f"{tag} one clean delivery:\n" + "\n".join(problems)
    # Before the replay: exactly the records that have an occurrence with a fresh Kafka timestamp.
    fresh = stream.expected_for(r for r in stream.records if not r.old)
    assert len(fresh) < len(stream.expected), f"{tag} no record was only in the old head"
    problems = check_records(run.before_replay, fresh)
    assert not problems, f"{tag} before the replay ({run.volume()}):\n" + "\n".join(problems)
    for number, points in enumerate(run.after_replay, start=1):
        # (a) the same point set as one clean delivery
        differences = diff_point_sets(points, run.reference)
        assert not differences, f"{tag} after replay {number} ({run.volume()}):\n" + "\n".join(differences)
        # (b) per distinct record, its own point, and nothing else
        problems = check_records(points, stream.expected)
        assert not problems, f"{tag} after replay {number} ({run.volume()}):\n" + "\n".join(problems)


@pytest.mark.parametrize("seed", SEEDS[:1], ids=lambda s: f"seed={s}-digits=0")
def test_exact_timestamps_redelivery_is_idempotent(rig, seed):
    """TIMESTAMP_HASH_DIGITS=0: the envelope's own times. Distinct records of one identity overwrite
    each other by design (the stream keeps only those whose lines are identical, so that which one
    InfluxDB keeps does not matter): only idempotence holds, the final set equals one clean delivery's."""
    run = run_example(rig, seed, 0)
    tag = run.tag
    assert sum(len(run.reference[m]) for m in MEASUREMENTS) < len(run.stream.expected), (
        f"{tag} no two distinct records share an identity in exact mode: {run.stream.describe()}"
    )
    for number, points in enumerate(run.after_replay, start=1):
        differences = diff_point_sets(points, run.reference)
        assert not differences, f"{tag} after replay {number} ({run.volume()}):\n" + "\n".join(differences)
