"""A batch's recording-rule outputs, each with an identity that no redelivery can change.

Each rule reads, per group (the values of the tags it keeps) and per window (aligned on the epoch),
the points of its source measurement that pass its filter. What it writes depends on what the sink
can do with a point written twice (README: Recording rules):

**InfluxDB replaces a point** (same measurement, tags and time). A rule writes there, by default
(``influx_output: records``), one **contribution** per record: a point of the rule's series (the kept
tags, the rule's ``=`` tags, the extra tags; no ``partition``) whose value is the record's own
contribution (1 for ``count``, the field's value otherwise) and whose time is

    window start + fingerprint(record value) mod window length (ns)

a pure function of the record: every redelivery, however it is cut, and every replay rewrites the same
points, and a re-sent record (the same bytes) is one point. A window's total is the sum (minimum,
maximum) of its points: ``GROUP BY time(window)``. Two distinct records of one group and window share
a point with probability 1 / window length in ns per pair (1 in 6·10^10 for 60 s).

**Prometheus cannot replace a sample**, and a record-level sample would not fit its millisecond
resolution. Remote write (and InfluxDB with ``influx_output: aggregates``) gets one **aggregate** per
rule, group, window and Kafka partition of the batch, over the batch's records (each Kafka record
counts, re-sends included), identified by

* the label ``partition`` (``topic-partition``): partitions never write the same sample;
* the **first offset** among its records, in the timestamp, never on the window's start (so a range
  query ending on a window boundary sees each sample in one window only); with ``s = window_ms - 1``::

      window start + (1 + first_offset mod s) ms + (first_offset div s mod 10^6) ns

The pipeline writes aggregates last, in one request per sink, once every other point of the batch was
acknowledged by every sink. Which records an aggregate holds is decided by the **aggregation ledger**
(:mod:`refinery.rules.ledger`, ``covered``): a record whose offset an earlier batch aggregated adds to
no new aggregate (the stored ones are sent again, identical), so a retry cut anyhow, a lost commit or
an offset rewind never counts a record twice (README: Recording rules).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..identity import fingerprint
from ..lineparse import LineError, parse_fields, parse_series, render_line, series_end
from .model import NS_PER_MS, Rule, RuleSet

Origin = tuple[str, dict[str, Any]]

#: Sink families: how a sink treats a point written again (see the module doc).
INFLUX = "influx"  # replaces it: record-level contributions are exact
REMOTE_WRITE = "remote_write"  # cannot replace a sample: per-batch aggregates, written last


def aggregate_timestamp(window_start: int, window_ms: int, first_offset: int) -> int:
    """An aggregate's timestamp: inside its window, never on its start, carrying its first offset."""
    slots = window_ms - 1
    return window_start + (1 + first_offset % slots) * NS_PER_MS + (first_offset // slots) % NS_PER_MS


def contribution_timestamp(window_start: int, window_ns: int, value: str | bytes) -> int:
    """A record's contribution's timestamp: inside its window, from the record's bytes alone."""
    data = value.encode() if isinstance(value, str) else value
    return window_start + fingerprint(data) % window_ns


@dataclass
class Output:
    """A point a rule writes: its line, the records it is made of, the sinks it goes to."""

    line: str
    origins: list[Origin]
    families: frozenset[str]
    aggregate: bool  # per batch: written after every other point of the batch was acknowledged
    partition: str = ""  # an aggregate's topic-partition
    offsets: tuple[int, ...] = ()  # an aggregate's records' offsets (what the ledger stores)
    resent: bool = False  # an aggregate the ledger stored earlier, sent again identical


@dataclass
class _Accumulator:
    value: int | float
    first_offset: int
    origins: dict[int, Origin]
    offsets: set[int]


@dataclass
class RuleOutputs:
    outputs: list[Output] = field(default_factory=list)
    drop: set[int] = field(default_factory=set)  # raw lines consumed by a keep_raw: false rule
    consumed: int = 0  # raw points that went into at least one output
    contributions: int = 0
    aggregates: int = 0
    shared: int = 0  # contributions of distinct records at one point (one of them is kept)
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


def _combine(aggregation: str, a: int | float, b: int | float) -> int | float:
    if aggregation in ("sum", "count"):
        return a + b
    return min(a, b) if aggregation == "min" else max(a, b)


def aggregate(
    lines: Sequence[str],
    origins_of: Callable[[int], list[Origin]],
    ruleset: RuleSet,
    extra_tags: dict[str, str] | None = None,
    families: Collection[str] = (INFLUX,),
    covered: Callable[[str, int], bool] | None = None,
) -> RuleOutputs:
    """The rules' outputs for the sinks of ``families``, in a deterministic order.

    ``covered(partition, offset)``: the record was aggregated before (the ledger,
    :mod:`refinery.rules.ledger`): it adds to no new aggregate (its stored ones are sent again).
    Record-level contributions are unaffected (identical by construction)."""
    out = RuleOutputs()
    sources = ruleset.by_source
    extra = extra_tags or {}
    influx = INFLUX in families
    remote = REMOTE_WRITE in families
    plans: dict[str, list[tuple[int, Rule, tuple[str, ...]]]] = {}
    accumulators: dict[tuple[int, tuple[str, ...], int, str], _Accumulator] = {}
    contributions: dict[tuple[int, tuple[str, ...], int], tuple[str, Output]] = {}  # by identity
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
        used = False
        for number, rule, group in plan:
            if rule.field is None or rule.aggregation == "count":
                if rule.field is not None and rule.field not in fields:
                    continue
                contribution: int | float = 1
            else:
                value = fields.get(rule.field)
                if type(value) is not int and type(value) is not float:
                    continue
                contribution = value
            used = True
            window = timestamp - timestamp % rule.window_ns
            records_mode = rule.influx_output == "records"
            if influx and records_mode:
                _contribute(out, contributions, rule, number, group, window, contribution, origins, extra)
            if remote or (influx and not records_mode):
                for origin in origins:  # every Kafka record counts, in its own partition's aggregate
                    offset = origin[1].get("offset")
                    offset = offset if type(offset) is int else 0
                    if covered is not None and covered(origin[0], offset):
                        continue
                    key = (number, group, window, origin[0])
                    acc = accumulators.get(key)
                    if acc is None:
                        accumulators[key] = _Accumulator(
                            contribution, offset, {id(origin[1]): origin}, {offset}
                        )
                    elif id(origin[1]) not in acc.origins:
                        acc.value = _combine(rule.aggregation, acc.value, contribution)
                        acc.first_offset = min(acc.first_offset, offset)
                        acc.origins[id(origin[1])] = origin
                        acc.offsets.add(offset)
            if not rule.keep_raw:
                out.drop.add(index)
        out.consumed += used
    for (number, group, window, partition), acc in accumulators.items():
        rule = ruleset.rules[number]
        tags = _tags(rule, group, extra)
        tags["partition"] = partition
        at = aggregate_timestamp(window, rule.window_ms, acc.first_offset)
        targets = {REMOTE_WRITE} if remote else set()
        if influx and rule.influx_output == "aggregates":
            targets.add(INFLUX)
        line = render_line(rule.name, tags, {rule.output_field: acc.value}, at)
        out.outputs.append(
            Output(
                line,
                list(acc.origins.values()),
                frozenset(targets),
                aggregate=True,
                partition=partition,
                offsets=tuple(sorted(acc.offsets)),
            )
        )
        out.aggregates += 1
    return out


def _tags(rule: Rule, group: tuple[str, ...], extra: dict[str, str]) -> dict[str, str]:
    tags = {**rule.constant_tags, **extra}
    tags.update((k, v) for k, v in zip(rule.keep, group, strict=True) if v)
    return tags


def _contribute(
    out: RuleOutputs,
    seen: dict[tuple[int, tuple[str, ...], int], tuple[str, Output]],
    rule: Rule,
    number: int,
    group: tuple[str, ...],
    window: int,
    contribution: int | float,
    origins: list[Origin],
    extra: dict[str, str],
) -> None:
    """One point per distinct record value among ``origins`` (re-sends of one record are one point)."""
    by_value: dict[str, list[Origin]] = {}
    for origin in origins:
        value = origin[1].get("value")
        by_value.setdefault(value if isinstance(value, str) else repr(value), []).append(origin)
    for value, records in by_value.items():
        stamp = contribution_timestamp(window, rule.window_ns, value)
        identity = (number, group, stamp)
        other = seen.get(identity)
        if other is not None:  # another record at the same point: InfluxDB keeps one of the two
            out.shared += other[0] != value
            other[1].origins.extend(records)
            continue
        line = render_line(rule.name, _tags(rule, group, extra), {rule.output_field: contribution}, stamp)
        output = Output(line, records, frozenset({INFLUX}), aggregate=False)
        seen[identity] = (value, output)
        out.outputs.append(output)
        out.contributions += 1
