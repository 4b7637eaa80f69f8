"""Tenant routing against real servers: InfluxDB 1.x (several databases, one missing) and
VictoriaMetrics (the v2 write API). Points land exactly where the table says, per org, space, app and
label; a missing database quarantines only its tenant's records; a relabelled org's next points move."""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import accounted, stored
from routing_world import (
    LABEL,
    app_guids,
    batch,
    expected_role,
    make_apps,
    routes_yaml,
    snapshot,
)

from refinery.config import InfluxConfig
from refinery.metadata.snapshot import AppInfo
from refinery.metadata.store import FileSnapshotSource, MetadataStore
from refinery.pipeline import process_batch
from refinery.quarantine import Quarantine, decode_records
from refinery.routing import Destination, Router, RoutesError, RoutesUnavailable, parse_routes
from refinery.sinks import Deadline
from refinery.sinks.influx_v1 import InfluxV1Sink
from refinery.sinks.influx_v2 import InfluxV2Sink
from refinery.sinks.routed import RoutedSink
from refinery.watched import WatchedDocument
from refinery_tools.dev.servers import InfluxDB1Server, VictoriaMetricsServer

pytestmark = pytest.mark.integration


class Files:
    """The snapshot and the routing table as files a warm container re-checks (mtime and size)."""

    def __init__(self, root: Path, apps: dict[str, AppInfo], table: str):
        self.snapshot = root / "apps.json.gz"
        self.table = root / "routes.yaml"
        self.write_snapshot(apps)
        self.table.write_text(table)

    def write_snapshot(self, apps: dict[str, AppInfo], day: int = 1) -> None:
        self.snapshot.write_bytes(snapshot(apps, day))


def router_for(files: Files, default: Destination, api: str = "v1") -> Router:
    store = MetadataStore(FileSnapshotSource(str(files.snapshot)), check_interval=0.0, live_max=0)
    book = WatchedDocument(
        FileSnapshotSource(str(files.table)),
        lambda data, origin: parse_routes(
            data, origin, api=api, default=default, label_keys=frozenset({LABEL})
        ),
        invalid=RoutesError,
        unavailable=RoutesUnavailable,
        check_interval=0.0,
    )
    return Router(book, store)


def deadline() -> Deadline:
    return Deadline(lambda: 30_000, reserve=0.0)


@pytest.fixture
def databases(influxdb1: InfluxDB1Server) -> Iterator[dict[str, str]]:
    """Per role a fresh database name; all exist but team_c's (and the labelled team's, team_b_db)."""
    suffix = uuid.uuid4().hex[:8]
    names = {role: f"{role}_{suffix}" for role in ("team_a", "team_c", "special", "payments", "default")}
    for role, name in names.items():
        if role != "team_c":
            influxdb1.create_database(name)
    influxdb1.create_database("team_b_db")
    yield names
    for name in [*names.values(), "team_b_db"]:
        with contextlib.suppress(RuntimeError):
            influxdb1.drop_database(name)


def where_stored(influx: InfluxDB1Server, names: list[str]) -> dict[str, dict[str, int]]:
    """Per database, the points per app GUID."""
    return {name: dict(app_guids(stored(influx, name))) for name in names}


