"""Reading recording rules from YAML, validated, and keeping them fresh in a warm container.

The file (bundled with the function, ``RULES_FILE``, or in S3, ``RULES_BUCKET``/``RULES_KEY``)::

    rules:
      - name: http_5xx_per_app          # output measurement: letters, digits, _
        source: http_request            # http_request, log or instance
        filter: ['status_code =~ "5.."'] # tag matchers: =, !=, =~, !~ (regexes match whole values)
        keep: [org, space, app]         # the tags the output is grouped by
        field: count                    # the field aggregated (optional for count)
        aggregation: sum                # sum, count, min or max
        window: 60s                     # 1s .. 24h, a whole number of milliseconds
        keep_raw: true                  # false: drop the raw points the rule consumed
        output_field: sum               # optional; default: the aggregation's name
        influx_output: records          # records (default: a point per record) or aggregates

Every problem is reported at once, each naming the file, the rule and the field:
``rules.yaml: rule "http_5xx_per_app": field "window": must be a duration like 60s``.

:class:`RuleBook` holds the rules of a warm container. Like the metadata snapshot, it checks the
source at most every ``check_interval`` with a conditional GET on the ETag (file: mtime and size).
The first load must succeed (the batch fails otherwise, naming the problem); a later change that is
unreadable or invalid keeps the rules in force, and is counted and reported.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from ..config import default_of, parse_duration
from ..metadata.store import SnapshotSource
from ..watched import WatchedDocument, WatchStats
from .model import AGGREGATIONS, INFLUX_OUTPUTS, OPERATORS, Matcher, Rule, RuleSet

SCHEMA_MEASUREMENTS = ("http_request", "log", "instance")
RESERVED_OUTPUT_TAGS = frozenset({"partition"})
RULE_KEYS = (
    "name",
    "source",
    "filter",
    "keep",
    "field",
    "aggregation",
    "window",
    "keep_raw",
    "output_field",
    "influx_output",
)
MIN_WINDOW_MS = 1_000
MAX_WINDOW_MS = 86_400_000
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.DOTALL)


class RulesError(ValueError):
    """The rules file is unreadable or invalid; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid recording rules:\n  - " + "\n  - ".join(problems))


class RulesUnavailable(RuntimeError):
    """No rules could be loaded yet (the file or S3 object cannot be read)."""


def parse_rules(data: bytes | str, origin: str) -> RuleSet:
    """Parse and validate a rules document; raise :class:`RulesError` listing every problem."""
    import yaml

    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RulesError([f"{origin}: not valid YAML{where}: {problem}"]) from None
    problems: list[str] = []
    if document is None:
        raise RulesError([f"{origin}: the file is empty (write `rules: []` for no rules)"])
    if not isinstance(document, dict):
        raise RulesError([f"{origin}: must be a mapping with a `rules` list"])
    for key in document:
        if key != "rules":
            problems.append(f"{origin}: unknown top-level key {key!r} (only `rules`)")
    items = document.get("rules")
    if items is None:
        items = []
        if "rules" not in document:
            problems.append(f"{origin}: no `rules` list")
    if not isinstance(items, list):
        raise RulesError([*problems, f"{origin}: `rules` must be a list"])
    rules: list[Rule] = []
    names: set[str] = set()
    for number, item in enumerate(items, start=1):
        rule = _rule(item, number, origin, names, problems)
        if rule is not None:
            rules.append(rule)
    if problems:
        raise RulesError(problems)
    return RuleSet(tuple(rules), origin)


