"""``refinery bench``: the performance figures of the enricher, measured in one run.

Every figure is a ratio against a baseline measured **in the same run, interleaved with it** (the
machine is noisy and absolute times drift): each round runs ours and the baseline back to back, in
alternating order, after a warm-up. CPU-bound in-process figures take the minimum over the rounds
(noise only ever adds time) with the garbage collector off during the timed call; figures that
involve servers, subprocesses or the garbage collector's real work take the median.

Figures (see ``docs/performance.md``, which ``--write-doc`` rewrites):

1. core cost per record (decode, enrich, transform, serialise) against the decode floor;
2. the same against a straightforward influxdb-client ``Point`` implementation;
3. end to end through the real handler into a real InfluxDB 1.x, against core cost + raw POST;
4. cold start: INIT + first invoke of the built functions in an emulation of Lambda (at 512 MB and
   one full core), against an empty function's (:mod:`refinery_tools.dev.coldstart`);
5. peak memory growth for a maximum-size (6 MiB) batch in a fresh interpreter;
6. metadata at 100 000 apps: refresh through a fake Cloud Controller into moto S3, snapshot size,
   snapshot load, lookup cost at 100 000 against 1 000 apps;
7. cost per 10^9 records on Lambda against an always-on Fargate task.

The batches are synthetic but in the nozzle's exact wire format (:func:`nozzle_json` reproduces
the bundled samples byte for byte): compact JSON, easyjson key order and escaping, Go float format.

Usage: ``refinery bench [--quick] [--skip-servers] [--write-doc | --output PATH] [--profile]``. The
exit code is 0 when every target is met, 3 when one is missed, 1 when a measurement failed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import cProfile
import datetime as dt
import functools
import gc
import gzip
import io
import json
import logging
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pybase64

from refinery import speedups
from refinery.batch import BatchPoints
from refinery.metadata.snapshot import AppInfo, encode_snapshot
from refinery.metadata.store import MetadataStore
from refinery.pipeline import convert_batch
from refinery_tools.dev.environ import patched_environ
from refinery_tools.dev.samples import sample_envelopes, sample_snapshot
from refinery_tools.dev.workload import (
    CC_SECRET,
    MIB,
    SNAPSHOT_SOURCE,
    SNAPSHOT_TIME,
    BytesSnapshotSource,
    Workload,
    build_workload,
    fake_cloud_controller,
    foundation_for,
    max_size_event,
    mib,
    new_store,
    nozzle_json,
    num,
    snapshot_of,
    start_invocation,
)
from refinery_tools.events import build_kafka_event

# ------------------------------------------------------------------------------------------ settings

#: The largest batch an event source mapping hands to a function (the invocation payload limit).
MAX_EVENT_BYTES = 6 * MIB
#: AWS Lambda, x86, us-east-1: price per GB-second and per request.
LAMBDA_GB_SECOND_USD = 0.0000166667
LAMBDA_REQUEST_USD = 0.20 / 1_000_000
LAMBDA_MEMORY_MB = 512
#: Lambda gives a function one full vCPU at 1 769 MB and CPU in proportion to memory below that.
LAMBDA_MB_PER_VCPU = 1769
#: AWS Fargate, Linux x86, us-east-1: 0.5 vCPU ($0.04048/vCPU-h) + 1 GB ($0.004445/GB-h).
FARGATE_TASK_USD_PER_HOUR = 0.0247
FARGATE_TASK_VCPU = 0.5
HOURS_PER_MONTH = 730
RECORDS_PRICED = 1_000_000_000

TARGET_CORE_VS_FLOOR = 1.5
TARGET_SPEEDUP_VS_POINT = 4.0
TARGET_SAME_TIME = 2.0
TARGET_ROUTING = 1.10  # tenant routing with 10 routes, per record, against routing off
ROUTING_LABEL = "metrics.example.com/database"
TARGET_END_TO_END = 1.3
TARGET_COLD_ENRICHER_S = 1.0  # INIT + first invoke at 512 MB, in the Lambda emulation
TARGET_COLD_ENRICHER_FULL_S = 0.4  # the same at 1769 MB (one full core)
TARGET_COLD_REFRESH_S = 1.5  # the refresh function at 512 MB
TARGET_MEMORY_VS_PAYLOAD = 3.0
TARGET_REFRESH_S = 10.0
TARGET_SNAPSHOT_LOAD_S = 0.250
TARGET_LOOKUP_FLAT = 1.5

SNAPSHOT_KEY = "metadata/apps.json.gz"
REFRESH_KEY = "bench/large-foundation/apps.json.gz"


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; ``--quick`` uses :data:`QUICK`."""

    label: str
    records: int  # records in the core / end-to-end batch
    snapshot_apps: int  # apps in that batch's snapshot
    active_apps: int  # distinct apps sending in that batch (Zipf-like traffic)
    rounds: int  # interleaved rounds: core against the decode floor
    point_rounds: int  # interleaved rounds: core against the Point baseline
    e2e_rounds: int
    cold_runs: int
    memory_event_bytes: int
    metadata_apps: int
    lookup_small_apps: int
    lookup_distinct: int  # apps looked up per invocation in the lookup figure
    lookup_calls: int
    lookup_rounds: int
    load_rounds: int
    refresh_rounds: int


FULL = Sizes(
    label="full",
    records=10_000,
    snapshot_apps=1_000,
    active_apps=400,
    rounds=11,
    point_rounds=5,
    e2e_rounds=7,
    cold_runs=9,
    memory_event_bytes=MAX_EVENT_BYTES,
    metadata_apps=100_000,
    lookup_small_apps=1_000,
    lookup_distinct=1_000,
    lookup_calls=100_000,
    lookup_rounds=9,
    load_rounds=5,
    refresh_rounds=2,
)
QUICK = Sizes(
    label="quick",
    records=2_000,
    snapshot_apps=500,
    active_apps=200,
    rounds=3,
    point_rounds=2,
    e2e_rounds=2,
    cold_runs=3,
    memory_event_bytes=1 * MIB,
    metadata_apps=10_000,
    lookup_small_apps=1_000,
    lookup_distinct=500,
    lookup_calls=20_000,
    lookup_rounds=3,
    load_rounds=2,
    refresh_rounds=1,
)


# ------------------------------------------------------------------------------------ the table rows

PASS, MISS, INFO, SKIP, ERROR = "PASS", "MISS", "INFO", "SKIP", "ERROR"


@dataclass
class Row:
    key: str
    name: str
    ours: str = "—"
    baseline: str = "—"
    ratio: float | None = None
    target: str = "—"
    status: str = SKIP
    server: bool = False
    how: str = ""

    @property
    def ratio_text(self) -> str:
        return "—" if self.ratio is None else f"{self.ratio:.2f}×"


#: Every row, in the order of the table: (key, name, needs servers).
ROWS: tuple[tuple[str, str, bool], ...] = (
    ("core_floor", "1. core cost per record vs decode floor", False),
    ("core_point", "2. core cost per record vs influxdb-client Point", False),
    ("same_time", "2b. one series at one timestamp vs distinct timestamps", False),
    ("routing", "2c. tenant routing on (10 routes) vs off, per record", False),
    ("e2e", "3. end to end: handler → InfluxDB 1.x (gzip on, default)", True),
    ("e2e_plain", "3b. end to end: handler → InfluxDB 1.x (INFLUX_GZIP=false)", True),
    ("cold_start", "4. cold start, enricher at 512 MB (Lambda emulated)", False),
    ("cold_start_full", "4b. cold start, enricher at full core (1769 MB)", False),
    ("cold_start_refresh", "4c. cold start, metadata refresh at 512 MB", False),
    ("memory", "5. peak memory growth, max-size batch", False),
    ("refresh", "6a. metadata refresh (fake CC → moto S3)", True),
    ("snapshot_size", "6b. snapshot size", False),
    ("snapshot_load", "6c. snapshot load in the enricher (decode)", False),
    ("snapshot_load_s3", "6d. snapshot load in the enricher (from S3)", True),
    ("lookup", "6e. metadata lookup per envelope, large vs 1 000 apps", False),
    ("cost_core", "7. Lambda $ per 10⁹ records (core) vs Fargate", False),
    ("cost_e2e", "7b. Lambda $ per 10⁹ records (end to end) vs Fargate", True),
)
SERVER_ROWS = frozenset(key for key, _, server in ROWS if server)


