"""A sink that keeps what it is given: the pipeline's output without a server (tests, tooling)."""

from __future__ import annotations

from collections.abc import Sequence

from refinery.sinks import Deadline, Sink, WriteReport


class CollectingSink(Sink):
    name = "collecting"

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        self.lines.extend(lines)
        return WriteReport(lines=len(lines), chunks=1)
