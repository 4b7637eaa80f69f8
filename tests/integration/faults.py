"""Helpers of the fault suite (``test_fault_suite.py``): batches, expected points, mapping emulation.

* :func:`make_values` templates the six bundled nozzle envelopes into many distinct records of several
  apps (distinct timestamps, instances, sizes), remembering for each record what it must become;
* :func:`expected_lines` computes, independently of any fault, the lines a batch must produce (the
  pipeline's pure transform over the same snapshot, no sink), and :func:`reference_points` lets the real
  InfluxDB parse them in a scratch database, so that the comparison with what the faulty run stored is
  exact (same parser, same float and tag handling);
* :func:`deliver` emulates the event source mapping: invoke, and on an exception invoke again (bounded);
  :func:`deliver_partial` does the same with partial batch responses (re-sending only the records from
  the reported offsets on);
* :func:`pass_then_fail` arms the fault proxy so that the first ``passes`` requests get through and the
  next ``failures`` fail: "InfluxDB went down after the first chunks";
* :class:`Stack` is the enricher's environment in front of a real InfluxDB (through a :class:`FaultProxy`)
  and moto S3 (:func:`make_stack`), shared by the fault suite and the point identity tests;
* :class:`RecordOracle` computes, per record and independently of any batch, the point the record must
  become (its own line, its time stamped by :mod:`refinery.identity`), and :func:`assert_each_record_once`
  checks per record that InfluxDB holds it exactly once; :func:`twin` makes a distinct record of the same
  series and event time (the hazard of a point identity that depends on the batch).
"""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import orjson
import pytest

from refinery.batch import BatchPoints
from refinery.convert import Dropped, convert
from refinery.identity import DEFAULT_DIGITS, stamp_line
from refinery.metadata.snapshot import AppInfo, encode_snapshot
from refinery.metadata.store import MetadataStore, SnapshotSource
from refinery.pipeline import convert_batch
from refinery.quarantine import decode_records
from refinery_tools.dev.samples import sample_envelopes
from refinery_tools.dev.servers import InfluxDB1Server
from support.faultproxy import FaultProxy

MEASUREMENTS = ("http_request", "log", "instance")
#: 2018-09-21 (the samples' week) and 2017-07-14: InfluxDB 1.x keeps field types per shard, and the
#: default retention policy's shards span 7 days, so a field type seeded in week B conflicts only there.
WEEK_A_NS = 1_537_510_364_000_000_000
WEEK_B_NS = 1_500_000_000_000_000_000

#: Template index in ``sample_envelopes()`` per kind.
TEMPLATES = {"http": 0, "log": 1, "rtr": 2, "container": 3, "value": 4, "counter": 5}
KINDS = ("http", "log", "rtr", "container", "value", "counter")
POINT_KINDS = frozenset({"http", "log", "rtr", "container"})


def make_apps(count: int, seed: int = 7) -> dict[str, AppInfo]:
    """Deterministic apps in two orgs and three spaces."""
    apps = {}
    for i in range(count):
        guid = str(uuid.UUID(int=(seed << 96) + i + 1, version=4))
        org = i % 2
        space = i % 3
        apps[guid] = AppInfo(
            guid,
            f"app-{i}",
            str(uuid.UUID(int=(seed << 96) + 1000 + space, version=4)),
            f"space-{space}",
            str(uuid.UUID(int=(seed << 96) + 2000 + org, version=4)),
            f"org-{org}",
        )
    return apps


def snapshot_of(apps: dict[str, AppInfo]) -> bytes:
    return encode_snapshot(apps, "https://api.sys.example.com", datetime(2018, 9, 21, tzinfo=UTC))


def uuid_pair(guid: str) -> dict[str, int]:
    """The sonde-go ``{"low", "high"}`` form of a GUID (each half little-endian)."""
    raw = bytes.fromhex(guid.replace("-", ""))
    return {"low": int.from_bytes(raw[:8], "little"), "high": int.from_bytes(raw[8:], "little")}


