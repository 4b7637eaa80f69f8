"""The recording-rules seed's worked example, restated with CF events (tests and docs).

Four apps in three orgs; six events: one of another type (a log), one from another app (filtered by
tag), two summed into one series: three output series, one per org.
"""

from __future__ import annotations

from refinery.metadata.snapshot import AppInfo
from refinery_tools.dev.envelopes import http_envelope, log_envelope

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_040 * S  # on a minute boundary

WORKER_EU = AppInfo("11111111-1111-4111-8111-111111111111", "worker", "s-eu", "batch", "o-eu", "eu")
WORKER_AP = AppInfo("22222222-2222-4222-8222-222222222222", "worker", "s-ap", "batch", "o-ap", "ap")
WORKER_US = AppInfo("33333333-3333-4333-8333-333333333333", "worker", "s-us", "batch", "o-us", "us")
API_EU = AppInfo("44444444-4444-4444-8444-444444444444", "api", "s-eu", "batch", "o-eu", "eu")
APPS = (WORKER_EU, WORKER_AP, WORKER_US, API_EU)

RULES = """
rules:
  - name: bytes_batch_workers
    source: http_request
    filter: ['app = "worker"', 'space = "batch"']
    keep: [org]
    field: response_size
    aggregation: sum
    window: 60s
"""


def worked_example(start: int = T0) -> list[bytes]:
    """The seed's six profiles, as CF events (its values become response sizes)."""
    return [
        log_envelope(WORKER_EU.guid, start, message=b"x" * 10),  # 1: another type (log): not the source
        http_envelope(WORKER_EU.guid, start + 1 * S, size=20),  # 2: eu
        http_envelope(API_EU.guid, start + 2 * S, size=1),  # 3: app "api": filtered by tag
        http_envelope(WORKER_AP.guid, start + 3 * S, size=30),  # 4: ap
        http_envelope(WORKER_US.guid, start + 4 * S, size=40),  # 5: us
        http_envelope(WORKER_EU.guid, start + 5 * S, size=100),  # 6: eu, summed with 2
    ]
