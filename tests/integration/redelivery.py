"""Redelivery harness: a hazardous record stream, Lambda's Kafka event source mapping, and an oracle.

Three parts, each usable alone (the enricher's redelivery property test uses all three; recording
rules and remote write can reuse them with their own sink and store query):

* **The stream** (:func:`make_stream` -> :class:`Stream`): Kafka record values, the raw bytes of nozzle
  JSON envelopes templated from the bundled samples (``faults.make_values``), spread round-robin over
  3-4 partitions as kafka-firehose-nozzle sends them (no key). It is rich in the hazards that break
  a batch-dependent point identity: *twins* (distinct events of one series in the same nanosecond,
  for every measurement: an http request with another stop time, request id or size, a log message of
  the same or another length, a container metric with another memory figure or origin) of which some
  give byte-identical lines; *re-sends* (byte-identical values appearing again, in the same or another
  partition, near or far); records dropped by policy; and a head of every partition whose Kafka
  timestamps are hours old (for ``MAX_RECORD_AGE_SECONDS``).
* **The mapping** (:class:`Mapping`): per partition an ordered log with offsets and a committed
  offset; each invocation delivers a random cut (random sizes, several partitions mixed in random key
  order, or one partition at a time in random order) to the real handler; on a function error nothing
  is committed and the retry is cut differently; with partial batch responses a partition restarts at
  the reported offset (and the next cut may reach further, appending newer records); commits may be
  lost and partitions rewound (rebalances, offset resets), containers restarted. Faults are injected
  by a :class:`FaultInjector` armed before an invocation and cleared after it
  (:class:`ProxyFlushFaults`: a flush that fails after k chunks, in front of the real server).
* **The oracle**: :func:`check_records` (each distinct record's own point, from the pipeline's pure
  transform of that record alone, is stored exactly, and nothing else is) and :func:`diff_point_sets`
  (two stored point sets are equal, e.g. a faulty run's and one clean delivery's).
"""

from __future__ import annotations

import base64
import copy
import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any, Protocol

import orjson
from faults import (
    WEEK_A_NS,
    BytesSnapshotSource,
    accounted,
    make_apps,
    make_values,
    snapshot_of,
    uuid_pair,
)

from refinery.lineparse import ParsedLine, parse_line, series_end
from refinery.metadata.snapshot import AppInfo
from refinery.metadata.store import MetadataStore
from refinery.pipeline import convert_batch
from refinery.quarantine import QuarantineError
from refinery.sinks import FlushError
from refinery_tools.events import SAMPLE_BOOTSTRAP, SAMPLE_CLUSTER_ARN
from support.faultproxy import FaultProxy

TOPIC = "cf-firehose"
#: Kafka timestamps of the "old" head of each partition: this much before ``now`` (beyond a one-hour
#: MAX_RECORD_AGE_SECONDS); the rest of the log is a minute old.
OLD_AGE_MS = 2 * 3600 * 1000
FRESH_AGE_MS = 60 * 1000
MEASUREMENT_OF = {"http": "http_request", "log": "log", "rtr": "log", "container": "instance"}
#: Twin variants per kind: how a distinct event of the same series and nanosecond differs. Those
#: marked "same line" give exactly the base's line when the identity digits are 0.
TWIN_VARIANTS = {
    "http": ("http_duration", "http_request_id", "http_size"),  # request id: same line
    "log": ("log_same_length", "log_other_length"),  # same length: same line
    "rtr": ("log_same_length", "log_other_length"),
    "container": ("instance_memory", "instance_origin"),  # origin (index, ip): same line
}

Identity = tuple[str, int]  # (series key: measurement and tags as written, point timestamp)


# ------------------------------------------------------------------------------------ the stream