@dataclass
class Generated:
    """Nozzle values and, per value, its kind and app (what it must become)."""

    values: list[bytes] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    guids: list[str] = field(default_factory=list)

    def __add__(self, other: Generated) -> Generated:
        return Generated(self.values + other.values, self.kinds + other.kinds, self.guids + other.guids)


def make_values(
    count: int,
    guids: Sequence[str],
    *,
    start_ns: int = WEEK_A_NS,
    step_ns: int = 1_000,
    kinds: Sequence[str] = KINDS,
    salt: int = 0,
) -> Generated:
    """``count`` distinct envelopes cycling through ``kinds`` and ``guids``; timestamps never repeat."""
    templates = [orjson.loads(v) for v in sample_envelopes()]
    out = Generated()
    for i in range(count):
        kind = kinds[i % len(kinds)]
        guid = guids[(i // len(kinds)) % len(guids)]
        ts = start_ns + i * step_ns
        env = copy.deepcopy(templates[TEMPLATES[kind]])
        env["timestamp"] = ts + 7
        if kind == "http":
            body = env["httpStartStop"]
            body["startTimestamp"] = ts
            body["stopTimestamp"] = ts + 1_000_000 + 997 * (i + salt)
            body["applicationId"] = uuid_pair(guid)
            body["instanceIndex"] = i % 3
            body["contentLength"] = 100 + i + salt
            body["statusCode"] = (200, 201, 404, 500)[i % 4]
        elif kind in ("log", "rtr"):
            body = env["logMessage"]
            body["timestamp"] = ts
            body["app_id"] = guid
            body["source_instance"] = str(i % 3)
            body["message_type"] = 1 + (i % 2) if kind == "log" else 1
        elif kind == "container":
            env["timestamp"] = ts
            body = env["containerMetric"]
            body["applicationId"] = guid
            body["instanceIndex"] = i % 3
            body["memoryBytes"] = 100_000_000 + 4096 * (i + salt)
            body["cpuPercentage"] = 0.25 + i / 1000
        out.values.append(orjson.dumps(env))
        out.kinds.append(kind)
        out.guids.append(guid)
    return out


# --------------------------------------------------------------------------------- expected points


class BytesSnapshotSource(SnapshotSource):
    """A snapshot held in memory (for computing expectations without S3)."""

    description = "memory"

    def __init__(self, data: bytes):
        self.data = data

    def fetch(self, etag: str | None) -> tuple[bytes | None, str | None]:
        return (None, etag) if etag == "fixed" else (self.data, "fixed")


def expected_lines(event: dict[str, Any], snapshot: bytes) -> BatchPoints:
    """The batch through the pure transform with ``snapshot``: lines, quarantine and origins, no I/O."""
    store = MetadataStore(BytesSnapshotSource(snapshot), live_max=0)
    store.begin_invocation()
    return convert_batch(event, store)


def stored(influx: InfluxDB1Server, db: str) -> dict[str, list[dict[str, Any]]]:
    return {m: influx.points(db, m) for m in MEASUREMENTS}


def reference_points(influx: InfluxDB1Server, lines: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """What InfluxDB stores for exactly ``lines`` written once, without faults (scratch database)."""
    name = f"ref_{uuid.uuid4().hex[:12]}"
    influx.create_database(name)
    try:
        body = "\n".join(lines)
        if body:
            influx.write(name, body)
        return stored(influx, name)
    finally:
        influx.drop_database(name)


def count_points(points: dict[str, list[dict[str, Any]]]) -> int:
    return sum(len(v) for v in points.values())


# ------------------------------------------------------------------------------ mapping emulation


def accounted(summary: dict[str, Any]) -> bool:
    """The invocation's accounting equation."""
    return summary["records_in"] == (
        summary["written"] + summary["dropped"] + summary["quarantined"] + summary.get("redelivered", 0)
    )


@dataclass
class Attempt:
    seconds: float
    result: dict[str, Any] | None = None
    error: BaseException | None = None


@dataclass
class Delivery:
    attempts: list[Attempt]

    @property
    def result(self) -> dict[str, Any]:
        last = self.attempts[-1].result
        assert last is not None
        return last

    @property
    def summary(self) -> dict[str, Any]:
        return self.result["summary"]

    @property
    def errors(self) -> list[BaseException]:
        return [a.error for a in self.attempts if a.error is not None]

    @property
    def summaries(self) -> list[dict[str, Any]]:
        return [a.result["summary"] for a in self.attempts if a.result is not None]


def deliver(
    invoke: Callable[..., dict[str, Any]],
    event: dict[str, Any],
    *,
    timeout: float = 10.0,
    tries: int = 10,
    recover: Callable[[int, BaseException], None] | None = None,
) -> Delivery:
    """The event source mapping: invoke until the handler returns (at most ``tries`` times).

    ``recover(attempt, error)`` runs after each failed attempt (e.g. to clear the fault). Every
    successful invocation's summary must balance.
    """
    attempts: list[Attempt] = []
    for number in range(1, tries + 1):
        started = time.monotonic()
        try:
            result = invoke(event, timeout=timeout)
        except Exception as exc:
            attempts.append(Attempt(time.monotonic() - started, error=exc))
            if recover is not None:
                recover(number, exc)
            continue
        attempts.append(Attempt(time.monotonic() - started, result=result))
        assert accounted(result["summary"]), result["summary"]
        return Delivery(attempts)
    raise AssertionError(f"the batch never succeeded in {tries} tries: {[a.error for a in attempts]}")


def records_from(event: dict[str, Any], failures: list[dict[str, Any]]) -> dict[str, Any]:
    """What the mapping sends again after partial batch failures: per reported partition, the records
    at or after the reported offset (other partitions are committed)."""
    first = {f["itemIdentifier"]["partition"]: f["itemIdentifier"]["offset"] for f in failures}
    records = {
        key: [r for r in batch if r["offset"] >= first[key]]
        for key, batch in event["records"].items()
        if key in first
    }
    return {**event, "records": records}


def deliver_partial(
    invoke: Callable[..., dict[str, Any]],
    event: dict[str, Any],
    *,
    timeout: float = 10.0,
    tries: int = 10,
    recover: Callable[[int, dict[str, Any] | BaseException], None] | None = None,
) -> list[tuple[dict[str, Any], dict[str, Any] | BaseException]]:
    """The mapping with ReportBatchItemFailures: (event, result or error) of each invocation until one
    reports no failure. Reported failures: only the records from the reported offsets on are sent
    again; a function error: the whole batch is sent again. ``recover(attempt, outcome)`` runs after
    each unsuccessful invocation."""
    done: list[tuple[dict[str, Any], dict[str, Any] | BaseException]] = []
    for number in range(1, tries + 1):
        try:
            result = invoke(event, timeout=timeout)
        except Exception as exc:
            done.append((event, exc))
            if recover is not None:
                recover(number, exc)
            continue
        assert accounted(result["summary"]), result["summary"]
        done.append((event, result))
        if not result["batchItemFailures"]:
            return done
        if recover is not None:
            recover(number, result)
        event = records_from(event, result["batchItemFailures"])
    raise AssertionError(f"partial failures after {tries} tries")


# ------------------------------------------------------------------------------------ fault proxy


def pass_then_fail(proxy: FaultProxy, passes: int, failures: int, status: int = 503) -> None:
    """Let the next ``passes`` requests through, then fail ``failures`` requests with ``status``.

    FaultProxy pops one entry of its failure queue per request and forwards the request when the entry
    is None, so ``None`` entries are pass-throughs (FaultProxy has no public "after k requests").
    """
    with proxy._lock:
        proxy._failures.extend([None] * passes)  # type: ignore[list-item]
        proxy._failures.extend((status, {}, f"injected {status}".encode()) for _ in range(failures))


def requests_to_isolate(size: int, bad: set[int], first: int = 0) -> int:
    """Requests the sink spends on a chunk of ``size`` lines whose lines ``bad`` are refused
    (binary splitting, as documented in refinery.sinks.base)."""
    if not any(first <= b < first + size for b in bad):
        return 1
    if size == 1:
        return 1
    middle = size // 2
    return (
        1 + requests_to_isolate(middle, bad, first) + requests_to_isolate(size - middle, bad, first + middle)
    )


def quarantine_objects(s3: Any, bucket: str, prefix: str = "quarantine/") -> dict[str, bytes]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            out[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def quarantined_records(objects: dict[str, bytes]) -> list[dict[str, Any]]:
    return [r for key in sorted(objects) for r in decode_records(objects[key])]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# ------------------------------------------------------------------------------------------ stack

APPS = make_apps(5)
GUIDS = list(APPS)
SNAPSHOT = snapshot_of(APPS)
BATCH_SIZE = 50
KEY = "metadata/apps.json.gz"
CLEARED_ENV = (
    "METADATA_FILE",
    "METADATA_KEY",
    "QUARANTINE_BUCKET",
    "QUARANTINE_PREFIX",
    "INFLUX_TOKEN",
    "INFLUX_ORG",
    "INFLUX_BUCKET",
    "INFLUX_USERNAME",
    "INFLUX_PASSWORD",
    "INFLUX_RETENTION_POLICY",
    "CF_API_URL",
    "CF_CLIENT_ID",
    "CF_CLIENT_SECRET",
    "CF_UAA_URL",
    "REPORT_BATCH_ITEM_FAILURES",
    "MAX_RECORD_AGE_SECONDS",
    "LIVE_LOOKUP_MAX",
    "LIVE_LOOKUP_BUDGET",
    "TIMESTAMP_HASH_DIGITS",
)


@dataclass
class Stack:
    """The enricher's environment: InfluxDB 1.x behind ``proxy``, the snapshot and quarantine in moto S3."""

    influx: InfluxDB1Server
    db: str
    proxy: FaultProxy
    bucket: str
    monkeypatch: pytest.MonkeyPatch
    snapshot: bytes = SNAPSHOT

    @property
    def s3(self) -> Any:
        return boto3.client("s3")

    def put_snapshot(self, data: bytes | None = None) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=KEY, Body=self.snapshot if data is None else data)

    def points(self) -> dict[str, list[dict[str, Any]]]:
        return stored(self.influx, self.db)

    def expected(
        self, event: dict[str, Any], snapshot: bytes | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """What one clean delivery of ``event`` stores (the pure transform, parsed by the same InfluxDB)."""
        return reference_points(self.influx, expected_lines(event, snapshot or self.snapshot).lines)

    def quarantine(self, bucket: str | None = None) -> dict[str, bytes]:
        return quarantine_objects(self.s3, bucket or self.bucket)

    def seed_conflict(self) -> None:
        """``response_size`` as a string in week B's shard: later integer writes there conflict."""
        self.influx.write(self.db, f'http_request,app=seed response_size="text" {WEEK_B_NS - 1}')

    def setenv(self, **values: str) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)


def make_stack(
    monkeypatch: pytest.MonkeyPatch,
    influx: InfluxDB1Server,
    db: str,
    proxy: FaultProxy,
    bucket: str,
    snapshot: bytes = SNAPSHOT,
) -> Stack:
    """The enricher's settings pointing at ``proxy`` (InfluxDB) and ``bucket`` (snapshot, quarantine)."""
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INFLUX_URL", proxy.url)
    monkeypatch.setenv("INFLUX_DATABASE", db)
    monkeypatch.setenv("METADATA_BUCKET", bucket)
    monkeypatch.setenv("INFLUX_BATCH_SIZE", str(BATCH_SIZE))
    # Chunks one by one: most scenarios count the requests in the order they arrive. Those that
    # set INFLUX_WRITE_CONCURRENCY also run with several chunks in flight at once (the default is 2).
    monkeypatch.setenv("INFLUX_WRITE_CONCURRENCY", "1")
    monkeypatch.setenv("INFLUX_TIMEOUT", "1s")
    monkeypatch.setenv("FLUSH_TIME_RESERVE", "1s")
    monkeypatch.setenv("INFLUX_MAX_RETRY_WAIT", "500ms")
    monkeypatch.setenv("SNAPSHOT_CHECK_INTERVAL", "100ms")
    s = Stack(influx, db, proxy, bucket, monkeypatch, snapshot)
    s.put_snapshot()
    return s


# ------------------------------------------------------------------------------ line protocol

#: (measurement, sorted tags, sorted fields, time): a point as written or as read back.
Point = tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, Any], ...], int]
#: (measurement, sorted tags, time): what InfluxDB identifies a point by.
Identity = tuple[str, tuple[tuple[str, str], ...], int]


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quotes and not escaped by a backslash."""
    parts, current, quoted, i = [], [], False, 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ' ,="\\':
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _field(value: str) -> Any:
    if value.endswith("i"):
        return int(value[:-1])
    if value.startswith('"'):
        return _unescape(value[1:-1])
    if value in ("t", "T", "true", "True", "f", "F", "false", "False"):
        return value[0] in "tT"
    return float(value)


def parse_line(line: str) -> Point:
    key, fields, stamp = _split(line, " ")
    measurement, *tags = _split(key, ",")
    tag_pairs = tuple(sorted((_unescape(k), _unescape(v)) for k, v in (_split(t, "=") for t in tags)))
    field_pairs = tuple(
        sorted((_unescape(k), _field(v)) for k, v in (_split(f, "=") for f in _split(fields, ",")))
    )
    return (_unescape(measurement), tag_pairs, field_pairs, int(stamp))


def identity_of(point: Point) -> Identity:
    return point[0], point[1], point[3]


def stored_points(influx: InfluxDB1Server, db: str) -> Counter[Point]:
    """Every point of the database's measurements, in the form of :func:`parse_line`."""
    points: Counter[Point] = Counter()
    for measurement in MEASUREMENTS:
        for p in influx.points(db, measurement):
            points[
                (measurement, tuple(sorted(p["tags"].items())), tuple(sorted(p["fields"].items())), p["time"])
            ] += 1
    return points


