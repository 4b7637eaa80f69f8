"""``refinery consume``, ``refinery produce`` and ``refinery events``: options, wiring, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from refinery.observability import LOCAL_RUN_ENV
from refinery_tools.clitools import EXIT_INTERRUPTED, HelpFormatter, StopSignals
from refinery_tools.localkafka.event import SOURCES

__all__ = ["EXIT_INTERRUPTED", "add_parsers"]
#: The event shape of ``consume``, ``events`` and ``tap``: MSK, the template's first choice.
DEFAULT_SOURCE = "msk"


def _number(
    kind: Callable[[str], Any], name: str, low: float, high: float | None = None
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, not {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"{name} must be {bounds}, not {text}")
        return value

    return parse


def _bootstrap(text: str) -> str:
    from refinery_tools.localkafka.connect import parse_bootstrap

    try:
        return ",".join(parse_bootstrap(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _safe_url(url: str) -> str:
    """The URL without any user:password part (secrets are never printed)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _fail(command: str, message: str) -> int:
    print(f"refinery {command}: {message}", file=sys.stderr)
    return 1


def _interrupt() -> None:
    raise KeyboardInterrupt


def quarantine_root(quarantine: Any) -> str:
    """Where a runtime's quarantine objects go: ``s3://bucket/prefix`` or ``directory/prefix``."""
    if quarantine.bucket:
        return f"s3://{quarantine.bucket}/{quarantine.prefix}"
    return os.path.join(quarantine.directory or ".", quarantine.prefix)


# ------------------------------------------------------------------------------------------- consume


