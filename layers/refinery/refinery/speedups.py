"""Which implementation of the per-record hot path runs.

The compiled fast path (:mod:`refinery._record_fastpath`, built from Cython by ``pip install`` and
by the layer's ``make``) is used when it can be imported; otherwise, or with
``REFINERY_PURE_PYTHON=1``, every record takes the pure-Python reference path, which gives the same
output (tests run both). ``IMPLEMENTATION`` says which one runs; the enricher logs it at cold start.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

convert_run: Callable[..., tuple[int, Any, int]] | None = None
IMPLEMENTATION = "pure Python"
UNAVAILABLE_REASON: str | None = None

if os.environ.get("REFINERY_PURE_PYTHON", "").strip().lower() in ("1", "true", "yes"):
    UNAVAILABLE_REASON = "REFINERY_PURE_PYTHON is set"
else:
    try:
        from ._record_fastpath import convert_run  # type: ignore[no-redef]  # noqa: F401

        IMPLEMENTATION = "compiled"
    except ImportError as exc:  # not built for this interpreter: the reference path does all the work
        UNAVAILABLE_REASON = f"the compiled fast path is not built ({exc})"
