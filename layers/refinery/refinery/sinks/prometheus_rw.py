"""Prometheus remote write 1.0: the points as snappy-compressed protobuf ``WriteRequest`` samples.

Each numeric field of a point becomes one sample of the series

* ``__name__`` = ``<measurement>_<field>`` (as VictoriaMetrics names InfluxDB lines), sanitised to
  Prometheus' metric-name rules (``[a-zA-Z_:][a-zA-Z0-9_:]*``: any other character becomes ``_``);
* one label per tag (names sanitised to ``[a-zA-Z_][a-zA-Z0-9_]*``, values as they are, empty
  ones left out), sorted by name — ``__name__`` sorts first;
* the point's timestamp in **milliseconds**; integers and floats as float64 (integers beyond 2^53
  lose precision), booleans as 1 and 0. **String fields cannot be samples**: they are skipped and
  counted (``sink_skipped_fields``); refinery's own schema and recording rules write none.

**Time order.** Prometheus keeps, per series, only samples newer than the series' newest (without
``out_of_order_time_window``), and within one request silently drops a sample older than one before
it. The batch's points are therefore sent in time order — sorted by timestamp before they are cut
into requests, and per series within each request — so that one batch never refuses itself. Two
points of one series less than a millisecond apart would become two samples with the same
timestamp, which Prometheus refuses (or silently keeps one of): in that order the later one is
moved forward by 1 ms until it is unique (the same set of points gives the same samples).

Retries, splitting and quarantine are :class:`~refinery.sinks.base.Sink`'s: 429 and 5xx are
retried within the invocation's deadline (honouring ``Retry-After``); 400 (out-of-order or
out-of-bounds sample, duplicate timestamp, bad labels), 413 and 422 split the chunk until the
refused points are isolated and quarantined; 401, 403 and 404 fail the batch with what to fix.
Prometheus answers ``too old sample`` (beyond its out-of-order window) with a 500, which no retry
can change: it is a refusal here. Prometheus rolls back a whole request it refuses, so re-sending
the accepted halves is exact.

**A refused rewrite is acknowledged.** A redelivered batch writes samples Prometheus already holds;
it refuses the request when one of them is older than its series' newest. Before isolating
anything, the sink reads the refused request's series back (remote read, :mod:`.remote_read`, at
``…/api/v1/read`` beside ``…/api/v1/write``): every sample the server holds with the same timestamp
and value is acknowledged (``sink_rewrites`` in the summary), and only the rest is sent again and,
if still refused, isolated and quarantined — new data the server genuinely refused. A point is
decided whole (its fields' samples share a millisecond and a request): held when every one of them
is, identical; a raw point whose millisecond its series holds with another event (from another batch)
is moved, whole, to a millisecond free in all its series after the newest sample the server holds
of them nearby (within ``PROBE_MS``), where every later delivery of it finds it. A
recording rule's aggregate (:meth:`write_atomic`) that the server holds with *another* value (only
when the aggregation ledger, :mod:`refinery.rules.ledger`, was lost: it sends a stored aggregate
again byte-identical) is counted (``sink_conflicts``) and the stored one kept.

protobuf and cramjam (snappy) are imported when the sink is built, never by the enricher otherwise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import requests

from ..config import PrometheusConfig
from ..lineparse import LineError, parse_line
from ..rules.aggregate import REMOTE_WRITE
from .base import Deadline, FlushError, Misconfigured, Refused, WriteReport
from .http import CONNECT_TIMEOUT, HttpSink, quote_answer, read_answer, time_limit, write_settings
from .remote_read import READ_HEADERS, decode_read_response, encode_read_request, read_url, same_value

log = logging.getLogger(__name__)

NS_PER_MS = 1_000_000
#: How far (ms) a raw sample refused for its series' sample of another value at its millisecond is moved.
PROBE_MS = 50
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


class PrometheusRemoteWriteSink(HttpSink):
    name = "prometheus-remote-write"
    family = REMOTE_WRITE  # cannot replace a sample: recording rules send it per-batch aggregates

    def __init__(self, config: PrometheusConfig, **kwargs: Any):
        super().__init__(
            config.url,
            headers={
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "snappy",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
            **write_settings(config),
            **kwargs,
        )
        import cramjam

        from .remote_write_proto import write_request_class

        self.config = config
        self._compress = cramjam.snappy.compress_raw
        self._request_class = write_request_class()
        if config.bearer_token:
            self.session.headers["Authorization"] = f"Bearer {config.bearer_token}"
        elif config.username:
            self.session.auth = (config.username, config.password)
        self._samples: list[list[Sample]] = []
        self.read_url = read_url(config.url)
        self._verified: set[int] = set()  # lines of this write already checked against the server
        self._taken: dict[Labels, set[int]] | None = None  # per series, the ms this write's samples use
        self._conflicts_acknowledged = False
        self._decompress = cramjam.snappy.decompress_raw

    # -- lines -> samples -------------------------------------------------------------------------
    def samples(self, lines: Sequence[str]) -> tuple[list[list[Sample]], list[tuple[int, str]], int]:
        """Per line its samples (timestamps made unique per series), unreadable lines, skipped fields."""
        out, unreadable, skipped, _ = self._prepare(lines)
        return out, unreadable, skipped

    def _prepare(
        self, lines: Sequence[str]
    ) -> tuple[list[list[Sample]], list[tuple[int, str]], int, list[int]]:
        """:meth:`samples`, and the lines' time order (unreadable lines first): the order they are sent in."""
        out: list[list[Sample]] = [[] for _ in lines]
        unreadable: list[tuple[int, str]] = []
        skipped = 0
        points = []
        for index, line in enumerate(lines):
            try:
                points.append((parse_line(line), index))
            except LineError as exc:
                unreadable.append((index, f"{self.name}: cannot convert the point: {exc}"))
        points.sort(key=lambda item: (item[0].timestamp, item[1]))
        used: dict[tuple[str, Labels], set[int]] = {}
        for point, index in points:
            labels = point_labels(point.tags)
            ms = point.timestamp // NS_PER_MS
            taken = used.setdefault((point.measurement, labels), set())
            while ms in taken:
                ms += 1
            taken.add(ms)
            samples = out[index]
            for field, value in point.fields.items():
                if type(value) is str:
                    skipped += 1
                    continue
                name = metric_name(point.measurement, field)
                samples.append(((("__name__", name), *labels), ms, float(value)))
        order = [index for index, _ in unreadable] + [index for _, index in points]
        return out, unreadable, skipped, order

    def encode(self, lines: Sequence[str], indexes: Sequence[int]) -> bytes:
        if indexes and len(self._samples) > max(indexes):
            per_line = [self._samples[i] for i in indexes]
        else:  # called outside write(): convert just these lines
            per_line = self.samples(lines)[0]
        series: dict[Labels, list[tuple[int, float]]] = {}
        for samples in per_line:
            for labels, ms, value in samples:
                series.setdefault(labels, []).append((ms, value))
        request = self._request_class()
        for labels, points in series.items():
            timeseries = request.timeseries.add()
            for name, label_value in labels:
                timeseries.labels.add(name=name, value=label_value)
            points.sort()
            for ms, value in points:
                timeseries.samples.add(value=value, timestamp=ms)
        return bytes(self._compress(request.SerializeToString()))

    # -- writing ----------------------------------------------------------------------------------
    def write(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        """Write the points in time order (see the module doc); indexes in the report are ``lines``'."""
        samples, unreadable, skipped, order = self._prepare(lines)
        self._samples = [samples[i] for i in order]
        self._verified = set()
        self._taken = None
        try:
            report = super().write([lines[i] for i in order], deadline)
        except FlushError as exc:
            # Acknowledged: the lines before the first one (in the caller's order) not written.
            acknowledged = min((order[j] for j in range(exc.acknowledged, len(order))), default=len(order))
            exc.acknowledged = acknowledged
            if exc.report is not None:
                exc.report.rejected = sorted(
                    (order[i], message) for i, message in exc.report.rejected if order[i] < acknowledged
                )
                exc.report.skipped_fields += skipped
                _add_rejected(exc.report, [r for r in unreadable if r[0] < acknowledged])
            raise
        finally:
            self._samples = []
            self._verified = set()
            self._taken = None
        report.rejected = sorted((order[i], message) for i, message in report.rejected)
        report.skipped_fields += skipped
        _add_rejected(report, unreadable)
        return report

    def write_atomic(self, lines: Sequence[str], deadline: Deadline) -> WriteReport:
        """Write ``lines`` (a batch's recording-rule aggregates) in one request: Prometheus takes all of
        them or none. An aggregate it already holds with another value keeps the stored one."""
        batch_size = self.batch_size
        self.batch_size = max(1, len(lines))
        self._conflicts_acknowledged = True
        try:
            return self.write(lines, deadline)
        finally:
            self.batch_size = batch_size
            self._conflicts_acknowledged = False

    # -- refusals: rewrites, and new data the server refuses --------------------------------------
    def _isolate(
        self,
        part: list[int],
        lines: Sequence[str],
        first: int,
        refusal: Refused,
        deadline: Deadline,
        report: WriteReport,
    ) -> None:
        """First drop what the server already holds (read back once per line), then isolate the rest."""
        unverified = [first + i for i in part if first + i not in self._verified]
        if self.read_url is None or not unverified or refusal.status == 413:
            super()._isolate(part, lines, first, refusal, deadline, report)
            return
        own = {first + i: _timestamp_ms(lines[i]) for i in part}  # before any move within the batch
        try:
            stored = self._read_back(unverified, own, deadline)
        except _ReadFailed as exc:
            log.warning(
                "%s: cannot read back the refused samples (%s): isolating them one by one", self.name, exc
            )
            self._verified.update(unverified)
            super()._isolate(part, lines, first, refusal, deadline, report)
            return
        self._verified.update(unverified)
        rest: list[int] = []
        changed = False
        newest: dict[Labels, int] = {}  # per series, its newest sample the server holds (read back)
        for key, ms in stored:
            if ms > newest.get(key, ms - 1):
                newest[key] = ms
        for i in part:
            samples = self._samples[first + i]
            kept = self._reconcile(samples, own[first + i], stored, newest, report)
            changed = changed or kept != samples
            self._samples[first + i] = kept
            if kept:
                rest.append(i)
        if changed:
            self._send(rest, lines, first, deadline, report)
        else:
            super()._isolate(part, lines, first, refusal, deadline, report)

    def _reconcile(
        self,
        samples: list[Sample],
        own: int,
        stored: dict[tuple[Labels, int], float],
        newest: Mapping[Labels, int],
        report: WriteReport,
    ) -> list[Sample]:
        """What of one point's samples is still to send, given what the server holds. A point's samples
        (one per numeric field) share one millisecond, are sent in one request and stored or refused
        together: the point is decided **whole** — held (every field's sample, identical, at one
        millisecond from its own to PROBE_MS past where this batch put it), free where this batch put
        it, or moved, whole, to the first millisecond where none of its series has a sample.
        Deciding per field would let one field's value that happens to equal another event's (``count``
        is 1 for every request) count as held while the others move: the point's fields would part."""
        if not samples:
            return samples
        keys = [tuple(sorted(sample[0])) for sample in samples]
        at = samples[0][1]

        def held(ms: int) -> bool:
            return all(
                (value := stored.get((key, ms))) is not None and same_value(value, sample[2])
                for key, sample in zip(keys, samples, strict=True)
            )

        def free(ms: int) -> bool:
            return all(stored.get((key, ms)) is None for key in keys)

        # Held where this batch put it, or where an earlier write did: from its own millisecond to
        # PROBE_MS past this batch's (another cut of the batch may have moved it past other points).
        # An aggregate never moves (its millisecond is its first offset's): only there.
        span = range(at, at + 1) if self._conflicts_acknowledged else range(min(own, at), at + 1 + PROBE_MS)
        if any(held(ms) for ms in span):
            report.rewrites += len(samples)  # the server holds this very point: acknowledged
            return []
        if free(at):
            return samples
        if self._conflicts_acknowledged:
            report.conflicts += len(samples)  # an aggregate it holds with another value: the stored one stays
            return []
        # Another event of the series at this millisecond: the next free one, as within a batch.
        moved = self._relocate(keys, at, free, newest)
        if moved is None:
            return samples  # no free millisecond near: sent as it is, refused, isolated
        return [(sample[0], moved, sample[2]) for sample in samples]

    def _relocate(
        self, keys: list[Labels], at: int, free: Callable[[int], bool], newest: Mapping[Labels, int]
    ) -> int | None:
        """For a raw point whose millisecond the server holds with another event of its series (and
        that it does not hold within PROBE_MS after): a ms after it where none of its series has a
        sample, on the server or in this write — after the newest sample the server holds of them
        there (Prometheus without an out-of-order window takes nothing older; earlier moves may have
        put other events of the series a few ms later), else the first free one; None: none within
        PROBE_MS. A later delivery finds it there (:meth:`_reconcile` looks PROBE_MS ahead)."""
        if self._taken is None:
            self._taken = {}
            for samples in self._samples:
                for other, ms, _ in samples:
                    self._taken.setdefault(tuple(sorted(other)), set()).add(ms)
        taken = [self._taken.setdefault(key, set()) for key in keys]
        last = at + PROBE_MS
        after = max((newest[key] for key in keys if key in newest), default=at)
        for start in (max(at, after) + 1, at + 1):
            for ms in range(start, last + 1):
                if free(ms) and not any(ms in t for t in taken):
                    for t in taken:
                        t.add(ms)
                    return ms
        return None

    def _read_back(
        self, indexes: Sequence[int], own: Mapping[int, int], deadline: Deadline
    ) -> dict[tuple[Labels, int], float]:
        """The samples the server holds, of the series of the lines at ``indexes``, over their times (from
        their points' own millisecond to PROBE_MS after)."""
        spans: dict[Labels, list[int]] = {}
        for index in indexes:
            for labels, ms, _ in self._samples[index]:
                start = min(ms, own.get(index, ms))
                span = spans.setdefault(tuple(sorted(labels)), [start, ms + PROBE_MS])
                span[0] = min(span[0], start)
                span[1] = max(span[1], ms + PROBE_MS)
        if not spans:
            return {}
        body = bytes(self._compress(encode_read_request((k, a, b) for k, (a, b) in spans.items())))
        timeout = min(self.timeout, deadline.remaining())
        if timeout <= 0:
            raise _ReadFailed("no time left")
        try:
            with time_limit(timeout):
                response = self.session.post(
                    self.read_url,  # type: ignore[arg-type]
                    data=body,
                    headers=READ_HEADERS,
                    timeout=(min(CONNECT_TIMEOUT, timeout), timeout),
                    verify=self.verify,
                    stream=True,
                    allow_redirects=False,
                )
                try:
                    data = read_answer(response, limit=64 * 1024 * 1024)
                finally:
                    response.close()
        except (requests.RequestException, OSError) as exc:
            raise _ReadFailed(type(exc).__name__) from exc
        if response.status_code != 200:
            text = quote_answer(data.decode("utf-8", "replace"))
            raise _ReadFailed(f"{self.read_url} answered {response.status_code}: {text}")
        try:
            return decode_read_response(bytes(self._decompress(data)))
        except Exception as exc:  # any undecodable answer: it cannot tell, isolate instead
            raise _ReadFailed(f"an answer that is not a remote-read response: {exc}") from exc

    def check(self, status: int, headers: Mapping[str, str], text: str) -> None:
        """Remote write 1.0: any 2xx is success, unless it is a web page (a proxy's or a login page)."""
        if 200 <= status < 300:
            if "text/html" in (headers.get("Content-Type") or "").lower():
                raise Misconfigured(
                    f"POST {self.shown_url} answered {status} with a web page, not a remote-write receiver's "
                    f"answer (a proxy, a login page?); it begins {quote_answer(text)}",
                    status,
                    body=text,
                )
            return
        if status == 500 and "too old sample" in text:
            # Beyond Prometheus' out-of-order window: refused for good (a retry cannot change it).
            raise Refused(f"POST {self.shown_url} answered 500: {quote_answer(text)}", status, body=text)
        if status == 404:
            raise Misconfigured(
                f"POST {self.shown_url} answered 404: {quote_answer(text)} (not a remote-write endpoint: "
                "Prometheus needs --web.enable-remote-write-receiver and the path /api/v1/write)",
                404,
                body=text,
            )
        self.check_error(status, headers, text)


def _add_rejected(report: WriteReport, rejected: list[tuple[int, str]]) -> None:
    if rejected:
        report.rejected = sorted([*report.rejected, *rejected])


class _ReadFailed(Exception):
    """The server's samples could not be read back."""


def _timestamp_ms(line: str) -> int:
    try:
        return int(line.rsplit(" ", 1)[1]) // NS_PER_MS
    except (IndexError, ValueError):
        return 0