# ----------------------------------------------------------------------------- point identity


class RecordOracle:
    """What each record must become, computed from the record alone (never from a batch): the line of
    its envelope over the snapshot, its time's last ``digits`` digits from its bytes (refinery.identity)."""

    def __init__(self, snapshot: bytes = SNAPSHOT, digits: int = DEFAULT_DIGITS):
        self.store = MetadataStore(BytesSnapshotSource(snapshot), live_max=0)
        self.store.begin_invocation()
        self.modulus = 10**digits

    def line(self, value: bytes) -> str | None:
        """The record's line, or None when it is dropped by policy."""
        outcome = convert(orjson.loads(value), self.store.lookup)
        if isinstance(outcome, Dropped):
            return None
        return stamp_line(outcome[0], outcome[1], value, self.modulus)[0]

    def point(self, value: bytes) -> Point | None:
        line = self.line(value)
        return None if line is None else parse_line(line)

    def identity(self, value: bytes) -> Identity:
        point = self.point(value)
        assert point is not None, f"not a point: {describe(value)}"
        return identity_of(point)

    def points(self, values: Iterable[bytes]) -> dict[bytes, Point]:
        """The point of each distinct record that makes one (byte-identical records are one record)."""
        out: dict[bytes, Point] = {}
        for value in values:
            if value not in out:
                point = self.point(value)
                if point is not None:
                    out[value] = point
        return out