def test_points_land_where_the_table_says_and_a_missing_database_holds_only_its_tenant(
    influxdb1: InfluxDB1Server, databases: dict[str, str], tmp_path: Path
) -> None:
    apps = make_apps()
    files = Files(tmp_path, apps, routes_yaml(databases, databases["default"]))
    config = InfluxConfig(
        url=influxdb1.url, api="v1", database=databases["default"], batch_size=7, write_concurrency=2
    )
    router = router_for(files, Destination(databases["default"]))
    sink = RoutedSink(InfluxV1Sink(config), router)
    quarantine = Quarantine(None, "quarantine/", str(tmp_path / "q"))
    event = batch(apps)
    try:
        result = process_batch(event, router.store, sink, quarantine, deadline())
    finally:
        sink.close()
    summary = result.summary()
    assert accounted(summary), summary

    def database(info: AppInfo) -> str:
        role = expected_role(info)
        return role.split(":", 1)[1] if role.startswith("label:") else databases[role]

    per_app: dict[str, int] = {}
    names = [*databases.values(), "team_b_db"]
    got = where_stored(influxdb1, [n for n in names if n != databases["team_c"]])
    # every app's points are all in its database, and nowhere else
    for guid, info in apps.items():
        holders = {name for name, counts in got.items() if guid in counts}
        if expected_role(info) == "team_c":
            assert holders == set(), (info, holders)
            continue
        assert holders == {database(info)}, (info.org_name, info.space_name, holders)
        per_app[guid] = got[database(info)][guid]
    assert all(per_app.values()) and {"team_b_db", databases["payments"], databases["special"]} <= {
        database(apps[g]) for g in per_app
    }
    # team-c's database does not exist: only its records wait in the quarantine, with the reason
    team_c = {g for g, info in apps.items() if info.org_name == "team-c"}
    assert set(summary["quarantined_by_reason"]) == {"destination_unavailable"}, summary
    assert summary["written"] == sum(per_app.values()), summary
    [path] = list((tmp_path / "q").rglob("*.jsonl.gz"))
    entries = decode_records(path.read_bytes())
    assert len(entries) == summary["quarantined"]
    assert {e["line"].split("app_guid=", 1)[1][:36] for e in entries} == team_c
    assert all(e["sink"] == "influxdb-v1" and "database not found" in e["detail"] for e in entries)
    assert all(databases["team_c"] in e["detail"] for e in entries)


def test_a_relabelled_org_moves_its_next_points_and_keeps_its_earlier_ones(
    influxdb1: InfluxDB1Server, databases: dict[str, str], tmp_path: Path
) -> None:
    apps = make_apps()
    files = Files(tmp_path, apps, routes_yaml(databases, databases["default"]))
    config = InfluxConfig(url=influxdb1.url, api="v1", database=databases["default"], batch_size=50)
    router = router_for(files, Destination(databases["default"]))
    sink = RoutedSink(InfluxV1Sink(config), router)
    quarantine = Quarantine(None, "quarantine/", str(tmp_path / "q"))
    team_b = {g: a for g, a in apps.items() if a.org_name == "team-b"}
    try:
        first = process_batch(batch(team_b, 30), router.store, sink, quarantine, deadline())
        # the refresh picks up the new label value (a new snapshot); the next batch goes there
        influxdb1.create_database("team_b_new")
        relabelled = make_apps({"team-b": ((LABEL, "team_b_new"),)})
        files.write_snapshot(relabelled, day=2)
        second = process_batch(
            batch({g: relabelled[g] for g in team_b}, 30, salt=1), router.store, sink, quarantine, deadline()
        )
    finally:
        sink.close()
    assert first.written == second.written == 30 and not first.quarantined and not second.quarantined
    old, new = stored(influxdb1, "team_b_db"), stored(influxdb1, "team_b_new")
    influxdb1.drop_database("team_b_new")
    assert sum(app_guids(old).values()) == 30 and sum(app_guids(new).values()) == 30
    assert {p["time"] for rows in old.values() for p in rows}.isdisjoint(
        {p["time"] for rows in new.values() for p in rows}
    )


