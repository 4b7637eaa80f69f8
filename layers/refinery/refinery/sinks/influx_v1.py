"""InfluxDB 1.x ``/write`` API (up to 1.7; 1.8+ also speaks v2), over requests."""

from __future__ import annotations

import requests

from .. import __version__
from ..config import InfluxConfig
from ..retry_after import parse_retry_after
from .base import Retryable, Sink, classify_status
from .gzip_body import gzip_body


class InfluxV1Sink(Sink):
    name = "influxdb-v1"

    def __init__(self, config: InfluxConfig, **kwargs: object):
        super().__init__(
            batch_size=config.batch_size,
            timeout=config.timeout,
            max_retry_wait=config.max_retry_wait,
            concurrency=config.write_concurrency,
            **kwargs,
        )  # type: ignore[arg-type]
        self.config = config
        self.url = f"{config.url}/write"
        self.params = {"db": config.database, "precision": "ns"}
        if config.retention_policy:
            self.params["rp"] = config.retention_policy
        # One session for every write thread: its urllib3 pool is thread-safe, sized for them.
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(10, config.write_concurrency))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(
            {
                "User-Agent": f"refinery/{__version__}",
                "Content-Type": "text/plain; charset=utf-8",
            }
        )
        if config.gzip:
            self.session.headers["Content-Encoding"] = "gzip"
        if config.username:
            self.session.auth = (config.username, config.password)
        self.session.verify = config.verify_tls

    def post(self, body: bytes, timeout: float) -> None:
        if self.config.gzip:
            body = gzip_body(body)
        try:
            # verify per request: requests lets REQUESTS_CA_BUNDLE override a session-level verify=False
            response = self.session.post(
                self.url, params=self.params, data=body, timeout=timeout, verify=self.config.verify_tls
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Retryable(f"POST {self.url}: {type(exc).__name__}") from exc
        if response.status_code in (200, 204):
            return
        message = f"POST {self.url} answered {response.status_code}: {response.text.strip()[:500]}"
        raise classify_status(
            response.status_code, message, parse_retry_after(response.headers.get("Retry-After"))
        )

    def close(self) -> None:
        super().close()
        self.session.close()
