"""A scripted proxy in front of a real server (InfluxDB, VictoriaMetrics, moto S3) that misbehaves on demand.

Every request is forwarded unchanged unless ``proxy.rule(request)`` returns an :class:`Answer`, which
says what the proxy does instead: answer with any status and body, answer slowly (the headers at once,
then one body byte every ``trickle`` seconds; or even the headers byte by byte), or accept the request
and never answer (``stall``) until the rule changes or the proxy stops. The rule sees the method, the
path, the headers and the body (gunzipped), so it can pick one chunk of a batch, or S3's GET of one key.

``requests`` lists every request seen; ``count(path_prefix)`` counts them.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from refinery_tools.dev.servers import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes  # gunzipped when the request was

    @property
    def lines(self) -> list[str]:
        return self.body.decode("utf-8", "replace").splitlines()


@dataclass
class Answer:
    """What the proxy does with a request instead of forwarding it."""

    status: int = 503
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    trickle: float | None = None  # seconds between body bytes (status and headers at once)
    trickle_headers: float | None = None  # seconds between the bytes of the status line and headers
    stall: bool = False  # read the request, never answer


Rule = Callable[[Request], Answer | None]


class ScriptedProxy:
    def __init__(self, upstream: str | None = None):
        self.upstream = (upstream or "").rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rule: Rule = lambda request: None
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def count(self, prefix: str = "/") -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path.startswith(prefix))

    def start(self) -> ScriptedProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" and raw else raw
                request = Request(self.command, self.path, dict(self.headers.items()), body)
                with proxy._lock:
                    proxy.requests.append(request)
                answer = proxy.rule(request)
                if answer is None:
                    self._forward(raw)
                elif answer.stall:  # until the rule stops stalling it, or the proxy stops
                    while not proxy._stopping.wait(0.05):
                        again = proxy.rule(request)
                        if again is None or not again.stall:
                            break
                    self.close_connection = True
                else:
                    self._answer(answer)

            def _answer(self, answer: Answer) -> None:
                head = f"HTTP/1.1 {answer.status} {self.responses.get(answer.status, ('?',))[0]}\r\n"
                for key, value in {"Content-Type": "text/plain", **answer.headers}.items():
                    head += f"{key}: {value}\r\n"
                head += f"Content-Length: {len(answer.body)}\r\n\r\n"
                try:
                    if answer.trickle_headers:
                        for byte in head.encode():
                            if proxy._stopping.wait(answer.trickle_headers):
                                return
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                    else:
                        self.wfile.write(head.encode())
                        self.wfile.flush()
                    if answer.trickle:
                        for byte in answer.body:
                            if proxy._stopping.wait(answer.trickle):
                                return
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                    else:
                        self.wfile.write(answer.body)
                except OSError:  # the client gave up: what the test wants to see
                    pass
                self.close_connection = True

            def _forward(self, raw: bytes) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
                try:
                    upstream = requests.request(
                        self.command,
                        proxy.upstream + self.path,
                        data=raw,
                        headers=headers,
                        timeout=60,
                        stream=True,
                    )
                    # the bytes as the server sent them (a gzip-encoded S3 object keeps its checksum)
                    payload = b"" if self.command == "HEAD" else upstream.raw.read(decode_content=False)
                except requests.RequestException:
                    self.close_connection = True
                    return
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="scripted-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            # shutdown() waits for serve_forever's 0.5 s poll: let it finish in the background.
            def close() -> None:
                server.shutdown()
                server.server_close()

            threading.Thread(target=close, name="scripted-proxy-stop", daemon=True).start()

    def __enter__(self) -> ScriptedProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
