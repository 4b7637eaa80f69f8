"""Where points go: InfluxDB v1 or v2 and/or Prometheus remote write, or a printer for dry runs."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from ..config import InfluxConfig, PrometheusConfig
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


def build_sink(influx: InfluxConfig | None, prometheus: PrometheusConfig | None = None) -> Sink:
    """The configured sink; with both InfluxDB and remote write, one that writes to both."""
    if prometheus is None:
        return build_influx_sink(influx)
    from .prometheus_rw import PrometheusRemoteWriteSink

    remote_write = PrometheusRemoteWriteSink(prometheus)
    if influx is None:
        return remote_write
    from .fanout import FanoutSink

    return FanoutSink([build_influx_sink(influx), remote_write])


def build_influx_sink(influx: InfluxConfig | None) -> Sink:
    if influx is None:
        return PrintSink()
    if influx.api == "v1":
        from .influx_v1 import InfluxV1Sink

        return InfluxV1Sink(influx)
    from .influx_v2 import InfluxV2Sink

    return InfluxV2Sink(influx)
