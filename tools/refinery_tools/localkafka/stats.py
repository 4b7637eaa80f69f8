"""Counters of a ``refinery consume`` run, its progress line and its closing summary table."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO


def _n(value: int) -> str:
    return f"{value:,}"


def _reasons(counts: Counter[str]) -> str:
    return ", ".join(f"{reason} {_n(n)}" for reason, n in counts.most_common())


@dataclass
class ConsumeStats:
    """``records`` counts records acknowledged by the handler (their offsets were committed or are
    being committed), each once; records delivered again after a failure count again."""

    started: float = field(default_factory=time.monotonic)
    active_since: float | None = None  # the first batch started (joining the group does not count)
    active_until: float | None = None  # the last batch ended (idle time at the end does not count)
    records: int = 0
    written: int = 0
    points: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    partial_batches: int = 0
    failed_invocations: int = 0
    retries: int = 0
    commit_failures: int = 0
    committed: dict[str, int] = field(default_factory=dict)
    lag: int | None = None
    last_error: str = ""
    stop_reason: str = ""
    dry_run: bool = False  # nothing written or committed: ``committed`` is what would have been
    quarantine_objects: list[str] = field(default_factory=list)  # where quarantined records went
    quarantine_root: str = ""  # the quarantine's directory or s3:// prefix (what to replay)

    def acknowledged(self, records: int, summary: Any, *, whole: bool = True) -> None:
        """One invocation that succeeded, wholly or in part: ``records`` were acknowledged. A partial
        response that acknowledged nothing is not counted as a batch."""
        if whole or records:
            self.batches += 1
        self.records += records
        if isinstance(summary, dict):
            self.written += int(summary.get("written", 0))
            self.points += int(summary.get("points", 0))
            self.dropped.update(summary.get("dropped_by_reason") or {})
            self.quarantined.update(summary.get("quarantined_by_reason") or {})
            where = summary.get("quarantine_object")
            if where and where not in self.quarantine_objects:
                self.quarantine_objects.append(str(where))

    def mark_active(self) -> None:
        if self.active_since is None:
            self.active_since = time.monotonic()

    def seconds(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    def mark_done(self) -> None:
        self.active_until = time.monotonic()

    def active_seconds(self) -> float:
        if self.active_since is None:
            return 0.0
        return max((self.active_until or time.monotonic()) - self.active_since, 1e-9)

    def rate(self) -> float:
        """Records per second since the first batch."""
        return self.records / self.active_seconds() if self.active_since is not None else 0.0

    def progress_line(self) -> str:
        line = (
            f"refinery consume: {_n(self.records)} records ({_n(round(self.rate()))}/s)"
            f" written {_n(self.written)} dropped {_n(sum(self.dropped.values()))}"
            f" quarantined {_n(sum(self.quarantined.values()))}"
            f" batches {_n(self.batches)} retries {_n(self.retries)}"
        )
        if self.lag is not None:
            line += f" lag {_n(self.lag)}"
        if self.last_error and self.retries:
            line += f" (last error: {self.last_error[:120]})"
        return line

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "records_per_second": round(self.rate(), 1),
            "seconds": round(self.seconds(), 3),
            "active_seconds": round(self.active_seconds(), 3),
            "written": self.written,
            "points": self.points,
            "dropped": sum(self.dropped.values()),
            "dropped_by_reason": dict(self.dropped),
            "quarantined": sum(self.quarantined.values()),
            "quarantined_by_reason": dict(self.quarantined),
            "batches": self.batches,
            "partial_batches": self.partial_batches,
            "failed_invocations": self.failed_invocations,
            "retries": self.retries,
            "commit_failures": self.commit_failures,
            "committed": dict(sorted(self.committed.items())),
            "lag": self.lag,
            "last_error": self.last_error,
            "stop_reason": self.stop_reason,
            "dry_run": self.dry_run,
            "quarantine_objects": list(self.quarantine_objects),
        }

    def quarantine_row(self) -> tuple[str, str, str] | None:
        """Where the quarantined records went, and how to replay them (None: none quarantined)."""
        if not sum(self.quarantined.values()):
            return None
        count = len(self.quarantine_objects)
        if self.dry_run:
            return ("quarantine", "", "dry run: nothing written (the records were printed on stderr)")
        where = self.quarantine_root or (self.quarantine_objects[0] if self.quarantine_objects else "?")
        latest = f"; latest {self.quarantine_objects[-1]}" if self.quarantine_objects else ""
        return (
            "quarantine",
            _n(count),
            f"object(s) under {where}{latest}; replay them with: refinery replay {where}",
        )

    def print_summary(self, out: TextIO) -> None:
        rows = [
            (
                "records",
                _n(self.records),
                f"{_n(round(self.rate()))}/s over {self.active_seconds():.1f} s of batches"
                f" ({self.seconds():.1f} s in all)",
            ),
            ("written", _n(self.written), f"points {_n(self.points)}"),
            ("dropped", _n(sum(self.dropped.values())), _reasons(self.dropped)),
            ("quarantined", _n(sum(self.quarantined.values())), _reasons(self.quarantined)),
            *([row] if (row := self.quarantine_row()) else []),
            (
                "batches",
                _n(self.batches),
                f"{_n(self.partial_batches)} partial" if self.partial_batches else "",
            ),
            (
                "retries",
                _n(self.retries),
                f"{_n(self.failed_invocations)} failed invocations; last error: {self.last_error}"
                if self.retries
                else "",
            ),
        ]
        if self.commit_failures:
            rows.append(("commit errors", _n(self.commit_failures), "those records will be delivered again"))
        committed = ", ".join(f"{k} {_n(v)}" for k, v in sorted(self.committed.items()))
        if self.dry_run:
            rows.append(
                ("committed", "", "nothing (dry run); would have committed " + (committed or "nothing"))
            )
        else:
            rows.append(("committed", "", committed or "nothing"))
        if self.lag is not None:
            what = (
                "records in the topics after those the dry run read"
                if self.dry_run
                else "records in the topics the group has not committed yet"
            )
            rows.append(("lag", _n(self.lag), what))
        print(f"refinery consume: {self.stop_reason or 'stopped'}", file=out)
        for name, value, detail in rows:
            print(f"  {name:<13} {value:>12}  {detail}".rstrip(), file=out)
        out.flush()
