"""X-Ray traces through Powertools Tracer, built only when tracing is on.

Tracing is on when the function runs in Lambda (``LAMBDA_TASK_ROOT``), not under ``sam local``, and
``POWERTOOLS_TRACE_DISABLED`` is not true: Powertools Tracer's own rule. The template sets
``POWERTOOLS_TRACE_DISABLED=true`` unless its ``ActiveTracing`` parameter is ``true``.

Importing this module imports neither the Tracer nor ``aws_xray_sdk``: creating a Powertools Tracer
imports ``aws_xray_sdk.core`` even when tracing is disabled (about 40 ms in Lambda, over a second
elsewhere, where the SDK's sampler loads botocore), and the enricher's cold start is a benchmark
target. When tracing is off, :func:`subsegment` and :func:`traced` cost one flag check per call and
nothing is ever imported. When it is on, the Tracer is created at the first traced call (the
handler), with requests patched, so the S3, Secrets Manager and SSM requests (signed by refinery over
requests: :mod:`refinery.awsclient`), Cloud Controller, UAA and InfluxDB v1 requests appear as
subsegments under the named ones opened here; botocore is patched only if it is used
(:func:`patch_botocore`: where the environment lacks credentials, :mod:`refinery.aws`), as importing
it for the patch would cost what not using it saves:

* ``## handler`` (Powertools' ``capture_lambda_handler``: cold start and service annotations),
* ``## sink write`` around a sink's write of a batch (chunks, splits, retries),
* ``## snapshot fetch`` and ``## quarantine write`` around the S3 calls,
* ``## cc list apps``, ``## cc get app`` and ``## uaa token`` around the Cloud Controller calls,
* ``## S3 GetObject``, ``## Secrets Manager GetSecretValue``, … around each AWS operation made by
  :mod:`refinery.awsclient` (its attempts are the HTTP subsegments under it).

Annotations are few and never hold secrets or per-record data.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

#: Libraries whose calls become subsegments when tracing is on (and botocore once it is used).
PATCH_MODULES = ("requests",)
_TRUE = ("1", "y", "yes", "t", "true", "on")

_enabled: bool | None = None
_tracer: Any = None


def tracing_enabled() -> bool:
    """Powertools Tracer's rule, decided once per process (the environment does not change)."""
    global _enabled
    if _enabled is None:
        disabled = os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() in _TRUE
        in_lambda = bool(os.environ.get("LAMBDA_TASK_ROOT"))
        emulated = bool(os.environ.get("AWS_SAM_LOCAL") or os.environ.get("AWS_CHALICE_CLI_MODE"))
        _enabled = in_lambda and not emulated and not disabled
    return _enabled


def tracer() -> Any:
    """The Powertools Tracer, created (and the libraries patched) on first use; None when off."""
    global _tracer
    if _tracer is None and tracing_enabled():
        from aws_lambda_powertools import Tracer

        created = Tracer(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "refinery"), auto_patch=False)
        created.patch(PATCH_MODULES)
        _tracer = created
    return _tracer


def patch_botocore() -> None:
    """Record botocore's calls as subsegments, when tracing is on (:mod:`refinery.aws` calls this
    when it makes its botocore session)."""
    active = tracer() if tracing_enabled() else None
    if active is not None:
        active.patch(("botocore",))


def reset_for_tests(enabled: bool | None = None) -> None:
    """Forget the decision (and the tracer): tests only."""
    global _enabled, _tracer
    _enabled, _tracer = enabled, None


@contextmanager
def subsegment(name: str, **annotations: str | int | float | bool) -> Iterator[Any]:
    """A subsegment named ``name`` with ``annotations``, or nothing when tracing is off."""
    active = tracer() if tracing_enabled() else None
    if active is None:
        yield None
        return
    with active.provider.in_subsegment(name) as segment:
        for key, value in annotations.items():
            segment.put_annotation(key, value)
        yield segment


def traced(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: run the function inside :func:`subsegment` ``name`` (errors are recorded on it)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not tracing_enabled():
                return fn(*args, **kwargs)
            with subsegment(name):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def trace_handler(handler: Callable[[Any, Any], R]) -> Callable[[Any, Any], R]:
    """Decorator for a Lambda handler: Powertools' ``capture_lambda_handler`` when tracing is on.

    The response is not recorded (the enricher's summary can be large); an error's message is.
    """
    wrapped: list[Callable[[Any, Any], R]] = []

    @functools.wraps(handler)
    def wrapper(event: Any, context: Any) -> R:
        if not tracing_enabled():
            return handler(event, context)
        if not wrapped:
            wrapped.append(tracer().capture_lambda_handler(handler, capture_response=False))
        return wrapped[0](event, context)

    return wrapper
