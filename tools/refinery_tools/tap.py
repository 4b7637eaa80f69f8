"""``refinery tap``: watch records go through the pipeline, one line per record (like ``vector tap``).

For each record of an event file, or of a topic read live, it shows the record's partition and
offset, its app GUID, the metadata tier that named the app, and its outcome: the line it is written
as (with tenant routing, and where: the database or bucket and the route that chose it), or why it is
dropped or quarantined. It writes nothing, quarantines nothing and commits nothing,
and never joins a consumer group: run it beside ``refinery consume`` or the real function.

The outcome is the pipeline's own: each record goes through :func:`refinery.pipeline.convert_batch`
as a one-record event, with the enricher's configuration (snapshot, live lookups, age limit,
``TIMESTAMP_HASH_DIGITS``) and its filters and extra tags; the app GUID and the tier are what the
metadata store was asked and which of its counters moved. Records of one event (or one poll of the
topic) share an invocation, as in a batch: an app is resolved once, later records show the tier that
answered first. Recording rules aggregate whole batches, so tap shows the points before them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import orjson

from refinery.observability import LOCAL_RUN_ENV
from refinery_tools.clitools import EXIT_ERROR, EXIT_OK, HelpFormatter, StopSignals, load_event

OUTCOMES = ("written", "dropped", "quarantined")
#: Store counters -> the tier shown; the first that moved for a record wins.
TIER_OF_COUNTER = (
    ("cache", "cache"),
    ("snapshot", "snapshot"),
    ("live", "live"),
    ("negative", "negative"),
    ("live_failures", "live: failed"),
    ("deferred", "live: deferred"),
)


@dataclass
class Tapped:
    """One record's walk: where it came from, its app and who named it, and what became of it."""

    partition: str
    offset: Any
    app_guid: str | None
    tier: str | None
    outcome: str
    line: str | None = None
    reason: str | None = None
    detail: str | None = None
    same_point_as: str | None = None  # an earlier record of the batch gave the same point (a re-send)
    route: str | None = None  # with tenant routing (ROUTES_FILE / ROUTES_KEY): where the point goes

    @property
    def position(self) -> str:
        return f"{self.partition}@{self.offset}"

    @property
    def measurement(self) -> str | None:
        if self.line is None:
            return None
        from refinery.lineparse import parse_series, series_end

        return parse_series(self.line[: series_end(self.line)])[0]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _AskedStore:
    """The metadata store as :func:`convert_batch` sees it, noting which app GUIDs it was asked."""

    def __init__(self, store: Any):
        self.store = store
        self.asked: list[str] = []

    def lookup(self, guid: str) -> Any:
        self.asked.append(guid)
        return self.store.lookup(guid)

    @property
    def last_miss(self) -> str | None:
        return self.store.last_miss


def guid_of(record: dict[str, Any]) -> str | None:
    """The app GUID an envelope names, for records dropped before any lookup (display only)."""
    from refinery.envelope import Poison, decode_value, uuid_to_guid

    try:
        envelope = decode_value(record.get("value"))
    except Poison:
        return None
    for key, field in (("logMessage", "app_id"), ("containerMetric", "applicationId")):
        body = envelope.get(key)
        if isinstance(body, dict) and isinstance(body.get(field), str) and body[field]:
            return body[field]
    body = envelope.get("httpStartStop")
    if isinstance(body, dict):
        with contextlib.suppress(Exception):
            return uuid_to_guid(body.get("applicationId"))
    return None


