"""When to retry, for every client in the runtime: the sinks, the Cloud Controller client, AWS calls.

*Whether* a failure is worth another attempt is each client's own business (a status code, an
exception class, a refusal it can name). This module answers only *when*: how long to wait before
the next attempt, or that no retry fits, as one policy for all of them:

* **our own schedule** is exponential backoff with equal jitter: attempt ``n`` waits between half
  and all of ``min(cap, base * 2**(n-1))``, so retries of concurrent clients spread out while the
  wait still grows;
* **a server's ask** (``Retry-After``, :mod:`refinery.retry_after`) is honoured as given; one longer
  than ``max_asked`` (default: ``cap``) is either shortened to it (``cap_server_wait``) or ends the
  retries, as the client's settings document;
* **the deadline**: with ``time_left``, a wait never leaves the next attempt less than ``needs``
  seconds; our own waits shrink to leave it ``min(attempt_timeout, time_left / 2)`` when an
  ``attempt_timeout`` is given, so the last attempts still fit before the deadline.

:class:`NoRetry` says which limit ended the retries, so each client can word its own error.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

#: Why no retry fits.
ASKED_TOO_LONG = "asked_too_long"  # the server asked for more than max_asked (cap_server_wait=False)
PAST_DEADLINE = "past_deadline"  # the wait would leave the next attempt less time than it needs


class NoRetry(Exception):
    """No retry fits: ``reason`` is ASKED_TOO_LONG or PAST_DEADLINE; ``wait`` the wait that did not fit."""

    def __init__(self, reason: str, wait: float):
        super().__init__(f"{reason}: a wait of {wait:.2f} s")
        self.reason = reason
        self.wait = wait


@dataclass(frozen=True)
class RetryPolicy:
    base: float  # the first attempt's backoff ceiling, seconds
    cap: float  # the longest wait of our own, seconds
    max_asked: float | None = None  # the longest server ask taken, seconds (None: ``cap``)
    cap_server_wait: bool = True  # True: a longer ask is shortened to max_asked; False: it ends the retries

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Our own wait after failed attempt number ``attempt`` (1-based): equal jitter."""
        ceiling = min(self.cap, self.base * 2 ** min(max(attempt, 1) - 1, 60))  # no float overflow
        return ceiling / 2 + rng() * ceiling / 2

    def wait(
        self,
        attempt: int,
        asked: float | None = None,
        *,
        time_left: float | None = None,
        needs: float = 0.0,
        attempt_timeout: float | None = None,
        rng: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one; raises :class:`NoRetry`.

        ``asked``: the server's ``Retry-After`` in seconds, if it sent one. ``time_left``: seconds until
        the caller's deadline (None: none). ``needs``: the least time an attempt needs.
        ``attempt_timeout``: an attempt's full timeout, to shrink our own waits by (None: no shrinking).
        """
        if asked is not None:
            longest = self.cap if self.max_asked is None else self.max_asked
            if asked > longest and not self.cap_server_wait:
                raise NoRetry(ASKED_TOO_LONG, asked)
            wait = min(asked, longest)
            if time_left is not None and time_left - wait < needs:
                raise NoRetry(PAST_DEADLINE, wait)
            return wait
        wait = self.backoff(attempt, rng)
        if time_left is not None:
            if attempt_timeout is not None:
                wait = max(0.0, min(wait, time_left - min(attempt_timeout, time_left / 2)))
            if time_left - wait < needs:
                raise NoRetry(PAST_DEADLINE, wait)
        return wait
