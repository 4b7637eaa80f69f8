"""Issue 3 through the real handlers: the refresh function, and the enricher's cache tiers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from refinery.config import load_enricher_config
from refinery.handlers import enricher, metadata_refresh
from refinery.metadata.snapshot import decode_snapshot
from refinery.quarantine import decode_records
from refinery.sinks import PrintSink
from refinery_tools.dev.fake_cc import FakeCloudController, Foundation
from refinery_tools.events import build_kafka_event
from refinery_tools.lambda_context import LocalContext

ROOT = Path(__file__).resolve().parents[2]
KEY = "metadata/apps.json.gz"


def log_envelope(guid: str, ts: int) -> bytes:
    return (
        b'{"origin":"rep","eventType":5,"timestamp":%d,"logMessage":{"message":"aGVsbG8=","message_type":1,'
        b'"timestamp":%d,"app_id":"%s","source_type":"APP/PROC/WEB","source_instance":"0"}}'
        % (ts, ts, guid.encode())
    )


@pytest.fixture
def fake_cc():
    with FakeCloudController(
        Foundation.generate(orgs=2, spaces_per_org=2, apps_per_space=3, stopped_every=4)
    ) as cc:
        yield cc


@pytest.fixture
def cf_env(monkeypatch, fake_cc, s3_bucket):
    monkeypatch.setenv("CF_API_URL", fake_cc.url)
    monkeypatch.setenv("CF_CLIENT_ID", "refinery")
    monkeypatch.setenv("CF_CLIENT_SECRET", "refinery-secret")
    monkeypatch.setenv("METADATA_BUCKET", s3_bucket)
    monkeypatch.setenv("SNAPSHOT_CHECK_INTERVAL", "200ms")
    for name in ("INFLUX_URL", "INFLUX_DATABASE", "METADATA_FILE"):
        monkeypatch.delenv(name, raising=False)
    return s3_bucket


def refresh(event: dict | None = None) -> dict:
    return metadata_refresh.handler(event or {}, LocalContext(timeout_seconds=60))


class Enricher:
    """A warm enricher container whose points are captured (line protocol as it would be written)."""

    def __init__(self) -> None:
        self.out = io.StringIO()
        self.runtime = enricher.build_runtime(load_enricher_config(), PrintSink(self.out))
        enricher.reset_runtime(self.runtime)

    def run(self, values: list[bytes]) -> tuple[dict, list[str]]:
        start = self.out.tell()
        result = enricher.handler(build_kafka_event(values), LocalContext(timeout_seconds=30))
        self.out.seek(start)
        lines = self.out.read().splitlines()
        return result["summary"], lines


@pytest.fixture
def warm():
    yield Enricher
    enricher.reset_runtime()


def stored_snapshot(bucket: str):
    return decode_snapshot(boto3.client("s3").get_object(Bucket=bucket, Key=KEY)["Body"].read())


def test_refresh_writes_a_valid_snapshot_of_every_app(cf_env, fake_cc):
    summary = refresh()
    snapshot = stored_snapshot(cf_env)
    assert dict(snapshot.apps) == fake_cc.foundation.app_infos()
    assert len(snapshot.apps) == 12 and snapshot.source == fake_cc.url
    assert (summary["apps"], summary["spaces"], summary["orgs"], summary["pages"]) == (12, 4, 2, 1)
    assert summary["replaced"] is False and summary["bytes"] > 0


def test_refresh_command_line(cf_env, fake_cc):
    env = {**os.environ, "CF_API_URL": fake_cc.url}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "refinery_tools.cli",
            "invoke",
            "refresh",
            "--event",
            str(ROOT / "events/scheduled.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["apps"] == 12
    assert "refinery-secret" not in done.stdout + done.stderr


def test_a_failed_page_leaves_the_previous_snapshot_untouched(cf_env, fake_cc):
    from refinery_tools.dev.fake_cc import Foundation as F

    refresh()
    before = boto3.client("s3").get_object(Bucket=cf_env, Key=KEY)["Body"].read()
    fake_cc.foundation = F.generate(orgs=3, spaces_per_org=3, apps_per_space=3)
    fake_cc.fail_page(1, status=500)
    with pytest.raises(Exception, match="500"):
        refresh()
    after = boto3.client("s3").get_object(Bucket=cf_env, Key=KEY)["Body"].read()
    assert after == before


def test_a_warm_enricher_picks_up_a_rename_after_the_next_refresh(cf_env, fake_cc, warm):
    refresh()
    guid = next(iter(fake_cc.foundation.apps))
    container = warm()
    _, lines = container.run([log_envelope(guid, 1_000)])
    assert lines[0].startswith("log,app=app-0-0-0,")
    fake_cc.foundation.rename_app(guid, "renamed app")
    refresh()
    time.sleep(0.3)
    _, lines = container.run([log_envelope(guid, 2_000)])
    assert lines[0].startswith("log,app=renamed\\ app,"), lines
    assert container.runtime.store.stats.loads == 2


def test_an_unchanged_snapshot_costs_one_conditional_request(cf_env, fake_cc, warm):
    refresh()
    container = warm()
    guid = next(iter(fake_cc.foundation.apps))
    container.run([log_envelope(guid, 1)])
    time.sleep(0.3)
    container.run([log_envelope(guid, 2)])
    stats = container.runtime.store.stats
    assert (stats.checks, stats.loads, stats.unchanged) == (2, 1, 1)


def test_an_app_created_after_the_snapshot_is_enriched_by_a_live_lookup(cf_env, fake_cc, warm):
    refresh()
    space = next(iter(fake_cc.foundation.spaces))
    app = fake_cc.foundation.add_app("brand-new", space)
    container = warm()
    summary, lines = container.run([log_envelope(app.guid, 1), log_envelope(app.guid, 2)])
    assert len(lines) == 2 and all(line.startswith("log,app=brand-new,") for line in lines)
    assert summary["metadata"]["live"] == 1
    assert fake_cc.count(f"/v3/apps/{app.guid}") == 1
    container.run([log_envelope(app.guid, 3)])
    assert fake_cc.count(f"/v3/apps/{app.guid}") == 1  # now in the warm cache


def test_an_unknown_app_is_looked_up_once_per_negative_cache_period(cf_env, fake_cc, warm):
    refresh()
    ghost = "11111111-2222-4333-8444-555555555555"
    container = warm()
    for batch in range(3):
        summary, lines = container.run([log_envelope(ghost, batch * 10 + i) for i in range(5)])
        assert lines == [] and summary["dropped_by_reason"] == {"unknown_app": 5}
    assert fake_cc.count(f"/v3/apps/{ghost}") == 1


def test_an_unreachable_cloud_controller_never_fails_the_batch(cf_env, fake_cc, warm):
    refresh()
    known = next(iter(fake_cc.foundation.apps))
    space = next(iter(fake_cc.foundation.spaces))
    new = fake_cc.foundation.add_app("late", space)
    container = warm()
    fake_cc.down()
    summary, lines = container.run([log_envelope(known, 1), log_envelope(new.guid, 2)])
    assert len(lines) == 1 and lines[0].startswith("log,app=app-0-0-0,")
    assert summary["quarantined_by_reason"] == {"metadata_lookup_failed": 1}
    records = decode_records(
        boto3.client("s3")
        .get_object(Bucket=cf_env, Key=summary["quarantine_object"].split(cf_env + "/", 1)[1])["Body"]
        .read()
    )
    assert records[0]["reason"] == "metadata_lookup_failed"


def test_live_lookups_are_bounded_per_invocation(cf_env, fake_cc, warm, monkeypatch):
    monkeypatch.setenv("LIVE_LOOKUP_MAX", "2")
    refresh()
    space = next(iter(fake_cc.foundation.spaces))
    new = [fake_cc.foundation.add_app(f"new-{i}", space) for i in range(5)]
    container = warm()
    summary, lines = container.run([log_envelope(app.guid, i) for i, app in enumerate(new)])
    assert len(lines) == 2
    assert summary["quarantined_by_reason"] == {"metadata_lookup_deferred": 3}
    assert summary["metadata"]["live_lookups"] == 2
    assert summary["records_in"] == summary["written"] + summary["quarantined"]


def test_a_corrupt_or_missing_snapshot_keeps_the_one_loaded(cf_env, fake_cc, warm):
    refresh()
    guid = next(iter(fake_cc.foundation.apps))
    container = warm()
    container.run([log_envelope(guid, 1)])
    s3 = boto3.client("s3")
    s3.put_object(Bucket=cf_env, Key=KEY, Body=b"\x1f\x8b truncated")
    time.sleep(0.3)
    summary, lines = container.run([log_envelope(guid, 2)])
    assert len(lines) == 1 and summary["snapshot_failures"] == 1 and "gzip" in summary["snapshot_error"]
    s3.delete_object(Bucket=cf_env, Key=KEY)
    time.sleep(0.3)
    summary, lines = container.run([log_envelope(guid, 3)])
    assert len(lines) == 1 and summary["snapshot_failures"] == 1  # per invocation