def fill(row: Row, **values: Any) -> None:
    """Set a row's measured columns."""
    for name, value in values.items():
        setattr(row, name, value)


def failed(rows: Mapping[str, Row], keys: Sequence[str], exc: BaseException) -> None:
    """A measurement raised: its rows not yet filled say so (ERROR), and the traceback goes to stderr."""
    import traceback

    traceback.print_exception(exc, file=sys.stderr)
    for key in keys:
        if rows[key].status == SKIP:
            fill(rows[key], status=ERROR, how=f"Failed: {type(exc).__name__}: {exc}")


def _verdict(ok: bool) -> str:
    return PASS if ok else MISS


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} µs"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ timing


def _clock(fn: Callable[[], object], gc_off: bool) -> float:
    gc.collect()
    if gc_off:
        gc.disable()
    try:
        started = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - started
    finally:
        if gc_off:
            gc.enable()
    del result  # freed outside the timed region, for every case alike
    return elapsed


def interleaved(
    cases: Mapping[str, Callable[[], object]], rounds: int, *, gc_off: bool, warmup: int = 1
) -> dict[str, list[float]]:
    """Time every case once per round, alternating the order between rounds, after ``warmup`` rounds."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            times[name].append(_clock(cases[name], gc_off))
    return times


# ---------------------------------------------------------------------------------------- baselines


# partials, not defs: the floor pays no Python frame per record either
_pybase64_strict: Callable[[str], bytes] = functools.partial(pybase64.b64decode, validate=True)
_binascii_strict: Callable[[str], bytes] = functools.partial(binascii.a2b_base64, strict_mode=True)


def decode_floor(event: Mapping[str, Any], b64: Callable[[str], bytes] = _pybase64_strict) -> int:
    """The floor: base64-decode and JSON-parse every record, and nothing else.

    With the fastest strict decoders we know, the ones the enricher itself uses (pybase64, SIMD,
    about 4× faster than ``binascii`` here; orjson): a floor slower than our own decoding would
    flatter the ratio.
    """
    loads = orjson.loads
    count = 0
    for batch in event["records"].values():
        for record in batch:
            loads(b64(record["value"]))
            count += 1
    return count


_METHOD_NAMES = dict(
    enumerate(
        (
            "GET POST PUT DELETE HEAD ACL BASELINE_CONTROL BIND CHECKIN CHECKOUT CONNECT COPY DEBUG LABEL"
            " LINK LOCK MERGE MKACTIVITY MKCALENDAR MKCOL MKREDIRECTREF MKWORKSPACE MOVE OPTIONS ORDERPATCH"
            " PATCH PRI PROPFIND PROPPATCH REBIND REPORT SEARCH SHOWMETHOD SPACEJUMP TEXTSEARCH TRACE TRACK"
            " UNBIND UNCHECKOUT UNLINK UNLOCK UPDATE UPDATEREDIRECTREF VERSION_CONTROL"
        ).split(),
        start=1,
    )
)


def point_baseline(event: Mapping[str, Any], apps: Mapping[str, AppInfo]) -> list[str]:
    """A straightforward implementation: ``json`` decode, a metadata dict, influxdb-client ``Point``."""
    from influxdb_client import Point, WritePrecision

    def enriched(measurement: str, info: AppInfo) -> Any:
        return (
            Point(measurement)
            .tag("app", info.name)
            .tag("app_guid", info.guid)
            .tag("space", info.space_name)
            .tag("space_guid", info.space_guid)
            .tag("org", info.org_name)
            .tag("org_guid", info.org_guid)
        )

    lines = []
    for batch in event["records"].values():
        for record in batch:
            envelope = json.loads(base64.b64decode(record["value"]))
            event_type = envelope.get("eventType")
            if event_type == 4:
                body = envelope["httpStartStop"]
                app_id = body.get("applicationId")
                if not app_id:
                    continue
                raw = app_id["low"].to_bytes(8, "little") + app_id["high"].to_bytes(8, "little")
                info = apps.get(str(uuid.UUID(bytes=raw)))
                if info is None:
                    continue
                method = body.get("method", 1)
                start, stop = body["startTimestamp"], body["stopTimestamp"]
                point = (
                    enriched("http_request", info)
                    .tag("instance", str(body.get("instanceIndex", 0)))
                    .tag("method", _METHOD_NAMES.get(method, str(method)))
                    .tag("status_code", str(body.get("statusCode", 0)))
                    .field("count", 1)
                    .field("duration", (stop - start) / 1e9)
                    .field("response_size", body.get("contentLength", 0))
                    .time(start, WritePrecision.NS)
                )
            elif event_type == 5:
                body = envelope["logMessage"]
                source = body.get("source_type", "")
                if source.startswith(("APP", "App")):
                    kind = {1: "OUT", 2: "ERR"}.get(
                        body.get("message_type", 1), str(body.get("message_type"))
                    )
                elif source.startswith("RTR"):
                    kind = "RTR"
                else:
                    continue
                info = apps.get(body.get("app_id", ""))
                if info is None:
                    continue
                point = (
                    enriched("log", info)
                    .tag("instance", body.get("source_instance") or "0")
                    .tag("type", kind)
                    .field("count", 1)
                    .field("size", len(base64.b64decode(body.get("message", ""))))
                    .time(body["timestamp"], WritePrecision.NS)
                )
            elif event_type == 9:
                body = envelope["containerMetric"]
                info = apps.get(body.get("applicationId", ""))
                if info is None:
                    continue
                memory, disk = body.get("memoryBytes", 0), body.get("diskBytes", 0)
                memory_quota, disk_quota = body.get("memoryBytesQuota", 0), body.get("diskBytesQuota", 0)
                point = enriched("instance", info).tag("instance", str(body.get("instanceIndex", 0)))
                point.field("cpu", float(body.get("cpuPercentage", 0.0)))
                point.field("memory", memory).field("disk", disk)
                point.field("memory_quota", memory_quota).field("disk_quota", disk_quota)
                if memory_quota:
                    point.field("memory_pct", memory / memory_quota)
                if disk_quota:
                    point.field("disk_pct", disk / disk_quota)
                point.time(envelope["timestamp"], WritePrecision.NS)
            else:
                continue
            lines.append(point.to_line_protocol())
    return lines


# --------------------------------------------------------------------------- 1, 2: the core path


@dataclass
class CoreFigures:
    per_record: float  # seconds per record: ours, best of the rounds
    points: int


def _core_runner(work: Workload, store: MetadataStore, fast_path: bool = True) -> Callable[[], BatchPoints]:
    def run() -> BatchPoints:
        start_invocation(store)
        return convert_batch(work.event, store, fast_path=fast_path)

    return run


def check_core(work: Workload, done: BatchPoints) -> None:
    result = done.result
    if result.points != work.expected_points or result.quarantined.total():
        raise RuntimeError(
            f"bench workload not processed as expected: {result.points} points of {work.expected_points},"
            f" dropped {dict(result.dropped)}, quarantined {dict(result.quarantined)}"
        )


def bench_core(work: Workload, sizes: Sizes, rows: dict[str, Row]) -> CoreFigures:
    store = new_store(work.snapshot)
    ours = _core_runner(work, store)
    pure = _core_runner(work, store, fast_path=False)
    done, reference = ours(), pure()
    check_core(work, done)
    if done.lines != reference.lines:
        raise RuntimeError("the compiled fast path and the pure-Python path wrote different lines")
    n = work.records

    _progress(f"core vs decode floor: {sizes.rounds} interleaved rounds of {num(n)} records")
    times = interleaved(
        {
            "ours": ours,
            "floor": lambda: decode_floor(work.event),
            "stdlib": lambda: decode_floor(work.event, _binascii_strict),
            "pure": pure,
        },
        sizes.rounds,
        gc_off=True,
    )
    best, floor = min(times["ours"]) / n, min(times["floor"]) / n
    ratio = best / floor
    stdlib_ratio = best / (min(times["stdlib"]) / n)
    pure_best = min(times["pure"]) / n
    if speedups.convert_run is not None:
        implementation = (
            "The compiled fast path (`refinery/_record_fastpath.pyx`) ran; the pure-Python path,"
            f" timed in the same rounds, costs {_us(pure_best)}/record ({pure_best / floor:.2f}× the"
            " floor) and wrote the same lines."
        )
    else:
        implementation = f"Pure Python ran: {speedups.UNAVAILABLE_REASON}."
    fill(
        rows["core_floor"],
        ours=f"{_us(best)}/record",
        baseline=f"{_us(floor)}/record",
        ratio=ratio,
        target=f"≤ {TARGET_CORE_VS_FLOOR:.2f}×",
        status=_verdict(ratio <= TARGET_CORE_VS_FLOOR),
        how=(
            f"`convert_batch(event, store)` (after the store's per-invocation reset) on {num(n)}"
            " records against base64-decoding (`pybase64.b64decode`, strict, the fastest decoder we know"
            " and the one the enricher uses; `binascii` is about 4× slower) and `orjson.loads` of the"
            " same records;"
            f" best of {sizes.rounds} interleaved rounds, GC off while timed; median ratio"
            f" {statistics.median(o / f for o, f in zip(times['ours'], times['floor'], strict=True)):.2f}×."
            f" Against a floor decoding base64 with the standard library's `binascii.a2b_base64` instead,"
            f" measured in the same rounds, the ratio is {stdlib_ratio:.2f}×. {implementation}"
        ),
    )

    apps = work.apps
    baseline_lines = point_baseline(work.event, apps)
    if len(baseline_lines) != work.expected_points:
        raise RuntimeError(f"Point baseline wrote {len(baseline_lines)} points, not {work.expected_points}")
    _progress(f"core vs influxdb-client Point: {sizes.point_rounds} interleaved rounds")
    times = interleaved(
        {"ours": ours, "point": lambda: point_baseline(work.event, apps)}, sizes.point_rounds, gc_off=True
    )
    mine, point = min(times["ours"]) / n, min(times["point"]) / n
    speedup = point / mine
    fill(
        rows["core_point"],
        ours=f"{_us(mine)}/record",
        baseline=f"{_us(point)}/record",
        ratio=speedup,
        target=f"≥ {TARGET_SPEEDUP_VS_POINT:.2f}× faster (baseline/ours)",
        status=_verdict(speedup >= TARGET_SPEEDUP_VS_POINT),
        how=(
            "The same batch through a straightforward implementation (`point_baseline` in"
            " `tools/refinery_tools/dev/bench.py`): `json.loads(base64.b64decode(value))`,"
            " a dict of app metadata,"
            " an influxdb-client `Point` with the same tags, fields and nanosecond time,"
            " `to_line_protocol()`;"
            f" best of {sizes.point_rounds} interleaved rounds, GC off while timed. The ratio is"
            " baseline/ours: how many times faster ours is."
        ),
    )
    return CoreFigures(per_record=best, points=work.expected_points)


def same_time_values(records: int, same_time: bool) -> list[bytes]:
    """``records`` distinct requests of the sample app, one instance, method and status: all started
    in the same nanosecond (``same_time``), or each in its own microsecond."""
    doc = json.loads(sample_envelopes()[0])
    body = doc["httpStartStop"]
    start = body["startTimestamp"]
    values = []
    for i in range(records):
        body["startTimestamp"] = start if same_time else start + i * 1000
        body["stopTimestamp"] = start + 1_000_000 + i
        body["requestId"] = {"low": i + 1, "high": 7}
        values.append(nozzle_json(doc))
    return values


def bench_same_time(sizes: Sizes, rows: dict[str, Row]) -> None:
    """The cost of many distinct points of one series at one timestamp against as many at distinct times."""
    n = sizes.records
    store = new_store(sample_snapshot())
    events = {
        kind: build_kafka_event(same_time_values(n, kind == "same"), partitions=1)
        for kind in ("same", "apart")
    }

    def runner(kind: str) -> Callable[[], BatchPoints]:
        def run() -> BatchPoints:
            start_invocation(store)
            return convert_batch(events[kind], store)

        return run

    same, apart = runner("same")(), runner("apart")()
    if apart.result.points != n or same.result.written != n:
        raise RuntimeError(f"same-time workload: {same.result.summary()} / {apart.result.summary()}")
    _progress(f"one series at one timestamp: {sizes.rounds} interleaved rounds of {num(n)} records")
    times = interleaved({"same": runner("same"), "apart": runner("apart")}, sizes.rounds, gc_off=True)
    ours, baseline = min(times["same"]) / n, min(times["apart"]) / n
    ratio = ours / baseline
    fill(
        rows["same_time"],
        ours=f"{_us(ours)}/record",
        baseline=f"{_us(baseline)}/record",
        ratio=ratio,
        target=f"≤ {TARGET_SAME_TIME:.2f}×",
        status=_verdict(ratio <= TARGET_SAME_TIME),
        how=(
            f"`convert_batch` on {num(n)} distinct requests of one app, instance, method and status"
            " all started in the same nanosecond, against the same requests each in its own microsecond;"
            f" best of {sizes.rounds} interleaved rounds, GC off while timed. At one time the"
            f" {num(n)} points share the 1 000 identity times of that microsecond: all"
            f" {same.result.points} lines are written, {same.result.identity_collisions} of them counted as"
            " `identity_collisions` (InfluxDB keeps one point per time); the row is the cost of comparing"
            " points that share a time, which the +1 ns collision chain made quadratic."
        ),
    )


def routing_table(apps: Mapping[str, AppInfo]) -> str:
    """Ten routes of every kind over ``apps``' orgs, spaces and apps (:mod:`refinery.routing`)."""
    orgs = sorted({a.org_name for a in apps.values()})
    guids = sorted(apps)
    org_guids = sorted({a.org_guid for a in apps.values()})
    routes = [
        *({"match": {"org": org}, "to": {"database": f"org_{n}"}} for n, org in enumerate(orgs[:4])),
        {"match": {"space": {"regex": "space-1.*"}}, "to": {"database": "space_1x"}},
        {"match": {"space": {"regex": ".*-7"}}, "to": {"database": "space_7"}},
        {"match": {"app_guid": guids[0]}, "to": {"database": "one_app"}},
        {"match": {"app_guid": guids[1]}, "to": {"database": "other_app"}},
        {"match": {"org_guid": org_guids[-1]}, "to": {"database": "last_org"}},
        {"to": {"database": {"org_label": ROUTING_LABEL}}},
    ]
    return json.dumps({"routes": routes, "default": {"database": "cf"}})  # JSON is YAML


