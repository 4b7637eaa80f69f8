"""The fast paths give exactly what the reference builders give: same line, or the same Poison."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from refinery.convert import (
    AppTags,
    _container,
    _http,
    _log,
    container_point,
    http_point,
    log_point,
)
from refinery.envelope import Poison
from refinery_tools.dev.samples import SAMPLE_APP, sample_envelopes

TAGS = AppTags.from_info(SAMPLE_APP)
SAMPLES = [json.loads(raw) for raw in sample_envelopes()]
ODD_VALUES = st.one_of(
    st.integers(min_value=-(1 << 65), max_value=1 << 65),
    st.sampled_from([0, 1, 2, 3, 44, 45, -1, (1 << 31), (1 << 63) - 1, 1 << 63, (1 << 64) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["", "0", "a b", "x,y=z", "trail\\", "AAAA", "AAA=", "AA=="]),
    st.lists(st.integers(), max_size=2),
)


def outcome(builder: Any, *args: Any) -> Any:
    try:
        return builder(*args)
    except Poison as exc:
        return ("poison", exc.reason, exc.detail)


def mutate(body: dict[str, Any], changes: dict[str, Any], deletions: list[str]) -> dict[str, Any]:
    body = {**body, **changes}
    for key in deletions:
        body.pop(key, None)
    return body


HTTP_KEYS = ["startTimestamp", "stopTimestamp", "method", "statusCode", "contentLength", "instanceIndex"]
LOG_KEYS = ["timestamp", "message", "message_type", "source_instance"]
CONTAINER_KEYS = [
    "instanceIndex",
    "cpuPercentage",
    "memoryBytes",
    "diskBytes",
    "memoryBytesQuota",
    "diskBytesQuota",
]


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.sampled_from(HTTP_KEYS), ODD_VALUES, max_size=3), st.lists(st.sampled_from(HTTP_KEYS))
)
def test_http(changes, deletions) -> None:
    body = mutate(SAMPLES[0]["httpStartStop"], changes, deletions)
    assert outcome(_http, body, TAGS) == outcome(http_point, body, TAGS)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.sampled_from(LOG_KEYS), ODD_VALUES, max_size=3),
    st.lists(st.sampled_from(LOG_KEYS)),
    st.booleans(),
)
def test_log(changes, deletions, rtr) -> None:
    body = mutate(SAMPLES[1]["logMessage"], changes, deletions)
    assert outcome(_log, body, TAGS, rtr) == outcome(log_point, body, TAGS, "RTR" if rtr else "APP")


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.sampled_from(CONTAINER_KEYS), ODD_VALUES, max_size=3),
    st.lists(st.sampled_from(CONTAINER_KEYS)),
    ODD_VALUES,
)
def test_container(changes, deletions, timestamp) -> None:
    body = mutate(SAMPLES[3]["containerMetric"], changes, deletions)
    for stamp in (SAMPLES[3]["timestamp"], timestamp):
        assert outcome(_container, body, stamp, TAGS) == outcome(container_point, body, stamp, TAGS)
