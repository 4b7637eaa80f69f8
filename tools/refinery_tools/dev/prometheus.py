"""A real Prometheus on 127.0.0.1 that accepts remote write, for tests and demos::

    with PrometheusServer() as prom:
        ...  # POST snappy protobuf to prom.write_url
        prom.samples('{__name__="http_request_count"}', at=time.time())

Debian's ``prometheus`` package (``scripts/install-test-servers.sh``), started with
``--web.enable-remote-write-receiver``, its TSDB in a temporary directory, no scrape targets.

Prometheus refuses samples older than about an hour before the newest one it holds ("out of
bounds") and, per series, samples older than the series' newest ("out of order"): tests that share
one server write timestamps near the present, in order.
"""

from __future__ import annotations

import time
from typing import Any

from refinery_tools.dev.servers import HOST, _ProcessServer

__all__ = ["PrometheusServer"]

_CONFIG = """\
global:
  scrape_interval: 1h
  evaluation_interval: 1h
scrape_configs: []
"""


class PrometheusServer(_ProcessServer):
    """Prometheus 2.x with the remote-write receiver (``/api/v1/write``) enabled."""

    name = "prometheus"
    binary = "prometheus"
    apt_package = "prometheus"
    ready_path = "/-/ready"
    ready_status = 200

    @property
    def write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def _command(self) -> list[str]:
        assert self._exe is not None
        conf = self.data_dir / "prometheus.yml"
        conf.write_text(_CONFIG)
        return [
            self._exe,
            f"--config.file={conf}",
            f"--storage.tsdb.path={self.data_dir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--web.enable-remote-write-receiver",
            "--log.level=warn",
        ]

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        resp = self._session.get(f"{self.url}{path}", params=params, timeout=30.0)
        body = resp.json() if resp.headers.get("Content-Type", "").startswith("application/json") else {}
        if resp.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(
                f"Prometheus {path} {params} failed: HTTP {resp.status_code}: {resp.text[:500]}"
            )
        return body["data"]

    def query(self, promql: str, *, at: float | None = None) -> dict[str, Any]:
        """``/api/v1/query`` at ``at`` (Unix seconds; default now): ``{"resultType", "result"}``."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        result: dict[str, Any] = self._get("/api/v1/query", params)
        return result

    def series(self, match: str, *, start: float, end: float) -> list[dict[str, str]]:
        """``/api/v1/series``: the label sets of the series matching ``match`` in [start, end]."""
        found: list[dict[str, str]] = self._get(
            "/api/v1/series", {"match[]": match, "start": start, "end": end}
        )
        return found

    def samples(
        self, selector: str, *, at: float, lookback: str = "2h"
    ) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
        """Every raw sample of the series matching ``selector`` in ``(at - lookback, at]``.

        One ``(labels, [(timestamp ms, value), ...])`` per series, sorted by labels.
        """
        data = self.query(f"{selector}[{lookback}]", at=at)
        out = [
            (
                dict(series["metric"]),
                [(round(float(t) * 1000), float(v)) for t, v in series["values"]],
            )
            for series in data["result"]
        ]
        out.sort(key=lambda item: sorted(item[0].items()))
        return out

    def wait_for(self, selector: str, count: int, *, at: float, timeout: float = 10.0) -> list[Any]:
        """:meth:`samples`, polled until at least ``count`` samples are visible or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.samples(selector, at=at)
            if sum(len(values) for _, values in found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)