def bench_routing(work: Workload, sizes: Sizes, rows: dict[str, Row]) -> None:
    """Transform and encode the request bodies, routed by a 10-route table against not routed."""
    import dataclasses

    from refinery.config import InfluxConfig
    from refinery.routing import Router, RoutesError, parse_routes
    from refinery.sinks.chunked import chunks
    from refinery.sinks.gzip_body import gzip_body
    from refinery.sinks.influx_v1 import InfluxV1Sink
    from refinery.sinks.routed import RoutedSink
    from refinery.watched import WatchedDocument

    # Every fifth org labelled with its database (the label route); the same snapshot for both cases.
    orgs = sorted({a.org_guid for a in work.apps.values()})
    labelled = {guid: ((ROUTING_LABEL, f"tenant_{n}"),) for n, guid in enumerate(orgs) if n % 5 == 0}
    apps = {
        guid: dataclasses.replace(info, org_labels=labelled.get(info.org_guid, ()))
        for guid, info in work.apps.items()
    }
    store = new_store(snapshot_of(apps))
    table = routing_table(apps)
    book = WatchedDocument(
        BytesSnapshotSource(table.encode()),
        lambda data, origin: parse_routes(data, origin, label_keys=frozenset({ROUTING_LABEL})),
        invalid=RoutesError,
    )
    config = InfluxConfig(url="http://127.0.0.1:9", api="v1", database="cf")
    plain = InfluxV1Sink(config)
    routed = RoutedSink(InfluxV1Sink(config), Router(book, store))
    n = work.records

    def bodies(sink: Any, lines: Sequence[str]) -> list[bytes]:
        """The request bodies the sink posts (INFLUX_GZIP=true, the default: gzip-compressed)."""
        return [gzip_body(sink.encode(chunk, ())) for chunk in chunks(lines, sink.batch_size)]

    def off() -> list[bytes]:
        start_invocation(store)
        return bodies(plain, convert_batch(work.event, store).lines)

    def on() -> list[bytes]:
        start_invocation(store)
        lines = convert_batch(work.event, store).lines
        out: list[bytes] = []
        for indexes in routed.groups(lines).values():
            out += bodies(plain, list(map(lines.__getitem__, indexes)))  # as RoutedSink.write does
        return out

    unrouted, grouped = off(), on()
    destinations = routed.groups(convert_batch(work.event, store).lines)
    if sum(gzip.decompress(b).count(b"\n") for b in grouped) != sum(
        gzip.decompress(b).count(b"\n") for b in unrouted
    ):
        raise RuntimeError("routing lost or added lines")
    if len(destinations) < 5:
        raise RuntimeError(f"the routing workload reached only {len(destinations)} destination(s)")
    _progress(f"tenant routing: {sizes.rounds} interleaved rounds of {num(n)} records")
    times = interleaved({"on": on, "off": off}, sizes.rounds, gc_off=True)
    ours, baseline = min(times["on"]) / n, min(times["off"]) / n
    ratio = ours / baseline
    plain.close()
    routed.close()
    fill(
        rows["routing"],
        ours=f"{_us(ours)}/record",
        baseline=f"{_us(baseline)}/record",
        ratio=ratio,
        target=f"≤ {TARGET_ROUTING:.2f}×",
        status=_verdict(ratio <= TARGET_ROUTING),
        how=(
            f"`convert_batch` on the core batch ({num(n)} records) and the request bodies of its lines"
            " (as the sink posts them: chunks of `INFLUX_BATCH_SIZE` lines, gzip-compressed as by default),"
            " routed by a table of 10 routes (4 org names, 2 space regexes, 2 app GUIDs, an org GUID and"
            " an org label; every fifth org labelled) into"
            f" {len(destinations)} destinations, against the same without routing (one destination);"
            f" best of {sizes.rounds} interleaved rounds, GC off while timed. The route is computed once"
            " per app GUID and kept while the snapshot and the table are unchanged (a warm container):"
            " per point, routing costs finding `app_guid` in the line and one dictionary look-up."
        ),
    )


