"""`refinery config --check` against real servers: InfluxDB 1.x, VictoriaMetrics (v2 API), moto (S3 and
Secrets Manager) and the fake Cloud Controller. Exit 0 when everything answers, 3 when the settings are
valid but something cannot be reached or used (each failure named, with what to do), 1 when a setting
is wrong (with a suggestion for a misspelled variable). Secrets are never printed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from refinery_tools.dev.fake_cc import FakeCloudController, Foundation
from refinery_tools.dev.samples import sample_snapshot
from refinery_tools.dev.servers import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = "cc-s3cret-sentinel"
CLEAN = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("INFLUX_", "METADATA_", "CF_", "QUARANTINE", "PROM_", "RULES_", "AWS_", "LIVE_"))
}


def check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "refinery_tools.cli", "config", "--check", *args],
        capture_output=True,
        text=True,
        env={**CLEAN, **env},
        cwd=ROOT,
        timeout=120,
    )
    assert SECRET not in done.stdout + done.stderr
    return done


@pytest.fixture
def world(influxdb1: Any, influx_db: str, s3_bucket: str, aws_env: str) -> Iterator[dict[str, Any]]:
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="metadata/apps.json.gz", Body=sample_snapshot())
    secrets = boto3.client("secretsmanager", endpoint_url=aws_env)
    name = f"cf/{uuid.uuid4().hex[:8]}"
    secrets.create_secret(Name=name, SecretString=SECRET)
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": aws_env,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": aws_env,
    }
    with FakeCloudController(Foundation.generate(orgs=1), client_id="refinery", client_secret=SECRET) as cc:
        yield {
            "aws": aws,
            "influx": influxdb1.url,
            "database": influx_db,
            "bucket": s3_bucket,
            "secret_name": name,
            "cc": cc.url,
        }


def good_env(world: dict[str, Any]) -> dict[str, str]:
    return {
        **world["aws"],
        "INFLUX_URL": world["influx"],
        "INFLUX_DATABASE": world["database"],
        "METADATA_BUCKET": world["bucket"],
        "CF_API_URL": world["cc"],
        "CF_CLIENT_ID": "refinery",
        "CF_CLIENT_SECRET_SECRET": world["secret_name"],
    }


def test_everything_reachable_exits_0_with_a_grouped_report(world: dict[str, Any]) -> None:
    done = check(good_env(world))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    sections = [
        "settings",
        "secrets",
        f"InfluxDB (v1 API, {world['influx']}, database '{world['database']}')",
        f"metadata snapshot (s3://{world['bucket']}/metadata/apps.json.gz)",
        "quarantine and rules",
        f"Cloud Controller ({world['cc']})",
    ]
    positions = [out.index(f"\n{title}\n") for title in sections]
    assert positions == sorted(positions)
    assert f"ok    CF_CLIENT_SECRET from Secrets Manager secret '{world['secret_name']}': resolved" in out
    assert "ok    reachable (InfluxDB 1." in out
    assert f"ok    database '{world['database']}' exists (retention policies: autogen)" in out
    assert "ok    readable: 1 apps, generated at 2018-09-21T06:00:00Z" in out
    assert f"ok    quarantine bucket '{world['bucket']}' exists" in out
    assert "ok    UAA issued a token to client 'refinery' and the v3 API accepted it" in out
    assert "FAIL" not in out and out.rstrip().endswith("configuration OK")


def test_what_cannot_be_reached_or_used_is_named_and_exits_3(world: dict[str, Any]) -> None:
    missing_db = f"nope_{uuid.uuid4().hex[:8]}"
    env = {
        **good_env(world),
        "INFLUX_DATABASE": missing_db,
        "METADATA_BUCKET": f"no-such-bucket-{uuid.uuid4().hex[:8]}",
        "CF_CLIENT_SECRET_SECRET": "",
        "CF_CLIENT_SECRET": "wrong-secret",
    }
    done = check(env)
    assert done.returncode == 3, done.stdout + done.stderr
    out = done.stdout
    command = f"curl -XPOST {world['influx']}/query --data-urlencode 'q=CREATE DATABASE \"{missing_db}\"'"
    assert f"FAIL  database '{missing_db}' does not exist; create it with:\n          {command}\n" in out
    assert "FAIL  cannot be used: cannot read s3://no-such-bucket-" in out
    assert "FAIL  quarantine bucket 'no-such-bucket-" in out and "does not exist" in out
    assert "FAIL  credentials or scopes refused: POST /uaa/oauth/token: HTTP 401" in out
    assert "connectivity check(s) failed (exit 3)" in out

    dead = f"http://127.0.0.1:{free_port()}"
    env = {**good_env(world), "INFLUX_URL": dead, "CF_CLIENT_SECRET_SECRET": "cf/missing"}
    done = check(env)
    assert done.returncode == 3, done.stdout + done.stderr
    out = done.stdout
    assert f"FAIL  not reachable: GET {dead}/ping: connection refused" in out
    assert "FAIL  CF_CLIENT_SECRET from Secrets Manager secret 'cf/missing': cannot be read:" in out
    assert "ResourceNotFoundException" in out
    assert "skip  token not requested: CF_CLIENT_SECRET could not be resolved" in out


def test_the_v2_api_without_a_bucket_api_is_a_warning(world: dict[str, Any], victoriametrics: Any) -> None:
    env = {
        **world["aws"],
        "INFLUX_URL": victoriametrics.url,
        "INFLUX_TOKEN": SECRET,
        "INFLUX_ORG": "cf",
        "INFLUX_BUCKET": "cf",
        "METADATA_BUCKET": world["bucket"],
    }
    done = check(env)
    assert done.returncode == 0, done.stdout
    assert "ok    reachable" in done.stdout
    assert "warn  bucket 'cf' and the token not verified: GET /api/v2/buckets answered" in done.stdout
    assert "configuration OK, 1 warning(s)" in done.stdout


def test_bad_settings_exit_1_in_plain_words_with_did_you_mean() -> None:
    env = {
        "INFLUX_URL": "http://127.0.0.1:8086",
        "INFLUX_DATABSE": "cf",
        "LIVE_LOOKUP_MAX": "abc",
        "METADATA_FILE": str(ROOT / "events" / "sample-snapshot.json.gz"),
        "CF_HOME": "/home/someone",  # the cf CLI's: not ours, not reported
    }
    done = check(env)
    assert done.returncode == 1, done.stdout
    out = done.stdout
    warning = "warn  INFLUX_DATABSE is set but is not a Refinery setting (it is ignored); did you mean"
    assert f"{warning} INFLUX_DATABASE?" in out
    assert "FAIL  LIVE_LOOKUP_MAX: 'abc' is not a whole number (for example 50)" in out
    assert "invalid literal" not in out and "CF_HOME" not in out
    assert out.index("INFLUX_DATABSE") < out.index("FAIL  INFLUX_ORG")  # the likely cause first
    assert "may come from the misspelled variable(s) above" in out
    assert "InfluxDB (" not in out  # no connectivity check with invalid settings


def test_offline_checks_the_settings_only() -> None:
    env = {
        "INFLUX_URL": f"http://127.0.0.1:{free_port()}",
        "INFLUX_DATABASE": "cf",
        "METADATA_FILE": str(ROOT / "events" / "sample-snapshot.json.gz"),
        "INFLUX_PASSWORD_SECRET": "influx/password",
        "INFLUX_USERNAME": "writer",
    }
    done = check(env, "--offline")
    assert done.returncode == 0, done.stdout
    assert (
        "skip  INFLUX_PASSWORD from Secrets Manager secret 'influx/password': not resolved (--offline)"
        in done.stdout
    )
    assert "skip  not checked (--offline)" in done.stdout
