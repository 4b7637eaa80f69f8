"""TLS verification is on by default; switching it off works, and is logged once, as a warning; a
private CA is trusted through the ``*_CA_BUNDLE`` settings.

InfluxDB 1.x, VictoriaMetrics (remote write) and the fake Cloud Controller are put behind a
TLS-terminating relay (real TLS handshakes) with a certificate for 127.0.0.1 that no trust store knows:
self-signed, or issued by a private CA generated here. With the defaults the enricher's writes and the
refresh's Cloud Controller calls fail on the certificate; with ``INFLUX_VERIFY_TLS=false`` /
``CF_VERIFY_TLS=false`` they succeed, and each setting is warned about once per container, not once per
invocation; with ``CF_CA_BUNDLE`` / ``INFLUX_CA_BUNDLE`` / ``PROM_CA_BUNDLE`` naming the private CA (a
PEM file, or the PEM in a Secrets Manager secret) they succeed with verification on, and another CA is
refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import ipaddress
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mixed_batch import CC_SECRET, mixed_batch

from refinery.handlers import enricher, metadata_refresh
from refinery.observability import reset_tls_warnings
from refinery.sinks import FlushError
from refinery_tools.dev.fake_cc import FakeCloudController
from refinery_tools.lambda_context import LocalContext

pytestmark = pytest.mark.integration


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def private_ca(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA (``ca.pem``) and a server certificate for 127.0.0.1 that it issued: (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path = directory / "ca.pem", directory / "cert.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca_path, cert_path, _write_key(key, directory / "key.pem")


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class TlsRelay:
    """Accepts TLS on 127.0.0.1 and relays the decrypted bytes to a plain TCP upstream."""

    def __init__(self, upstream_port: int, cert: Path, key: Path):
        self.upstream_port = upstream_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}"
        self.handshake_failures = 0
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshake_failures += 1
            raw.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopped = True
        self.listener.close()


@pytest.fixture
def tls(
    tmp_path: Path, influxdb1: Any, influx_db: str, s3_bucket: str, monkeypatch
) -> Iterator[dict[str, Any]]:
    import boto3

    batch = mixed_batch(records=200, seed=23)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="metadata/apps.json.gz", Body=batch.snapshot)
    cert, key = self_signed(tmp_path)
    with FakeCloudController(batch.foundation, client_id="refinery", client_secret=CC_SECRET) as cc:
        influx_relay = TlsRelay(int(influxdb1.url.rsplit(":", 1)[1]), cert, key)
        cc_relay = TlsRelay(int(cc.url.rsplit(":", 1)[1]), cert, key)
        for name, value in {
            "METADATA_BUCKET": s3_bucket,
            "INFLUX_URL": influx_relay.url,
            "INFLUX_DATABASE": influx_db,
            "CF_API_URL": cc_relay.url,
            "CF_UAA_URL": cc_relay.url + "/uaa",
            "CF_CLIENT_ID": "refinery",
            "CF_CLIENT_SECRET": CC_SECRET,
            "FLUSH_TIME_RESERVE": "1s",
        }.items():
            monkeypatch.setenv(name, value)
        for name in ("METADATA_FILE", "INFLUX_VERIFY_TLS", "CF_VERIFY_TLS"):
            monkeypatch.delenv(name, raising=False)
        buffer = io.StringIO()
        handler = enricher.logger.registered_handler
        previous = handler.setStream(buffer)  # type: ignore[attr-defined]
        reset_tls_warnings()
        enricher.reset_runtime()
        try:
            yield {"batch": batch, "log": buffer, "influx_relay": influx_relay, "cc_relay": cc_relay}
        finally:
            enricher.reset_runtime()
            handler.setStream(previous)  # type: ignore[attr-defined]
            influx_relay.stop()
            cc_relay.stop()


def _records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]


def _tls_warnings(buffer: io.StringIO) -> list[str]:
    return [r["setting"] for r in _records(buffer) if r["level"] == "WARNING" and "setting" in r]


def test_verification_is_on_by_default(tls) -> None:
    with pytest.raises(FlushError, match="SSLError"):
        enricher.handler(tls["batch"].event, LocalContext(timeout_seconds=3))
    with pytest.raises(Exception, match="TLS error"):
        metadata_refresh.handler({}, LocalContext(function_name="refresh", timeout_seconds=30))
    assert tls["influx_relay"].handshake_failures >= 1 and tls["cc_relay"].handshake_failures >= 1
    assert _tls_warnings(tls["log"]) == []


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_disabling_verification_works_and_is_warned_about_once_per_setting(tls, monkeypatch) -> None:
    monkeypatch.setenv("INFLUX_VERIFY_TLS", "false")
    monkeypatch.setenv("CF_VERIFY_TLS", "false")
    first, second = (  # a warm container: the second invocation warns no more
        enricher.handler(tls["batch"].event, LocalContext(timeout_seconds=30))["summary"] for _ in range(2)
    )
    assert first["points"] == second["points"] > 0
    assert first["metadata"]["live"] > 0  # the Cloud Controller was reached over TLS too
    metadata_refresh.handler({}, LocalContext(function_name="refresh", timeout_seconds=30))
    metadata_refresh.handler({}, LocalContext(function_name="refresh", timeout_seconds=30))
    assert sorted(_tls_warnings(tls["log"])) == ["CF_VERIFY_TLS", "INFLUX_VERIFY_TLS"]
    (influx,) = [r for r in _records(tls["log"]) if r.get("setting") == "INFLUX_VERIFY_TLS"]
    assert "INFLUX_VERIFY_TLS=false" in influx["message"] and tls["influx_relay"].url in influx["message"]


# ------------------------------------------------------------------------------- a private CA (issue 15)


def _refresh_context() -> LocalContext:
    return LocalContext(function_name="refresh", timeout_seconds=30)


@pytest.fixture
def private_ca_tls(
    tmp_path: Path, influxdb1: Any, influx_db: str, victoriametrics: Any, s3_bucket: str, monkeypatch
) -> Iterator[dict[str, Any]]:
    """InfluxDB, VictoriaMetrics and the fake CC (and its UAA) behind relays whose certificate a
    private CA issued; the environment of both functions, without any CA setting yet."""
    import boto3

    batch = mixed_batch(records=200, seed=29)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="metadata/apps.json.gz", Body=batch.snapshot)
    ca, cert, key = private_ca(tmp_path / "ca", "Refinery Test Private CA")
    other_ca, _, _ = private_ca(tmp_path / "other", "Some Other CA")
    run = uuid.uuid4().hex[:12]
    with FakeCloudController(batch.foundation, client_id="refinery", client_secret=CC_SECRET) as cc:
        relays = {
            "influx": TlsRelay(int(influxdb1.url.rsplit(":", 1)[1]), cert, key),
            "cc": TlsRelay(int(cc.url.rsplit(":", 1)[1]), cert, key),
            "vm": TlsRelay(int(victoriametrics.url.rsplit(":", 1)[1]), cert, key),
        }
        for name, value in {
            "METADATA_BUCKET": s3_bucket,
            "INFLUX_URL": relays["influx"].url,
            "INFLUX_DATABASE": influx_db,
            "PROM_REMOTE_WRITE_URL": relays["vm"].url + "/api/v1/write",
            "EXTRA_TAGS": f"run={run}",
            "CF_API_URL": relays["cc"].url,
            "CF_UAA_URL": relays["cc"].url + "/uaa",
            "CF_CLIENT_ID": "refinery",
            "CF_CLIENT_SECRET": CC_SECRET,
            "FLUSH_TIME_RESERVE": "1s",
        }.items():
            monkeypatch.setenv(name, value)
        for name in (
            "METADATA_FILE",
            "INFLUX_VERIFY_TLS",
            "CF_VERIFY_TLS",
            "PROM_VERIFY_TLS",
            "REQUESTS_CA_BUNDLE",
        ):
            monkeypatch.delenv(name, raising=False)
        for prefix in ("CF", "INFLUX", "PROM"):
            for suffix in ("", "_SECRET", "_PARAMETER"):
                monkeypatch.delenv(f"{prefix}_CA_BUNDLE{suffix}", raising=False)
        buffer = io.StringIO()
        handler = enricher.logger.registered_handler
        previous = handler.setStream(buffer)  # type: ignore[attr-defined]
        reset_tls_warnings()
        enricher.reset_runtime()
        try:
            yield {
                "batch": batch,
                "log": buffer,
                "relays": relays,
                "ca": ca,
                "other_ca": other_ca,
                "run": run,
                "cc": cc,
                "influx_db": influx_db,
            }
        finally:
            enricher.reset_runtime()
            handler.setStream(previous)  # type: ignore[attr-defined]
            for relay in relays.values():
                relay.stop()


def _wait_for_handshake_failures(relay: TlsRelay, count: int) -> None:
    """The relay counts a refused handshake in its own thread, just after the client gave up."""
    deadline = time.monotonic() + 5
    while relay.handshake_failures < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert relay.handshake_failures == count


def _enrich_and_refresh(env: dict[str, Any], influxdb1: Any, victoriametrics: Any) -> None:
    """One enricher invocation and one refresh, all verified against the private CA: the points reach
    InfluxDB and VictoriaMetrics, live lookups the Cloud Controller, the snapshot S3; no warning."""
    for relay in env["relays"].values():
        relay.handshake_failures = 0
    enricher.reset_runtime()
    summary = enricher.handler(env["batch"].event, LocalContext(timeout_seconds=30))["summary"]
    assert summary["points"] > 0 and summary["metadata"]["live"] > 0  # the CC was reached over TLS too
    count = influxdb1.query(env["influx_db"], "SELECT count(*) FROM http_request")
    assert count["results"][0]["series"][0]["values"][0][1] > 0
    assert victoriametrics.export(f'{{run="{env["run"]}"}}', min_samples=1)
    result = metadata_refresh.handler({}, _refresh_context())
    assert result["apps"] == len(env["batch"].foundation.apps)
    assert all(relay.handshake_failures == 0 for relay in env["relays"].values())
    assert _tls_warnings(env["log"]) == []


def test_a_private_ca_bundle_file_verifies_influxdb_remote_write_the_cloud_controller_and_uaa(
    private_ca_tls, influxdb1, victoriametrics, monkeypatch
) -> None:
    env = private_ca_tls
    with pytest.raises(Exception, match="TLS error"):  # the default trust store does not know the CA
        metadata_refresh.handler({}, _refresh_context())
    _wait_for_handshake_failures(env["relays"]["cc"], 1)

    monkeypatch.setenv("CF_CA_BUNDLE", str(env["other_ca"]))  # a CA that did not issue the certificate
    with pytest.raises(Exception, match="TLS error"):
        metadata_refresh.handler({}, _refresh_context())
    _wait_for_handshake_failures(env["relays"]["cc"], 2)

    for name in ("CF_CA_BUNDLE", "INFLUX_CA_BUNDLE", "PROM_CA_BUNDLE"):
        monkeypatch.setenv(name, str(env["ca"]))
    _enrich_and_refresh(env, influxdb1, victoriametrics)


def test_ca_bundles_read_from_secrets_manager(
    private_ca_tls, aws_env, influxdb1, victoriametrics, monkeypatch
):
    import boto3

    env = private_ca_tls
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", aws_env)
    secrets = boto3.client("secretsmanager")
    arn = secrets.create_secret(Name=f"refinery-ca/{uuid.uuid4().hex}", SecretString=env["ca"].read_text())[
        "ARN"
    ]
    for name in ("CF_CA_BUNDLE_SECRET", "INFLUX_CA_BUNDLE_SECRET", "PROM_CA_BUNDLE_SECRET"):
        monkeypatch.setenv(name, arn)
    _enrich_and_refresh(env, influxdb1, victoriametrics)
