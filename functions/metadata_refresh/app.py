"""Metadata-refresh Lambda entry point. The logic lives in the `refinery` layer (layers/refinery)."""

from refinery.handlers.metadata_refresh import handler

__all__ = ["handler"]
