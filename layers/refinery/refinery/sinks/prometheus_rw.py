"""Prometheus remote write 1.0: the points as snappy-compressed protobuf ``WriteRequest`` samples.

Each numeric field of a point becomes one sample of the series

* ``__name__`` = ``<measurement>_<field>`` (as VictoriaMetrics names InfluxDB lines), sanitised to
  Prometheus' metric-name rules (``[a-zA-Z_:][a-zA-Z0-9_:]*``: any other character becomes ``_``);
* one label per tag (names sanitised to ``[a-zA-Z_][a-zA-Z0-9_]*``, values as they are, empty
  ones left out), sorted by name — ``__name__`` sorts first;
* the point's timestamp in **milliseconds**; integers and floats as float64 (integers beyond 2^53
  lose precision), booleans as 1 and 0. **String fields cannot be samples**: they are skipped and
  counted (``sink_skipped_fields``); refinery's own schema and recording rules write none.

Two points of one series less than a millisecond apart would become two samples with the same
timestamp, which Prometheus refuses (or silently keeps one of, when the values are equal). Within
a batch the later one is moved forward by 1 ms until it is unique, deterministically, so a retried
batch writes the same samples (the InfluxDB sink moves nanosecond collisions the same way).

Retries, splitting and quarantine are :class:`~refinery.sinks.base.Sink`'s: 429 and 5xx are
retried within the invocation's deadline (honouring ``Retry-After``); 400 (out-of-order or
out-of-bounds sample, duplicate timestamp, bad labels), 413 and 422 split the chunk until the
refused points are isolated and quarantined; 401, 403 and 404 fail the batch with what to fix.
Prometheus rolls back a whole request it refuses, so re-sending the accepted halves is exact, and
re-sending a sample it already has (same timestamp and value) is accepted and changes nothing.

protobuf and cramjam (snappy) are imported when the sink is built, never by the enricher otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import requests

from .. import __version__
from ..config import PrometheusConfig
from ..lineparse import LineError, parse_line
from ..retry_after import parse_retry_after
from .base import Deadline, FlushError, Misconfigured, Retryable, Sink, WriteReport, classify_status

NS_PER_MS = 1_000_000
Labels = tuple[tuple[str, str], ...]
Sample = tuple[Labels, int, float]

_METRIC_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")


@lru_cache(maxsize=4096)
def metric_name(measurement: str, field: str) -> str:
    name = _METRIC_BAD.sub("_", f"{measurement}_{field}")
    return name if not name[0].isdigit() else "_" + name


@lru_cache(maxsize=4096)
def label_name(tag: str) -> str:
    name = _LABEL_BAD.sub("_", tag) or "_"
    return name if not name[0].isdigit() else "_" + name


def point_labels(tags: dict[str, str]) -> Labels:
    """Sanitised, sorted labels of a point's tags (without ``__name__``); first tag wins a clash."""
    labels: dict[str, str] = {}
    for tag in sorted(tags):
        value = tags[tag]
        if value:
            labels.setdefault(label_name(tag), value)
    return tuple(sorted(labels.items()))


class PrometheusRemoteWriteSink(Sink):
    name = "prometheus-remote-write"

    def __init__(self, config: PrometheusConfig, **kwargs: Any):
        super().__init__(
            batch_size=config.batch_size,
            timeout=config.timeout,
            max_retry_wait=config.max_retry_wait,
            **kwargs,
        )
        import cramjam

        from .remote_write_proto import write_request_class

        self.config = config
        self.url = config.url
        self._compress = cramjam.snappy.compress_raw
        self._request_class = write_request_class()
        self.session = requests.Session()
        self.session.headers.update(
            {
                "User-Agent": f"refinery/{__version__}",
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "snappy",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            }
        )
        if config.bearer_token:
            self.session.headers["Authorization"] = f"Bearer {config.bearer_token}"
        elif config.username:
            self.session.auth = (config.username, config.password)
        self._samples: list[list[Sample]] = []

    # -- lines -> samples -------------------------------------------------------------------------
    def samples(self, lines: Sequence[str]) -> tuple[list[list[Sample]], list[tuple[int, str]], int]:
        """Per line its samples (timestamps made unique per series), unreadable lines, skipped fields."""
        out: list[list[Sample]] = []
        unreadable: list[tuple[int, str]] = []
        skipped = 0
        used: dict[tuple[str, Labels], set[int]] = {}
        for index, line in enumerate(lines):
            try:
                point = parse_line(line)
            except LineError as exc:
                unreadable.append((index, f"{self.name}: cannot convert the point: {exc}"))
                out.append([])
                continue
            labels = point_labels(point.tags)
            ms = point.timestamp // NS_PER_MS
            taken = used.setdefault((point.measurement, labels), set())
            while ms in taken:
                ms += 1
            taken.add(ms)
            samples: list[Sample] = []
            for field, value in point.fields.items():
                if type(value) is str:
                    skipped += 1
                    continue
                name = metric_name(point.measurement, field)
                samples.append(((("__name__", name), *labels), ms, float(value)))
            out.append(samples)
        return out, unreadable, skipped

    def encode(self, lines: Sequence[str], first: int) -> bytes:
        if len(self._samples) >= first + len(lines):
            per_line = self._samples[first : first + len(lines)]
        else:  # called outside write(): convert just these lines
            per_line = self.samples(lines)[0]
        series: dict[Labels, list[tuple[int, float]]] = {}
        for samples in per_line:
            for labels, ms, value in samples:
                series.setdefault(labels, []).append((ms, value))
        request = self._request_class()
        for labels, points in series.items():
            timeseries = request.timeseries.add()
            for name, value in labels:
                timeseries.labels.add(name=name, value=value)
            points.sort()
            for ms, value in points:
                timeseries.samples.add(value=value, timestamp=ms)
        return bytes(self._compress(request.SerializeToString()))

    # -- writing ----------------------------------------------------------------------------------
    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        self._samples, unreadable, skipped = self.samples(lines)
        try:
            report = super().write(lines, deadline)
        except FlushError as exc:
            if exc.report is not None:
                exc.report.skipped_fields += skipped
                _add_rejected(exc.report, [r for r in unreadable if r[0] < exc.acknowledged])
            raise
        finally:
            self._samples = []
        report.skipped_fields += skipped
        _add_rejected(report, unreadable)
        return report

    def post(self, body: bytes, timeout: float) -> None:
        try:
            # verify per request: requests lets REQUESTS_CA_BUNDLE override a session-level verify=False
            response = self.session.post(self.url, data=body, timeout=timeout, verify=self.config.verify_tls)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Retryable(f"POST {self.url}: {type(exc).__name__}") from exc
        if 200 <= response.status_code < 300:
            return
        message = f"POST {self.url} answered {response.status_code}: {response.text.strip()[:500]}"
        if response.status_code == 404:
            raise Misconfigured(
                f"{message} (not a remote-write endpoint: Prometheus needs "
                "--web.enable-remote-write-receiver and the path /api/v1/write)",
                404,
            )
        raise classify_status(
            response.status_code, message, parse_retry_after(response.headers.get("Retry-After"))
        )

    def close(self) -> None:
        self.session.close()


def _add_rejected(report: WriteReport, rejected: list[tuple[int, str]]) -> None:
    if rejected:
        report.rejected = sorted([*report.rejected, *rejected])
