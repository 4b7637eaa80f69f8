"""`refinery tap` as a user runs it: per record its partition/offset, app GUID, the metadata tier that
answered and its outcome, over an event file (with live lookups against the fake Cloud Controller) and
over a topic read live from Tansu. The written lines are the pipeline's: the same bytes `invoke
--dry-run` prints for the same event."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition

from refinery_tools.dev.demo import MISSING_APP, NEW_APP, demo_envelopes
from refinery_tools.dev.fake_cc import FakeCloudController
from refinery_tools.dev.samples import SAMPLE_APP, sample_envelopes
from refinery_tools.dev.tansu import TansuServer
from refinery_tools.events import build_kafka_event

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = str(ROOT / "events" / "sample-snapshot.json.gz")
CLEAN = {
    k: v for k, v in os.environ.items() if not k.startswith(("INFLUX_", "METADATA_", "CF_", "QUARANTINE"))
}


def refinery(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "refinery_tools.cli", *args],
        capture_output=True,
        text=True,
        env={**CLEAN, **env},
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The demo's nine records in an event file; a Cloud Controller that knows the app created after
    the sample snapshot (live lookups), and not the missing one."""
    from refinery_tools.dev.demo import sample_foundation

    foundation = sample_foundation()
    foundation.add_app(NEW_APP[0], SAMPLE_APP.space_guid, guid=NEW_APP[1])
    event = tmp_path / "event.json"
    event.write_text(json.dumps(build_kafka_event(demo_envelopes(), partitions=2)))
    with FakeCloudController(foundation, client_id="refinery", client_secret="tap-secret") as cc:
        env = {
            "METADATA_FILE": SNAPSHOT,
            "QUARANTINE_DIR": str(tmp_path / "q"),
            "CF_API_URL": cc.url,
            "CF_CLIENT_ID": "refinery",
            "CF_CLIENT_SECRET": "tap-secret",
        }
        yield {"event": str(event), "env": env, "tmp": tmp_path}


def tap(setup: dict[str, Any], *args: str) -> list[dict[str, Any]]:
    done = refinery("tap", "--event", setup["event"], "--format", "json", *args, env=setup["env"])
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_each_record_shows_its_app_tier_and_outcome(setup: dict[str, Any]) -> None:
    records = tap(setup)
    summary = [
        (r["partition"], r["offset"], r["app_guid"], r["tier"], r["outcome"], r["reason"]) for r in records
    ]
    app = SAMPLE_APP.guid
    assert summary == [
        ("cf-firehose-0", 0, app, "snapshot", "written", None),
        ("cf-firehose-0", 1, app, "snapshot", "written", None),
        ("cf-firehose-0", 2, None, None, "dropped", "value_metric"),
        ("cf-firehose-0", 3, NEW_APP[1], "live", "written", None),
        ("cf-firehose-0", 4, None, None, "quarantined", "not_json"),
        ("cf-firehose-1", 0, app, "snapshot", "written", None),
        ("cf-firehose-1", 1, app, "snapshot", "written", None),
        ("cf-firehose-1", 2, None, None, "dropped", "counter_event"),
        ("cf-firehose-1", 3, MISSING_APP, "live: not found", "dropped", "unknown_app"),
    ]
    assert records[4]["detail"].startswith("record value is not JSON")
    assert ",app=checkout,app_guid=" + NEW_APP[1] in records[3]["line"]
    # the lines are the pipeline's own: what invoke --dry-run prints for the same event
    printed = refinery("invoke", "enricher", "--event", setup["event"], "--dry-run", env=setup["env"])
    assert printed.returncode == 0, printed.stderr
    assert sorted(r["line"] for r in records if r["line"]) == sorted(printed.stdout.splitlines())
    assert not (setup["tmp"] / "q").exists()  # tap quarantines nothing


