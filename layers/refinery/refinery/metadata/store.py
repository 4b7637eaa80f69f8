"""The enricher's view of app metadata, kept in a warm container.

One :class:`MetadataStore` lives at module level in the enricher, so it survives between
invocations of a warm container. Once every ``SNAPSHOT_CHECK_INTERVAL`` (a cachetools TTL cache
entry) it asks S3 whether the snapshot changed, with a conditional GET on the ETag, so an unchanged
snapshot costs one cheap request. A failed check keeps the snapshot it has (stale beats nothing) and
is counted. Escaped tag strings are built once per app, on first use. Apps missing from the snapshot
are looked up live in the Cloud Controller (bounded), and apps that do not exist are remembered.

A check never holds an invocation past its deadline: its S3 calls are bounded (:mod:`refinery.s3`), and
the whole check takes at most :data:`CHECK_LIMIT`, or less when the invocation has little time left
(:meth:`MetadataStore.check_limit`; ``deadline`` is set by the handler for each invocation). A
check that fails (S3 down or hung, a snapshot that is corrupt, too large or a gzip bomb) keeps the
snapshot the container has, and says so at WARNING and in the summary line (``snapshot_failures``,
``snapshot_error``, ``snapshot_age_s``); a cold container without one quarantines records as
``metadata_unavailable`` (replayable).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from cachetools import TTLCache

from ..awsclient import error_code, is_aws_failure
from ..config import default_of
from ..s3 import LazyS3Client, ObjectTooLarge, S3Timeout, time_limit
from ..tracing import traced
from .snapshot import CHECKED_AT_TAG, AppInfo, Snapshot, SnapshotError, decode_snapshot
from .tags import AppTags

log = logging.getLogger(__name__)

#: Longest a snapshot check may take (it is also held to a third of the invocation's time left).
CHECK_LIMIT = 10.0


class SnapshotUnavailable(RuntimeError):
    """The snapshot could not be read (missing, unreachable, corrupt)."""


class SnapshotSource:
    """Where snapshot bytes come from. ``fetch(etag)`` -> (bytes or None if unchanged, etag)."""

    description = "snapshot"

    def fetch(self, etag: str | None) -> tuple[bytes | None, str | None]:
        raise NotImplementedError

    def checked_at(self) -> str | None:
        """When a refresh last listed the current content (RFC 3339), if the source records it."""
        return None


class S3SnapshotSource(LazyS3Client, SnapshotSource):
    def __init__(self, bucket: str, key: str, client: Any = None):
        self.bucket = bucket
        self.key = key
        self.description = f"s3://{bucket}/{key}"
        self._client = client

    @traced("## snapshot fetch")
    def fetch(self, etag: str | None) -> tuple[bytes | None, str | None]:
        kwargs = {"Bucket": self.bucket, "Key": self.key}
        if etag:
            kwargs["IfNoneMatch"] = etag
        try:
            response = self.client.get_object(**kwargs)
            return response["Body"].read(), response.get("ETag")
        except (S3Timeout, ObjectTooLarge) as exc:
            raise SnapshotUnavailable(f"cannot read {self.description}: {exc}") from exc
        except Exception as exc:  # the client's failures: refinery.awsclient's or botocore's
            if not is_aws_failure(exc):
                raise
            code = error_code(exc)
            if code is None:  # no answer
                raise SnapshotUnavailable(f"cannot read {self.description}: {exc}") from exc
            if code in ("304", "NotModified"):
                return None, etag
            raise SnapshotUnavailable(f"cannot read {self.description}: {code}") from exc

    def checked_at(self) -> str | None:
        """The object's :data:`~.snapshot.CHECKED_AT_TAG` tag (None when absent or unreadable)."""
        try:
            tags = self.client.get_object_tagging(Bucket=self.bucket, Key=self.key).get("TagSet", [])
        except S3Timeout:
            return None
        except Exception as exc:
            if is_aws_failure(exc):
                return None
            raise
        return next((t.get("Value") for t in tags if t.get("Key") == CHECKED_AT_TAG), None)


class FileSnapshotSource(SnapshotSource):
    """A local snapshot file (local runs, tests); the ETag is its mtime and size."""

    def __init__(self, path: str):
        self.path = path
        self.description = path

    def fetch(self, etag: str | None) -> tuple[bytes | None, str | None]:
        try:
            stat = os.stat(self.path)
            tag = f"{stat.st_mtime_ns}-{stat.st_size}"
            if tag == etag:
                return None, etag
            with open(self.path, "rb") as handle:
                return handle.read(), tag
        except OSError as exc:
            raise SnapshotUnavailable(f"cannot read {self.path}: {exc.strerror}") from exc


