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
  next ``failures`` fail: "InfluxDB went down after the first chunks".
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from refinery.devtools.faultproxy import FaultProxy
from refinery.devtools.samples import sample_envelopes
from refinery.devtools.servers import InfluxDB1Server
from refinery.metadata.snapshot import AppInfo, encode_snapshot
from refinery.metadata.store import MetadataStore, SnapshotSource
from refinery.pipeline import Transformed, transform_batch
from refinery.quarantine import decode_records

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


def expected_lines(event: dict[str, Any], snapshot: bytes) -> Transformed:
    """The batch through the pure transform with ``snapshot``: lines, quarantine and origins, no I/O."""
    store = MetadataStore(BytesSnapshotSource(snapshot), live_max=0)
    store.begin_invocation()
    return transform_batch(event, store)


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
