"""The routing table's model: destinations, conditions, routes, and the route of a subject."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..metadata.snapshot import AppInfo

SUBJECT_FIELDS = ("org", "org_guid", "space", "space_guid", "app", "app_guid")
LABEL_LEVELS = ("org", "space", "app")
LABEL_SELECTORS = tuple(f"{level}_label" for level in LABEL_LEVELS)
ROUTE_KEYS = ("name", "match", "to")
TOP_KEYS = ("routes", "default")
DESTINATION_KEYS = {"v1": ("database", "retention_policy"), "v2": ("bucket", "org")}
REQUIRED_KEY = {"v1": "database", "v2": "bucket"}
#: Most app GUIDs whose route is remembered (then the memo starts again).


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
