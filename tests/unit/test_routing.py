"""Tenant routing: the table's validation, the route function, the router's memo and the snapshot's labels."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from refinery.metadata.snapshot import AppInfo, decode_snapshot, encode_snapshot
from refinery.metadata.store import MetadataStore, SnapshotSource
from refinery.routing import (
    Destination,
    Router,
    RoutesError,
    RoutesUnavailable,
    Subject,
    parse_routes,
    route,
)
from refinery.watched import WatchedDocument

LABEL = "metrics.example.com/database"
TABLE = f"""
routes:
  - name: team-a
    match: {{org: team-a}}
    to: {{database: team_a, retention_policy: four_weeks}}
  - name: payments
    match: {{space: {{regex: "payments-.*"}}}}
    to: {{database: payments}}
  - name: one app
    match: {{app_guid: 00000000-0000-4000-8000-00000000000a}}
    to: {{database: special}}
  - name: gold apps
    match: {{app_label: {{tier: gold}}}}
    to: {{database: gold}}
  - name: labelled orgs
    to: {{database: {{org_label: {LABEL}}}}}
default: {{database: cf}}
"""
KEYS = frozenset({LABEL, "tier"})


def app(
    guid: str = "00000000-0000-4000-8000-000000000001",
    org: str = "org-x",
    space: str = "space-x",
    org_labels: tuple[tuple[str, str], ...] = (),
    app_labels: tuple[tuple[str, str], ...] = (),
) -> AppInfo:
    return AppInfo(guid, "app", "s-guid-" + space, space, "o-guid-" + org, org, org_labels, (), app_labels)


def test_first_matching_route_wins_and_the_default_takes_the_rest() -> None:
    table = parse_routes(TABLE, "routes.yaml", label_keys=KEYS)
    assert route(table, Subject.of_app(app(org="team-a", space="payments-eu"))) == (
        Destination("team_a", "four_weeks"),
        "team-a",
    )
    assert route(table, Subject.of_app(app(space="payments-eu"))) == (Destination("payments"), "payments")
    assert route(table, Subject.of_app(app(space="xpayments-eu")))[1] == "default"  # regex: whole value
    special = app(guid="00000000-0000-4000-8000-00000000000a")
    assert route(table, Subject.of_app(special)) == (Destination("special"), "one app")
    gold = app(app_labels=(("tier", "gold"),), org_labels=((LABEL, "team_l"),))
    assert route(table, Subject.of_app(gold)) == (Destination("gold"), "gold apps")
    labelled = app(org_labels=((LABEL, "team_l"),))
    assert route(table, Subject.of_app(labelled)) == (Destination("team_l"), "labelled orgs")
    # a route whose label is not set does not apply: the next one (here the default) does
    assert route(table, Subject.of_app(app())) == (Destination("cf"), "default")


def test_points_without_an_app_are_routed_by_their_own_tags() -> None:
    table = parse_routes(TABLE, "routes.yaml", label_keys=KEYS)
    assert route(table, Subject.of_tags({"org": "team-a"}))[0] == Destination("team_a", "four_weeks")
    assert route(table, Subject.of_tags({}))[0] == Destination("cf")


def test_every_problem_is_named_at_once() -> None:
    bad = """
routes:
  - name: a
    match: {org: {regex: "("}, colour: red}
    to: {bucket: x}
  - name: a
    to: {database: {org_label: other.example.com/db}}
  - match: {space: ""}
  - to: {database: " padded"}
