"""InfluxDB v2 write API (``/api/v2/write``: 2.x, 3.x, Cloud, 1.8+, VictoriaMetrics), over requests.

The request is the one influxdb-client would send (``org``, ``bucket``, ``precision=ns``, a
``Token`` authorization, gzip), made with the same bounded HTTP as the v1 sink
(:mod:`refinery.sinks.http`): a whole request, answer included, is bounded by wall clock and by the
invocation's deadline, and only 204 is success. (influxdb-client's timeouts bound each socket read,
so a trickling answer could outlast them, and it takes any 2xx as success; it is no longer imported,
which also saves ~250 ms of cold start.)
"""

from __future__ import annotations

from typing import Any

from ..config import InfluxConfig
from .http import HttpSink, write_settings


class InfluxV2Sink(HttpSink):
    name = "influxdb-v2"

    def __init__(self, config: InfluxConfig, **kwargs: Any):
        super().__init__(
            f"{config.url}/api/v2/write",
            params={"org": config.org, "bucket": config.bucket, "precision": "ns"},
            headers={
                "Content-Type": "text/plain; charset=utf-8",
                "Authorization": f"Token {config.token}",
            },
            gzip=config.gzip,
            **write_settings(config),
            **kwargs,
        )
        self.config = config
