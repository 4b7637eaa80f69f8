"""`refinery invoke` and `refinery config` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from refinery.devtools.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = str(ROOT / "events" / "sample-snapshot.json.gz")
CLEAN = {
    k: v for k, v in os.environ.items() if not k.startswith(("INFLUX_", "METADATA_", "CF_", "QUARANTINE"))
}


def refinery(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "refinery.cli", *args],
        capture_output=True,
        text=True,
        env={**CLEAN, **(env or {})},
        cwd=ROOT,
        timeout=timeout,
    )


def test_dry_run_prints_exactly_the_points(tmp_path):
    done = refinery(
        "invoke", "enricher", "--event", "events/msk.json", "--dry-run", env={"METADATA_FILE": SNAPSHOT}
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(",", 1)[0] for line in lines] == ["http_request", "log", "log", "instance"]
    assert all(" 1537510" in line for line in lines)
    assert '"records_in": 6' in done.stderr


def test_without_influx_url_it_prints_too_and_self_managed_events_work():
    done = refinery(
        "invoke", "enricher", "--event", "events/self-managed-kafka.json", env={"METADATA_FILE": SNAPSHOT}
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4
    assert '"event_source": "aws:SelfManagedKafka"' in done.stderr


def test_writes_to_influxdb_and_prints_the_result(influxdb1, influx_db):
    done = refinery(
        "invoke",
        "enricher",
        "--event",
        "events/msk.json",
        env={"METADATA_FILE": SNAPSHOT, "INFLUX_URL": influxdb1.url, "INFLUX_DATABASE": influx_db},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["batchItemFailures"] == [] and result["summary"]["points"] == 4
    assert influxdb1.count(influx_db, "log") == 2


def test_a_server_that_is_down_exits_1_with_the_error_on_stderr():
    done = refinery(
        "invoke",
        "enricher",
        "--event",
        "events/msk.json",
        "--timeout",
        "4",
        env={
            "METADATA_FILE": SNAPSHOT,
            "INFLUX_URL": f"http://127.0.0.1:{free_port()}",
            "INFLUX_DATABASE": "cf",
            "FLUSH_TIME_RESERVE": "1s",
        },
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "the enricher failed: FlushError" in done.stderr and "gave up after" in done.stderr


def test_a_bad_setting_exits_1_naming_it():
    done = refinery(
        "invoke",
        "enricher",
        "--event",
        "events/msk.json",
        env={"METADATA_FILE": SNAPSHOT, "INFLUX_URL": "not-a-url", "INFLUX_BATCH_SIZE": "lots"},
    )
    assert done.returncode == 1
    assert "INFLUX_URL" in done.stderr and "INFLUX_BATCH_SIZE" in done.stderr


def test_a_missing_or_broken_event_file_is_a_clear_error(tmp_path):
    done = refinery(
        "invoke", "enricher", "--event", str(tmp_path / "nope.json"), env={"METADATA_FILE": SNAPSHOT}
    )
    assert done.returncode != 0 and "cannot read event file" in done.stderr
    (tmp_path / "bad.json").write_text("{")
    done = refinery(
        "invoke", "enricher", "--event", str(tmp_path / "bad.json"), env={"METADATA_FILE": SNAPSHOT}
    )
    assert done.returncode != 0 and "is not JSON" in done.stderr
    (tmp_path / "sqs.json").write_text('{"Records": []}')
    done = refinery(
        "invoke", "enricher", "--event", str(tmp_path / "sqs.json"), env={"METADATA_FILE": SNAPSHOT}
    )
    assert done.returncode == 1 and "eventSource" in done.stderr


def test_config_check_lists_every_problem_and_hides_secrets():
    done = refinery(
        "config",
        "--check",
        env={
            "INFLUX_URL": "http://x:8086",
            "INFLUX_TOKEN": "sentinel-t0ken",
            "SNAPSHOT_CHECK_INTERVAL": "soon",
        },
    )
    assert done.returncode == 1
    for name in ("INFLUX_ORG", "INFLUX_BUCKET", "SNAPSHOT_CHECK_INTERVAL", "METADATA_BUCKET"):
        assert name in done.stderr
    assert "sentinel-t0ken" not in done.stdout + done.stderr
    assert "INFLUX_TOKEN" in done.stdout and "[set]" in done.stdout
