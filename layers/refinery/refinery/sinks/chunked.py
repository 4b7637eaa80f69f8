"""Chunking, concurrency, retries and refused-line isolation around one request: ``post(body, timeout)``.

A subclass's ``post`` sends one chunk, taking at most ``timeout`` seconds by wall clock (connecting,
sending and the whole answer: :mod:`refinery.sinks.http`), and raises one of the errors of
:mod:`refinery.sinks.base` when it fails. Retries follow the shared schedule (:mod:`refinery.retry`).

A refused chunk is narrowed down to exactly the refused lines, with as few requests as the server's
answer allows (:mod:`refinery.sinks.refusal`): lines the server names are refused at once; a field
type conflict (measurement, field, type) makes its lines the suspects, so a chunk with any number
of conflicting lines costs a few requests per distinct conflict; anything else is halved until each
refused line is alone. The refused lines are reported in :attr:`WriteReport.rejected` (with the
server's message) for the quarantine, and every other line is written. Re-sending lines InfluxDB
already took is harmless: a point written twice is the same point.

:meth:`Sink.write` returns only when every line was acknowledged or isolated as refused; otherwise
it raises :class:`FlushError` (with how many leading lines were acknowledged, and, in its report,
only the refusals among those), and the handler fails the batch so the event source mapping retries
it.

With ``concurrency`` above 1 (the InfluxDB v1 sink: ``INFLUX_WRITE_CONCURRENCY``), that many chunks
are in flight at once; the server's per-request work overlaps, which on a batch of several chunks
saves about a third of the flush time. The outcome is the one of writing them in order: the
acknowledged lines are the chunks before the first one that failed (a later chunk that was written
anyway is written again with the retried batch: the same points; its refused lines are refused
again then, and quarantined once), and the report adds up every chunk's counts. After a failure,
chunks not yet started are not started; the write returns only when no request of it is still in
flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate

from ..config import default_of
from ..retry import NoRetry, RetryPolicy
from ..tracing import traced
from .base import (
    MIN_REQUEST_SECONDS,
    Deadline,
    FlushError,
    Misconfigured,
    Refused,
    Retryable,
    Sink,
    WriteReport,
    attach_outcome,
)
from .refusal import diagnose

log = logging.getLogger(__name__)

#: Most requests spent isolating refused lines in one write; past it the batch fails (a server that
#: refuses nearly everything for reasons it does not name is misconfigured, not holding a few bad points).
MAX_SPLIT_REQUESTS = 400


def chunks(lines: Sequence[str], size: int) -> list[Sequence[str]]:
    return [lines[i : i + size] for i in range(0, len(lines), size)]


def _timestamp(line: str) -> int:
    try:
        return int(line.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0


class ChunkedSink(Sink):
    """Chunking, concurrency, retries and refused-line isolation around a subclass's ``post``."""

    name = "sink"

    def __init__(
        self,
        batch_size: int = default_of("INFLUX_BATCH_SIZE"),
        timeout: float = default_of("INFLUX_TIMEOUT"),
        max_retry_wait: float = default_of("INFLUX_MAX_RETRY_WAIT"),
        sleep: Callable[[float], None] = time.sleep,
        base_delay: float = 0.2,
        concurrency: int = 1,
    ):
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_retry_wait = max_retry_wait
        self.sleep = sleep
        # Retry-After above max_retry_wait is shortened to it (INFLUX_MAX_RETRY_WAIT, PROM_MAX_RETRY_WAIT)
        self.retry = RetryPolicy(base=base_delay, cap=max_retry_wait, cap_server_wait=True)
        self.concurrency = concurrency  # chunks in flight at once; post() must then be thread-safe
        self._pool: ThreadPoolExecutor | None = None  # created on the first concurrent write

    def post(self, body: bytes, timeout: float) -> None:
        """Send one chunk within ``timeout`` seconds, wall clock (never beyond the invocation's deadline)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and threads (the sink is otherwise kept for the container's life)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def encode(self, lines: Sequence[str], indexes: Sequence[int]) -> bytes:
        """The request body of some lines (``indexes``: their positions in the batch)."""
        return ("\n".join(lines) + "\n").encode()

    @traced("## sink write")
    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        report = WriteReport(lines=len(lines))
        started = time.monotonic()
        parts = chunks(lines, self.batch_size)
        try:
            if self.concurrency > 1 and len(parts) > 1:
                self._write_concurrently(parts, deadline, report)
            else:
                self._write_in_order(parts, deadline, report)
        finally:
            report.seconds = time.monotonic() - started  # a failed write's report (FlushError) too
            report.rejected.sort()  # by line: isolation finds them in another order
        return report

    def _write_in_order(self, parts: list[Sequence[str]], deadline: Deadline, report: WriteReport) -> None:
        done = 0
        try:
            for chunk in parts:
                self._write_chunk(chunk, done, deadline, report)
                report.chunks += 1
                done += len(chunk)
        except FlushError as exc:
            attach_outcome(exc, done, report)
            raise

    def _write_concurrently(
        self, parts: list[Sequence[str]], deadline: Deadline, report: WriteReport
    ) -> None:
        firsts = list(accumulate((len(part) for part in parts[:-1]), initial=0))
        reports = [WriteReport(lines=len(part)) for part in parts]
        pool = self._executor()
        futures: list[Future[None]] = [
            pool.submit(self._write_chunk, part, first, deadline, own)
            for part, first, own in zip(parts, firsts, reports, strict=True)
        ]
        failure: tuple[int, FlushError] | None = None
        for index, future in enumerate(futures):
            if future.cancelled():  # after a failure: never started
                continue
            try:
                future.result()  # waits: nothing of this write is left in flight when it returns
            except FlushError as exc:
                if failure is None:
                    failure = (index, exc)
                    for later in futures[index + 1 :]:
                        later.cancel()  # not started yet: not started at all
            except BaseException:
                for later in futures[index + 1 :]:
                    later.cancel()
                for later in futures[index + 1 :]:
                    if not later.cancelled():
                        later.exception()  # wait for it, whatever it raised
                raise
            else:
                report.chunks += 1
        for own in reports:  # in chunk order, so rejected lines stay sorted by index
            report.add_counts(own)
            report.rejected.extend(own.rejected)
        if failure is not None:
            index, error = failure
            attach_outcome(error, firsts[index], report)
            raise error

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:  # write() is called by one invocation at a time
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"{self.name}-write")
        return self._pool

    # -- one chunk, and isolating what the server refuses --------------------------------------------
    def _write_chunk(self, lines: Sequence[str], first: int, deadline: Deadline, report: WriteReport) -> None:
        self._send(list(range(len(lines))), lines, first, deadline, report)

    def _send(
        self, part: list[int], lines: Sequence[str], first: int, deadline: Deadline, report: WriteReport
    ) -> bool:
        """Write ``lines[i] for i in part``; True when the server took them all at the first request."""
        if not part:
            return True
        body = self.encode([lines[i] for i in part], [first + i for i in part])
        try:
            self._post_with_retries(body, deadline, report)
        except Refused as exc:
            self._isolate(part, lines, first, exc, deadline, report)
            return False
        report.bytes += len(body)
        return True

    def _isolate(
        self,
        part: list[int],
        lines: Sequence[str],
        first: int,
        refusal: Refused,
        deadline: Deadline,
        report: WriteReport,
    ) -> None:
        """The request of exactly ``part`` was refused: find which of its lines, in few requests."""
        if len(part) == 1:
            report.rejected.append((first + part[0], str(refusal)))
            return
        report.splits += 1
        if report.splits > MAX_SPLIT_REQUESTS:
            raise FlushError(
                f"{self.name}: the server refuses too many points to isolate them "
                f"({MAX_SPLIT_REQUESTS} steps); last answer: {refusal}"
            )
        sent = [lines[i] for i in part]
        found = diagnose(refusal.body or str(refusal), sent)
        if found.named:  # the server named the refused lines: refuse them, send the rest again
            for position in sorted(found.named):
                report.rejected.append((first + part[position], f"{refusal}; {found.named[position]}"))
            rest = [i for p, i in enumerate(part) if p not in found.named]
            self._send(rest, lines, first, deadline, report)
            return
        if found.dropped is not None and found.dropped >= len(part):  # it refused every one of them
            report.rejected.extend((first + i, str(refusal)) for i in part)
            return
        if found.conflict is not None:
            matching = {p for p, line in enumerate(sent) if found.conflict.matches(line)}
            if matching:
                suspects = [i for p, i in enumerate(part) if p in matching]
                others = [i for p, i in enumerate(part) if p not in matching]
                clean = self._send(others, lines, first, deadline, report)
                if clean and others and found.dropped == len(suspects):
                    # The others were all taken (re-sent: a type once stored stays), so the dropped points
                    # were the suspects: all of them.
                    report.rejected.extend((first + i, str(refusal)) for i in suspects)
                    return
                if not clean:  # how many suspects were refused is unknown: ask with them alone
                    self._send(suspects, lines, first, deadline, report)
                    return
                # Some suspects were taken, some refused: a field's type is kept per shard (a time
                # range), so the refused ones are runs in time order. Halve them in that order.
                suspects.sort(key=lambda i: _timestamp(lines[i]))
                self._halve(suspects, lines, first, deadline, report)
                return
        self._halve(part, lines, first, deadline, report)

    def _halve(
        self, part: list[int], lines: Sequence[str], first: int, deadline: Deadline, report: WriteReport
    ) -> None:
        middle = len(part) // 2
        self._send(part[:middle], lines, first, deadline, report)
        self._send(part[middle:], lines, first, deadline, report)

    # -- one request, retried ------------------------------------------------------------------------
    def _post_with_retries(self, body: bytes, deadline: Deadline, report: WriteReport) -> None:
        attempt = 0
        started = time.monotonic()
        while True:
            left = deadline.remaining()
            if left < MIN_REQUEST_SECONDS:
                raise FlushError(self._gave_up(attempt, started, report, deadline, None))
            attempt += 1
            report.attempts += 1
            try:
                self.post(body, min(self.timeout, left))
                return
            except Retryable as exc:
                report.errors.append(str(exc))
                left = deadline.remaining()
                try:
                    # never so long that no attempt fits before the deadline: the last waits shrink to
                    # half the time left, until too little is left to try again (refinery/retry.py)
                    wait = self.retry.wait(
                        attempt,
                        exc.retry_after,
                        time_left=left,
                        needs=2 * MIN_REQUEST_SECONDS,
                        attempt_timeout=self.timeout,
                    )
                except NoRetry as stop:
                    asked = exc if exc.retry_after is not None else None
                    raise FlushError(self._gave_up(attempt, started, report, deadline, asked)) from stop
                report.retries += 1
                log.warning(
                    "%s: write attempt %d failed: %s; retrying in %.2f s (%.1f s left before the "
                    "invocation's deadline, less FLUSH_TIME_RESERVE)",
                    self.name,
                    attempt,
                    exc,
                    wait,
                    left,
                )
                self.sleep(wait)
            except Misconfigured as exc:
                raise FlushError(f"{self.name}: configuration error: {exc}") from exc

    def _gave_up(
        self,
        attempts: int,
        started: float,
        report: WriteReport,
        deadline: Deadline,
        asked: Retryable | None,
    ) -> str:
        elapsed = time.monotonic() - started
        if asked is not None:
            return (
                f"{self.name}: gave up after {attempts} attempt(s) in {elapsed:.1f} s: {asked}; the server "
                f"asked to wait {asked.retry_after:.1f} s (Retry-After), which would pass the invocation's "
                f"deadline (less FLUSH_TIME_RESERVE={deadline.reserve:g} s)"
            )
        if attempts == 0:
            return (
                f"{self.name}: no time was left for a write before the invocation's deadline "
                f"(FLUSH_TIME_RESERVE={deadline.reserve:g} s is kept back to report the outcome)"
            )
        last = f": the last one failed with {report.errors[-1]}" if report.errors else ""
        return (
            f"{self.name}: gave up after {attempts} attempt(s) in {elapsed:.1f} s{last}; no time is left for "
            f"another before the invocation's deadline (FLUSH_TIME_RESERVE={deadline.reserve:g} s is kept "
            "back to report the outcome)"
        )
