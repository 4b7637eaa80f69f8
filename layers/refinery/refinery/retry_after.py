"""``Retry-After``: how long a server asks us to wait, in one place for every HTTP client we have."""

from __future__ import annotations

import email.utils
import math
import time

# Cloud Controller's rate limiter sends ``Retry-After`` with the same *epoch* value as
# ``X-RateLimit-Reset`` (middleware/rate_limiter.rb). A numeric Retry-After this large cannot be a delay.
EPOCH_THRESHOLD = 1_000_000_000


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait for a ``Retry-After`` value (delta seconds, HTTP date, or epoch seconds).

    None when the value is absent or unreadable. ``now`` is the wall clock (``time.time()``).
    """
    value = (value or "").strip()
    if not value:
        return None
    now = time.time() if now is None else now
    try:
        number = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment is None:
            return None
        return max(0.0, moment.timestamp() - now)
    if not math.isfinite(number) or number < 0:
        return None
    if number >= EPOCH_THRESHOLD:
        # Epoch seconds, truncated by the server: the window may reset up to a second later.
        return max(0.0, number + 1 - now)
    return number
