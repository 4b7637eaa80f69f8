"""Dry runs change nothing: `invoke --dry-run`, `consume --dry-run` and `replay --dry-run` (subprocesses).

Each run is given a broken record, so that a real run would write a quarantine object: to the S3
bucket (moto) when one is configured, else to the local QUARANTINE_DIR. After the dry run the bucket
holds only what the test put there, the directory does not exist, and (consume) the consumer group's
committed offsets in Tansu are exactly what they were — and the points and would-be quarantined
records were printed.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition

from refinery_tools.dev.samples import sample_envelopes, sample_snapshot
from refinery_tools.dev.tansu import TansuServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "metadata/apps.json.gz"
BROKEN = b'{"origin":"rep","eventType":5,"timest'
CLEAN = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("INFLUX_", "METADATA_", "CF_", "QUARANTINE", "PROM_", "RULES_", "AWS_"))
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


def keys(bucket: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture
def where(request: pytest.FixtureRequest, tmp_path: Path, s3_bucket: str, aws_env: str) -> dict[str, Any]:
    """The settings of a run whose quarantine is S3 (``s3``) or a local directory (``dir``)."""
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=KEY, Body=sample_snapshot())
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": aws_env,
        "QUARANTINE_DIR": str(tmp_path / "quarantine"),
    }
    if request.param == "s3":
        env["METADATA_BUCKET"] = s3_bucket  # the snapshot from S3, and the quarantine there too
    else:
        (tmp_path / "snapshot.json.gz").write_bytes(sample_snapshot())
        env["METADATA_FILE"] = str(tmp_path / "snapshot.json.gz")
    return {"env": env, "bucket": s3_bucket, "dir": tmp_path / "quarantine", "kind": request.param}


def assert_untouched(where: dict[str, Any]) -> None:
    assert keys(where["bucket"]) == [KEY]
    assert not where["dir"].exists()


@pytest.mark.parametrize("where", ["s3", "dir"], indirect=True)
def test_invoke_dry_run_writes_no_quarantine_object_anywhere(where: dict[str, Any], tmp_path: Path) -> None:
    event = json.loads((ROOT / "events" / "msk.json").read_text())
    first = event["records"]["cf-firehose-0"][0]
    event["records"]["cf-firehose-0"].append(dict(first, offset=7, value=base64.b64encode(BROKEN).decode()))
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))

    done = refinery("invoke", "enricher", "--event", str(path), "--dry-run", env=where["env"])

    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4
    target = f"s3://{where['bucket']}/quarantine/" if where["kind"] == "s3" else f"{where['dir']}/quarantine/"
    assert f"would quarantine 1 record(s) to {target}" in done.stderr
    printed = [json.loads(line) for line in done.stderr.splitlines() if line.startswith('  {"topic"')]
    assert [(r["offset"], r["reason"]) for r in printed] == [(7, "not_json")]
    assert base64.b64decode(printed[0]["value"]) == BROKEN
    assert_untouched(where)


def publish(tansu: TansuServer, topic: str, values: list[bytes]) -> None:
    tansu.create_topic(topic, 2)
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    for i, value in enumerate(values):
        producer.send(topic, value=value, partition=i % 2)
    producer.flush()
    producer.close()


def commit(tansu: TansuServer, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = KafkaConsumer(bootstrap_servers=tansu.bootstrap, group_id=group, enable_auto_commit=False)
    consumer.assign(list(offsets))
    consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
    consumer.close(autocommit=False)


@pytest.mark.parametrize("where", ["s3", "dir"], indirect=True)
def test_consume_dry_run_commits_nothing_and_writes_nothing(
    where: dict[str, Any], tansu: TansuServer, tmp_path: Path
) -> None:
    topic, group = f"dry-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    values = [*sample_envelopes(), BROKEN]  # 7 records: partition 0 gets 4, partition 1 gets 3
    publish(tansu, topic, values)
    commit(tansu, group, {TopicPartition(topic, 0): 1})  # the group has read one record of partition 0
    before = tansu.committed_offsets(group)
    summary = tmp_path / "summary.json"

    done = refinery(
        "consume",
        "--bootstrap",
        tansu.bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--dry-run",
        "--idle-exit",
        "1",
        "--batching-window",
        "0.2",
        "--summary-file",
        str(summary),
        env=where["env"],
    )

    assert done.returncode == 0, done.stderr
    assert tansu.committed_offsets(group) == before == {0: 1}
    assert_untouched(where)
    # It started at the group's offsets: the record before offset 1 of partition 0 is not read.
    stats = json.loads(summary.read_text())
    assert stats["records"] == 6 and stats["dry_run"] is True
    assert stats["committed"] == {f"{topic}-0": 4, f"{topic}-1": 3}  # what it would have committed
    assert stats["quarantined_by_reason"] == {"not_json": 1} and stats["lag"] == 0
    assert len(done.stdout.splitlines()) == 3  # the points of the five app records of offsets >= 1
    assert "would quarantine 1 record(s)" in done.stderr
    assert "outside the group, committing nothing" in done.stderr
    assert "nothing (dry run); would have committed" in done.stderr


def test_replay_dry_run_moves_deletes_and_writes_nothing(tmp_path: Path) -> None:
    from refinery_tools.events import build_kafka_event

    quarantine = tmp_path / "quarantine" / "2018" / "09" / "21"
    quarantine.mkdir(parents=True)
    event = build_kafka_event([*sample_envelopes()[:2], BROKEN])
    lines = [
        orjson.dumps(
            dict(r, partition_key=k, reason="metadata_unavailable", detail="", timestamp_type="CREATE_TIME")
        )
        for k, records in event["records"].items()
        for r in records
    ]
    obj = quarantine / "cf-firehose-0-0-abc.jsonl.gz"
    obj.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    before = obj.read_bytes()
    (tmp_path / "snapshot.json.gz").write_bytes(sample_snapshot())
    env = {"METADATA_FILE": str(tmp_path / "snapshot.json.gz"), "QUARANTINE_DIR": str(tmp_path)}

    done = refinery("replay", str(tmp_path / "quarantine"), "--dry-run", "--delete", env=env)

    assert done.returncode == 3, done.stderr  # the broken record would still be refused
    assert len(done.stdout.splitlines()) == 2  # the two points it would write
    assert "would quarantine 1 record(s) to " + str(tmp_path / "quarantine" / "replay") in done.stderr
    assert "dry run: nothing was written, quarantined, moved or deleted" in done.stderr
    assert obj.read_bytes() == before
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == [
        Path("quarantine/2018/09/21/cf-firehose-0-0-abc.jsonl.gz"),
        Path("snapshot.json.gz"),
    ]
