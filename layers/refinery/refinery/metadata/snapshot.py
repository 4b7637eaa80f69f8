"""The metadata snapshot: the one place that knows its format.

A snapshot is a gzip-compressed JSON object. Schema 2 (written since the metadata benchmark work) keeps
each space and org once, in string tables, and each column as one array::

    {"schema_version": 2,
     "generated_at": "<RFC 3339>",
     "source": "<Cloud Controller API URL>",
     "orgs":   {"guid": ["<org guid>", ...], "name": ["<org name>", ...]},
     "spaces": {"guid": [...], "name": [...], "org": [<index into orgs>, ...]},
     "apps":   {"guid": [...], "name": [...], "space": [<index into spaces>, ...]}}

Each table may have a ``labels`` column (written only when some row has one): per row an object of the
label values the refresh keeps (``ROUTES_LABEL_KEYS``, :mod:`refinery.routing`), ``{}`` for none.

App ``i`` is ``apps.guid[i]`` named ``apps.name[i]``, in space row ``apps.space[i]`` of ``spaces``,
whose org is row ``spaces.org[i]`` of ``orgs``. Rows are sorted by GUID; a space or org row is one
distinct (GUID, name[, org]) combination, so the format holds exactly what schema 1 holds.

Schema 1 (one object per app) is still read::

    {"schema_version": 1, "generated_at": ..., "source": ...,
     "apps": {"<app guid>": {"name": ..., "space_guid": ..., "space_name": ...,
                             "org_guid": ..., "org_name": ...}}}

It lives at ``s3://$METADATA_BUCKET/$METADATA_KEY``. The refresh function writes it, the enricher
reads it, and operators may read it with ``aws s3 cp … - | gunzip``. The object's S3 tag
:data:`CHECKED_AT_TAG` holds the time of the last refresh that listed this same content (a refresh that
finds nothing changed only re-tags the object: see :mod:`refinery.metadata.refresh`).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import orjson

from ..envelope import loads_json

SCHEMA_VERSION = 2
#: Every schema version :func:`decode_snapshot` reads.
READABLE_VERSIONS = (1, 2)
APP_FIELDS = ("name", "space_guid", "space_name", "org_guid", "org_name")
#: S3 object tag: the RFC 3339 time of the last refresh that listed the snapshot's content.
CHECKED_AT_TAG = "refinery-checked-at"
#: Most bytes a snapshot may expand to (its JSON): 128 MiB, about 2 million apps in schema 2 (100 000 apps
#: take 6 MiB). Past it the snapshot is refused (a gzip bomb, or a foundation beyond what one function's
#: memory can hold): the enricher keeps the snapshot it has, the refresh treats it as unreadable.
MAX_SNAPSHOT_BYTES = 128 * 1024 * 1024
#: zlib level of the published gzip. Level 1 compresses a 100 000-app snapshot several times faster than
#: level 6 for about 8 % more bytes (the GUIDs, random hex, are most of them); decompression costs the same.
GZIP_LEVEL = 1
_TABLES = {"orgs": ("guid", "name"), "spaces": ("guid", "name", "org"), "apps": ("guid", "name", "space")}
#: A resource's kept labels: ``((key, value), …)`` sorted by key (hashable: rows are deduplicated on it).
Labels = tuple[tuple[str, str], ...]


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
    #: The values of the label keys the refresh keeps (ROUTES_LABEL_KEYS), sorted by key: ``((k, v), …)``.
    org_labels: Labels = ()
    space_labels: Labels = ()
    app_labels: Labels = ()

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


# ------------------------------------------------------------------------------------------- encode


def encode_snapshot(
    apps: Mapping[str, AppInfo], source: str, generated_at: datetime, *, schema_version: int = SCHEMA_VERSION
) -> bytes:
    """Serialise to the published format. Deterministic for the same input (rows sorted, mtime 0).

    ``schema_version=1`` writes the previous format (for tests of readers and of the upgrade).
    """
    head: dict[str, Any] = {
        "schema_version": schema_version,
        "generated_at": rfc3339(generated_at),
        "source": source,
    }
    if schema_version == 1:
        raw = orjson.dumps(
            {**head, "apps": {guid: apps[guid].as_dict() for guid in sorted(apps)}},
            option=orjson.OPT_SORT_KEYS,
        )
    elif schema_version == 2:
        raw = orjson.dumps({**head, **_tables(apps)})
    else:
        raise ValueError(f"cannot write snapshot schema_version {schema_version!r}")
    return gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0)


def _tables(apps: Mapping[str, AppInfo]) -> dict[str, dict[str, list[Any]]]:
    guids = sorted(apps)  # the mapping's keys name the apps, as in schema 1
    infos = [apps[guid] for guid in guids]
    # (space guid, space name, org guid, org name, space labels, org labels) per app
    placements = list(map(_PLACEMENT, infos))
    distinct = set(placements)
    org_keys = sorted({(p[2], p[3], p[5]) for p in distinct})
    org_row = {key: row for row, key in enumerate(org_keys)}
    space_keys = sorted((p[0], p[1], org_row[p[2], p[3], p[5]], p[4], p) for p in distinct)
    space_row = {key[4]: row for row, key in enumerate(space_keys)}
    tables: dict[str, dict[str, list[Any]]] = {
        "orgs": {"guid": [k[0] for k in org_keys], "name": [k[1] for k in org_keys]},
        "spaces": {
            "guid": [k[0] for k in space_keys],
            "name": [k[1] for k in space_keys],
            "org": [k[2] for k in space_keys],
        },
        "apps": {
            "guid": guids,
            "name": [a.name for a in infos],
            "space": list(map(space_row.__getitem__, placements)),
        },
    }
    # Labels only when some resource has one: a snapshot without them is byte-identical to before.
    for table, labels in (
        ("orgs", [k[2] for k in org_keys]),
        ("spaces", [k[3] for k in space_keys]),
        ("apps", [a.app_labels for a in infos]),
    ):
        if any(labels):
            tables[table]["labels"] = [dict(pairs) for pairs in labels]
    return tables


_PLACEMENT = attrgetter("space_guid", "space_name", "org_guid", "org_name", "space_labels", "org_labels")


# ------------------------------------------------------------------------------------------- decode


class LazyApps(Mapping[str, AppInfo]):
    """The ``apps`` object of a schema-1 snapshot, each entry validated and built when first read.

    Building 100 000 :class:`AppInfo` up front costs more than parsing the JSON; the enricher reads
    only the apps its batches name. An invalid entry raises :class:`SnapshotError` when read.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: dict[str, Any]):
        self._raw = raw

    def __getitem__(self, guid: str) -> AppInfo:
        return _app(guid, self._raw[guid])

    def get(self, guid: str, default: Any = None) -> Any:
        entry = self._raw.get(guid)
        return default if entry is None else _app(guid, entry)

    def __contains__(self, guid: object) -> bool:
        return guid in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def check(self) -> None:
        """Validate every entry (:class:`SnapshotError` for the first invalid one)."""
        for guid, entry in self._raw.items():
            _app(guid, entry)