def cmd_consume(args: argparse.Namespace) -> int:
    os.environ.setdefault(LOCAL_RUN_ENV, "1")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Refinery")
    if not args.verbose:  # per-batch INFO lines drown the progress line; warnings and errors still show
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    from refinery.config import ConfigError, load_enricher_config
    from refinery.sinks import FlushError
    from refinery_tools.config_check import influx_hint
    from refinery_tools.localkafka.connect import KafkaUnavailable, quiet_kafka_logs
    from refinery_tools.localkafka.mapping import EventSourceMapping, MappingError, MappingOptions

    try:
        config = load_enricher_config()
    except ConfigError as exc:
        return _fail("consume", str(exc))
    from refinery.handlers import enricher
    from refinery.sinks import PrintSink

    # As `refinery invoke`: with no sink configured (or --dry-run) the points are printed.
    sinks = [_safe_url(s.url) for s in (config.influx, getattr(config, "prometheus", None)) if s is not None]
    printing = args.dry_run or not sinks
    runtime = enricher.build_runtime(config, PrintSink(sys.stdout) if printing else None)
    if args.dry_run:  # nothing written anywhere: the quarantine prints what it would write
        from refinery_tools.dryrun import PrintQuarantine

        runtime.quarantine = PrintQuarantine(runtime.quarantine)
        if runtime.stage is not None and runtime.stage.ledger is not None:
            runtime.stage.ledger.read_only = True  # the recording rules' ledger: read, never written
    enricher.reset_runtime(runtime)
    if args.dry_run:
        target = "dry run: printing the line protocol on stdout and would-be quarantined records on stderr"
    else:
        where = (
            "printing the line protocol on stdout (no INFLUX_URL)"
            if printing
            else f"writing to {', '.join(sinks)}"
        )
        target = f"{where}; quarantined records go to {quarantine_root(runtime.quarantine)}"
    quiet_kafka_logs(args.verbose)
    # Powertools warns when an invocation that raised had no metrics yet: the summary says it better.
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    # The handler's own stdout (EMF metrics) goes to stderr with --verbose, else nowhere.
    handler_out = sys.stderr if args.verbose else open(os.devnull, "w")  # noqa: SIM115

    hinted: set[str] = set()

    def handler(event: dict[str, Any], context: Any) -> Any:
        with contextlib.redirect_stdout(handler_out):
            try:
                return enricher.handler(event, context)
            except FlushError as exc:
                hint = influx_hint(str(exc), config.influx)
                if hint and hint not in hinted:  # once: the batch is retried with the same error
                    hinted.add(hint)
                    mapping.say(f"hint: {hint}")
                raise

    options = MappingOptions(
        bootstrap=args.bootstrap,
        topics=list(dict.fromkeys(args.topic)),
        group=args.group,
        batch_size=args.batch_size,
        batching_window=args.batching_window,
        source=SOURCES[args.source],
        starting_position="earliest" if args.starting_position == "trim-horizon" else "latest",
        function_timeout=args.timeout,
        retry_backoff=args.retry_backoff,
        max_retry_wait=args.max_retry_wait,
        max_retries=args.max_retries,
        max_batches=args.max_batches,
        max_records=args.max_records,
        idle_exit=args.idle_exit,
        progress_interval=args.progress_interval,
        session_timeout=args.session_timeout,
        connect_timeout=args.connect_timeout,
        commit=not args.dry_run,
    )
    mapping = EventSourceMapping(options, handler)
    mapping.stats.dry_run = args.dry_run
    mapping.stats.quarantine_root = quarantine_root(runtime.quarantine)
    mapping.say(target)
    code = 0
    stops = StopSignals(
        mapping.request_stop,
        message="refinery: stopping after the in-flight batch (press Ctrl-C again to abandon it)",
    )
    try:
        with stops.installed():
            mapping.run()
    except KafkaUnavailable as exc:
        code = _fail("consume", str(exc))
    except MappingError as exc:
        code = _fail("consume", str(exc))
        mapping.stats.stop_reason = "stopped: " + str(exc)
    except KeyboardInterrupt:  # a second signal while it was still connecting
        code = EXIT_INTERRUPTED
    finally:
        enricher.reset_runtime()
        if handler_out is not sys.stderr:
            handler_out.close()
    stats = mapping.stats
    if stops.exit_code is not None:  # stopped by a signal: 128 + its number, graceful or not
        code = stops.exit_code
    elif stats.stop_reason.startswith("interrupted"):
        code = EXIT_INTERRUPTED
    elif "abandoned" in stats.stop_reason:
        code = code or 1
    if mapping.subscribed:
        stats.print_summary(sys.stderr)
    if args.summary_file:
        Path(args.summary_file).write_text(json.dumps(stats.as_dict(), indent=2, sort_keys=True) + "\n")
    return code


