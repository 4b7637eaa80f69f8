"""An empty setting is an unset one: what `sam local` passes for a template variable that AWS drops.

In AWS, ``!If [Has…, !Ref …, !Ref AWS::NoValue]`` leaves the variable out of the function's
environment; `sam local invoke` does not evaluate the condition and passes it as "" (SAM CLI's
``EnvironmentVariables._stringify_value``). Both must configure the function the same way.
"""

from __future__ import annotations

import pytest

from refinery.config import ConfigError, load_enricher_config, load_refresh_config

#: template.yaml's optional variables without a default (set only when their parameter is given).
DROPPED_BY_AWS = ("CF_UAA_URL", "PROM_REMOTE_WRITE_URL", "RULES_KEY", "INFLUX_TIMEOUT", "FILTER_INCLUDE_APPS")
BASE = {
    "METADATA_BUCKET": "b",
    "INFLUX_URL": "http://127.0.0.1:8086",
    "INFLUX_DATABASE": "cf",
    "CF_API_URL": "https://api.example.com",
    "CF_CLIENT_ID": "refinery",
    "CF_CLIENT_SECRET": "s3cret-value",
}


def test_empty_optional_settings_configure_as_if_absent() -> None:
    empty_env = {**BASE, **dict.fromkeys(DROPPED_BY_AWS, "")}
    absent = load_enricher_config(BASE)
    empty = load_enricher_config(empty_env)
    assert empty == absent
    assert empty.prometheus is None and empty.rules_key is None
    assert empty.cf is not None and empty.cf.uaa_url is None
    refresh = load_refresh_config(empty_env)
    assert refresh == load_refresh_config(BASE)
    assert refresh.cf.uaa_url is None


def test_an_empty_required_setting_is_still_missing() -> None:
    with pytest.raises(ConfigError, match="CF_API_URL"):
        load_refresh_config({**BASE, "CF_API_URL": ""})
