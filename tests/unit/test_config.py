"""Settings: every problem named, all at once; secrets by reference never leak."""

from __future__ import annotations

import pytest

from refinery.config import SETTINGS, ConfigError, InfluxConfig, load_enricher_config, parse_duration


def test_durations() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration("3m") == 180
    assert parse_duration("1.5h") == 5400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_defaults_with_a_local_snapshot(tmp_path) -> None:
    snapshot = tmp_path / "s.json.gz"
    snapshot.write_bytes(b"x")
    config = load_enricher_config({"METADATA_FILE": str(snapshot)})
    assert config.influx is None
    assert config.metadata_key == "metadata/apps.json.gz"
    assert config.snapshot_check_interval == 60
    assert (
        InfluxConfig(url="http://x", api="v1").batch_size == 5000
    )  # (the enricher has no batch size of its own)
    assert config.quarantine_prefix == "quarantine/"


def test_v1_is_chosen_when_a_database_is_set() -> None:
    config = load_enricher_config(
        {
            "METADATA_BUCKET": "b",
            "INFLUX_URL": "http://127.0.0.1:8086/",
            "INFLUX_DATABASE": "cf",
            "INFLUX_USERNAME": "u",
            "INFLUX_PASSWORD": "hunter2-secret",
            "INFLUX_RETENTION_POLICY": "week",
        }
    )
    assert config.influx is not None
    assert (config.influx.api, config.influx.url, config.influx.database) == (
        "v1",
        "http://127.0.0.1:8086",
        "cf",
    )
    assert config.quarantine_bucket == "b"
    assert config.influx.password == "hunter2-secret"
    assert "hunter2" not in repr(config)


def test_v2_needs_org_bucket_and_token_and_every_problem_is_listed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_enricher_config(
            {"INFLUX_URL": "ftp://x", "INFLUX_BATCH_SIZE": "0", "SNAPSHOT_CHECK_INTERVAL": "often"}
        )
    text = str(caught.value)
    for name in ("INFLUX_URL", "INFLUX_BATCH_SIZE", "SNAPSHOT_CHECK_INTERVAL", "METADATA_BUCKET"):
        assert name in text
    with pytest.raises(ConfigError) as caught:
        load_enricher_config({"INFLUX_URL": "http://x:8086", "METADATA_BUCKET": "b"})
    assert {p.split(":")[0] for p in caught.value.problems} == {"INFLUX_ORG", "INFLUX_BUCKET", "INFLUX_TOKEN"}


def test_secret_references_are_resolved_and_failures_do_not_leak() -> None:
    calls = []

    def resolver(setting: str, kind: str, reference: str) -> str:
        calls.append((setting, kind, reference))
        return "s3cr3t-token"

    config = load_enricher_config(
        {
            "INFLUX_URL": "http://x:8086",
            "INFLUX_ORG": "o",
            "INFLUX_BUCKET": "b",
            "METADATA_BUCKET": "m",
            "INFLUX_TOKEN_SECRET": "arn:aws:secretsmanager:us-east-1:1:secret:influx",
        },
        resolver=resolver,
    )
    assert config.influx is not None and config.influx.token == "s3cr3t-token"
    assert calls == [("INFLUX_TOKEN", "SECRET", "arn:aws:secretsmanager:us-east-1:1:secret:influx")]
    assert "s3cr3t" not in repr(config)

    def failing(setting: str, kind: str, reference: str) -> str:
        raise PermissionError("AccessDenied")

    with pytest.raises(ConfigError) as caught:
        load_enricher_config(
            {
                "INFLUX_URL": "http://x:8086",
                "INFLUX_ORG": "o",
                "INFLUX_BUCKET": "b",
                "METADATA_BUCKET": "m",
                "INFLUX_TOKEN_PARAMETER": "/refinery/token",
            },
            resolver=failing,
        )
    assert caught.value.problems == ["INFLUX_TOKEN_PARAMETER: cannot read '/refinery/token': PermissionError"]


def test_every_setting_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in readme]
    assert missing == []
