"""A multi-tenant foundation for the tenant-routing tests: apps in four orgs, the routing table, and
what each record's point must become and where it must land."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from faults import make_values

from refinery.metadata.snapshot import AppInfo, encode_snapshot
from refinery_tools.events import build_kafka_event

LABEL = "metrics.example.com/database"


def _guid(n: int) -> str:
    return str(uuid.UUID(int=(21 << 96) + n, version=4))


@dataclass(frozen=True)
class Tenant:
    org: str
    org_labels: tuple[tuple[str, str], ...] = ()


#: team-a by name, team-b by its org label, team-c to a database that does not exist (yet), the rest
#: by default; in "shared", the payments-* spaces by regex and one app by GUID.
ORGS = {
    "team-a": Tenant("team-a"),
    "team-b": Tenant("team-b", ((LABEL, "team_b_db"),)),
    "team-c": Tenant("team-c"),
    "shared": Tenant("shared"),
}
SPECIAL_APP = _guid(99)


def routes_yaml(db: dict[str, str], default: str) -> str:
    """The table: ``db`` maps a role (team_a, payments, special, team_c) to a database name."""
    return f"""
routes:
  - name: team-a by name
    match: {{org: team-a}}
    to: {{database: {db["team_a"]}}}
  - name: team-c
    match: {{org_guid: {_guid(1002)}}}
    to: {{database: {db["team_c"]}}}
  - name: one app by GUID
    match: {{app_guid: {SPECIAL_APP}}}
    to: {{database: {db["special"]}}}
  - name: payments spaces
    match: {{space: {{regex: "payments-.*"}}}}
    to: {{database: {db["payments"]}}}
  - name: labelled orgs
    to: {{database: {{org_label: {LABEL}}}}}
default: {{database: {default}}}
"""


def make_apps(labels: dict[str, tuple[tuple[str, str], ...]] | None = None) -> dict[str, AppInfo]:
    """Two apps per org (in "shared": one in payments-eu, one in web, and the special app)."""
    apps: dict[str, AppInfo] = {}
    for o, (name, tenant) in enumerate(ORGS.items()):
        org_guid = _guid(1000 + o)
        org_labels = (labels or {}).get(name, tenant.org_labels)
        spaces = ["payments-eu", "web"] if name == "shared" else ["dev", "prod"]
        for s, space in enumerate(spaces):
            guid = _guid(10 * o + s)
            apps[guid] = AppInfo(
                guid, f"{name}-app-{s}", _guid(2000 + 10 * o + s), space, org_guid, name, org_labels, (), ()
            )
    apps[SPECIAL_APP] = AppInfo(
        SPECIAL_APP, "special", _guid(2031), "web", _guid(1003), "shared", ORGS["shared"].org_labels, (), ()
    )
    return apps


def snapshot(apps: dict[str, AppInfo], day: int = 1) -> bytes:
    return encode_snapshot(apps, "https://api.sys.example.com", datetime(2026, 1, day, tzinfo=UTC))


def expected_role(info: AppInfo, labels_of: dict[str, str] | None = None) -> str:
    """Where the table sends an app's points: a role of :func:`routes_yaml`, a label's value, or default."""
    if info.org_name == "team-a":
        return "team_a"
    if info.org_name == "team-c":
        return "team_c"
    if info.guid == SPECIAL_APP:
        return "special"
    if info.space_name.startswith("payments-"):
        return "payments"
    label = dict(info.org_labels).get(LABEL)
    return f"label:{label}" if label else "default"


def batch(apps: dict[str, AppInfo], count: int = 120, salt: int = 0, partitions: int = 3) -> dict[str, Any]:
    values = make_values(
        count,
        list(apps),
        kinds=("http", "log", "container"),
        salt=salt,
        start_ns=1_700_000_000_000_000_000 + salt * 10**12,
    )
    return build_kafka_event(values.values, partitions=partitions)


def app_guids(points: dict[str, list[dict[str, Any]]]) -> Counter[str]:
    return Counter(p["tags"]["app_guid"] for rows in points.values() for p in rows)
