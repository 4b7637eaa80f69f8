"""A fault-injecting HTTP proxy in front of a real server (tests, demos of failure handling).

Requests are forwarded to ``upstream`` unchanged unless a fault is armed::

    with FaultProxy(influx.url) as proxy:
        proxy.fail_next(2, status=503, retry_after="1")   # then forwards again
        proxy.reset_connections(True)                      # drop every connection
        proxy.set_delay(2.0)                               # slow responses

``requests_seen`` counts requests by path, ``forwarded`` counts those that reached the upstream.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from refinery_tools.dev.servers import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


class FaultProxy:
    def __init__(self, upstream: str, port: int | None = None):
        self.upstream = upstream.rstrip("/")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._failures: list[tuple[int, dict[str, str], bytes]] = []
        self._reset = False
        self._delay = 0.0
        self.requests_seen: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- faults ---------------------------------------------------------------------------------
    def fail_next(
        self, count: int, status: int = 503, retry_after: str | None = None, body: bytes = b""
    ) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self._lock:
            self._failures.extend(
                (status, headers, body or f"injected {status}".encode()) for _ in range(count)
            )

    def reset_connections(self, enabled: bool) -> None:
        with self._lock:
            self._reset = enabled

    def set_delay(self, seconds: float) -> None:
        with self._lock:
            self._delay = seconds

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()
            self._reset = False
            self._delay = 0.0

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                with proxy._lock:
                    proxy.requests_seen[path] += 1
                    reset, delay = proxy._reset, proxy._delay
                    failure = proxy._failures.pop(0) if proxy._failures else None
                if delay:
                    time.sleep(delay)
                if reset:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if failure is not None:
                    status, headers, payload = failure
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
                try:
                    upstream = requests.request(
                        self.command, proxy.upstream + self.path, data=body, headers=headers, timeout=60
                    )
                except requests.RequestException:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                with proxy._lock:
                    proxy.forwarded[path] += 1
                payload = upstream.content
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP | {"content-encoding"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
