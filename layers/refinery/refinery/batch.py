"""A batch as the stages see it: its points, the records each came from, and the accounting.

:class:`BatchPoints` is what the decode stage (:func:`refinery.pipeline.convert_batch`) builds, what the
point stage (:mod:`refinery.point_stage`: filters, extra tags, recording rules) rewrites with
:meth:`BatchPoints.keep` and :meth:`BatchPoints.add`, and what the sink writes; :class:`BatchResult` is
its accounting, ``records_in == written + dropped + quarantined`` (+ ``redelivered``), and the summary
line each invocation logs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .quarantine import QuarantinedRecord
from .sinks import WriteReport

Origin = tuple[str, dict[str, Any]]  # (topic-partition key, record)


@dataclass
class BatchResult:
    records_in: int = 0
    written: int = 0
    points: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    resends: int = 0  # records whose point another record of the batch also gave: written once
    identity_collisions: int = 0  # points of one series at one time with other fields: one is kept
    partitions: dict[str, list[Any]] = field(default_factory=dict)
    quarantine_object: str | None = None
    sink: WriteReport | None = None
    seconds: float = 0.0
    batch_item_failures: list[dict[str, Any]] = field(default_factory=list)
    flush_error: str | None = None
    redelivered: int = 0
    rules: dict[str, Any] = field(default_factory=dict)  # recording rules' counts (when configured)

    @property
    def balanced(self) -> bool:
        return self.records_in == (
            self.written + sum(self.dropped.values()) + sum(self.quarantined.values()) + self.redelivered
        )

    def summary(self) -> dict[str, Any]:
        sink = self.sink or WriteReport()
        return {
            "records_in": self.records_in,
            "written": self.written,
            "points": self.points,
            "dropped": sum(self.dropped.values()),
            "dropped_by_reason": dict(self.dropped),
            "quarantined": sum(self.quarantined.values()),
            "quarantined_by_reason": dict(self.quarantined),
            "resends": self.resends,
            "identity_collisions": self.identity_collisions,
            "partitions": {
                k: {"first_offset": v[0], "last_offset": v[1], "records": v[2]}
                for k, v in self.partitions.items()
            },
            "quarantine_object": self.quarantine_object,
            "sink_chunks": sink.chunks,
            "sink_bytes": sink.bytes,
            "sink_requests": sink.attempts,
            "sink_retries": sink.retries,
            "sink_splits": sink.splits,
            **({"sink_skipped_fields": sink.skipped_fields} if sink.skipped_fields else {}),
            **({"sink_rewrites": sink.rewrites} if sink.rewrites else {}),
            **({"sink_conflicts": sink.conflicts} if sink.conflicts else {}),
            "batch_item_failures": self.batch_item_failures,
            "redelivered": self.redelivered,
            "flush_error": self.flush_error,
            "sink_seconds": round(sink.seconds, 4),
            "seconds": round(self.seconds, 4),
            **({"rules": self.rules} if self.rules else {}),
        }


@dataclass
class BatchPoints:
    """A batch's points and, for each, the records it came from; what a stage rewrites and the sink writes."""

    lines: list[str]
    quarantine: list[QuarantinedRecord]
    result: BatchResult
    first_timestamp: Any = None
    origins: list[Origin] = field(default_factory=list)
    more_origins: dict[int, list[Origin]] = field(default_factory=dict)
    whole_batch_only: bool = False  # set by recording rules: no partial batch response may split it
    routes: dict[int, Any] = field(default_factory=dict)  # rule outputs: which sinks take them (fanout.Route)

    def origins_of(self, index: int) -> list[Origin]:
        """The records whose point is ``lines[index]`` (several when identical records repeat)."""
        return [self.origins[index], *self.more_origins.get(index, ())]

    def keep(self, keep: list[int], new_lines: list[str]) -> None:
        """Keep the lines at ``keep`` (now ``new_lines``), with their records."""
        if len(keep) == len(self.lines):  # nothing removed: only the lines may have changed
            self.lines = new_lines
            return
        origins = self.origins
        more = self.more_origins
        self.origins = [origins[i] for i in keep]
        self.more_origins = {j: more[i] for j, i in enumerate(keep) if i in more}
        self.lines = new_lines

    def add(self, line: str, origins: list[Origin], route: Any = None) -> int:
        """Append a new point (a rule's output) made of ``origins``' records; its index."""
        index = len(self.lines)
        self.lines.append(line)
        self.origins.append(origins[0])
        if len(origins) > 1:
            self.more_origins[index] = origins[1:]
        if route is not None:
            self.routes[index] = route
        return index