def print_profile(work: Workload, out: Any = None, top: int = 25) -> None:
    """cProfile of the core path (three batches), the top functions by own time."""
    out = out or sys.stdout
    store = new_store(work.snapshot)
    run = _core_runner(work, store)
    run()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(3):
        run()
    profiler.disable()
    print(f"\ncProfile of convert_batch, 3 × {num(work.records)} records (by own time):", file=out)
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)


# --------------------------------------------------------------- 4: cold start (Lambda, emulated)

_SETTING_PREFIXES = ("INFLUX_", "METADATA_", "QUARANTINE_", "CF_", "LIVE_", "NEGATIVE_", "SNAPSHOT_")


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    env.update(extra)
    return env


def _run_child(argv: list[str], env: Mapping[str, str], timeout: float = 120.0) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:2]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return elapsed, done.stdout


#: Rows 4–4c, filled together by :func:`bench_cold_start`.
COLD_START_ROWS = ("cold_start", "cold_start_full", "cold_start_refresh")


def bench_cold_start(sizes: Sizes, rows: dict[str, Row]) -> None:
    """Rows 4–4c: cold starts of the built functions as Lambda runs them (:mod:`.coldstart`)."""
    from refinery_tools.dev import coldstart

    runs = max(5, sizes.cold_runs)
    plan = [
        ("enricher", coldstart.MB512),
        ("enricher", coldstart.FULL_CORE),
        ("refresh", coldstart.MB512),
        ("empty", coldstart.MB512),
        ("empty", coldstart.FULL_CORE),
    ]
    _progress(f"cold start: {runs} rounds of fresh execution environments in the Lambda emulation")
    try:
        with coldstart.Emulation() as emulation:
            stats = emulation.measure(plan, runs)
            zipped = dict(emulation.sizes)
    except Exception as exc:
        for key in COLD_START_ROWS:
            fill(rows[key], status=ERROR, how=f"Failed: {type(exc).__name__}: {str(exc)[:600]}")
        raise
    floors = {p.name: stats["empty", p.name] for p in (coldstart.MB512, coldstart.FULL_CORE)}
    layers = ", ".join(f"{name} {mib(size)}" for name, size in sorted(zipped.items()) if "Layer" in name)
    emulation_how = (
        "`make build`'s functions and layers, zipped by SAM's packager (files dated 1980-01-01) and"
        " unzipped into `/var/task` and `/opt` (" + layers + " zipped), run by the real runtime client"
        " (awslambdaric) with Python 3.12 in an emulation of the python3.12 runtime"
        " (`refinery_tools.dev.coldstart`): a mount namespace with `/var/task`, `/opt` and the runtime"
        " read-only, Lambda's `sys.path` and environment (the template's variables), the runtime's own"
        f" boto3/botocore ({', '.join(coldstart.RUNTIME_SDK)}), user `nobody`, a cgroup holding memory to"
        " the function's size and CPU to size/1769 of a core (`cpu.cfs_quota_us`), the Runtime API"
        " served by the bench. S3 and Secrets Manager: moto's server; InfluxDB 1.x: real; Cloud"
        f" Controller: the fake one ({num(coldstart.FOUNDATION_APPS)} apps). INIT = exec of the"
        " runtime's Python to its first `next`; an invoke = the event handed over to its response."
        f" Medians of {runs} fresh environments, interleaved with the others of the table; the baseline"
        " is an empty function (`return {}`) in the same emulation and size: the runtime's own cold"
        " start. Not emulated: the network's latency to AWS, code reads from Lambda's storage (here"
        " the page cache holds them), the platform's work before the runtime starts."
    )
    cases = (
        ("cold_start", "enricher", coldstart.MB512, TARGET_COLD_ENRICHER_S),
        ("cold_start_full", "enricher", coldstart.FULL_CORE, TARGET_COLD_ENRICHER_FULL_S),
        ("cold_start_refresh", "refresh", coldstart.MB512, TARGET_COLD_REFRESH_S),
    )
    for key, function, profile, target in cases:
        got, floor = stats[function, profile.name], floors[profile.name]
        cold, floor_cold = got.median("cold"), floor.median("cold")
        what = {
            "cold_start": (
                f" The enricher's first batch is {num(coldstart.ENRICHER_RECORDS)} records (v1 sink);"
                " its first invoke reads 2 secrets from Secrets Manager (InfluxDB password, Cloud"
                " Controller client secret), the snapshot from S3, and writes the points. " + emulation_how
            ),
            "cold_start_full": " The same at 1769 MB: one full core.",
            "cold_start_refresh": (
                f" The refresh lists {num(coldstart.FOUNDATION_APPS)} apps from the fake Cloud Controller"
                " (secret from Secrets Manager, UAA token, one page) and writes the snapshot to S3."
            ),
        }[key]
        fill(
            rows[key],
            ours=(
                f"{_ms(cold)} (INIT {_ms(got.median('init'))} + first {_ms(got.median('first'))};"
                f" warm {_ms(got.median('warm'))}; {got.median('max_memory') / MIB:.0f} MiB)"
            ),
            baseline=f"{_ms(floor_cold)} (empty function)",
            ratio=cold / floor_cold,
            target=f"INIT + first ≤ {target:.1f} s",
            status=_verdict(cold <= target),
            how=(
                f"INIT + first invoke of a fresh execution environment at {profile.name}"
                f" ({profile.memory_mb} MB: CPU quota {profile.cpu_quota_us / 1000:.0f} ms per 100 ms);"
                f" CPU used {_ms(got.median('cpu'))}." + what
            ),
        )


