"""The aggregation ledger: per Kafka partition, which offsets the rules' per-batch aggregates cover.

A per-batch aggregate (remote write, InfluxDB with ``influx_output: aggregates``) depends on how the
batch was cut. A sink that cannot replace a sample (Prometheus), or keeps every copy of one
(VictoriaMetrics), cannot be told "this aggregate replaces that one". So the aggregates are made a
function of **durable state**, never of the cut:

* per ``topic-partition`` the ledger keeps the **covered** offsets (the spans of the batches whose
  aggregates were stored: one span when the partition is read in order) and the **intents** of the
  latest batches: each batch's aggregates (line, sinks, the offsets of their records), stored
  **before** any of them is written;
* a record whose offset is not covered is aggregated, into an aggregate of this batch (whose
  timestamp carries its first offset, :func:`~refinery.rules.aggregate.aggregate_timestamp`);
* a covered record adds to no new aggregate: the stored aggregates it belongs to are sent
  again, byte-identical — every sink takes an identical sample again as the same one (InfluxDB
  replaces it, Prometheus accepts it or refuses it as a duplicate, which the remote-write sink reads
  back and acknowledges, VictoriaMetrics with deduplication keeps one) — or, when the intent that held
  them was dropped, nothing at all (its aggregates were acknowledged: see below).

So a retry re-sends exactly what the failed attempt stored, whatever the new cut; a rewind over
committed offsets, a lost commit, a crash after the aggregates' request: nothing is aggregated twice.

**Pruning.** Lambda's event source mapping processes a partition's batches one at a time and moves
past a batch only once an invocation that held it succeeded (every one of its aggregates
acknowledged by every sink). An intent whose last offset is below the first offset of a new batch
of its partition was therefore acknowledged: it is dropped. The object holds the covered spans and the one or
two intents of the batches in flight. A mapping that starts late (``LATEST``) and one re-created
from ``TRIM_HORIZON`` later: the older offsets are not covered, and are aggregated once.

**Where.** ``rules-state/<scope>/<topic-partition>.json.gz`` in the metadata bucket (local
runs without one: a directory), one object per partition; ``scope`` names the deployment (the
function) and the rules' origin, so two functions reading one topic keep separate ledgers. A changed
rules file keeps the ledger: each offset is aggregated once, by the rules in force when it first
arrived. Cost: per partition of a batch with aggregates, one GET and (when something changed) one PUT
(README: Recording rules).

A dry run (``read_only``) reads the ledger and never writes it. **Replay** of records that were
written nowhere (``too_old``, metadata) bypasses the ledger: those records are in no aggregate, so
the replay aggregates exactly them (their own first offsets: no aggregate of the stream has them),
the same way every time.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..s3 import LazyS3Client
from .aggregate import INFLUX, Origin, Output, RuleOutputs
from .ledger_state import Intent, LedgerError, PartitionState, StoredAggregate
from .model import RuleSet

#: Partitions whose ledger objects are read or written at once.
MAX_PARALLEL = 8
T = TypeVar("T")
DEFAULT_PREFIX = "rules-state/"
LOCAL_DIRECTORY = "refinery-rules-state"


@dataclass
class LedgerStats:
    """Requests made (the container's), counted under a lock: a batch's partitions are read at once."""

    reads: int = 0
    writes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, reads: int = 0, writes: int = 0) -> None:
        with self.lock:
            self.reads += reads
            self.writes += writes


class AggregateLedger(LazyS3Client):
    """The ledger's objects, in S3 (``bucket``) or, for local runs, a directory."""

    def __init__(
        self,
        bucket: str | None,
        prefix: str = DEFAULT_PREFIX,
        scope: str = "",
        directory: str | None = None,
        client: Any = None,
    ):
        self.bucket = bucket
        self.prefix = prefix
        self.scope = _safe(scope) or "default"
        self.directory = directory or LOCAL_DIRECTORY
        self._client = client
        self.stats = LedgerStats()
        self.read_only = False  # dry runs: read what was aggregated, never record anything

    def save(self, partition: str, state: PartitionState) -> None:
        """Store a partition's state (a dry run stores nothing: the function would aggregate it all)."""
        if self.read_only:
            return
        self._save(partition, state)

    def key(self, partition: str) -> str:
        return f"{self.prefix}{self.scope}/{_safe(partition)}.json.gz"

    def location(self, partition: str) -> str:
        key = self.key(partition)
        return f"s3://{self.bucket}/{key}" if self.bucket else os.path.join(self.directory, key)

    def load(self, partition: str) -> PartitionState:
        where = self.location(partition)
        try:
            data = self._get(partition)
        except Exception as exc:
            raise LedgerError(f"cannot read the recording-rules ledger {where}: {_reason(exc)}") from exc
        finally:
            self.stats.count(reads=1)
        return PartitionState() if data is None else PartitionState.decode(data, where)

    def _save(self, partition: str, state: PartitionState) -> None:
        where = self.location(partition)
        try:
            self._put(partition, state.encode())
        except Exception as exc:
            raise LedgerError(f"cannot write the recording-rules ledger {where}: {_reason(exc)}") from exc
        finally:
            self.stats.count(writes=1)

    def _get(self, partition: str) -> bytes | None:
        if not self.bucket:
            try:
                with open(self.location(partition), "rb") as handle:
                    return handle.read()
            except FileNotFoundError:
                return None
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self.key(partition))["Body"].read())
        except Exception as exc:
            if _missing(exc):  # no batch of this partition aggregated yet
                return None
            raise

    def _put(self, partition: str, body: bytes) -> None:
        if not self.bucket:
            path = self.location(partition)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "wb") as handle:
                handle.write(body)
            os.replace(path + ".tmp", path)
            return
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key(partition),
            Body=body,
            ContentType="application/json",
            ContentEncoding="gzip",
        )


