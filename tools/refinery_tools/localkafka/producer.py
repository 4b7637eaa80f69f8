"""Publish nozzle-format envelopes to a topic, as kafka-firehose-nozzle does (``refinery produce``).

Like the nozzle's producer: the value is the envelope's JSON, there is no key, and records go
round-robin over the topic's partitions, with ``acks=all``. A missing topic is created with
``partitions`` partitions. ``rate`` paces the records evenly (records per second; 0: as fast as the
broker takes them).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson

from refinery_tools.dev.samples import sample_envelopes
from refinery_tools.localkafka.connect import KafkaUnavailable, ensure_topic, open_producer

EVENT_TYPES = {4: "http", 5: "log", 6: "value_metric", 7: "counter_event", 8: "error", 9: "container"}


def kind_of(value: bytes) -> str:
    """The envelope's event type, for the summary (``not_json`` for anything that is not an envelope)."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "not_json"
    event_type = doc.get("eventType") if isinstance(doc, dict) else None
    return EVENT_TYPES.get(event_type, "other") if isinstance(event_type, int) else "other"


def _cycle(values: list[bytes], count: int | None, forever: bool) -> Iterator[tuple[str, bytes]]:
    """Each value once (``count`` None), ``count`` values cycling through them, or without end."""
    kinds = [kind_of(v) for v in values]
    pairs = itertools.cycle(list(zip(kinds, values, strict=True)))
    if forever:
        return pairs
    return itertools.islice(pairs, len(values) if count is None else count)


def sample_source(count: int | None = None, *, forever: bool = False) -> Iterator[tuple[str, bytes]]:
    """The six bundled envelopes."""
    return _cycle(sample_envelopes(), count, forever)


def file_source(path: str, count: int | None = None, *, forever: bool = False) -> Iterator[tuple[str, bytes]]:
    """Each non-empty line of a JSON-lines file, sent verbatim (so poison records can be tested too)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"--file {path}: cannot read it: {exc.strerror}") from None
    values = [line.rstrip(b"\r") for line in data.split(b"\n") if line.strip()]
    if not values:
        raise ValueError(f"--file {path}: no envelopes in it (one JSON envelope per line expected)")
    return _cycle(values, count, forever)


@dataclass
class ProduceReport:
    topic: str
    partitions: int = 0
    created: bool = False
    records: int = 0
    bytes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    errors: int = 0
    first_error: str = ""
    interrupted: bool = False

    def print(self, out: TextIO) -> None:
        rate = self.records / self.seconds if self.seconds > 0 else 0.0
        made = " (created)" if self.created else ""
        state = "interrupted after" if self.interrupted else "produced"
        print(
            f"refinery produce: {state} {self.records:,} records ({self.bytes / 1e6:.2f} MB) to topic "
            f"{self.topic!r}{made}, {self.partitions} partition(s), in {self.seconds:.1f} s ({rate:,.0f}/s)",
            file=out,
        )
        for kind, n in sorted(self.kinds.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {kind:<14} {n:>10,}", file=out)
        if self.errors:
            print(f"  {'FAILED':<14} {self.errors:>10,}  first error: {self.first_error}", file=out)
        out.flush()


class Publisher:
    """One producer on one topic; ``publish`` sends an iterable of ``(kind, value)``."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        partitions: int = 3,
        connect_timeout: float = 10.0,
        progress_interval: float = 5.0,
        err: TextIO | None = None,
    ):
        self.bootstrap = bootstrap
        self.topic = topic
        self.err = err or sys.stderr
        self.progress_interval = progress_interval
        self.report = ProduceReport(topic=topic)
        self.report.created = ensure_topic(bootstrap, topic, partitions, connect_timeout=connect_timeout)
        self.producer: Any = open_producer(
            bootstrap, connect_timeout=connect_timeout, acks="all", linger_ms=5, client_id="refinery-produce"
        )
        found = self._partitions(connect_timeout)
        self.report.partitions = len(found)
        self.partitions = found

    def _partitions(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.producer.partitions_for(self.topic)
            if found:
                return sorted(found)
            if time.monotonic() >= deadline:
                raise KafkaUnavailable(f"topic {self.topic!r} on {self.bootstrap} has no partitions")
            time.sleep(0.1)

    def _failed(self, exc: BaseException) -> None:
        self.report.errors += 1
        if not self.report.first_error:
            self.report.first_error = f"{type(exc).__name__}: {exc}"

    def publish(
        self, envelopes: Iterable[tuple[str, bytes]], *, rate: float = 0.0, save: BinaryIO | None = None
    ) -> ProduceReport:
        from kafka.errors import KafkaError

        report = self.report
        undelivered: list[BaseException] = []  # errbacks run on kafka-python's I/O thread
        started = time.monotonic()
        next_progress = started + self.progress_interval
        try:
            for index, (kind, value) in enumerate(envelopes):
                if rate > 0:
                    lead = started + index / rate - time.monotonic()
                    if lead > 0:
                        time.sleep(lead)
                partition = self.partitions[index % len(self.partitions)]
                try:
                    future = self.producer.send(self.topic, value=value, partition=partition)
                except KafkaError as exc:
                    self._failed(exc)
                    continue
                future.add_errback(undelivered.append)
                report.records += 1
                report.bytes += len(value)
                report.kinds[kind] += 1
                if save is not None:
                    save.write(value + b"\n")
                if self.progress_interval > 0 and time.monotonic() >= next_progress:
                    next_progress = time.monotonic() + self.progress_interval
                    seconds = time.monotonic() - started
                    print(
                        f"refinery produce: {report.records:,} records ({report.records / seconds:,.0f}/s)",
                        file=self.err,
                        flush=True,
                    )
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            try:
                self.producer.flush(timeout=30)
            except KafkaError as exc:
                self._failed(exc)
            report.seconds = time.monotonic() - started
        for error in undelivered:
            self._failed(error)
            report.records -= 1
        return report

    def close(self) -> None:
        self.producer.close(timeout=5)
