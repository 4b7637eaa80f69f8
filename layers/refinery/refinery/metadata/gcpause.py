"""Pausing the cyclic garbage collector while bulk acyclic data is built.

The metadata refresh builds hundreds of thousands of dicts, lists, tuples and :class:`AppInfo` objects
(a 5000-app Cloud Controller page alone parses into ~200 000 containers), none of which can form a
reference cycle. With the collector on, every 700 new containers trigger a collection, and the
growing heap triggers full collections over everything the process holds (boto3's models included):
measured at 100 000 apps, that is a quarter to a third of the refresh. Reference counting still frees
everything that is dropped; cycles created meanwhile wait for the next collection after the pause.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC; re-enable it only if it was enabled (so this nests, and a thread that finds
    it paused by another leaves it to that one). Usable as a decorator too."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
