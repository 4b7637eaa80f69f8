"""The refinery command's help: every option explained with its default, plain text, consistent defaults."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from refinery import __version__
from refinery_tools import cli
from refinery_tools.clitools import HelpFormatter, signal_exit_code
from refinery_tools.dev import bench

ROOT = Path(__file__).resolve().parents[2]


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            yield action


def all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = cli.build_parser()
    return [("refinery", parser), *((f"refinery {n}", p) for n, p in subcommands(parser))]


@pytest.mark.parametrize(("name", "parser"), all_parsers(), ids=[n for n, _ in all_parsers()])
def test_every_option_has_help_and_shows_its_default(name: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert parser.formatter_class is HelpFormatter, name
    for action in options(parser):
        label = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f"{name} {label}: no help"
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if shown:
            help_text = parser._get_formatter()._expand_help(action)
            assert f"(default: {action.default})" in help_text or "default" in action.help, (name, label)
    for markup in ("``", "`", ":mod:", ":func:", ":class:", ":meth:"):
        assert markup not in text, f"{name}: {markup!r} in its help"
    assert not re.search(r"^\s*\.\. \w+::", text, re.MULTILINE), f"{name}: a reST directive in its help"


def test_the_benchmark_options_have_help_too() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "refinery_tools.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    for option in ("--quick", "--skip-servers", "--write-doc", "--output", "--profile"):
        assert re.search(rf"{option}( PATH)?\s+\S", done.stdout), option
    assert "`" not in done.stdout
    assert bench.main  # the parser is built inside main: checked through the real command above


def test_consume_events_and_tap_build_the_same_event_shape_by_default() -> None:
    defaults = {}
    for name, parser in subcommands(cli.build_parser()):
        for action in options(parser):
            if "--source" in action.option_strings:
                defaults[name] = action.default
    assert defaults == {"consume": "msk", "events": "msk", "tap": "msk"}


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "refinery_tools.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == f"refinery {__version__}\n"


def test_signal_exit_codes_follow_the_shell() -> None:
    assert signal_exit_code(signal.SIGINT) == 130
    assert signal_exit_code(signal.SIGTERM) == 143
