"""What every sink shares: error classes, the invocation deadline, chunking and the retry loop.

A sink's ``post(body)`` sends one chunk and raises one of:

* :class:`Retryable` — connection errors, timeouts, 429, 5xx: may succeed later, retried with
  backoff that honours ``Retry-After``, while the invocation has time left;
* :class:`Refused` — the server will never accept these lines as they are (400 bad line protocol
  or partial write such as a field type conflict, 413 too large, 422 partial write);
* :class:`Misconfigured` — 401, 403, 404 (a wrong token, database or bucket) and any other
  unexpected answer; retrying cannot help.

A refused chunk is split in halves and each half sent again, until exactly the refused lines are
isolated: they are reported in :attr:`WriteReport.rejected` (with the server's message) for the
quarantine, and every other line is written. Re-sending lines InfluxDB already took is harmless: a
point written twice is the same point.

:meth:`Sink.write` returns only when every line was acknowledged or isolated as refused; otherwise
it raises :class:`FlushError` (with how many leading lines were acknowledged), and the handler fails
the batch so the event source mapping retries it.

With ``concurrency`` above 1 (the InfluxDB v1 sink: ``INFLUX_WRITE_CONCURRENCY``), that many chunks
are in flight at once; the server's per-request work overlaps, which on a batch of several chunks
saves about a third of the flush time. The outcome is the one of writing them in order: the
acknowledged lines are the chunks before the first one that failed (a later chunk that was written
anyway is written again with the retried batch: the same points), and the report adds up every
chunk's. After a failure, chunks not yet started are not started; the write returns only when no
request of it is still in flight.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate

from ..tracing import traced


class SinkError(Exception):
    """Base of the errors a sink's ``post`` raises."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Retryable(SinkError):
    pass


class Refused(SinkError):
    pass


class Misconfigured(SinkError):
    pass


class FlushError(RuntimeError):
    """Not every line was acknowledged: the batch must fail (and be retried by the mapping).

    ``acknowledged`` is the number of leading lines that were written (or isolated as refused)
    before the failure, for partial batch responses.
    """

    def __init__(self, message: str, acknowledged: int = 0):
        super().__init__(message)
        self.acknowledged = acknowledged
        self.report: WriteReport | None = None


REFUSED_STATUSES = (400, 413, 422)
#: Most extra requests spent isolating refused lines in one write; past it the batch fails (a server
#: that refuses nearly everything is misconfigured, not holding a few bad points).
MAX_SPLIT_REQUESTS = 400


def classify_status(status: int, message: str, retry_after: float | None = None) -> SinkError:
    if status == 429 or status >= 500:
        return Retryable(message, status, retry_after)
    if status in REFUSED_STATUSES:
        return Refused(message, status)
    if status in (401, 403):
        return Misconfigured(
            f"{message} (check the token / user name and password and their permissions)", status
        )
    if status == 404:
        return Misconfigured(f"{message} (the database, bucket or organisation does not exist)", status)
    return Misconfigured(f"{message} (unexpected answer)", status)


@dataclass
class Deadline:
    """Time left in the invocation, less a reserve kept for reporting the outcome."""

    remaining_ms: Callable[[], int]
    reserve: float = 3.0

    def remaining(self) -> float:
        return self.remaining_ms() / 1000.0 - self.reserve


@dataclass
class WriteReport:
    lines: int = 0
    chunks: int = 0
    bytes: int = 0
    attempts: int = 0
    retries: int = 0
    splits: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    skipped_fields: int = 0  # fields the sink cannot carry (remote write: strings)

    def add_counts(self, other: WriteReport) -> None:
        """Add another report's request counts and errors (not its lines, chunks, time or refusals)."""
        self.bytes += other.bytes
        self.attempts += other.attempts
        self.retries += other.retries
        self.splits += other.splits
        self.skipped_fields += other.skipped_fields
        self.errors.extend(other.errors)


def chunks(lines: Sequence[str], size: int) -> list[Sequence[str]]:
    return [lines[i : i + size] for i in range(0, len(lines), size)]


