"""Read and validate the settings of one function: :func:`load_enricher_config`, :func:`load_refresh_config`.

Settings are read from environment variables once per container. Every setting is parsed (its
default when unset, or set empty), then the combinations are checked; a missing or malformed setting
raises :class:`ConfigError`, which lists *every* problem, each naming its variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..filters import PointFilter
from .models import CloudControllerConfig, EnricherConfig, InfluxConfig, PrometheusConfig, RefreshConfig
from .parse import ConfigError
from .secrets import SecretResolver, ca_bundle, read_secret, resolve_secret_reference
from .settings import SETTINGS, SETTINGS_BY_NAME

#: Settings that belong to one InfluxDB API only (``_SECRET``/``_PARAMETER`` references count as given).
V1_ONLY = ("INFLUX_DATABASE", "INFLUX_RETENTION_POLICY", "INFLUX_USERNAME", "INFLUX_PASSWORD")
V2_ONLY = ("INFLUX_TOKEN", "INFLUX_ORG", "INFLUX_BUCKET")


def parse_settings(env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """Every non-secret setting's value (its default when unset; None when it has none or is malformed)."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.secret:
            continue
        raw = env.get(setting.name)
        # empty is unset: `sam local` passes a template variable whose `!If` would drop it in AWS
        # (`!Ref AWS::NoValue`) as "" (CF_UAA_URL, PROM_REMOTE_WRITE_URL, RULES_KEY, ...)
        if raw is None or raw == "":
            raw = setting.default
        if raw is None:
            values[setting.name] = None
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            problems.append(f"{setting.name}: {exc}")
            values[setting.name] = None
    return values


def load_enricher_config(
    environ: Mapping[str, str] | None = None,
    resolver: SecretResolver = resolve_secret_reference,
) -> EnricherConfig:
    """The enricher's settings. Raise :class:`ConfigError` listing all problems, each naming its setting."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    values = parse_settings(env, problems)
    cf = _cloud_controller(env, values, resolver, problems, required=False)
    influx = _influx(env, values, resolver, problems) if values["INFLUX_URL"] else None
    prometheus = _prometheus(env, values, resolver, problems)
    point_filter = _point_filter(values)
    _check_rules(values, problems)
    _check_routes(values, problems)
    _check_metadata_file(values, problems)
    if not values["METADATA_BUCKET"] and not values["METADATA_FILE"]:
        problems.append("METADATA_BUCKET: required (or METADATA_FILE for a local snapshot file)")
    elif values["METADATA_BUCKET"] and values["METADATA_FILE"]:
        problems.append(
            "METADATA_FILE: give METADATA_FILE (a local snapshot file) or METADATA_BUCKET (the snapshot in "
            "S3), not both (with a local file, QUARANTINE_BUCKET puts the quarantine in S3)"
        )
    if values["PIPELINE_METRICS"] and not values["INFLUX_URL"]:
        problems.append("PIPELINE_METRICS: requires INFLUX_URL (the points are written to InfluxDB)")
    if problems:
        raise ConfigError(problems)
    return EnricherConfig(
        influx=influx,
        flush_time_reserve=values["FLUSH_TIME_RESERVE"],
        metadata_bucket=values["METADATA_BUCKET"],
        metadata_key=values["METADATA_KEY"],
        metadata_file=values["METADATA_FILE"],
        snapshot_check_interval=values["SNAPSHOT_CHECK_INTERVAL"],
        quarantine_bucket=values["QUARANTINE_BUCKET"] or values["METADATA_BUCKET"],
        quarantine_prefix=values["QUARANTINE_PREFIX"],
        quarantine_dir=values["QUARANTINE_DIR"],
        metadata_expire=values["METADATA_EXPIRE"],
        metadata_cache_size=values["METADATA_CACHE_SIZE"],
        negative_cache_expire=values["NEGATIVE_CACHE_EXPIRE"],
        live_lookup_max=values["LIVE_LOOKUP_MAX"],
        live_lookup_budget=values["LIVE_LOOKUP_BUDGET"],
        cf=cf,
        max_record_age=values["MAX_RECORD_AGE_SECONDS"],
        report_batch_item_failures=values["REPORT_BATCH_ITEM_FAILURES"],
        timestamp_digits=values["TIMESTAMP_HASH_DIGITS"],
        prometheus=prometheus,
        rules_file=values["RULES_FILE"],
        rules_bucket=values["RULES_BUCKET"] or values["METADATA_BUCKET"],
        rules_key=values["RULES_KEY"],
        rules_check_interval=values["RULES_CHECK_INTERVAL"],
        point_filter=point_filter,
        routes_file=values["ROUTES_FILE"],
        routes_key=values["ROUTES_KEY"],
        routes_check_interval=values["ROUTES_CHECK_INTERVAL"],
        routes_label_keys=values["ROUTES_LABEL_KEYS"] or (),
        pipeline_metrics=values["PIPELINE_METRICS"],
    )


def load_refresh_config(
    environ: Mapping[str, str] | None = None,
    resolver: SecretResolver = resolve_secret_reference,
) -> RefreshConfig:
    """The metadata refresh's settings. Raise :class:`ConfigError` listing all problems, each naming its
    setting (every setting is still parsed: a malformed one is an error in either function)."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    values = parse_settings(env, problems)
    cf = _cloud_controller(env, values, resolver, problems, required=True)
    _check_rules(values, problems)
    _check_metadata_file(values, problems)
    bucket = values["METADATA_BUCKET"]
    if not bucket:
        problems.append("METADATA_BUCKET: required (the bucket the snapshot is written to)")
    if problems or cf is None or not bucket:  # (cf is None and no bucket only with a problem listed)
        raise ConfigError(problems)
    return RefreshConfig(
        cf=cf,
        metadata_bucket=bucket,
        metadata_key=values["METADATA_KEY"],
        max_app_loss=values["MAX_APP_LOSS"],
        refresh_force=values["REFRESH_FORCE"],
    )


