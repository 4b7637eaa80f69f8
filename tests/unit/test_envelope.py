"""What is poison, and why."""

from __future__ import annotations

import base64

import pytest

from refinery.envelope import MAX_VALUE_BYTES, Poison, decode_value


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing_value"),
        (42, "missing_value"),
        ("not base64!", "not_base64"),
        ("abc", "not_base64"),
        (b64(b"{not json"), "not_json"),
        (b64(b"\xff\xfe\x00"), "not_json"),
        (b64(b"[1, 2]"), "not_envelope"),
        (b64(b'"text"'), "not_envelope"),
        (b64(b"null"), "not_envelope"),
        ("A" * (MAX_VALUE_BYTES * 2), "too_large"),
    ],
)
def test_poison_reasons(value, reason) -> None:
    with pytest.raises(Poison) as caught:
        decode_value(value)
    assert caught.value.reason == reason
    assert caught.value.detail


def test_nan_written_by_easyjson_is_read() -> None:
    envelope = decode_value(b64(b'{"eventType":9,"containerMetric":{"cpuPercentage":NaN}}'))
    assert envelope["containerMetric"]["cpuPercentage"] != envelope["containerMetric"]["cpuPercentage"]


def test_big_integers_are_exact() -> None:
    envelope = decode_value(b64(b'{"requestId":{"low":18446744073709551615,"high":9007199254740993}}'))
    assert envelope["requestId"] == {"low": 18446744073709551615, "high": 9007199254740993}
