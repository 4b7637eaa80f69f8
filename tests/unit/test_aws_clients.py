"""refinery.aws (one botocore session per container, shared clients, secrets without boto3) and the
packaging settings the cold start depends on (template.yaml, the layers' Makefiles)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.stub import Stubber

from refinery import aws

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    aws.reset()
    yield
    aws.reset()


def test_clients_are_made_once_per_service_and_settings_and_share_one_session() -> None:
    s3 = aws.client("s3", connect_timeout=3.0, retries={"mode": "standard", "total_max_attempts": 2})
    assert aws.client("s3", retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=3.0) is s3
    assert aws.client("s3") is not s3
    assert s3.meta.config.connect_timeout == 3.0 and s3.meta.region_name == "eu-west-1"
    assert aws.client("secretsmanager") is aws.client("secretsmanager")


def test_no_boto3_is_imported_for_clients_or_secrets() -> None:
    check = (
        "import sys; from refinery import aws, config; aws.client('s3'); aws.client('secretsmanager');"
        "assert not [m for m in sys.modules if m.startswith(('boto3', 's3transfer', 'aws_lambda_power'))]"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)


def test_a_changed_aws_environment_makes_a_new_session(monkeypatch: pytest.MonkeyPatch) -> None:
    first = aws.client("s3")
    monkeypatch.setenv("AWS_LAMBDA_LOG_STREAM_NAME", "per-invocation: no new session")
    assert aws.client("s3") is first
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    moved = aws.client("s3")
    assert moved is not first and moved.meta.endpoint_url == "http://127.0.0.1:9"


def test_secrets_are_read_as_strings_from_secrets_manager_and_ssm() -> None:
    secrets = aws.client("secretsmanager")
    with Stubber(secrets) as stub:
        stub.add_response("get_secret_value", {"SecretString": "s3cret"}, {"SecretId": "arn:one"})
        stub.add_response("get_secret_value", {"SecretBinary": b"b1nary"}, {"SecretId": "arn:two"})
        assert aws.secret_value("arn:one") == "s3cret"
        assert aws.secret_value("arn:two") == "b1nary"
    ssm = aws.client("ssm")
    with Stubber(ssm) as stub:
        expected = {"Name": "/refinery/token", "WithDecryption": True}
        stub.add_response("get_parameter", {"Parameter": {"Value": "t0ken"}}, expected)
        assert aws.parameter_value("/refinery/token") == "t0ken"


def test_warming_loads_the_models_without_resolving_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
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
    assert 'cp -R refinery "$(ARTIFACTS_DIR)/python/"' in refinery  # the runtime package alone
    assert "RUNTIME_PROVIDED := boto3 botocore s3transfer" in dependencies
