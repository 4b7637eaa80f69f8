"""The aggregation ledger's object for one Kafka partition: what it holds, and its bytes.

The offsets whose records are aggregated (``covered``: sorted disjoint spans) and the aggregates of
the latest batches (``intents``), stored before any of them is written (:mod:`refinery.rules.ledger`
says why). Encoded as gzip-compressed JSON with a version; an object that does not decode is a
:class:`LedgerError` naming where it was read.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

STATE_VERSION = 1


class LedgerError(RuntimeError):
    """The ledger could not be read or written: the batch must fail (and is retried)."""


@dataclass
class StoredAggregate:
    line: str
    families: frozenset[str]
    offsets: tuple[int, ...]


@dataclass
class Intent:
    """One batch's aggregates of one partition, stored before any of them was written."""

    first: int
    last: int
    aggregates: list[StoredAggregate]


@dataclass
class PartitionState:
    covered: list[list[int]] = field(default_factory=list)  # sorted disjoint [first, last] spans
    intents: list[Intent] = field(default_factory=list)
    rules: str = ""  # digest of the rules that wrote it last (information)

    def covers(self, offset: int) -> bool:
        return any(first <= offset <= last for first, last in self.covered)

    def cover(self, first: int, last: int) -> bool:
        """Add ``[first, last]``; False if it was covered already."""
        if any(a <= first and last <= b for a, b in self.covered):
            return False
        spans = sorted([*self.covered, [first, last]])
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.covered = merged
        return True

    def encode(self) -> bytes:
        body = {
            "version": STATE_VERSION,
            "covered": self.covered,
            "rules": self.rules,
            "intents": [
                {
                    "first": intent.first,
                    "last": intent.last,
                    "aggregates": [
                        {"line": a.line, "families": sorted(a.families), "offsets": _ranges(a.offsets)}
                        for a in intent.aggregates
                    ],
                }
                for intent in self.intents
            ],
        }
        return gzip.compress(orjson.dumps(body), compresslevel=5, mtime=0)

    @classmethod
    def decode(cls, data: bytes, where: str) -> PartitionState:
        try:
            body = orjson.loads(gzip.decompress(data))
            if body.get("version") != STATE_VERSION:
                raise ValueError(f"version {body.get('version')!r}, expected {STATE_VERSION}")
            return cls(
                covered=[[int(a), int(b)] for a, b in body["covered"]],
                rules=str(body.get("rules", "")),
                intents=[
                    Intent(
                        int(i["first"]),
                        int(i["last"]),
                        [
                            StoredAggregate(
                                str(a["line"]), frozenset(a["families"]), tuple(_expand(a["offsets"]))
                            )
                            for a in i["aggregates"]
                        ],
                    )
                    for i in body["intents"]
                ],
            )
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise LedgerError(f"{where} is not a recording-rules ledger object: {exc}") from exc


def _ranges(offsets: Sequence[int]) -> list[list[int]]:
    """Sorted offsets as ``[first, last]`` runs (a group's records are often consecutive)."""
    runs: list[list[int]] = []
    for offset in offsets:
        if runs and offset == runs[-1][1] + 1:
            runs[-1][1] = offset
        else:
            runs.append([offset, offset])
    return runs


def _expand(runs: Iterable[Sequence[int]]) -> Iterable[int]:
    for first, last in runs:
        yield from range(int(first), int(last) + 1)
