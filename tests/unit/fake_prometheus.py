"""A local remote-write server with Prometheus' append rules (2.42, no out-of-order window) and its
remote-read endpoint, over one in-memory store (unit tests of the remote-write sink and of replay)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cramjam

from refinery.sinks.remote_read import _classes, same_value
from refinery.sinks.remote_write_proto import write_request_class
from refinery_tools.dev.servers import free_port

Labels = tuple[tuple[str, str], ...]


class FakePrometheus:
    """Remote write and remote read over one in-memory store, with Prometheus' append rules: per series,
    a sample newer than the newest is appended, one at the newest time is accepted only with the same
    value, an older one is refused; a refused request is rolled back whole (400)."""

    def __init__(self) -> None:
        self.series: dict[Labels, dict[int, float]] = {}
        self.writes = 0
        self.reads = 0
        self.read_status = 200
        self.too_old_before: int | None = None  # ms: answer 500 "too old sample" for older samples
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = bytes(
                    cramjam.snappy.decompress_raw(self.rfile.read(int(self.headers["Content-Length"])))
                )
                if self.path.endswith("/read"):
                    fake.reads += 1
                    status, payload = fake.read(body)
                else:
                    fake.writes += 1
                    status, payload = fake.write(body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/v1/write"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def write(self, body: bytes) -> tuple[int, bytes]:
        request = write_request_class().FromString(body)
        pending: dict[Labels, dict[int, float]] = {}
        for ts in request.timeseries:
            labels = tuple(sorted((label.name, label.value) for label in ts.labels))
            stored = self.series.get(labels, {})
            newest = max(stored, default=None)
            for sample in ts.samples:
                t, v = sample.timestamp, sample.value
                if self.too_old_before is not None and t < self.too_old_before:
                    return 500, b"too old sample"
                if newest is not None and t < newest:
                    return 400, b"out of order sample"
                if newest is not None and t == newest and not same_value(stored[t], v):
                    return 400, b"duplicate sample for timestamp"
                pending.setdefault(labels, {})[t] = v
        for labels, samples in pending.items():
            self.series.setdefault(labels, {}).update(samples)
        return 204, b""

    def read(self, body: bytes) -> tuple[int, bytes]:
        if self.read_status != 200:
            return self.read_status, b"404 page not found"
        request_class, response_class = _classes()
        request = request_class.FromString(body)
        response = response_class()
        for query in request.queries:
            wanted = {(m.name, m.value) for m in query.matchers}
            result = response.results.add()
            for labels, samples in self.series.items():
                if wanted <= set(labels):
                    series = result.timeseries.add()
                    for name, value in labels:
                        series.labels.add(name=name, value=value)
                    for t in sorted(samples):
                        if query.start_timestamp_ms <= t <= query.end_timestamp_ms:
                            series.samples.add(timestamp=t, value=samples[t])
        return 200, bytes(cramjam.snappy.compress_raw(response.SerializeToString()))

    def values(self, name: str) -> dict[int, float]:
        return {
            t: v for labels, s in self.series.items() if ("__name__", name) in labels for t, v in s.items()
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