unknown: 1
"""
    with pytest.raises(RoutesError) as caught:
        parse_routes(bad, "routes.yaml", label_keys=KEYS, default=Destination("cf"))
    text = "\n".join(caught.value.problems)
    for expected in (
        "unknown top-level key 'unknown'",
        "route 'a': match org: '(' is not a valid regular expression",
        "route 'a': match: unknown condition 'colour'",
        "route 'a': destination: unknown field 'bucket' (known: database, retention_policy) "
        "(bucket belongs to the v2 API; INFLUX_* selects v1)",
        "route 'a': another route has the same name",
        "route #3: match space: must be a non-empty string",
        "route #3: no destination `to`",
        "route #4: destination database: must be a name (no surrounding spaces)",
    ):
        assert expected in text, text


def test_a_label_the_refresh_does_not_keep_is_refused() -> None:
    with pytest.raises(RoutesError, match=r"label '[^']+/database' is not in ROUTES_LABEL_KEYS"):
        parse_routes(TABLE, "routes.yaml", label_keys=frozenset({"tier"}))


def test_v2_destinations_are_buckets_and_the_default_comes_from_the_settings() -> None:
    table = parse_routes(
        "routes:\n  - match: {org: a}\n    to: {bucket: a, org: acme}\n",
        "r.yaml",
        api="v2",
        default=Destination(bucket="main"),
    )
    assert route(table, Subject(org="a"))[0].params() == {"bucket": "a", "db": "a", "org": "acme"}
    assert route(table, Subject(org="b"))[0] == Destination(bucket="main")
    with pytest.raises(RoutesError, match="no `default` destination"):
        parse_routes("routes: []", "r.yaml")


def test_snapshot_keeps_labels_per_org_space_and_app_and_without_them_is_unchanged() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    plain = {"a": AppInfo("a", "app", "s", "space", "o", "org")}
    labelled = {"a": AppInfo("a", "app", "s", "space", "o", "org", ((LABEL, "team"),), (("x", "y"),), ())}
    assert b"labels" not in __import__("gzip").decompress(encode_snapshot(plain, "src", moment))
    back = decode_snapshot(encode_snapshot(labelled, "src", moment), lazy=True)
    assert back.apps["a"] == labelled["a"]
    assert decode_snapshot(encode_snapshot(plain, "src", moment)).apps == plain


class _Bytes(SnapshotSource):
    def __init__(self, data: bytes, description: str = "memory"):
        self.data = data
        self.description = description
        self.etag = 0

    def set(self, data: bytes) -> None:
        self.data = data
        self.etag += 1

    def fetch(self, etag: str | None) -> tuple[bytes | None, str | None]:
        current = str(self.etag)
        return (None, etag) if etag == current else (self.data, current)


def _router(apps: dict[str, AppInfo], table: str = TABLE) -> tuple[Router, _Bytes, _Bytes, list[float]]:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    now = [0.0]
    snapshot = _Bytes(encode_snapshot(apps, "src", moment))
    store = MetadataStore(snapshot, check_interval=10, clock=lambda: now[0], live_max=0)
    tables = _Bytes(table.encode(), "routes.yaml")
    book = WatchedDocument(
        tables,
        lambda data, origin: parse_routes(data, origin, label_keys=KEYS),
        invalid=RoutesError,
        unavailable=RoutesUnavailable,
        check_interval=10,
        clock=lambda: now[0],
    )
    return Router(book, store), snapshot, tables, now


def test_router_routes_a_line_by_its_app_and_follows_relabelling_and_table_changes() -> None:
    guid = "00000000-0000-4000-8000-000000000001"
    apps = {guid: app(guid, org_labels=((LABEL, "team_l"),))}
    router, snapshot, tables, now = _router(apps)
    line = f"log,app=app,app_guid={guid},instance=0,org=org-x count=1i 1"
    router.store.begin_invocation()
    router.begin_invocation()
    assert router.route_of(line) == (Destination("team_l"), "labelled orgs")
    # relabelled: the refresh writes a new snapshot; once the store loads it, the route follows
    apps[guid] = app(guid, org_labels=((LABEL, "team_m"),))
    snapshot.set(encode_snapshot(apps, "src", datetime(2026, 1, 2, tzinfo=UTC)))
    router.begin_invocation()
    assert router.destination(line) == Destination("team_l")  # not checked yet: the memo stands
    now[0] = 11
    router.store.begin_invocation()
    router.begin_invocation()
    assert router.destination(line) == Destination("team_m")
    # a new table: taken at its next check; an invalid one keeps the table in force
    tables.set(b"routes: []\ndefault: {database: other}\n")
    now[0] = 22
    router.begin_invocation()
    assert router.destination(line) == Destination("other")
    tables.set(b"routes: [1]\n")
    now[0] = 33
    router.begin_invocation()
    assert router.destination(line) == Destination("other")
    assert router.book.stats.failures == 1 and "route #1" in router.book.stats.last_error
    # a line without app_guid (a rule's aggregate) is routed by its own tags
    assert router.destination("http_5xx,org=team-a sum=1 1") == Destination("other")


def test_the_first_load_of_an_invalid_table_fails_naming_its_problem() -> None:
    router, *_ = _router({}, table="routes: {}\n")
    with pytest.raises(RoutesError, match="`routes` must be a list"):
        router.begin_invocation()
