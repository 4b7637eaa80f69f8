"""TLS verification is on by default; switching it off works, and is logged once, as a warning.

InfluxDB 1.x and the fake Cloud Controller are put behind a TLS-terminating relay with a self-signed
certificate for 127.0.0.1 (real TLS handshakes, a certificate no trust store knows). With the
defaults the enricher's writes and the refresh's Cloud Controller calls fail on the certificate;
with ``INFLUX_VERIFY_TLS=false`` / ``CF_VERIFY_TLS=false`` they succeed, and each setting is warned
about once per container, not once per invocation.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mixed_batch import CC_SECRET, mixed_batch

from refinery import enricher, refresher
from refinery.devtools.fake_cc import FakeCloudController
from refinery.devtools.lambda_context import LocalContext
from refinery.observability import reset_tls_warnings
from refinery.sinks import FlushError

pytestmark = pytest.mark.integration


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
        refresher.handler({}, LocalContext(function_name="refresh", timeout_seconds=30))
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
    refresher.handler({}, LocalContext(function_name="refresh", timeout_seconds=30))
    refresher.handler({}, LocalContext(function_name="refresh", timeout_seconds=30))
    assert sorted(_tls_warnings(tls["log"])) == ["CF_VERIFY_TLS", "INFLUX_VERIFY_TLS"]
    (influx,) = [r for r in _records(tls["log"]) if r.get("setting") == "INFLUX_VERIFY_TLS"]
    assert "INFLUX_VERIFY_TLS=false" in influx["message"] and tls["influx_relay"].url in influx["message"]