def _rule(item: Any, number: int, origin: str, names: set[str], problems: list[str]) -> Rule | None:
    if not isinstance(item, dict):
        problems.append(f"{origin}: rule #{number}: must be a mapping of fields")
        return None
    name = item.get("name")
    label = f'rule "{name}"' if isinstance(name, str) and name else f"rule #{number}"
    before = len(problems)

    def bad(field: str, message: str) -> None:
        problems.append(f'{origin}: {label}: field "{field}": {message}')

    for key in item:
        if key not in RULE_KEYS:
            bad(str(key), f"unknown field (known: {', '.join(RULE_KEYS)})")
    if not isinstance(name, str) or not name:
        bad("name", "required: the output measurement (letters, digits and _)")
    elif not _NAME.match(name):
        bad("name", "must be letters, digits and _, not starting with a digit")
    elif name in SCHEMA_MEASUREMENTS:
        bad("name", f"must not be a measurement the enricher writes ({', '.join(SCHEMA_MEASUREMENTS)})")
    elif name in names:
        bad("name", "another rule has the same name")
    else:
        names.add(name)

    source = item.get("source")
    if source not in SCHEMA_MEASUREMENTS:
        bad("source", f"must be one of {', '.join(SCHEMA_MEASUREMENTS)} (got {source!r})")

    aggregation = item.get("aggregation")
    if aggregation not in AGGREGATIONS:
        bad("aggregation", f"must be one of {', '.join(AGGREGATIONS)} (got {aggregation!r})")

    field_name = item.get("field")
    if field_name is None:
        if aggregation in ("sum", "min", "max"):
            bad("field", f"required for {aggregation}: the field to aggregate")
    elif not isinstance(field_name, str) or not field_name:
        bad("field", "must be a field name")

    matchers = _matchers(item.get("filter"), bad)
    keep = _keep(item.get("keep"), bad)
    window_ms = _window(item.get("window"), bad)

    keep_raw = item.get("keep_raw", True)
    if not isinstance(keep_raw, bool):
        bad("keep_raw", "must be true or false")

    output_field = item.get("output_field", "")
    if output_field != "" and (not isinstance(output_field, str) or not _NAME.match(output_field)):
        bad("output_field", "must be letters, digits and _, not starting with a digit")

    influx_output = item.get("influx_output", "records")
    if influx_output not in INFLUX_OUTPUTS:
        bad("influx_output", f"must be one of {', '.join(INFLUX_OUTPUTS)} (got {influx_output!r})")

    if len(problems) > before:
        return None
    assert isinstance(name, str) and isinstance(source, str) and isinstance(aggregation, str)  # checked above
    return Rule(
        name=name,
        source=source,
        matchers=matchers,
        keep=keep,
        field=field_name,
        aggregation=aggregation,
        window_ms=window_ms,
        keep_raw=keep_raw,
        output_field=output_field,
        influx_output=influx_output,
    )


def _matchers(value: Any, bad: Callable[[str, str], None]) -> tuple[Matcher, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        bad("filter", "must be a list of matchers like 'status_code =~ \"5..\"'")
        return ()
    matchers: list[Matcher] = []
    for text in value:
        if not isinstance(text, str):
            bad("filter", f"{text!r} is not a matcher like 'status_code =~ \"5..\"'")
            continue
        match = _MATCHER.match(text)
        if match is None:
            bad("filter", f"{text!r} is not a matcher `tag op value` (op: {', '.join(reversed(OPERATORS))})")
            continue
        tag, op, raw = match.groups()
        try:
            expected = _unquote(raw)
        except ValueError as exc:
            bad("filter", f"{text!r}: {exc}")
            continue
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = re.compile(expected)
            except re.error as exc:
                bad("filter", f"{text!r}: not a valid regular expression: {exc}")
                continue
        matchers.append(Matcher(tag, op, expected, regex))
    return tuple(matchers)


def _unquote(raw: str) -> str:
    if raw[:1] == '"':
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError("the quoted value is not closed or has a bad escape") from None
        if not isinstance(value, str):
            raise ValueError("the quoted value is not a string")
        return value
    if raw[:1] == "'":
        if len(raw) < 2 or raw[-1] != "'":
            raise ValueError("the quoted value is not closed")
        return raw[1:-1]
    return raw


def _keep(value: Any, bad: Callable[[str, str], None]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        bad("keep", "must be a list of tag names")
        return ()
    reserved = [v for v in value if v in RESERVED_OUTPUT_TAGS]
    if reserved:
        bad("keep", f"{', '.join(reserved)} is added to every aggregate; it cannot be kept")
    if len(set(value)) != len(value):
        bad("keep", "lists a tag twice")
    return tuple(value)


def _window(value: Any, bad: Callable[[str, str], None]) -> int:
    if isinstance(value, bool) or value is None:
        bad("window", "must be a duration like 60s")
        return 0
    try:
        seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
    except ValueError:
        bad("window", "must be a duration like 60s")
        return 0
    window_ms = round(seconds * 1000)
    if abs(window_ms - seconds * 1000) > 1e-6:
        bad("window", "must be a whole number of milliseconds")
    elif not MIN_WINDOW_MS <= window_ms <= MAX_WINDOW_MS:
        bad("window", "must be between 1s and 24h")
    return window_ms


#: The rule book's counters (checks, loads, failures, last_error): those of any watched document.
RuleStats = WatchStats


class RuleBook(WatchedDocument[RuleSet]):
    """The rules in force in a warm container, re-checked at most every ``check_interval``
    (:class:`refinery.watched.WatchedDocument`, shared with the tenant routing table)."""

    def __init__(
        self,
        source: SnapshotSource,
        check_interval: float = default_of("RULES_CHECK_INTERVAL"),
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(
            source,
            parse_rules,
            invalid=RulesError,
            unavailable=RulesUnavailable,
            what="recording rules",
            check_interval=check_interval,
            clock=clock,
        )

    @property
    def rules(self) -> RuleSet | None:
        return self.document