# --------------------------------------------------------------------------- 5: memory (subprocess)

_MEMORY_CHILD = """\
import sys
from refinery_tools.dev.bench import memory_child
memory_child(sys.argv[1:])
"""


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_child(argv: list[str]) -> None:
    """In a fresh interpreter: load the event as the Lambda runtime does, then measure one batch."""
    import resource
    import tracemalloc

    event_path, snapshot_path, mode = argv
    with open(event_path, "rb") as handle:
        event = json.loads(handle.read())
    with open(snapshot_path, "rb") as handle:
        store = new_store(handle.read())
    start_invocation(store)
    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        done = convert_batch(event, store)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        report: dict[str, Any] = {
            "peak": peak - before,
            "retained": current - before,
            "points": done.result.points,
        }
    else:
        rss_before = _status_kib("VmRSS")
        reset = _reset_peak_rss()
        base = rss_before if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        done = convert_batch(event, store)
        peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report = {
            "growth": (peak - base) * 1024,
            "method": "VmHWM after clear_refs" if reset else "ru_maxrss",
            "points": done.result.points,
        }
    print(json.dumps(report))


def bench_memory(sizes: Sizes, rows: dict[str, Row]) -> None:
    event, payload, records = max_size_event(sizes.memory_event_bytes)
    snapshot = snapshot_of(foundation_for(1_000, seed=2).app_infos())
    _progress(f"memory: {num(records)} records, {mib(payload)} event, in fresh interpreters")
    with tempfile.TemporaryDirectory(prefix="refinery-bench-") as tmp:
        event_path, snapshot_path = Path(tmp, "event.json"), Path(tmp, "snapshot.json.gz")
        event_path.write_text(json.dumps(event, separators=(",", ":")))
        snapshot_path.write_bytes(snapshot)
        argv = [sys.executable, "-c", _MEMORY_CHILD, str(event_path), str(snapshot_path)]
        env = _child_env({})
        rss = [json.loads(_run_child([*argv, "rss"], env)[1]) for _ in range(3)]
        traced = json.loads(_run_child([*argv, "tracemalloc"], env)[1])
    growth = statistics.median(r["growth"] for r in rss)
    ratio = growth / payload
    fill(
        rows["memory"],
        ours=f"{mib(growth)} RSS (tracemalloc peak {mib(traced['peak'])})",
        baseline=f"{mib(payload)} event ({num(records)} records)",
        ratio=ratio,
        target=f"< {TARGET_MEMORY_VS_PAYLOAD:.2f}× the payload",
        status=_verdict(ratio < TARGET_MEMORY_VS_PAYLOAD),
        how=(
            f"The largest batch of the same traffic whose Lambda event (compact JSON) fits in"
            f" {mib(sizes.memory_event_bytes)} ({mib(MAX_EVENT_BYTES)} is the invocation payload limit, so"
            f" the largest batch an event source mapping can deliver): {mib(payload)}, parsed with"
            " `json.loads` as the runtime does, then one"
            " `convert_batch` in a fresh interpreter: peak RSS growth during the call"
            f" ({rss[0]['method']}), median of 3 processes; tracemalloc's peak of Python allocations"
            f" in a 4th ({mib(traced['retained'])} of it still held by the result: the lines and"
            " the identity index)."
        ),
    )


# ------------------------------------------------------------------- 6: metadata (no servers needed)


def bench_metadata(sizes: Sizes, rows: dict[str, Row]) -> None:
    n = sizes.metadata_apps
    _progress(f"metadata: snapshot of {num(n)} apps")
    big_apps = foundation_for(n, seed=7).app_infos()
    big = snapshot_of(big_apps)
    raw = gzip.decompress(big)
    old = encode_snapshot(big_apps, SNAPSHOT_SOURCE, SNAPSHOT_TIME, schema_version=1)
    old_raw = gzip.decompress(old)
    old_published = len(gzip.compress(old_raw, compresslevel=6, mtime=0))
    fill(
        rows["snapshot_size"],
        name=f"6b. snapshot size, {num(len(big_apps))} apps",
        ours=f"{mib(len(big))} gzip ({len(big) / len(big_apps):.0f} B/app)",
        baseline=f"{mib(len(raw))} JSON",
        ratio=len(big) / len(raw),
        target="info",
        status=INFO,
        how=(
            "`encode_snapshot` (schema 2: string tables, gzip level 1) of a `Foundation.generate` foundation"
            " (10 spaces per org, 10 apps per space, names like `app-12-3-7`); ratio = gzip/JSON. Longer"
            " real names make it proportionally larger. The same apps in schema 1 (one object per app, as"
            f" published before): {mib(len(old_raw))} JSON, {mib(old_published)} at gzip level 6,"
            f" {mib(len(old))} at level 1."
        ),
    )

    def load() -> MetadataStore:
        store = new_store(big)
        store.refresh_if_due()
        assert store.snapshot is not None and len(store.snapshot.apps) == len(big_apps)
        return store

    def load_old() -> MetadataStore:
        store = new_store(old)
        store.refresh_if_due()
        assert store.snapshot is not None and len(store.snapshot.apps) == len(big_apps)
        return store

    times = interleaved(
        {"ours": load, "floor": lambda: orjson.loads(gzip.decompress(big)), "schema 1": load_old},
        sizes.load_rounds,
        gc_off=False,
    )
    mine, floor = statistics.median(times["ours"]), statistics.median(times["floor"])
    fill(
        rows["snapshot_load"],
        name=f"6c. snapshot load in the enricher, {num(len(big_apps))} apps (decode)",
        ours=_ms(mine),
        baseline=f"{_ms(floor)} (gunzip + orjson.loads)",
        ratio=mine / floor,
        target=f"< {TARGET_SNAPSHOT_LOAD_S * 1000:.0f} ms",
        status=_verdict(mine < TARGET_SNAPSHOT_LOAD_S),
        how=(
            "`MetadataStore.refresh_if_due()` on a new store whose source hands it the schema-2 snapshot"
            " bytes of 6b (gunzip, parse, check the tables' shape, build the GUID → row index; each app's"
            " row is validated when first looked up), against gunzip + `orjson.loads` of the same bytes;"
            f" medians of {sizes.load_rounds} interleaved rounds, GC on (it runs in Lambda too). The same"
            f" load of the same apps in schema 1 ({len(old_raw) / len(raw):.1f}× the JSON), in the same"
            f" rounds: {_ms(statistics.median(times['schema 1']))}."
        ),
    )

    small_apps = foundation_for(sizes.lookup_small_apps, seed=11).app_infos()
    rng = random.Random(5)
    per_lookup: dict[str, float] = {}
    cases: dict[str, Callable[[], object]] = {}
    for label, apps in (("large", big_apps), ("small", small_apps)):
        store = new_store(snapshot_of(apps))
        start_invocation(store)
        for guid in apps:  # a long-lived container: every app's tags already built and cached
            store.lookup(guid)
        distinct = rng.sample(sorted(apps), min(sizes.lookup_distinct, len(apps)))
        sequence = [rng.choice(distinct) for _ in range(sizes.lookup_calls)]

        def run(store: MetadataStore = store, sequence: list[str] = sequence) -> int:
            start_invocation(store)
            lookup = store.lookup
            found = 0
            for guid in sequence:
                if lookup(guid) is not None:
                    found += 1
            assert found == len(sequence)
            return found

        cases[label] = run
    times = interleaved(cases, sizes.lookup_rounds, gc_off=True)
    for label in cases:
        per_lookup[label] = min(times[label]) / sizes.lookup_calls
    ratio = per_lookup["large"] / per_lookup["small"]
    fill(
        rows["lookup"],
        name=f"6e. metadata lookup per envelope, {num(len(big_apps))} vs {num(len(small_apps))} apps",
        ours=f"{per_lookup['large'] * 1e9:.0f} ns",
        baseline=f"{per_lookup['small'] * 1e9:.0f} ns",
        ratio=ratio,
        target=f"≤ {TARGET_LOOKUP_FLAT:.2f}× (flat, O(1))",
        status=_verdict(ratio <= TARGET_LOOKUP_FLAT),
        how=(
            f"`MetadataStore.lookup` of {num(sizes.lookup_calls)} GUIDs drawn from"
            f" {num(sizes.lookup_distinct)} apps per invocation (after the per-invocation reset), in a"
            " warm store that has already built every app's tags, with a snapshot of"
            f" {num(len(big_apps))} against {num(len(small_apps))} apps; best of {sizes.lookup_rounds}"
            " interleaved rounds, GC off while timed."
        ),
    )


