"""`make demo` / `refinery demo`: the main job on embedded defaults, leaving nothing running.

The demo shows the enrichment: each record's envelope and app GUID beside the point it became (org,
space and app names) or why it was dropped or quarantined; the functions' JSON logs and EMF metrics
only with --verbose.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from refinery_tools.dev.demo import MISSING_APP, NEW_APP
from refinery_tools.dev.samples import SAMPLE_APP

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("INFLUX_", "METADATA_", "CF_", "AWS_", "POWERTOOLS_"))
}


def demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "refinery_tools.cli", "demo", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=120,
    )


def row(out: str, record: str) -> list[str]:
    """The table's cells for one record (columns are separated by two spaces or more)."""
    line = next(line for line in out.splitlines() if line.strip().startswith(record + " "))
    return re.split(r"\s{2,}", line.strip())


def test_demo_shows_each_record_beside_the_point_it_became():
    done = demo()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "metadata refresh: 25 apps, 7 spaces, 4 orgs in 1 page(s)" in out
    guid = SAMPLE_APP.guid
    assert row(out, "cf-firehose-0@0") == [
        "cf-firehose-0@0",
        "HttpStartStop",
        guid,
        "snapshot",
        "http_request",
        "acme / dev / myapp",
        "instance=1 method=GET status_code=200",
    ]
    assert row(out, "cf-firehose-1@1")[1:6] == [
        "ContainerMetric",
        guid,
        "snapshot",
        "instance",
        "acme / dev / myapp",
    ]
    assert row(out, "cf-firehose-0@3")[2:6] == [NEW_APP[1], "live", "log", "acme / dev / checkout"]
    assert row(out, "cf-firehose-0@2")[1:] == [
        "ValueMetric",
        "-",
        "-",
        "dropped: value_metric (a platform metric, not an app event)",
    ]
    assert row(out, "cf-firehose-1@3")[2:4] == [MISSING_APP, "live: not found"]
    assert row(out, "cf-firehose-1@3")[4].startswith("dropped: unknown_app (no such app")
    assert row(out, "cf-firehose-0@4")[1] == "(broken record)"
    assert row(out, "cf-firehose-0@4")[4].startswith("quarantined: not_json")
    points = [
        line.strip()
        for line in out.splitlines()
        if line.strip().startswith(("http_request,", "log,", "instance,"))
    ]
    assert len(points) == 5
    assert all(",org=acme," in p and ",space=dev," in p for p in points)
    assert "records in      9" in out and "dropped         3" in out and "quarantined     1" in out
    assert "-> s3://refinery-demo/quarantine/2018/09/21/" in out
    assert "batch lag          8." in out and "years" in out
    assert "About the ages: the bundled envelopes were recorded on 2018-09-21 06:12 UTC" in out
    # no JSON log lines or EMF documents without --verbose, and never the client secret
    assert '{"level"' not in done.stderr and '"_aws"' not in done.stderr + out
    assert "refinery-secret" not in out + done.stderr


def test_verbose_shows_the_functions_logs_and_metrics():
    done = demo("--verbose")
    assert done.returncode == 0, done.stderr
    assert '"message":"batch done"' in done.stderr and '"_aws"' in done.stderr
    assert "refinery-secret" not in done.stdout + done.stderr