@dataclass
class StoreStats:
    checks: int = 0
    loads: int = 0
    unchanged: int = 0
    failures: int = 0
    last_error: str = ""
    cache_hits: int = 0
    snapshot_hits: int = 0
    live_hits: int = 0
    negative_hits: int = 0
    unknown: int = 0
    live_lookups: int = 0
    live_failures: int = 0
    deferred: int = 0

    def tiers(self) -> dict[str, int]:
        return {
            "cache": self.cache_hits,
            "snapshot": self.snapshot_hits,
            "live": self.live_hits,
            "negative": self.negative_hits,
            "unknown": self.unknown,
            "live_lookups": self.live_lookups,
            "live_failures": self.live_failures,
            "deferred": self.deferred,
        }


class CheckDeadline(Protocol):
    def remaining_ms(self) -> int: ...

    def remaining(self) -> float: ...


class AppLookup(Protocol):
    def get_app(self, guid: str, deadline: float | None = None) -> AppInfo | None: ...


#: Why an app could not be enriched, when that is not final (the record is quarantined, replayable).
METADATA_UNAVAILABLE = "metadata_unavailable"
LOOKUP_FAILED = "metadata_lookup_failed"
LOOKUP_DEFERRED = "metadata_lookup_deferred"
METADATA_INVALID = "metadata_entry_invalid"
#: Seconds without live lookups after one failed (the Cloud Controller is down or refusing us).
LIVE_PAUSE_AFTER_FAILURE = 60.0


