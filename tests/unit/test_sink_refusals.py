"""Refused lines isolated in a few requests, what each server's refusal says, and the retry loop's words.

A scripted sink plays each server's documented behaviour on the lines of each request: InfluxDB 1.x and
2.x keep a field's type per shard and answer ``partial write: field type conflict … dropped=N``
(naming only the first conflict, writing the other points); InfluxDB 3 names the refused lines by
number. The request counts are the ones the fault suite measures against a real InfluxDB 1.x.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

import orjson
import pytest

from refinery.config import ConfigError
from refinery.lineparse import parse_line
from refinery.sinks.base import (
    MIN_REQUEST_SECONDS,
    Deadline,
    FlushError,
    Refused,
    Retryable,
    Sink,
    WriteReport,
)
from refinery.sinks.chunked import ChunkedSink
from refinery.sinks.fanout import FanoutSink
from refinery.sinks.refusal import Conflict, diagnose, error_text, field_type

FOREVER = Deadline(lambda: 10_000_000, reserve=0.0)


def soon(seconds: float) -> Deadline:
    """A deadline ``seconds`` from now, by the clock."""
    end = time.monotonic() + seconds
    return Deadline(lambda: max(0, int((end - time.monotonic()) * 1000)), reserve=0.0)


SHARD_NS = 7 * 86_400 * 10**9


def line(measurement: str, value: str, t: int, tag: str = "a") -> str:
    return f"{measurement},app={tag} duration={value} {t}"


class InfluxLike(ChunkedSink):
    """InfluxDB 1.x/2.x's write semantics on the lines of each request: a field's type is fixed per shard
    by the first point that has it; a point of another type is dropped, the others are written; the
    answer names the first conflict and counts the dropped points."""

    name = "influx-like"

    def __init__(self, status: int = 400, wrap: str = "error", **kwargs: object):
        super().__init__(sleep=lambda _: None, base_delay=0.0, **kwargs)  # type: ignore[arg-type]
        self.status, self.wrap = status, wrap
        self.types: dict[tuple[int, str, str], str] = {}
        self.stored: set[str] = set()
        self.requests = 0

    def seed(self, text: str) -> None:
        self._write([text])

    def _write(self, lines: Sequence[str]) -> tuple[str | None, int]:
        first, dropped = None, 0
        for text in lines:
            point = parse_line(text)
            ok = True
            for key, value in point.fields.items():
                slot = (point.timestamp // SHARD_NS, point.measurement, key)
                kind = field_type(value)
                existing = self.types.setdefault(slot, kind)
                if existing != kind:
                    ok = False
                    first = first or (
                        f'field type conflict: input field "{key}" on measurement "{point.measurement}" is '
                        f"type {kind}, already exists as type {existing}"
                    )
            if ok:
                self.stored.add(text)
            else:
                dropped += 1
        return first, dropped

    def post(self, body: bytes, timeout: float) -> None:
        self.requests += 1
        conflict, dropped = self._write(body.decode().splitlines())
        if conflict is not None:
            text = f"partial write: {conflict} dropped={dropped}"
            answer = orjson.dumps({self.wrap: text}).decode()
            raise Refused(f"answered {self.status}: {text}", self.status, body=answer)


def write(sink: Sink, lines: list[str]) -> WriteReport:
    try:
        return sink.write(lines, FOREVER)
    finally:
        sink.close()


@pytest.mark.parametrize("share", [1, 5, 10])
def test_a_conflict_on_any_share_of_a_chunk_costs_two_requests(share: int) -> None:
    sink = InfluxLike(batch_size=100)
    sink.seed(line("http_request", "1i", 0, "seed"))
    lines = [line("http_request" if i % 10 < share else "log", "0.5", i + 1) for i in range(300)]
    report = write(sink, lines)
    refused = {i for i, text in enumerate(lines) if text.startswith("http_request")}
    assert {i for i, _ in report.rejected} == refused
    assert sink.stored == {lines[i] for i in range(300) if i not in refused} | {
        line("http_request", "1i", 0, "seed")
    }
    assert sink.requests == (3 if share == 10 else 6)  # one per chunk, and the others once more
    assert all('input field "duration" on measurement "http_request"' in m for _, m in report.rejected)


def test_a_conflict_in_one_shard_only_is_narrowed_down_in_time_order() -> None:
    """Lines of the conflicting measurement, field and type are refused in one shard and written in
    another: the suspects are halved in time order, a few requests for the boundary, not per line."""
    sink = InfluxLike(batch_size=1000)
    sink.seed(line("http_request", "1i", SHARD_NS, "seed"))  # integer in shard 1 only
    lines = [line("http_request" if i % 2 else "log", "0.5", i * (2 * SHARD_NS // 400)) for i in range(400)]
    report = write(sink, lines)
    refused = {i for i, text in enumerate(lines) if text.startswith("http_request") and i >= 200}
    assert {i for i, _ in report.rejected} == refused
    assert sink.requests <= 12, sink.requests  # bisection over 200 suspects would take ~400


def test_the_second_conflict_of_a_request_is_found_too() -> None:
    sink = InfluxLike(batch_size=100)
    sink.seed(line("http_request", "1i", 0, "seed"))
    sink.seed("log,app=seed size=1.5 0")
    lines = [line("http_request", "0.5", 1), "log,app=a size=2i 2", "log,app=a size=3.5 3", "x,app=a v=1 4"]
    report = write(sink, lines)
    assert [i for i, _ in report.rejected] == [0, 1]
    assert sink.requests == 4  # all; the others (naming the second conflict); their others; the suspects


def test_influxdb2_s_422_with_a_message_body_is_read_alike() -> None:
    sink = InfluxLike(status=422, wrap="message", batch_size=100)
    sink.seed(line("http_request", "1i", 0, "seed"))
    lines = [line("http_request" if i % 2 else "log", "0.5", i + 1) for i in range(50)]
    report = write(sink, lines)
    assert len(report.rejected) == 25 and sink.requests == 2


class V3Like(ChunkedSink):
    """InfluxDB 3's partial write: the refused lines named by number (from 1), at most ``limit`` of them."""

    name = "v3-like"

    def __init__(self, refuse: set[str], limit: int = 100, **kwargs: object):
        super().__init__(sleep=lambda _: None, base_delay=0.0, **kwargs)  # type: ignore[arg-type]
        self.refuse, self.limit = refuse, limit
        self.stored: set[str] = set()
        self.requests = 0

    def post(self, body: bytes, timeout: float) -> None:
        self.requests += 1
        lines = body.decode().splitlines()
        bad = [n for n, text in enumerate(lines, 1) if text in self.refuse]
        self.stored |= {text for text in lines if text not in self.refuse}
        if bad:
            data = [
                {"original_line": lines[n - 1][:20], "line_number": n, "error_message": f"bad column {n}"}
                for n in bad[: self.limit]
            ]
            answer = orjson.dumps({"error": "partial write of line protocol occurred", "data": data}).decode()
            raise Refused("answered 400: partial write of line protocol occurred", 400, body=answer)


