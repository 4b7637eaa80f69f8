"""The static half of `refinery config --check`: unknown variables with a suggestion, plain parse errors,
kinds, and the exact command that creates a missing database or bucket."""

from __future__ import annotations

import io
import shlex

import pytest

from refinery.config import SETTINGS, SETTINGS_BY_NAME, ConfigError, InfluxConfig, load_enricher_config
from refinery_tools.config_check import influx_create_command, influx_hint, run_check, unknown_variables

SNAPSHOT_ENV = {"METADATA_BUCKET": "b"}


def test_unknown_variables_with_our_prefixes_get_a_suggestion() -> None:
    env = {
        "INFLUX_DATABSE": "cf",
        "METADATA_BUKET": "b",
        "CF_CLIENT_SECRET_SECERT": "x",
        "INFLUX_QUERY_LIMIT": "1",
        "INFLUX_DATABASE": "cf",  # a setting
        "INFLUX_TOKEN_PARAMETER": "/p",  # a secret reference
        "CF_HOME": "/home/u",  # the cf CLI's
        "HOME": "/root",  # not one of our prefixes
        "REFINERY_PURE_PYTHON": "1",  # our own switch
    }
    assert unknown_variables(env) == [
        ("CF_CLIENT_SECRET_SECERT", "CF_CLIENT_SECRET_SECRET"),
        ("INFLUX_DATABSE", "INFLUX_DATABASE"),
        ("INFLUX_QUERY_LIMIT", None),
        ("METADATA_BUKET", "METADATA_BUCKET"),
    ]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LIVE_LOOKUP_MAX", "abc", "LIVE_LOOKUP_MAX: 'abc' is not a whole number (for example 50)"),
        ("INFLUX_BATCH_SIZE", "lots", "INFLUX_BATCH_SIZE: 'lots' is not a whole number (for example 50)"),
        ("INFLUX_WRITE_CONCURRENCY", "two", "INFLUX_WRITE_CONCURRENCY: 'two' is not a whole number"),
        ("MAX_APP_LOSS", "half", "MAX_APP_LOSS: 'half' is not a share (for example 0.5 or 50%)"),
    ],
)
def test_parse_errors_are_plain_words(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_enricher_config({**SNAPSHOT_ENV, name: value})
    [problem] = caught.value.problems
    assert problem.startswith(message) and "literal" not in problem and "float()" not in problem


def test_integer_settings_are_listed_as_int() -> None:
    ints = [s.name for s in SETTINGS if s.kind == "int"]
    for name in ("INFLUX_BATCH_SIZE", "INFLUX_WRITE_CONCURRENCY", "LIVE_LOOKUP_MAX", "TIMESTAMP_HASH_DIGITS"):
        assert name in ints
    assert SETTINGS_BY_NAME["INFLUX_TIMEOUT"].kind == "duration"
    assert all(s.kind != "string" or s.parse.__name__ in ("parse_text", "parse_s3_key") for s in SETTINGS)


def test_the_create_commands_are_exact_and_quoted() -> None:
    v1 = InfluxConfig(url="http://127.0.0.1:8086", api="v1", database="cf data", username="writer")
    command = influx_create_command(v1)
    assert shlex.split(command) == [
        "curl",
        "-XPOST",
        "http://127.0.0.1:8086/query",
        "-u",
        "writer",
        "--data-urlencode",
        'q=CREATE DATABASE "cf data"',
    ]
    error = 'POST …/write answered 404: {"error":"database not found: \\"cf data\\""}'
    assert influx_hint(error, v1) == f"InfluxDB has no database 'cf data'; create it (once) with: {command}"
    v2 = InfluxConfig(url="https://influx:8086", api="v2", org="ops", bucket="cf")
    assert shlex.split(influx_create_command(v2).split("   #")[0]) == [
        "influx", "bucket", "create", "--host", "https://influx:8086", "--org", "ops", "--name", "cf"
    ]  # fmt: skip
    assert "create it with: influx bucket create" in (influx_hint('bucket "cf" not found', v2) or "")
    assert influx_hint("answered 503: overloaded", v1) is None


def test_a_failed_secret_reference_is_a_connectivity_failure_that_skips_what_needs_it() -> None:
    def resolve(setting: str, kind: str, reference: str) -> str:
        raise RuntimeError("no credentials")

    out = io.StringIO()
    env = {
        "METADATA_FILE": __file__,  # a readable file, not a snapshot: the snapshot check fails too
        "CF_API_URL": "http://127.0.0.1:9",
        "CF_CLIENT_ID": "refinery",
        "CF_CLIENT_SECRET_SECRET": "cf/secret",
    }
    assert run_check(env, out=out, resolve=resolve) == 3
    text = out.getvalue()
    assert (
        "FAIL  CF_CLIENT_SECRET from Secrets Manager secret 'cf/secret': cannot be read: RuntimeError" in text
    )
    assert "FAIL  not reachable:" in text  # the Cloud Controller at 127.0.0.1:9
    out = io.StringIO()
    assert run_check(env, out=out, offline=True, resolve=resolve) == 0
    assert (
        "skip  CF_CLIENT_SECRET from Secrets Manager secret 'cf/secret': not resolved (--offline)"
        in out.getvalue()
    )
