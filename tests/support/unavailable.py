"""What a test does when something it needs is not there: skip, except in CI, where it fails."""

from __future__ import annotations

import os
from typing import NoReturn


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the test with ``reason``; with ``CI=true`` fail it instead: CI must run every test."""
    import pytest  # a test-time tool: the package does not depend on pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: this test may not be skipped)", pytrace=False)
    pytest.skip(reason)
