"""Deterministic nozzle-format traffic of a generated foundation, for ``refinery produce --synthetic``.

The foundation is :meth:`Foundation.generate` (``org-O``, ``space-O-S``, ``app-O-S-A``); the envelopes
come from the benchmark's :class:`TrafficGenerator` (the nozzle's exact wire format, Zipf-like
traffic per app) in the same mix: HTTP requests, app and router logs, container metrics, and a few
value metrics and counter events (which the enricher drops by policy).

Every record gets its own timestamp, strictly increasing (``step_ns`` apart, plus jitter below half a
step), so no two records map to the same InfluxDB point identity, in one batch or across batches:
however a consumer cuts the stream into batches, each record is exactly one point (or dropped).
The same seed and sizes give the same envelopes, byte for byte.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime

from refinery.metadata.snapshot import AppInfo, encode_snapshot
from refinery_tools.dev.fake_cc import Foundation
from refinery_tools.dev.workload import TrafficGenerator, nozzle_json

BASE_NS = 1_537_510_364_000_000_000  # 2018-09-21T06:12:44Z, the bundled samples' time
DEFAULT_STEP_NS = 97_000
CHUNK = 1000  # the kind mix is exact within each chunk
SNAPSHOT_SOURCE = "https://api.sys.example.com"
SNAPSHOT_TIME = datetime(2018, 9, 21, 6, 0, 0, tzinfo=UTC)
POINT_KINDS = ("http", "app_log", "rtr_log", "container")  # the kinds that become points


class SyntheticTraffic:
    def __init__(
        self,
        orgs: int = 2,
        spaces: int = 2,
        apps: int = 5,
        *,
        seed: int = 1,
        base_ns: int = BASE_NS,
        step_ns: int = DEFAULT_STEP_NS,
    ):
        """``spaces`` per org, ``apps`` per space."""
        if min(orgs, spaces, apps) < 1:
            raise ValueError("--orgs, --spaces and --apps must each be at least 1")
        if step_ns < 2:
            raise ValueError("the timestamp step must be at least 2 ns")
        self.foundation = Foundation.generate(
            orgs=orgs, spaces_per_org=spaces, apps_per_space=apps, seed=seed
        )
        self.apps: dict[str, AppInfo] = self.foundation.app_infos()
        self.seed = seed
        self.base_ns = base_ns
        self.step_ns = step_ns

    def snapshot(self) -> bytes:
        """The metadata snapshot of the foundation (``METADATA_FILE`` for the enricher)."""
        return encode_snapshot(self.apps, SNAPSHOT_SOURCE, SNAPSHOT_TIME)

    def envelopes(self, count: int | None = None) -> Iterator[tuple[str, bytes]]:
        """``(kind, nozzle JSON)`` pairs: ``count`` of them, or without end when ``count`` is None."""
        ordered = sorted(self.apps.values(), key=lambda a: a.name)
        generator = TrafficGenerator(ordered, seed=self.seed)
        jitter = random.Random(self.seed + 17)
        index = 0
        while count is None or index < count:
            kinds = generator.kinds(CHUNK)  # whole chunks: a shorter run is a prefix of a longer one
            senders = generator.rng.choices(generator.apps, weights=generator.weights, k=CHUNK)
            for kind, app in zip(kinds, senders, strict=True):
                if count is not None and index >= count:
                    return
                when = self.base_ns + index * self.step_ns + jitter.randrange(self.step_ns // 2)
                yield kind, nozzle_json(getattr(generator, kind)(app, when))
                index += 1