class Sink:
    """Chunking and retries around a subclass's ``post``."""

    name = "sink"

    def __init__(
        self,
        batch_size: int = 5000,
        timeout: float = 10.0,
        max_retry_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        base_delay: float = 0.2,
        concurrency: int = 1,
    ):
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_retry_wait = max_retry_wait
        self.sleep = sleep
        self.base_delay = base_delay
        self.concurrency = concurrency  # chunks in flight at once; post() must then be thread-safe
        self._pool: ThreadPoolExecutor | None = None  # created on the first concurrent write

    def post(self, body: bytes, timeout: float) -> None:
        """Send one chunk; ``timeout`` bounds the request (never beyond the invocation's deadline)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and threads (the sink is otherwise kept for the container's life)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def encode(self, lines: Sequence[str], first: int) -> bytes:
        """The request body of a chunk (``first``: its first line's index in the batch)."""
        return ("\n".join(lines) + "\n").encode()

    @traced("## sink write")
    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        report = WriteReport(lines=len(lines))
        started = time.monotonic()
        parts = chunks(lines, self.batch_size)
        if self.concurrency > 1 and len(parts) > 1:
            self._write_concurrently(parts, deadline, report)
        else:
            self._write_in_order(parts, deadline, report)
        report.seconds = time.monotonic() - started
        return report

    def _write_in_order(self, parts: list[Sequence[str]], deadline: Deadline, report: WriteReport) -> None:
        done = 0
        try:
            for chunk in parts:
                self._write_chunk(chunk, done, deadline, report)
                report.chunks += 1
                done += len(chunk)
        except FlushError as exc:
            exc.acknowledged = done
            exc.report = report  # lines refused (isolated) before the failure are in report.rejected
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
            index, exc = failure
            exc.acknowledged = firsts[index]
            exc.report = report
            raise exc

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:  # write() is called by one invocation at a time
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"{self.name}-write")
        return self._pool

    def _write_chunk(self, lines: Sequence[str], first: int, deadline: Deadline, report: WriteReport) -> None:
        body = self.encode(lines, first)
        try:
            self._post_with_retries(body, deadline, report)
            report.bytes += len(body)
        except Refused as exc:
            if len(lines) == 1:
                report.rejected.append((first, str(exc)))
                return
            report.splits += 1
            if report.splits > MAX_SPLIT_REQUESTS:
                raise FlushError(
                    f"{self.name}: the server refuses too many points to isolate them "
                    f"({MAX_SPLIT_REQUESTS} splits); last answer: {exc}"
                ) from exc
            middle = len(lines) // 2
            self._write_chunk(lines[:middle], first, deadline, report)
            self._write_chunk(lines[middle:], first + middle, deadline, report)

    def _post_with_retries(self, body: bytes, deadline: Deadline, report: WriteReport) -> None:
        attempt = 0
        while True:
            attempt += 1
            left = deadline.remaining()
            if left <= 0:
                last = f"; last error: {report.errors[-1]}" if report.errors else ""
                raise FlushError(
                    f"{self.name}: no time left in the invocation for a write "
                    f"({attempt - 1} attempt(s) made{last})"
                )
            report.attempts += 1
            try:
                self.post(body, min(self.timeout, left))
                return
            except Retryable as exc:
                report.errors.append(str(exc))
                wait = self._backoff(attempt, exc.retry_after)
                left = deadline.remaining()
                if wait >= left:
                    raise FlushError(
                        f"{self.name}: gave up after {attempt} attempt(s), {max(left, 0):.1f} s left in the "
                        f"invocation: {exc}"
                    ) from exc
                report.retries += 1
                self.sleep(wait)
            except Misconfigured as exc:
                raise FlushError(f"{self.name}: configuration error: {exc}") from exc

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_wait)
        ceiling = min(self.max_retry_wait, self.base_delay * 2 ** min(attempt - 1, 30))  # no float overflow
        return random.uniform(ceiling / 2, ceiling)
