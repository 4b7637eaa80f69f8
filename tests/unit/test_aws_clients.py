"""refinery.aws (clients made once per container: refinery's own signed requests where the environment
holds the credentials, else botocore's, never boto3) and the packaging settings the cold start depends
on (template.yaml, the layers' Makefiles). The signed calls against moto: tests/integration/
test_aws_signed_calls.py; the signatures against botocore's: tests/unit/test_sigv4.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from refinery import aws, awsclient
from refinery.s3client import S3Client

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    aws.reset()
    yield
    aws.reset()


def _no_environment_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials only where botocore looks after the environment (a profile): not for our clients."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_with_environment_credentials_clients_are_refinerys_made_once_per_service_and_settings() -> None:
    s3 = aws.client("s3", connect_timeout=3.0, retries={"mode": "standard", "total_max_attempts": 2})
    assert isinstance(s3, S3Client)
    assert aws.client("s3", retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=3.0) is s3
    assert aws.client("s3") is not s3
    assert s3.timeout == (3.0, 10.0) and s3.max_attempts == 2 and s3.region == "eu-west-1"
    assert aws.client("s3").max_attempts == 3  # botocore's standard mode: 1 + 2 retries
    secrets = aws.client("secretsmanager")
    assert isinstance(secrets, awsclient.SecretsManagerClient) and aws.client("secretsmanager") is secrets
    assert secrets.default_endpoint() == "https://secretsmanager.eu-west-1.amazonaws.com"


def test_the_region_and_endpoints_are_read_as_botocore_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "cn-north-1")  # Lambda's; before AWS_DEFAULT_REGION
    s3 = aws.client("s3")
    assert s3.region == "cn-north-1"
    assert s3.object_url("refinery", "k") == "https://refinery.s3.cn-north-1.amazonaws.com.cn/k"
    assert s3.object_url("my.bucket", "a b") == "https://s3.cn-north-1.amazonaws.com.cn/my.bucket/a%20b"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9/")
    assert aws.client("s3").object_url("b", "k") == "http://127.0.0.1:9/b/k"  # path-style
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8")
    assert aws.client("s3").object_url("b", "k?x") == "http://127.0.0.1:8/b/k%3Fx"
    assert aws.client("secretsmanager").endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert aws.client("secretsmanager").endpoint_url is None
    with pytest.raises(ValueError, match=r"'\.\.' path segments"):
        aws.client("s3").object_url("b", "a/../k")


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("AWS_USE_FIPS_ENDPOINT", "true", "AWS_USE_FIPS_ENDPOINT is set"),
        ("AWS_USE_DUALSTACK_ENDPOINT", "true", "AWS_USE_DUALSTACK_ENDPOINT is set"),
        ("AWS_DEFAULT_REGION", "us-isob-east-1", "isolated partition"),
    ],
)
def test_what_refinery_does_not_sign_itself_goes_to_botocore(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert reason in (awsclient.unsupported(dict(os.environ)) or "")
    made = aws.client("secretsmanager")
    assert not isinstance(made, awsclient.Client) and made.meta.service_model.service_name == "secretsmanager"


def test_without_credentials_in_the_environment_clients_are_botocores_sharing_one_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_environment_credentials(monkeypatch)
    assert awsclient.unsupported(dict(os.environ)) == (
        "no AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
    )
    s3 = aws.client("s3", connect_timeout=3.0, retries={"mode": "standard", "total_max_attempts": 2})
    assert s3.meta.config.connect_timeout == 3.0 and s3.meta.region_name == "eu-west-1"
    assert aws.client("s3", connect_timeout=3.0, retries={"total_max_attempts": 2, "mode": "standard"}) is s3
    assert aws.client("ssm")._request_signer._credentials is aws.session()._credentials  # one session


def test_neither_boto3_nor_botocore_is_imported_for_clients_or_secrets() -> None:
    check = (
        "import sys; from refinery import aws, config; from refinery.metadata import store, refresh;"
        "aws.client('s3'); aws.client('secretsmanager'); aws.client('ssm');"
        "loaded = [m for m in sys.modules if m.startswith(('boto', 's3transfer', 'aws_lambda_power'))];"
        "assert not loaded, loaded"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_SECRET_ACCESS_KEY": "b",
        "AWS_REGION": "eu-west-1",
    }
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120, env=env)


def test_a_changed_aws_environment_makes_new_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    first = aws.client("s3")
    monkeypatch.setenv("AWS_LAMBDA_LOG_STREAM_NAME", "per-invocation: no new client")
    assert aws.client("s3") is first
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    moved = aws.client("s3")
    assert moved is not first and moved.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_SESSION_TOKEN", "rotated")
    assert aws.client("s3").credentials.token == "rotated"


def test_warming_imports_our_clients_and_with_no_environment_credentials_loads_botocores_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    aws.warm("s3", "secretsmanager")
    assert aws._state["session"] is None  # nothing of botocore's needed
    _no_environment_credentials(monkeypatch)
    aws.warm("s3", "secretsmanager")
    session = aws.session()
    assert session._credentials is None  # resolved only by the first real client, after a restore
    loader = session.get_component("data_loader")
    assert any("s3" in str(key) for key in loader._cache)


def _template() -> dict:
    from samcli.yamlhelper import yaml_parse

    return yaml_parse((ROOT / "template.yaml").read_text())


def test_the_dependencies_layer_is_a_makefile_build_for_x86_64() -> None:
    layer = _template()["Resources"]["DependenciesLayer"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["x86_64"]
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "x86_64"}


def test_snapstart_is_an_option_off_by_default_on_published_versions() -> None:
    template = _template()
    assert template["Parameters"]["SnapStart"]["Default"] == "false"
    function = template["Globals"]["Function"]
    assert function["AutoPublishAlias"] == "live"
    assert function["SnapStart"] == {"ApplyOn": {"Fn::If": ["UseSnapStart", "PublishedVersions", "None"]}}


def test_both_layers_are_byte_compiled_with_hash_based_pyc_and_ship_no_sdk_or_dev_tools() -> None:
    refinery = (ROOT / "layers/refinery/Makefile").read_text()
    dependencies = (ROOT / "layers/dependencies/Makefile").read_text()
    for makefile in (refinery, dependencies):
        assert "-m compileall" in makefile and "--invalidation-mode $(PYC_INVALIDATION)" in makefile
        assert "PYC_INVALIDATION ?= checked-hash" in makefile
    assert (
        'cp -R refinery "$(ARTIFACTS_DIR)/python/"' in refinery
    )  # the runtime package alone: no tooling in it
    assert "RUNTIME_PROVIDED := boto3 botocore s3transfer" in dependencies