# ----------------------------------------------------------------------- 3, 6: with real servers


@contextlib.contextmanager
def _quiet(*loggers: Any) -> Iterator[None]:
    """Discard log lines and EMF output while the code under test still produces them (that is part of
    its cost): the streams of the log handlers of ``refinery``, the root and ``loggers`` (Powertools
    loggers) are swapped for a buffer, and so are stdout and stderr."""
    sink = io.StringIO()
    handlers: list[logging.Handler | None] = [
        *logging.getLogger("refinery").handlers,
        *logging.getLogger().handlers,
    ]
    handlers += [getattr(logger, "registered_handler", None) for logger in loggers]
    swapped: list[tuple[logging.StreamHandler[Any], Any]] = []
    for handler in dict.fromkeys(handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            swapped.append((handler, handler.setStream(sink)))
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for handler, previous in reversed(swapped):
            if previous is not None:
                handler.setStream(previous)


@dataclass
class EndToEnd:
    per_record: float  # handler seconds per record (median)
    core_per_record: float  # convert_batch seconds per record in the same rounds (median)


def bench_end_to_end(
    work: Workload, sizes: Sizes, influx: Any, bucket: str, rows: dict[str, Row]
) -> EndToEnd:
    import requests

    from refinery.config import load_enricher_config
    from refinery.handlers import enricher
    from refinery_tools.lambda_context import LocalContext

    database = "refinery_bench"
    influx.create_database(database)
    local = new_store(work.snapshot)
    core = _core_runner(work, local)
    body = ("\n".join(core().lines) + "\n").encode()
    session = requests.Session()
    write_url = f"{influx.url}/write"

    def post() -> None:
        response = session.post(write_url, params={"db": database, "precision": "ns"}, data=body, timeout=120)
        if response.status_code != 204:
            raise RuntimeError(f"InfluxDB /write answered {response.status_code}: {response.text[:300]}")

    oversize = (
        f" The batch's Lambda event is {mib(work.event_bytes)}: a real mapping would deliver these records"
        f" in batches of at most {mib(MAX_EVENT_BYTES)}; per-record figures hardly change."
        if work.event_bytes > MAX_EVENT_BYTES
        else ""
    )
    figures: EndToEnd | None = None
    for key, gzip_on in (("e2e", True), ("e2e_plain", False)):
        settings = {
            "INFLUX_URL": influx.url,
            "INFLUX_DATABASE": database,
            "INFLUX_GZIP": str(gzip_on).lower(),
        }
        with patched_environ({**settings, "METADATA_BUCKET": bucket, "METADATA_FILE": None}):
            config = load_enricher_config()
        enricher.reset_runtime(enricher.build_runtime(config))

        def invoke() -> dict[str, Any]:
            with _quiet(enricher.logger):
                result = enricher.handler(
                    work.event, LocalContext(function_name="bench", timeout_seconds=900)
                )
            points = result.get("summary", {}).get("points")
            if points != work.expected_points:
                raise RuntimeError(f"the handler wrote {points} points, not {work.expected_points}")
            return result

        _progress(f"end to end ({'gzip' if gzip_on else 'no gzip'}): {sizes.e2e_rounds} interleaved rounds")
        try:
            times = interleaved(
                {"handler": invoke, "core": core, "post": post}, sizes.e2e_rounds, gc_off=False
            )
        finally:
            enricher.reset_runtime()
        handler = statistics.median(times["handler"])
        baseline_runs = [c + p for c, p in zip(times["core"], times["post"], strict=True)]
        baseline = statistics.median(baseline_runs)
        # Paired: each round's handler time against the same round's baseline (drift cancels out).
        ratio = statistics.median(h / b for h, b in zip(times["handler"], baseline_runs, strict=True))
        fill(
            rows[key],
            ours=_ms(handler),
            baseline=(
                f"{_ms(baseline)} (core {_ms(statistics.median(times['core']))}"
                f" + POST {_ms(statistics.median(times['post']))})"
            ),
            ratio=ratio,
            target=f"≤ {TARGET_END_TO_END:.2f}×",
            status=_verdict(ratio <= TARGET_END_TO_END),
            how=(
                f"`refinery.handlers.enricher.handler` on the {num(work.records)}-record batch"
                " (warm container:"
                " snapshot from moto S3 already loaded; INFLUX_BATCH_SIZE 5000, so 2 chunks, written at"
                " once with the default INFLUX_WRITE_CONCURRENCY=2;"
                f" INFLUX_GZIP={str(gzip_on).lower()}) writing to a real InfluxDB 1.x on loopback, against"
                " `convert_batch` plus one uncompressed `POST /write` of the same line protocol"
                f" ({mib(len(body))}) with requests; medians of {sizes.e2e_rounds} interleaved rounds, GC on;"
                " the ratio is the median of the rounds' ratios. Every round rewrites the same points (an"
                " overwrite, as a retried batch does)." + oversize
            ),
        )
        if figures is None:
            figures = EndToEnd(
                per_record=handler / work.records,
                core_per_record=statistics.median(times["core"]) / work.records,
            )
    assert figures is not None
    return figures


def bench_refresh(sizes: Sizes, s3: Any, bucket: str, rows: dict[str, Row]) -> None:
    from refinery.metadata.cc_client import CloudControllerClient
    from refinery.metadata.refresh import refresh_snapshot
    from refinery.metadata.store import S3SnapshotSource

    n = sizes.metadata_apps
    _progress(f"metadata refresh: fake Cloud Controller with {num(n)} apps, moto S3")
    with fake_cloud_controller(n) as url:

        def refresh() -> Any:
            with _quiet(), CloudControllerClient(url, "refinery", CC_SECRET) as client:
                return refresh_snapshot(client, s3, bucket, REFRESH_KEY, source=url)

        def listing() -> int:
            with _quiet(), CloudControllerClient(url, "refinery", CC_SECRET) as client:
                return sum(len(page["resources"]) for page in client.iter_app_pages())

        first = refresh()  # creates the snapshot; the timed ones replace it, reading it first
        times = interleaved(
            {"refresh": refresh, "listing": listing}, sizes.refresh_rounds, gc_off=False, warmup=0
        )
    mine, floor = statistics.median(times["refresh"]), statistics.median(times["listing"])
    fill(
        rows["refresh"],
        name=f"6a. metadata refresh, {num(first.apps)} apps (fake CC → moto S3)",
        ours=f"{mine:.2f} s ({first.pages} pages, {mib(first.bytes)})",
        baseline=f"{floor:.2f} s (listing pages only)",
        ratio=mine / floor,
        target=f"< {TARGET_REFRESH_S:.0f} s",
        status=_verdict(mine < TARGET_REFRESH_S),
        how=(
            "`refresh_snapshot` with a new `CloudControllerClient` (UAA token, `GET /v3/apps?include="
            "space.organization&per_page=5000` pages, join, read and compare the previous snapshot, encode,"
            " `put_object`) against a `FakeCloudController` in a child process and moto S3 in this one,"
            " against fetching and parsing the same pages alone (`iter_app_pages`); medians of"
            f" {sizes.refresh_rounds} interleaved rounds after one refresh that creates the snapshot."
            " The fake assembles each page from resources it serialised once (during that first,"
            " untimed refresh; the bytes are those of the documents, built afresh after any change), so"
            f" the listing, {floor / max(first.pages, 1):.2f} s a {num(5000)}-app page here, is mostly"
            " the client's transfer and parse (with the cyclic GC paused); a real Cloud Controller takes"
            " longer per page, and the refresh time moves with it."
        ),
    )

    def load() -> MetadataStore:
        store = MetadataStore(S3SnapshotSource(bucket, REFRESH_KEY, client=s3))
        store.refresh_if_due()
        assert store.snapshot is not None and len(store.snapshot.apps) == first.apps
        return store

    def get() -> bytes:
        return s3.get_object(Bucket=bucket, Key=REFRESH_KEY)["Body"].read()

    def raw() -> Any:
        return orjson.loads(gzip.decompress(get()))

    times = interleaved({"ours": load, "floor": raw, "get": get}, sizes.load_rounds, gc_off=False)
    mine, floor = statistics.median(times["ours"]), statistics.median(times["floor"])
    fetch = statistics.median(times["get"])
    fill(
        rows["snapshot_load_s3"],
        name=f"6d. snapshot load in the enricher, {num(first.apps)} apps (from S3)",
        ours=_ms(mine),
        baseline=f"{_ms(floor)} (GET + gunzip + orjson.loads)",
        ratio=mine / floor,
        target=f"< {TARGET_SNAPSHOT_LOAD_S * 1000:.0f} ms",
        status=_verdict(mine < TARGET_SNAPSHOT_LOAD_S),
        how=(
            "`MetadataStore.refresh_if_due()` on a new store reading the refreshed snapshot from moto S3"
            " (an existing boto3 client; a cold container also pays boto3's import and client creation,"
            " ~0.3 s) against `get_object` + gunzip + `orjson.loads`; medians of"
            f" {sizes.load_rounds} interleaved rounds, GC on. The GET alone (`get_object` + read of"
            f" {mib(first.bytes)}) takes {_ms(fetch)} in the same rounds; moto serves it from a thread of"
            " this process, so its server-side work shares the GIL and is in both figures. The rest,"
            f" {_ms(max(mine - fetch, 0.0))}, is the decode of 6c (measured there alone; here the"
            " process also holds moto's state and the refresh rounds' leftovers)."
        ),
    )


def bench_servers(work: Workload, sizes: Sizes, rows: dict[str, Row]) -> EndToEnd | None:
    """Everything that needs servers; a server that cannot start leaves its rows SKIP with the reason."""
    from refinery_tools.dev.servers import InfluxDB1Server, MotoS3Server, ServerUnavailable

    figures: EndToEnd | None = None
    bucket = "refinery-bench"
    try:
        s3_server = MotoS3Server().start()
    except ServerUnavailable as exc:
        for key in SERVER_ROWS:
            rows[key].how = f"Not measured: {exc}"
        return None
    except Exception as exc:
        failed(rows, sorted(SERVER_ROWS), exc)
        return None
    try:
        with patched_environ(
            {
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_SESSION_TOKEN": None,
                "AWS_PROFILE": None,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL_S3": s3_server.url,
            }
        ):
            import boto3

            s3 = boto3.client("s3")
            s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key=SNAPSHOT_KEY, Body=work.snapshot)
            e2e_keys = ("e2e", "e2e_plain", "cost_e2e")
            try:
                with InfluxDB1Server() as influx:
                    figures = bench_end_to_end(work, sizes, influx, bucket, rows)
            except ServerUnavailable as exc:
                for key in e2e_keys:
                    rows[key].how = f"Not measured: {exc}"
            except Exception as exc:
                failed(rows, e2e_keys, exc)
            try:
                bench_refresh(sizes, s3, bucket, rows)
            except Exception as exc:
                failed(rows, ("refresh", "snapshot_load_s3"), exc)
    finally:
        s3_server.stop()
    return figures