def describe(value: bytes) -> str:
    env = orjson.loads(value)
    body = env.get("httpStartStop") or env.get("logMessage") or env.get("containerMetric") or {}
    at = body.get("startTimestamp") or body.get("timestamp") or env.get("timestamp")
    return f"<eventType {env.get('eventType')} at {at}, {len(value)} bytes: {value[:60]!r}…>"


def assert_distinct_identities(values: Iterable[bytes], oracle: RecordOracle, what: str) -> None:
    """Precondition: distinct records that make points have distinct identities (no hash collision)."""
    by_identity: dict[Identity, list[bytes]] = {}
    for value, point in oracle.points(values).items():
        by_identity.setdefault(identity_of(point), []).append(value)
    clashes = [[describe(v) for v in group] for group in by_identity.values() if len(group) > 1]
    assert not clashes, (
        f"precondition failed: {len(clashes)} group(s) of {what} collide by hash (same series and identity"
        f" time, a 1 in 10**digits chance): choose other records. {clashes[:3]}"
    )


def assert_each_record_once(got: Counter[Point], values: Iterable[bytes], oracle: RecordOracle) -> None:
    """Per record: every distinct record that makes a point is stored exactly once, as its own point (not
    lost, not overwritten by another record's fields, not also stored at another time); nothing else."""
    expected = oracle.points(values)
    at: dict[Identity, list[Point]] = {}
    for point in got:
        at.setdefault(identity_of(point), []).append(point)
    problems = []
    for number, (value, point) in enumerate(expected.items()):
        if got[point] == 1:
            continue
        there = at.get(identity_of(point), [])
        state = "lost" if not there else "overwritten" if got[point] == 0 else f"stored {got[point]} times"
        problems.append(f"record #{number} {describe(value)}: {state} (stored at its identity: {there})")
    extra = got - Counter(expected.values())
    assert not problems and not extra, (
        f"{len(problems)} of {len(expected)} distinct record(s) not stored exactly once,"
        f" {sum(extra.values())} point(s) that no record makes; e.g. {problems[:3]}, extra {list(extra)[:3]}"
    )


