"""Fixtures for the enricher against real servers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from refinery.handlers import enricher
from refinery_tools.dev.samples import sample_snapshot
from refinery_tools.lambda_context import LocalContext

ROOT = Path(__file__).resolve().parents[2]
METADATA_KEY = "metadata/apps.json.gz"


@pytest.fixture
def msk_event() -> dict[str, Any]:
    return json.loads((ROOT / "events" / "msk.json").read_text())


@pytest.fixture
def snapshot_bucket(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sample snapshot in a moto bucket, and the enricher's METADATA_* settings pointing at it."""
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=METADATA_KEY, Body=sample_snapshot())
    monkeypatch.setenv("METADATA_BUCKET", s3_bucket)
    for name in (
        "METADATA_FILE",
        "INFLUX_URL",
        "INFLUX_DATABASE",
        "INFLUX_TOKEN",
        "INFLUX_ORG",
        "INFLUX_BUCKET",
    ):
        monkeypatch.delenv(name, raising=False)
    return s3_bucket


@pytest.fixture
def invoke() -> Iterator[Callable[..., dict[str, Any]]]:
    """Run the real handler in-process, with a fresh container state for each test."""
    enricher.reset_runtime()

    def run(event: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        started = time.monotonic()
        try:
            return enricher.handler(event, LocalContext(timeout_seconds=timeout))
        finally:  # Lambda would kill an invocation past its deadline: no scenario may get there
            elapsed = time.monotonic() - started
            assert elapsed < timeout, f"the handler ran {elapsed:.2f} s, past its {timeout} s deadline"

    yield run
    enricher.reset_runtime()