class PureTransform:
    """The pipeline's pure transform (no sink) of one record alone: its line, or None (no point)."""

    def __init__(self, snapshot: bytes, digits: int):
        self.digits = digits
        self.store = MetadataStore(BytesSnapshotSource(snapshot), live_max=0)
        self.store.begin_invocation()

    def line(self, value: bytes) -> str | None:
        record = {
            "topic": TOPIC,
            "partition": 0,
            "offset": 0,
            "timestamp": 0,
            "timestampType": "CREATE_TIME",
            "value": base64.b64encode(value).decode(),
            "headers": [],
        }
        done = convert_batch(
            {"eventSource": "aws:kafka", "records": {f"{TOPIC}-0": [record]}},
            self.store,
            timestamp_digits=self.digits,
        )
        assert not done.quarantine, f"a generated record is quarantined: {done.quarantine[0]}"
        assert len(done.lines) <= 1, done.lines
        return done.lines[0] if done.lines else None


def identity(line: str) -> Identity:
    """A point's identity in InfluxDB: measurement + tags (the series key) and the timestamp."""
    return line[: series_end(line)], int(line.rsplit(" ", 1)[1])


@dataclass(frozen=True)
class StreamRecord:
    """One Kafka record of the stream (position ``index`` in produce order)."""

    index: int
    value: bytes
    partition: int
    offset: int
    timestamp_ms: int
    old: bool  # its Kafka timestamp is OLD_AGE_MS before the stream's ``now``
    resend_of: int | None  # index of the first record with the same bytes (None: first occurrence)
    hazard: str  # "base", a twin variant name, or "resend"


@dataclass
class Stream:
    """The generated records, their partition logs and, per distinct value, the point it must become."""

    partitions: int
    digits: int
    snapshot: bytes
    apps: dict[str, AppInfo]
    records: list[StreamRecord]
    #: per distinct value making a point: its line from the pure transform of that record alone
    expected: dict[bytes, str]
    hazards: Counter[str] = field(default_factory=Counter)
    rejected: int = 0  # candidates dropped because their identity was already taken
    topic: str = TOPIC
    _b64: dict[bytes, str] = field(default_factory=dict, repr=False)

    @property
    def logs(self) -> list[list[StreamRecord]]:
        out: list[list[StreamRecord]] = [[] for _ in range(self.partitions)]
        for record in self.records:
            out[record.partition].append(record)
        return out

    @property
    def ends(self) -> list[int]:
        """The end offset (one past the last) of every partition."""
        return [len(log) for log in self.logs]

    @property
    def old_heads(self) -> list[int]:
        """Per partition, the number of leading records with old Kafka timestamps."""
        return [sum(1 for r in log if r.old) for log in self.logs]

    @property
    def distinct_values(self) -> list[bytes]:
        return [r.value for r in self.records if r.resend_of is None]

    def key(self, partition: int) -> str:
        return f"{self.topic}-{partition}"

    def kafka_record(self, record: StreamRecord) -> dict[str, Any]:
        b64 = self._b64.get(record.value)
        if b64 is None:
            b64 = self._b64[record.value] = base64.b64encode(record.value).decode()
        return {
            "topic": self.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp_ms,
            "timestampType": "CREATE_TIME",
            "value": b64,
            "headers": [],
        }

    def event(self, spans: dict[int, tuple[int, int]], order: Sequence[int] | None = None) -> dict[str, Any]:
        """A Lambda MSK event with, per partition ``p``, the records at offsets ``spans[p]`` = [first, end)
        (partition keys in ``order``, default ``spans``' order)."""
        logs = self.logs
        records = {
            self.key(p): [self.kafka_record(r) for r in logs[p][spans[p][0] : spans[p][1]]]
            for p in (order if order is not None else spans)
        }
        return {
            "eventSource": "aws:kafka",
            "eventSourceArn": SAMPLE_CLUSTER_ARN,
            "bootstrapServers": SAMPLE_BOOTSTRAP,
            "records": records,
        }

    def whole_event(self) -> dict[str, Any]:
        """Every record once: one clean delivery."""
        return self.event({p: (0, end) for p, end in enumerate(self.ends)})

    def expected_for(self, records: Iterable[StreamRecord]) -> dict[bytes, str]:
        """The expected lines of the distinct values among ``records`` (those that make a point)."""
        return {r.value: self.expected[r.value] for r in records if r.value in self.expected}

    def describe(self) -> str:
        return (
            f"{len(self.records)} records in {self.partitions} partitions, {len(self.distinct_values)} "
            f"distinct, {len(self.expected)} make a point, digits={self.digits}, hazards="
            f"{dict(sorted(self.hazards.items()))}, identity rejections={self.rejected}"
        )


