"""Filters and extra tags: which points are written, and static tags added to every point.

Patterns are Python regular expressions matched against the **whole** name (like PromQL's ``=~``):
``FILTER_EXCLUDE_APPS=test-.*|.*-canary`` drops the points of apps named ``test-…`` or ``…-canary``.
A point is kept when, for each of measurement, org, space and app, the include pattern (if set)
matches and the exclude pattern (if set) does not. Names are matched as the Cloud Controller gives
them (unescaped); a point without the tag is matched as the empty string.

Extra tags (``EXTRA_TAGS=foundation=eu-prod,region=eu``) are added to every point, escaped, and
placed in sorted order so that the line stays canonical line protocol. Their keys may not be one of
the schema's own tags (nor ``partition``, which recording rules add).

Decisions are made once per series key (measurement and tags) per batch, not once per point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from .lineparse import pair_key, parse_series, split_series, unescape_measurement
from .lineproto import escape_tag

#: Tags the schema writes (convert.py) and the one recording rules add: extra tags may not use them.
RESERVED_TAGS = frozenset(
    {
        "app",
        "app_guid",
        "instance",
        "method",
        "org",
        "org_guid",
        "space",
        "space_guid",
        "status_code",
        "type",
        "partition",
    }
)
_TAG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_regex(text: str) -> re.Pattern[str]:
    """A setting holding a regular expression (matched against whole names)."""
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"{text!r} is not a regular expression: {exc}") from None


def parse_extra_tags(text: str) -> tuple[tuple[str, str], ...]:
    """``key=value,key2=value2`` -> sorted pairs; keys are identifiers, values non-empty, no commas."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not value:
            raise ValueError(f"{item!r} is not key=value (example: foundation=eu-prod,region=eu)")
        if not _TAG_KEY.match(key):
            raise ValueError(f"tag key {key!r} must be letters, digits and _ (not starting with a digit)")
        if key in RESERVED_TAGS:
            raise ValueError(f"tag key {key!r} is one of the schema's own tags")
        if key in pairs:
            raise ValueError(f"tag key {key!r} is given twice")
        if not escape_tag(value):
            raise ValueError(f"the value of {key!r} cannot be written as a tag")
        pairs[key] = value
    return tuple(sorted(pairs.items()))


@dataclass(frozen=True)
class PointFilter:
    include_measurements: re.Pattern[str] | None = None
    exclude_measurements: re.Pattern[str] | None = None
    include_orgs: re.Pattern[str] | None = None
    exclude_orgs: re.Pattern[str] | None = None
    include_spaces: re.Pattern[str] | None = None
    exclude_spaces: re.Pattern[str] | None = None
    include_apps: re.Pattern[str] | None = None
    exclude_apps: re.Pattern[str] | None = None
    extra_tags: tuple[tuple[str, str], ...] = ()

    @property
    def active(self) -> bool:
        return any(getattr(self, name) for name in self.__dataclass_fields__)

    @property
    def filters_names(self) -> bool:
        return any(
            (
                self.include_orgs,
                self.exclude_orgs,
                self.include_spaces,
                self.exclude_spaces,
                self.include_apps,
                self.exclude_apps,
            )
        )

    def keeps(self, series: str) -> bool:
        """Whether the point of this series key (escaped, as written) passes the filters."""
        if self.include_measurements or self.exclude_measurements:
            measurement = unescape_measurement(split_series(series)[0])
            if not _passes(measurement, self.include_measurements, self.exclude_measurements):
                return False
        if self.filters_names:
            _, tags = parse_series(series)
            get = tags.get
            return (
                _passes(get("org", ""), self.include_orgs, self.exclude_orgs)
                and _passes(get("space", ""), self.include_spaces, self.exclude_spaces)
                and _passes(get("app", ""), self.include_apps, self.exclude_apps)
            )
        return True

    def with_extra_tags(self, series: str) -> str:
        """The series key with the extra tags inserted in sorted order."""
        if not self.extra_tags:
            return series
        measurement, pairs = split_series(series)
        pairs.extend(self.escaped_extra_tags)
        pairs.sort(key=pair_key)
        return ",".join([measurement, *pairs])

    @cached_property
    def escaped_extra_tags(self) -> list[str]:
        return [f"{escape_tag(k)}={escape_tag(v)}" for k, v in self.extra_tags]

    def rewrite(self, series: str) -> str | None:
        """None when the point is filtered out, else its series key with the extra tags."""
        if not self.keeps(series):
            return None
        return self.with_extra_tags(series)


def _passes(value: str, include: re.Pattern[str] | None, exclude: re.Pattern[str] | None) -> bool:
    if include is not None and include.fullmatch(value) is None:
        return False
    return exclude is None or exclude.fullmatch(value) is None
