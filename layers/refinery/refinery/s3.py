"""The S3 client, created on first use (through :mod:`refinery.aws`), every call bounded.

The client is :mod:`refinery.awsclient`'s where the environment holds the credentials (Lambda), else
botocore's. Either has timeouts for each socket operation and retries on its own, but an S3 that
accepts connections and answers slowly, or a run of retries, could still hold the enricher past its
Lambda timeout. Every call made through :attr:`LazyS3Client.client` therefore

* has the timeouts :data:`CONNECT_TIMEOUT` and :data:`READ_TIMEOUT` and at most
  :data:`MAX_ATTEMPTS` attempts;
* runs in a worker thread that the caller waits for at most the call's *limit*: the smallest of
  :data:`CALL_LIMIT`, the time the invocation has left (``deadline``, less :data:`DEADLINE_MARGIN`)
  and any :func:`time_limit` the caller set (the snapshot check sets a small one). Past it the call
  raises :class:`S3Timeout`; the abandoned worker ends on its own within the client's timeouts, and
  its result is dropped;
* for ``get_object``, reads the body in that thread too (at most :data:`MAX_OBJECT_BYTES`), so the
  returned ``Body`` is already in memory.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

#: The client's timeouts (each connect, each read) and attempts (its own retries) for every S3 call.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
MAX_ATTEMPTS = 2
#: Longest any one S3 call may take, whatever the time left.
CALL_LIMIT = 20.0
#: Time kept back from the invocation's deadline: an S3 call gives up that long before it.
DEADLINE_MARGIN = 0.5
#: Largest S3 object read into memory (the snapshot, a rules file): a bigger one is refused.
MAX_OBJECT_BYTES = 128 * 1024 * 1024

_local = threading.local()


class S3Timeout(TimeoutError):
    """An S3 call did not finish within its limit (S3 hung, or too little time was left)."""


class ObjectTooLarge(ValueError):
    """An object bigger than :data:`MAX_OBJECT_BYTES`."""


class InvocationDeadline(Protocol):
    def remaining_ms(self) -> int: ...


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """S3 calls of this thread inside the block take at most ``seconds`` (on top of the other limits)."""
    previous = getattr(_local, "end", None)
    _local.end = time.monotonic() + seconds
    try:
        yield
    finally:
        _local.end = previous


def make_client() -> Any:
    """An S3 client with the bounded timeouts and attempts (the container's, shared: :mod:`refinery.aws`)."""
    from . import aws

    return aws.client(
        "s3",
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
    )


class _Body:
    """A ``get_object`` body already read (what callers use of a streaming body: ``read``, ``close``)."""

    def __init__(self, data: bytes):
        self._stream = io.BytesIO(data)

    def read(self, amt: int | None = None) -> bytes:
        return self._stream.read(amt)

    def close(self) -> None:
        self._stream.close()


def _read_whole(method: Callable[..., Any]) -> Callable[..., Any]:
    def get_object(**kwargs: Any) -> Any:
        response = method(**kwargs)
        body = response["Body"]
        try:
            size = response.get("ContentLength")
            if size is not None and size > MAX_OBJECT_BYTES:
                raise ObjectTooLarge(
                    f"s3://{kwargs.get('Bucket')}/{kwargs.get('Key')} has {size} bytes, more than the "
                    f"{MAX_OBJECT_BYTES // 2**20} MiB an object may have"
                )
            data = body.read(MAX_OBJECT_BYTES + 1)
            if len(data) > MAX_OBJECT_BYTES:
                raise ObjectTooLarge(
                    f"s3://{kwargs.get('Bucket')}/{kwargs.get('Key')} has more than the "
                    f"{MAX_OBJECT_BYTES // 2**20} MiB an object may have"
                )
        finally:
            body.close()
        return {**response, "Body": _Body(data)}

    return get_object


#: Client methods that make no request themselves.
_UNBOUNDED = frozenset({"get_paginator", "get_waiter", "can_paginate", "close", "generate_presigned_url"})


class BoundedClient:
    """An S3 client whose every call ends within its limit (see the module's documentation)."""

    def __init__(self, client: Any, limit: Callable[[], float]):
        self._client = client
        self._limit = limit

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if (
            not callable(method)
            or name.startswith("_")
            or name in ("get_paginator", "get_waiter", "can_paginate")
        ):
            return method
        if name == "get_object":
            method = _read_whole(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return run_bounded(lambda: method(*args, **kwargs), self._limit(), f"S3 {name}")

        return call


def run_bounded(work: Callable[[], Any], limit: float, what: str) -> Any:
    """``work()`` in a worker thread, waited for at most ``limit`` seconds (:class:`S3Timeout` then)."""
    end = getattr(_local, "end", None)
    if end is not None:
        limit = min(limit, end - time.monotonic())
    if limit <= 0:
        raise S3Timeout(f"{what}: no time left in the invocation to call S3")
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="s3-call", daemon=True)
    worker.start()
    worker.join(limit)
    if not outcome:
        raise S3Timeout(f"{what}: S3 did not answer within {limit:.1f} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


class LazyS3Client:
    """Gives a class a bounded ``s3`` client built on first use (see the module's documentation).

    ``deadline``: the invocation's (set by the handler for each invocation); S3 calls end
    :data:`DEADLINE_MARGIN` before it. None: only :data:`CALL_LIMIT` applies.
    """

    _client: Any = None
    deadline: InvocationDeadline | None = None

    @property
    def client(self) -> BoundedClient:
        if self._client is None:
            self._client = make_client()
        bounded = self.__dict__.get("_bounded")
        if bounded is None or bounded._client is not self._client:
            bounded = self.__dict__["_bounded"] = BoundedClient(self._client, self.s3_limit)
        return bounded

    def s3_limit(self) -> float:
        """How long the next S3 call may take."""
        if self.deadline is None:
            return CALL_LIMIT
        return min(CALL_LIMIT, self.deadline.remaining_ms() / 1000.0 - DEADLINE_MARGIN)
