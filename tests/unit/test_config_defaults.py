"""One home for each default, kinds that say what a setting takes, one typed configuration per function.

* Every default a dataclass field or a constructor argument carries is the settings table's parsed
  default (``default_of``), so a configuration or a sink built in code behaves as unset variables do.
* A setting's kind comes from its parser, never guessed: only free-text settings are ``string``.
* The enricher and the refresh function each load their own configuration; the refresh's Cloud
  Controller and bucket are not optional.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any

import pytest

from refinery.config import (
    SETTINGS,
    CloudControllerConfig,
    ConfigError,
    EnricherConfig,
    HttpWriteConfig,
    InfluxConfig,
    PrometheusConfig,
    RefreshConfig,
    default_of,
    load_enricher_config,
    load_refresh_config,
    parse_bounded_int,
)
from refinery.metadata.store import MetadataStore
from refinery.rules.loader import RuleBook
from refinery.sinks.base import Deadline
from refinery.sinks.chunked import ChunkedSink

#: (class or callable, parameter or field) -> the setting whose default it must carry.
HOMES: dict[tuple[Any, str], str] = {
    **{
        (InfluxConfig, field): f"INFLUX_{field.upper()}"
        for field in (
            "batch_size",
            "write_concurrency",
            "timeout",
            "gzip",
            "verify_tls",
            "max_retry_wait",
            "retention_policy",
            "username",
            "password",
        )
    },
    **{
        (PrometheusConfig, field): f"PROM_{field.upper()}"
        for field in ("batch_size", "timeout", "verify_tls", "max_retry_wait", "username", "password")
    },
    (PrometheusConfig, "bearer_token"): "PROM_BEARER_TOKEN",
    (CloudControllerConfig, "timeout"): "CF_TIMEOUT",
    (CloudControllerConfig, "verify_tls"): "CF_VERIFY_TLS",
    (EnricherConfig, "metadata_expire"): "METADATA_EXPIRE",
    (EnricherConfig, "metadata_cache_size"): "METADATA_CACHE_SIZE",
    (EnricherConfig, "negative_cache_expire"): "NEGATIVE_CACHE_EXPIRE",
    (EnricherConfig, "live_lookup_max"): "LIVE_LOOKUP_MAX",
    (EnricherConfig, "live_lookup_budget"): "LIVE_LOOKUP_BUDGET",
    (EnricherConfig, "max_record_age"): "MAX_RECORD_AGE_SECONDS",
    (EnricherConfig, "report_batch_item_failures"): "REPORT_BATCH_ITEM_FAILURES",
    (EnricherConfig, "timestamp_digits"): "TIMESTAMP_HASH_DIGITS",
    (EnricherConfig, "rules_check_interval"): "RULES_CHECK_INTERVAL",
    (EnricherConfig, "routes_check_interval"): "ROUTES_CHECK_INTERVAL",
    (EnricherConfig, "pipeline_metrics"): "PIPELINE_METRICS",
    (RefreshConfig, "metadata_key"): "METADATA_KEY",
    (RefreshConfig, "max_app_loss"): "MAX_APP_LOSS",
    (RefreshConfig, "refresh_force"): "REFRESH_FORCE",
    (MetadataStore, "check_interval"): "SNAPSHOT_CHECK_INTERVAL",
    (MetadataStore, "expire"): "METADATA_EXPIRE",
    (MetadataStore, "cache_size"): "METADATA_CACHE_SIZE",
    (MetadataStore, "negative_expire"): "NEGATIVE_CACHE_EXPIRE",
    (MetadataStore, "live_max"): "LIVE_LOOKUP_MAX",
    (MetadataStore, "live_budget"): "LIVE_LOOKUP_BUDGET",
    (Deadline, "reserve"): "FLUSH_TIME_RESERVE",
    (ChunkedSink.__init__, "batch_size"): "INFLUX_BATCH_SIZE",
    (ChunkedSink.__init__, "timeout"): "INFLUX_TIMEOUT",
    (ChunkedSink.__init__, "max_retry_wait"): "INFLUX_MAX_RETRY_WAIT",
    (RuleBook.__init__, "check_interval"): "RULES_CHECK_INTERVAL",
}


def _default(owner: Any, name: str) -> Any:
    if dataclasses.is_dataclass(owner):
        [field] = [f for f in dataclasses.fields(owner) if f.name == name]
        assert field.default is not dataclasses.MISSING, (owner, name)
        return field.default
    parameter = inspect.signature(owner).parameters[name]
    assert parameter.default is not inspect.Parameter.empty, (owner, name)
    return parameter.default


@pytest.mark.parametrize(("owner", "name"), list(HOMES), ids=lambda x: getattr(x, "__qualname__", x))
def test_every_code_default_is_the_settings_tables(owner: Any, name: str) -> None:
    setting = HOMES[owner, name]
    table = next(s for s in SETTINGS if s.name == setting)
    assert table.default is not None
    expected = table.parse(table.default)
    assert _default(owner, name) == expected == default_of(setting)
    assert type(_default(owner, name)) is type(expected)


def test_every_numeric_or_boolean_default_of_the_typed_configs_has_a_home() -> None:
    """A new numeric or boolean field with a default must be listed in HOMES (so it comes from the table)."""
    homed = {(owner, name) for owner, name in HOMES if dataclasses.is_dataclass(owner)}
    for owner in (InfluxConfig, PrometheusConfig, CloudControllerConfig, EnricherConfig, RefreshConfig):
        for field in dataclasses.fields(owner):
            if isinstance(field.default, (int, float)):  # bool is an int
                assert (owner, field.name) in homed, (owner.__name__, field.name)


def test_configurations_built_in_code_equal_loaded_ones_with_nothing_else_set(tmp_path: Path) -> None:
    snapshot = tmp_path / "apps.json.gz"
    snapshot.write_bytes(b"x")
    env = {
        "METADATA_FILE": str(snapshot),
        "INFLUX_URL": "http://127.0.0.1:8086",
        "INFLUX_DATABASE": "cf",
        "PROM_REMOTE_WRITE_URL": "http://127.0.0.1:8428/api/v1/write",
    }
    loaded = load_enricher_config(env)
    assert loaded.influx == InfluxConfig(url="http://127.0.0.1:8086", api="v1", database="cf")
    assert loaded.prometheus == PrometheusConfig(url="http://127.0.0.1:8428/api/v1/write")
    built = EnricherConfig(
        influx=loaded.influx,
        prometheus=loaded.prometheus,
        flush_time_reserve=default_of("FLUSH_TIME_RESERVE"),
        metadata_bucket=None,
        metadata_key=default_of("METADATA_KEY"),
        metadata_file=str(snapshot),
        snapshot_check_interval=default_of("SNAPSHOT_CHECK_INTERVAL"),
        quarantine_bucket=None,
        quarantine_prefix=default_of("QUARANTINE_PREFIX"),
        quarantine_dir=default_of("QUARANTINE_DIR"),
    )
    assert loaded == built
    refresh = load_refresh_config(
        {"METADATA_BUCKET": "b", "CF_API_URL": "https://api.cf", "CF_CLIENT_ID": "c", "CF_CLIENT_SECRET": "s"}
    )
    cf = CloudControllerConfig(api_url="https://api.cf", client_id="c", client_secret="s")
    assert refresh == RefreshConfig(cf=cf, metadata_bucket="b")


def test_the_transport_settings_are_one_group_shared_by_influxdb_and_remote_write() -> None:
    shared = {f.name for f in dataclasses.fields(HttpWriteConfig)}
    assert shared == {"url", "batch_size", "timeout", "verify_tls", "max_retry_wait", "ca_bundle"}
    for config in (InfluxConfig(url="https://i", api="v2"), PrometheusConfig(url="https://p/api/v1/write")):
        assert isinstance(config, HttpWriteConfig)
        assert config.verify is True
        assert dataclasses.replace(config, ca_bundle="/ca.pem").verify == "/ca.pem"
        assert dataclasses.replace(config, verify_tls=False).verify is False
    # the loader builds both from the same-named settings of their prefix
    env = {"METADATA_BUCKET": "b", "INFLUX_URL": "http://i:8086", "INFLUX_DATABASE": "cf"}
    env |= {"PROM_REMOTE_WRITE_URL": "http://p/api/v1/write"}
    for prefix in ("INFLUX", "PROM"):
        env |= {f"{prefix}_BATCH_SIZE": "7", f"{prefix}_TIMEOUT": "2s", f"{prefix}_MAX_RETRY_WAIT": "4s"}
        env |= {f"{prefix}_VERIFY_TLS": "false"}
    config = load_enricher_config(env)
    for loaded in (config.influx, config.prometheus):
        assert loaded is not None
        assert (loaded.batch_size, loaded.timeout, loaded.max_retry_wait, loaded.verify) == (
            7,
            2.0,
            4.0,
            False,
        )


def test_only_free_text_settings_are_strings_and_each_kind_parses_to_its_type() -> None:
    types = {
        "int": int,
        "duration": float,
        "bool": bool,
        "share": float,
        "url": str,
        "string": str,
        "list": tuple,
        "tags": tuple,
    }
    for setting in SETTINGS:
        assert setting.kind == setting.parse.kind  # declared by the parser, not guessed
        assert (setting.kind == "string") == setting.parse.free_text, setting.name
        if setting.default is not None:
            assert type(setting.parse(setting.default)) is types[setting.kind], setting.name
    bounded = parse_bounded_int(1, 16)
    assert bounded.kind == "int" and not bounded.free_text and bounded("3") == 3
    free = {s.name for s in SETTINGS if s.kind == "string"}
    assert "INFLUX_WRITE_CONCURRENCY" not in free and "TIMESTAMP_HASH_DIGITS" not in free
    assert {"INFLUX_TOKEN", "METADATA_BUCKET", "METADATA_KEY", "CF_CA_BUNDLE"} <= free


def test_each_function_has_its_own_typed_configuration() -> None:
    hints = typing.get_type_hints(RefreshConfig)
    assert hints["cf"] is CloudControllerConfig and hints["metadata_bucket"] is str
    assert "influx" not in hints and "pipeline_metrics" not in hints  # the enricher's only
    assert "max_app_loss" not in typing.get_type_hints(EnricherConfig)  # the refresh's only
    env = {
        "METADATA_BUCKET": "b",
        "CF_API_URL": "https://api.cf",
        "CF_CLIENT_ID": "c",
        "CF_CLIENT_SECRET": "s",
    }
    assert type(load_refresh_config(env)) is RefreshConfig
    assert type(load_enricher_config(env)) is EnricherConfig
    with pytest.raises(ConfigError) as caught:
        load_refresh_config({"METADATA_FILE": __file__})
    assert caught.value.problems == [
        "CF_API_URL: required by the refresh function",
        "CF_CLIENT_ID: required by the refresh function",
        "CF_CLIENT_SECRET: required by the refresh function (or CF_CLIENT_SECRET_SECRET / _PARAMETER)",
        "METADATA_BUCKET: required (the bucket the snapshot is written to)",
    ]
