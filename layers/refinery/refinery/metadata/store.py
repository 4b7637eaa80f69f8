"""The enricher's view of app metadata: the S3 snapshot, kept in a warm container.

One :class:`MetadataStore` lives at module level in the enricher, so it survives between
invocations of a warm container. Once every ``SNAPSHOT_CHECK_INTERVAL`` (a cachetools TTL cache
entry) it asks S3 whether the snapshot changed, with a conditional GET on the ETag, so an unchanged
snapshot costs one cheap request. A failed check keeps the snapshot it has (stale beats nothing) and
is counted. Escaped tag strings are built once per app, on first use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache

from ..transform import AppTags
from .snapshot import Snapshot, SnapshotError, decode_snapshot


class SnapshotUnavailable(RuntimeError):
    """The snapshot could not be read (missing, unreachable, corrupt)."""


class SnapshotSource:
    """Where snapshot bytes come from. ``fetch(etag)`` -> (bytes or None if unchanged, etag)."""

    description = "snapshot"

    def fetch(self, etag: str | None) -> tuple[bytes | None, str | None]:
        raise NotImplementedError


class S3SnapshotSource(SnapshotSource):
    def __init__(self, bucket: str, key: str, client: Any = None):
        self.bucket = bucket
        self.key = key
        self.description = f"s3://{bucket}/{key}"
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # imported on first use: it costs ~300 ms

            self._client = boto3.client("s3")
        return self._client

    def fetch(self, etag: str | None) -> tuple[bytes | None, str | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs = {"Bucket": self.bucket, "Key": self.key}
        if etag:
            kwargs["IfNoneMatch"] = etag
        try:
            response = self.client.get_object(**kwargs)
            return response["Body"].read(), response.get("ETag")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("304", "NotModified") or status == 304:
                return None, etag
            raise SnapshotUnavailable(f"cannot read {self.description}: {code or status}") from exc
        except BotoCoreError as exc:
            raise SnapshotUnavailable(f"cannot read {self.description}: {exc}") from exc


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
    hits: int = 0
    misses: int = 0
    built: int = 0


@dataclass
class MetadataStore:
    source: SnapshotSource
    check_interval: float = 60.0
    clock: Callable[[], float] = time.monotonic
    snapshot: Snapshot | None = None
    etag: str | None = None
    loaded_at: float | None = None
    stats: StoreStats = field(default_factory=StoreStats)

    def __post_init__(self) -> None:
        self._checked: TTLCache[str, bool] = TTLCache(maxsize=1, ttl=self.check_interval, timer=self.clock)
        self._tags: dict[str, AppTags | None] = {}

    @property
    def available(self) -> bool:
        return self.snapshot is not None

    def refresh_if_due(self) -> None:
        """Check the snapshot if the last check is older than the interval; never raises."""
        if "snapshot" in self._checked:
            return
        self._checked["snapshot"] = True
        self.stats.checks += 1
        try:
            data, etag = self.source.fetch(self.etag if self.snapshot is not None else None)
            if data is None:
                self.stats.unchanged += 1
                return
            snapshot = decode_snapshot(data)
        except (SnapshotUnavailable, SnapshotError) as exc:
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            return
        self.snapshot = snapshot
        self.etag = etag
        self.loaded_at = self.clock()
        self._tags = {}
        self.stats.loads += 1

    def lookup(self, guid: str) -> AppTags | None:
        """Escaped tags of an app, or None if the snapshot does not know it."""
        tags = self._tags.get(guid)
        if tags is not None:
            self.stats.hits += 1
            return tags
        if self.snapshot is None:
            return None
        info = self.snapshot.apps.get(guid) or self.snapshot.apps.get(guid.lower())
        if info is None:
            self.stats.misses += 1
            return None
        tags = AppTags.from_info(info)
        self._tags[guid] = tags
        self.stats.built += 1
        return tags
