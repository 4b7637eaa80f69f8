"""CA-bundle settings (CF_CA_BUNDLE, INFLUX_CA_BUNDLE, PROM_CA_BUNDLE): a PEM path, the PEM text or a
secret holding it; every mistake is a configuration error naming the setting. The bundles verifying a
real TLS server are in tests/integration/test_tls.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from refinery.config import ConfigError, load_enricher_config, load_refresh_config
from refinery.metadata.cc_factory import client_for


def _ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Unit Test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


PEM = _ca_pem()
CF = {"CF_API_URL": "https://api.example.org", "CF_CLIENT_ID": "refinery", "CF_CLIENT_SECRET": "s"}
INFLUX = {"INFLUX_URL": "https://influx.example.org:8086", "INFLUX_DATABASE": "cf", "METADATA_BUCKET": "b"}
PROM = {"PROM_REMOTE_WRITE_URL": "https://vm.example.org/api/v1/write"}


def test_a_pem_file_path_absolute_or_relative_to_the_function_directory(tmp_path, monkeypatch) -> None:
    bundle = tmp_path / "internal-ca.pem"
    bundle.write_text(PEM)
    monkeypatch.chdir(tmp_path)  # Lambda runs the function in its code directory
    config = load_enricher_config(
        INFLUX
        | CF
        | PROM
        | {"CF_CA_BUNDLE": "internal-ca.pem", "INFLUX_CA_BUNDLE": str(bundle)}
        | {"PROM_CA_BUNDLE": str(bundle)}
    )
    assert config.cf is not None and config.influx is not None and config.prometheus is not None
    assert config.cf.ca_bundle == config.influx.verify == config.prometheus.verify == str(bundle)
    client = client_for(config.cf)
    assert client.verify == str(bundle)
    unset = load_enricher_config(INFLUX | CF)
    assert unset.influx is not None and unset.influx.verify is True and unset.cf is not None
    assert client_for(unset.cf).verify is True


def test_the_pem_text_itself_or_a_secret_holding_it_becomes_a_file() -> None:
    calls: list[tuple[str, str, str]] = []

    def resolver(setting: str, kind: str, reference: str) -> str:
        calls.append((setting, kind, reference))
        return PEM

    config = load_enricher_config(
        INFLUX
        | CF
        | {"CF_CA_BUNDLE": PEM, "INFLUX_CA_BUNDLE_SECRET": "arn:aws:secretsmanager:r:1:secret:ca"},
        resolver=resolver,
    )
    assert calls == [("INFLUX_CA_BUNDLE", "SECRET", "arn:aws:secretsmanager:r:1:secret:ca")]
    assert config.cf is not None and config.influx is not None
    assert config.cf.ca_bundle == config.influx.ca_bundle  # the same PEM, one file named by its digest
    assert Path(config.cf.ca_bundle or "").read_text().strip() == PEM.strip()


def test_the_refresh_function_does_not_read_the_enrichers_bundles() -> None:
    def resolver(setting: str, kind: str, reference: str) -> str:
        raise AssertionError(f"{setting} read by the refresh function")

    config = load_refresh_config(
        CF | {"METADATA_BUCKET": "b", "INFLUX_CA_BUNDLE_SECRET": "arn:x", "PROM_CA_BUNDLE_SECRET": "arn:y"},
        resolver=resolver,
    )
    assert config.cf.ca_bundle is None


def test_every_mistake_names_its_setting(tmp_path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(ConfigError) as caught:
        load_enricher_config(
            INFLUX
            | CF
            | PROM
            | {"CF_CA_BUNDLE": str(tmp_path / "missing.pem"), "INFLUX_CA_BUNDLE": str(not_pem)}
            | {"PROM_CA_BUNDLE": PEM, "PROM_VERIFY_TLS": "false"}
        )
    problems = {p.split(":", 1)[0]: p for p in caught.value.problems}
    assert set(problems) == {"CF_CA_BUNDLE", "INFLUX_CA_BUNDLE", "PROM_CA_BUNDLE"}
    assert "missing.pem" in problems["CF_CA_BUNDLE"] and "not a readable file" in problems["CF_CA_BUNDLE"]
    assert "no usable PEM certificate" in problems["INFLUX_CA_BUNDLE"]
    assert "PROM_VERIFY_TLS=false" in problems["PROM_CA_BUNDLE"]
    with pytest.raises(ConfigError, match="CF_CA_BUNDLE: the PEM text given holds no usable PEM certificate"):
        load_enricher_config(
            CF | {"METADATA_BUCKET": "b", "CF_CA_BUNDLE": "-----BEGIN CERTIFICATE-----\nAAAA\n"}
        )


def test_a_secret_must_hold_the_pem_itself() -> None:
    with pytest.raises(ConfigError) as caught:
        load_enricher_config(
            CF | {"METADATA_BUCKET": "b", "CF_CA_BUNDLE_SECRET": "ca"}, resolver=lambda *_: "/etc/ca.pem"
        )
    assert caught.value.problems == ["CF_CA_BUNDLE_SECRET: 'ca' does not hold a PEM certificate"]