def test_influxdb3_names_the_lines_and_the_rest_is_sent_once_more() -> None:
    lines = [f"m,t=x v={i}i {i}" for i in range(250)]
    refuse = {lines[i] for i in range(0, 250, 2)}  # 125 lines: more than one answer lists
    sink = V3Like(refuse, batch_size=250)
    report = write(sink, lines)
    assert {lines[i] for i, _ in report.rejected} == refuse
    assert sink.requests == 3  # names 100, then the other 25, then nothing is left to refuse
    assert sink.stored == set(lines) - refuse
    assert all(re.search(r"; line \d+: bad column \d+$", m) for _, m in report.rejected)


def test_an_unreadable_refusal_is_bisected() -> None:
    class Opaque(ChunkedSink):
        def __init__(self) -> None:
            super().__init__(batch_size=64, sleep=lambda _: None)
            self.requests = 0

        def post(self, body: bytes, timeout: float) -> None:
            self.requests += 1
            if b"bad" in body:
                raise Refused("answered 413: too large", 413)

    lines = [("bad" if i == 37 else "ok") + f" v=1 {i}" for i in range(64)]
    sink = Opaque()
    report = write(sink, lines)
    assert [i for i, _ in report.rejected] == [37] and sink.requests == 1 + 2 * 6


@pytest.mark.parametrize(
    ("body", "named", "conflict", "dropped"),
    [
        (
            '{"error":"partial write: field type conflict: input field \\"duration\\" on measurement '
            '\\"http_request\\" is type float, already exists as type integer dropped=3"}',
            {},
            Conflict("http_request", "duration", "float", "integer"),
            3,
        ),
        (
            '{"error":"partial write: unable to parse \'m v= 1\': missing field value dropped=0"}',
            {1: True},
            None,
            None,
        ),
        (
            '{"code":"invalid","message":"unable to parse \'m v= 1\': missing field value"}',
            {1: True},
            None,
            None,
        ),
        ('{"error":"partial write: points beyond retention policy dropped=2"}', {}, None, 2),
        ("<html>502 Bad Gateway</html>", {}, None, None),
        ('{"error":"partial write of line protocol occurred","data":[{"line_number":9}]}', {}, None, None),
    ],
)
def test_each_server_s_refusal_is_read(
    body: str, named: dict[int, bool], conflict: Conflict | None, dropped: int | None
):
    found = diagnose(body, ["m v=1 0", "m v= 1"])
    assert set(found.named) == set(named)
    assert (found.conflict, found.dropped) == (conflict, dropped)