def _add_consume(sub: Any) -> None:
    p = sub.add_parser(
        "consume",
        help="a local Kafka event source mapping: poll, batch, run the enricher, commit",
        formatter_class=HelpFormatter,
        description=(
            "Consume topics like Lambda's Kafka event source mapping does and run the enricher on each "
            "batch in-process (settings from the environment, as refinery invoke). Offsets are committed "
            "only after the handler succeeded; a failed batch is retried with exponential backoff; "
            "batchItemFailures commit up to the failed offset and deliver the rest again. Ctrl-C or "
            "SIGTERM stops after the in-flight batch (a second one abandons it, uncommitted) and exits "
            "128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM). With --dry-run nothing changes "
            "anywhere: the points are printed on stdout, the records that would be quarantined on stderr, "
            "no offset is committed and the consumer group is not joined (its committed offsets are only "
            "read, as the place to start)."
        ),
    )
    p.add_argument(
        "--bootstrap", required=True, type=_bootstrap, help="HOST:PORT[,HOST:PORT...] of the brokers"
    )
    p.add_argument("--topic", required=True, action="append", help="topic to consume (repeatable)")
    p.add_argument(
        "--group",
        required=True,
        help="consumer group id: offsets are committed for it (a dry run only reads them)",
    )
    p.add_argument(
        "--batch-size",
        type=_number(int, "--batch-size", 1, 10000),
        default=1000,
        metavar="N",
        help="most records per batch (the mapping's BatchSize)",
    )
    p.add_argument(
        "--batching-window",
        type=_number(float, "--batching-window", 0, 300),
        default=1.0,
        metavar="SECONDS",
        help="longest wait for a batch to fill, from its first record",
    )
    p.add_argument(
        "--source",
        choices=sorted(SOURCES),
        default=DEFAULT_SOURCE,
        help="event shape: msk (aws:kafka) or self-managed (aws:SelfManagedKafka)",
    )
    p.add_argument(
        "--starting-position",
        choices=["trim-horizon", "latest"],
        default="trim-horizon",
        help="where a group with no committed offset starts: the oldest record or only new ones",
    )
    p.add_argument(
        "--timeout",
        type=_number(float, "--timeout", 1, 900),
        default=120.0,
        metavar="SECONDS",
        help="the function's timeout, the handler's deadline (the template's is 120)",
    )
    p.add_argument(
        "--max-retries",
        type=_number(int, "--max-retries", -1),
        default=-1,
        metavar="N",
        help="give up (exit 1, nothing committed) after this many retries of a batch; -1: never",
    )
    p.add_argument(
        "--retry-backoff",
        type=_number(float, "--retry-backoff", 0),
        default=0.5,
        metavar="SECONDS",
        help="first wait before a retry; it doubles each time",
    )
    p.add_argument(
        "--max-retry-wait",
        type=_number(float, "--max-retry-wait", 0),
        default=30.0,
        metavar="SECONDS",
        help="longest wait between retries",
    )
    p.add_argument(
        "--max-batches",
        type=_number(int, "--max-batches", 1),
        metavar="N",
        help="stop after this many batches (default: no limit)",
    )
    p.add_argument(
        "--max-records",
        type=_number(int, "--max-records", 1),
        metavar="N",
        help="stop after this many records (default: no limit)",
    )
    p.add_argument(
        "--idle-exit",
        type=_number(float, "--idle-exit", 0),
        metavar="SECONDS",
        help="stop once no record arrived for this long, after partitions were assigned (default: never)",
    )
    p.add_argument(
        "--progress-interval",
        type=_number(float, "--progress-interval", 0),
        default=5.0,
        metavar="SECONDS",
        help="a progress line on stderr this often; 0: none",
    )
    p.add_argument(
        "--session-timeout",
        type=_number(float, "--session-timeout", 1, 300),
        default=10.0,
        metavar="SECONDS",
        help="consumer group session timeout",
    )
    p.add_argument(
        "--connect-timeout",
        type=_number(float, "--connect-timeout", 0.1, 300),
        default=10.0,
        metavar="SECONDS",
        help="how long to try to reach the brokers at start",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "change nothing: print the points on stdout and the records that would be quarantined on "
            "stderr; commit no offset and do not join the group"
        ),
    )
    p.add_argument(
        "--verbose", action="store_true", help="the handler's logs and metrics, kafka-python's logs"
    )
    p.add_argument(
        "--summary-file",
        metavar="PATH",
        help="also write the final summary as JSON to PATH (default: not written)",
    )
    p.set_defaults(func=cmd_consume)


# ------------------------------------------------------------------------------------------- produce


