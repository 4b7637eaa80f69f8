"""Several sinks (InfluxDB and Prometheus remote write): a batch succeeds only when all acknowledged.

The sinks are written one after the other with the same lines and the same invocation deadline.
When one fails part-way, the next is given only the lines the failed one acknowledged, and the
batch reports the smallest acknowledged count: a line counts as acknowledged only when every sink
took it. A retry rewrites every sink; both are idempotent (same points, same samples).

A line any sink refused for good is reported refused (its records are quarantined with each
sink's message), even when another sink wrote it: a replay rewrites it to both, harmlessly.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import Deadline, FlushError, Sink, WriteReport


class FanoutSink(Sink):
    def __init__(self, sinks: Sequence[Sink]):
        super().__init__()
        self.sinks = list(sinks)
        self.name = "+".join(sink.name for sink in self.sinks)

    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        acknowledged = len(lines)
        reports: list[WriteReport] = []
        failure: FlushError | None = None
        for sink in self.sinks:
            if acknowledged == 0:
                break
            part = lines if acknowledged == len(lines) else lines[:acknowledged]
            try:
                reports.append(sink.write(part, deadline))
            except FlushError as exc:
                if exc.report is not None:
                    reports.append(exc.report)
                acknowledged = min(acknowledged, exc.acknowledged)
                failure = exc if failure is None else failure
        report = merge_reports(len(lines), reports)
        if failure is not None:
            error = FlushError(str(failure), acknowledged)
            error.report = report
            raise error from failure
        return report

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def merge_reports(lines: int, reports: Sequence[WriteReport]) -> WriteReport:
    merged = WriteReport(lines=lines)
    rejected: dict[int, list[str]] = {}
    for report in reports:
        merged.add_counts(report)
        merged.chunks += report.chunks
        merged.seconds += report.seconds
        for index, message in report.rejected:
            rejected.setdefault(index, []).append(message)
    merged.rejected = [(index, "; ".join(messages)) for index, messages in sorted(rejected.items())]
    return merged