def test_filters_combine(setup: dict[str, Any]) -> None:
    assert [r["offset"] for r in tap(setup, "--outcome", "dropped")] == [2, 2, 3]
    assert [
        r["reason"]
        for r in tap(setup, "--outcome", "quarantined", "--outcome", "dropped", "--partition", "0")
    ] == [
        "value_metric",
        "not_json",
    ]
    assert {r["app_guid"] for r in tap(setup, "--app", NEW_APP[1].upper(), "--app", MISSING_APP)} == {
        NEW_APP[1],
        MISSING_APP,
    }
    logs = tap(setup, "--measurement", "log", "--partition", "cf-firehose-0")
    assert [r["line"].split(",", 1)[0] for r in logs] == ["log", "log"]
    assert len(tap(setup, "--reason", "unknown_app", "--reason", "not_json")) == 2
    assert len(tap(setup, "--limit", "2")) == 2


def test_the_text_table(setup: dict[str, Any]) -> None:
    done = refinery("tap", "--event", setup["event"], "--outcome", "quarantined", env=setup["env"])
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split() == ["RECORD", "APP", "GUID", "TIER", "OUTCOME", "POINT", "/", "REASON"]
    assert row.split()[:4] == ["cf-firehose-0@4", "-", "-", "quarantined"] and "not_json: record value" in row
    assert "9 record(s): 5 written, 3 dropped, 1 quarantined; 1 shown" in done.stderr


def test_a_topic_read_live_outside_any_group(tansu: TansuServer, tmp_path: Path) -> None:
    topic, group = f"tap-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    tansu.create_topic(topic, 2)
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    for i, value in enumerate(sample_envelopes()):
        producer.send(topic, value=value, partition=i % 2)
    producer.flush()
    producer.close()
    env = {"METADATA_FILE": SNAPSHOT, "QUARANTINE_DIR": str(tmp_path / "q")}
    live = ["tap", "--bootstrap", tansu.bootstrap, "--topic", topic, "--idle-exit", "1", "--format", "json"]

    done = refinery(*live, "--from", "earliest", env=env)

    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted((r["partition"], r["offset"]) for r in records) == [
        (f"{topic}-{p}", o) for p in (0, 1) for o in (0, 1, 2)
    ]
    assert sorted(r["outcome"] for r in records) == ["dropped"] * 2 + ["written"] * 4
    assert "no new record for 1 s" in done.stderr
    assert tansu.committed_offsets(group) == {}
    consumer = KafkaConsumer(bootstrap_servers=tansu.bootstrap, group_id=group, enable_auto_commit=False)
    parts = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    consumer.assign(parts)
    consumer.commit({parts[0]: OffsetAndMetadata(2, "", -1), parts[1]: OffsetAndMetadata(3, "", -1)})
    consumer.close(autocommit=False)

    done = refinery(*live, "--from", "committed", "--group", group, env=env)

    assert done.returncode == 0, done.stderr
    assert [(r["partition"], r["offset"]) for r in map(json.loads, done.stdout.splitlines())] == [
        (f"{topic}-0", 2)
    ]
    assert tansu.committed_offsets(group) == {0: 2, 1: 3}


def test_the_enrichers_filters_extra_tags_and_age_limit_apply(setup: dict[str, Any]) -> None:
    env = {**setup["env"], "FILTER_EXCLUDE_APPS": "checkout", "EXTRA_TAGS": "foundation=lab"}
    done = refinery("tap", "--event", setup["event"], "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    records = {(r["partition"], r["offset"]): r for r in map(json.loads, done.stdout.splitlines())}
    assert (records[("cf-firehose-0", 3)]["outcome"], records[("cf-firehose-0", 3)]["reason"]) == (
        "dropped",
        "filtered",
    )
    assert ",foundation=lab," in records[("cf-firehose-0", 0)]["line"]
    done = refinery(
        "tap", "--event", setup["event"], "--format", "json", env={**env, "MAX_RECORD_AGE_SECONDS": "1h"}
    )
    assert done.returncode == 0, done.stderr
    assert {(r["outcome"], r["reason"]) for r in map(json.loads, done.stdout.splitlines())} == {
        ("quarantined", "too_old")
    }
