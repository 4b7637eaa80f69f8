"""Where points go: InfluxDB v1 or v2, or (no INFLUX_URL) a printer for dry runs."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from ..config import InfluxConfig
from .base import Deadline, FlushError, Sink, WriteReport

__all__ = ["Deadline", "FlushError", "PrintSink", "Sink", "WriteReport", "build_sink"]


class PrintSink(Sink):
    """Writes nothing: prints the line protocol it would write, one point per line."""

    name = "print"

    def __init__(self, stream: TextIO | None = None):
        super().__init__()
        self.stream = stream

    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        stream = self.stream or sys.stdout
        for line in lines:
            stream.write(line + "\n")
        stream.flush()
        return WriteReport(lines=len(lines), chunks=1 if lines else 0)


def build_sink(influx: InfluxConfig | None) -> Sink:
    if influx is None:
        return PrintSink()
    if influx.api == "v1":
        from .influx_v1 import InfluxV1Sink

        return InfluxV1Sink(influx)
    from .influx_v2 import InfluxV2Sink

    return InfluxV2Sink(influx)
