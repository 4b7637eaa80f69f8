"""What a recording rule is, once validated.

A rule reads the points of one **source** measurement that pass its **filter** (tag matchers with
``=``, ``!=``, ``=~``, ``!~``, all of which must hold), groups them by the tags it **keeps**, and per
group and **window** aggregates one **field** (``sum``, ``count``, ``min``, ``max``) into a point of
the measurement named after the rule. ``keep_raw: false`` drops the raw points it consumed.

What a rule writes depends on the sink (:mod:`refinery.rules.aggregate`): InfluxDB gets one point per
record (``influx_output: records``, the default) or one per batch (``aggregates``); Prometheus remote
write always gets one sample per batch, group, window and partition, over the batch's records that no
earlier batch aggregated (:mod:`refinery.rules.ledger`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field  # Rule has a field named `field`

AGGREGATIONS = ("sum", "count", "min", "max")
#: What a rule writes to InfluxDB: a point per record (exact under any redelivery) or per batch.
INFLUX_OUTPUTS = ("records", "aggregates")
OPERATORS = ("=~", "!~", "!=", "=")  # longest first, for parsing
NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class Matcher:
    """``tag op value``; a point without the tag is matched as the empty string (as in PromQL)."""

    tag: str
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, tags: dict[str, str]) -> bool:
        value = tags.get(self.tag, "")
        op = self.op
        if op == "=":
            return value == self.value
        if op == "!=":
            return value != self.value
        assert self.regex is not None
        found = self.regex.fullmatch(value) is not None
        return found if op == "=~" else not found

    def __str__(self) -> str:
        return f"{self.tag}{self.op}{self.value!r}"


@dataclass(frozen=True)
class Rule:
    name: str
    source: str
    matchers: tuple[Matcher, ...]
    keep: tuple[str, ...]
    field: str | None
    aggregation: str
    window_ms: int
    keep_raw: bool = True
    output_field: str = ""
    influx_output: str = "records"
    constant_tags: dict[str, str] = dataclass_field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.output_field:
            object.__setattr__(self, "output_field", self.aggregation)
        constants = {m.tag: m.value for m in self.matchers if m.op == "=" and m.value}
        object.__setattr__(self, "constant_tags", constants)

    @property
    def window_ns(self) -> int:
        return self.window_ms * NS_PER_MS

    def matches(self, tags: dict[str, str]) -> bool:
        return all(m.matches(tags) for m in self.matchers)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    origin: str = ""
    by_source: dict[str, tuple[Rule, ...]] = dataclass_field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        by_source: dict[str, list[Rule]] = {}
        for rule in self.rules:
            by_source.setdefault(rule.source, []).append(rule)
        object.__setattr__(self, "by_source", {k: tuple(v) for k, v in by_source.items()})

    def __bool__(self) -> bool:
        return bool(self.rules)
