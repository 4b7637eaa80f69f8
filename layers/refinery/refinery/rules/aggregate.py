"""A batch's recording-rule aggregates, with an identity that retries and partitions cannot break.

Each rule aggregates, per group (the values of the tags it keeps), per window (aligned on the
epoch) and per Kafka partition, the points of its source measurement that pass its filter.

**Identity.** Lambda may run a batch several times (a failed flush, a bisected batch), and several
partitions are processed concurrently. An aggregate must therefore be *rewritten* by a retry, never
added to, and two partitions must never overwrite each other. So the output point is identified by
Kafka coordinates, not by anything random (a per-container id would make every retry a new series
and multiply the cardinality by the number of containers):

* the tag ``partition`` (the event's ``topic-partition``; bounded cardinality);
* the **first offset** among the records the aggregate is made of, written into the timestamp:
  ``window start + (first_offset mod window_ms) ms + (first_offset div window_ms mod 10^6) ns``.
  It stays inside the window, is exact to the millisecond for Prometheus, and is unique per first
  offset within a window in practice. (A tag would make every batch a new series.)

A batch retried from the same offset, larger or smaller (bisected), writes its aggregate of a
group and window under the same first offset — the lowest offset of that group's records, which
does not depend on where the batch ends — so it replaces the earlier attempt's value; records
beyond the retried batch form their own partial aggregate under their own first offset. Summing
every point of a window (``GROUP BY time(window)``) therefore gives the exact total. A flush that
fails part-way while aggregates are in the batch fails the whole batch (a partial batch response
could restart a partition in the middle of an aggregate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..lineparse import LineError, parse_fields, parse_series, render_line, series_end
from .model import NS_PER_MS, Rule, RuleSet

Origin = tuple[str, dict[str, Any]]


def aggregate_timestamp(window_start: int, window_ms: int, first_offset: int) -> int:
    """The aggregate's timestamp: its window's start plus an encoding of its first offset."""
    return window_start + (first_offset % window_ms) * NS_PER_MS + (first_offset // window_ms) % NS_PER_MS


@dataclass
class _Accumulator:
    value: int | float
    first_offset: int
    origins: dict[int, Origin]


@dataclass
class Aggregates:
    lines: list[str] = field(default_factory=list)
    origins: list[list[Origin]] = field(default_factory=list)  # every record in each aggregate
    drop: set[int] = field(default_factory=set)  # raw lines consumed by a keep_raw: false rule
    consumed: int = 0  # raw points that went into at least one aggregate
    unreadable: int = 0  # lines that could not be parsed (never expected: refinery wrote them)


def _measurement(line: str) -> str:
    """The (escaped) measurement: rule sources are plain names, so an escaped one never matches."""
    comma = line.find(",")
    space = line.find(" ")
    return line[: comma if 0 <= comma < space else space]


def _plan(series: str, ruleset: RuleSet) -> list[tuple[int, Rule, tuple[str, ...]]]:
    """The rules a series feeds, each with the series' group: decided once per series and batch."""
    measurement, tags = parse_series(series)
    return [
        (number, rule, tuple(tags.get(k, "") for k in rule.keep))
        for number, rule in enumerate(ruleset.rules)
        if rule.source == measurement and rule.matches(tags)
    ]


def aggregate(
    lines: Sequence[str],
    origins_of: Callable[[int], list[Origin]],
    ruleset: RuleSet,
    extra_tags: dict[str, str] | None = None,
) -> Aggregates:
    """Aggregate the batch's points; the output lines are in first-seen order (deterministic)."""
    out = Aggregates()
    sources = ruleset.by_source
    plans: dict[str, list[tuple[int, Rule, tuple[str, ...]]]] = {}
    accumulators: dict[tuple[int, tuple[str, ...], int, str], _Accumulator] = {}
    for index, line in enumerate(lines):
        if _measurement(line) not in sources:
            continue
        try:
            end = series_end(line)
            series = line[:end]
            plan = plans.get(series)
            if plan is None:
                plan = plans[series] = _plan(series, ruleset)
            if not plan:
                continue
            field_text, _, stamp = line[end + 1 :].rpartition(" ")
            fields = parse_fields(field_text)
            timestamp = int(stamp)
        except (LineError, ValueError):
            out.unreadable += 1
            continue
        origins = origins_of(index)
        partition = origins[0][0]
        offset = min(
            (r.get("offset") for k, r in origins if k == partition and type(r.get("offset")) is int),
            default=0,
        )
        used = False
        for number, rule, group in plan:
            if rule.field is None:
                contribution: int | float = 1
            else:
                value = fields.get(rule.field)
                if value is None:
                    continue
                if rule.aggregation == "count":
                    contribution = 1
                elif type(value) is int or type(value) is float:
                    contribution = value
                else:
                    continue
            used = True
            window = timestamp - timestamp % rule.window_ns
            key = (number, group, window, partition)
            acc = accumulators.get(key)
            if acc is None:
                acc = accumulators[key] = _Accumulator(contribution, offset, {})
            else:
                if rule.aggregation in ("sum", "count"):
                    acc.value += contribution
                elif rule.aggregation == "min":
                    acc.value = min(acc.value, contribution)
                else:
                    acc.value = max(acc.value, contribution)
                acc.first_offset = min(acc.first_offset, offset)
            for origin in origins:
                acc.origins.setdefault(id(origin[1]), origin)
            if not rule.keep_raw:
                out.drop.add(index)
        out.consumed += used
    extra = extra_tags or {}
    for (number, group, window, partition), acc in accumulators.items():
        rule = ruleset.rules[number]
        tags = {**rule.constant_tags, **extra}
        tags.update((k, v) for k, v in zip(rule.keep, group, strict=True) if v)
        tags["partition"] = partition
        stamp = aggregate_timestamp(window, rule.window_ms, acc.first_offset)
        out.lines.append(render_line(rule.name, tags, {rule.output_field: acc.value}, stamp))
        out.origins.append(list(acc.origins.values()))
    return out