class Tap:
    """Runs records through the pipeline's transform one at a time, with the enricher's settings."""

    def __init__(self, config: Any, store: Any, now: Any = time.time, router: Any = None):
        from refinery.point_stage import PointStage

        self.config = config
        self.store = store
        self.router = router  # tenant routing (refinery.routing.Router), or None
        self.now = now
        # Filters and extra tags change or drop a point; rules aggregate batches (not shown here).
        self.stage = PointStage(config.point_filter, None) if config.point_filter is not None else None
        self._tier_of: dict[str, str] = {}
        self._points: dict[str, str] = {}

    def begin_batch(self) -> None:
        """One invocation: the snapshot checked if due, the live-lookup budget and memo reset."""
        self.store.begin_invocation()
        if self.router is not None:
            self.router.begin_invocation()
        self._tier_of = {}
        self._points = {}

    def record(self, key: str, record: dict[str, Any]) -> Tapped:
        from refinery.pipeline import convert_batch

        asked = _AskedStore(self.store)
        before = self.store.stats.tiers()
        max_age = self.config.max_record_age
        oldest = (self.now() - max_age) * 1000.0 if max_age else None
        done = convert_batch(
            {"records": {key: [record]}}, asked, oldest, timestamp_digits=self.config.timestamp_digits
        )
        if self.stage is not None:
            self.stage.apply(done)
        after = self.store.stats.tiers()
        guid = asked.asked[-1] if asked.asked else guid_of(record)
        tier = self._tier(guid, before, after) if asked.asked else None
        tapped = Tapped(key, record.get("offset"), guid, tier, "written")
        if done.lines:
            tapped.line = done.lines[0]
            if self.router is not None:
                destination, route = self.router.route_of(tapped.line)
                tapped.route = (
                    f"{destination}, route {route!r}" if route != "default" else f"{destination} (default)"
                )
            first = self._points.setdefault(tapped.line, tapped.position)
            if first != tapped.position:
                tapped.same_point_as = first
        elif done.quarantine:
            item = done.quarantine[0]
            tapped.outcome, tapped.reason, tapped.detail = "quarantined", item.reason, item.detail
        else:
            tapped.outcome = "dropped"
            tapped.reason = next(iter(done.result.dropped), "dropped")
        return tapped

    def _tier(self, guid: str | None, before: dict[str, int], after: dict[str, int]) -> str:
        moved = {k for k in after if after[k] != before.get(k)}
        tier = next((label for counter, label in TIER_OF_COUNTER if counter in moved), None)
        if tier is None and "unknown" in moved:
            tier = "live: not found" if "live_lookups" in moved else "none"
        if tier is None:  # answered by this invocation's memo: the tier that answered first
            tier = self._tier_of.get(guid or "", "memo")
        elif guid is not None:
            self._tier_of[guid] = tier
        return tier

    def event(self, event: dict[str, Any]) -> Iterator[Tapped]:
        self.begin_batch()
        for key, batch in (event.get("records") or {}).items():
            for record in batch or ():
                yield self.record(key, record if isinstance(record, dict) else {"value": record})


# ---------------------------------------------------------------------------------------- filters


@dataclass
class Filters:
    apps: set[str]
    outcomes: set[str]
    reasons: set[str]
    measurements: set[str]
    partitions: set[str]

    def keep(self, tapped: Tapped) -> bool:
        if self.apps and (tapped.app_guid or "").lower() not in self.apps:
            return False
        if self.outcomes and tapped.outcome not in self.outcomes:
            return False
        if self.reasons and tapped.reason not in self.reasons:
            return False
        if self.measurements and tapped.measurement not in self.measurements:
            return False
        if self.partitions:
            number = tapped.partition.rsplit("-", 1)[-1]
            if tapped.partition not in self.partitions and number not in self.partitions:
                return False
        return True


# ----------------------------------------------------------------------------------------- output


HEADER = ("RECORD", "APP GUID", "TIER", "OUTCOME", "POINT / REASON")


class Printer:
    def __init__(self, out: TextIO, fmt: str):
        self.out = out
        self.fmt = fmt
        self.header = False

    def show(self, tapped: Tapped) -> None:
        if self.fmt == "json":
            self.out.write(orjson.dumps(tapped.as_dict()).decode() + "\n")
            self.out.flush()
            return
        if not self.header:
            self._row(HEADER)
            self.header = True
        if tapped.outcome == "written":
            what = tapped.line or ""
            if tapped.same_point_as:
                what += f"   (the same point as {tapped.same_point_as}: a re-send, stored once)"
            if tapped.route:
                what += f"   -> {tapped.route}"
        else:
            what = tapped.reason or ""
            if tapped.detail:
                what += f": {tapped.detail}"
        self._row((tapped.position, tapped.app_guid or "-", tapped.tier or "-", tapped.outcome, what))

    def _row(self, cells: tuple[str, ...]) -> None:
        position, guid, tier, outcome, what = cells
        self.out.write(f"{position:<22} {guid:<36} {tier:<15} {outcome:<11} {what}\n")
        self.out.flush()


@dataclass
class Totals:
    seen: int = 0
    shown: int = 0
    written: int = 0
    dropped: int = 0
    quarantined: int = 0

    def add(self, tapped: Tapped) -> None:
        self.seen += 1
        setattr(self, tapped.outcome, getattr(self, tapped.outcome) + 1)

    def line(self) -> str:
        return (
            f"refinery tap: {self.seen:,} record(s): {self.written:,} written, {self.dropped:,} dropped,"
            f" {self.quarantined:,} quarantined; {self.shown:,} shown (nothing was written or committed)"
        )


def show_all(
    tapped: Iterable[Tapped], filters: Filters, printer: Printer, totals: Totals, limit: int | None
) -> bool:
    """Print the records that pass the filters; False once ``limit`` records were shown."""
    for item in tapped:
        totals.add(item)
        if filters.keep(item):
            printer.show(item)
            totals.shown += 1
            if limit is not None and totals.shown >= limit:
                return False
    return True