def cmd_produce(args: argparse.Namespace) -> int:
    from refinery_tools.localkafka.connect import KafkaUnavailable, quiet_kafka_logs
    from refinery_tools.localkafka.producer import Publisher, file_source, sample_source
    from refinery_tools.localkafka.synthetic import BASE_NS, DEFAULT_STEP_NS, SyntheticTraffic

    forever = args.count == 0
    snapshot: bytes | None = None
    try:
        if args.synthetic:
            # Live timestamps (--now) follow the rate; otherwise the envelopes depend only on the seed,
            # the sizes and the count.
            step = max(DEFAULT_STEP_NS, round(1e9 / args.rate)) if args.now and args.rate else DEFAULT_STEP_NS
            traffic = SyntheticTraffic(
                args.orgs,
                args.spaces,
                args.apps,
                seed=args.seed,
                step_ns=step,
                base_ns=time.time_ns() // 1_000_000 * 1_000_000 if args.now else BASE_NS,
            )
            envelopes = traffic.envelopes(None if forever else (args.count or 1000))
            snapshot = traffic.snapshot()
        elif args.samples:
            from refinery_tools.dev.samples import sample_snapshot

            envelopes = sample_source(args.count, forever=forever)
            snapshot = sample_snapshot()
        else:
            envelopes = file_source(args.file, args.count, forever=forever)
    except ValueError as exc:
        return _fail("produce", str(exc))
    if args.write_snapshot:
        if snapshot is None:
            return _fail(
                "produce", "--write-snapshot needs --samples or --synthetic (a --file has no metadata)"
            )
        Path(args.write_snapshot).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write_snapshot).write_bytes(snapshot)
        print(f"refinery produce: wrote the metadata snapshot to {args.write_snapshot}", file=sys.stderr)
    quiet_kafka_logs(args.verbose)
    try:
        publisher = Publisher(
            args.bootstrap,
            args.topic,
            partitions=args.partitions,
            connect_timeout=args.connect_timeout,
            progress_interval=args.progress_interval,
        )
    except KafkaUnavailable as exc:
        return _fail("produce", str(exc))
    save = open(args.save, "wb") if args.save else None  # noqa: SIM115
    stops = StopSignals(_interrupt, second_raises=False)  # produce stops at the first signal
    try:
        with stops.installed():
            report = publisher.publish(envelopes, rate=args.rate, save=save)
    finally:
        if save is not None:
            save.close()
        publisher.close()
    report.print(sys.stderr)
    if report.errors:
        return _fail("produce", f"{report.errors:,} record(s) were not delivered: {report.first_error}")
    if stops.exit_code is not None:
        return stops.exit_code
    return EXIT_INTERRUPTED if report.interrupted else 0


def _add_produce(sub: Any) -> None:
    p = sub.add_parser(
        "produce",
        help="publish nozzle-format envelopes (samples, a file, or a synthetic foundation)",
        formatter_class=HelpFormatter,
        description=(
            "Publish envelopes exactly as kafka-firehose-nozzle writes them (JSON value, no key, "
            "round-robin over the partitions). A missing topic is created with --partitions partitions. "
            "--synthetic is deterministic for a --seed: a generated foundation (org-O/space-O-S/app-O-S-A) "
            "with HTTP, log and container events and a few value metrics and counters. Ctrl-C or SIGTERM "
            "stops it after flushing what was sent, and it exits 128 + the signal's number (130, 143)."
        ),
    )
    p.add_argument(
        "--bootstrap", required=True, type=_bootstrap, help="HOST:PORT[,HOST:PORT...] of the brokers"
    )
    p.add_argument("--topic", required=True, help="topic to publish to (created if missing)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--samples", action="store_true", help="the six bundled envelopes")
    what.add_argument("--file", metavar="F.jsonl", help="one envelope per line, sent verbatim")
    what.add_argument("--synthetic", action="store_true", help="traffic of a generated foundation")
    p.add_argument("--orgs", type=_number(int, "--orgs", 1), default=2, metavar="N", help="synthetic: orgs")
    p.add_argument(
        "--spaces", type=_number(int, "--spaces", 1), default=2, metavar="N", help="synthetic: spaces per org"
    )
    p.add_argument(
        "--apps", type=_number(int, "--apps", 1), default=5, metavar="N", help="synthetic: apps per space"
    )
    p.add_argument(
        "--seed", type=int, default=1, metavar="N", help="synthetic: seed (same seed, same envelopes)"
    )
    p.add_argument(
        "--now",
        action="store_true",
        help="synthetic: timestamps from now (default: a fixed 2018 start, so runs are identical)",
    )
    p.add_argument(
        "--count",
        type=_number(int, "--count", 0),
        metavar="N",
        help=(
            "records to send; 0: until Ctrl-C (default: 1000 synthetic; with --samples or --file, each"
            " envelope once, more cycles through them)"
        ),
    )
    p.add_argument(
        "--rate",
        type=_number(float, "--rate", 0),
        default=0.0,
        metavar="PER_SECOND",
        help="records per second; 0: unpaced",
    )
    p.add_argument(
        "--partitions",
        type=_number(int, "--partitions", 1, 1000),
        default=3,
        metavar="N",
        help="partitions of the topic if it must be created",
    )
    p.add_argument(
        "--write-snapshot",
        metavar="PATH",
        help="write the matching metadata snapshot, for METADATA_FILE (default: not written)",
    )
    p.add_argument(
        "--save", metavar="PATH", help="also write every envelope sent to PATH, as JSON lines (default: not)"
    )
    p.add_argument(
        "--progress-interval",
        type=_number(float, "--progress-interval", 0),
        default=5.0,
        metavar="SECONDS",
        help="a progress line on stderr this often; 0: none",
    )
    p.add_argument(
        "--connect-timeout",
        type=_number(float, "--connect-timeout", 0.1, 300),
        default=10.0,
        metavar="SECONDS",
        help="how long to try to reach the brokers at start",
    )
    p.add_argument("--verbose", action="store_true", help="kafka-python's logs")
    p.set_defaults(func=cmd_produce)


