"""The routing table's YAML read and validated: every problem named at once, with its route."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .model import (
    DESTINATION_KEYS,
    LABEL_SELECTORS,
    REQUIRED_KEY,
    ROUTE_KEYS,
    SUBJECT_FIELDS,
    TOP_KEYS,
    Destination,
    LabelRef,
    Pattern,
    Route,
    RoutesError,
    RoutingTable,
)


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
