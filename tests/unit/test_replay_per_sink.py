"""``refinery replay`` of points one sink refused: written to that sink only, exactly the refused point,
never recomputed; records written nowhere go through the pipeline (servers: a local remote-write
server with Prometheus' rules, tests/unit/test_prometheus_readback.py; the real ones:
tests/integration/test_rules_redelivery.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fake_prometheus import FakePrometheus

from refinery.config import SETTINGS
from refinery.metadata.snapshot import encode_snapshot
from refinery.quarantine import Quarantine, QuarantinedRecord, decode_records
from refinery_tools.dev.envelopes import http_envelope
from refinery_tools.dev.worked_example import APPS, MS, RULES, WORKER_EU, worked_example
from refinery_tools.dev.worked_example import T0 as T
from refinery_tools.replay import replay


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    server = FakePrometheus()
    yield server
    server.close()


@pytest.fixture
def settings(monkeypatch, tmp_path, prom: FakePrometheus) -> Path:
    """Remote write alone (to the local server), the worked example's rules, a local quarantine."""
    for setting in SETTINGS:
        for suffix in ("", "_SECRET", "_PARAMETER"):
            monkeypatch.delenv(setting.name + suffix, raising=False)
    snapshot = tmp_path / "apps.json.gz"
    snapshot.write_bytes(
        encode_snapshot({a.guid: a for a in APPS}, "https://api", datetime(2023, 1, 1, tzinfo=UTC))
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    monkeypatch.setenv("METADATA_FILE", str(snapshot))
    monkeypatch.setenv("RULES_FILE", str(rules))
    monkeypatch.setenv("PROM_REMOTE_WRITE_URL", prom.url)
    monkeypatch.setenv("QUARANTINE_DIR", str(tmp_path / "q"))
    return tmp_path / "q"


def record(offset: int, value: bytes) -> dict:
    return {
        "topic": "cf-firehose",
        "partition": 0,
        "offset": offset,
        "timestamp": T // MS,
        "timestampType": "CREATE_TIME",
        "value": base64.b64encode(value).decode(),
    }


def test_a_refused_point_goes_back_to_its_sink_only_and_nothing_is_recomputed(
    settings: Path, prom: FakePrometheus
) -> None:
    values = worked_example(T)
    raw = f"http_request,app=worker,org=eu,partition=cf-firehose-0 count=1i {T + 5 * MS}"
    aggregate = (
        f"bytes_batch_workers,app=worker,org=eu,partition=cf-firehose-0,space=batch sum=120i {T + 2 * MS}"
    )
    items = [
        # Prometheus refused this record's raw sample once: only that sample is written again.
        QuarantinedRecord(
            "cf-firehose-0", record(5, values[5]), "rejected_by_server", "400", "prometheus-remote-write", raw
        ),
        # ... and the aggregate of records 1 and 5: written again as it was (not recomputed from them).
        QuarantinedRecord(
            "cf-firehose-0",
            record(1, values[1]),
            "rejected_by_server",
            "400",
            "prometheus-remote-write",
            aggregate,
            True,
        ),
        QuarantinedRecord(
            "cf-firehose-0",
            record(5, values[5]),
            "rejected_by_server",
            "400",
            "prometheus-remote-write",
            aggregate,
            True,
        ),
        # InfluxDB refused this one, and InfluxDB is not configured here: still refused, written nowhere.
        QuarantinedRecord(
            "cf-firehose-0", record(3, values[3]), "rejected_by_server", "400", "influxdb-v1", "x y=1 1"
        ),
        # Written nowhere (too old at the time): through the pipeline, rules included.
        QuarantinedRecord(
            "cf-firehose-0", record(9, http_envelope(WORKER_EU.guid, T + 9 * MS, size=7)), "too_old", ""
        ),
    ]
    Quarantine(None, "quarantine/", str(settings)).write(
        "quarantine/2026/01/01/cf-firehose-0-1-x.jsonl.gz", items
    )
    report = replay(str(settings / "quarantine"))
    assert report.records == 3 + 1 and report.written == 2 + 1
    assert dict(report.still_refused) == {"rejected_by_server": 1}
    assert prom.values("http_request_count")[T // MS + 5] == 1.0
    assert prom.values("bytes_batch_workers_sum") == {
        T // MS + 2: 120.0,
        T // MS + 1 + 9: 7.0,
    }  # + record 9's
    (again,) = report.quarantine_objects
    (entry,) = decode_records(Path(again).read_bytes())
    assert (entry["offset"], entry["sink"], entry["line"]) == (3, "influxdb-v1", "x y=1 1")
    assert "not configured" in entry["detail"]

    # A second replay of the same quarantine writes the same samples: nothing new, nothing refused.
    before = {k: dict(v) for k, v in prom.series.items()}
    report = replay(str(settings / "quarantine"))
    assert report.written == 3 and prom.series == before