def test_v2_api_routes_each_tenant_to_its_bucket_on_victoriametrics(
    victoriametrics: VictoriaMetricsServer, tmp_path: Path
) -> None:
    """VictoriaMetrics keeps the destination as the `db` label of every sample (it ignores `bucket` on
    /api/v2/write and reads `db`, which the routed sink sends too)."""
    apps = make_apps()
    table = f"""
routes:
  - match: {{org: team-a}}
    to: {{bucket: team_a, org: acme}}
  - to: {{bucket: {{org_label: {LABEL}}}}}
default: {{bucket: main}}
"""
    files = Files(tmp_path, apps, table)
    config = InfluxConfig(
        url=victoriametrics.url, api="v2", token="t", org="acme", bucket="main", batch_size=20
    )
    router = router_for(files, Destination(bucket="main"), api="v2")
    sink = RoutedSink(InfluxV2Sink(config), router)
    event = batch(apps, 60, salt=7)
    try:
        quarantine = Quarantine(None, "q/", str(tmp_path / "q"))
        result = process_batch(event, router.store, sink, quarantine, deadline())
    finally:
        sink.close()
    assert result.written == 60 and not result.quarantined, result.summary()
    series = victoriametrics.export('{__name__=~"http_request_.*|log_.*|instance_.*"}', min_samples=1)
    buckets: dict[str, set[str]] = {}
    for s in series:
        metric = s["metric"]
        if metric.get("app_guid") in apps:
            buckets.setdefault(metric["app_guid"], set()).add(metric.get("db", ""))
    for guid, info in apps.items():
        want = "team_a" if info.org_name == "team-a" else "team_b_db" if info.org_name == "team-b" else "main"
        assert buckets.get(guid) == {want}, (info.org_name, buckets.get(guid))


def _clear_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from refinery.config import SETTINGS

    for setting in SETTINGS:
        for suffix in ("", "_SECRET", "_PARAMETER"):
            monkeypatch.delenv(setting.name + suffix, raising=False)


def test_the_enricher_routes_quarantines_a_missing_database_and_replay_delivers_it_once_it_exists(
    influxdb1: InfluxDB1Server,
    databases: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    invoke: Any,
) -> None:
    """The deployed shape: settings, the real handler, the quarantine in a directory, `refinery replay`."""
    from refinery_tools.config_check import run_check
    from refinery_tools.replay import replay

    apps = make_apps()
    files = Files(tmp_path, apps, routes_yaml(databases, databases["default"]))
    _clear_settings(monkeypatch)
    for name, value in {
        "INFLUX_URL": influxdb1.url,
        "INFLUX_DATABASE": databases["default"],
        "INFLUX_BATCH_SIZE": "9",
        "METADATA_FILE": str(files.snapshot),
        "QUARANTINE_DIR": str(tmp_path / "q"),
        "ROUTES_FILE": str(files.table),
        "ROUTES_LABEL_KEYS": LABEL,
        "REPORT_BATCH_ITEM_FAILURES": "true",
    }.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    assert run_check(offline=True, out=out) == 0, out.getvalue()
    event = batch(apps, 90)
    answer = invoke(event)
    summary = answer["summary"]
    assert accounted(summary) and not answer["batchItemFailures"], summary
    team_c = {g for g, a in apps.items() if a.org_name == "team-c"}
    waiting = summary["quarantined_by_reason"]["destination_unavailable"]
    assert waiting and set(summary["quarantined_by_reason"]) == {"destination_unavailable"}
    assert summary["written"] + waiting == summary["records_in"] - summary["dropped"]
    # replayed while it is still missing: refused again for the same reason, and quarantined again
    early = replay(str(tmp_path / "q"))
    assert early.written == 0 and early.still_refused == {"destination_unavailable": waiting}, early.as_dict()
    # team-c's database is created: the replay routes its records there, and only there
    influxdb1.create_database(databases["team_c"])
    report = replay(str(tmp_path / "q"))
    assert report.written == waiting and not report.still_refused, report.as_dict()
    assert set(app_guids(stored(influxdb1, databases["team_c"]))) == team_c
    assert sum(app_guids(stored(influxdb1, databases["team_c"])).values()) == waiting
    # a second replay writes nothing new (the same points)
    again = replay(str(tmp_path / "q"))
    assert not again.still_refused
    assert sum(app_guids(stored(influxdb1, databases["team_c"])).values()) == waiting
    # an invalid table is named by `refinery config --check`, route and field
    files.table.write_text("routes:\n  - match: {org: x}\n    to: {bucket: b}\n")
    out = io.StringIO()
    assert run_check(offline=True, out=out) == 1
    assert "ROUTES_FILE:" in out.getvalue() and "unknown field 'bucket'" in out.getvalue(), out.getvalue()