def twin(value: bytes, variant: int = 1, *, same_fields: bool = False) -> bytes:
    """Another event of the same series at the same event time: another request of the instance (another
    requestId), another log line, another sample. With ``same_fields`` its line is the same as the
    original's (only its bytes differ: a log line of the same length, a request with equal fields)."""
    env = orjson.loads(value)
    if "httpStartStop" in env:
        body = env["httpStartStop"]
        request = body.get("requestId") or {"low": 0, "high": 0}
        body["requestId"] = {"low": request["low"] ^ variant, "high": request["high"]}
        if not same_fields:
            body["contentLength"] = body.get("contentLength", 0) + variant
    elif "logMessage" in env:
        body = env["logMessage"]
        message = base64.b64decode(body["message"])
        if same_fields:
            message = (f"<{variant}>".encode() + message)[: len(message)]
        else:
            message += f" (twin {variant})".encode()
        body["message"] = base64.b64encode(message).decode()
    elif "containerMetric" in env:
        if same_fields:
            env["index"] = f"{env.get('index', '')}-twin-{variant}"
        else:
            env["containerMetric"]["memoryBytes"] += 4096 * variant
    else:
        raise ValueError(f"no twin for {describe(value)}")
    made = orjson.dumps(env)
    assert made != value
    return made


def twin_apart(
    value: bytes, oracle: RecordOracle, taken: set[Identity], *, same_fields: bool = False
) -> bytes:
    """:func:`twin` with the first variant whose identity is not in ``taken`` (then added to it)."""
    for variant in range(1, 100):
        made = twin(value, variant, same_fields=same_fields)
        identity = oracle.identity(made)
        if identity not in taken:
            taken.add(identity)
            return made
    raise AssertionError(f"no twin of {describe(value)} with an identity of its own")


def event_values(event: dict[str, Any]) -> list[bytes]:
    """The records' values (nozzle bytes) of a Kafka event, partition by partition."""
    return [base64.b64decode(r["value"]) for batch in event["records"].values() for r in batch]


def printed_result(stderr: str) -> dict[str, Any]:
    """The handler's result, printed (indented JSON) on stderr after the logs by --dry-run."""
    lines = stderr.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))
