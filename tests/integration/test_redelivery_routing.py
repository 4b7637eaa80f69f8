"""The redelivery property with tenant routing on: however the mapping cuts, retries, redelivers and
quarantines the stream, the points of every tenant database together equal one clean delivery's (into
one database, routing off), and each tenant database holds exactly its tenant's points.

The harness and the oracle are those of ``test_redelivery_property.py`` (four episodes: the old
backlog quarantined ``too_old``, whole-batch retries re-cut, partial batch responses, one invocation
per partition; flushes failing after k chunks behind a fault proxy, containers restarting; then two
``refinery replay`` runs). Here the InfluxDB sink writes through a routing table: org-0 by name to one
database, space-1 by regular expression to another, the rest to the default (INFLUX_DATABASE), each
group chunked, written concurrently and retried; a partial batch response reports the first offset
not acknowledged across the destinations.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from faults import MEASUREMENTS, stored
from redelivery import check_records, diff_point_sets
from test_redelivery_property import Rig, proxy, rig, run_example  # noqa: F401  (proxy, rig: fixtures)

from refinery.handlers import enricher

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]

_SEED = os.environ.get("REDELIVERY_SEED")
SEEDS = [int(_SEED)] if _SEED else [random.SystemRandom().randrange(2**32) for _ in range(3)]


@dataclass
class RoutedRig(Rig):
    """The property test's rig with a routing table: the clean delivery (its own database) unrouted."""

    table: Path = Path()
    tenants: dict[str, str] = field(default_factory=dict)  # role -> database

    def configure(self, **values: str) -> None:
        clean = values.get("INFLUX_DATABASE", "").startswith("clean_")
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)
        if clean:
            self.monkeypatch.delenv("ROUTES_FILE", raising=False)
        else:
            self.monkeypatch.setenv("ROUTES_FILE", str(self.table))
        enricher.reset_runtime()

    def points(self, db: str | None = None) -> dict[str, list[dict[str, Any]]]:
        if db is not None:
            return stored(self.influx, db)
        merged: dict[str, list[dict[str, Any]]] = {m: [] for m in MEASUREMENTS}
        for name in (self.db, *self.tenants.values()):
            for measurement, rows in stored(self.influx, name).items():
                merged[measurement].extend(rows)
        for rows in merged.values():
            rows.sort(key=lambda p: (p["time"], sorted(p["tags"].items())))
        return merged


@pytest.fixture
def routed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RoutedRig]:
    base: Rig = request.getfixturevalue("rig")
    suffix = uuid.uuid4().hex[:8]
    tenants = {"org0": f"org0_{suffix}", "space1": f"space1_{suffix}"}
    for name in tenants.values():
        base.influx.create_database(name)
    table = tmp_path / "routes.yaml"
    table.write_text(
        "routes:\n"
        f"  - match: {{org: org-0}}\n    to: {{database: {tenants['org0']}}}\n"
        f"  - match: {{space: {{regex: 'space-1'}}}}\n    to: {{database: {tenants['space1']}}}\n"
    )
    shared = ("influx", "db", "proxy", "bucket", "monkeypatch", "invoke")
    yield RoutedRig(**{name: getattr(base, name) for name in shared}, table=table, tenants=tenants)
    for name in tenants.values():
        base.influx.drop_database(name)


def _where(points: dict[str, list[dict[str, Any]]]) -> set[tuple[str, str]]:
    return {(p["tags"].get("org", ""), p["tags"].get("space", "")) for rows in points.values() for p in rows}


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed={s}" for s in SEEDS])
def test_every_distinct_record_is_stored_once_in_its_tenants_database_however_redelivered(
    routed: RoutedRig, seed: int
) -> None:
    run = run_example(routed, seed, 3)
    tag = run.tag
    fresh = run.stream.expected_for(r for r in run.stream.records if not r.old)
    problems = check_records(run.before_replay, fresh)
    assert not problems, f"{tag} before the replay ({run.volume()}):\n" + "\n".join(problems)
    for number, points in enumerate(run.after_replay, start=1):
        differences = diff_point_sets(points, run.reference)
        assert not differences, f"{tag} after replay {number} ({run.volume()}):\n" + "\n".join(differences)
        problems = check_records(points, run.stream.expected)
        assert not problems, f"{tag} after replay {number}:\n" + "\n".join(problems)
    # each database holds exactly its tenants' points
    assert _where(routed.points(routed.tenants["org0"])) == {("org-0", "space-0"), ("org-0", "space-2")}, tag
    assert _where(routed.points(routed.tenants["space1"])) == {("org-1", "space-1")}, tag
    assert _where(routed.points(routed.db)) == {("org-1", "space-0")}, tag
