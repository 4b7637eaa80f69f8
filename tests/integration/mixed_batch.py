"""A realistic mixed batch for the operations tests (metrics, summary line, Grafana dashboard).

A small foundation served by the fake Cloud Controller, a snapshot in S3 that lacks its two newest
apps (live lookups), an app nobody knows (dropped ``unknown_app``), Zipf-like traffic of every kind
from :class:`~refinery_tools.dev.workload.TrafficGenerator` (HTTP, app and router logs, container
metrics, value metrics and counter events, which are dropped) and two malformed records
(quarantined). One app has a name that needs escaping everywhere (line protocol, InfluxQL regex):
``shop (v2).api/x``; it also gets explicit 5xx responses, error logs and two instances' container
metrics, so every Grafana panel has data for it alone.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from refinery.metadata.snapshot import AppInfo, encode_snapshot
from refinery_tools.dev.fake_cc import Foundation
from refinery_tools.dev.workload import TrafficGenerator, nozzle_json
from refinery_tools.events import build_kafka_event

SPECIAL_NAME = "shop (v2).api/x"
CC_SECRET = "ops-test-cc-secret"
SNAPSHOT_AGE_S = 120.0
LAG_MS = 90_000
BASE_NS = 1_537_510_364_000_000_000  # 2018-09-21, the samples' day


@dataclass
class MixedBatch:
    foundation: Foundation
    snapshot: bytes
    snapshot_apps: dict[str, AppInfo]
    live_apps: list[AppInfo]
    special: AppInfo
    unknown_guid: str
    event: dict[str, Any]
    kinds: Counter[str]
    oldest_timestamp_ms: int
    generated_at: datetime

    @property
    def records(self) -> int:
        return sum(len(batch) for batch in self.event["records"].values())


def mixed_batch(records: int = 1500, seed: int = 5) -> MixedBatch:
    foundation = Foundation.generate(orgs=2, spaces_per_org=2, apps_per_space=3, seed=seed)
    first = next(iter(foundation.apps))
    foundation.rename_app(first, SPECIAL_NAME)
    infos = foundation.app_infos()
    ordered = list(infos.values())
    special = infos[first]
    live = ordered[-2:]  # created after the last refresh: only a live lookup names them
    in_snapshot = {a.guid: a for a in ordered if a not in live}
    unknown = AppInfo(str(uuid.UUID(int=seed, version=4)), "gone", "-", "-", "-", "-")
    generated_at = datetime.fromtimestamp(time.time() - SNAPSHOT_AGE_S, UTC)
    snapshot = encode_snapshot(in_snapshot, "https://api.sys.example.com", generated_at)

    # Traffic weights fall with the position: the special app first, then the live apps.
    senders = [special, *live, unknown, *[a for a in ordered if a is not special and a not in live]]
    generator = TrafficGenerator(senders, seed=seed)
    values, kinds = generator.envelopes(records)
    for i in range(6):  # explicit data for the special app alone
        when = BASE_NS + 10_000_000 + i * 1_000_000
        http = generator.http(special, when)
        http["httpStartStop"]["statusCode"] = 503 if i % 2 else 500
        values.append(nozzle_json(http))
        log = generator.app_log(special, when)
        log["logMessage"]["message_type"] = 2  # ERR
        values.append(nozzle_json(log))
        container = generator.container(special, when)
        container["containerMetric"]["instanceIndex"] = i % 2
        values.append(nozzle_json(container))
    kinds.update({"http": 6, "app_log": 6, "container": 6})

    oldest_ms = int(time.time() * 1000) - LAG_MS
    event = build_kafka_event(values, partitions=3, timestamp_ms=oldest_ms)
    batch = event["records"]["cf-firehose-1"]
    batch[3]["value"] = "%%% not base64 %%%"
    batch[5]["value"] = base64.b64encode(b'{"origin": "rep", "eventType": ').decode()
    kinds.update({"not_base64": 1, "not_json": 1})
    return MixedBatch(
        foundation=foundation,
        snapshot=snapshot,
        snapshot_apps=in_snapshot,
        live_apps=live,
        special=special,
        unknown_guid=unknown.guid,
        event=event,
        kinds=kinds,
        oldest_timestamp_ms=oldest_ms,
        generated_at=generated_at,
    )