def _missing(exc: BaseException) -> bool:
    """An S3 error answer saying the object does not exist (botocore's or refinery.awsclient's shape)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchBucket")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _reason(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', '')} {error.get('Message', '')}".strip() or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def rules_digest(rules: RuleSet) -> str:
    return hashlib.sha256(repr(rules.rules).encode()).hexdigest()[:16]


class BatchLedger:
    """The ledger's view of one batch: which of its records are covered, and what to store and re-send.

    ``spans``: per topic-partition of the batch ``[first offset, last offset, records]``; ``origins``:
    the batch's records (their offsets widen the spans: a batch's records may come in any order).
    """

    def __init__(
        self,
        ledger: AggregateLedger,
        spans: Mapping[str, Sequence[Any]],
        rules: RuleSet,
        origins: Iterable[Origin] = (),
    ):
        self.ledger = ledger
        self.rules = rules_digest(rules)
        self.spans: dict[str, tuple[int, int]] = {}
        self.states: dict[str, PartitionState] = {}
        self._before = (ledger.stats.reads, ledger.stats.writes)
        for partition, span in spans.items():
            for offset in span[:2]:
                self._extend(partition, offset)
        for partition, record in origins:  # a batch's records need not come in offset order
            self._extend(partition, record.get("offset"))
        partitions = list(self.spans)
        started = time.monotonic()
        self.states = dict(zip(partitions, _each(ledger.load, partitions), strict=True))
        self.seconds = time.monotonic() - started  # wall time of this batch's ledger requests

    def _extend(self, partition: str, offset: Any) -> None:
        if type(offset) is not int:
            return  # a record without an offset cannot be tracked: it is aggregated as it comes
        span = self.spans.get(partition)
        self.spans[partition] = (
            (offset, offset) if span is None else (min(span[0], offset), max(span[1], offset))
        )

    def cost(self) -> dict[str, Any]:
        """This batch's ledger requests (GETs, PUTs) and the seconds they took (the summary's ``ledger``)."""
        stats = self.ledger.stats
        reads, writes = self._before
        return {
            "reads": stats.reads - reads,
            "writes": stats.writes - writes,
            "seconds": round(self.seconds, 4),
        }

    def covered(self, partition: str, offset: int) -> bool:
        state = self.states.get(partition)
        return state is not None and state.covers(offset)

    def settle(
        self, found: RuleOutputs, origins: Callable[[], Iterable[Origin]], families: Iterable[str]
    ) -> int:
        """Store this batch's new aggregates as intents (before anything is written) and add to
        ``found`` the stored aggregates its covered records belong to; returns how many were added."""
        wanted = frozenset(families)
        by_partition: dict[str, list[Output]] = {}
        for output in found.outputs:
            if output.aggregate:
                by_partition.setdefault(output.partition, []).append(output)
        # Records of this batch aggregated before, by (partition, offset).
        covered: dict[tuple[str, int], list[Origin]] = {}
        for origin in origins():
            offset = origin[1].get("offset")
            if type(offset) is int and self.covered(origin[0], offset):
                covered.setdefault((origin[0], offset), []).append(origin)
        resent = 0
        dirty: list[str] = []
        for partition, state in self.states.items():
            first, last = self.spans[partition]
            if covered:
                for intent in state.intents:
                    for stored in intent.aggregates:
                        families_now = stored.families & wanted
                        mine = [o for off in stored.offsets for o in covered.get((partition, off), ())]
                        if not mine or not families_now:
                            continue
                        found.outputs.append(
                            Output(
                                stored.line,
                                _unique(mine),
                                families_now,
                                aggregate=True,
                                partition=partition,
                                offsets=stored.offsets,
                                resent=True,
                            )
                        )
                        resent += 1
            new = by_partition.get(partition, [])
            kept = [intent for intent in state.intents if intent.last >= first]
            changed = len(kept) != len(state.intents)
            if new:
                fresh = [o for o in new if o.offsets]
                kept.append(
                    Intent(
                        min(o.offsets[0] for o in fresh),
                        last,
                        [StoredAggregate(o.line, o.families, o.offsets) for o in fresh],
                    )
                )
                changed = True
            changed = state.cover(first, last) or changed
            if changed:
                state.intents = kept
                state.rules = self.rules
                dirty.append(partition)
        started = time.monotonic()
        _each(lambda partition: self.ledger.save(partition, self.states[partition]), dirty)
        self.seconds += time.monotonic() - started
        return resent


def _each(call: Callable[[str], T], partitions: Sequence[str]) -> list[T]:
    """``call`` for each partition, the partitions' S3 requests at once (a batch's latency is one
    request's, not one per partition); the first failure is raised."""
    if len(partitions) <= 1:
        return [call(p) for p in partitions]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(partitions))) as pool:
        return list(pool.map(call, partitions))


def _unique(origins: list[Origin]) -> list[Origin]:
    seen: set[int] = set()
    out = []
    for origin in origins:
        if id(origin[1]) not in seen:
            seen.add(id(origin[1]))
            out.append(origin)
    return out


def needs_ledger(rules: RuleSet, families: Iterable[str]) -> bool:
    """Whether the rules write per-batch aggregates to any of these sink families."""
    families = set(families)
    if families - {INFLUX}:
        return bool(rules.rules)
    return INFLUX in families and any(rule.influx_output == "aggregates" for rule in rules.rules)


def ledger_for(
    bucket: str | None, quarantine_dir: str, rules_origin: str, function: str | None = None
) -> AggregateLedger:
    """The enricher's ledger: in ``bucket`` (the metadata bucket, else the quarantine's), or beside the
    local quarantine directory; scoped to the function (``AWS_LAMBDA_FUNCTION_NAME``) and rules' origin."""
    function = function if function is not None else os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")
    origin = hashlib.sha256(rules_origin.encode()).hexdigest()[:12]
    directory = os.path.join(os.path.dirname(os.path.abspath(quarantine_dir)), LOCAL_DIRECTORY)
    return AggregateLedger(bucket, DEFAULT_PREFIX, f"{function}-{origin}", directory)