def test_error_text_unwraps_json_bodies() -> None:
    assert error_text('{"error":"a \\"b\\""}') == 'a "b"'
    assert error_text('{"code":"x","message":"m"}') == "m"
    assert error_text("plain") == "plain"


# ---------------------------------------------------------------------------- the failed write


class Failing(ChunkedSink):
    """Chunk by chunk: a chunk holding ``down`` always answers 503; a line in ``refuse`` is refused."""

    name = "failing"

    def __init__(self, down: str, refuse: set[str], **kwargs: object):
        super().__init__(base_delay=0.01, **kwargs)  # type: ignore[arg-type]
        self.down, self.refuse = down, refuse

    def post(self, body: bytes, timeout: float) -> None:
        lines = body.decode().split()
        if self.down in lines:
            raise Retryable("answered 503")
        if set(lines) & self.refuse:
            raise Refused("answered 400: refused", 400)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_failed_write_reports_refusals_only_among_the_acknowledged_lines(concurrency: int) -> None:
    lines = [str(n) for n in range(30)]
    sink = Failing("12", {"3", "15", "25"}, batch_size=10, concurrency=concurrency)
    with pytest.raises(FlushError) as caught:
        sink.write(lines, soon(2.0))  # chunk 2 gives up at the deadline; the others have ample time
    sink.close()
    assert caught.value.acknowledged == 10
    assert caught.value.report is not None and caught.value.report.rejected == [(3, "answered 400: refused")]


def test_fanout_reports_refusals_only_among_the_lines_every_sink_acknowledged() -> None:
    lines = [str(n) for n in range(30)]
    first = Failing("none", {"3", "25"}, batch_size=10)
    second = Failing("12", set(), batch_size=10)
    with pytest.raises(FlushError) as caught:
        FanoutSink([first, second]).write(lines, soon(2.0))
    assert caught.value.acknowledged == 10
    assert caught.value.report is not None and [i for i, _ in caught.value.report.rejected] == [3]


# --------------------------------------------------------------------- retries and the deadline


def test_a_reserve_not_less_than_the_invocation_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"FLUSH_TIME_RESERVE: 5 s is not less than the 4\.0 s"):
        Deadline(lambda: 4000, reserve=5.0)
    assert Deadline(lambda: 4000, reserve=3.0).remaining() == pytest.approx(1.0)


def test_retries_are_logged_and_end_before_the_deadline_with_a_clear_message(caplog) -> None:
    class Down(ChunkedSink):
        name = "down"

        def post(self, body: bytes, timeout: float) -> None:
            raise Retryable("POST http://h/write: connection refused (ConnectionError)")

    left = [1.0]

    def sleep(seconds: float) -> None:
        left[0] -= seconds

    sink = Down(sleep=sleep, timeout=10.0)
    with caplog.at_level(logging.WARNING), pytest.raises(FlushError) as caught:
        sink.write(["m v=1 1"], Deadline(lambda: int(left[0] * 1000), reserve=0.0))
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert retries and all(
        r.levelno == logging.WARNING and "connection refused" in r.getMessage() for r in retries
    )
    message = str(caught.value)
    assert message.startswith(f"down: gave up after {len(retries) + 1} attempt(s) in ")
    assert "the last one failed with POST http://h/write: connection refused" in message
    assert "no time is left for another before the invocation's deadline" in message
    assert left[0] >= MIN_REQUEST_SECONDS  # never slept past the deadline


def test_a_retry_after_beyond_the_deadline_gives_up_at_once_and_says_why() -> None:
    class Busy(ChunkedSink):
        name = "busy"

        def post(self, body: bytes, timeout: float) -> None:
            raise Retryable("answered 429", 429, retry_after=20.0)

    sink = Busy(sleep=lambda _: pytest.fail("slept"), max_retry_wait=30.0)
    with pytest.raises(
        FlushError, match=r"gave up after 1 attempt\(s\).*asked to wait 20.0 s \(Retry-After\)"
    ):
        sink.write(["m v=1 1"], Deadline(lambda: 5000, reserve=1.0))