# ---------------------------------------------------------------------------------------- sources


def _live(args: argparse.Namespace, tap: Tap, show: Any, stops: StopSignals) -> str:
    """Read the topics outside any consumer group, from where asked; one tap batch per poll."""
    from kafka import TopicPartition

    from refinery_tools.localkafka.connect import KafkaUnavailable, open_consumer
    from refinery_tools.localkafka.event import SOURCES, Batch

    consumer = open_consumer(
        args.bootstrap,
        connect_timeout=args.connect_timeout,
        group_id=None,
        client_id="refinery-tap",
        enable_auto_commit=False,
        auto_offset_reset="earliest" if args.start == "earliest" else "latest",
        max_poll_records=args.batch_size,
    )
    try:
        known = set(consumer.topics())
        missing = [t for t in args.topic if t not in known]
        if missing:
            raise KafkaUnavailable(
                f"topic {', '.join(map(repr, missing))} does not exist on {args.bootstrap}"
                f" (topics there: {', '.join(sorted(known)) or 'none'})"
            )
        parts = [
            TopicPartition(topic, p)
            for topic in args.topic
            for p in sorted(consumer.partitions_for_topic(topic))
        ]
        consumer.assign(parts)
        if args.start == "earliest":
            consumer.seek_to_beginning(*parts)
        elif args.start == "latest":
            consumer.seek_to_end(*parts)
        else:
            _seek_to_committed(args, consumer, parts)
        idle_since = time.monotonic()
        while not stops.signum:
            polled = consumer.poll(timeout_ms=200, max_records=args.batch_size)
            batch = Batch()
            for records in polled.values():
                for record in records:
                    batch.add(record)
            if not batch.count:
                if args.idle_exit is not None and time.monotonic() - idle_since >= args.idle_exit:
                    return f"no new record for {args.idle_exit:g} s"
                continue
            idle_since = time.monotonic()
            if not show(tap.event(batch.to_event(SOURCES[args.source], args.bootstrap))):
                return f"{args.limit} record(s) shown (--limit)"
        return "stopped on request"
    finally:
        consumer.close(autocommit=False)


def _seek_to_committed(args: argparse.Namespace, consumer: Any, parts: list[Any]) -> None:
    """Start at a group's committed offsets (read, never written), else at the end."""
    from kafka.admin import KafkaAdminClient

    from refinery_tools.localkafka.connect import parse_bootstrap

    admin = KafkaAdminClient(bootstrap_servers=parse_bootstrap(args.bootstrap))
    try:
        offsets = admin.list_group_offsets(args.group).get(args.group, {})
    finally:
        admin.close()
    committed = {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
    for tp in parts:
        offset = committed.get((tp.topic, tp.partition))
        if offset is None:
            consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, offset)


