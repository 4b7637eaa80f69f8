"""The ``refinery`` command: run the Lambda handlers locally, inspect settings, run the demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .observability import LOCAL_RUN_ENV


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _load_event(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise SystemExit(f"refinery: cannot read event file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"refinery: event file {path} is not JSON: {exc}") from None


def invoke_enricher(event: Any, *, dry_run: bool, timeout: float) -> int:
    from .config import ConfigError, load_config
    from .devtools.lambda_context import LocalContext
    from .sinks import PrintSink

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"refinery: {exc}", file=sys.stderr)
        return 1
    from . import enricher

    printing = dry_run or (config.influx is None and config.prometheus is None)
    enricher.reset_runtime(enricher.build_runtime(config, PrintSink(sys.stdout) if printing else None))
    try:
        # Logs and EMF metrics go to stderr: stdout carries only the line protocol or the result.
        with contextlib.redirect_stdout(sys.stderr):
            result = enricher.handler(
                event, LocalContext(function_name="refinery-enricher", timeout_seconds=timeout)
            )
    except Exception as exc:
        print(f"refinery: the enricher failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        enricher.reset_runtime()
    print(_json(result), file=sys.stderr if printing else sys.stdout)
    return 0


def invoke_refresh(event: Any, *, timeout: float) -> int:
    from .devtools.lambda_context import LocalContext
    from .refresher import handler

    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = handler(
                event, LocalContext(function_name="refinery-metadata-refresh", timeout_seconds=timeout)
            )
    except Exception as exc:
        print(f"refinery: the refresh failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(_json(result))
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    os.environ.setdefault(LOCAL_RUN_ENV, "1")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Refinery")
    event = _load_event(args.event)
    if args.function == "enricher":
        return invoke_enricher(event, dry_run=args.dry_run, timeout=args.timeout)
    return invoke_refresh(event, timeout=args.timeout)


def cmd_config(args: argparse.Namespace) -> int:
    from .config import SETTINGS, ConfigError, load_config

    width = max(len(s.name) for s in SETTINGS)
    for setting in SETTINGS:
        default = "(secret)" if setting.secret else (setting.default if setting.default is not None else "-")
        current = os.environ.get(setting.name)
        shown = "" if current is None else ("  [set]" if setting.secret else f"  [= {current}]")
        print(f"{setting.name:<{width}}  {setting.kind:<8} default {default!s:<22} {setting.help}{shown}")
    if not args.check:
        return 0
    try:
        config = load_config()
        if config.rules_file:  # a local rules file is checked too (one in S3 is read at start)
            from .rules.loader import RulesError, parse_rules

            with open(config.rules_file, "rb") as handle:
                try:
                    parse_rules(handle.read(), config.rules_file)
                except RulesError as exc:
                    raise ConfigError(exc.problems) from None
    except ConfigError as exc:
        print(f"\n{len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print("\nconfiguration OK", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    os.environ.setdefault(LOCAL_RUN_ENV, "1")
    from .config import ConfigError
    from .replay import ReplayError, replay

    try:
        with contextlib.redirect_stdout(sys.stderr):
            report = replay(args.url, timeout=args.timeout)
    except (ConfigError, ReplayError) as exc:
        print(f"refinery: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"refinery: replay failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(_json(report.as_dict()))
    return 1 if report.unreadable else 0


def cmd_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault(LOCAL_RUN_ENV, "1")
    from .devtools.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refinery", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    invoke = sub.add_parser("invoke", help="run a Lambda handler in-process with a Lambda-like context")
    invoke.add_argument("function", choices=["enricher", "refresh"])
    invoke.add_argument("--event", required=True, help="event JSON file (e.g. events/msk.json)")
    invoke.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing; print the line protocol on stdout (the result goes to stderr)",
    )
    invoke.add_argument("--timeout", type=float, default=60.0, help="the function's timeout in seconds")
    invoke.set_defaults(func=cmd_invoke)

    config = sub.add_parser("config", help="list every setting; with --check, validate the environment")
    config.add_argument("--check", action="store_true")
    config.set_defaults(func=cmd_config)

    replay = sub.add_parser("replay", help="re-process quarantined / on-failure records under an S3 prefix")
    replay.add_argument("url", help="s3://bucket/prefix (e.g. s3://my-bucket/quarantine/2026/11/)")
    replay.add_argument("--timeout", type=float, default=600.0, help="time allowed per replayed batch")
    replay.set_defaults(func=cmd_replay)

    sub.add_parser("bench", help="the benchmark (make bench); `refinery bench --help` for its options")

    from .localkafka.commands import add_parsers as add_local_kafka_parsers

    add_local_kafka_parsers(sub)  # consume, produce, events

    demo = sub.add_parser("demo", help="the main job on embedded defaults, no AWS needed")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the benchmark parses its own options (argparse.REMAINDER cannot pass --help)
        from .devtools.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
