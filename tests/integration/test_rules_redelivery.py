"""Recording rules and remote write under redelivery (issue 19), against real InfluxDB 1.x, Prometheus
and VictoriaMetrics, through the real handler.

Four rules like the recording-rules seed's (a filtered sum by app and status, a regex count with
``keep_raw: false``, a maximum, a count under an ``=`` matcher; 30 s windows), ``EXTRA_TAGS`` and an
app filter, over streams of ``redelivery.make_stream`` (twins, re-sends in the same and in other
partitions, 3 partitions) dated near the present so Prometheus takes them. Each window's sum is
read the way the README says to query it — InfluxQL ``GROUP BY time(30s)`` on InfluxDB, PromQL
``sum_over_time(…[30s])`` evaluated at window ends (``query_range``, step 30 s) on Prometheus and
VictoriaMetrics — and compared with an oracle computed here from the records alone: InfluxDB counts
each distinct record once (a re-send is the same event), remote write each Kafka record once.

* the five observations of the issue, each as its own small history;
* random histories (``redelivery.Mapping``): failed flushes (before, between and at the aggregates'
  request) retried and re-cut, partial-batch-response configuration, one partition per invocation,
  a backlog whose head is older than ``MAX_RECORD_AGE_SECONDS`` (quarantined ``too_old``), then the
  quarantine replayed twice — the sums exact in every sink after each phase, the series exactly those
  of the records, nothing quarantined but the old head, and the second replay changing nothing;
* rewinds over committed offsets and lost commits, cut differently: exact in every sink (the
  aggregation ledger, ``rules/ledger.py``: covered offsets add to no new aggregate, stored aggregates
  are sent again identical), nothing quarantined;
* a rewind against Prometheus *without* an out-of-order window: the re-sent samples it refuses as
  out of order are read back, acknowledged, and nothing is quarantined.

``REDELIVERY_SEED=<n>`` reruns one random history (the seed is in every assertion message).
"""

from __future__ import annotations

import math
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
import requests
from faults import accounted
from redelivery import Mapping, ProxyFlushFaults, Stream, StreamRecord, make_stream

from refinery.config import SETTINGS
from refinery.handlers import enricher
from refinery.lineparse import parse_line
from refinery.quarantine import decode_records
from refinery.sinks.prometheus_rw import metric_name, point_labels
from refinery_tools.dev.prometheus import _CONFIG, PrometheusServer
from refinery_tools.dev.servers import InfluxDB1Server, VictoriaMetricsServer
from refinery_tools.replay import replay
from support.faultproxy import FaultProxy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]

S = 1_000_000_000
WINDOW_S = 30
WINDOW = WINDOW_S * S
KEY = "metadata/apps.json.gz"
QUARANTINE = "quarantine/"
INVOKE_TIMEOUT = 20.0
EXCLUDED_APP = "app-3"  # FILTER_EXCLUDE_APPS


@dataclass(frozen=True)
class RuleSpec:
    name: str
    source: str
    match: Callable[[dict[str, str]], bool]
    keep: tuple[str, ...]
    field: str | None
    aggregation: str
    yaml: str

    @property
    def metric(self) -> str:
        return f"{self.name}_{self.aggregation}"


RULES = (
    RuleSpec(
        "http_bytes_by_app_status",
        "http_request",
        lambda tags: re.fullmatch("2..", tags.get("status_code", "")) is not None,
        ("app", "status_code"),
        "response_size",
        "sum",
        """  - name: http_bytes_by_app_status
    source: http_request
    filter: ['status_code =~ "2.."']
    keep: [app, status_code]
    field: response_size
    aggregation: sum
    window: 30s
""",
    ),
    RuleSpec(
        "app_log_lines",
        "log",
        lambda tags: tags.get("type") in ("OUT", "ERR"),
        ("app",),
        None,
        "count",
        """  - name: app_log_lines
    source: log
    filter: ['type =~ "OUT|ERR"']
    keep: [app]
    aggregation: count
    window: 30s
    keep_raw: false
""",
    ),
    RuleSpec(
        "slowest_request",
        "http_request",
        lambda tags: True,
        ("org",),
        "duration",
        "max",
        """  - name: slowest_request
    source: http_request
    keep: [org]
    field: duration
    aggregation: max
    window: 30s
""",
    ),
    RuleSpec(
        "org0_requests_by_space",
        "http_request",
        lambda tags: tags.get("org") == "org-0",
        ("space",),
        None,
        "count",
        """  - name: org0_requests_by_space
    source: http_request
    filter: ['org = "org-0"']
    keep: [space]
    aggregation: count
    window: 30s
""",
    ),
)
RULES_YAML = "rules:\n" + "".join(rule.yaml for rule in RULES)
OUTER = {"sum": "sum", "count": "sum", "max": "max", "min": "min"}