# ------------------------------------------------------------------------------------------- 7: cost


@dataclass(frozen=True)
class Cost:
    lambda_usd: float
    gb_seconds: float
    fargate_usd: float

    @property
    def breakeven_records_per_month(self) -> float:
        return FARGATE_TASK_USD_PER_HOUR * HOURS_PER_MONTH / (self.lambda_usd / RECORDS_PRICED)


def cost_of(cpu_per_record: float, wait_per_record: float, batch_records: int) -> Cost:
    """Dollars per :data:`RECORDS_PRICED` records. CPU time is stretched by Lambda's CPU share at
    :data:`LAMBDA_MEMORY_MB`; waiting (on InfluxDB) is not."""
    share = LAMBDA_MEMORY_MB / LAMBDA_MB_PER_VCPU
    billed = cpu_per_record / share + wait_per_record
    gb_seconds = billed * RECORDS_PRICED * LAMBDA_MEMORY_MB / 1024
    requests = RECORDS_PRICED / batch_records
    lambda_usd = gb_seconds * LAMBDA_GB_SECOND_USD + requests * LAMBDA_REQUEST_USD
    task_hours = cpu_per_record * RECORDS_PRICED / FARGATE_TASK_VCPU / 3600
    return Cost(lambda_usd, gb_seconds, task_hours * FARGATE_TASK_USD_PER_HOUR)


def cost_rows(core: CoreFigures, e2e: EndToEnd | None, batch_records: int, rows: dict[str, Row]) -> None:
    share = LAMBDA_MEMORY_MB / LAMBDA_MB_PER_VCPU
    cost = cost_of(core.per_record, 0.0, batch_records)
    capacity = FARGATE_TASK_VCPU / core.per_record
    fill(
        rows["cost_core"],
        ours=f"${cost.lambda_usd:,.2f} ({cost.gb_seconds:,.0f} GB-s)".replace(",", " "),
        baseline=f"${cost.fargate_usd:,.2f} (Fargate task 100 % busy)",
        ratio=cost.lambda_usd / cost.fargate_usd,
        target="info",
        status=INFO,
        how=(
            f"From figure 1's core cost ({_us(core.per_record)}/record on one core of this machine, assumed"
            f" as fast as a Lambda/Fargate vCPU). Lambda x86 at {LAMBDA_MEMORY_MB} MB gets"
            f" {LAMBDA_MEMORY_MB}/{LAMBDA_MB_PER_VCPU} = {share:.0%} of a vCPU, so CPU-bound time is billed"
            f" {1 / share:.2f}× longer: ${LAMBDA_GB_SECOND_USD:.10f}/GB-s, plus"
            f" ${LAMBDA_REQUEST_USD * 1e6:.2f} per million requests at {num(batch_records)} records"
            " per invocation. Fargate: one 0.5 vCPU /"
            f" 1 GB task at ${FARGATE_TASK_USD_PER_HOUR}/h (us-east-1, x86) handles up to"
            f" {num(round(capacity))} records/s; always on it costs"
            f" ${FARGATE_TASK_USD_PER_HOUR * HOURS_PER_MONTH:.2f}"
            f" a month whatever the load, so Lambda is cheaper below"
            f" {cost.breakeven_records_per_month / 1e9:,.1f} × 10⁹ records a month"
            f" ({num(round(cost.breakeven_records_per_month / (HOURS_PER_MONTH * 3600)))} records/s"
            " on average)."
            " Excluded on both sides: InfluxDB, Kafka/MSK, data transfer, and (Fargate) a second task"
            " for availability."
        ),
    )
    if e2e is None:
        return
    wait = max(0.0, e2e.per_record - e2e.core_per_record)
    cost = cost_of(e2e.core_per_record, wait, batch_records)
    fill(
        rows["cost_e2e"],
        ours=f"${cost.lambda_usd:,.2f} ({cost.gb_seconds:,.0f} GB-s)".replace(",", " "),
        baseline=f"${cost.fargate_usd:,.2f} (Fargate task 100 % busy)",
        ratio=cost.lambda_usd / cost.fargate_usd,
        target="info",
        status=INFO,
        how=(
            "As 7, from figure 3's handler time per record: its core part (measured in the same rounds) is"
            f" stretched by the CPU share, the rest ({_us(wait)}/record: gzip, HTTP, waiting for InfluxDB) is"
            f" billed as is. Lambda is cheaper than one always-on task below"
            f" {cost.breakeven_records_per_month / 1e9:,.1f} × 10⁹ records a month."
        ),
    )