def http_write_settings(
    env: Mapping[str, str],
    values: dict[str, Any],
    resolver: SecretResolver,
    problems: list[str],
    *,
    url: str,
    prefix: str,
) -> dict[str, Any]:
    """The transport settings every HTTP write sink shares (:class:`HttpWriteConfig`), from ``url`` and
    the ``<prefix>_BATCH_SIZE`` / ``_TIMEOUT`` / ``_VERIFY_TLS`` / ``_CA_BUNDLE`` / ``_MAX_RETRY_WAIT``
    settings."""
    verify_tls = values[f"{prefix}_VERIFY_TLS"]
    return dict(
        url=values[url],
        batch_size=values[f"{prefix}_BATCH_SIZE"],
        timeout=values[f"{prefix}_TIMEOUT"],
        verify_tls=verify_tls,
        max_retry_wait=values[f"{prefix}_MAX_RETRY_WAIT"],
        ca_bundle=ca_bundle(env, f"{prefix}_CA_BUNDLE", verify_tls, resolver, problems),
    )


def _influx(
    env: Mapping[str, str], values: dict[str, Any], resolver: SecretResolver, problems: list[str]
) -> InfluxConfig:
    """The InfluxDB sink's settings: the v1 API (INFLUX_DATABASE given) or the v2 API."""
    _check_influx_api(env, values, problems)
    common = http_write_settings(env, values, resolver, problems, url="INFLUX_URL", prefix="INFLUX")
    common.update(write_concurrency=values["INFLUX_WRITE_CONCURRENCY"], gzip=values["INFLUX_GZIP"])
    if values["INFLUX_DATABASE"]:
        return InfluxConfig(
            api="v1",
            database=values["INFLUX_DATABASE"],
            retention_policy=values["INFLUX_RETENTION_POLICY"],
            username=values["INFLUX_USERNAME"],
            password=read_secret(env, "INFLUX_PASSWORD", resolver, problems),
            **common,
        )
    token = read_secret(env, "INFLUX_TOKEN", resolver, problems)
    for name in ("INFLUX_ORG", "INFLUX_BUCKET"):
        if not values[name]:
            problems.append(
                f"{name}: required with INFLUX_URL for the v2 API (or set INFLUX_DATABASE to use the v1 API)"
            )
    if not token and not any(env.get(f"INFLUX_TOKEN_{k}") for k in ("SECRET", "PARAMETER")):
        problems.append(
            "INFLUX_TOKEN: required with INFLUX_URL for the v2 API "
            "(or INFLUX_TOKEN_SECRET / INFLUX_TOKEN_PARAMETER)"
        )
    return InfluxConfig(
        api="v2",
        token=token,
        org=values["INFLUX_ORG"] or "",
        bucket=values["INFLUX_BUCKET"] or "",
        **common,
    )


