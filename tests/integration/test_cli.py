"""`refinery invoke`, `refinery config` and the command itself as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from refinery import __version__
from refinery_tools.dev.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = str(ROOT / "events" / "sample-snapshot.json.gz")
CLEAN = {
    k: v for k, v in os.environ.items() if not k.startswith(("INFLUX_", "METADATA_", "CF_", "QUARANTINE"))
}


def refinery(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "refinery_tools.cli", *args],
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
        assert f"FAIL  {name}" in done.stdout
    assert "sentinel-t0ken" not in done.stdout + done.stderr
    listing = refinery("config", env={"INFLUX_TOKEN": "sentinel-t0ken", "INFLUX_URL": "http://x:8086"})
    assert listing.returncode == 0
    assert (
        "INFLUX_TOKEN  (string, secret: or INFLUX_TOKEN_SECRET / _PARAMETER; default none)   [set]"
        in listing.stdout
    )
    assert "INFLUX_URL  (url; default none)   [= http://x:8086]" in listing.stdout
    assert "sentinel-t0ken" not in listing.stdout + listing.stderr


def test_config_lists_the_settings_grouped_with_kind_default_and_meaning():
    done = refinery("config")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    titles = ["InfluxDB sink", "Metadata", "Cloud Controller", "Quarantine", "Prometheus remote write"]
    assert all(f"\n{title}\n" in "\n" + out for title in titles)
    assert out.index("InfluxDB sink") < out.index("  INFLUX_URL") < out.index("Metadata\n")
    assert "  INFLUX_WRITE_CONCURRENCY  (int; default 2)" in out
    assert "  LIVE_LOOKUP_MAX  (int; default 50)" in out
    assert "`" not in out  # the README's Markdown is not shown in the terminal


def test_invoke_dry_run_prints_the_quarantine_it_does_not_write(tmp_path):
    bad = tmp_path / "event.json"
    event = json.loads((ROOT / "events" / "msk.json").read_text())
    event["records"]["cf-firehose-0"].append(
        dict(event["records"]["cf-firehose-0"][0], offset=9, value="bm90IGpzb24=")
    )
    bad.write_text(json.dumps(event))
    quarantine = tmp_path / "q"
    env = {"METADATA_FILE": SNAPSHOT, "QUARANTINE_DIR": str(quarantine)}
    done = refinery("invoke", "enricher", "--event", str(bad), "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4  # stdout: the points only
    assert "would quarantine 1 record(s) to " + str(quarantine) in done.stderr
    assert '"reason":"not_json"' in done.stderr and '"offset":9' in done.stderr
    assert "(dry run: not written)" in done.stderr
    assert not quarantine.exists()
    # without --dry-run (and no INFLUX_URL) the points are printed, but the quarantine is written
    done = refinery("invoke", "enricher", "--event", str(bad), env=env)
    assert done.returncode == 0, done.stderr
    written = list(quarantine.rglob("*.jsonl.gz"))
    assert len(written) == 1 and f"quarantined to {written[0]}" in done.stderr
    assert f"refinery replay {quarantine}/quarantine/" in done.stderr


def test_the_first_write_to_a_missing_database_says_how_to_create_it(influxdb1):
    database = f"fresh_{uuid.uuid4().hex[:10]}"
    env = {"METADATA_FILE": SNAPSHOT, "INFLUX_URL": influxdb1.url, "INFLUX_DATABASE": database}
    done = refinery("invoke", "enricher", "--event", "events/msk.json", env=env)
    assert done.returncode == 1
    assert "database not found" in done.stderr
    hint = next(line for line in done.stderr.splitlines() if line.startswith("refinery: hint:"))
    command = hint.split("create it (once) with: ", 1)[1]
    assert command == f"curl -XPOST {influxdb1.url}/query --data-urlencode 'q=CREATE DATABASE \"{database}\"'"
    created = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert created.returncode == 0, created.stderr
    done = refinery("invoke", "enricher", "--event", "events/msk.json", env=env)
    assert done.returncode == 0, done.stderr
    assert influxdb1.count(database, "log") == 2


def test_version_and_usage_errors():
    done = refinery("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"refinery {__version__}"
    done = refinery(
        "consume", "--bootstrap", "127.0.0.1:9092", "--topic", "t", "--group", "g", "--batch-size", "0"
    )
    assert done.returncode == 2 and "--batch-size must be between 1 and 10000, not 0" in done.stderr


def test_consume_into_a_missing_database_says_once_how_to_create_it(influxdb1, tansu, tmp_path):
    from kafka import KafkaProducer

    topic, database = f"nodb-{uuid.uuid4().hex[:8]}", f"fresh_{uuid.uuid4().hex[:10]}"
    tansu.create_topic(topic, 1)
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    producer.send(
        topic,
        value=(ROOT / "tools/refinery_tools/data/nozzle-envelopes.jsonl").read_bytes().split(b"\n")[0],
    )
    producer.flush()
    producer.close()
    env = {"METADATA_FILE": SNAPSHOT, "INFLUX_URL": influxdb1.url, "INFLUX_DATABASE": database}
    consume = ["consume", "--bootstrap", tansu.bootstrap, "--topic", topic, "--group", f"g-{topic}"]
    done = refinery(
        *consume, "--max-retries", "2", "--retry-backoff", "0.05", "--session-timeout", "6", env=env
    )
    assert done.returncode == 1
    command = f"curl -XPOST {influxdb1.url}/query --data-urlencode 'q=CREATE DATABASE \"{database}\"'"
    assert (
        done.stderr.count(f"hint: InfluxDB has no database '{database}'; create it (once) with: {command}")
        == 1
    )
    assert "more than --max-retries 2" in done.stderr