# ------------------------------------------------------------------------------------------- report


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str:
    sha = _git("rev-parse", "--short=12", "HEAD")
    if sha is None:
        return "unknown (not a git checkout)"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{sha} (with uncommitted changes)" if dirty else sha


def default_output() -> Path:
    top = _git("rev-parse", "--show-toplevel")
    return Path(top or ".") / "docs" / "performance.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    memory = "unknown memory"
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / MIB:.1f} GiB RAM"
                break
    cores_text = f"{cores} cores" + (f" ({usable} usable)" if usable != cores else "")
    return f"{cpu}, {cores_text}, {memory}; {platform.system()} {platform.release()}"


def _columns(row: Row) -> list[str]:
    return [row.name, row.ours, row.baseline, row.ratio_text, row.target, row.status]


HEADER = ["figure", "ours", "baseline", "ratio", "target", "result"]


def text_table(rows: Sequence[Row]) -> str:
    cells = [HEADER, *(_columns(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells[1:]]
    return "\n".join(line.rstrip() for line in lines)


def markdown(rows: Sequence[Row], context: Mapping[str, str]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    out = [
        "# Performance",
        "",
        "Written by `refinery bench --write-doc` (`make bench-doc`); do not edit by hand, run it again.",
        "Every figure is measured in one run as a ratio against a baseline measured in the same process,",
        "interleaved with it (absolute times on a shared machine drift; ratios hold much better).",
        "`refinery bench --profile` also prints a cProfile of the core path.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {cell(v)} |" for k, v in context.items()),
        "",
        "## Results",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(cell(c) for c in _columns(r)) + " |" for r in rows),
        "",
        "PASS/MISS compare a figure with the target of GitHub issue “Performance”; INFO rows have no",
        "target; SKIP rows were not measured (servers skipped or unavailable); ERROR rows failed.",
        "",
        "## How each figure is measured",
        "",
    ]
    for row in rows:
        out.append(f"* **{row.name}.** {row.how or 'Not measured.'}")
    out += [
        "",
        "The workload is synthetic, in the nozzle's exact wire format: envelopes are serialised like",
        "easyjson (key order as kafka-firehose-nozzle writes them, `\\u0026`-style escaping, Go's float",
        "format; `nozzle_json` reproduces the bundled samples byte for byte), log messages are 60–400 bytes",
        "(router access lines up to 400), app traffic is Zipf-like over the active apps, and every record",
        "is wrapped in an MSK event by `build_kafka_event` (4 partitions).",
        "",
    ]
    return "\n".join(out)


#: Exit codes: every target met / a measurement failed (ERROR) / a target missed (MISS).
EXIT_OK, EXIT_ERROR, EXIT_MISSED = 0, 1, 3


def exit_code(rows: Sequence[Row]) -> int:
    """1 when a measurement failed, else 3 when a target was missed, else 0 (INFO and SKIP pass)."""
    if any(row.status == ERROR for row in rows):
        return EXIT_ERROR
    return EXIT_MISSED if any(row.status == MISS for row in rows) else EXIT_OK


def doc_path(args: argparse.Namespace) -> Path | None:
    """Where to write the Markdown report: ``--output``, or docs/performance.md with ``--write-doc``;
    None (the default): the table is printed only, the tracked document is left alone."""
    if args.output is not None:
        return Path(args.output)
    return default_output() if args.write_doc else None


def report(rows: Sequence[Row], context: Mapping[str, str], output: Path | None, elapsed: float) -> int:
    """Print the table, write the document if asked, say what missed; the exit code."""
    print(text_table(rows))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(markdown(rows, context), encoding="utf-8")
        print(f"\nwritten to {output} ({elapsed:.0f} s)")
    else:
        print(
            f"\n({elapsed:.0f} s; no file written: --write-doc updates docs/performance.md,"
            " --output PATH writes elsewhere)"
        )
    code = exit_code(rows)
    for row in rows:
        if row.status in (MISS, ERROR):
            print(f"{row.status}: {row.name} ({row.ours} against target {row.target})", file=sys.stderr)
    if code == EXIT_MISSED:
        print(f"refinery bench: a target was missed (exit {EXIT_MISSED})", file=sys.stderr)
    elif code == EXIT_ERROR:
        print(f"refinery bench: a measurement failed (exit {EXIT_ERROR})", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="refinery bench",
        description=(
            "Measure the enricher's performance figures against the targets and print them. The table "
            "is written to docs/performance.md only with --write-doc (or elsewhere with --output). "
            "Exit 0: every target met; 3: a target was missed (MISS); 1: a measurement failed (ERROR)."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    parser.add_argument(
        "--skip-servers", action="store_true", help="no InfluxDB, moto S3 or fake Cloud Controller"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--write-doc", action="store_true", help="also write the report to docs/performance.md (tracked)"
    )
    where.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the report to PATH (default: not)",
    )
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the core path")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    output = doc_path(args)
    started = time.perf_counter()
    rows = {key: Row(key, name, server=server) for key, name, server in ROWS}

    _progress(f"building the workload ({sizes.label})")
    work = build_workload(sizes.records, sizes.snapshot_apps, sizes.active_apps)
    core: CoreFigures | None = None
    try:
        core = bench_core(work, sizes, rows)
        if args.profile:
            print_profile(work)
    except Exception as exc:
        failed(rows, ("core_floor", "core_point"), exc)
    try:
        bench_same_time(sizes, rows)
    except Exception as exc:
        failed(rows, ("same_time",), exc)
    try:
        bench_routing(work, sizes, rows)
    except Exception as exc:
        failed(rows, ("routing",), exc)
    e2e = None
    if args.skip_servers:
        for key in SERVER_ROWS:
            rows[key].how = "Not measured: `--skip-servers`."
    else:
        e2e = bench_servers(work, sizes, rows)
    sections: list[tuple[Callable[[Sizes, dict[str, Row]], None], tuple[str, ...]]] = [
        (bench_cold_start, ("cold_start",)),
        (bench_memory, ("memory",)),
        (bench_metadata, ("snapshot_size", "snapshot_load", "lookup")),
    ]
    for measure, keys in sections:
        try:
            measure(sizes, rows)
        except Exception as exc:
            failed(rows, keys, exc)
    if core is not None:
        cost_rows(core, e2e, work.records, rows)
    else:
        for key in ("cost_core", "cost_e2e"):
            rows[key].how = "Not computed: the core cost (1) was not measured."
    table = [rows[key] for key, _, _ in ROWS]

    elapsed = time.perf_counter() - started
    context = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "machine": machine(),
        "run": (
            f"{sizes.label} sizes, servers {'skipped' if args.skip_servers else 'used'},"
            f" {elapsed:.0f} s; `refinery bench{' --quick' if args.quick else ''}"
            f"{' --skip-servers' if args.skip_servers else ''}`"
        ),
        "workload": work.describe(),
    }
    return report(table, context, output, elapsed)


if __name__ == "__main__":
    raise SystemExit(main())