def test_a_label_change_picked_up_by_the_next_refresh_reroutes_new_points(
    influxdb1: InfluxDB1Server,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    invoke: Any,
) -> None:
    """Fake Cloud Controller (labels as CC v3 returns them) -> the real refresh -> S3 -> the enricher."""
    import time

    import boto3

    from refinery.metadata.cc_client import CloudControllerClient
    from refinery.metadata.refresh import refresh_snapshot
    from refinery.metadata.snapshot import decode_snapshot
    from refinery_tools.dev.fake_cc import FakeCloudController, Foundation

    suffix = uuid.uuid4().hex[:8]
    first, second, default = (f"{n}_{suffix}" for n in ("tenant_one", "tenant_two", "main"))
    for name in (first, second, default):
        influxdb1.create_database(name)
    foundation = Foundation()
    org = foundation.add_org("team-b")
    other = foundation.add_org("unlabelled")
    apps = [
        foundation.add_app(f"app-{i}", foundation.add_space(f"space-{i}", o.guid).guid).guid
        for i, o in enumerate((org, org, other))
    ]
    foundation.set_labels(org.guid, {LABEL: first, "unrelated.example.com/x": "y"})
    # labels of a space and an app too (the route reads the org's): kept per level, only LABEL's key
    foundation.set_labels(foundation.apps[apps[0]].space_guid, {LABEL: "space-level", "other": "z"})
    foundation.set_labels(apps[1], {LABEL: "app-level"})
    s3 = boto3.client("s3")
    table = f"routes:\n  - to: {{database: {{org_label: {LABEL}}}}}\ndefault: {{database: {default}}}\n"
    (tmp_path / "routes.yaml").write_text(table)
    _clear_settings(monkeypatch)
    for name, value in {
        "INFLUX_URL": influxdb1.url,
        "INFLUX_DATABASE": default,
        "METADATA_BUCKET": s3_bucket,
        "SNAPSHOT_CHECK_INTERVAL": "100ms",
        "ROUTES_FILE": str(tmp_path / "routes.yaml"),
        "ROUTES_LABEL_KEYS": LABEL,
    }.items():
        monkeypatch.setenv(name, value)
    try:
        with FakeCloudController(foundation, client_id="refinery", client_secret="s") as cc:
            client = CloudControllerClient(cc.url, "refinery", "s", label_keys=[LABEL])

            def refresh() -> None:
                refresh_snapshot(client, s3, s3_bucket, "metadata/apps.json.gz", source=cc.url)
                body = s3.get_object(Bucket=s3_bucket, Key="metadata/apps.json.gz")["Body"].read()
                assert decode_snapshot(body).apps == foundation.app_infos([LABEL])  # kept keys only

            refresh()
            # a live lookup (an app missing from the snapshot) reads the same labels
            assert client.get_app(apps[1]) == foundation.app_info(apps[1], [LABEL])
            assert dict(client.get_app(apps[0]).space_labels) == {LABEL: "space-level"}  # type: ignore[union-attr]
            infos = foundation.app_infos()
            one = invoke(batch({g: infos[g] for g in apps}, 30))["summary"]
            foundation.set_labels(org.guid, {LABEL: second})
            refresh()
            time.sleep(0.2)  # SNAPSHOT_CHECK_INTERVAL: the warm enricher checks the snapshot again
            two = invoke(batch({g: infos[g] for g in apps}, 30, salt=3))["summary"]
            client.close()
        assert one["written"] == two["written"] == 30 and not one["quarantined"] and not two["quarantined"]
        team_b = set(apps[:2])
        assert set(app_guids(stored(influxdb1, first))) == team_b
        assert set(app_guids(stored(influxdb1, second))) == team_b
        before, after, rest = (app_guids(stored(influxdb1, n)) for n in (first, second, default))
        assert set(rest) == {apps[2]}
        # every team-b point of the first batch before the change, of the second after; nothing lost
        assert sum(before.values()) == sum(after.values()) == 30 - sum(rest.values()) // 2 > 0
    finally:
        for name in (first, second, default):
            influxdb1.drop_database(name)


