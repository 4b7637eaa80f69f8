"""HTTP for the sinks: every request bounded by wall clock, whatever the server does.

requests' (urllib3's) timeouts bound each socket operation, not the request: a server that sends
its headers at once and then one byte every half second never trips a 2 s read timeout, and one
request could run for minutes. Every sink request therefore runs under a *time limit*
(:func:`time_limit`): the sinks' sessions use connections (:class:`BoundedAdapter`) whose socket,
before each send and each receive, takes as its timeout the smaller of the per-operation timeout
and the time left until the limit, and raises :class:`TimeoutError` once it is reached. Headers,
body and a chunked answer are all covered; the sink gives each request
``min(timeout setting, time left in the invocation)``.

:func:`describe_failure` words a failed request for a person (``connection refused``, ``no complete
answer within 2.0 s``) without quoting the library's message, which repeats the URL and its query.
"""

from __future__ import annotations

import errno
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError, ReadTimeoutError

from .. import __version__
from ..config import HttpWriteConfig, redact_url
from ..retry_after import parse_retry_after
from .base import Misconfigured, Retryable, classify_status
from .chunked import ChunkedSink
from .gzip_body import gzip_body
from .refusal import error_text

#: Longest time spent connecting (TCP and TLS), within the request's own limit.
CONNECT_TIMEOUT = 5.0
#: Most bytes of an answer's body read (an error's text; InfluxDB 3 lists up to 100 refused lines).
MAX_ANSWER_BYTES = 256 * 1024

_local = threading.local()


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Every send and receive of this thread's requests inside the block ends within ``seconds``."""
    previous = getattr(_local, "end", None)
    _local.end = time.monotonic() + max(seconds, 0.0)
    try:
        yield
    finally:
        _local.end = previous


class _BoundedSocket:
    """A connection's socket whose sends and receives end by the thread's :func:`time_limit`.

    http.client reads an answer through ``sock.makefile("rb")``: the file made here reads through
    :meth:`recv_into` below, so the status line, the headers and the body are all bounded.
    """

    __slots__ = ("_sock", "_timeout")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._timeout = sock.gettimeout()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def settimeout(self, value: float | None) -> None:
        self._timeout = value
        self._sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._timeout

    def _arm(self) -> None:
        end = getattr(_local, "end", None)
        if end is None:
            self._sock.settimeout(self._timeout)
            return
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's time is up")
        self._sock.settimeout(left if self._timeout is None else min(self._timeout, left))

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return self._sock.recv(bufsize, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self._arm()
        return self._sock.send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        self._sock.sendall(data, flags)

    def makefile(self, mode: str = "r", buffering: int | None = None, **kwargs: Any) -> Any:
        if mode != "rb":
            return self._sock.makefile(mode, buffering, **kwargs)  # type: ignore[call-overload]  # forwarded
        raw = socket.SocketIO(self, "rb")  # type: ignore[arg-type]  # reads through self.recv_into
        self._sock._io_refs += 1  # type: ignore[attr-defined]  # as socket.makefile does; SocketIO.close undoes it
        return io.BufferedReader(raw, io.DEFAULT_BUFFER_SIZE if buffering in (None, -1, 0) else buffering)


class _Connection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = _BoundedSocket(self.sock)


class _TLSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = _BoundedSocket(self.sock)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


_POOLS = {"http": _Pool, "https": _TLSPool}


class BoundedAdapter(HTTPAdapter):
    """requests' adapter whose connections honour :func:`time_limit` (directly or through an HTTP proxy)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS proxies bring their own connection classes
            manager.pool_classes_by_scheme = _POOLS
        return manager


def bounded_session(pool_size: int = 10) -> requests.Session:
    """A session whose requests honour :func:`time_limit`, for every sink."""
    session = requests.Session()
    adapter = BoundedAdapter(pool_maxsize=max(10, pool_size))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def read_answer(response: requests.Response, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The start of an answer's body (at most ``limit`` bytes; the rest is not read)."""
    data = bytearray()
    for piece in response.iter_content(16 * 1024):
        data += piece
        if len(data) >= limit:
            break
    return bytes(data[:limit])


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by the server",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "the server closed the connection while the request was sent",
    errno.ETIMEDOUT: "connection timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTDOWN: "host down",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (causes, contexts, urllib3's ``reason``, exceptions in ``args``)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(inner, BaseException):
                todo.append(inner)
        todo.extend(arg for arg in current.args if isinstance(arg, BaseException))


def describe_failure(exc: BaseException, limit: float, elapsed: float) -> str:
    """A request that got no answer, in words: ``connection refused (ConnectionError)``.

    ``limit`` is the request's time limit and ``elapsed`` how long it ran: a request cut at its limit
    is "no complete answer within …", whatever the library called it. The library's own message is
    never quoted (it repeats the URL with its query).
    """
    kind = type(exc).__name__
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, socket.gaierror):
            return f"the host name could not be resolved ({kind})"
        if isinstance(e, ssl.SSLError):
            return f"TLS error: {e.reason or e.strerror or type(e).__name__} ({kind})"
        if isinstance(e, OSError) and e.errno in _ERRNO_WORDS:
            return f"{_ERRNO_WORDS[e.errno]} ({kind})"
    # (urllib3's NewConnectionError, any failure to connect, is a ConnectTimeoutError too)
    if any(
        isinstance(e, requests.ConnectTimeout)
        or (isinstance(e, ConnectTimeoutError) and not isinstance(e, NewConnectionError))
        for e in chain
    ):
        return f"no connection within {min(limit, CONNECT_TIMEOUT):.1f} s ({kind})"
    if elapsed >= limit - 0.01 or any(
        isinstance(e, (ReadTimeoutError, TimeoutError, requests.ReadTimeout)) for e in chain
    ):
        return f"no complete answer within {limit:.1f} s ({kind})"
    if any(isinstance(e, (ProtocolError, ConnectionError)) for e in chain):
        return f"the server closed the connection without a complete answer ({kind})"
    if any(isinstance(e, NewConnectionError) for e in chain):
        return f"cannot connect ({kind})"
    return kind