Sums = dict[tuple[str, tuple[str, ...], int], float]  # (rule, group, window start ns) -> value


# ---------------------------------------------------------------------------------------- the oracle


def truth(lines: Iterator[tuple[str, int]]) -> Sums:
    """Window values from (raw line, how many times it counts): the rules applied here, independently."""
    out: Sums = {}
    for line, weight in lines:
        point = parse_line(line)
        if point.tags.get("app") == EXCLUDED_APP:
            continue
        for rule in RULES:
            if point.measurement != rule.source or not rule.match(point.tags):
                continue
            key = (
                rule.name,
                tuple(point.tags.get(k, "") for k in rule.keep),
                point.timestamp // WINDOW * WINDOW,
            )
            value = 1.0 if rule.field is None else float(point.fields[rule.field])
            if rule.aggregation in ("sum", "count"):
                out[key] = out.get(key, 0.0) + value * weight
            else:
                op = max if rule.aggregation == "max" else min
                out[key] = op(out.get(key, value), value)
    return out


def influx_truth(stream: Stream, records: list[StreamRecord]) -> Sums:
    """InfluxDB: each distinct record (value) once."""
    values = {r.value for r in records if r.value in stream.expected}
    return truth((stream.expected[v], 1) for v in values)


def remote_truth(stream: Stream, records: list[StreamRecord]) -> Sums:
    """Remote write: each Kafka record (partition, offset) once, re-sends included."""
    counts = Counter(r.value for r in {(r.partition, r.offset): r for r in records}.values())
    return truth((stream.expected[v], n) for v, n in counts.items() if v in stream.expected)


def consumed(point_tags: dict[str, str], measurement: str) -> bool:
    """The raw point is not written: a keep_raw: false rule took it."""
    return measurement == "log" and point_tags.get("type") in ("OUT", "ERR")


def expected_series(stream: Stream, records: list[StreamRecord], run: str) -> tuple[set[Any], set[Any]]:
    """(InfluxDB rule series, remote-write series: raw and rules with partitions) the records make."""
    influx: set[Any] = set()
    remote: set[Any] = set()
    for record in records:
        line = stream.expected.get(record.value)
        if line is None:
            continue
        point = parse_line(line)
        if point.tags.get("app") == EXCLUDED_APP:
            continue
        tags = {**point.tags, "run": run}
        if not consumed(point.tags, point.measurement):
            for name, value in point.fields.items():
                if not isinstance(value, str):
                    remote.add((metric_name(point.measurement, name), point_labels(tags)))
        for rule in RULES:
            if point.measurement == rule.source and rule.match(point.tags):
                group = tuple(point.tags.get(k, "") for k in rule.keep)
                influx.add((rule.name, group))
                labels = {k: v for k, v in zip(rule.keep, group, strict=True) if v}
                labels.update({"run": run, "partition": f"{stream.topic}-{record.partition}"})
                if rule.name == "org0_requests_by_space":
                    labels["org"] = "org-0"
                remote.add((rule.metric, point_labels(labels)))
    return influx, remote


# ---------------------------------------------------------------------------------- reading the sinks


class OutOfOrderPrometheus(PrometheusServer):
    """Prometheus with ``storage.tsdb.out_of_order_time_window: 2h`` (the README's recommendation)."""

    def _command(self) -> list[str]:
        command = super()._command()
        config = "storage:\n  tsdb:\n    out_of_order_time_window: 2h\n"
        (self.data_dir / "prometheus.yml").write_text(_CONFIG + config)
        return command


@pytest.fixture(scope="module")
def prometheus_ooo(prometheus: PrometheusServer) -> Iterator[PrometheusServer]:
    """A second Prometheus (the session one shows the binary is there, or fails in CI)."""
    with OutOfOrderPrometheus() as server:
        yield server


