"""The server fixtures work: write to each real server and read the data back."""

from __future__ import annotations

import time

import pytest
import requests

from refinery_tools.dev.servers import InfluxDB1Server, MotoS3Server, VictoriaMetricsServer

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_123_456_789  # ns


def test_influxdb1_write_and_read_back(influxdb1: InfluxDB1Server, influx_db: str) -> None:
    body = f"cf_app,app=web,space=prod\\ 1 cpu=0.5,mem=1024i {T0}\ncf_app,app=api,space=dev cpu=1.5 {T0 + 1}"
    resp = requests.post(f"{influxdb1.url}/write", params={"db": influx_db}, data=body.encode(), timeout=10)
    assert resp.status_code == 204, resp.text

    web = {"app": "web", "space": "prod 1"}
    assert influxdb1.points(influx_db, "cf_app") == [
        {"measurement": "cf_app", "tags": web, "fields": {"cpu": 0.5, "mem": 1024}, "time": T0},
        {
            "measurement": "cf_app",
            "tags": {"app": "api", "space": "dev"},
            "fields": {"cpu": 1.5},
            "time": T0 + 1,
        },
    ]
    assert influxdb1.count(influx_db, "cf_app") == 2


def test_influxdb1_databases_are_fresh(influxdb1: InfluxDB1Server, influx_db: str) -> None:
    assert influxdb1.points(influx_db, "cf_app") == []
    with pytest.raises(RuntimeError, match="404"):
        influxdb1.write(f"{influx_db}_missing", "m f=1")


def test_influxdb1_restart_keeps_port_and_data(influxdb1: InfluxDB1Server, influx_db: str) -> None:
    influxdb1.write(influx_db, f"probe,k=v f=1i {T0}")
    url, data_dir = influxdb1.url, influxdb1.data_dir

    influxdb1.restart()

    assert (influxdb1.url, influxdb1.data_dir) == (url, data_dir)
    assert influxdb1.points(influx_db, "probe") == [
        {"measurement": "probe", "tags": {"k": "v"}, "fields": {"f": 1}, "time": T0}
    ]


def test_victoriametrics_v2_write_and_export(victoriametrics: VictoriaMetricsServer) -> None:
    from influxdb_client import InfluxDBClient, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    ts = time.time_ns()
    with InfluxDBClient(url=victoriametrics.url, token="unused", org="o") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket="b", record=f"vm_probe,app=web,space=prod value=42 {ts}", write_precision=WritePrecision.NS
        )
    victoriametrics.force_flush()

    series = victoriametrics.export('{__name__="vm_probe_value"}', min_samples=1)
    labels = {"__name__": "vm_probe_value", "app": "web", "space": "prod"}
    assert series == [{"metric": labels, "values": [42], "timestamps": [ts // 1_000_000]}]


def test_moto_s3_put_and_get(moto_server: MotoS3Server, s3_bucket: str) -> None:
    import boto3

    s3 = boto3.session.Session().client("s3")
    assert s3.meta.endpoint_url == moto_server.url
    s3.put_object(Bucket=s3_bucket, Key="metadata/apps.json", Body=b'{"apps": []}')

    obj = s3.get_object(Bucket=s3_bucket, Key="metadata/apps.json")
    assert obj["Body"].read() == b'{"apps": []}'