def _app(guid: str, entry: Any) -> AppInfo:
    if not isinstance(entry, dict):
        raise SnapshotError(f"snapshot app {guid!r} is not an object")
    values = []
    for name in APP_FIELDS:
        value = entry.get(name)
        if not isinstance(value, str):
            raise SnapshotError(f"snapshot app {guid!r} field {name!r} is missing or not a string")
        values.append(value)
    name, space_guid, space_name, org_guid, org_name = values
    return AppInfo(guid, name, space_guid, space_name, org_guid, org_name)


class TableApps(Mapping[str, AppInfo]):
    """The apps of a schema-2 snapshot: a GUID → row index, each :class:`AppInfo` built when read.

    The tables' shape (columns of equal length) is checked when the snapshot is decoded; a row's values
    (strings, indexes in range) when it is read, raising :class:`SnapshotError` for an invalid one.
    """

    __slots__ = (
        "_app_labels",
        "_index",
        "_names",
        "_org_guids",
        "_org_labels",
        "_org_names",
        "_space_guids",
        "_space_labels",
        "_space_names",
        "_space_orgs",
        "_spaces",
    )

    def __init__(self, tables: Mapping[str, Mapping[str, list[Any]]]):
        apps, spaces, orgs = tables["apps"], tables["spaces"], tables["orgs"]
        guids: list[Any] = apps["guid"]
        if not _all_str(guids):
            raise SnapshotError("snapshot field 'apps.guid' holds a value that is not a string")
        self._index: dict[str, int] = dict(zip(guids, range(len(guids)), strict=True))
        self._names, self._spaces = apps["name"], apps["space"]
        self._space_guids, self._space_names, self._space_orgs = spaces["guid"], spaces["name"], spaces["org"]
        self._org_guids, self._org_names = orgs["guid"], orgs["name"]
        self._app_labels = apps.get("labels")
        self._space_labels = spaces.get("labels")
        self._org_labels = orgs.get("labels")

    def __getitem__(self, guid: str) -> AppInfo:
        return self._row(guid, self._index[guid])

    def get(self, guid: str, default: Any = None) -> Any:
        row = self._index.get(guid)
        return default if row is None else self._row(guid, row)

    def __contains__(self, guid: object) -> bool:
        return guid in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def check(self) -> None:
        """Validate every row, without building :class:`AppInfo` (:class:`SnapshotError` if one is bad)."""
        if not (
            _all_str(self._names)
            and _all_index(self._spaces, len(self._space_guids))
            and _all_str(self._space_guids)
            and _all_str(self._space_names)
            and _all_index(self._space_orgs, len(self._org_guids))
            and _all_str(self._org_guids)
            and _all_str(self._org_names)
        ):
            for guid, row in self._index.items():  # name the first bad row
                self._row(guid, row)
            raise SnapshotError("snapshot tables hold a value that is not valid")  # an unreferenced row

    def _row(self, guid: str, row: int) -> AppInfo:
        name, space = self._names[row], self._spaces[row]
        if not isinstance(name, str):
            raise SnapshotError(f"snapshot app {guid!r} field 'name' is not a string")
        if type(space) is not int or not 0 <= space < len(self._space_guids):
            raise SnapshotError(f"snapshot app {guid!r}: space {space!r} is not a row of 'spaces'")
        space_guid, space_name = self._space_guids[space], self._space_names[space]
        org = self._space_orgs[space]
        if not isinstance(space_guid, str) or not isinstance(space_name, str):
            raise SnapshotError(f"snapshot space row {space}: guid or name is not a string")
        if type(org) is not int or not 0 <= org < len(self._org_guids):
            raise SnapshotError(f"snapshot space row {space}: org {org!r} is not a row of 'orgs'")
        org_guid, org_name = self._org_guids[org], self._org_names[org]
        if not isinstance(org_guid, str) or not isinstance(org_name, str):
            raise SnapshotError(f"snapshot org row {org}: guid or name is not a string")
        if self._app_labels is None and self._space_labels is None and self._org_labels is None:
            return AppInfo(guid, name, space_guid, space_name, org_guid, org_name)
        return AppInfo(
            guid,
            name,
            space_guid,
            space_name,
            org_guid,
            org_name,
            _labels(self._org_labels, org, "org"),
            _labels(self._space_labels, space, "space"),
            _labels(self._app_labels, row, "app"),
        )