def _given(env: Mapping[str, str], name: str) -> bool:
    if SETTINGS_BY_NAME[name].secret:
        return any(env.get(name + suffix) for suffix in ("", "_SECRET", "_PARAMETER"))
    return bool(env.get(name, "").strip())


def _check_influx_api(env: Mapping[str, str], values: dict[str, Any], problems: list[str]) -> None:
    """One API's settings, never both (the other's would be ignored); a v1 password needs its user."""
    v1 = [name for name in V1_ONLY if _given(env, name)]
    v2 = [name for name in V2_ONLY if _given(env, name)]
    if values["INFLUX_DATABASE"] and v2:
        problems.append(
            f"{', '.join(v2)}: v2 API setting(s) given with INFLUX_DATABASE, which selects the v1 API; "
            "give one API's settings (v1: INFLUX_DATABASE, INFLUX_USERNAME, INFLUX_PASSWORD, "
            "INFLUX_RETENTION_POLICY; v2: INFLUX_TOKEN, INFLUX_ORG, INFLUX_BUCKET)"
        )
    elif not values["INFLUX_DATABASE"] and v1 and "INFLUX_DATABASE" not in v1:
        problems.append(
            f"{', '.join(v1)}: v1 API setting(s) without INFLUX_DATABASE, which selects the v1 API; the v2 "
            "API authenticates with INFLUX_TOKEN (`user:password` for InfluxDB 1.8+)"
        )
    if values["INFLUX_DATABASE"] and _given(env, "INFLUX_PASSWORD") and not _given(env, "INFLUX_USERNAME"):
        problems.append("INFLUX_USERNAME: required with INFLUX_PASSWORD (the v1 API's basic authentication)")


def _prometheus(
    env: Mapping[str, str], values: dict[str, Any], resolver: SecretResolver, problems: list[str]
) -> PrometheusConfig | None:
    """The remote-write sink's settings: basic auth or a bearer token (or neither), never both."""
    if not values["PROM_REMOTE_WRITE_URL"]:
        return None
    username = values["PROM_USERNAME"]
    password = read_secret(env, "PROM_PASSWORD", resolver, problems)
    token = read_secret(env, "PROM_BEARER_TOKEN", resolver, problems)
    if token and (username or password):
        problems.append("PROM_BEARER_TOKEN: give a bearer token or PROM_USERNAME/PROM_PASSWORD, not both")
    if password and not username:
        problems.append("PROM_USERNAME: required with PROM_PASSWORD (basic auth)")
    return PrometheusConfig(
        username=username,
        password=password,
        bearer_token=token,
        **http_write_settings(env, values, resolver, problems, url="PROM_REMOTE_WRITE_URL", prefix="PROM"),
    )


