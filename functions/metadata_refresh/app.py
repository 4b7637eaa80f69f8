"""Metadata-refresh Lambda entry point. The logic lives in the `refinery` layer (layers/refinery)."""

from refinery.refresher import handler

__all__ = ["handler"]
