"""The retry backoff of every sink: exponential, bounded, never an overflow."""

from __future__ import annotations

from refinery.sinks.base import Sink


def test_backoff_grows_then_stays_at_the_maximum_even_after_thousands_of_attempts() -> None:
    sink = Sink(max_retry_wait=30.0, base_delay=0.2)
    assert 0.1 <= sink._backoff(1, None) <= 0.2
    assert 0.4 <= sink._backoff(3, None) <= 0.8
    for attempt in (10, 100, 1_025, 100_000):
        assert 15.0 <= sink._backoff(attempt, None) <= 30.0


def test_retry_after_is_honoured_up_to_the_maximum() -> None:
    sink = Sink(max_retry_wait=30.0)
    assert sink._backoff(7, 2.5) == 2.5
    assert sink._backoff(1, 3600.0) == 30.0
