"""Bundled sample data: six nozzle-format envelopes and the metadata of the app they belong to."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

from refinery.metadata.snapshot import AppInfo, encode_snapshot

SAMPLE_APP = AppInfo(
    guid="e7b6e4d2-3f1a-4c2b-9a5d-81f0c3b2a6d4",
    name="myapp",
    space_guid="5e2b7c90-8d13-4f6a-b2c4-9e7f1a3d5c08",
    space_name="dev",
    org_guid="a0d9f3b2-6c41-4e8a-9f57-3b2d1e0c4a68",
    org_name="acme",
)
SAMPLE_SOURCE = "https://api.sys.example.com"
SAMPLE_GENERATED_AT = datetime(2018, 9, 21, 6, 0, 0, tzinfo=UTC)


def sample_envelopes() -> list[bytes]:
    """The six envelopes, each exactly as kafka-firehose-nozzle writes it to Kafka."""
    data = resources.files("refinery_tools").joinpath("data/nozzle-envelopes.jsonl").read_bytes()
    return [line for line in data.splitlines() if line.strip()]


def sample_snapshot() -> bytes:
    return encode_snapshot({SAMPLE_APP.guid: SAMPLE_APP}, SAMPLE_SOURCE, SAMPLE_GENERATED_AT)
