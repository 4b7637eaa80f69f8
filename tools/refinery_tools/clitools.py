"""What every ``refinery`` subcommand shares: its exit codes, help layout and signal handling.

Exit codes, the same for every command:

* 0 — done, nothing left to do;
* 1 — an error (a bad setting, an unreachable server, a failed batch), named on stderr;
* 2 — a usage error (argparse: an unknown option, a bad option value);
* 3 — it ran, but not cleanly: ``config --check`` could not reach something, ``replay`` left records
  refused, ``bench`` missed a target;
* 128 + the signal's number — stopped by a signal: 130 for SIGINT (Ctrl-C), 143 for SIGTERM, whether
  the stop was graceful (the in-flight work finished) or not (the summary says which).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_exit_code(signum: int) -> int:
    """128 + the signal's number, as a shell reports a process a signal stopped (130 for Ctrl-C)."""
    return 128 + int(signum)


EXIT_INTERRUPTED = signal_exit_code(signal.SIGINT)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help (unless the help already names it), and wider columns."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_help_position", 34)
        kwargs.setdefault("width", 100)
        super().__init__(prog, **kwargs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
            or isinstance(action, argparse._StoreConstAction | argparse._AppendAction)
        ):
            return text
        return f"{text} (default: %(default)s)"


class StopSignals:
    """SIGINT/SIGTERM while a command runs: the first calls ``on_first`` (a graceful stop) and is
    remembered in :attr:`signum`; with ``second_raises``, another one raises KeyboardInterrupt."""

    def __init__(
        self, on_first: Callable[[], None], *, second_raises: bool = True, message: str | None = None
    ) -> None:
        self.on_first = on_first
        self.second_raises = second_raises
        self.message = message
        self.signum: int | None = None

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else signal_exit_code(self.signum)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and self.second_raises:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
        self.on_first()
        if self.message:
            os.write(2, self.message.encode() + b"\n")

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def load_event(path: str) -> Any:
    """A Lambda event from a JSON file; exits naming the file when it cannot be read or is not JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise SystemExit(f"refinery: cannot read event file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"refinery: event file {path} is not JSON: {exc}") from None
