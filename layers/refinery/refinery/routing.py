"""Tenant routing: which InfluxDB database (and retention policy) or bucket (and org) takes a point.

The routing table is YAML, bundled with the function (``ROUTES_FILE``) or in S3
(``ROUTES_BUCKET``/``ROUTES_KEY``), validated and kept fresh like the recording rules
(:mod:`refinery.watched`)::

    routes:
      - name: team-a                         # optional: shown by `refinery tap` and in messages
        match:                               # every condition must hold (no match: every point)
          org: team-a                        # org, space, app: names; org_guid, space_guid, app_guid
          space: {regex: "prod-.*"}          # a regular expression matching the whole value
        to: {database: team_a, retention_policy: four_weeks}
      - name: labelled orgs                  # the org's label gives the database: no redeploy
        to: {database: {org_label: metrics.example.com/database}}
      - match: {app_label: {metrics.example.com/tier: gold}}   # labels can be matched too
        to: {database: gold}
    default: {database: cf}                  # optional: the INFLUX_* settings' database/bucket

With the v2 API a destination is ``{bucket: …, org: …}`` (``org`` optional: ``INFLUX_ORG``).
The first route whose conditions hold *and* whose destination can be made (a label it takes its
value from is set) wins; otherwise the default. Labels are the values of the label keys the metadata
refresh keeps (``ROUTES_LABEL_KEYS``) for each org, space and app: CC v3's ``metadata.labels``.

A point's route is a pure function of the point's own tags and the app's metadata
(:func:`route`), so a retried, re-cut or replayed record is written to the same place (a replay uses
the metadata and table current then). :class:`Router` applies it in the sink: one dictionary look-up
per point, the route itself computed once per app GUID (and again after the snapshot or the table
changed). A point without an ``app_guid`` tag (a recording rule's aggregate, the pipeline's own
metrics) is routed by the tags it has, without labels.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .lineparse import LineError, parse_series, series_end

if TYPE_CHECKING:
    from .config import Config, InfluxConfig
    from .metadata.snapshot import AppInfo
    from .metadata.store import MetadataStore
    from .watched import WatchedDocument

SUBJECT_FIELDS = ("org", "org_guid", "space", "space_guid", "app", "app_guid")
LABEL_LEVELS = ("org", "space", "app")
LABEL_SELECTORS = tuple(f"{level}_label" for level in LABEL_LEVELS)
ROUTE_KEYS = ("name", "match", "to")
TOP_KEYS = ("routes", "default")
DESTINATION_KEYS = {"v1": ("database", "retention_policy"), "v2": ("bucket", "org")}
REQUIRED_KEY = {"v1": "database", "v2": "bucket"}
#: Most app GUIDs whose route is remembered (then the memo starts again).
ROUTE_CACHE_SIZE = 200_000
_APP_GUID = ",app_guid="
_ENDS = frozenset((",", " "))  # what follows a tag value


class RoutesError(ValueError):
    """The routing table is unreadable or invalid; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid routing table:\n  - " + "\n  - ".join(problems))


class RoutesUnavailable(RuntimeError):
    """No routing table could be loaded yet (the file or S3 object cannot be read)."""


@dataclass(frozen=True, slots=True)
class Destination:
    """Where points are written: a v1 database (and retention policy) or a v2 bucket (and org)."""

    database: str = ""
    retention_policy: str = ""
    bucket: str = ""
    org: str = ""

    def __str__(self) -> str:
        if self.bucket:
            return f"bucket {self.bucket!r}" + (f" (org {self.org!r})" if self.org else "")
        return f"database {self.database!r}" + (
            f" (retention policy {self.retention_policy!r})" if self.retention_policy else ""
        )

    def params(self) -> dict[str, str]:
        """The write API's query parameters that name this destination.

        A bucket is also sent as ``db``: VictoriaMetrics ignores ``bucket`` on ``/api/v2/write`` and
        stores ``db`` as the ``db`` label of every sample (InfluxDB 2.x and 3.x ignore ``db`` there).
        """
        if self.bucket:
            return {"bucket": self.bucket, "db": self.bucket, **({"org": self.org} if self.org else {})}
        return {"db": self.database, **({"rp": self.retention_policy} if self.retention_policy else {})}


