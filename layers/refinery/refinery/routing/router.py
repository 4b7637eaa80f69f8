"""The routing table in force and the route of each point, remembered per app GUID."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..lineparse import LineError, parse_series, series_end
from .model import Destination, RoutesError, RoutesUnavailable, RoutingTable, Subject, route
from .table import parse_routes

if TYPE_CHECKING:
    from ..config import EnricherConfig, InfluxConfig
    from ..metadata.store import MetadataStore
    from ..watched import WatchedDocument

ROUTE_CACHE_SIZE = 200_000
_APP_GUID = ",app_guid="
_ENDS = frozenset((",", " "))  # what follows a tag value


class Router:
    """The routing table in force and the route of each point, remembered per app GUID.

    ``begin_invocation`` re-checks the table (when due); the memo is dropped when the table or the
    metadata snapshot changed, so a relabelled org's next points go to its new destination.
    """

    def __init__(self, book: WatchedDocument[RoutingTable], store: MetadataStore):
        self.book = book
        self.store = store
        self.table: RoutingTable | None = None
        self._memo: dict[str, tuple[Destination, str]] = {}
        #: ``,app_guid=<GUID><separator>`` -> destination, for :meth:`destinations`
        self.by_guid: dict[str, Destination] = {}
        self._interned: dict[Destination, Destination] = {}
        self._series_memo: dict[str, tuple[Destination, str]] = {}
        self._key: tuple[int, int, int] | None = None

    def begin_invocation(self) -> RoutingTable:
        """The table in force (first use: raises what is wrong with it); drops stale routes."""
        self.table = self.book.refresh_if_due()
        if self.store.snapshot is None:  # a replay writes lines without a batch: load it now
            self.store.refresh_if_due()
        key = (self.book.version, self.store.stats.loads, id(self.store.snapshot))
        if key != self._key:
            self._memo = {}
            self.by_guid = {}
            self._interned = {}
            self._series_memo = {}
            self._key = key
        return self.table

    @property
    def default(self) -> Destination:
        table = self.table or self.begin_invocation()
        return table.default

    def destinations(self, lines: Sequence[str]) -> dict[Destination, list[int]]:
        """The lines' indexes by destination (each group in no particular order).

        The hot loop does per line only: find ``,app_guid=`` and group the line by it and the 37
        characters after it (a GUID and its separator; a line without it gets a key of at most one
        character). Then each group, one per app, is routed once, by the app's route (computed once per
        app GUID); lines without ``app_guid``, or whose value is not a GUID of 36 characters, are routed
        line by line.
        """
        marker = _APP_GUID
        size = len(marker) + 37
        keys = [line[(start := line.find(marker)) : start + size] for line in lines]
        by_key: defaultdict[str, list[int]] = defaultdict(list)
        for index, key in enumerate(keys):
            by_key[key].append(index)
        by_guid = self.by_guid
        out: dict[Destination, list[int]] = {}
        for key, indexes in by_key.items():
            where = by_guid.get(key)
            if where is None and len(key) == size and key[-1] in _ENDS:
                where = self.route_of(lines[indexes[0]])[0]  # one app's lines: one route
            if where is None:  # no app_guid, or a value that is not a GUID: each line by itself
                for index in indexes:
                    out.setdefault(self.route_of(lines[index])[0], []).append(index)
                continue
            group = out.get(where)
            if group is None:
                out[where] = indexes
            else:
                group.extend(indexes)
        return out

    def destination(self, line: str) -> Destination:
        """The destination of one line (its route computed once per app GUID)."""
        return self.route_of(line)[0]

    def route_of(self, line: str) -> tuple[Destination, str]:
        """(destination, route name) of one line of line protocol."""
        start = line.find(_APP_GUID)
        if start > 0 and line[start - 1] != "\\":
            start += len(_APP_GUID)
            end = start + 36  # a GUID; anything else is read to the next separator
            if len(line) <= end or line[end] not in ", ":
                end = min(
                    (i for i in (line.find(",", start), line.find(" ", start)) if i > 0), default=len(line)
                )
            guid = line[start:end]
            found = self._memo.get(guid)
            if found is None:
                found = self._app_route(guid, line)
            return found
        return self._series_route(line)

    def _app_route(self, guid: str, line: str) -> tuple[Destination, str]:
        table = self.table or self.begin_invocation()
        info = self.store.app_info(guid)
        if info is None:  # no longer known (a replay after the app was deleted): the point's own tags
            return self._series_route(line)
        if len(self._memo) >= ROUTE_CACHE_SIZE:
            self._memo = {}
            self.by_guid = {}
        found = self._memo[guid] = route(table, Subject.of_app(info))
        destination = self._interned.setdefault(found[0], found[0])  # equal destinations: one object
        for end in _ENDS:  # the GUID with what follows it: a longer value never matches
            self.by_guid[_APP_GUID + guid + end] = destination
        return found

    def _series_route(self, line: str) -> tuple[Destination, str]:
        table = self.table or self.begin_invocation()
        try:
            series = line[: series_end(line)]
        except LineError:
            return table.default, "default"
        found = self._series_memo.get(series)
        if found is None:
            _, tags = parse_series(series)
            if len(self._series_memo) >= ROUTE_CACHE_SIZE:
                self._series_memo = {}
            found = self._series_memo[series] = route(table, Subject.of_tags(tags))
        return found


def default_destination(influx: InfluxConfig) -> Destination:
    """The INFLUX_* settings' own destination: the default route of a table that names none."""
    if influx.api == "v1":
        return Destination(database=influx.database, retention_policy=influx.retention_policy)
    return Destination(bucket=influx.bucket)


def routing_book(config: EnricherConfig) -> WatchedDocument[RoutingTable] | None:
    """The configured routing table (ROUTES_FILE or ROUTES_KEY in METADATA_BUCKET), not loaded yet."""
    if not (config.routes_file or config.routes_key) or config.influx is None:
        return None
    from ..metadata.store import FileSnapshotSource, S3SnapshotSource
    from ..watched import WatchedDocument

    source = (
        FileSnapshotSource(config.routes_file)
        if config.routes_file
        else S3SnapshotSource(config.metadata_bucket or "", config.routes_key or "")
    )
    api = config.influx.api
    default = default_destination(config.influx)
    keys = frozenset(config.routes_label_keys)

    def parse(data: bytes, origin: str) -> RoutingTable:
        return parse_routes(data, origin, api=api, default=default, label_keys=keys)

    return WatchedDocument(
        source,
        parse,
        invalid=RoutesError,
        unavailable=RoutesUnavailable,
        what="routing table",
        check_interval=config.routes_check_interval,
    )


def build_router(config: EnricherConfig, store: MetadataStore) -> Router | None:
    """The enricher's router (None: no routing table configured)."""
    book = routing_book(config)
    return Router(book, store) if book is not None else None
