"""Enricher Lambda entry point. The logic lives in the `refinery` layer (layers/refinery)."""

from refinery.handlers.enricher import handler

__all__ = ["handler"]
