"""Several sinks (InfluxDB and Prometheus remote write), and which points go to which sink.

**Routing.** Raw points go to every sink. A recording rule's outputs go to the sinks of the family
they are made for (:mod:`refinery.rules.aggregate`): a record's *contribution* to InfluxDB, a batch's
*aggregate* to remote write (and to InfluxDB for rules with ``influx_output: aggregates``). The
pipeline gives :func:`write_routed` the batch's lines and, for the rules' outputs, their
:class:`Route`.

**Order.** Each sink writes its points in turn with the same invocation deadline. Aggregates come
*last*: only once every other point of the batch was acknowledged by every sink, in one request per
sink (Prometheus commits or rolls back a request whole). So a batch that fails stores no aggregate,
and its retry, however the mapping cuts it, writes its own; an aggregate is written only by an
invocation that is about to succeed.

**Acknowledgement.** When a sink fails part-way, the next one is given only the lines the failed one
acknowledged, and the batch reports the smallest acknowledged count: a line counts as acknowledged
only when every sink that takes it took it. A retry rewrites every sink; both are idempotent (same
points, same samples).

**Refusals are per sink**: :attr:`RoutedReport.refusals` says which sink refused which line, so the
record is quarantined for that sink with that line, and a replay writes that line to that sink
only (README: Replay); a sink that took the point is never written again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..rules.aggregate import INFLUX
from .base import Deadline, FlushError, Sink, WriteReport


@dataclass(frozen=True)
class Route:
    """Where a rule's output goes: the sink families that take it; ``last``: a per-batch aggregate."""

    families: frozenset[str]
    last: bool = False


@dataclass
class RoutedReport(WriteReport):
    """A write's report with, for every refused line, which sink refused it: ``(index, sink, message)``."""

    refusals: list[tuple[int, str, str]] = field(default_factory=list)


def members(sink: Sink) -> list[Sink]:
    """The sinks a (possibly fan-out) sink writes to."""
    return list(sink.sinks) if isinstance(sink, FanoutSink) else [sink]


def family_of(sink: Sink) -> str:
    """How a sink treats a point written twice (``INFLUX``: replaces it; remote write: cannot replace it)."""
    return str(getattr(sink, "family", INFLUX))


def families(sink: Sink) -> frozenset[str]:
    return frozenset(family_of(member) for member in members(sink))


def find_member(sink: Sink, name: str) -> Sink | None:
    """The sink named ``name`` (``influxdb-v1``, ``prometheus-remote-write``...) among ``sink``'s."""
    return next((member for member in members(sink) if member.name == name), None)


def write_routed(
    sink: Sink, lines: Sequence[str], routes: Mapping[int, Route], deadline: Deadline
) -> RoutedReport:
    """Write ``lines`` to ``sink``'s members, each line to the sinks its route names (raw lines: all),
    aggregates last; raise :class:`FlushError` (with a :class:`RoutedReport`) unless all acknowledged."""
    total = len(lines)
    plan: list[tuple[Sink, list[int], list[int]]] = []
    for member in members(sink):
        family = family_of(member)
        plain: list[int] = []
        last: list[int] = []
        for index in range(total):
            route = routes.get(index)
            if route is None:
                plain.append(index)
            elif family in route.families:
                (last if route.last else plain).append(index)
        plan.append((member, plain, last))
    acknowledged = total  # every line below it was acknowledged by every sink that takes it
    reports: list[WriteReport] = []
    refusals: list[tuple[int, str, str]] = []
    failure: FlushError | None = None
    for phase in (1, 2):
        if phase == 2 and failure is not None:
            break  # aggregates only once everything else was acknowledged
        for member, plain, last in plan:
            part = [i for i in (plain if phase == 1 else last) if i < acknowledged]
            if not part:
                continue
            chunk = [lines[i] for i in part]
            try:
                if phase == 2 and hasattr(member, "write_atomic"):
                    report = member.write_atomic(chunk, deadline)
                else:
                    report = member.write(chunk, deadline)
            except FlushError as exc:
                report = exc.report
                if exc.acknowledged < len(part):
                    acknowledged = min(acknowledged, part[exc.acknowledged])
                failure = exc if failure is None else failure
            if report is not None:
                reports.append(report)
                refusals.extend((part[i], member.name, message) for i, message in report.rejected)
    report = merge_reports(total, reports)
    report.refusals = sorted(r for r in refusals if r[0] < acknowledged)
    report.rejected = _merged(report.refusals)
    if failure is not None:
        error = FlushError(str(failure), acknowledged)
        error.report = report
        raise error from failure
    return report


class FanoutSink(Sink):
    def __init__(self, sinks: Sequence[Sink]):
        super().__init__()
        self.sinks = list(sinks)
        self.name = "+".join(sink.name for sink in self.sinks)

    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        return write_routed(self, lines, {}, deadline)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def _merged(refusals: Sequence[tuple[int, str, str]]) -> list[tuple[int, str]]:
    by_index: dict[int, list[str]] = {}
    for index, _, message in refusals:
        by_index.setdefault(index, []).append(message)
    return [(index, "; ".join(messages)) for index, messages in sorted(by_index.items())]


def merge_reports(lines: int, reports: Sequence[WriteReport]) -> RoutedReport:
    merged = RoutedReport(lines=lines)
    for report in reports:
        merged.add_counts(report)
        merged.chunks += report.chunks
        merged.seconds += report.seconds
    return merged