def quote_answer(text: str, size: int = 300) -> str:
    """The start of an answer's body, quoted on one line, for an error message."""
    return repr(excerpt(text, size)) if text.strip() else "(an empty body)"


def excerpt(text: str, size: int = 500) -> str:
    """An answer's body on one line, cut at ``size`` characters (for messages and quarantine details)."""
    flat = " ".join(text.split())
    return flat[:size] + ("…" if len(flat) > size else "")


def write_settings(config: HttpWriteConfig) -> dict[str, Any]:
    """The :class:`HttpSink` arguments of the transport settings every HTTP write sink shares
    (``INFLUX_*`` / ``PROM_*``: batch size, timeout, TLS verification, longest retry wait)."""
    return {
        "verify": config.verify,
        "batch_size": config.batch_size,
        "timeout": config.timeout,
        "max_retry_wait": config.max_retry_wait,
    }


class HttpSink(ChunkedSink):
    """A sink that POSTs each chunk to one URL (requests), each request bounded by wall clock.

    Subclasses set the URL, query parameters and headers, and say which answers are success
    (:meth:`check`). URLs in messages are redacted (:func:`refinery.config.redact_url`).
    """

    def __init__(
        self,
        url: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        verify: bool | str = True,
        gzip: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.url = url
        self.shown_url = redact_url(url)
        self.params = dict(params or {})
        self.gzip = gzip
        # One session for every write thread: its urllib3 pool is thread-safe, sized for them.
        self.session = bounded_session(self.concurrency)
        self.session.headers.update({"User-Agent": f"refinery/{__version__}", **(headers or {})})
        if gzip:
            self.session.headers["Content-Encoding"] = "gzip"
        self.verify = verify
        self.session.verify = verify

    def post(self, body: bytes, timeout: float) -> None:
        status, headers, text = self.exchange(gzip_body(body) if self.gzip else body, timeout)
        self.check(status, headers, text)

    def exchange(self, body: bytes, timeout: float) -> tuple[int, Mapping[str, str], str]:
        """POST ``body``; (status, headers, the start of the answer's body), all within ``timeout``."""
        started = time.monotonic()
        try:
            with time_limit(timeout):
                # verify per request: requests lets REQUESTS_CA_BUNDLE override a session-level verify=False
                response = self.session.post(
                    self.url,
                    params=self.params,
                    data=body,
                    timeout=(min(CONNECT_TIMEOUT, timeout), timeout),
                    verify=self.verify,
                    stream=True,
                    allow_redirects=False,
                )
                try:
                    data = read_answer(response)
                finally:
                    response.close()
        except (requests.RequestException, OSError) as exc:
            elapsed = time.monotonic() - started
            # Not chained (from None): the library's message repeats the URL with its query, which may hold
            # what redact_url hides; the words and the exception's type say what happened.
            raise Retryable(f"POST {self.shown_url}: {describe_failure(exc, timeout, elapsed)}") from None
        return response.status_code, response.headers, data.decode("utf-8", "replace")

    def check(self, status: int, headers: Mapping[str, str], text: str) -> None:
        """InfluxDB (1.x, 2.x, 3.x) and VictoriaMetrics answer a write with 204: anything else is an error."""
        if status == 204:
            return
        if 200 <= status < 300:
            raise Misconfigured(
                f"POST {self.shown_url} answered {status}, not 204 No Content, so it is not InfluxDB's "
                "write API that answered (a proxy, a login page, another server?); its answer begins "
                + quote_answer(text),
                status,
                body=text,
            )
        self.check_error(status, headers, text)

    def check_error(self, status: int, headers: Mapping[str, str], text: str) -> None:
        if 300 <= status < 400:
            location = redact_url(headers.get("Location") or "") or "nowhere"
            raise Misconfigured(
                f"POST {self.shown_url} answered {status}, a redirect to {location}: give the URL it "
                "points to (redirects are not followed)",
                status,
            )
        raise classify_status(
            status,
            f"POST {self.shown_url} answered {status}: {excerpt(error_text(text)) or '(an empty body)'}",
            parse_retry_after(headers.get("Retry-After")),
            body=text,
        )

    def close(self) -> None:
        super().close()
        self.session.close()