def run_tap(args: argparse.Namespace, out: TextIO | None = None) -> int:
    os.environ.setdefault(LOCAL_RUN_ENV, "1")
    if not args.verbose:  # the store's and client's INFO lines would interleave with the records
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    out = out or sys.stdout
    if (args.event is None) == (args.bootstrap is None):
        print("refinery tap: give --event FILE, or --bootstrap and --topic to read live", file=sys.stderr)
        return EXIT_ERROR
    if args.bootstrap is not None and not args.topic:
        print("refinery tap: --topic is required with --bootstrap", file=sys.stderr)
        return EXIT_ERROR
    if args.start == "committed" and not args.group:
        print(
            "refinery tap: --from committed needs --group (whose offsets are read, not changed)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    from refinery.config import ConfigError, load_enricher_config

    try:
        config = load_enricher_config()
    except ConfigError as exc:
        print(f"refinery tap: {exc}", file=sys.stderr)
        return EXIT_ERROR
    from refinery.handlers import enricher
    from refinery.sinks import PrintSink

    runtime = enricher.build_runtime(config, PrintSink())  # the store only: nothing is written
    if config.rules_file or config.rules_key:
        print(
            "refinery tap: recording rules aggregate whole batches; shown: the points before them",
            file=sys.stderr,
        )
    tap = Tap(config, runtime.store, router=runtime.router)
    filters = Filters(
        apps={a.lower() for a in args.app or ()},
        outcomes=set(args.outcome or ()),
        reasons=set(args.reason or ()),
        measurements=set(args.measurement or ()),
        partitions=set(args.partition or ()),
    )
    printer = Printer(out, args.format)
    totals = Totals()

    def show(tapped: Iterable[Tapped]) -> bool:
        return show_all(tapped, filters, printer, totals, args.limit)

    stops = StopSignals(lambda: None, message="refinery tap: stopping")
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(stops.installed())
            # The enricher's own output (EMF metrics) is not the tap's: stderr with --verbose, else nowhere.
            quiet = sys.stderr if args.verbose else stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(quiet))
            if args.event is not None:
                from refinery.kafka_event import describe

                event = load_event(args.event)
                try:
                    describe(event)
                except ValueError as exc:
                    print(f"refinery tap: {args.event}: {exc}", file=sys.stderr)
                    return EXIT_ERROR
                show(tap.event(event))
            else:
                from refinery_tools.localkafka.connect import KafkaUnavailable, quiet_kafka_logs

                quiet_kafka_logs(args.verbose)
                try:
                    reason = _live(args, tap, show, stops)
                except KafkaUnavailable as exc:
                    print(f"refinery tap: {exc}", file=sys.stderr)
                    return EXIT_ERROR
                print(f"refinery tap: {reason}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        runtime.sink.close()
    print(totals.line(), file=sys.stderr)
    return stops.exit_code if stops.exit_code is not None else EXIT_OK


def add_parser(sub: Any) -> None:
    from refinery_tools.localkafka.commands import DEFAULT_SOURCE, _bootstrap, _number
    from refinery_tools.localkafka.event import SOURCES

    p = sub.add_parser(
        "tap",
        help="watch records through the pipeline: per record its app, tier and outcome (writes nothing)",
        formatter_class=HelpFormatter,
        description=(
            "Show, for each record of an event file or of topics read live, its partition and offset, "
            "its app GUID, the metadata tier that named the app (cache, snapshot, live, negative; "
            "live: not found, failed or deferred; none), and its outcome: the line it is written as, or "
            "the reason it is dropped or quarantined. The enricher's settings apply (snapshot, live "
            "lookups, filters, extra tags, MAX_RECORD_AGE_SECONDS, TIMESTAMP_HASH_DIGITS). Nothing is "
            "written, quarantined or committed, and no consumer group is joined. The filters combine "
            "(each repeatable option matches any of its values)."
        ),
    )
    where = p.add_argument_group("what to read (one of)")
    where.add_argument("--event", metavar="FILE", help="a Lambda Kafka event file (e.g. events/msk.json)")
    where.add_argument(
        "--bootstrap",
        type=_bootstrap,
        metavar="HOST:PORT",
        help="read topics live from these brokers (with --topic)",
    )
    live = p.add_argument_group("reading live")
    live.add_argument("--topic", action="append", help="topic to read (repeatable)")
    live.add_argument(
        "--from",
        dest="start",
        choices=["latest", "earliest", "committed"],
        default="latest",
        help="start at new records, the oldest, or where --group has committed",
    )
    live.add_argument(
        "--group", help="with --from committed: the group whose offsets are read (never changed)"
    )
    live.add_argument(
        "--batch-size",
        type=_number(int, "--batch-size", 1, 10000),
        default=500,
        metavar="N",
        help="records per poll, handled as one invocation",
    )
    live.add_argument(
        "--idle-exit",
        type=_number(float, "--idle-exit", 0),
        metavar="SECONDS",
        help="stop once no record arrived for this long (default: run until Ctrl-C)",
    )
    live.add_argument(
        "--source", choices=sorted(SOURCES), default=DEFAULT_SOURCE, help="event shape built from the records"
    )
    live.add_argument(
        "--connect-timeout",
        type=_number(float, "--connect-timeout", 0.1, 300),
        default=10.0,
        metavar="SECONDS",
        help="how long to try to reach the brokers",
    )
    show = p.add_argument_group("which records to show")
    show.add_argument("--app", action="append", metavar="GUID", help="only records of this app (repeatable)")
    show.add_argument(
        "--outcome", action="append", choices=OUTCOMES, help="only records with this outcome (repeatable)"
    )
    show.add_argument(
        "--reason",
        action="append",
        metavar="REASON",
        help="only records dropped or quarantined for this reason, e.g. unknown_app, not_json (repeatable)",
    )
    show.add_argument(
        "--measurement",
        action="append",
        metavar="NAME",
        help="only records written as this measurement: http_request, log, instance (repeatable)",
    )
    show.add_argument(
        "--partition",
        action="append",
        metavar="P",
        help="only records of this partition: a number or topic-number (repeatable)",
    )
    show.add_argument(
        "--limit",
        type=_number(int, "--limit", 1),
        metavar="N",
        help="stop after showing N records (default: no limit)",
    )
    p.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="a table, or one JSON object per record",
    )
    p.add_argument("--verbose", action="store_true", help="also the enricher's logs, on stderr")
    p.set_defaults(func=_cmd_tap)


def _cmd_tap(args: argparse.Namespace) -> int:
    return run_tap(args)
