"""Tenant routing in the InfluxDB sink: each point to its destination, every group with the same guarantees.

:class:`RoutedSink` wraps the configured InfluxDB sink (v1 or v2). A write groups the lines by
destination (:class:`~refinery.routing.Router`: the route is computed once per app GUID) and writes
each group, one after the other, with a sibling of the configured sink that differs only
in the destination's query parameters (same session, connection pool and write threads): chunking,
concurrency, retries with backoff and Retry-After, refused-line isolation are the sink's own.

**A destination that does not exist or refuses us** (401, 403, 404: InfluxDB 1.x answers
``database not found`` with 404) must not hold the other tenants back: its lines are reported as
refused with the reason ``destination_unavailable: <destination>: <the server's answer>``, so their
records are quarantined (reason :data:`~refinery.sinks.base.DESTINATION_UNAVAILABLE`, counted in the
summary and as the ``Quarantined.destination_unavailable`` metric) and the batch goes on; ``refinery
replay`` writes them again, routed again, once the destination exists. The *default* destination
failing so is a configuration error as without routing: the batch fails.

**Acknowledgement** keeps :meth:`Sink.write`'s contract: a failed write (retries exhausted, time
up) raises :class:`FlushError` whose ``acknowledged`` is the longest prefix of the batch's lines that
every destination acknowledged. A line after it that some other destination did write is written
again with the redelivered records: the same point, in the same place. Partial batch responses
therefore report, per partition, the first offset not acknowledged across all destinations.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import (
    DESTINATION_UNAVAILABLE,
    Deadline,
    FlushError,
    Misconfigured,
    Sink,
    WriteReport,
    attach_outcome,
)
from .http import HttpSink

if TYPE_CHECKING:
    from ..routing import Destination, Router

#: Answers that mean this destination cannot take points now (absent, or not ours to write).
UNAVAILABLE_STATUSES = (401, 403, 404)
_DESTINATION_PARAMS = ("db", "rp", "bucket")


class RoutedSink(Sink):
    """The InfluxDB sink ``inner``, writing each line to the destination ``router`` gives it."""

    def __init__(self, inner: HttpSink, router: Router):
        self.inner = inner
        self.router = router
        self.name = inner.name  # the quarantine and replay name the InfluxDB sink, routed or not
        self.family = getattr(inner, "family", "influx")
        self._children: dict[Destination, HttpSink] = {}
        self._base = {k: v for k, v in inner.params.items() if k not in _DESTINATION_PARAMS}

    def sink_for(self, destination: Destination) -> HttpSink:
        """The configured sink with ``destination``'s query parameters (sharing its connections)."""
        child = self._children.get(destination)
        if child is None:
            child = copy.copy(self.inner)
            child.params = {**self._base, **destination.params()}
            child._executor = self.inner._executor  # type: ignore[method-assign]  # one thread pool
            self._children[destination] = child
        return child

    def groups(self, lines: Sequence[str]) -> dict[Destination, list[int]]:
        """The lines' indexes by destination (:meth:`refinery.routing.Router.destinations`)."""
        self.router.begin_invocation()
        return self.router.destinations(lines)

    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        started = time.monotonic()
        groups = self.groups(lines)
        default = self.router.default
        report = WriteReport(lines=len(lines))
        acknowledged = len(lines)
        failure: FlushError | None = None
        try:
            for where, indexes in groups.items():
                if failure is not None:  # not started after a failure: none of its lines acknowledged
                    acknowledged = min(acknowledged, min(indexes))
                    continue
                sink = self.sink_for(where)
                part = lines if len(indexes) == len(lines) else list(map(lines.__getitem__, indexes))
                try:
                    own = sink.write(part, deadline)
                except FlushError as exc:
                    own = exc.report or WriteReport(lines=len(part))
                    cause = exc.__cause__
                    if (
                        where != default
                        and isinstance(cause, Misconfigured)
                        and cause.status in UNAVAILABLE_STATUSES
                    ):
                        # Only this tenant's lines wait (quarantined, replayable); the others go on.
                        reason = f"{DESTINATION_UNAVAILABLE}: {where}: {cause}"
                        own.rejected.extend((i, reason) for i in range(exc.acknowledged, len(part)))
                    else:
                        failure = exc
                        if exc.acknowledged < len(indexes):  # (a group's lines are in no set order)
                            acknowledged = min(acknowledged, min(indexes[exc.acknowledged :]))
                report.add_counts(own)
                report.chunks += own.chunks
                report.rejected.extend((indexes[i], message) for i, message in own.rejected)
        finally:
            report.seconds = time.monotonic() - started
            report.rejected.sort()
        if failure is not None:
            error = FlushError(str(failure))
            attach_outcome(error, acknowledged, report)
            raise error from failure
        return report

    def close(self) -> None:
        self.inner.close()  # the siblings share its session and threads


def with_routing(sink: Sink, router: Router) -> Sink:
    """``sink`` with its InfluxDB member (alone or beside remote write) writing through ``router``."""
    from .fanout import FanoutSink

    if isinstance(sink, FanoutSink):
        sink.sinks = [with_routing(member, router) for member in sink.sinks]
        return sink
    if isinstance(sink, HttpSink) and sink.name.startswith("influxdb-"):
        return RoutedSink(sink, router)
    return sink