@dataclass(frozen=True, slots=True)
class Pattern:
    """An exact value, or a regular expression that must match the whole value."""

    text: str
    regex: re.Pattern[str] | None = None

    def matches(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        return value == self.text


@dataclass(frozen=True, slots=True)
class LabelRef:
    """A destination value taken from a label of the org, space or app."""

    level: str  # org, space or app
    key: str


@dataclass(frozen=True, slots=True)
class Subject:
    """What a route is chosen by: a point's org, space and app (names, GUIDs) and their labels."""

    org: str | None = None
    org_guid: str | None = None
    space: str | None = None
    space_guid: str | None = None
    app: str | None = None
    app_guid: str | None = None
    org_labels: Mapping[str, str] = field(default_factory=dict)
    space_labels: Mapping[str, str] = field(default_factory=dict)
    app_labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of_app(cls, info: AppInfo) -> Subject:
        return cls(
            info.org_name,
            info.org_guid,
            info.space_name,
            info.space_guid,
            info.name,
            info.guid,
            dict(info.org_labels),
            dict(info.space_labels),
            dict(info.app_labels),
        )

    @classmethod
    def of_tags(cls, tags: Mapping[str, str]) -> Subject:
        get = tags.get
        return cls(get("org"), get("org_guid"), get("space"), get("space_guid"), get("app"), get("app_guid"))

    def label(self, level: str, key: str) -> str | None:
        labels = (
            self.org_labels if level == "org" else self.space_labels if level == "space" else self.app_labels
        )
        return labels.get(key)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: tuple[tuple[str, Pattern], ...]  # (subject field, pattern)
    labels: tuple[tuple[str, str, Pattern], ...]  # (level, label key, pattern)
    to: tuple[tuple[str, str | LabelRef], ...]  # (destination field, value or label reference)

    def destination(self, subject: Subject) -> Destination | None:
        """Where this route sends ``subject``'s points; None when it does not apply to them."""
        for name, pattern in self.match:
            if not pattern.matches(getattr(subject, name)):
                return None
        for level, key, pattern in self.labels:
            if not pattern.matches(subject.label(level, key)):
                return None
        values: dict[str, str] = {}
        for name, value in self.to:
            if isinstance(value, LabelRef):
                taken = subject.label(value.level, value.key)
                if not taken:
                    return None
                values[name] = taken
            else:
                values[name] = value
        return Destination(**values)


@dataclass(frozen=True)
class RoutingTable:
    routes: tuple[Route, ...]
    default: Destination
    origin: str = ""
    api: str = "v1"

    def label_keys(self) -> frozenset[str]:
        """Every label key the table reads (they must be kept by the metadata refresh)."""
        keys = {key for r in self.routes for _, key, _ in r.labels}
        keys |= {v.key for r in self.routes for _, v in r.to if isinstance(v, LabelRef)}
        return frozenset(keys)


def route(table: RoutingTable, subject: Subject) -> tuple[Destination, str]:
    """The destination of a point of ``subject`` and the name of the route that chose it (first match)."""
    for entry in table.routes:
        destination = entry.destination(subject)
        if destination is not None:
            return destination, entry.name
    return table.default, "default"


# ---------------------------------------------------------------------------------------- parsing


def parse_routes(
    data: bytes | str,
    origin: str,
    *,
    api: str = "v1",
    default: Destination | None = None,
    label_keys: frozenset[str] | None = None,
) -> RoutingTable:
    """Parse and validate a routing table; raise :class:`RoutesError` listing every problem.

    ``api`` is the configured InfluxDB API (``v1``: databases, ``v2``: buckets); ``default`` the
    destination of the INFLUX_* settings (used when the table has no ``default``); ``label_keys``,
    when given, the keys the refresh keeps (ROUTES_LABEL_KEYS): a table reading another is refused.
    """
    import yaml

    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise RoutesError(
            [f"{origin}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"]
        ) from None
    if not isinstance(document, dict):
        raise RoutesError([f"{origin}: must be a mapping with a `routes` list (and optionally `default`)"])
    problems: list[str] = [
        f"{origin}: unknown top-level key {key!r} (known: {', '.join(TOP_KEYS)})"
        for key in document
        if key not in TOP_KEYS
    ]
    items = document.get("routes")
    if not isinstance(items, list):
        problems.append(f"{origin}: `routes` must be a list of routes (`routes: []` for none)")
        items = []
    routes: list[Route] = []
    names: set[str] = set()
    for number, item in enumerate(items, start=1):
        entry = _route(item, number, origin, api, names, problems)
        if entry is not None:
            routes.append(entry)
    chosen = default or Destination()
    if "default" in document:
        parsed = _destination(document["default"], api, lambda m: problems.append(f"{origin}: default: {m}"))
        if parsed is not None:
            if any(isinstance(v, LabelRef) for _, v in parsed):
                problems.append(f"{origin}: default: must name its destination, not take it from a label")
            else:
                chosen = Destination(**dict(parsed))  # type: ignore[arg-type]
    elif default is None:
        problems.append(f"{origin}: no `default` destination (and no INFLUX_* database or bucket to use)")
    if api == "v1" and not chosen.database and not problems:
        problems.append(f"{origin}: default: no database")
    if api == "v2" and not chosen.bucket and not problems:
        problems.append(f"{origin}: default: no bucket")
    table = RoutingTable(tuple(routes), chosen, origin, api)
    if label_keys is not None and not problems:
        for key in sorted(table.label_keys() - label_keys):
            problems.append(
                f"{origin}: label {key!r} is not in ROUTES_LABEL_KEYS "
                f"({', '.join(sorted(label_keys)) or 'empty'}): the metadata refresh keeps only those"
            )
    if problems:
        raise RoutesError(problems)
    return table


def _route(
    item: Any, number: int, origin: str, api: str, names: set[str], problems: list[str]
) -> Route | None:
    if not isinstance(item, dict):
        problems.append(f"{origin}: route #{number}: must be a mapping with `to` (and `match`, `name`)")
        return None
    name = item.get("name", f"#{number}")
    label = f"route {name!r}" if "name" in item else f"route #{number}"
    before = len(problems)

    def bad(message: str) -> None:
        problems.append(f"{origin}: {label}: {message}")

    if not isinstance(name, str) or not name:
        bad("`name` must be a non-empty string")
    elif name in names:
        bad("another route has the same name")
    names.add(str(name))
    for key in item:
        if key not in ROUTE_KEYS:
            bad(f"unknown field {key!r} (known: {', '.join(ROUTE_KEYS)})")
    match: list[tuple[str, Pattern]] = []
    labels: list[tuple[str, str, Pattern]] = []
    conditions = item.get("match") or {}
    if not isinstance(conditions, dict):
        bad("`match` must be a mapping like {org: team-a}")
        conditions = {}
    for selector, value in conditions.items():
        if selector in SUBJECT_FIELDS:
            pattern = _pattern(value, _prefixed(bad, f"match {selector}: "))
            if pattern is not None:
                match.append((selector, pattern))
        elif selector in LABEL_SELECTORS:
            if not isinstance(value, dict) or not value:
                bad(f"match {selector}: must map label keys to values, like {{example.com/tier: gold}}")
                continue
            for key, wanted in value.items():
                pattern = _pattern(wanted, _prefixed(bad, f"match {selector} {key}: "))
                if pattern is not None and _label_key(key, _prefixed(bad, f"match {selector}: ")):
                    labels.append((selector[: -len("_label")], key, pattern))
        else:
            known = ", ".join(SUBJECT_FIELDS + LABEL_SELECTORS)
            bad(f"match: unknown condition {selector!r} (known: {known})")
    if "to" not in item:
        bad("no destination `to`")
        to = None
    else:
        to = _destination(item["to"], api, bad)
    if len(problems) > before or to is None:
        return None
    return Route(str(name), tuple(match), tuple(labels), to)


def _prefixed(bad: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda message: bad(prefix + message)


def _pattern(value: Any, bad: Callable[[str], None]) -> Pattern | None:
    if isinstance(value, str) and value:
        return Pattern(value)
    if isinstance(value, dict) and set(value) == {"regex"} and isinstance(value["regex"], str):
        try:
            return Pattern(value["regex"], re.compile(value["regex"]))
        except re.error as exc:
            bad(f"{value['regex']!r} is not a valid regular expression: {exc}")
            return None
    bad("must be a non-empty string (exact) or {regex: '<regular expression>'} (whole value)")
    return None


def _label_key(key: Any, bad: Callable[[str], None]) -> bool:
    if not isinstance(key, str) or not key or len(key) > 316 or any(c.isspace() for c in key):
        bad(f"{key!r} is not a label key (like metrics.example.com/database)")
        return False
    return True


def _destination(
    value: Any, api: str, bad: Callable[[str], None]
) -> tuple[tuple[str, str | LabelRef], ...] | None:
    keys = DESTINATION_KEYS[api]
    other = DESTINATION_KEYS["v2" if api == "v1" else "v1"]
    if not isinstance(value, dict):
        bad(f"destination must be a mapping like {{{keys[0]}: …}}")
        return None
    out: list[tuple[str, str | LabelRef]] = []
    ok = True
    for key, given in value.items():
        if key not in keys:
            hint = (
                f" ({key} belongs to the {'v2' if api == 'v1' else 'v1'} API; INFLUX_* selects {api})"
                if key in other
                else ""
            )
            bad(f"destination: unknown field {key!r} (known: {', '.join(keys)}){hint}")
            ok = False
            continue
        if isinstance(given, str) and given.strip() and given == given.strip():
            out.append((key, given))
        elif isinstance(given, dict) and len(given) == 1 and next(iter(given)) in LABEL_SELECTORS:
            selector, label_key = next(iter(given.items()))
            if not _label_key(label_key, _prefixed(bad, f"destination {key}: ")):
                ok = False
                continue
            out.append((key, LabelRef(selector[: -len("_label")], label_key)))
        else:
            bad(
                f"destination {key}: must be a name (no surrounding spaces) or "
                f"{{org_label|space_label|app_label: <label key>}}"
            )
            ok = False
    if ok and REQUIRED_KEY[api] not in dict(out):
        bad(f"destination: `{REQUIRED_KEY[api]}` is required")
        ok = False
    return tuple(out) if ok else None


# ---------------------------------------------------------------------------------------- runtime


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


def routing_book(config: Config) -> WatchedDocument[RoutingTable] | None:
    """The configured routing table (ROUTES_FILE or ROUTES_KEY in METADATA_BUCKET), not loaded yet."""
    if not (config.routes_file or config.routes_key) or config.influx is None:
        return None
    from .metadata.store import FileSnapshotSource, S3SnapshotSource
    from .watched import WatchedDocument

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


def build_router(config: Config, store: MetadataStore) -> Router | None:
    """The enricher's router (None: no routing table configured)."""
    book = routing_book(config)
    return Router(book, store) if book is not None else None