@dataclass
class MetadataStore:
    """App metadata in four tiers: warm cache, S3 snapshot, live Cloud Controller lookup, negative cache.

    1. ``cache``: escaped tags per app (cachetools TTL cache, bounded); an entry unused for
       ``expire`` seconds is evicted; cleared when a new snapshot is loaded (renames show up);
    2. the snapshot, re-checked at most every ``check_interval`` with a conditional GET;
    3. for an app in neither, a live lookup (``live``), at most ``live_max`` per invocation and
       within ``live_budget`` seconds, so a flood of unknown apps cannot stall a batch;
    4. apps the Cloud Controller says do not exist are remembered for ``negative_expire``.

    Within one invocation each app is resolved once (a plain dict memo keeps the hot path cheap).
    """

    source: SnapshotSource
    check_interval: float = default_of("SNAPSHOT_CHECK_INTERVAL")
    clock: Callable[[], float] = time.monotonic
    expire: float = default_of("METADATA_EXPIRE")
    cache_size: int = default_of("METADATA_CACHE_SIZE")
    negative_expire: float = default_of("NEGATIVE_CACHE_EXPIRE")
    live: AppLookup | None = None
    live_max: int = default_of("LIVE_LOOKUP_MAX")
    live_budget: float = default_of("LIVE_LOOKUP_BUDGET")
    snapshot: Snapshot | None = None
    etag: str | None = None
    loaded_at: float | None = None
    #: When a refresh last listed the loaded snapshot's content (the source's check record), if known.
    checked_at: str | None = None
    stats: StoreStats = field(default_factory=StoreStats)
    #: The current invocation's deadline (set by the handler): a check ends well before it.
    deadline: CheckDeadline | None = None

    def __post_init__(self) -> None:
        self._checked: TTLCache[str, bool] = TTLCache(maxsize=1, ttl=self.check_interval, timer=self.clock)
        self._cache: TTLCache[str, AppTags] = TTLCache(
            maxsize=self.cache_size, ttl=self.expire, timer=self.clock
        )
        self._negative: TTLCache[str, bool] = TTLCache(
            maxsize=self.cache_size, ttl=self.negative_expire, timer=self.clock
        )
        self._memo: dict[str, AppTags | None] = {}
        self._miss: dict[str, str | None] = {}
        #: Apps found by a live lookup (not in the snapshot), for :meth:`app_info`; bounded like the cache.
        self._live_infos: TTLCache[str, AppInfo] = TTLCache(
            maxsize=self.cache_size, ttl=self.expire, timer=self.clock
        )
        self._live_used = 0
        self._live_until = 0.0
        self._live_paused_until = 0.0
        self.last_miss: str | None = None

    @property
    def available(self) -> bool:
        return self.snapshot is not None

    def begin_invocation(self) -> None:
        """Check the snapshot if due, and reset the per-invocation memo and live-lookup budget."""
        self.refresh_if_due()
        self._memo = {}
        self._miss = {}
        self._live_used = 0
        self._live_until = time.monotonic() + self.live_budget

    def refresh_if_due(self) -> None:
        """Check the snapshot if the last check is older than the interval; never raises."""
        if "snapshot" in self._checked:
            return
        self._checked["snapshot"] = True
        self.stats.checks += 1
        try:
            with time_limit(self.check_limit()):
                data, etag = self.source.fetch(self.etag if self.snapshot is not None else None)
            if data is None:
                self.stats.unchanged += 1
                self._read_checked_at()
                return
            snapshot = decode_snapshot(data, lazy=True)
        except (SnapshotUnavailable, SnapshotError) as exc:
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            log.warning(
                "snapshot check failed, %s: %s",
                "keeping the snapshot this container has" if self.snapshot is not None else "no snapshot yet",
                exc,
            )
            return
        self.snapshot = snapshot
        self.etag = etag
        self.loaded_at = self.clock()
        self._cache.clear()
        self._memo = {}
        self.stats.loads += 1
        self.checked_at = None
        self._read_checked_at()

    def _read_checked_at(self) -> None:
        """After a successful check: the refresh's record of its last check of this content. Read only
        then, so a snapshot the store could not load never counts as confirmed (its age keeps growing)."""
        with time_limit(self.check_limit()):
            checked_at = self.source.checked_at()
        if checked_at is not None:
            self.checked_at = checked_at

    def check_limit(self) -> float:
        """How long a snapshot check may still take: :data:`CHECK_LIMIT`, or less with little time left.

        With a snapshot in hand, a third of the time left before ``FLUSH_TIME_RESERVE``; without one
        (the records need it) two thirds of that, or half of all the time left when the reserve is most
        of it (what is left after the check is enough to quarantine the records).
        """
        if self.deadline is None:
            return CHECK_LIMIT
        total = self.deadline.remaining_ms() / 1000.0
        left = self.deadline.remaining()
        if self.snapshot is not None:
            return max(0.0, min(CHECK_LIMIT, left / 3))
        return max(0.0, min(CHECK_LIMIT, max(left * 2 / 3, total / 2)))

    def current_as_of(self) -> str | None:
        """The last time the loaded snapshot was known current: the later of its ``generated_at`` and
        the refresh's last check of the same content (``SnapshotAge`` counts from it). None: no snapshot."""
        if self.snapshot is None:
            return None
        generated_at = self.snapshot.generated_at
        if self.checked_at is None:
            return generated_at
        try:
            later = datetime.fromisoformat(self.checked_at) > datetime.fromisoformat(generated_at)
        except (TypeError, ValueError):
            return generated_at
        return self.checked_at if later else generated_at

    def app_info(self, guid: str) -> AppInfo | None:
        """An app's metadata (labels included) from the snapshot or a live lookup; None when unknown
        or its entry is invalid. No live lookup is made here (tenant routing reads what is known)."""
        snapshot = self.snapshot
        if snapshot is not None:
            try:
                info = snapshot.apps.get(guid) or snapshot.apps.get(guid.lower())
            except SnapshotError:
                return None
            if info is not None:
                return info
        return self._live_infos.get(guid)

    def lookup(self, guid: str) -> AppTags | None:
        """Escaped tags of an app, or None; then ``last_miss`` says whether that is final (None)."""
        memo = self._memo
        if guid in memo:
            tags = memo[guid]
            if tags is None:
                self.last_miss = self._miss.get(guid)
            return tags
        tags = self._resolve(guid)
        memo[guid] = tags
        if tags is None:
            self._miss[guid] = self.last_miss
        return tags

    def _resolve(self, guid: str) -> AppTags | None:
        tags = self._cache.get(guid)
        if tags is not None:
            self._cache[guid] = tags  # used: restart its expiry
            self.stats.cache_hits += 1
            return tags
        snapshot = self.snapshot
        if snapshot is not None:
            try:
                info = snapshot.apps.get(guid) or snapshot.apps.get(guid.lower())
            except SnapshotError as exc:  # one bad entry: the rest still work; keep its records for replay
                self.stats.failures += 1
                self.stats.last_error = str(exc)
                self.last_miss = METADATA_INVALID
                return None
            if info is not None:
                self.stats.snapshot_hits += 1
                return self._remember(guid, info)
        if guid in self._negative:
            self.stats.negative_hits += 1
            self.last_miss = None
            return None
        if self.live is None or self.live_max == 0:
            self.stats.unknown += 1
            self.last_miss = None if snapshot is not None else METADATA_UNAVAILABLE
            return None
        return self._live_lookup(guid)

    def _live_lookup(self, guid: str) -> AppTags | None:
        from .cc_client import CloudControllerError

        now = time.monotonic()
        if self._live_used >= self.live_max or now >= self._live_until or now < self._live_paused_until:
            self.stats.deferred += 1
            self.last_miss = LOOKUP_DEFERRED
            return None
        self._live_used += 1
        self.stats.live_lookups += 1
        try:
            info = self.live.get_app(guid, deadline=self._live_until)  # type: ignore[union-attr]
        except (CloudControllerError, OSError) as exc:
            self.stats.live_failures += 1
            self.stats.last_error = f"live lookup of {guid}: {exc}"
            # The next lookups would most likely fail too: pause them instead of stalling batches.
            self._live_paused_until = time.monotonic() + LIVE_PAUSE_AFTER_FAILURE
            self.last_miss = LOOKUP_FAILED
            return None
        if info is None:
            self._negative[guid] = True
            self.stats.unknown += 1
            self.last_miss = None
            return None
        self.stats.live_hits += 1
        self._live_infos[guid] = info
        return self._remember(guid, info)

    def _remember(self, guid: str, info: AppInfo) -> AppTags:
        tags = AppTags.from_info(info)
        self._cache[guid] = tags
        return tags