def test_tap_shows_each_records_route(tmp_path: Path) -> None:
    """`refinery tap` (a subprocess, as a user runs it) names each written record's destination and route."""
    import json
    import os
    import subprocess
    import sys

    apps = make_apps()
    names = {role: role for role in ("team_a", "team_c", "special", "payments")}
    files = Files(tmp_path, apps, routes_yaml(names, "main"))
    event = tmp_path / "event.json"
    event.write_text(json.dumps(batch(apps, 27)))
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("INFLUX_", "METADATA_", "CF_", "ROUTES_"))
    }
    env = {
        **clean,
        "INFLUX_URL": "http://127.0.0.1:9",  # never contacted: tap writes nothing
        "INFLUX_DATABASE": "main",
        "METADATA_FILE": str(files.snapshot),
        "QUARANTINE_DIR": str(tmp_path / "q"),
        "ROUTES_FILE": str(files.table),
        "ROUTES_LABEL_KEYS": LABEL,
    }
    done = subprocess.run(
        [sys.executable, "-m", "refinery_tools.cli", "tap", "--event", str(event), "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    shown = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(shown) == 27 and all(t["outcome"] == "written" for t in shown)
    for tapped in shown:
        role = expected_role(apps[tapped["app_guid"]])
        database = role.split(":", 1)[1] if role.startswith("label:") else names.get(role, "main")
        assert tapped["route"].startswith(f"database {database!r}"), tapped
    routes = {t["route"] for t in shown}
    assert "database 'team_b_db', route 'labelled orgs'" in routes and "database 'main' (default)" in routes


def test_the_dashboards_data_source_picks_a_tenants_database(
    influxdb1: InfluxDB1Server, databases: dict[str, str], tmp_path: Path
) -> None:
    """The Grafana dashboard's queries, as its InfluxDB data source sends them, against each tenant's
    database (one data source per database, the one the `datasource` variable picks): each shows that
    tenant's orgs, spaces and apps only."""
    from test_grafana_dashboard import dashboard, interpolate, panel_targets, variable_queries

    apps = make_apps()
    files = Files(tmp_path, apps, routes_yaml(databases, databases["default"]))
    config = InfluxConfig(url=influxdb1.url, api="v1", database=databases["default"])
    router = router_for(files, Destination(databases["default"]))
    sink = RoutedSink(InfluxV1Sink(config), router)
    event = batch(apps, 120)
    try:
        process_batch(event, router.store, sink, Quarantine(None, "q/", str(tmp_path / "q")), deadline())
    finally:
        sink.close()
    doc = dashboard()
    (picker,) = [v for v in doc["templating"]["list"] if v["name"] == "datasource"]
    assert picker["type"] == "datasource" and "tenant" in picker["description"]
    window = (1_700_000_000_000_000_000 - 10**12, 1_700_000_000_000_000_000 + 10**12)
    every = {"org": None, "space": None, "app": None}
    for database, orgs in ((databases["team_a"], {"team-a"}), ("team_b_db", {"team-b"})):
        (result,) = influxdb1.query(database, interpolate(variable_queries(doc)["org"], every))["results"]
        assert {row[1] for s in result["series"] for row in s["values"]} == orgs, database
        shown = set()
        for _, target in panel_targets(doc):
            if 'GROUP BY time($__interval), "app"' not in target["query"]:
                continue
            (result,) = influxdb1.query(database, interpolate(target["query"], every, window))["results"]
            shown |= {s["tags"]["app"] for s in result.get("series", [])}
        assert shown and shown <= {a.name for a in apps.values() if a.org_name in orgs}, (database, shown)


@pytest.mark.parametrize("first", ["team-a", "shared"])
def test_a_refused_authorisation_holds_only_its_tenant_but_the_default_fails_the_batch(
    influxdb1: InfluxDB1Server, databases: dict[str, str], tmp_path: Path, first: str
) -> None:
    """A 403 (InfluxDB's answer to a user without write permission on that database) for the first
    request: when it is a tenant's (team-a's), only team-a's records are quarantined; when it is the
    default database's, the batch fails as it does without routing (a retry writes everything)."""
    from refinery.sinks import FlushError
    from support.faultproxy import FaultProxy

    apps = make_apps()
    files = Files(tmp_path, apps, routes_yaml(databases, databases["default"]))
    influxdb1.create_database(databases["team_c"])  # every destination exists here
    ordered = sorted(apps, key=lambda g: (apps[g].org_name != first, apps[g].space_name != "web"))
    event = batch({g: apps[g] for g in ordered}, 60, partitions=1)  # the first record is `first`'s
    with FaultProxy(influxdb1.url) as proxy:
        config = InfluxConfig(url=proxy.url, api="v1", database=databases["default"], write_concurrency=1)
        router = router_for(files, Destination(databases["default"]))
        sink = RoutedSink(InfluxV1Sink(config), router)
        quarantine = Quarantine(None, "q/", str(tmp_path / "q"))
        proxy.fail_next(1, 403, body=b'{"error":"user is not authorized to write to database"}')
        try:
            if first == "shared":
                with pytest.raises(FlushError, match="403"):
                    process_batch(event, router.store, sink, quarantine, deadline())
                return
            result = process_batch(event, router.store, sink, quarantine, deadline())
        finally:
            sink.close()
    summary = result.summary()
    team_a = {g for g, a in apps.items() if a.org_name == "team-a"}
    assert accounted(summary) and set(summary["quarantined_by_reason"]) == {"destination_unavailable"}
    assert summary["quarantined"] == sum(1 for g in event_guids(event) if g in team_a)
    assert not app_guids(stored(influxdb1, databases["team_a"]))
    written = sum(sum(app_guids(stored(influxdb1, n)).values()) for n in (*databases.values(), "team_b_db"))
    assert written == summary["written"] == 60 - summary["quarantined"]


def event_guids(event: dict[str, Any]) -> list[str]:
    from refinery.envelope import decode_value, uuid_to_guid

    guids = []
    for records in event["records"].values():
        for record in records:
            envelope = decode_value(record["value"])
            body = envelope.get("logMessage") or envelope.get("containerMetric") or {}
            guid = body.get("app_id") or body.get("applicationId")
            if not isinstance(guid, str):
                guid = uuid_to_guid(envelope["httpStartStop"]["applicationId"])
            guids.append(guid)
    return guids


def test_config_check_reads_and_validates_the_table_in_s3(
    influxdb1: InfluxDB1Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`refinery config --check` with ROUTES_KEY: the object in METADATA_BUCKET is read and validated."""
    import boto3

    from refinery_tools.config_check import run_check

    s3 = boto3.client("s3")
    _clear_settings(monkeypatch)
    for name, value in {
        "INFLUX_URL": influxdb1.url,
        "INFLUX_DATABASE": "cf",
        "METADATA_BUCKET": s3_bucket,
        "ROUTES_KEY": "routing/routes.yaml",
        "ROUTES_LABEL_KEYS": LABEL,
    }.items():
        monkeypatch.setenv(name, value)
    table = f"routes:\n  - to: {{database: {{org_label: {LABEL}}}}}\ndefault: {{database: cf}}\n"
    s3.put_object(Bucket=s3_bucket, Key="routing/routes.yaml", Body=table.encode())
    out = io.StringIO()
    run_check(out=out)
    assert f"routing table s3://{s3_bucket}/routing/routes.yaml: 1 route(s), default database 'cf'" in (
        out.getvalue()
    ), out.getvalue()
    s3.put_object(
        Bucket=s3_bucket, Key="routing/routes.yaml", Body=b"routes:\n  - to: {database: {org_label: x}}\n"
    )
    out = io.StringIO()
    assert run_check(out=out) != 0
    assert "ROUTES_KEY:" in out.getvalue() and "label 'x' is not in ROUTES_LABEL_KEYS" in out.getvalue()
