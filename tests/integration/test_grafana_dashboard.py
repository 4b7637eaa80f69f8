"""The Grafana dashboard's queries run against a real InfluxDB 1.x holding the enricher's output.

A realistic mixed batch goes through the real enricher handler into InfluxDB 1.6 (not hand-written
lines). Then every variable query and every panel target of ``grafana/refinery-dashboard.json`` is
interpolated the way Grafana's InfluxDB data source does it (``$timeFilter``, ``$__interval``,
``$__interval_ms``, and ``$org``/``$space``/``$app`` as regex-escaped values, ``(a|b)`` for several
values, the custom all value ``.*`` for All) and sent to ``/query``: each must parse and return rows
with data, for All, for one app whose name needs escaping, and for two apps in two orgs.

The pipeline row's queries read ``refinery_batch``, the points the enricher writes about itself with
``PIPELINE_METRICS=true`` (timestamped at the invocation, so their time range is the test's own).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from mixed_batch import BASE_NS, CC_SECRET, SPECIAL_NAME, MixedBatch, mixed_batch

from refinery.handlers import enricher
from refinery.pipeline_metrics import COUNTS
from refinery.pipeline_metrics import MEASUREMENT as PIPELINE
from refinery_tools.dev.fake_cc import FakeCloudController
from refinery_tools.lambda_context import LocalContext

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "refinery-dashboard.json"
KEY = "metadata/apps.json.gz"
#: The output schema (README "Output schema"): what a query may name.
MEASUREMENTS = {"http_request", "log", "instance"}
TAGS = {
    "app",
    "app_guid",
    "space",
    "space_guid",
    "org",
    "org_guid",
    "instance",
    "method",
    "status_code",
    "type",
}
FIELDS = {
    "count",
    "duration",
    "response_size",
    "size",
    "cpu",
    "memory",
    "disk",
    "memory_quota",
    "disk_quota",
    "memory_pct",
    "disk_pct",
}
ALIASES = {"p50", "p90", "p99", "memory", "disk"}
#: The pipeline points (README "Operating it": PIPELINE_METRICS).
PIPELINE_TAGS = {"function", "topic"}
PIPELINE_FIELDS = {
    *COUNTS,
    "enrichment_misses",
    "sink_seconds",
    "batch_lag_ms",
    "snapshot_age_s",
    "failures",
    "partial_failures",
}
PIPELINE_ALIASES = {
    "in",
    "written",
    "dropped",
    "quarantined",
    "lag",
    "mean",
    "max",
    "retries",
    "misses",
    "resends",
    "identity collisions",
    "failures",
    "partial failures",
    "snapshot age",
}
START_NS = BASE_NS - 600 * 10**9
END_NS = BASE_NS + 600 * 10**9
INTERVAL = ("1s", 1000)


def escape_regex(value: str) -> str:
    """Grafana's ``escapeRegex`` (@grafana/data), used by the InfluxDB data source for regex variables."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), value)


