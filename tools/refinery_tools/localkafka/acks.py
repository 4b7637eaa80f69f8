"""What the handler's answer means for the offsets, as Lambda's event source mapping reads it.

* The handler raised: the whole batch failed; nothing is committed and the batch is retried.
* It returned without ``batchItemFailures`` (or with an empty list): every partition of the batch is
  committed up to its last offset + 1.
* It returned ``batchItemFailures`` (``[{"itemIdentifier": {"partition": "<topic>-<n>", "offset": o}}]``):
  a listed partition is committed up to ``o`` (exclusive) and delivered again from ``o``; the
  partitions not listed are committed whole.
* A malformed list (an unknown partition, an offset outside the batch) fails the whole batch, as
  Lambda does with an invalid partial response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class Outcome:
    """``commit``: offsets to commit (next offset to read); ``redeliver``: where to read again."""

    commit: dict[TopicPartitionKey, int] = field(default_factory=dict)
    redeliver: dict[TopicPartitionKey, int] = field(default_factory=dict)
    failed: bool = False
    reason: str = ""

    @property
    def partial(self) -> bool:
        return bool(self.redeliver) and not self.failed


def failed(reason: str) -> Outcome:
    return Outcome(failed=True, reason=reason)


def outcome_of(
    first: dict[TopicPartitionKey, int], next_offsets: dict[TopicPartitionKey, int], result: Any
) -> Outcome:
    """The outcome of a handler that returned ``result`` for a batch spanning ``first``..``next_offsets``."""
    items = result.get("batchItemFailures") if isinstance(result, dict) else None
    if not items:
        return Outcome(commit=dict(next_offsets))
    if not isinstance(items, list):
        return failed(f"invalid batchItemFailures (a {type(items).__name__}, not a list)")
    by_key = {f"{topic}-{partition}": (topic, partition) for topic, partition in first}
    redeliver: dict[TopicPartitionKey, int] = {}
    for item in items:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        key = ident.get("partition") if isinstance(ident, dict) else None
        offset = ident.get("offset") if isinstance(ident, dict) else None
        if key not in by_key:
            return failed(f"invalid batchItemFailures: item {item!r} names no partition of this batch")
        tp = by_key[key]
        if type(offset) is not int or not first[tp] <= offset < next_offsets[tp]:
            return failed(
                f"invalid batchItemFailures: offset {offset!r} of {key} is outside the batch "
                f"({first[tp]}..{next_offsets[tp] - 1})"
            )
        redeliver[tp] = min(offset, redeliver.get(tp, offset))
    commit = {tp: redeliver.get(tp, end) for tp, end in next_offsets.items()}
    commit = {tp: offset for tp, offset in commit.items() if offset > first[tp]}
    where = ", ".join(f"{t}-{p} from {o}" for (t, p), o in sorted(redeliver.items()))
    return Outcome(commit=commit, redeliver=redeliver, reason=f"partial failure: redelivering {where}")


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, …): doubling from ``initial``, at most ``maximum``."""
    if attempt < 1:
        return 0.0
    return min(maximum, initial * 2 ** min(attempt - 1, 62))
