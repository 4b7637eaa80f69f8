"""refinery.retry: the one retry schedule of the sinks, the Cloud Controller client and AWS calls."""

from __future__ import annotations

import pytest

from refinery.metadata.cc_client import CloudControllerClient
from refinery.retry import ASKED_TOO_LONG, PAST_DEADLINE, NoRetry, RetryPolicy
from refinery.sinks.chunked import ChunkedSink

LOW, HIGH = (lambda: 0.0), (lambda: 1.0)  # the jitter's two ends


def test_backoff_grows_with_equal_jitter_then_stays_at_the_cap_even_after_many_attempts() -> None:
    policy = RetryPolicy(base=0.2, cap=30.0)
    assert (policy.backoff(1, LOW), policy.backoff(1, HIGH)) == (0.1, 0.2)
    assert (policy.backoff(3, LOW), policy.backoff(3, HIGH)) == (0.4, 0.8)
    for attempt in (10, 100, 1_025, 100_000):  # no float overflow
        assert (policy.backoff(attempt, LOW), policy.backoff(attempt, HIGH)) == (15.0, 30.0)


def test_a_servers_ask_is_taken_as_given_then_shortened_or_refused_over_the_longest() -> None:
    shorten = RetryPolicy(base=0.2, cap=30.0)
    assert shorten.wait(7, 2.5) == 2.5
    assert shorten.wait(1, 3600.0) == 30.0
    refuse = RetryPolicy(base=0.5, cap=20.0, max_asked=120.0, cap_server_wait=False)
    assert refuse.wait(1, 100.0) == 100.0  # more than our own cap, within what may be asked
    with pytest.raises(NoRetry) as stop:
        refuse.wait(1, 121.0)
    assert (stop.value.reason, stop.value.wait) == (ASKED_TOO_LONG, 121.0)


def test_no_wait_leaves_the_next_attempt_less_than_it_needs_before_the_deadline() -> None:
    policy = RetryPolicy(base=1.0, cap=30.0)
    with pytest.raises(NoRetry) as asked:
        policy.wait(1, 5.0, time_left=5.5, needs=1.0)
    assert asked.value.reason == PAST_DEADLINE
    assert policy.wait(1, 4.0, time_left=5.5, needs=1.0) == 4.0
    # our own wait shrinks so that an attempt (its timeout, or half the time left) still fits
    assert policy.wait(6, time_left=10.0, attempt_timeout=2.0, rng=HIGH) == 8.0
    assert policy.wait(6, time_left=3.0, attempt_timeout=2.0, rng=HIGH) == 1.5
    with pytest.raises(NoRetry):
        policy.wait(6, time_left=0.1, needs=0.1, attempt_timeout=2.0, rng=HIGH)
    assert policy.wait(1, time_left=None, rng=HIGH) == 1.0  # no deadline: the schedule as is


def test_the_sinks_and_the_cloud_controller_client_share_it_with_their_own_limits() -> None:
    sink = ChunkedSink(max_retry_wait=30.0, base_delay=0.2)
    assert sink.retry == RetryPolicy(base=0.2, cap=30.0, cap_server_wait=True)
    client = CloudControllerClient(
        "https://api.example.com", "id", "secret", backoff_base=0.5, backoff_cap=20.0, max_retry_wait=120.0
    )
    assert client.retry == RetryPolicy(base=0.5, cap=20.0, max_asked=120.0, cap_server_wait=False)
    client.close()