@pytest.fixture(scope="module")
def vm_dedup(victoriametrics: VictoriaMetricsServer) -> Iterator[VictoriaMetricsServer]:
    with VictoriaMetricsServer(extra_args=["-dedup.minScrapeInterval=1ms"]) as server:
        yield server


def influx_sums(influx: InfluxDB1Server, db: str, run: str, start: int, end: int) -> Sums:
    out: Sums = {}
    for rule in RULES:
        keep = ", ".join(f'"{k}"' for k in rule.keep)
        query = (
            f'SELECT {OUTER[rule.aggregation]}("{rule.aggregation}") FROM "{rule.name}" WHERE "run" = '
            f"'{run}' AND time >= {start} AND time < {end} GROUP BY time({WINDOW_S}s), {keep}"
        )
        for series in influx.query(db, query)["results"][0].get("series", []):
            group = tuple((series.get("tags") or {}).get(k, "") for k in rule.keep)
            for stamp, value in series["values"]:
                if value is not None:
                    out[(rule.name, group, stamp)] = float(value)
    return out


def promql_sums(base: str, run: str, start: int, end: int) -> Sums:
    """The README's PromQL per rule, evaluated at every window end: the value of the window before."""
    out: Sums = {}
    for rule in RULES:
        outer = OUTER[rule.aggregation]
        query = (
            f"{outer} by ({', '.join(rule.keep)}) "
            f'({outer}_over_time({rule.metric}{{run="{run}"}}[{WINDOW_S}s]))'
        )
        params = {"query": query, "start": start // S + WINDOW_S, "end": end // S, "step": WINDOW_S}
        answer = requests.get(f"{base}/api/v1/query_range", params={**params, "nocache": 1}, timeout=30)
        assert answer.status_code == 200, answer.text
        for series in answer.json()["data"]["result"]:
            group = tuple(series["metric"].get(k, "") for k in rule.keep)
            for stamp, value in series["values"]:
                out[(rule.name, group, (int(stamp) - WINDOW_S) * S)] = float(value)
    return out


def remote_series(base: str, run: str) -> set[Any]:
    answer = requests.get(f"{base}/api/v1/series", params={"match[]": f'{{run="{run}"}}'}, timeout=30)
    assert answer.status_code == 200, answer.text
    out = set()
    for labels in answer.json()["data"]:
        name = labels.pop("__name__")
        out.add((name, tuple(sorted(labels.items()))))
    return out


def influx_series(influx: InfluxDB1Server, db: str, run: str) -> set[Any]:
    out = set()
    for rule in RULES:
        body = influx.query(db, f'SHOW SERIES FROM "{rule.name}" WHERE "run" = \'{run}\'')
        for (key,) in (body["results"][0].get("series") or [{"values": []}])[0]["values"]:
            tags = dict(pair.split("=", 1) for pair in key.split(",")[1:])
            out.add((rule.name, tuple(tags.get(k, "") for k in rule.keep)))
    return out


def differences(got: Sums, want: Sums, limit: int = 6) -> list[str]:
    keys = sorted(set(got) | set(want))
    wrong = [k for k in keys if not math.isclose(got.get(k, math.nan), want.get(k, math.nan), rel_tol=1e-9)]
    return [f"{k}: stored {got.get(k)}, expected {want.get(k)}" for k in wrong[:limit]] + (
        [f"... {len(wrong) - limit} more"] if len(wrong) > limit else []
    )


# ------------------------------------------------------------------------------------------- the rig


@dataclass
class Rig:
    influx: InfluxDB1Server
    db: str
    remote: str  # "prometheus" or "victoriametrics"
    remote_url: str  # the server's base URL
    proxy: FaultProxy
    bucket: str
    monkeypatch: pytest.MonkeyPatch
    invoke: Callable[..., dict[str, Any]]
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def configure(self, **values: str) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)
        enricher.reset_runtime()

    def call(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.invoke(event, timeout=INVOKE_TIMEOUT)

    def remote_sums(self, start: int, end: int, want: Sums) -> Sums:
        deadline = time.monotonic() + (15.0 if self.remote == "victoriametrics" else 0.0)
        while True:  # VictoriaMetrics makes new samples searchable within seconds
            if self.remote == "victoriametrics":
                requests.get(f"{self.remote_url}/internal/force_flush", timeout=30).raise_for_status()
            got = promql_sums(self.remote_url, self.run, start, end)
            if not differences(got, want) or time.monotonic() >= deadline:
                return got
            time.sleep(0.5)

    def quarantined(self) -> list[dict[str, Any]]:
        s3 = boto3.client("s3")
        keys = [
            item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=QUARANTINE)
            for item in page.get("Contents", [])
        ]
        return [
            record
            for key in keys
            for record in decode_records(s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        ]


@pytest.fixture(params=["prometheus", "victoriametrics"])
def rig(
    request, monkeypatch, influxdb1, influx_db, s3_bucket, invoke, prometheus_ooo, vm_dedup, tmp_path
) -> Iterator[Rig]:
    """InfluxDB 1.x and one remote-write server (behind a fault proxy): Prometheus with an out-of-order
    window, or VictoriaMetrics with deduplication — each as the README says to run it."""
    server = prometheus_ooo if request.param == "prometheus" else vm_dedup
    for setting in SETTINGS:  # nothing from the caller's environment
        for suffix in ("", "_SECRET", "_PARAMETER"):
            monkeypatch.delenv(setting.name + suffix, raising=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    proxy = FaultProxy(server.url).start()
    rig = Rig(influxdb1, influx_db, request.param, server.url, proxy, s3_bucket, monkeypatch, invoke)
    monkeypatch.setenv("METADATA_BUCKET", s3_bucket)
    monkeypatch.setenv("QUARANTINE_PREFIX", QUARANTINE)
    monkeypatch.setenv("INFLUX_URL", influxdb1.url)
    monkeypatch.setenv("INFLUX_DATABASE", influx_db)
    monkeypatch.setenv("INFLUX_TIMEOUT", "5s")
    monkeypatch.setenv("PROM_REMOTE_WRITE_URL", f"{proxy.url}/api/v1/write")
    monkeypatch.setenv("PROM_TIMEOUT", "5s")
    monkeypatch.setenv("PROM_MAX_RETRY_WAIT", "60s")  # a Retry-After of 60 s: give up at once
    monkeypatch.setenv("FLUSH_TIME_RESERVE", "1s")
    monkeypatch.setenv("RULES_FILE", str(rules))
    monkeypatch.setenv("EXTRA_TAGS", f"run={rig.run}")
    monkeypatch.setenv("FILTER_EXCLUDE_APPS", EXCLUDED_APP)
    enricher.reset_runtime()
    yield rig
    enricher.reset_runtime()
    proxy.stop()


def a_stream(rng: random.Random, records: int = 180, old_head: float = 0.0) -> Stream:
    """Events one per second from 8 minutes ago (several 30 s windows), 3 partitions."""
    start = (time.time_ns() // WINDOW) * WINDOW - 8 * 60 * S
    return make_stream(
        rng,
        partitions=3,
        records=records,
        old_head=old_head,
        now_ms=int(time.time() * 1000),
        start_ns=start + rng.randrange(WINDOW // S) * S,
        step_ns=S + rng.randrange(1000) * 1000,
    )


def span(stream: Stream) -> tuple[int, int]:
    stamps = [parse_line(line).timestamp for line in stream.expected.values()]
    return min(stamps) // WINDOW * WINDOW - WINDOW, (max(stamps) // WINDOW + 2) * WINDOW


def check_exact(rig: Rig, stream: Stream, records: list[StreamRecord], label: str) -> None:
    """Every window's value exact in InfluxDB and in the remote-write server, and exactly the series."""
    start, end = span(stream)
    want_influx, want_remote = influx_truth(stream, records), remote_truth(stream, records)
    assert want_influx and want_remote
    problems = differences(influx_sums(rig.influx, rig.db, rig.run, start, end), want_influx)
    assert not problems, f"{label} InfluxDB:\n" + "\n".join(problems)
    problems = differences(rig.remote_sums(start, end, want_remote), want_remote)
    assert not problems, f"{label} {rig.remote}:\n" + "\n".join(problems)
    influx_want, remote_want = expected_series(stream, records, rig.run)
    assert influx_series(rig.influx, rig.db, rig.run) == influx_want, f"{label} InfluxDB series"
    got = remote_series(rig.remote_url, rig.run)
    assert got == remote_want, (
        f"{label} {rig.remote} series: extra {got - remote_want}, missing {remote_want - got}"
    )


def event_of(stream: Stream, spans: dict[int, tuple[int, int]]) -> dict[str, Any]:
    return stream.event(spans)


# ------------------------------------------------------------------------------ the five observations


def small_stream(seed: int) -> Stream:
    """One partition of records, a few per window."""
    rng = random.Random(seed)
    start = (time.time_ns() // WINDOW) * WINDOW - 5 * 60 * S
    return make_stream(
        rng,
        partitions=1,
        records=24,
        now_ms=int(time.time() * 1000),
        start_ns=start,
        step_ns=7 * S,
        twin_rate=0.0,
        resend_rate=0.0,
    )


def test_observation_1_a_smaller_retry_after_a_failed_flush_is_exact(rig: Rig) -> None:
    """[0..n) fails — at the remote write's first request, or only at its aggregates — then its two halves."""
    stream = small_stream(1)
    boto3.client("s3").put_object(Bucket=rig.bucket, Key=KEY, Body=stream.snapshot)
    end = stream.ends[0]
    half = end // 2
    for passes in (0, 1):  # fail the raw samples' request; pass it and fail the aggregates' request
        rig.proxy.clear()
        rig.proxy._failures.extend([None] * passes)  # type: ignore[list-item]
        rig.proxy.fail_next(5, status=503, retry_after="60")
        with pytest.raises(Exception, match="503"):
            rig.call(event_of(stream, {0: (0, end)}))
        rig.proxy.clear()
    results = [rig.call(event_of(stream, {0: (0, half)})), rig.call(event_of(stream, {0: (half, end)}))]
    assert all(r["summary"]["quarantined"] == 0 for r in results)
    check_exact(rig, stream, stream.records, "[observation 1]")


def test_observation_2_a_rewind_over_committed_offsets_is_exact(rig: Rig) -> None:
    """[0..h), [h..n), then [0..n) as one batch (a rewind over committed offsets), then each half again:
    InfluxDB's points are rewritten identical; the aggregates are the ledger's, sent again identical."""
    stream = small_stream(2)
    boto3.client("s3").put_object(Bucket=rig.bucket, Key=KEY, Body=stream.snapshot)
    end, half = stream.ends[0], stream.ends[0] // 2
    for first, last in ((0, half), (half, end), (0, end), (0, half), (half, end)):
        summary = rig.call(event_of(stream, {0: (first, last)}))["summary"]
        assert summary["quarantined"] == 0, [(e["detail"], e["line"]) for e in rig.quarantined()]
    start, stop = span(stream)
    problems = differences(
        influx_sums(rig.influx, rig.db, rig.run, start, stop), influx_truth(stream, stream.records)
    )
    assert not problems, "[observation 2] InfluxDB:\n" + "\n".join(problems)
    check_exact(rig, stream, stream.records, "[observation 2]")
    assert rig.quarantined() == []


def test_observation_3_replaying_a_refused_raw_sample_changes_no_sum(
    monkeypatch, influxdb1, influx_db, s3_bucket, prometheus, invoke, tmp_path
) -> None:
    """Prometheus without an out-of-order window refuses a late raw sample: it is quarantined for
    Prometheus with its line; replaying it writes it to Prometheus only (refused again), so no window
    sum moves, in either sink, and no aggregate appears."""
    proxy = FaultProxy(prometheus.url).start()
    try:
        rig = Rig(influxdb1, influx_db, "prometheus", prometheus.url, proxy, s3_bucket, monkeypatch, invoke)
        _configure_plain(rig, tmp_path, f"{prometheus.url}/api/v1/write")
        stream = small_stream(3)
        boto3.client("s3").put_object(Bucket=rig.bucket, Key=KEY, Body=stream.snapshot)
        end, half = stream.ends[0], stream.ends[0] // 2
        # The later half first (say, from another partition's invocation), then the earlier half: its
        # aggregates (and some raw samples) are older than their series' newest.
        summary = rig.call(event_of(stream, {0: (half, end)}))["summary"]
        assert summary["quarantined"] == 0
        summary = rig.call(event_of(stream, {0: (0, half)}))["summary"]
        assert summary["quarantined_by_reason"].get("rejected_by_server", 0) > 0, summary
        entries = rig.quarantined()
        assert entries and all(e["sink"] == "prometheus-remote-write" and e["line"] for e in entries)
        assert all(e["offset"] < half for e in entries)
        start, stop = span(stream)
        before = (
            influx_sums(rig.influx, rig.db, rig.run, start, stop),
            promql_sums(prometheus.url, rig.run, start, stop),
        )
        assert before[0] == pytest.approx(influx_truth(stream, stream.records))
        report = replay(f"s3://{rig.bucket}/{QUARANTINE}")
        assert report.records == len({e["offset"] for e in entries})
        after = (
            influx_sums(rig.influx, rig.db, rig.run, start, stop),
            promql_sums(prometheus.url, rig.run, start, stop),
        )
        assert after == before
        assert report.written == 0 and sum(report.still_refused.values()) == report.records
    finally:
        proxy.stop()


def _configure_plain(rig: Rig, tmp_path: Any, write_url: str, **more: str) -> None:
    for setting in SETTINGS:
        for suffix in ("", "_SECRET", "_PARAMETER"):
            rig.monkeypatch.delenv(setting.name + suffix, raising=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_YAML)
    rig.configure(
        METADATA_BUCKET=rig.bucket,
        QUARANTINE_PREFIX=QUARANTINE,
        INFLUX_URL=rig.influx.url,
        INFLUX_DATABASE=rig.db,
        PROM_REMOTE_WRITE_URL=write_url,
        RULES_FILE=str(rules),
        EXTRA_TAGS=f"run={rig.run}",
        FILTER_EXCLUDE_APPS=EXCLUDED_APP,
        FLUSH_TIME_RESERVE="1s",
        **more,
    )


def test_observation_4_redeliveries_do_not_flood_the_quarantine(
    monkeypatch, influxdb1, influx_db, s3_bucket, prometheus, invoke, tmp_path
) -> None:
    """Prometheus without an out-of-order window: the batch's raw samples go out in time order (small
    requests: one series' samples in several), and a redelivery of the same batches — Prometheus
    refuses the rewrites as out of order — is read back and acknowledged: nothing quarantined."""
    rng = random.Random(4)
    start = (time.time_ns() // WINDOW) * WINDOW - 6 * 60 * S
    stream = make_stream(
        rng,
        partitions=1,
        records=60,
        now_ms=int(time.time() * 1000),
        start_ns=start,
        step_ns=3 * S,
        resend_rate=0.0,
    )
    proxy = FaultProxy(prometheus.url)  # not started: not used
    rig = Rig(influxdb1, influx_db, "prometheus", prometheus.url, proxy, s3_bucket, monkeypatch, invoke)
    _configure_plain(rig, tmp_path, prometheus.write_url, PROM_BATCH_SIZE="3")
    boto3.client("s3").put_object(Bucket=rig.bucket, Key=KEY, Body=stream.snapshot)
    end = stream.ends[0]
    # The partition's records shuffled within each batch, as several sources' events arrive.
    cuts = [(0, 20), (20, 40), (40, end)]
    rewrites = 0
    for attempt in range(2):  # delivered, then every batch redelivered
        for first, last in cuts:
            event = event_of(stream, {0: (first, last)})
            random.Random(first).shuffle(event["records"][stream.key(0)])
            summary = rig.call(event)["summary"]
            assert summary["quarantined"] == 0, summary
            rewrites += summary.get("sink_rewrites", 0) if attempt else 0
    assert rig.quarantined() == []
    assert rewrites > 0  # refused, read back, acknowledged
    check_exact(rig, stream, stream.records, "[observation 4]")


def test_observation_5_promql_counts_each_aggregate_in_one_window(rig: Rig) -> None:
    """An aggregate whose first offset is 0 is one millisecond after its window's start: the query
    at the previous window's end does not count it."""
    stream = small_stream(5)
    boto3.client("s3").put_object(Bucket=rig.bucket, Key=KEY, Body=stream.snapshot)
    rig.call(event_of(stream, {0: (0, stream.ends[0])}))
    check_exact(rig, stream, stream.records, "[observation 5]")


# ----------------------------------------------------------------------------------- random histories

_SEED = os.environ.get("REDELIVERY_SEED")
SEED = int(_SEED) if _SEED else random.SystemRandom().randrange(2**32)


class RemoteMapping(Mapping):
    """The mapping, told how many requests the remote-write sink makes for a batch (its raw points
    in PROM_BATCH_SIZE chunks, then the aggregates in one), so a fault armed always fails one."""

    batch_size = 1

    def lines(self, spans: dict[int, tuple[int, int]]) -> int:
        raw = set()
        aggregates = False
        for p, (first, end) in spans.items():
            for record in self._logs[p][first:end]:
                line = self.stream.expected.get(record.value)
                if line is None or self.not_written(record):
                    continue
                point = parse_line(line)
                if point.tags.get("app") == EXCLUDED_APP:
                    continue
                if not consumed(point.tags, point.measurement):
                    raw.add(line)
                aggregates = aggregates or any(
                    point.measurement == rule.source and rule.match(point.tags) for rule in RULES
                )
        return len(raw) + (self.batch_size if aggregates else 0)


def test_random_histories_leave_every_window_exact_in_every_sink(rig: Rig) -> None:
    rng = random.Random(SEED)
    tag = f"[REDELIVERY_SEED={SEED} {rig.remote}]"
    stream = a_stream(rng, old_head=0.1)
    boto3.client("s3").put_object(Bucket=rig.bucket, Key=KEY, Body=stream.snapshot)
    quarantine_ok = {"too_old"}

    def check(invocation: Any) -> None:
        reasons = set(invocation.summary["quarantined_by_reason"])
        assert reasons <= quarantine_ok, f"{tag} quarantined: {invocation.summary}"
        assert accounted(invocation.summary)

    mapping = RemoteMapping(
        stream, rig.call, rng, new_container=enricher.reset_runtime, check=check, label=tag
    )
    batch_size = rng.choice((4, 7))
    mapping.batch_size = batch_size
    mapping.faults = ProxyFlushFaults(rig.proxy, batch_size)

    def episode(*, partial: bool, max_age: str = "0") -> None:
        rig.configure(
            PROM_BATCH_SIZE=str(batch_size),
            MAX_RECORD_AGE_SECONDS=max_age,
            REPORT_BATCH_ITEM_FAILURES="true" if partial else "false",
        )

    ends, old = stream.ends, stream.old_heads
    backlog = [min(end, head + rng.randint(2, 6)) for head, end in zip(old, ends, strict=True)]
    middle = [b + (end - b) // 2 for b, end in zip(backlog, ends, strict=True)]
    # 1. A backlog whose head is older than MAX_RECORD_AGE_SECONDS: quarantined too_old, not written.
    mapping.not_written = lambda record: record.old
    episode(partial=False, max_age="3600s")
    mapping.consume(backlog, partial=False, max_batch=8, fault_rate=0.3)
    mapping.not_written = lambda record: False
    quarantine_ok = set()
    # 2. Failed flushes (raw samples, or the aggregates' request), retried and re-cut.
    episode(partial=False)
    mapping.consume(
        middle, partial=False, cut="mixed", max_batch=rng.choice((10, 25)), fault_rate=0.4, first_faulted=2
    )
    # 3. Partial batch responses configured (rules fail whole batches) and one partition per invocation.
    episode(partial=True)
    mapping.consume(ends, partial=True, cut="per_partition", max_batch=rng.choice((10, 25)), fault_rate=0.3)
    assert mapping.committed == ends and mapping.stats.errors >= 2, f"{tag} {mapping.stats.describe()}"
    fresh = [r for r in stream.records if not r.old]
    check_exact(rig, stream, fresh, f"{tag} before the replay ({mapping.stats.describe()})")
    entries = rig.quarantined()
    assert entries and {e["reason"] for e in entries} == {"too_old"}, (
        f"{tag} {Counter(e['reason'] for e in entries)}"
    )
    # Exactly the old records (a redelivery cut differently may write one again, in another object:
    # the replay takes each Kafka record once).
    old_records = {(r.partition, r.offset) for r in stream.records if r.old}
    assert {(e["partition"], e["offset"]) for e in entries} == old_records, tag
    # 4. The quarantine replayed: exactly what was never written is added; a second replay adds nothing.
    rig.configure(PROM_REMOTE_WRITE_URL=f"{rig.remote_url}/api/v1/write", MAX_RECORD_AGE_SECONDS="0")
    for number in (1, 2):
        report = replay(f"s3://{rig.bucket}/{QUARANTINE}")
        assert not report.still_refused and not report.unreadable, f"{tag} {report.as_dict()}"
        check_exact(rig, stream, stream.records, f"{tag} after replay {number}")
    print(f"{tag} {stream.describe()}; {mapping.stats.describe()}")


def test_rewinds_and_lost_commits_are_exact_in_every_sink(rig: Rig) -> None:
    """Offset rewinds and lost commits: the same records delivered again, cut differently; exact in
    every sink, nothing quarantined, and the ledger's cost measured."""
    rng = random.Random(SEED + 1)
    tag = f"[REDELIVERY_SEED={SEED} {rig.remote} rewinds]"
    stream = a_stream(rng)
    boto3.client("s3").put_object(Bucket=rig.bucket, Key=KEY, Body=stream.snapshot)
    mapping = RemoteMapping(stream, rig.call, rng, new_container=enricher.reset_runtime, label=tag)
    rig.configure(PROM_BATCH_SIZE="50")
    ends = stream.ends
    mapping.consume(ends, partial=False, cut="mixed", max_batch=12)
    clean = rig.remote_sums(*span(stream), remote_truth(stream, stream.records))
    assert not differences(clean, remote_truth(stream, stream.records)), f"{tag} before the rewinds"
    for _ in range(2):
        mapping.rewind([0] * stream.partitions, share=1.0)
        mapping.consume(
            ends, partial=False, cut="any", max_batch=rng.choice((5, 9, 17)), lost_commit_rate=0.2
        )
    assert mapping.stats.rewinds > 0, f"{tag} {mapping.stats.describe()}"
    check_exact(rig, stream, stream.records, f"{tag} after the rewinds ({mapping.stats.describe()})")
    assert rig.quarantined() == [], f"{tag} a redelivery quarantined records"
    print(
        f"{tag} after {mapping.stats.rewinds} rewinds and {mapping.stats.lost_commits} lost commits "
        f"({mapping.stats.records_delivered} records delivered for {len(stream.records)}): exact"
    )


def test_a_rewind_against_prometheus_without_an_out_of_order_window_quarantines_nothing(
    monkeypatch, influxdb1, influx_db, s3_bucket, prometheus, invoke, tmp_path
) -> None:
    """Prometheus as it comes (no out-of-order window), one partition: delivered in order, then rewound
    twice and cut differently. The ledger sends the stored aggregates again; Prometheus refuses them
    (and the raw samples) as out of order or accepts them as duplicates; the sink reads them back and
    acknowledges them: exact, and nothing quarantined."""
    rng = random.Random(SEED + 2)
    tag = f"[REDELIVERY_SEED={SEED} prometheus without out-of-order window]"
    stream = small_stream(SEED + 2)
    proxy = FaultProxy(prometheus.url)  # not started: not used
    rig = Rig(influxdb1, influx_db, "prometheus", prometheus.url, proxy, s3_bucket, monkeypatch, invoke)
    _configure_plain(rig, tmp_path, prometheus.write_url)
    boto3.client("s3").put_object(Bucket=rig.bucket, Key=KEY, Body=stream.snapshot)
    end = stream.ends[0]
    cuts = sorted(rng.sample(range(1, end), 3))
    first = [0, *cuts]
    for a, b in zip(first, [*cuts, end], strict=True):  # in order
        summary = rig.call(event_of(stream, {0: (a, b)}))["summary"]
        assert summary["quarantined"] == 0, f"{tag} {[(e['detail'], e['line']) for e in rig.quarantined()]}"
    rewrites = 0
    for at in (0, rng.randrange(end // 2)):  # rewound to the start, then to a random offset; cut anew
        while at < end:
            size = rng.randint(1, 9)
            summary = rig.call(event_of(stream, {0: (at, min(end, at + size))}))["summary"]
            assert summary["quarantined"] == 0, (
                f"{tag} {[(e['detail'], e['line']) for e in rig.quarantined()]}"
            )
            rewrites += summary.get("sink_rewrites", 0)
            at += size
    assert rig.quarantined() == [], tag
    assert rewrites > 0, tag
    check_exact(rig, stream, stream.records, tag)