def _labels(column: list[Any] | None, row: int, what: str) -> Labels:
    """A row's kept labels, sorted by key (``()`` without a ``labels`` column)."""
    if column is None:
        return ()
    value = column[row]
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise SnapshotError(f"snapshot {what} row {row}: labels are not an object of strings")
    return tuple(sorted(value.items()))


def _all_str(values: Iterable[Any]) -> bool:
    return set(map(type, values)) <= {str}  # map and set run in C: ~2 ms for 100 000 values


def _all_index(values: Sequence[Any], rows: int) -> bool:
    return all(type(value) is int and 0 <= value < rows for value in values)


def decode_snapshot(data: bytes, *, lazy: bool = False) -> Snapshot:
    """Parse and validate a snapshot (schema 1 or 2); raise :class:`SnapshotError` naming what is wrong.

    With ``lazy``, app entries are validated when read (:class:`LazyApps`, :class:`TableApps`), not all
    up front; the document's shape is always checked.
    """
    generated_at, source, lazy_apps = _decode(data)
    apps: Mapping[str, AppInfo] = lazy_apps if lazy else {guid: lazy_apps[guid] for guid in lazy_apps}
    return Snapshot(generated_at=generated_at, source=source, apps=apps)


def snapshot_app_guids(data: bytes) -> frozenset[str]:
    """The app GUIDs of a snapshot whose every entry is valid (:class:`SnapshotError` otherwise).

    What the refresh needs of the previous snapshot, without building an :class:`AppInfo` per app.
    """
    _, _, apps = _decode(data)
    apps.check()
    return frozenset(apps)


