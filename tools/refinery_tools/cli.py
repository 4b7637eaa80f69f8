"""The refinery command: run the Lambda handlers locally, inspect and check settings, replay, tap, demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from refinery import __version__
from refinery.observability import LOCAL_RUN_ENV
from refinery_tools.clitools import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, HelpFormatter, load_event

DESCRIPTION = (
    "Run the enricher and the metadata refresh locally with a Lambda-like context, list and check the "
    "settings, replay quarantined records, watch records through the pipeline (tap), and play the "
    "Kafka event source mapping against a local broker. Settings come from the environment "
    "(refinery config lists them)."
)
EPILOG = (
    "exit codes: 0 done; 1 an error (named on stderr); 2 a usage error; 3 ran but not cleanly "
    "(config --check could not reach something, replay left records refused, bench missed a target); "
    "128 + a signal's number when stopped by it (130 Ctrl-C, 143 SIGTERM)."
)


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _say_hint(error: BaseException, config: Any) -> None:
    from refinery_tools.config_check import influx_hint

    hint = influx_hint(str(error), getattr(config, "influx", None))
    if hint:
        print(f"refinery: hint: {hint}", file=sys.stderr)


# -------------------------------------------------------------------------------------------- invoke


def invoke_enricher(event: Any, *, dry_run: bool, timeout: float) -> int:
    from refinery.config import ConfigError, load_enricher_config
    from refinery.sinks import PrintSink
    from refinery_tools.lambda_context import LocalContext
    from refinery_tools.localkafka.commands import quarantine_root

    try:
        config = load_enricher_config()
    except ConfigError as exc:
        print(f"refinery: {exc}", file=sys.stderr)
        return EXIT_ERROR
    from refinery.handlers import enricher

    printing = dry_run or (config.influx is None and config.prometheus is None)
    runtime = enricher.build_runtime(config, PrintSink(sys.stdout) if printing else None)
    if dry_run:  # nothing written anywhere: the quarantine prints what it would write, on stderr
        from refinery_tools.dryrun import PrintQuarantine

        runtime.quarantine = PrintQuarantine(runtime.quarantine, sys.stderr)
        if runtime.stage is not None and runtime.stage.ledger is not None:
            runtime.stage.ledger.read_only = True  # the recording rules' ledger: read, never written
    enricher.reset_runtime(runtime)
    try:
        # Logs and EMF metrics go to stderr: stdout carries only the line protocol or the result.
        with contextlib.redirect_stdout(sys.stderr):
            result = enricher.handler(
                event, LocalContext(function_name="refinery-enricher", timeout_seconds=timeout)
            )
    except Exception as exc:
        print(f"refinery: the enricher failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        _say_hint(exc, config)
        return EXIT_ERROR
    finally:
        enricher.reset_runtime()
    print(_json(result), file=sys.stderr if printing else sys.stdout)
    summary = (result.get("summary") or {}) if isinstance(result, dict) else {}
    if summary.get("quarantined") and not dry_run:
        where = summary.get("quarantine_object")
        print(
            f"refinery: {summary['quarantined']} record(s) quarantined to {where}; replay them with:"
            f" refinery replay {quarantine_root(runtime.quarantine)}",
            file=sys.stderr,
        )
    return EXIT_OK


def invoke_refresh(event: Any, *, timeout: float) -> int:
    from refinery.handlers.metadata_refresh import handler
    from refinery_tools.lambda_context import LocalContext

    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = handler(
                event, LocalContext(function_name="refinery-metadata-refresh", timeout_seconds=timeout)
            )
    except Exception as exc:
        print(f"refinery: the refresh failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(_json(result))
    return EXIT_OK


def cmd_invoke(args: argparse.Namespace) -> int:
    os.environ.setdefault(LOCAL_RUN_ENV, "1")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Refinery")
    event = load_event(args.event)
    if args.function == "enricher":
        return invoke_enricher(event, dry_run=args.dry_run, timeout=args.timeout)
    if args.dry_run:
        print("refinery: --dry-run is for the enricher (the refresh writes the snapshot)", file=sys.stderr)
        return EXIT_ERROR
    return invoke_refresh(event, timeout=args.timeout)


# -------------------------------------------------------------------------------------------- config


def print_settings(out: Any, environ: Any = None, width: int = 100) -> None:
    """Every setting, grouped: name, kind, default, the value set (secrets masked), and its meaning."""
    from refinery.config import SETTINGS, display_value
    from refinery_tools.config_check import group_title

    env = os.environ if environ is None else environ
    groups: dict[str, list[Any]] = {}
    for setting in SETTINGS:
        groups.setdefault(setting.group, []).append(setting)
    for group, settings in groups.items():
        print(group_title(group), file=out)
        for setting in settings:
            default = "empty" if setting.default == "" else (setting.default or "none")
            what = setting.kind
            if setting.secret:  # given directly, or by reference (never shown)
                what += f", secret: or {setting.name}_SECRET / _PARAMETER"
            state = ""
            current = env.get(setting.name)
            if current is not None:
                state = "   [set]" if setting.secret else f"   [= {display_value(setting.name, current)}]"
            for kind in ("SECRET", "PARAMETER") if setting.secret else ():
                reference = env.get(f"{setting.name}_{kind}")
                if reference:
                    state += f"   [{setting.name}_{kind} = {reference}]"
            print(f"  {setting.name}  ({what}; default {default}){state}", file=out)
            meaning = setting.help.replace("`", "")
            for line in textwrap.wrap(meaning, width=width - 6, break_on_hyphens=False):
                print(f"      {line}", file=out)
        print(file=out)


def cmd_config(args: argparse.Namespace) -> int:
    if not args.check:
        print_settings(sys.stdout)
        return EXIT_OK
    os.environ.setdefault(LOCAL_RUN_ENV, "1")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")  # the report says what the clients did
    from refinery_tools.config_check import run_check

    return run_check(offline=args.offline, out=sys.stdout)


# -------------------------------------------------------------------------------------------- replay


def cmd_replay(args: argparse.Namespace) -> int:
    os.environ.setdefault(LOCAL_RUN_ENV, "1")
    if not args.verbose:  # one INFO line per replayed batch would bury the summary
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    from refinery.config import ConfigError
    from refinery_tools.replay import ReplayError, replay

    after = "delete" if args.delete else "move" if args.move_to else "keep"
    out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the handler's logs and metrics stay off stdout
            report = replay(
                args.source,
                timeout=args.timeout,
                dry_run=args.dry_run,
                after=after,
                move_to=args.move_to,
                out=out,
                err=sys.stderr,
            )
    except (ConfigError, ReplayError) as exc:
        print(f"refinery: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        print(f"refinery: replay failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            from refinery.config import load_enricher_config

            _say_hint(exc, load_enricher_config())
        return EXIT_ERROR
    report.print_summary(sys.stderr)
    if not args.dry_run:  # stdout is the line protocol in a dry run
        print(_json(report.as_dict()))
    return report.exit_code


# ---------------------------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault(LOCAL_RUN_ENV, "1")
    from refinery_tools.dev.demo import run_demo

    return run_demo(verbose=args.verbose)


# -------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refinery", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"refinery {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    invoke = sub.add_parser(
        "invoke",
        help="run a Lambda handler in-process with a Lambda-like context",
        formatter_class=HelpFormatter,
        description=(
            "Run the enricher or the metadata refresh in-process on an event file, with the settings "
            "of the environment. The enricher's result goes to stdout as JSON (to stderr when the "
            "points are printed instead of written); logs and metrics go to stderr."
        ),
    )
    invoke.add_argument(
        "function",
        choices=["enricher", "refresh"],
        help="enricher (a Kafka event) or refresh (a scheduled event)",
    )
    invoke.add_argument(
        "--event", required=True, metavar="FILE", help="event JSON file (e.g. events/msk.json)"
    )
    invoke.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "change nothing: write no point and no quarantine object; print the points (line protocol) "
            "on stdout and the records that would be quarantined on stderr, with the result"
        ),
    )
    invoke.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="the function's timeout"
    )
    invoke.set_defaults(func=cmd_invoke)

    config = sub.add_parser(
        "config",
        help="list every setting; with --check, validate them and test what they point at",
        formatter_class=HelpFormatter,
        description=(
            "Without options: every setting, grouped, with its kind, default, meaning and the value set "
            "in the environment (secrets masked). With --check: every setting validated (all problems "
            "at once, and a warning with a suggestion for each unknown variable that looks like ours), "
            "then a connectivity check: secrets resolvable, InfluxDB reachable with the credentials "
            "accepted and the database or bucket there, remote write reachable, the snapshot readable, "
            "the quarantine bucket there, the Cloud Controller and UAA issuing and accepting a token. "
            "Nothing is written. Exit 0: all good; 1: a setting is wrong; 3: the settings are valid but "
            "something cannot be reached or used."
        ),
    )
    config.add_argument(
        "--check",
        action="store_true",
        help="validate the settings, then test the connections (exit 1: bad settings, 3: unreachable)",
    )
    config.add_argument(
        "--offline",
        action="store_true",
        help="with --check: validate the settings only; no request to any server or AWS",
    )
    config.set_defaults(func=cmd_config)

    replay = sub.add_parser(
        "replay",
        help="re-process quarantined or on-failure records (a local quarantine directory or S3)",
        formatter_class=HelpFormatter,
        description=(
            "Run quarantined records (and on-failure destination objects) through the enricher's "
            "pipeline again, with the settings of the environment: the points are the ones a first "
            "successful run would have written, so replaying twice writes nothing twice. Records still "
            "refused are quarantined again under <QUARANTINE_PREFIX>replay/. Prints a summary on stderr "
            "and the report as JSON on stdout. Exit 0: every record written or dropped by policy; "
            "3: some are still refused; 1: an object could not be read, or an error."
        ),
    )
    replay.add_argument(
        "source",
        metavar="SOURCE",
        help=(
            "s3://bucket/prefix (e.g. s3://my-bucket/quarantine/2026/11/), or a local quarantine "
            "directory, folder or file (e.g. refinery-quarantine/, what local runs write)"
        ),
    )
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "change nothing: print the points on stdout and the records that would be re-quarantined on "
            "stderr; nothing written, quarantined, moved or deleted"
        ),
    )
    after = replay.add_mutually_exclusive_group()
    after.add_argument(
        "--delete",
        action="store_true",
        help="once every batch went through, delete the objects replayed (default: keep them)",
    )
    after.add_argument(
        "--move-to",
        metavar="DEST",
        help=(
            "once every batch went through, move the objects replayed to DEST (a directory, or an "
            "s3:// prefix for S3 objects; outside SOURCE), keeping their paths (default: keep them)"
        ),
    )
    replay.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="time allowed per replayed batch"
    )
    replay.add_argument("--verbose", action="store_true", help="also the pipeline's INFO logs, on stderr")
    replay.set_defaults(func=cmd_replay)

    from refinery_tools.tap import add_parser as add_tap_parser

    add_tap_parser(sub)

    sub.add_parser(
        "bench",
        help="the benchmark (make bench); refinery bench --help for its options",
        formatter_class=HelpFormatter,
    )

    from refinery_tools.localkafka.commands import add_parsers as add_local_kafka_parsers

    add_local_kafka_parsers(sub)  # consume, produce, events

    demo = sub.add_parser(
        "demo",
        help="the main job on embedded defaults, no AWS needed",
        formatter_class=HelpFormatter,
        description=(
            "Start S3 (moto) and a fake Cloud Controller on loopback, run the real metadata refresh, "
            "then the real enricher over the bundled envelopes (and three more: an app created after "
            "the snapshot, an app that does not exist, a broken record), and show each record beside "
            "the point it became, or why it was dropped or quarantined. Stops everything it started."
        ),
    )
    demo.add_argument(
        "--verbose",
        action="store_true",
        help="also show the functions' JSON logs and metrics (EMF) on stderr",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:  # the benchmark parses its own options (REMAINDER cannot pass --help)
            from refinery_tools.dev.bench import main as bench_main

            return bench_main(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except KeyboardInterrupt:  # commands that handle signals themselves return their own code
        print("refinery: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `refinery config | head`: the reader left; nothing more to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
