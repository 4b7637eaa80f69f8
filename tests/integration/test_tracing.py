"""X-Ray traces: the subsegments the functions send, and that nothing is loaded when tracing is off.

The functions run in fresh processes set up as Lambda sets up a traced container
(``LAMBDA_TASK_ROOT``, a sampled ``_X_AMZN_TRACE_ID``, ``AWS_XRAY_DAEMON_ADDRESS``). The X-Ray SDK,
through Powertools Tracer, streams each closed subsegment over UDP to the daemon address, where this
test listens: the real wire protocol (a ``{"format": "json", "version": 1}`` header line, then the
document), no stub. With ``POWERTOOLS_TRACE_DISABLED=true`` (the template's default) nothing is
sent and neither the Tracer nor ``aws_xray_sdk`` is even imported.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from child_runner import child_env
from mixed_batch import CC_SECRET, mixed_batch

from refinery_tools.dev.fake_cc import FakeCloudController

pytestmark = pytest.mark.integration

CHILD = """
import json, sys
from refinery_tools.lambda_context import LocalContext
which, path = sys.argv[1], sys.argv[2]
with open(path) as handle:
    event = json.load(handle)
if which == "enricher":
    from refinery.handlers.enricher import handler
else:
    from refinery.handlers.metadata_refresh import handler
failed = None
try:
    handler(event, LocalContext(function_name="refinery-" + which, timeout_seconds=30))
except Exception as exc:
    failed = f"{type(exc).__name__}: {exc}"
loaded = sorted(m for m in sys.modules if m.startswith("aws_xray_sdk"))
print(json.dumps({"failed": failed, "xray_modules": len(loaded)}))
"""


class XRayDaemon:
    """Receives what the X-Ray SDK emits over UDP (the daemon's side of the protocol)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.documents: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            header, _, body = data.partition(b"\n")
            assert json.loads(header) == {"format": "json", "version": 1}
            self.documents.append(json.loads(body))

    def stop(self) -> None:
        time.sleep(0.3)
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def names(self) -> list[str]:
        found: list[str] = []

        def walk(doc: dict[str, Any]) -> None:
            found.append(doc["name"])
            for child in doc.get("subsegments", []):
                walk(child)

        for doc in self.documents:
            walk(doc)
        return found


@pytest.fixture
def setup(s3_bucket: str, influxdb1: Any, influx_db: str, aws_env: str) -> Iterator[dict[str, Any]]:
    batch = mixed_batch(records=200, seed=29)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="metadata/apps.json.gz", Body=batch.snapshot)
    with FakeCloudController(batch.foundation, client_id="refinery", client_secret=CC_SECRET) as cc:
        yield {
            "event": batch.event,
            "env": {
                "AWS_ENDPOINT_URL": aws_env,
                "METADATA_BUCKET": s3_bucket,
                "INFLUX_URL": influxdb1.url,
                "INFLUX_DATABASE": influx_db,
                "CF_API_URL": cc.url,
                "CF_CLIENT_ID": "refinery",
                "CF_CLIENT_SECRET": CC_SECRET,
                "METADATA_KEY": "metadata/apps.json.gz",
            },
        }


def run(which: str, event: dict[str, Any], env: dict[str, str], workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{which}.json"
    path.write_text(json.dumps(event))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, which, str(path)],
        env=child_env(env),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failed"] is None, report
    return report | {"stdout": done.stdout, "stderr": done.stderr}


def lambda_env(daemon: XRayDaemon, task_root: Path) -> tuple[dict[str, str], str]:
    root = f"1-{int(time.time()):08x}-{secrets.token_hex(12)}"
    return {
        "LAMBDA_TASK_ROOT": str(task_root),
        "AWS_LAMBDA_FUNCTION_NAME": "refinery-test",
        "_X_AMZN_TRACE_ID": f"Root={root};Parent={secrets.token_hex(8)};Sampled=1",
        "AWS_XRAY_DAEMON_ADDRESS": daemon.address,
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
    }, root


def test_active_tracing_sends_the_named_subsegments(setup, tmp_path: Path) -> None:
    daemon = XRayDaemon()
    try:
        traced, root = lambda_env(daemon, tmp_path)
        report = run("enricher", setup["event"], setup["env"] | traced, tmp_path / "enricher")
        refresh_env = setup["env"] | traced | {"METADATA_KEY": f"refresh/{uuid.uuid4().hex}.json.gz"}
        run("refresh", {}, refresh_env, tmp_path / "refresh")
    finally:
        daemon.stop()
    assert report["xray_modules"] > 0
    names = daemon.names()
    for name in (
        "## handler",
        "## sink write",
        "## snapshot fetch",
        "## quarantine write",
        "## cc get app",
        "## uaa token",
        "## cc list apps",
    ):
        assert name in names, (name, sorted(set(names)))
    assert names.count("## handler") == 2  # the enricher's and the refresh's
    # the S3 calls (refinery.awsclient's, signed by refinery), each with its HTTP request under it
    assert {"## S3 GetObject", "## S3 PutObject"} <= set(names), sorted(set(names))
    assert "127.0.0.1" in names  # requests patched: S3, InfluxDB and Cloud Controller requests
    assert {doc["trace_id"] for doc in daemon.documents} == {root}
    handler = next(d for d in daemon.documents if d["name"] == "## handler")
    assert handler["annotations"]["ColdStart"] is True and handler["annotations"]["Service"] == "refinery"
    assert CC_SECRET not in json.dumps(daemon.documents)


def test_with_tracing_disabled_nothing_is_sent_and_the_sdk_is_not_loaded(setup, tmp_path: Path) -> None:
    daemon = XRayDaemon()
    try:
        traced, _ = lambda_env(daemon, tmp_path)
        env = setup["env"] | traced | {"POWERTOOLS_TRACE_DISABLED": "true"}
        report = run("enricher", setup["event"], env, tmp_path / "enricher")
    finally:
        daemon.stop()
    assert daemon.documents == []
    assert report["xray_modules"] == 0


def test_outside_lambda_tracing_is_off(setup, tmp_path: Path) -> None:
    assert "LAMBDA_TASK_ROOT" not in os.environ
    report = run("enricher", setup["event"], setup["env"], tmp_path / "enricher")
    assert report["xray_modules"] == 0
