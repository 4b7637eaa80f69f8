"""`refinery replay` closes the quarantine loop, as a user runs it (subprocesses, InfluxDB 1.x, moto S3).

A local run quarantines into QUARANTINE_DIR; replay reads that directory (or S3), writes what can be
written now, exits 3 while records are still refused (re-quarantined under replay/, which the next
replay skips), and, when asked, deletes or moves what it replayed, with a summary.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = str(ROOT / "events" / "sample-snapshot.json.gz")
CLEAN = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("INFLUX_", "METADATA_", "CF_", "QUARANTINE", "MAX_"))
}


def refinery(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "refinery_tools.cli", *args],
        capture_output=True,
        text=True,
        env={**CLEAN, **env},
        cwd=ROOT,
        timeout=120,
    )


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def event_with_a_broken_record(tmp_path: Path) -> Path:
    event = json.loads((ROOT / "events" / "msk.json").read_text())
    first = event["records"]["cf-firehose-0"][0]
    broken = base64.b64encode(b'{"eventType":5,"logMes').decode()
    event["records"]["cf-firehose-0"].append(dict(first, offset=3, value=broken))
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    return path


def test_a_local_quarantine_is_replayed_then_deleted(tmp_path: Path, influxdb1: Any, influx_db: str) -> None:
    quarantine = tmp_path / "quarantine-dir"
    local = {"METADATA_FILE": SNAPSHOT, "QUARANTINE_DIR": str(quarantine)}
    # A local run with an age limit the 2018 samples exceed: the six records are quarantined (too_old).
    done = refinery(
        "invoke", "enricher", "--event", "events/msk.json", env={**local, "MAX_RECORD_AGE_SECONDS": "1h"}
    )
    assert done.returncode == 0, done.stderr
    [quarantined] = files(quarantine)
    assert quarantined.startswith("quarantine/2018/09/21/")
    assert f"replay them with: refinery replay {quarantine}/quarantine/" in done.stderr

    write = {**local, "INFLUX_URL": influxdb1.url, "INFLUX_DATABASE": influx_db}
    done = refinery("replay", str(quarantine), "--delete", env=write)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["objects"], report["records"], report["written"]) == (1, 6, 4)
    assert report["dropped"] == {"value_metric": 1, "counter_event": 1} and report["still_refused"] == {}
    assert report["deleted_objects"] == [str(quarantine / quarantined)]
    assert files(quarantine) == []
    assert influxdb1.count(influx_db, "log") == 2 and influxdb1.count(influx_db, "http_request") == 1
    assert "refinery replay: done" in done.stderr and "deleted                 1" in done.stderr


def test_records_still_refused_exit_3_and_are_kept_for_the_next_replay(
    tmp_path: Path, influxdb1: Any, influx_db: str
) -> None:
    quarantine = tmp_path / "q"
    env = {"METADATA_FILE": SNAPSHOT, "QUARANTINE_DIR": str(quarantine)}
    done = refinery("invoke", "enricher", "--event", str(event_with_a_broken_record(tmp_path)), env=env)
    assert done.returncode == 0, done.stderr
    [original] = files(quarantine)
    done_dir = tmp_path / "done"

    write = {**env, "INFLUX_URL": influxdb1.url, "INFLUX_DATABASE": influx_db}
    done = refinery("replay", str(quarantine), "--move-to", str(done_dir), env=write)

    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert report["still_refused"] == {"not_json": 1} and report["written"] == 0
    [again] = report["new_quarantine_objects"]
    assert again.startswith(str(quarantine / "quarantine" / "replay")) and Path(again).is_file()
    assert files(done_dir) == [original] and files(quarantine) == [str(Path(again).relative_to(quarantine))]
    assert "1 record(s) are still refused" in done.stderr
    # the replay folder is replay's own output: a replay of the directory does not read it again
    done = refinery("replay", str(quarantine), env=write)
    assert done.returncode == 0 and json.loads(done.stdout)["objects"] == 0
    # replayed explicitly, it is retried (and still refused)
    done = refinery("replay", str(quarantine / "quarantine" / "replay"), env=write)
    assert done.returncode == 3 and json.loads(done.stdout)["still_refused"] == {"not_json": 1}


def test_s3_objects_are_replayed_and_moved(
    tmp_path: Path, influxdb1: Any, influx_db: str, s3_bucket: str, aws_env: str
) -> None:
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="metadata/apps.json.gz", Body=Path(SNAPSHOT).read_bytes())
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": aws_env,
        "METADATA_BUCKET": s3_bucket,
    }
    done = refinery(
        "invoke", "enricher", "--event", "events/msk.json", env={**aws, "MAX_RECORD_AGE_SECONDS": "60"}
    )
    assert done.returncode == 0, done.stderr
    [key] = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="quarantine/")["Contents"]]

    write = {**aws, "INFLUX_URL": influxdb1.url, "INFLUX_DATABASE": influx_db}
    inside = refinery(
        "replay", f"s3://{s3_bucket}/quarantine/", "--move-to", f"s3://{s3_bucket}/quarantine/old/", env=write
    )
    assert inside.returncode == 1 and "is inside" in inside.stderr
    done = refinery(
        "replay", f"s3://{s3_bucket}/quarantine/", "--move-to", f"s3://{s3_bucket}/replayed/", env=write
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    moved = f"replayed/{key[len('quarantine/') :]}"
    assert report["written"] == 4 and report["moved_objects"] == [f"s3://{s3_bucket}/{moved}"]
    left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert left == ["metadata/apps.json.gz", moved]
    assert influxdb1.count(influx_db, "instance") == 1