def _decode(data: bytes) -> tuple[str, str, LazyApps | TableApps]:
    try:
        raw = gunzip_bounded(data, MAX_SNAPSHOT_BYTES)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise SnapshotError(f"snapshot is not valid gzip ({exc})") from exc
    try:
        doc = loads_json(raw)
    except ValueError as exc:
        raise SnapshotError(f"snapshot is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise SnapshotError("snapshot is not a JSON object")
    version = doc.get("schema_version")
    if version == 1:
        apps_doc = doc.get("apps")
        if not isinstance(apps_doc, dict):
            raise SnapshotError("snapshot field 'apps' is missing or not an object")
        lazy_apps: LazyApps | TableApps = LazyApps(apps_doc)
    elif version == 2:
        lazy_apps = TableApps(_check_tables(doc))
    else:
        expected = " or ".join(str(v) for v in READABLE_VERSIONS)
        raise SnapshotError(f"unsupported snapshot schema_version {version!r} (expected {expected})")
    generated_at = doc.get("generated_at")
    source = doc.get("source")
    if not isinstance(generated_at, str) or not isinstance(source, str):
        raise SnapshotError("snapshot fields 'generated_at' and 'source' must be strings")
    return generated_at, source, lazy_apps


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """``gzip.decompress(data)`` that stops at ``limit`` bytes of output: :class:`SnapshotError` past it.

    Never holds more than ``limit`` (plus one zlib step) in memory, whatever the ratio: a 3 MB gzip bomb
    expanding to 3 GiB costs 128 MiB and a fraction of a second, not a MemoryError.
    """
    if data[:2] != b"\x1f\x8b":
        raise SnapshotError("snapshot is not valid gzip (not a gzip file)")
    out = bytearray()
    rest = data
    while rest:  # members, as gzip.decompress reads them
        stream = zlib.decompressobj(wbits=31)
        out += stream.decompress(rest, limit + 1 - len(out))  # stops one byte past the limit
        if len(out) > limit:
            raise SnapshotError(f"snapshot expands to more than {limit // 2**20} MiB (the limit): refused")
        if not stream.eof:
            raise SnapshotError("snapshot is not valid gzip (truncated)")
        rest = stream.unused_data.lstrip(b"\x00")  # gzip.decompress also allows trailing zero padding
    return bytes(out)


def _check_tables(doc: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """The three tables, each a dict of equal-length arrays (the values are checked when read)."""
    tables: dict[str, dict[str, list[Any]]] = {}
    for table, columns in _TABLES.items():
        value = doc.get(table)
        if not isinstance(value, dict):
            raise SnapshotError(f"snapshot field {table!r} is missing or not an object")
        lengths = set()
        for column in columns:
            if not isinstance(value.get(column), list):
                raise SnapshotError(f"snapshot field '{table}.{column}' is missing or not an array")
            lengths.add(len(value[column]))
        if "labels" in value:
            if not isinstance(value["labels"], list):
                raise SnapshotError(f"snapshot field '{table}.labels' is not an array")
            lengths.add(len(value["labels"]))
        if len(lengths) != 1:
            raise SnapshotError(f"snapshot table {table!r}: its arrays differ in length")
        tables[table] = value
    return tables
