"""What every sink is and shares: the interface, the invocation deadline, the report, the errors.

:class:`Sink` is the whole interface the pipeline writes through: ``write(lines, deadline)`` returns a
:class:`WriteReport` only when every line was acknowledged or isolated as refused; otherwise it raises
:class:`FlushError` (with how many leading lines were acknowledged, and, in its report, only the
refusals among those), and the handler fails the batch so the event source mapping retries it. The
printer, the fan-out, the routed sink and the test sinks implement just that; the sinks that send
requests build on :class:`refinery.sinks.chunked.ChunkedSink` (chunking, concurrency, retries,
isolation) and :class:`refinery.sinks.http.HttpSink` (the HTTP request).

A request's failure is classified (:func:`classify_status`) as one of:

* :class:`Retryable` — connection errors, timeouts, 429, 5xx: may succeed later, retried with
  backoff that honours ``Retry-After``, while the invocation has time left; each retry is logged
  at WARNING with its cause;
* :class:`Refused` — the server will never accept some of these lines as they are (400 bad line
  protocol or partial write such as a field type conflict, 413 too large, 422 partial write);
* :class:`Misconfigured` — 401, 403, 404 (a wrong token, database or bucket), a redirect, a success
  that is not the write API's (InfluxDB answers a write with 204: a 200 comes from something else,
  a proxy's page) and any other unexpected answer; retrying cannot help.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..config import ConfigError, default_of

log = logging.getLogger(__name__)


class SinkError(Exception):
    """Base of the errors a sink's ``post`` raises; ``body`` is the start of the server's answer."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None, body: str = ""
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.body = body


class Retryable(SinkError):
    pass


class Refused(SinkError):
    pass


class Misconfigured(SinkError):
    pass


class FlushError(RuntimeError):
    """Not every line was acknowledged: the batch must fail (and be retried by the mapping).

    ``acknowledged`` is the number of leading lines that were written (or isolated as refused)
    before the failure, for partial batch responses; ``report.rejected`` holds only refusals among
    them (the others are sent again with the redelivered records).
    """

    def __init__(self, message: str, acknowledged: int = 0):
        super().__init__(message)
        self.acknowledged = acknowledged
        self.report: WriteReport | None = None


REFUSED_STATUSES = (400, 413, 422)
#: Quarantine reason (and refusal message prefix) of a routed line whose destination does not exist or
#: refuses authorisation (:mod:`refinery.sinks.routed`): replayable once it exists.
DESTINATION_UNAVAILABLE = "destination_unavailable"
#: The least time worth starting a request with.
MIN_REQUEST_SECONDS = 0.05


def classify_status(status: int, message: str, retry_after: float | None = None, body: str = "") -> SinkError:
    if status == 429 or status >= 500:
        return Retryable(message, status, retry_after, body)
    if status in REFUSED_STATUSES:
        return Refused(message, status, body=body)
    if status in (401, 403):
        return Misconfigured(
            f"{message} (check the token / user name and password and their permissions)", status, body=body
        )
    if status == 404:
        return Misconfigured(
            f"{message} (the database, bucket or organisation does not exist)", status, body=body
        )
    return Misconfigured(f"{message} (unexpected answer)", status, body=body)


@dataclass
class Deadline:
    """Time left in the invocation, less a reserve kept for reporting the outcome.

    Built when the invocation starts: a reserve (``FLUSH_TIME_RESERVE``) that is not less than the
    time the invocation has is a configuration error naming the setting (every write would
    otherwise fail with "no time left").
    """

    remaining_ms: Callable[[], int]
    reserve: float = default_of("FLUSH_TIME_RESERVE")

    def __post_init__(self) -> None:
        total = self.remaining_ms() / 1000.0
        if self.reserve > 0 and self.reserve >= total:
            raise ConfigError(
                [
                    f"FLUSH_TIME_RESERVE: {self.reserve:g} s is not less than the {total:.1f} s this "
                    "invocation has (the function's timeout): no write would ever have time; lower "
                    "FLUSH_TIME_RESERVE or raise the function's timeout"
                ]
            )

    def remaining(self) -> float:
        return self.remaining_ms() / 1000.0 - self.reserve


@dataclass
class WriteReport:
    lines: int = 0
    chunks: int = 0
    bytes: int = 0
    attempts: int = 0  # requests sent (every retry and every isolation request included)
    retries: int = 0
    splits: int = 0  # steps taken to isolate refused lines (each costs one or two requests)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    skipped_fields: int = 0  # fields the sink cannot carry (remote write: strings)
    rewrites: int = 0  # refused samples the server already held, identical: acknowledged (remote write)
    conflicts: int = 0  # aggregates the server already held with another value: its value kept

    def add_counts(self, other: WriteReport) -> None:
        """Add another report's request counts and errors (not its lines, chunks, time or refusals)."""
        self.bytes += other.bytes
        self.attempts += other.attempts
        self.retries += other.retries
        self.splits += other.splits
        self.skipped_fields += other.skipped_fields
        self.rewrites += other.rewrites
        self.conflicts += other.conflicts
        self.errors.extend(other.errors)


class Sink:
    """Where a batch's lines go. Subclasses implement :meth:`write`; :meth:`close` releases resources."""

    name = "sink"

    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        """Write every line, or raise :class:`FlushError` saying how many leading lines were acknowledged."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and threads (a sink is otherwise kept for the container's life)."""


def attach_outcome(exc: FlushError, acknowledged: int, report: WriteReport) -> None:
    """Attach the outcome to a failed write: the acknowledged prefix and the refusals within it only.

    A line refused after the first unacknowledged one (in the failed chunk, in a later chunk written
    concurrently, or in another destination's group) belongs to a record that is delivered again: it
    is refused again then. Quarantining it now would count its record twice.
    """
    exc.acknowledged = acknowledged
    report.rejected = [(index, message) for index, message in report.rejected if index < acknowledged]
    exc.report = report
