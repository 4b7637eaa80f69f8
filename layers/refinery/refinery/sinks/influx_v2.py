"""InfluxDB v2 write API (2.x, 3.x, Cloud, 1.8+ and compatible servers) through influxdb-client.

The client is imported when the sink is built (it costs ~250 ms), synchronous mode, no client-side
retries: :class:`~refinery.sinks.base.Sink` retries within the invocation's deadline instead.
"""

from __future__ import annotations

from ..config import InfluxConfig
from ..retry_after import parse_retry_after
from .base import Retryable, Sink, classify_status


class InfluxV2Sink(Sink):
    name = "influxdb-v2"

    def __init__(self, config: InfluxConfig, **kwargs: object):
        super().__init__(
            batch_size=config.batch_size,
            timeout=config.timeout,
            max_retry_wait=config.max_retry_wait,
            **kwargs,
        )  # type: ignore[arg-type]
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS

        from .. import __version__

        self.config = config
        self.precision = WritePrecision.NS
        self.client = InfluxDBClient(
            url=config.url,
            token=config.token,
            org=config.org,
            timeout=int(config.timeout * 1000),
            enable_gzip=config.gzip,
            verify_ssl=config.verify_tls,
            retries=False,
        )
        self.client.api_client.user_agent = f"refinery/{__version__}"
        self.write_api = self.client.write_api(write_options=SYNCHRONOUS)

    def post(self, body: bytes, timeout: float) -> None:
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self.write_api.write(
                bucket=self.config.bucket,
                org=self.config.org,
                record=body,
                write_precision=self.precision,
                _request_timeout=timeout,
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            headers = exc.headers or {}
            detail = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
            message = (
                f"write to {self.config.url} bucket {self.config.bucket!r} answered {status}: {detail[:500]}"
            )
            if status == 0:
                raise Retryable(message) from exc
            raise classify_status(status, message, parse_retry_after(headers.get("Retry-After"))) from exc
        except (HTTPError, OSError) as exc:
            raise Retryable(f"write to {self.config.url}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.client.close()
