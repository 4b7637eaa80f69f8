"""The metadata snapshot: the one place that knows its format.

A snapshot is a gzip-compressed JSON object::

    {"schema_version": 1,
     "generated_at": "<RFC 3339>",
     "source": "<Cloud Controller API URL>",
     "apps": {"<app guid>": {"name": ..., "space_guid": ..., "space_name": ...,
                             "org_guid": ..., "org_name": ...}}}

It lives at ``s3://$METADATA_BUCKET/$METADATA_KEY``. The refresh function writes it, the enricher
reads it, and operators may read it with ``aws s3 cp … - | gunzip``.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..envelope import loads_json

SCHEMA_VERSION = 1
APP_FIELDS = ("name", "space_guid", "space_name", "org_guid", "org_name")


class SnapshotError(ValueError):
    """The bytes are not a valid snapshot; the message says why."""


@dataclass(frozen=True, slots=True)
class AppInfo:
    """What the enricher needs to know about one app."""

    guid: str
    name: str
    space_guid: str
    space_name: str
    org_guid: str
    org_name: str

    def as_dict(self) -> dict[str, str]:
        return {field: getattr(self, field) for field in APP_FIELDS}


@dataclass(frozen=True, slots=True)
class Snapshot:
    generated_at: str
    source: str
    apps: Mapping[str, AppInfo]


def rfc3339(moment: datetime) -> str:
    """``2026-11-21T10:00:00.123456Z`` (always UTC, always with a zone)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def encode_snapshot(apps: Mapping[str, AppInfo], source: str, generated_at: datetime) -> bytes:
    """Serialise to the published format. Deterministic for the same input (keys sorted, mtime 0)."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": rfc3339(generated_at),
        "source": source,
        "apps": {guid: apps[guid].as_dict() for guid in sorted(apps)},
    }
    raw = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    return gzip.compress(raw, compresslevel=6, mtime=0)


class LazyApps(Mapping[str, AppInfo]):
    """The ``apps`` object of a snapshot, each entry validated and built when first read.

    Building 100 000 :class:`AppInfo` up front costs more than parsing the JSON; the enricher reads
    only the apps its batches name. An invalid entry raises :class:`SnapshotError` when read.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: dict[str, Any]):
        self._raw = raw

    def __getitem__(self, guid: str) -> AppInfo:
        return _app(guid, self._raw[guid])

    def get(self, guid: str, default: Any = None) -> Any:  # type: ignore[override]
        entry = self._raw.get(guid)
        return default if entry is None else _app(guid, entry)

    def __contains__(self, guid: object) -> bool:
        return guid in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def _app(guid: str, entry: Any) -> AppInfo:
    if not isinstance(entry, dict):
        raise SnapshotError(f"snapshot app {guid!r} is not an object")
    values = []
    for name in APP_FIELDS:
        value = entry.get(name)
        if not isinstance(value, str):
            raise SnapshotError(f"snapshot app {guid!r} field {name!r} is missing or not a string")
        values.append(value)
    return AppInfo(guid, *values)


def decode_snapshot(data: bytes, *, lazy: bool = False) -> Snapshot:
    """Parse and validate a snapshot; raise :class:`SnapshotError` naming what is wrong.

    With ``lazy``, app entries are validated when read (:class:`LazyApps`), not all up front.
    """
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise SnapshotError(f"snapshot is not valid gzip ({exc})") from exc
    try:
        doc = loads_json(raw)
    except ValueError as exc:
        raise SnapshotError(f"snapshot is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise SnapshotError("snapshot is not a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SnapshotError(f"unsupported snapshot schema_version {version!r} (expected {SCHEMA_VERSION})")
    apps_doc = doc.get("apps")
    if not isinstance(apps_doc, dict):
        raise SnapshotError("snapshot field 'apps' is missing or not an object")
    apps: Mapping[str, AppInfo] = (
        LazyApps(apps_doc) if lazy else {guid: _app(guid, entry) for guid, entry in apps_doc.items()}
    )
    generated_at = doc.get("generated_at")
    source = doc.get("source")
    if not isinstance(generated_at, str) or not isinstance(source, str):
        raise SnapshotError("snapshot fields 'generated_at' and 'source' must be strings")
    return Snapshot(generated_at=generated_at, source=source, apps=apps)