def _point_filter(values: dict[str, Any]) -> PointFilter | None:
    point_filter = PointFilter(
        **{
            f"{verb}_{what}": values[f"FILTER_{verb.upper()}_{what.upper()}"]
            for what in ("measurements", "orgs", "spaces", "apps")
            for verb in ("include", "exclude")
        },
        extra_tags=values["EXTRA_TAGS"] or (),
    )
    return point_filter if point_filter.active else None


def _check_rules(values: dict[str, Any], problems: list[str]) -> None:
    if values["RULES_FILE"] and values["RULES_KEY"]:
        problems.append("RULES_FILE: give RULES_FILE or RULES_KEY, not both")
    elif values["RULES_FILE"] and not os.path.isfile(values["RULES_FILE"]):
        problems.append(f"RULES_FILE: {values['RULES_FILE']!r} is not a readable file")
    elif values["RULES_KEY"] and not (values["RULES_BUCKET"] or values["METADATA_BUCKET"]):
        problems.append("RULES_BUCKET: required with RULES_KEY (or METADATA_BUCKET)")


def _check_routes(values: dict[str, Any], problems: list[str]) -> None:
    if values["ROUTES_FILE"] and values["ROUTES_KEY"]:
        problems.append("ROUTES_FILE: give ROUTES_FILE or ROUTES_KEY, not both")
    elif values["ROUTES_FILE"] and not os.path.isfile(values["ROUTES_FILE"]):
        problems.append(f"ROUTES_FILE: {values['ROUTES_FILE']!r} is not a readable file")
    elif values["ROUTES_KEY"] and not values["METADATA_BUCKET"]:
        problems.append("ROUTES_KEY: requires METADATA_BUCKET (the bucket the routing table is in)")
    if (values["ROUTES_FILE"] or values["ROUTES_KEY"]) and not values["INFLUX_URL"]:
        problems.append("ROUTES_FILE: tenant routing requires INFLUX_URL (it chooses InfluxDB databases)")


def _check_metadata_file(values: dict[str, Any], problems: list[str]) -> None:
    if values["METADATA_FILE"] and not os.path.isfile(values["METADATA_FILE"]):
        problems.append(f"METADATA_FILE: {values['METADATA_FILE']!r} is not a readable file")


def _cloud_controller(
    env: Mapping[str, str],
    values: dict[str, Any],
    resolver: SecretResolver,
    problems: list[str],
    required: bool,
) -> CloudControllerConfig | None:
    """The Cloud Controller settings: all three of URL, client id and secret, or (enricher) none."""
    has_secret = any(
        env.get(n) for n in ("CF_CLIENT_SECRET", "CF_CLIENT_SECRET_SECRET", "CF_CLIENT_SECRET_PARAMETER")
    )
    given = {
        "CF_API_URL": bool(env.get("CF_API_URL")),
        "CF_CLIENT_ID": bool(env.get("CF_CLIENT_ID")),
        "CF_CLIENT_SECRET": has_secret,
    }
    if not any(given.values()) and not required:
        return None
    missing = [name for name, ok in given.items() if not ok]
    for name in missing:
        why = "required by the refresh function" if required else "required with the other CF_* settings"
        problems.append(
            f"{name}: {why}"
            + (" (or CF_CLIENT_SECRET_SECRET / _PARAMETER)" if name == "CF_CLIENT_SECRET" else "")
        )
    if missing or not values["CF_API_URL"]:
        return None
    secret = read_secret(env, "CF_CLIENT_SECRET", resolver, problems)
    return CloudControllerConfig(
        api_url=values["CF_API_URL"],
        client_id=values["CF_CLIENT_ID"],
        client_secret=secret,
        uaa_url=values["CF_UAA_URL"],
        timeout=values["CF_TIMEOUT"],
        verify_tls=values["CF_VERIFY_TLS"],
        ca_bundle=ca_bundle(env, "CF_CA_BUNDLE", values["CF_VERIFY_TLS"], resolver, problems),
        label_keys=values["ROUTES_LABEL_KEYS"] or (),
    )