def _twin(base: dict[str, Any], kind: str, variant: str, rng: Random) -> dict[str, Any]:
    """A distinct event of the same series and nanosecond as ``base`` (``variant`` says how it differs)."""
    env = copy.deepcopy(base)
    if kind == "http":
        body = env["httpStartStop"]
        if variant == "http_duration":
            body["stopTimestamp"] += rng.randint(1, 10**8)
        elif variant == "http_request_id":
            body["requestId"] = uuid_pair(str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        else:
            body["contentLength"] = rng.randint(0, 10**7)
    elif kind in ("log", "rtr"):
        body = env["logMessage"]
        size = len(base64.b64decode(body["message"]))
        if variant == "log_other_length":
            size += rng.randint(1, 40)
        text = bytes(rng.randrange(32, 127) for _ in range(size))
        body["message"] = base64.b64encode(text).decode()
    else:
        body = env["containerMetric"]
        if variant == "instance_memory":
            body["memoryBytes"] = rng.randrange(10**8, 10**9)
        else:
            env["index"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            env["ip"] = f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    return env


def make_stream(
    rng: Random,
    *,
    partitions: int = 3,
    digits: int = 3,
    records: int = 300,
    old_head: float = 0.0,
    now_ms: int,
    apps: dict[str, AppInfo] | None = None,
    twin_rate: float = 0.3,
    resend_rate: float = 0.1,
    unknown_apps: int = 1,
    start_ns: int | None = None,
    step_ns: int | None = None,
) -> Stream:
    """``records`` Kafka records (re-sends included) over ``partitions`` partitions, round-robin.

    ``old_head``: the fraction of each partition's leading records whose Kafka timestamp is hours old.
    ``unknown_apps``: extra app GUIDs absent from the snapshot (their records are dropped by policy).
    ``start_ns``, ``step_ns``: the first event's time and the step between events (default: a random
    microsecond of a fixed 2018 week, and a step of 250 ns to 8 µs).

    Distinct records must not share a point by chance within this stream, or the oracle could not
    tell "one overwrote the other" from a bug: every candidate is run through the pure transform alone
    and dropped (and another one generated) when its identity -- measurement + tags + point timestamp
    -- equals that of an already chosen distinct record. With ``digits = 0`` identities of twins are
    shared by design (exact mode); there a candidate is dropped only when its line differs from the
    chosen one's, so that whichever of them InfluxDB keeps, the stored point is the same.
    """
    apps = apps if apps is not None else make_apps(4)
    snapshot = snapshot_of(apps)
    pure = PureTransform(snapshot, digits)
    guids = [*apps, *(str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(unknown_apps))]
    default_start = WEEK_A_NS + rng.randrange(10**6) * 1_000
    default_step = rng.choice((250, 1_000, 7_919))
    bases = make_values(
        records,
        guids,
        start_ns=default_start if start_ns is None else start_ns,
        step_ns=default_step if step_ns is None else step_ns,
        salt=rng.randrange(10_000),
    )
    taken: dict[Identity, str] = {}
    expected: dict[bytes, str] = {}
    seen: set[bytes] = set()
    hazards: Counter[str] = Counter()
    rejected = 0

    def accept(value: bytes) -> bool:
        """Choose ``value`` as a distinct record unless its identity is taken (see above)."""
        nonlocal rejected
        if value in seen:
            return False
        line = pure.line(value)
        if line is not None:
            ident = identity(line)
            other = taken.get(ident)
            if other is not None and (digits > 0 or other != line):
                rejected += 1
                return False
            taken[ident] = line
            expected[value] = line
        seen.add(value)
        return True

    # Build the produce order step by step, so that a position's partition (position % partitions)
    # is final when a re-send is placed: re-sends are chosen in the same or in another partition.
    order: list[tuple[bytes, int | None, str]] = []  # (value, index of first occurrence, hazard)
    pending: list[tuple[int, bytes, str]] = []  # twins waiting for their position: (due, value, name)
    twinned: set[str] = set()  # kinds with at least one twin
    base_index = 0
    while len(order) < records:
        position = len(order)
        due = next((t for t in pending if t[0] <= position), None)
        if due is not None:
            pending.remove(due)
            order.append((due[1], None, due[2]))
            continue
        if position >= partitions and rng.random() < resend_rate:
            same = rng.random() < 0.5
            near = range(max(0, position - 40), position)
            pool = [i for i in near if (i % partitions == position % partitions) == same]
            if rng.random() < 0.2:  # sometimes from far back
                pool = [i for i in range(position) if (i % partitions == position % partitions) == same]
            if pool:
                first = rng.choice(pool)
                first = order[first][1] if order[first][1] is not None else first
                order.append((order[first][0], first, "resend"))
                continue
        if base_index >= len(bases.values):
            break
        value, kind = bases.values[base_index], bases.kinds[base_index]
        base_index += 1
        if not accept(value):
            continue
        order.append((value, None, "base"))
        # twins of every measurement at least once, then at random
        if kind in TWIN_VARIANTS and value in expected and (kind not in twinned or rng.random() < twin_rate):
            envelope = orjson.loads(value)
            for _ in range(rng.randint(1, 3)):
                for _attempt in range(5):
                    variant = rng.choice(TWIN_VARIANTS[kind])
                    twin = orjson.dumps(_twin(envelope, kind, variant, rng))
                    if accept(twin):
                        pending.append((position + rng.randint(0, 12), twin, variant))
                        twinned.add(kind)
                        break
    order.extend((twin, None, name) for _, twin, name in sorted(pending, key=lambda t: t[0]))
    logs: list[list[int]] = [[] for _ in range(partitions)]
    for i in range(len(order)):
        logs[i % partitions].append(i)
    old_count = [math.floor(old_head * len(log)) for log in logs]
    out: list[StreamRecord] = []
    for i, (value, first, hazard) in enumerate(order):
        partition, offset = i % partitions, i // partitions
        old = offset < old_count[partition]
        stamp = now_ms - (OLD_AGE_MS if old else FRESH_AGE_MS) + offset
        if first is not None:
            same = first % partitions == partition
            hazards["resend_same_partition" if same else "resend_other_partition"] += 1
        elif hazard != "base":
            hazards[f"twin_{hazard}"] += 1
        out.append(StreamRecord(i, value, partition, offset, stamp, old, first, hazard))
    for kind in twinned:
        hazards[f"twinned_{MEASUREMENT_OF[kind]}"] += 1
    return Stream(partitions, digits, snapshot, apps, out, expected, hazards, rejected)


# ----------------------------------------------------------------------------------- the mapping


class FaultInjector(Protocol):
    """Arms a fault for the next invocation, whose batch makes ``lines`` distinct lines (``arm`` says
    which fault, or returns None if it cannot fail that batch), and clears it afterwards."""

    def arm(self, rng: Random, lines: int) -> str | None: ...

    def clear(self) -> None: ...


@dataclass
class ProxyFlushFaults:
    """A flush that fails after k chunks: ``k`` requests through the proxy pass, the next ones get
    ``status`` with a Retry-After beyond the invocation's deadline (with ``INFLUX_MAX_RETRY_WAIT`` at
    least as long), so the sink gives up at once instead of retrying until the deadline. With
    concurrent writes, which chunks are "the first k" is up to the order their requests arrive."""

    proxy: FaultProxy
    batch_size: int  # INFLUX_BATCH_SIZE: to choose k among the batch's chunks
    retry_after: str = "60"
    statuses: tuple[int, ...] = (503, 500, 502, 429)

    def arm(self, rng: Random, lines: int) -> str | None:
        if lines == 0:
            return None  # nothing is written: nothing can fail
        chunks = math.ceil(lines / self.batch_size)
        passes = rng.randint(0, chunks - 1)  # fewer than the chunks: the flush fails
        status = rng.choice(self.statuses)
        # FaultProxy pops one queue entry per request; None forwards it (as faults.pass_then_fail).
        with self.proxy._lock:
            self.proxy._failures.extend([None] * passes)  # type: ignore[list-item]
            self.proxy._failures.extend(
                (status, {"Retry-After": self.retry_after}, f"injected {status}".encode())
                for _ in range(10 * chunks + 10)
            )
        return f"{status} after {passes} of ~{chunks} chunks"

    def clear(self) -> None:
        self.proxy.clear()


@dataclass
class Invocation:
    spans: dict[int, tuple[int, int]]  # partition -> [first offset, end)
    records: int
    fault: str | None
    outcome: str  # "ok", "partial" (batch item failures) or "error" (the function failed)
    summary: dict[str, Any] | None = None
    error: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class MappingStats:
    invocations: int = 0
    records_delivered: int = 0  # records in all events (redeliveries included)
    errors: int = 0
    partial: int = 0
    faults_armed: int = 0
    lost_commits: int = 0
    rewinds: int = 0
    cold_starts: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        return (
            f"{self.invocations} invocations delivering {self.records_delivered} records "
            f"({self.faults_armed} with a fault armed: {self.errors} failed, {self.partial} partial "
            f"responses), {self.lost_commits} lost commits, {self.rewinds} rewound partitions, "
            f"{self.cold_starts} cold starts, quarantined {dict(self.quarantined)}"
        )


class Mapping:
    """Lambda's event source mapping for Kafka, over a :class:`Stream`'s partition logs.

    ``invoke(event)`` runs the function (raising on a function error); ``new_container()`` (optional)
    drops the warm container state. ``check(invocation)`` runs after every invocation that returned.
    Per partition, ``committed[p]`` is the next offset to deliver. ``faults`` and ``not_written`` may
    be changed between calls of :meth:`consume` (with the function's configuration).
    """

    def __init__(
        self,
        stream: Stream,
        invoke: Callable[[dict[str, Any]], dict[str, Any]],
        rng: Random,
        *,
        faults: FaultInjector | None = None,
        new_container: Callable[[], None] | None = None,
        check: Callable[[Invocation], None] | None = None,
        expected_errors: tuple[type[BaseException], ...] = (FlushError, QuarantineError),
        label: str = "",
    ):
        self.stream = stream
        self.invoke = invoke
        self.rng = rng
        self.faults = faults
        self.new_container = new_container
        self.check = check
        self.expected_errors = expected_errors
        self.label = label  # prefixes every assertion message (e.g. the seed that reproduces the run)
        #: records the current configuration does not write (e.g. old ones under an age limit)
        self.not_written: Callable[[StreamRecord], bool] = lambda record: False
        self.committed = [0] * stream.partitions
        self.history: list[Invocation] = []
        self.stats = MappingStats()
        self._logs = stream.logs

    def rewind(self, floor: Sequence[int], share: float = 0.7) -> None:
        """An offset reset (rebalance with lost commits): about ``share`` of the partitions restart at a
        random offset between ``floor[p]`` and their committed offset."""
        for p in range(self.stream.partitions):
            if self.rng.random() < share and self.committed[p] > floor[p]:
                self.committed[p] = self.rng.randint(floor[p], self.committed[p] - 1)
                self.stats.rewinds += 1

    def consume(
        self,
        until: Sequence[int],
        *,
        partial: bool,
        cut: str = "any",
        max_batch: int = 40,
        fault_rate: float = 0.0,
        lost_commit_rate: float = 0.0,
        cold_start_rate: float = 0.0,
        first_faulted: int = 0,
        max_invocations: int = 400,
    ) -> None:
        """Deliver until every partition ``p`` is committed up to ``until[p]``.

        ``cut``: "mixed" (each event takes a random number of records from each of a random set of
        partitions, in random key order), "per_partition" (one partition per event, the partitions
        taken in a random order, reshuffled each round) or "any" (either, at random per invocation).
        ``partial``: the function reports batch item failures (REPORT_BATCH_ITEM_FAILURES must agree).
        A fault is armed with probability ``fault_rate`` (never more than 3 invocations in a row), and
        for the ``first_faulted`` invocations that write something whatever the rate.
        """
        rng = self.rng
        failed: dict[int, tuple[int, int]] | None = None  # the spans of the last function error
        queue: list[int] = []
        consecutive_faults = 0
        for _ in range(max_invocations):
            pending = [p for p in range(self.stream.partitions) if self.committed[p] < until[p]]
            if not pending:
                return
            style = cut if cut != "any" else rng.choice(("mixed", "per_partition"))
            for _attempt in range(10):  # a retry is cut differently (when it can be)
                if style == "per_partition":
                    if failed is not None and len(failed) == 1 and next(iter(failed)) in pending:
                        chosen = list(failed)  # that partition is blocked until it succeeds
                    else:
                        queue = [p for p in queue if p in pending] or rng.sample(pending, len(pending))
                        chosen = [queue.pop(0)]
                else:
                    chosen = rng.sample(pending, rng.randint(1, len(pending)))
                spans = {
                    p: (self.committed[p], min(until[p], self.committed[p] + rng.randint(1, max_batch)))
                    for p in chosen
                }
                if spans != failed:
                    break
            if self.new_container is not None and rng.random() < cold_start_rate:
                self.new_container()
                self.stats.cold_starts += 1
            fault = None
            forced = first_faulted > 0
            if self.faults is not None and (forced or (consecutive_faults < 3 and rng.random() < fault_rate)):
                fault = self.faults.arm(rng, self.lines(spans))
            if fault is not None:
                self.stats.faults_armed += 1
                consecutive_faults += 1
                first_faulted -= 1
            else:
                consecutive_faults = 0
            failed = self._deliver(spans, fault, partial, lost_commit_rate)
        raise AssertionError(
            f"{self.label} not consumed after {max_invocations} invocations: committed "
            f"{self.committed}, until {list(until)}; {self.stats.describe()}"
        )

    def lines(self, spans: dict[int, tuple[int, int]]) -> int:
        """How many distinct lines the records of ``spans`` make (identical ones are written once)."""
        expected = self.stream.expected
        return len(
            {
                expected[r.value]
                for p, (first, end) in spans.items()
                for r in self._logs[p][first:end]
                if r.value in expected and not self.not_written(r)
            }
        )

    def _deliver(
        self, spans: dict[int, tuple[int, int]], fault: str | None, partial: bool, lost_commit_rate: float
    ) -> dict[int, tuple[int, int]] | None:
        """One invocation; commits what the mapping would; returns ``spans`` if the function failed."""
        order = list(spans)
        self.rng.shuffle(order)
        event = self.stream.event(spans, order)
        records = sum(b - a for a, b in spans.values())
        self.stats.invocations += 1
        self.stats.records_delivered += records
        try:
            try:
                result = self.invoke(event)
            finally:
                if self.faults is not None and fault is not None:
                    self.faults.clear()
        except self.expected_errors as exc:
            if fault is None:
                raise AssertionError(
                    f"{self.label} the function failed without a fault armed: {exc!r}"
                ) from exc
            self.stats.errors += 1
            self.history.append(Invocation(spans, records, fault, "error", error=repr(exc)))
            return spans
        summary = result["summary"]
        assert accounted(summary), f"{self.label} the invocation's accounting does not balance: {summary}"
        failures = result.get("batchItemFailures") or []
        invocation = Invocation(
            spans, records, fault, "partial" if failures else "ok", summary, None, failures
        )
        self.history.append(invocation)
        self.stats.quarantined.update(summary.get("quarantined_by_reason") or {})
        if self.check is not None:
            self.check(invocation)
        assert fault is None or failures, f"{self.label} a flush fault ({fault}) failed nothing: {summary}"
        if failures:
            assert partial, f"{self.label} batch item failures without partial batch responses: {failures}"
            self.stats.partial += 1
            reported = {}
            for item in failures:
                key, offset = item["itemIdentifier"]["partition"], item["itemIdentifier"]["offset"]
                p = next(p for p in spans if self.stream.key(p) == key)
                assert spans[p][0] <= offset < spans[p][1], f"{self.label} {item} outside {spans}"
                reported[p] = offset
            for p, (_, end) in spans.items():
                self.committed[p] = reported.get(p, end)
            return None
        if self.rng.random() < lost_commit_rate:
            self.stats.lost_commits += 1  # processed, but the commit never reached Kafka
            return None
        for p, (_, end) in spans.items():
            self.committed[p] = end
        return None


# ------------------------------------------------------------------------------------ the oracle

Points = dict[str, list[dict[str, Any]]]  # measurement -> points as InfluxDB1Server.points() gives them
PointKey = tuple[str, tuple[tuple[str, str], ...], int]


def point_key(measurement: str, tags: dict[str, str], time: int) -> PointKey:
    return measurement, tuple(sorted(tags.items())), time


def expected_points(expected: dict[bytes, str]) -> dict[bytes, ParsedLine]:
    return {value: parse_line(line) for value, line in expected.items()}


def check_records(stored: Points, expected: dict[bytes, str], *, limit: int = 8) -> list[str]:
    """Per distinct record (value -> its own line): its point is stored exactly (same measurement,
    tags, time and fields), and the store holds no other point. Returns the problems (empty: none)."""
    index: dict[PointKey, list[dict[str, Any]]] = {}
    for points in stored.values():
        for point in points:
            index.setdefault(point_key(point["measurement"], point["tags"], point["time"]), []).append(point)
    problems: list[str] = []
    wanted: set[PointKey] = set()
    for value, want in expected_points(expected).items():
        key = point_key(want.measurement, want.tags, want.timestamp)
        wanted.add(key)
        got = index.get(key)
        if not got:
            problems.append(f"missing the point of record {value[:120]!r}: {expected[value]}")
        elif len(got) > 1 or got[0]["fields"] != want.fields:
            problems.append(f"record {value[:120]!r}: expected fields {want.fields}, stored {got}")
    extra = [points for key, points in index.items() if key not in wanted]
    total = sum(len(points) for points in stored.values())
    if total != len(expected) or extra:
        problems.append(
            f"{total} points stored for {len(expected)} distinct records; {len(extra)} stored points "
            f"belong to no record, e.g. {extra[:3]}"
        )
    return problems[:limit] + ([f"... {len(problems) - limit} more"] if len(problems) > limit else [])


def diff_point_sets(got: Points, want: Points, *, limit: int = 6) -> list[str]:
    """Differences between two stored point sets (empty: equal)."""
    problems = []
    for measurement in sorted(set(got) | set(want)):
        a = {point_key(p["measurement"], p["tags"], p["time"]): p for p in got.get(measurement, [])}
        b = {point_key(p["measurement"], p["tags"], p["time"]): p for p in want.get(measurement, [])}
        only_got = [a[k] for k in a.keys() - b.keys()]
        only_want = [b[k] for k in b.keys() - a.keys()]
        differ = [(a[k], b[k]) for k in a.keys() & b.keys() if a[k] != b[k]]
        if only_got or only_want or differ or len(a) != len(got.get(measurement, [])):
            problems.append(
                f"{measurement}: {len(a)} vs {len(b)} points; {len(only_got)} extra, e.g. {only_got[:2]}; "
                f"{len(only_want)} missing, e.g. {only_want[:2]}; {len(differ)} differ, e.g. {differ[:2]}"
            )
    return problems[:limit]
