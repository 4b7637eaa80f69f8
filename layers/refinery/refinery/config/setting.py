"""One setting: its variable, parser, default (as the variable's text), meaning and group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .parse import Parser


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Parser[Any]
    default: str | None  # the variable's text when unset (or empty); None: no default
    help: str
    group: str
    secret: bool = False

    @property
    def kind(self) -> str:
        """What ``refinery config`` and the README's settings table call the value: its parser's kind."""
        return self.parse.kind
