"""The remote-write sink against a server with Prometheus' append rules (2.42, no out-of-order window):
refused rewrites read back and acknowledged, genuinely refused samples isolated, a point whose
millisecond its series holds with another value moved, whole, to the next free one, aggregates that conflict
keeping the stored value. The same against the real Prometheus: tests/integration/test_rules_redelivery.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fake_prometheus import FakePrometheus

from refinery.config import PrometheusConfig
from refinery.sinks import Deadline
from refinery.sinks.prometheus_rw import PrometheusRemoteWriteSink
from refinery.sinks.remote_read import read_url

DEADLINE = Deadline(lambda: 60_000, reserve=1.0)
T = 1_700_000_000_000_000_000  # ns, on a millisecond
MS = 1_000_000


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    server = FakePrometheus()
    yield server
    server.close()


def sink_for(prom: FakePrometheus, **settings: Any) -> PrometheusRemoteWriteSink:
    return PrometheusRemoteWriteSink(PrometheusConfig(url=prom.url, **settings), sleep=lambda s: None)


def test_the_read_endpoint_is_beside_the_write_endpoint() -> None:
    assert read_url("http://p:9090/api/v1/write") == "http://p:9090/api/v1/read"
    assert read_url("https://p/prom/api/v1/write/?x=1") == "https://p/prom/api/v1/read?x=1"
    assert read_url("http://mimir/api/v1/push") is None


def test_a_redelivered_batch_is_read_back_and_acknowledged(prom: FakePrometheus) -> None:
    lines = [f"log,app=a count=1i,size={i}i {T + i * MS}" for i in range(6)]
    sink = sink_for(prom, batch_size=4)
    assert sink.write(lines, DEADLINE).rejected == []
    writes = prom.writes
    report = sink.write(lines, DEADLINE)  # every sample is a rewrite; the older ones are refused
    assert report.rejected == [] and report.rewrites > 0
    # No halving: each refused request (two of four points) read back once, its rewrites acknowledged.
    assert prom.reads == 2 and prom.writes - writes <= 4
    assert prom.values("log_size") == {T // MS + i: float(i) for i in range(6)}


def test_new_data_the_server_refuses_is_isolated_and_the_rest_written(prom: FakePrometheus) -> None:
    sink = sink_for(prom)
    sink.write([f"log,app=a size=1i {T + 10 * MS}"], DEADLINE)
    late = f"log,app=a size=2i {T + 5 * MS}"  # older than the series' newest: refused for good
    lines = [late, f"log,app=a size=1i {T + 10 * MS}", f"log,app=b size=3i {T + 5 * MS}"]
    report = sink.write(lines, DEADLINE)
    assert [index for index, _ in report.rejected] == [0]
    assert "out of order sample" in report.rejected[0][1]
    assert report.rewrites == 1  # app=a at T+10: held, identical
    assert prom.values("log_size") == {T // MS + 10: 1.0, T // MS + 5: 3.0}


def test_another_event_at_a_millisecond_its_series_holds_is_moved_to_the_next_free_one(
    prom: FakePrometheus,
) -> None:
    sink = sink_for(prom)
    first = f"instance,app=a,instance=0 cpu=1,memory=5i {T + 321}"
    other = f"instance,app=a,instance=0 cpu=1,memory=6i {T + 654}"  # same series, same millisecond
    assert sink.write([first], DEADLINE).rejected == []
    report = sink.write([other], DEADLINE)
    # Moved whole: its cpu=1 equals the first event's, but it is another event's sample (a point's
    # fields are decided together, never held field by field).
    assert report.rejected == [] and report.rewrites == 0
    assert prom.values("instance_memory") == {T // MS: 5.0, T // MS + 1: 6.0}
    assert prom.values("instance_cpu") == {T // MS: 1.0, T // MS + 1: 1.0}
    again = sink.write([other], DEADLINE)  # delivered again: found where it was moved
    assert again.rejected == [] and again.rewrites == 2
    assert prom.values("instance_memory") == {T // MS: 5.0, T // MS + 1: 6.0}
    assert prom.values("instance_cpu") == {T // MS: 1.0, T // MS + 1: 1.0}
    assert sink.write([first], DEADLINE).rewrites == 2  # the first, again: held where it is
    # Both in one batch (moved apart in time order), then each alone: nothing new, nothing refused.
    sink.write([f"m,s=x f=1 {T + 7}", f"m,s=x f=2 {T + 8}"], DEADLINE)
    for line in (f"m,s=x f=2 {T + 8}", f"m,s=x f=1 {T + 7}"):
        assert sink.write([line], DEADLINE).rejected == []
    assert prom.values("m_f") == {T // MS: 1.0, T // MS + 1: 2.0}


def test_an_aggregate_held_with_another_value_keeps_the_stored_one(prom: FakePrometheus) -> None:
    sink = sink_for(prom)
    sink.write_atomic(
        [f"n,partition=p-0 count=2i {T + MS}", f"n,partition=p-0 count=1i {T + 5 * MS}"], DEADLINE
    )
    report = sink.write_atomic([f"n,partition=p-0 count=3i {T + MS}"], DEADLINE)  # cut differently
    assert report.rejected == [] and report.conflicts == 1
    assert prom.values("n_count") == {T // MS + 1: 2.0, T // MS + 5: 1.0}
    # A raw point is not an aggregate: another value at its millisecond is another event (moved).
    report = sink.write([f"n,partition=p-0 count=3i {T + 5 * MS}"], DEADLINE)
    assert report.rejected == [] and prom.values("n_count")[T // MS + 6] == 3.0


def test_without_a_read_endpoint_refused_samples_are_isolated(prom: FakePrometheus) -> None:
    lines = [f"log,app=a size={i}i {T + i * MS}" for i in range(3)]
    sink = sink_for(prom)
    sink.write(lines, DEADLINE)
    prom.read_status = 404
    report = sink.write(lines, DEADLINE)
    assert [index for index, _ in report.rejected] == [0, 1]  # the newest is accepted as identical
    assert report.rewrites == 0


def test_too_old_for_the_out_of_order_window_is_a_refusal_not_a_retry(prom: FakePrometheus) -> None:
    prom.too_old_before = T // MS
    report = sink_for(prom).write(
        [f"log,app=a size=1i {T - 3600 * 1000 * MS}", f"log,app=a size=2i {T}"], DEADLINE
    )
    assert [index for index, _ in report.rejected] == [0] and report.retries == 0
    assert "too old sample" in report.rejected[0][1]
    assert prom.values("log_size") == {T // MS: 2.0}


def test_a_point_moved_past_other_events_lands_after_the_series_newest(prom: FakePrometheus) -> None:
    """Three events of one series in one millisecond, cut [a], [b, twin of a], [c]: b is moved past
    the twin to T+2; c, moved, must land after T+2 (Prometheus refuses anything older), not at T+1."""
    sink = sink_for(prom)
    assert sink.write([f"m,s=x a=1,b=7i {T + 546}"], DEADLINE).rejected == []
    batch = [f"m,s=x a=2,b=7i {T + 278}", f"m,s=x a=1,b=7i {T + 496}"]  # the second: a's values again
    assert sink.write(batch, DEADLINE).rejected == []
    report = sink.write([f"m,s=x a=1,b=9i {T + 739}"], DEADLINE)
    assert report.rejected == []
    assert prom.values("m_b") == {T // MS: 7.0, T // MS + 2: 7.0, T // MS + 3: 9.0}
    assert sink.write([f"m,s=x a=1,b=9i {T + 739}"], DEADLINE).rewrites == 2  # found there again