def format_values(values: list[str] | None) -> str:
    """How the InfluxDB data source interpolates a multi-value variable: All (``.*``), one, several."""
    if values is None:
        return ".*"  # the variables' custom all value, inserted as is
    escaped = [escape_regex(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate(
    query: str, selection: dict[str, list[str] | None], window: tuple[int, int] = (START_NS, END_NS)
) -> str:
    time_filter = f"time >= {window[0] // 10**6}ms and time <= {window[1] // 10**6}ms"
    text = query.replace("$timeFilter", time_filter)
    text = text.replace("$__interval_ms", str(INTERVAL[1])).replace("$__interval", INTERVAL[0])
    for name in ("org", "space", "app"):
        value = format_values(selection.get(name))
        text = text.replace("${" + name + "}", value).replace("$" + name, value)
    assert not re.search(r"\$\{?(org|space|app|timeFilter|__\w+|datasource)\b", text), text
    return text


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_targets(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                found.append((panel["title"], target))

    walk(doc["panels"])
    return found


def variable_queries(doc: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["query"] for v in doc["templating"]["list"] if v["type"] == "query"}


@pytest.fixture(scope="module")
def influx(influxdb1: Any, moto_server: Any) -> Iterator[tuple[Any, str, MixedBatch, tuple[int, int]]]:
    """The enricher's output for a mixed batch, in a fresh database of the real InfluxDB 1.x, with its
    pipeline points; then a second batch re-sending some of its records (pipeline points: resends).
    Also the window of time the invocations ran in (the pipeline points' timestamps)."""
    batch = mixed_batch(records=2000, seed=11)
    db = f"grafana_{uuid.uuid4().hex[:10]}"
    bucket = f"grafana-{uuid.uuid4().hex[:12]}"
    influxdb1.create_database(db)
    with (
        pytest.MonkeyPatch.context() as env,
        FakeCloudController(batch.foundation, client_id="refinery", client_secret=CC_SECRET) as cc,
    ):
        for name in list(os.environ):
            if name.startswith(("INFLUX_", "CF_", "METADATA_", "QUARANTINE_", "AWS_", "PIPELINE_")):
                env.delenv(name)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL_S3", moto_server.url)
        boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
        boto3.session.Session().client("s3").put_object(Bucket=bucket, Key=KEY, Body=batch.snapshot)
        env.setenv("METADATA_BUCKET", bucket)
        env.setenv("INFLUX_URL", influxdb1.url)
        env.setenv("INFLUX_DATABASE", db)
        env.setenv("CF_API_URL", cc.url)
        env.setenv("CF_CLIENT_ID", "refinery")
        env.setenv("CF_CLIENT_SECRET", CC_SECRET)
        env.setenv("PIPELINE_METRICS", "true")
        enricher.reset_runtime()
        started = time.time_ns()
        try:
            result = enricher.handler(batch.event, LocalContext(timeout_seconds=60))
            again = enricher.handler(resent(batch.event, 50), LocalContext(timeout_seconds=60))
        finally:
            enricher.reset_runtime()
        ended = time.time_ns()
    summary = result["summary"]
    assert summary["points"] > 1000 and summary["quarantined"] == 2, summary
    assert summary["pipeline_metrics"] == again["summary"]["pipeline_metrics"] == "written"
    assert again["summary"]["resends"] > 0, again["summary"]
    yield influxdb1, db, batch, (started - 60 * 10**9, ended + 60 * 10**9)


def resent(event: dict[str, Any], count: int) -> dict[str, Any]:
    """The first partition's first ``count`` records, each delivered twice (a producer's retry: same
    value, a later offset)."""
    key, records = next(iter(event["records"].items()))
    first = records[:count]
    last = max(r["offset"] for r in records)
    copies = [{**r, "offset": last + 1 + i} for i, r in enumerate(first)]
    return {**event, "records": {key: [*first, *copies]}}


def run(server: Any, db: str, query: str) -> list[dict[str, Any]]:
    """The series of a query; ``server.query`` raises on an HTTP or statement error."""
    (result,) = server.query(db, query, epoch="ms")["results"]
    return result.get("series", [])


def selections(batch: MixedBatch) -> dict[str, dict[str, list[str] | None]]:
    special = batch.special
    other = next(a for a in batch.snapshot_apps.values() if a.org_guid != special.org_guid)
    return {
        "all": {"org": None, "space": None, "app": None},
        "special app": {"org": [special.org_name], "space": [special.space_name], "app": [special.name]},
        "two apps in two orgs": {
            "org": [special.org_name, other.org_name],
            "space": [special.space_name, other.space_name],
            "app": [special.name, other.name],
        },
    }


def test_every_query_names_only_the_output_schema() -> None:
    doc = dashboard()
    queries = [t["query"] for _, t in panel_targets(doc)] + list(variable_queries(doc).values())
    assert len(queries) >= 20
    for query in queries:
        quoted = set(re.findall(r'"([^"]+)"', query))
        if f'FROM "{PIPELINE}"' in query:  # the pipeline row: its own measurement, no app variables
            assert quoted <= {PIPELINE} | PIPELINE_TAGS | PIPELINE_FIELDS | PIPELINE_ALIASES, (
                query,
                quoted - {PIPELINE} - PIPELINE_TAGS - PIPELINE_FIELDS - PIPELINE_ALIASES,
            )
            assert "$org" not in query and "$app" not in query and "$space" not in query, query
            assert "$timeFilter" in query, query
            continue
        assert quoted <= MEASUREMENTS | TAGS | FIELDS | ALIASES, (
            query,
            quoted - MEASUREMENTS - TAGS - FIELDS,
        )
        for measurement in re.findall(r'FROM "([^"]+)"', query):
            assert measurement in MEASUREMENTS, query
        assert "$timeFilter" in query or query.startswith("SHOW TAG VALUES"), query


def test_the_dashboard_covers_requests_status_latency_logs_and_containers() -> None:
    doc = dashboard()
    titles = {title for title, _ in panel_targets(doc)}
    for wanted in (
        "Requests per second by app",
        "Responses per second by app and status code",
        "Latency percentiles by app",
        "Log lines per second by app and stream",
        "CPU per instance",
        "Memory per instance",
        "Disk per instance",
        "Records per second: in, written, dropped, quarantined",
        "Batch lag by topic",
        "Sink latency and retries",
        "Misses, resends, identity collisions and failures",
        "Snapshot age",
    ):
        assert wanted in titles
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "influxdb"
    for name in ("org", "space", "app"):
        assert (
            variables[name]["multi"] and variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
        )
    assert "$org" in variables["space"]["query"]
    assert "$org" in variables["app"]["query"] and "$space" in variables["app"]["query"]
    for _, target in panel_targets(doc):
        assert target["rawQuery"] is True and target["datasource"]["uid"] == "${datasource}"


@pytest.mark.parametrize("which", ["all", "special app", "two apps in two orgs"])
def test_the_variable_queries_chain_and_return_the_selected_values(influx, which: str) -> None:
    server, db, batch, _ = influx
    selection = selections(batch)[which]
    queries = variable_queries(dashboard())
    found = {}
    for name, query in queries.items():
        series = run(server, db, interpolate(query, selection))
        assert series, (name, query)
        found[name] = {row[1] for s in series for row in s["values"]}
    if selection["app"] is None:
        enriched = {*batch.snapshot_apps.values(), *batch.live_apps}
        assert found["app"] == {a.name for a in enriched}
        assert found["org"] == {a.org_name for a in enriched}
        assert SPECIAL_NAME in found["app"]
    else:
        assert found["org"] >= set(selection["org"])
        assert found["space"] >= set(selection["space"])
        assert found["app"] >= set(selection["app"])
        assert found["app"] <= {
            a.name
            for a in (*batch.snapshot_apps.values(), *batch.live_apps)
            if a.space_name in selection["space"]
        }


@pytest.mark.parametrize("which", ["all", "special app", "two apps in two orgs"])
def test_every_panel_query_parses_and_returns_data(influx, which: str) -> None:
    server, db, batch, window = influx
    selection = selections(batch)[which]
    targets = panel_targets(dashboard())
    for title, target in targets:
        pipeline = f'FROM "{PIPELINE}"' in target["query"]
        query = interpolate(target["query"], selection, window if pipeline else (START_NS, END_NS))
        series = run(server, db, query)
        assert series, (title, query)
        values = [v for s in series for row in s["values"] for v in row[1:]]
        assert any(v not in (None, 0) for v in values), (title, query)
        if selection["app"] is not None:
            apps = {s["tags"]["app"] for s in series if "app" in s.get("tags", {})}
            assert apps <= set(selection["app"]), (title, apps)
            if 'GROUP BY time($__interval), "app"' in target["query"] and which == "special app":
                assert apps == {SPECIAL_NAME}, (title, apps)


def test_the_import_asks_for_the_influxdb_data_source_as_exported_dashboards_do() -> None:
    """Grafana's Dashboards → Import shows a picker for every ``__inputs`` data source and replaces
    ``${<name>}`` in the JSON with the chosen one's uid; ``__requires`` names the plugins it needs.
    Checked as Grafana's "export for sharing externally" writes them, and by doing the substitution."""
    text = DASHBOARD.read_text()
    doc = json.loads(text)
    (source,) = doc["__inputs"]
    assert source["type"] == "datasource" and source["pluginId"] == "influxdb" and source["label"]
    assert set(re.findall(r"\$\{(DS_\w+)\}", text)) == {source["name"]}  # every input used, none unknown
    required = {(r["type"], r["id"]) for r in doc["__requires"]}
    panel_types = {p["type"] for p in doc["panels"] if p["type"] != "row"}
    assert {("grafana", "grafana"), ("datasource", "influxdb")} | {
        ("panel", t) for t in panel_types
    } <= required
    imported = json.loads(text.replace("${" + source["name"] + "}", "P951FEA4DE68E13C5"))
    (variable,) = [v for v in imported["templating"]["list"] if v["name"] == "datasource"]
    assert variable["current"]["value"] == "P951FEA4DE68E13C5"  # the picked data source is the default
    for _, target in panel_targets(imported):
        assert target["datasource"]["uid"] == "${datasource}"  # panels still follow the variable
