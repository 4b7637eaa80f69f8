"""A validated document (recording rules, the routing table) kept fresh in a warm container.

The document comes from a :class:`~refinery.metadata.store.SnapshotSource`: a file bundled with the
function or given by path (:class:`~refinery.metadata.store.FileSnapshotSource`, ETag: mtime and
size) or an S3 object (:class:`~refinery.metadata.store.S3SnapshotSource`, conditional GET on its
ETag). :class:`WatchedDocument` checks the source at most every ``check_interval``:

* the first load must succeed: an unreadable source raises ``unavailable`` (naming it), an invalid
  document raises the parser's own error (listing every problem);
* a later change that is unreadable or invalid keeps the document in force, and is counted
  (``stats.failures``) and reported (``stats.last_error``);
* a new valid version replaces it (``stats.loads``; ``version`` changes, for caches built on it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .metadata.store import SnapshotSource, SnapshotUnavailable

T = TypeVar("T")


@dataclass
class WatchStats:
    checks: int = 0
    loads: int = 0
    failures: int = 0
    last_error: str = ""


class WatchedDocument(Generic[T]):
    """The document in force, re-checked at most every ``check_interval`` seconds.

    ``parse(data, origin)`` validates the bytes and returns the document, or raises one of
    ``invalid`` (a ValueError subclass naming every problem); ``unavailable(message)`` builds the
    error raised when the first load cannot read the source.
    """

    def __init__(
        self,
        source: SnapshotSource,
        parse: Callable[[bytes, str], T],
        *,
        invalid: type[Exception] = ValueError,
        unavailable: Callable[[str], Exception] = RuntimeError,
        what: str = "document",
        check_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.source = source
        self.parse = parse
        self.invalid = invalid
        self.unavailable = unavailable
        self.what = what
        self.check_interval = check_interval
        self.clock = clock
        self.document: T | None = None
        self.etag: str | None = None
        self.version = 0  # bumped at each load: what a cache derived from the document keys on
        self.stats = WatchStats()
        self._next_check = 0.0

    def refresh_if_due(self) -> T:
        """The document in force; loads it on first use (raising what is wrong) and when changed."""
        now = self.clock()
        if self.document is not None and now < self._next_check:
            return self.document
        self.stats.checks += 1
        try:
            data, etag = self.source.fetch(self.etag if self.document is not None else None)
            document = self.parse(data, self.source.description) if data is not None else None
        except (SnapshotUnavailable, self.invalid) as exc:
            if self.document is None:
                if isinstance(exc, SnapshotUnavailable):
                    raise self.unavailable(f"{self.what}: {exc}") from exc
                raise
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            self._next_check = now + self.check_interval
            return self.document
        self._next_check = now + self.check_interval
        if document is not None:
            self.document = document
            self.etag = etag
            self.version += 1
            self.stats.loads += 1
        assert self.document is not None
        return self.document
