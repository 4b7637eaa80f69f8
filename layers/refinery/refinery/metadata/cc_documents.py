"""The Cloud Controller's v3 documents read into :class:`~refinery.metadata.snapshot.AppInfo`.

An app page's resources joined to its ``included`` spaces and orgs (``include=space.organization``),
the labels kept for tenant routing, and what was dropped and why (:class:`ListStats`). Documents are
read defensively: a malformed resource is counted and skipped, never trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from refinery.metadata.gcpause import gc_paused
from refinery.metadata.snapshot import AppInfo, Labels

#: How many unresolvable app GUIDs :class:`ListStats` keeps as a sample.
SAMPLE_LIMIT = 10


@dataclass(slots=True)
class ListStats:
    """What :meth:`CloudControllerClient.list_apps` saw.

    ``apps`` counts apps in the result; ``resources`` counts app resources received (including
    duplicates — keyset pages overlap on the creation second at their boundary — and unresolvable ones).
    Apps whose space or org was not in ``included`` are dropped from the result but counted in
    ``missing_space`` / ``missing_org`` (a few GUIDs kept in ``unresolved``). ``per_page`` is the page
    size finally used (smaller than asked when the Cloud Controller caps ``max_total_results``).
    """

    pages: int = 0
    apps: int = 0
    spaces: int = 0
    orgs: int = 0
    resources: int = 0
    duplicates: int = 0
    malformed: int = 0
    missing_space: int = 0
    missing_org: int = 0
    per_page: int = 0
    unresolved: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return self.malformed + self.missing_space + self.missing_org


def loads_acyclic(body: bytes) -> Any:
    """``orjson.loads`` with the cyclic garbage collector paused (see :mod:`.gcpause`) while it runs.

    A 5000-app page with ``include`` is ~9 MB of JSON: ~200 000 dicts and lists, all new and all
    surviving the parse, so the collector runs hundreds of times meanwhile, and full collections over
    everything else the process holds (boto3's models, the apps listed so far) more than double the
    cost of the parse. A parsed document has no reference cycles, so there is nothing to collect in it.
    """
    with gc_paused():
        return orjson.loads(body)


def collect_apps(
    resources: list[Any],
    raw_apps: dict[str, tuple[str, str | None]],
    stats: ListStats,
    labels: dict[str, Labels] | None = None,
    label_keys: frozenset[str] = frozenset(),
) -> None:
    for resource in resources:
        stats.resources += 1
        guid, name = get_str(resource, "guid"), get_str(resource, "name")
        if guid is None or name is None:
            stats.malformed += 1
            continue
        if guid in raw_apps:
            stats.duplicates += 1
        raw_apps[guid] = (name, relationship_guid(resource, "space"))
        if labels is not None:
            keep_labels(resource, guid, labels, label_keys)


def keep_labels(resource: Any, guid: str, labels: dict[str, Labels], keys: frozenset[str]) -> None:
    """The values of ``keys`` among a v3 resource's ``metadata.labels`` (string values only)."""
    metadata = resource.get("metadata") if isinstance(resource, Mapping) else None
    found = metadata.get("labels") if isinstance(metadata, Mapping) else None
    if not isinstance(found, Mapping):
        labels.pop(guid, None)
        return
    kept = tuple(sorted((k, v) for k, v in found.items() if k in keys and isinstance(v, str) and v))
    if kept:
        labels[guid] = kept
    else:
        labels.pop(guid, None)


def link_href(links: Any, name: str) -> str | None:
    if not isinstance(links, Mapping):
        return None
    link = links.get(name)
    href = link.get("href") if isinstance(link, Mapping) else None
    return href if isinstance(href, str) and href else None


def get_str(doc: Any, key: str) -> str | None:
    value = doc.get(key) if isinstance(doc, Mapping) else None
    return value if isinstance(value, str) else None


def relationship_guid(resource: Mapping[str, Any], name: str) -> str | None:
    try:
        guid = resource["relationships"][name]["data"]["guid"]
    except (KeyError, TypeError):
        return None
    return guid if isinstance(guid, str) else None


def collect_included(
    included: Any,
    spaces: dict[str, tuple[str, str | None]],
    orgs: dict[str, str],
    labels: dict[str, Labels] | None = None,
    label_keys: frozenset[str] = frozenset(),
) -> None:
    if not isinstance(included, Mapping):
        return
    for space in included.get("spaces") or ():
        guid, name = get_str(space, "guid"), get_str(space, "name")
        if guid is not None and name is not None:
            spaces[guid] = (name, relationship_guid(space, "organization"))
            if labels is not None:
                keep_labels(space, guid, labels, label_keys)
    for org in included.get("organizations") or ():
        guid, name = get_str(org, "guid"), get_str(org, "name")
        if guid is not None and name is not None:
            orgs[guid] = name
            if labels is not None:
                keep_labels(org, guid, labels, label_keys)


def join_apps(
    guid: str,
    name: str,
    space_guid: str | None,
    spaces: Mapping[str, tuple[str, str | None]],
    orgs: Mapping[str, str],
    stats: ListStats,
    labels: Mapping[str, Labels] | None = None,
) -> AppInfo | None:
    if space_guid is None or (space := spaces.get(space_guid)) is None:
        stats.missing_space += 1
        sample_unresolved(stats, guid)
        return None
    space_name, org_guid = space
    if org_guid is None or (org_name := orgs.get(org_guid)) is None:
        stats.missing_org += 1
        sample_unresolved(stats, guid)
        return None
    if labels:
        return AppInfo(
            guid,
            name,
            space_guid,
            space_name,
            org_guid,
            org_name,
            labels.get(org_guid, ()),
            labels.get(space_guid, ()),
            labels.get(guid, ()),
        )
    return AppInfo(guid, name, space_guid, space_name, org_guid, org_name)


def sample_unresolved(stats: ListStats, guid: str) -> None:
    if len(stats.unresolved) < SAMPLE_LIMIT:
        stats.unresolved.append(guid)