# -------------------------------------------------------------------------------------------- events


def cmd_events(args: argparse.Namespace) -> int:
    from refinery_tools.events import build_kafka_event

    try:
        data = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
    except OSError as exc:
        return _fail("events", f"--input {args.input}: cannot read it: {exc.strerror}")
    values = [line.rstrip(b"\r") for line in data.split(b"\n") if line.strip()]
    if not values:
        return _fail(
            "events", f"--input {args.input}: no envelopes in it (one JSON envelope per line expected)"
        )
    event = build_kafka_event(
        values,
        topic=args.topic,
        partitions=args.partitions,
        source=SOURCES[args.source],
        first_offset=args.first_offset,
    )
    text = json.dumps(event, indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        try:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(text)
        except OSError as exc:
            return _fail("events", f"--output {args.output}: cannot write it: {exc.strerror}")
    used = sum(1 for batch in event["records"].values() if batch)
    print(
        f"refinery events: {len(values)} record(s) in {used} partition(s) of {args.topic!r}"
        f" ({event['eventSource']}) -> {args.output}",
        file=sys.stderr,
    )
    return 0


def _add_events(sub: Any) -> None:
    p = sub.add_parser(
        "events",
        help="build a Lambda Kafka test event from an envelope file (for invoke / sam local invoke)",
        formatter_class=HelpFormatter,
        description=(
            "Wrap envelopes (one JSON envelope per line, as the nozzle writes them) in a Lambda Kafka "
            "event: base64 values, records keyed by topic-partition, round-robin over --partitions."
        ),
    )
    p.add_argument("--input", required=True, metavar="ENVELOPES.jsonl", help="envelope file ('-': stdin)")
    p.add_argument("--output", required=True, metavar="EVENT.json", help="event file to write ('-': stdout)")
    p.add_argument(
        "--source",
        choices=sorted(SOURCES),
        default=DEFAULT_SOURCE,
        help="event shape: msk (aws:kafka) or self-managed (aws:SelfManagedKafka)",
    )
    p.add_argument("--topic", default="cf-firehose", help="topic name in the event")
    p.add_argument(
        "--partitions",
        type=_number(int, "--partitions", 1, 1000),
        default=1,
        metavar="N",
        help="partitions the records are spread over",
    )
    p.add_argument(
        "--first-offset",
        type=_number(int, "--first-offset", 0),
        default=0,
        metavar="N",
        help="offset of each partition's first record",
    )
    p.set_defaults(func=cmd_events)


def add_parsers(sub: Any) -> None:
    """Add ``consume``, ``produce`` and ``events`` to the ``refinery`` command's subparsers."""
    _add_consume(sub)
    _add_produce(sub)
    _add_events(sub)
