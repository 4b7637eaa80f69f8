"""Between the conversion and the sink: filters, extra tags and recording rules.

The walk is ``convert -> filters / extra tags -> recording rules -> sink``. Each step rewrites
the batch's :class:`~refinery.pipeline.BatchPoints` (its lines and, for each line, the records it
came from), keeping the accounting ``records_in = written + dropped + quarantined`` exact:

* a point removed by a filter: its records are **dropped** (reason ``filtered``);
* a point consumed by a ``keep_raw: false`` rule: its records now belong to the aggregate(s) they
  went into, so they count as **written** when the aggregate is acknowledged, and are quarantined
  (``rejected_by_server``) if the server refuses it, like the records of any refused point;
* a rule's output (a record's contribution, a batch's aggregate: :mod:`refinery.rules.aggregate`) is
  a new point whose records are every record that went into it, routed to the sinks that take it
  (``BatchPoints.routes``): contributions to InfluxDB, aggregates to remote write (and to InfluxDB
  for rules with ``influx_output: aggregates``), written after everything else.

Built only when something is configured (``enricher.build_runtime``); otherwise the pipeline does
no per-point work at all and its output is byte-identical.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from .filters import PointFilter
from .lineparse import series_end
from .rules.aggregate import INFLUX, aggregate
from .rules.ledger import AggregateLedger, BatchLedger, needs_ledger
from .rules.loader import RuleBook
from .rules.model import RuleSet

if TYPE_CHECKING:
    from .batch import BatchPoints

FILTERED = "filtered"
_UNSEEN = object()


class PointStage:
    def __init__(
        self,
        point_filter: PointFilter | None = None,
        rule_book: RuleBook | None = None,
        ledger: AggregateLedger | None = None,
    ):
        self.point_filter = point_filter if point_filter is not None and point_filter.active else None
        self.rule_book = rule_book
        self.ledger = ledger  # per-batch aggregates' durable state (rules/ledger.py); None: replay
        self.extra_tags = dict(point_filter.extra_tags) if point_filter is not None else {}
        self._rules: RuleSet | None = None
        self._reload_error: str | None = None

    def begin_invocation(self) -> None:
        """Load the rules (first use: raises what is wrong with them) or re-check them if due."""
        self._reload_error = None
        if self.rule_book is not None:
            failures = self.rule_book.stats.failures
            self._rules = self.rule_book.refresh_if_due()
            if self.rule_book.stats.failures > failures:  # a changed file that is bad: old rules kept
                self._reload_error = self.rule_book.stats.last_error

    def apply(self, done: BatchPoints, families: Collection[str] = (INFLUX,)) -> None:
        """Filter, tag and aggregate ``done`` for sinks of ``families`` (:mod:`refinery.sinks.fanout`)."""
        if self.point_filter is not None:
            self._filter(done)
        if self._rules:
            self._aggregate(done, self._rules, families)
        if self._reload_error:
            done.result.rules["reload_error"] = self._reload_error
        done.result.points = len(done.lines)

    def _filter(self, done: BatchPoints) -> None:
        rewrite = self.point_filter.rewrite  # type: ignore[union-attr]
        decided: dict[str, Any] = {}
        keep: list[int] = []
        new_lines: list[str] = []
        filtered = 0
        for index, line in enumerate(done.lines):
            end = series_end(line)
            series = line[:end]
            out = decided.get(series, _UNSEEN)
            if out is _UNSEEN:
                out = decided[series] = rewrite(series)
            if out is None:
                filtered += 1 + len(done.more_origins.get(index, ()))
                continue
            keep.append(index)
            new_lines.append(line if out == series else out + line[end:])
        if filtered:
            done.result.dropped[FILTERED] += filtered
            done.result.written -= filtered
        done.keep(keep, new_lines)

    def _aggregate(self, done: BatchPoints, rules: RuleSet, families: Collection[str]) -> None:
        from .sinks.fanout import Route

        def records() -> Iterator[tuple[str, dict[str, Any]]]:  # the batch's records that made a point
            return (origin for i in range(len(done.lines)) for origin in done.origins_of(i))

        book = None
        if self.ledger is not None and needs_ledger(rules, families):
            book = BatchLedger(self.ledger, done.result.partitions, rules, records())
        covered = book.covered if book is not None else None
        found = aggregate(done.lines, done.origins_of, rules, self.extra_tags, families, covered)
        stats: dict[str, Any] = {
            "contributions": found.contributions,
            "aggregates": found.aggregates,
            "points_consumed": found.consumed,
        }
        if book is not None:  # before the consumed raw points are dropped: every record is still there
            stats["aggregates_resent"] = book.settle(found, records, families)
            stats["ledger"] = book.cost()
        if found.drop:
            keep = [i for i in range(len(done.lines)) if i not in found.drop]
            done.keep(keep, [done.lines[i] for i in keep])
            stats["raw_points_dropped"] = len(found.drop)
        if found.shared:
            stats["shared_contributions"] = found.shared
        if found.unreadable:
            stats["unreadable_points"] = found.unreadable
        routes: dict[tuple[frozenset[str], bool], Route] = {}
        for output in found.outputs:
            key = (output.families, output.aggregate)
            route = routes.get(key)
            if route is None:
                route = routes[key] = Route(output.families, output.aggregate)
            done.add(output.line, output.origins, route)
        if any(output.aggregate for output in found.outputs):
            # A partial batch response could restart a partition inside an aggregate: fail it whole.
            # (Contributions are per record: a partial response cannot split one.)
            done.whole_batch_only = True
        done.result.rules = stats
