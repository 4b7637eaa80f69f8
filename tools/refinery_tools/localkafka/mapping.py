"""A local Kafka event source mapping: poll, batch, invoke the handler in-process, commit.

It behaves like Lambda's mapping for MSK / self-managed Kafka, so what works here works there:

* a batch is sent when it holds ``batch_size`` records, when ``batching_window`` seconds passed since
  its first record, or when one more record would take the event over 6 MB;
* offsets are committed only after the handler returned; with ``batchItemFailures`` a listed
  partition is committed up to the failed offset and delivered again from there;
* when the handler raises (or overruns its timeout) nothing is committed and the same batch is
  invoked again after an exponential backoff, for ever unless ``max_retries`` is set;
* a stop request (Ctrl-C, SIGTERM) lets the in-flight invocation finish: its offsets are committed
  only if it succeeded; a batch waiting for a retry is abandoned uncommitted. Nothing is committed
  twice, and nothing the handler has not acknowledged is ever committed — delivery is at least once.

With ``commit=False`` (``refinery consume --dry-run``) it changes nothing in Kafka: it does not join the
consumer group (no rebalance of the group's real members) and commits nothing. It reads the group's
committed offsets once, starts there (or at ``starting_position`` for a partition without one), and
reports what it *would* have committed.

The consumer's partitions are paused, not left unpolled, while it waits for a retry, so it stays in
its group however long the handler keeps failing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from refinery_tools.lambda_context import LocalContext
from refinery_tools.localkafka.acks import Outcome, backoff, failed, outcome_of
from refinery_tools.localkafka.connect import KafkaUnavailable, describe_error, open_consumer
from refinery_tools.localkafka.event import MAX_EVENT_BYTES, SOURCES, Batch, partition_key, record_size
from refinery_tools.localkafka.stats import ConsumeStats

Handler = Callable[[dict[str, Any], Any], Any]
TP = tuple[str, int]
POLL_QUANTUM = 0.2  # seconds: how often the loop looks at stop requests, limits and progress


class MappingError(RuntimeError):
    """The mapping cannot go on (a missing topic, a batch that failed more than ``max_retries``)."""


@dataclass
class MappingOptions:
    bootstrap: str
    topics: list[str]
    group: str
    batch_size: int = 100
    batching_window: float = 0.5
    source: str = SOURCES["self-managed"]
    starting_position: str = "earliest"
    function_name: str = "refinery-enricher"
    function_timeout: float = 60.0
    retry_backoff: float = 0.5
    max_retry_wait: float = 30.0
    max_retries: int = -1
    max_batches: int | None = None
    max_records: int | None = None
    idle_exit: float | None = None
    progress_interval: float = 5.0
    session_timeout: float = 10.0
    connect_timeout: float = 10.0
    commit: bool = True  # False: a dry run, outside the group, committing nothing


class EventSourceMapping:
    def __init__(self, options: MappingOptions, handler: Handler, *, err: TextIO | None = None):
        self.options = options
        self.handler = handler
        self.err = err or sys.stderr
        self.stats = ConsumeStats()
        self.consumer: Any = None
        self.subscribed = False  # past the start-up checks: there is a run to summarise
        self._stopping = False
        self._assigned: set[TP] = set()
        self._revoked: set[TP] = set()
        self._committed: dict[TP, int] = {}  # committed by this run (would be, in a dry run)
        self._group_offsets: dict[TP, int] = {}  # the group's committed offsets at the start (dry run)
        self._pending: dict[TP, int] = {}
        self._first_read: dict[TP, int] = {}
        self._failures = 0  # consecutive failed or partially failed invocations
        self._next_progress = 0.0

    # -- control ------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop after the in-flight invocation (from a signal handler: only sets a flag)."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def say(self, message: str) -> None:
        print(f"refinery consume: {message}", file=self.err, flush=True)

    # -- the loop -------------------------------------------------------------------------------------

    def run(self) -> ConsumeStats:
        """Consume until a limit, the idle time, or a stop request; raise MappingError or
        KafkaUnavailable when it cannot go on (the summary is in :attr:`stats` either way)."""
        from kafka import ConsumerRebalanceListener

        mapping = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                mapping._on_revoked({(tp.topic, tp.partition) for tp in revoked})

            def on_partitions_assigned(self, assigned: Any) -> None:
                mapping._on_assigned({(tp.topic, tp.partition) for tp in assigned})

        opts = self.options
        session_ms = int(opts.session_timeout * 1000)
        group: dict[str, Any] = (
            {
                "group_id": opts.group,
                "session_timeout_ms": session_ms,
                "heartbeat_interval_ms": max(session_ms // 3, 100),
                "max_poll_interval_ms": max(300_000, int(opts.function_timeout * 2000)),
            }
            if opts.commit
            else {"group_id": None}  # a dry run stays out of the group: its members are not disturbed
        )
        self.consumer = open_consumer(
            opts.bootstrap,
            connect_timeout=opts.connect_timeout,
            client_id=f"refinery-consume-{opts.group}",
            enable_auto_commit=False,
            auto_offset_reset=opts.starting_position,
            max_poll_records=opts.batch_size,
            **group,
        )
        interrupted = False
        try:
            self._check_topics()
            if opts.commit:
                self.consumer.subscribe(opts.topics, listener=Listener())
            else:
                self._assign_outside_the_group()
            self.subscribed = True
            how = (
                f"as group {opts.group!r}"
                if opts.commit
                else f"from group {opts.group!r}'s committed offsets, outside the group, committing nothing"
            )
            self.say(
                f"consuming {', '.join(opts.topics)} from {opts.bootstrap} {how}"
                f" (batch size {opts.batch_size}, window {opts.batching_window:g} s, {opts.source})"
            )
            self._next_progress = time.monotonic() + opts.progress_interval
            self._loop()
        except KeyboardInterrupt:
            interrupted = True
            self.stats.stop_reason = "interrupted: the in-flight batch was abandoned, not committed"
        finally:
            try:
                if not interrupted:
                    self._commit({})  # offsets acknowledged earlier whose commit failed
                self.stats.lag = self._final_lag()
            finally:
                self.consumer.close(autocommit=False, timeout_ms=3000)
        return self.stats

    def _assign_outside_the_group(self) -> None:
        """Dry run: every partition of the topics, from the group's committed offsets (read, not joined)."""
        from kafka import TopicPartition
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError

        from refinery_tools.localkafka.connect import parse_bootstrap

        opts = self.options
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=parse_bootstrap(opts.bootstrap),
                request_timeout_ms=int(max(opts.connect_timeout, 5.0) * 1000),
            )
            try:
                offsets = admin.list_group_offsets(opts.group).get(opts.group, {})
            finally:
                admin.close()
        except KafkaError as exc:
            raise KafkaUnavailable(
                f"cannot read the committed offsets of group {opts.group!r} on {opts.bootstrap}:"
                f" {describe_error(exc)}"
            ) from None
        self._group_offsets = {
            (tp.topic, tp.partition): meta.offset
            for tp, meta in offsets.items()
            if tp.topic in opts.topics and meta.offset >= 0
        }
        parts = [
            TopicPartition(topic, partition)
            for topic in opts.topics
            for partition in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        self.consumer.assign(parts)
        for tp in parts:
            offset = self._group_offsets.get((tp.topic, tp.partition))
            if offset is not None:
                self.consumer.seek(tp, offset)
        self._on_assigned({(tp.topic, tp.partition) for tp in parts})

    def _check_topics(self) -> None:
        from kafka.errors import KafkaError

        try:
            known = set(self.consumer.topics())
        except KafkaError as exc:
            raise KafkaUnavailable(
                f"cannot list the topics of {self.options.bootstrap}: {describe_error(exc)}"
            ) from None
        missing = [t for t in self.options.topics if t not in known]
        if missing:
            listing = ", ".join(sorted(known)) or "none"
            raise MappingError(
                f"topic {', '.join(map(repr, missing))} does not exist on {self.options.bootstrap}"
                f" (topics there: {listing}); check --topic, or create it (refinery produce creates it)"
            )

    def _loop(self) -> None:
        opts = self.options
        idle_since: float | None = None
        while not self._stopping:
            if opts.max_batches is not None and self.stats.batches >= opts.max_batches:
                self.stats.stop_reason = f"done: {opts.max_batches} batch(es)"
                return
            if opts.max_records is not None and self.stats.records >= opts.max_records:
                self.stats.stop_reason = f"done: {self.stats.records:,} records (--max-records)"
                return
            batch = self._collect()
            self._progress()
            if batch is None:
                if self._assigned and opts.idle_exit is not None:
                    now = time.monotonic()
                    if idle_since is None:
                        idle_since = now
                    elif now - idle_since >= opts.idle_exit:
                        self.stats.stop_reason = f"done: no new record for {opts.idle_exit:g} s"
                        return
                continue
            self._deliver(batch)
            self.stats.mark_done()
            idle_since = None
        if not self.stats.stop_reason:
            self.stats.stop_reason = "stopped on request"

    # -- batching -------------------------------------------------------------------------------------

    def _collect(self) -> Batch | None:
        """Gather one batch; None when nothing arrived within a poll quantum."""
        from kafka import TopicPartition

        opts = self.options
        limit = opts.batch_size
        if opts.max_records is not None:  # --max-records: not one record more than asked
            limit = max(1, min(limit, opts.max_records - self.stats.records))
        batch = Batch()
        started: float | None = None
        while not self._stopping:
            wait = POLL_QUANTUM if started is None else opts.batching_window - (time.monotonic() - started)
            polled = self.consumer.poll(timeout_ms=max(0, int(wait * 1000)), max_records=limit - batch.count)
            if self._revoked:
                batch = batch.without(self._take_revoked())
            full = False
            for tp, records in polled.items():
                for record in records:
                    size = record_size(record)
                    if full or (batch.count and batch.size + size > MAX_EVENT_BYTES):
                        full = True
                        self.consumer.seek(TopicPartition(tp.topic, tp.partition), record.offset)
                        break
                    batch.add(record, size)
                    self._first_read.setdefault((tp.topic, tp.partition), record.offset)
            if batch.count and started is None:
                started = time.monotonic()
            if full or batch.count >= limit:
                break
            if started is None:
                return None
            if time.monotonic() - started >= opts.batching_window:
                break
        return batch if batch.count else None

    # -- one batch: invoke, commit, retry --------------------------------------------------------------

    def _deliver(self, batch: Batch) -> None:
        opts = self.options
        self.stats.mark_active()
        while True:
            outcome, summary = self._invoke(batch)
            if not outcome.failed:
                self.stats.acknowledged(
                    _acknowledged_records(batch, outcome), summary, whole=not outcome.redeliver
                )
                self._commit(outcome.commit)
                if not outcome.redeliver:
                    self._failures = 0
                    return
                # Partial batch response: what is not acknowledged comes again through polling.
                self.stats.partial_batches += 1
                self._seek(outcome.redeliver)
            else:
                self.stats.failed_invocations += 1
            self._failures += 1
            self.stats.last_error = outcome.reason
            if 0 <= opts.max_retries < self._failures:
                self._seek(batch.first_offsets() if outcome.failed else {})
                raise MappingError(
                    f"a batch failed {self._failures} time(s), more than --max-retries {opts.max_retries};"
                    f" its offsets were not committed: {outcome.reason}"
                )
            self.stats.retries += 1
            delay = backoff(self._failures, opts.retry_backoff, opts.max_retry_wait)
            what = "partially failed" if outcome.partial else "failed"
            self.say(
                f"batch of {batch.count} record(s) {what} ({outcome.reason}); retry {self._failures}"
                f" in {delay:.1f} s; uncommitted offsets stay uncommitted"
            )
            self._wait(delay)
            if outcome.partial:
                return
            if self._stopping:
                self.stats.stop_reason = (
                    f"stopped on request; a failing batch of {batch.count} record(s) was abandoned, not "
                    "committed (the next run delivers it again)"
                )
                return
            revoked = self._take_revoked() & set(batch.records)
            if revoked:  # another member (or a fresh assignment) reads those from the committed offset
                batch = batch.without(revoked)
                if not batch.count:
                    return

    def _invoke(self, batch: Batch) -> tuple[Outcome, Any]:
        opts = self.options
        event = batch.to_event(opts.source, opts.bootstrap)
        context = LocalContext(function_name=opts.function_name, timeout_seconds=opts.function_timeout)
        started = time.monotonic()
        try:
            result = self.handler(event, context)
        except Exception as exc:
            return failed(f"{type(exc).__name__}: {exc}"), None
        took = time.monotonic() - started
        if took > opts.function_timeout:  # Lambda would have stopped it: its answer does not count
            return failed(f"Task timed out after {opts.function_timeout:g} s (took {took:.1f} s)"), None
        outcome = outcome_of(batch.first_offsets(), batch.next_offsets(), result)
        summary = result.get("summary") if isinstance(result, dict) else None
        return outcome, summary

    def _commit(self, offsets: dict[TP, int]) -> None:
        """Commit (with any earlier failed commit) what advances; a failed commit is retried next time.
        In a dry run nothing is committed: what would have been is remembered and reported."""
        from kafka import OffsetAndMetadata, TopicPartition
        from kafka.errors import KafkaError

        merged = dict(self._pending)
        for tp, offset in offsets.items():
            merged[tp] = max(offset, merged.get(tp, offset))
        todo = {tp: o for tp, o in merged.items() if tp in self._assigned and o > self._committed.get(tp, -1)}
        if not todo:
            self._pending = {}
            return
        if not self.options.commit:
            self._pending = {}
            self._committed.update(todo)
            for (topic, partition), offset in todo.items():
                self.stats.committed[partition_key(topic, partition)] = offset
            return
        try:
            self.consumer.commit(
                {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in todo.items()}
            )
        except KafkaError as exc:
            self._pending = todo
            self.stats.commit_failures += 1
            self.say(
                f"commit failed ({describe_error(exc)}); retrying it with the next one (if it never"
                " succeeds, those records are delivered again: the handler rewrites identical points)"
            )
            return
        self._pending = {}
        self._committed.update(todo)
        for (topic, partition), offset in todo.items():
            self.stats.committed[partition_key(topic, partition)] = offset

    def _seek(self, offsets: dict[TP, int]) -> None:
        from kafka import TopicPartition

        for tp, offset in offsets.items():
            if tp in self._assigned:
                self.consumer.seek(TopicPartition(*tp), offset)

    def _wait(self, seconds: float) -> None:
        """Sleep while staying in the group: poll with every partition paused."""
        from kafka import TopicPartition

        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            assigned = list(self.consumer.assignment())
            self.consumer.pause(*assigned)
            try:
                left = deadline - time.monotonic()
                polled = self.consumer.poll(timeout_ms=max(0, int(min(left, POLL_QUANTUM) * 1000)))
            finally:
                self.consumer.resume(*self.consumer.paused())
            for tp, records in polled.items():  # newly assigned while paused: read them again later
                if records:
                    self.consumer.seek(TopicPartition(tp.topic, tp.partition), records[0].offset)
            self._progress()

    # -- group membership ------------------------------------------------------------------------------

    def _on_revoked(self, revoked: set[TP]) -> None:
        self._assigned -= revoked
        self._revoked |= revoked
        for tp in revoked:
            self._pending.pop(tp, None)

    def _on_assigned(self, assigned: set[TP]) -> None:
        new = assigned - self._assigned
        self._assigned |= assigned
        if new:
            self.say("assigned " + ", ".join(partition_key(t, p) for t, p in sorted(new)))

    def _take_revoked(self) -> set[TP]:
        revoked, self._revoked = self._revoked, set()
        return revoked

    # -- progress ----------------------------------------------------------------------------------------

    def _progress(self) -> None:
        if self.options.progress_interval <= 0 or time.monotonic() < self._next_progress:
            return
        self._next_progress = time.monotonic() + self.options.progress_interval
        self.stats.lag = self._lag()
        print(self.stats.progress_line(), file=self.err, flush=True)

    def _base(self, tp: TP) -> int | None:
        """Where the group stands on a partition, without asking the broker: this run's commit, else the
        group's commit read at the start (dry run), else the first offset read (the group's position)."""
        base = self._committed.get(tp)
        if base is None:
            base = self._group_offsets.get(tp, self._first_read.get(tp))
        return base

    def _lag(self) -> int | None:
        """Progress lines: records not yet committed, per assigned partition its high watermark less
        :meth:`_base`, over the partitions both are known for (no request to the broker)."""
        from kafka import TopicPartition

        total, known = 0, False
        for tp in self._assigned:
            base = self._base(tp)
            try:
                high = self.consumer.highwater(TopicPartition(*tp))
            except Exception:  # not assigned any more: no lag to report for it
                continue
            if high is None or base is None:
                continue
            total += max(0, high - base)
            known = True
        return total if known else None

    def _final_lag(self) -> int | None:
        """The summary's lag, exact: per assigned partition, its end less the group's committed offset
        — for a partition this run never read or committed, the offset the group has (or, with none,
        where ``starting_position`` starts). The end is the high watermark of a fetch (probed for the
        partitions this run did not fetch) and the broker's end offset, whichever is higher: some
        brokers (Tansu) answer ListOffsets with the last batch's base offset. The progress line's
        estimate when the broker cannot be asked."""
        from kafka import TopicPartition

        if not self._assigned:
            return None
        parts = {tp: TopicPartition(*tp) for tp in self._assigned}
        try:
            ends = self.consumer.end_offsets(list(parts.values()), timeout_ms=5000)
            bases = {tp: self._base(tp) for tp in parts}
            missing = [tp for tp, base in bases.items() if base is None]
            for tp in missing:
                if self.options.commit:
                    bases[tp] = self.consumer.committed(parts[tp], timeout_ms=5000)
            unstarted = [parts[tp] for tp in missing if bases[tp] is None]
            if unstarted:
                origin = (
                    self.consumer.beginning_offsets(unstarted, timeout_ms=5000)
                    if self.options.starting_position == "earliest"
                    else {p: ends[p] for p in unstarted}
                )
                bases.update({(p.topic, p.partition): o for p, o in origin.items()})
            highs = {tp: self.consumer.highwater(part) for tp, part in parts.items()}
            unknown = {
                tp: base for tp, high in highs.items() if high is None and (base := bases[tp]) is not None
            }
            highs.update(self._probe_highwaters(unknown) if unknown else {})
        except Exception:  # the broker went away at the end: the estimate is better than nothing
            return self._lag()
        total = 0
        for tp, part in parts.items():
            end = max((e for e in (ends.get(part), highs.get(tp)) if e is not None), default=None)
            if bases[tp] is not None and end is not None:
                total += max(0, end - bases[tp])
        return total

    def _probe_highwaters(self, starts: dict[TP, int], timeout: float = 5.0) -> dict[TP, int]:
        """High watermarks of partitions this run did not fetch: a throwaway consumer outside any
        group fetches from ``starts`` (nothing is committed) until each partition answered once."""
        from kafka import TopicPartition

        probe = open_consumer(
            self.options.bootstrap,
            connect_timeout=self.options.connect_timeout,
            group_id=None,
            client_id=f"refinery-consume-{self.options.group}-lag",
            enable_auto_commit=False,
        )
        found: dict[TP, int] = {}
        try:
            parts = {tp: TopicPartition(*tp) for tp in starts}
            probe.assign(list(parts.values()))
            for tp, offset in starts.items():
                probe.seek(parts[tp], offset)
            deadline = time.monotonic() + timeout
            while len(found) < len(parts) and time.monotonic() < deadline:
                probe.poll(timeout_ms=200, max_records=500)
                for tp, part in parts.items():
                    high = probe.highwater(part)
                    if tp not in found and high is not None:
                        found[tp] = high
                        probe.pause(part)
        finally:
            probe.close(autocommit=False)
        return found


def _acknowledged_records(batch: Batch, outcome: Outcome) -> int:
    count = 0
    for tp, records in batch.records.items():
        limit = outcome.redeliver.get(tp)
        count += len(records) if limit is None else sum(1 for r in records if r.offset < limit)
    return count
