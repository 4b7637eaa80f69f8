"""Chunks written concurrently (``INFLUX_WRITE_CONCURRENCY``) give the outcome of writing them in order.

A scripted sink decides each request's answer from its lines alone (not from the order the
requests arrive in), so the same script can be played through the sequential and the concurrent
write and the outcomes compared: success or the acknowledged prefix, the refused lines, the counts.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refinery.config import load_enricher_config
from refinery.sinks.base import Deadline, FlushError, Misconfigured, Refused, Retryable, WriteReport
from refinery.sinks.chunked import ChunkedSink
from refinery.sinks.influx_v1 import InfluxV1Sink

FOREVER = Deadline(lambda: 10_000_000, reserve=0.0)


class Scripted(ChunkedSink):
    """Lines are ``"<n>"``; a request fails for good when it holds a line in ``fail``, is refused
    when it holds one in ``refuse`` (split until isolated), and is retried once when it holds one in
    ``flaky`` (answered 503 the first time that exact body is sent)."""

    name = "scripted"

    def __init__(self, fail=(), refuse=(), flaky=(), barrier: threading.Barrier | None = None, **kwargs):
        super().__init__(sleep=lambda _: None, base_delay=0.0, **kwargs)
        self.fail, self.refuse, self.flaky = set(fail), set(refuse), set(flaky)
        self.barrier = barrier
        self.lock = threading.Lock()
        self.seen: set[bytes] = set()
        self.written: list[str] = []
        self.in_flight = self.most_in_flight = 0

    def post(self, body: bytes, timeout: float) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            first_time = body not in self.seen
            self.seen.add(body)
        try:
            if self.barrier is not None:
                self.barrier.wait()  # the first requests meet here: they are in flight together
            lines = set(body.decode().split())
            if lines & self.fail:
                raise Misconfigured("404 database not found")
            if lines & self.refuse:
                raise Refused("400 partial write: field type conflict")
            if first_time and lines & self.flaky:
                raise Retryable("503 busy")
            with self.lock:
                self.written.extend(sorted(lines, key=int))
        finally:
            with self.lock:
                self.in_flight -= 1


def outcome(sink: ChunkedSink, lines: Sequence[str]) -> tuple[object, ...]:
    try:
        report = sink.write(lines, FOREVER)
    except FlushError as exc:
        report = exc.report or WriteReport()
        # what the pipeline reads of a failed write: the prefix, and the refusals within it
        return ("failed", exc.acknowledged, [(i, m) for i, m in report.rejected if i < exc.acknowledged])
    return ("ok", report.chunks, report.rejected, report.splits, report.retries, report.bytes)


LINES = [str(n) for n in range(40)]


def test_two_chunks_are_in_flight_at_the_same_time() -> None:
    barrier = threading.Barrier(2, timeout=10)  # written one by one, the first request would time out
    sink = Scripted(barrier=barrier, batch_size=10, concurrency=2)
    try:
        report = sink.write(LINES[:20], FOREVER)
    finally:
        sink.close()
    assert report.chunks == 2 and sink.most_in_flight == 2
    assert sorted(sink.written, key=int) == LINES[:20]


def test_a_failed_chunk_acknowledges_only_the_chunks_before_it() -> None:
    sink = Scripted(fail={"25"}, batch_size=10, concurrency=4)
    try:
        with pytest.raises(FlushError) as caught:
            sink.write(LINES, FOREVER)
    finally:
        sink.close()
    assert caught.value.acknowledged == 20
    assert caught.value.report is not None and "404" in str(caught.value)
    # chunks after the failed one may have been written too: the retried batch writes them again
    assert set(LINES[:20]) <= set(sink.written) and not set(LINES[20:30]) & set(sink.written)


def test_refused_lines_are_isolated_in_every_chunk_and_reported_in_order() -> None:
    sink = Scripted(refuse={"3", "17", "31"}, flaky={"12"}, batch_size=10, concurrency=3)
    try:
        report = sink.write(LINES, FOREVER)
    finally:
        sink.close()
    assert [index for index, _ in report.rejected] == [3, 17, 31]
    assert sorted(sink.written, key=int) == [n for n in LINES if n not in {"3", "17", "31"}]
    assert report.chunks == 4 and report.retries == 1 and report.splits > 0


def test_the_same_sink_writes_many_batches_and_closes() -> None:
    sink = Scripted(batch_size=3, concurrency=2)
    for _ in range(20):
        assert sink.write(LINES[:10], FOREVER).chunks == 4
    sink.close()
    assert sink._pool is None


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=40),
    batch_size=st.integers(min_value=1, max_value=12),
    concurrency=st.integers(min_value=2, max_value=5),
    fail=st.sets(st.sampled_from(LINES), max_size=2),
    refuse=st.sets(st.sampled_from(LINES), max_size=4),
    flaky=st.sets(st.sampled_from(LINES), max_size=3),
)
def test_concurrent_writes_end_like_writes_in_order(
    size: int, batch_size: int, concurrency: int, fail: set[str], refuse: set[str], flaky: set[str]
) -> None:
    lines = LINES[:size]
    in_order = Scripted(fail, refuse, flaky, batch_size=batch_size, concurrency=1)
    at_once = Scripted(fail, refuse, flaky, batch_size=batch_size, concurrency=concurrency)
    try:
        assert outcome(at_once, lines) == outcome(in_order, lines)
    finally:
        at_once.close()
    # whatever the sequential write wrote, the concurrent one wrote too (and perhaps more after a failure)
    assert set(in_order.written) <= set(at_once.written)


def test_the_influx_v1_sink_takes_its_concurrency_from_the_setting() -> None:
    base = {"INFLUX_URL": "http://127.0.0.1:1", "INFLUX_DATABASE": "db", "METADATA_BUCKET": "snapshots"}
    assert InfluxV1Sink(load_enricher_config(base).influx).concurrency == 2
    assert (
        InfluxV1Sink(load_enricher_config({**base, "INFLUX_WRITE_CONCURRENCY": "1"}).influx).concurrency == 1
    )
    with pytest.raises(Exception, match="INFLUX_WRITE_CONCURRENCY"):
        load_enricher_config({**base, "INFLUX_WRITE_CONCURRENCY": "17"})
