"""InfluxDB 1.x ``/write`` API (up to 1.7; 1.8+ also speaks v2), over requests."""

from __future__ import annotations

from typing import Any

from ..config import InfluxConfig
from .http import HttpSink, write_settings


class InfluxV1Sink(HttpSink):
    name = "influxdb-v1"

    def __init__(self, config: InfluxConfig, **kwargs: Any):
        params = {"db": config.database, "precision": "ns"}
        if config.retention_policy:
            params["rp"] = config.retention_policy
        super().__init__(
            f"{config.url}/write",
            params=params,
            headers={"Content-Type": "text/plain; charset=utf-8"},
            gzip=config.gzip,
            **write_settings(config),
            concurrency=config.write_concurrency,
            **kwargs,
        )
        self.config = config
        if config.username:
            self.session.auth = (config.username, config.password)
