"""Every setting: name, type, default, meaning, validation.

Settings are read from environment variables once per container (:func:`load_config`). A missing or
malformed setting raises :class:`ConfigError`, which lists *every* problem, each naming its
variable. This table is also the source of ``refinery config`` and of the README's settings table.

Secrets (``INFLUX_TOKEN``, ``INFLUX_PASSWORD``, ``CF_CLIENT_SECRET``) may be given directly (local
runs) or by reference: ``<NAME>_SECRET`` names a Secrets Manager secret (name or ARN) and
``<NAME>_PARAMETER`` an SSM SecureString parameter. References are resolved once per container
(:mod:`refinery.aws`: requests signed by refinery where the environment holds the credentials, as in
Lambda, else botocore), and the values never appear in logs or error messages.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .filters import PointFilter, parse_extra_tags, parse_regex
from .identity import DEFAULT_DIGITS, MAX_DIGITS


class ConfigError(ValueError):
    """One or more settings are missing or malformed. ``problems`` holds one line per setting."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``"90"`` / ``"90s"`` / ``"1.5m"`` / ``"500ms"`` / ``"2h"`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 500ms, 30s, 3m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def _whole_number(text: str) -> int:
    """An integer, or a ValueError a person can read (not Python's "invalid literal for int()")."""
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number (for example 50)") from None


def parse_positive_int(text: str) -> int:
    value = _whole_number(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be a positive integer")
    return value


def parse_bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _whole_number(text)
        if not low <= value <= high:
            raise ValueError(f"{text!r} must be an integer from {low} to {high}")
        return value

    parse.kind = "int"  # type: ignore[attr-defined]  # what `refinery config` and the README call it
    return parse


def parse_non_negative_int(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise ValueError(f"{text!r} must be zero or a positive integer")
    return value


def parse_positive_duration(text: str) -> float:
    """A duration that must be more than zero (a timeout, a longest wait): 0 is an error, not "default"."""
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be more than 0 (examples: 500ms, 10s)")
    return value


#: Query parameters that carry credentials (InfluxDB 1.x's ``u`` and ``p``, tokens, keys, signatures):
#: a URL setting holding one is refused like one with ``user:password@``.
CREDENTIAL_PARAMETERS = frozenset(
    {
        "u",
        "p",
        "user",
        "username",
        "password",
        "passwd",
        "pass",
        "pwd",
        "token",
        "access_token",
        "auth",
        "authorization",
        "api_key",
        "apikey",
        "api-key",
        "key",
        "secret",
        "client_secret",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
    }
)
_PATH_VALUE = re.compile(r"=[^/;&]*")


def redact_url(text: str) -> str:
    """``text`` with what could be a credential replaced by ``***``: user-info, query values, fragment.

    For errors, logs and ``refinery config``. It works on anything a URL setting may hold, however
    malformed (no scheme, unencoded ``/`` ``?`` ``@`` in a password): everything up to the last ``@``
    is user-info; query parameters keep their names only (a bare ``?token`` is hidden whole).
    """
    value = text.strip()
    scheme, sep, rest = value.partition("://")
    head = f"{scheme}://" if sep else ""
    if not sep:
        rest = value
    at = rest.rfind("@")
    if at >= 0:
        head += "***@"
        rest = rest[at + 1 :]
    rest, hashed, _ = rest.partition("#")
    path, asked, query = rest.partition("?")
    path = _PATH_VALUE.sub("=***", path)
    if asked:
        pairs = []
        for pair in query.split("&"):
            name, equals, _ = pair.partition("=")
            pairs.append(f"{name}=***" if equals else ("***" if pair else ""))
        path += "?" + "&".join(pairs)
    return head + path + ("#***" if hashed else "")


def _check_url(text: str, *, base: bool) -> str:
    value = text.strip()
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        # Not echoed: without a scheme, user:password@host cannot be told from a host and a port.
        raise ValueError("is not an http(s) URL: it must start with http:// or https:// (value not shown)")
    before_query = value.split("?", 1)[0].split("#", 1)[0]
    if "@" in before_query or "@" in urlsplit(value).netloc:  # not echoed: a credential precedes the @
        raise ValueError("must not hold credentials (user:password@); give them in their own secret setting")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("has a port that is not a number (value not shown)") from None
    if not parts.hostname:
        raise ValueError(f"{redact_url(value)!r} has no host")
    for pair in parts.query.split("&") if parts.query else ():
        name, equals, _ = pair.partition("=")
        if equals and name.strip().lower() in CREDENTIAL_PARAMETERS:  # (a bare ?value is never echoed)
            raise ValueError(
                f"must not hold credentials in its query string ({name}=…); give them in their own "
                "secret setting"
            )
    if base and (parts.query or parts.fragment):
        raise ValueError(
            f"{redact_url(value)!r} must be a base URL, without a query string (?…) or fragment (#…)"
        )
    return value.rstrip("/")


def parse_url(text: str) -> str:
    """An http(s) URL without credentials (user-info or a credential query parameter)."""
    return _check_url(text, base=False)


def parse_base_url(text: str) -> str:
    """:func:`parse_url` for a base URL that paths are appended to: no query string or fragment."""
    return _check_url(text, base=True)


def parse_s3_key(text: str) -> str:
    key = text.strip().lstrip("/")
    if not key:
        raise ValueError("must not be empty")
    return key


def parse_share(text: str) -> float:
    try:
        value = float(text.strip().rstrip("%")) / (100.0 if text.strip().endswith("%") else 1.0)
    except ValueError:
        raise ValueError(f"{text!r} is not a share (for example 0.5 or 50%)") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text!r} must be a share between 0 and 1 (or 0% and 100%)")
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: str | None
    help: str
    group: str
    secret: bool = False

    @property
    def kind(self) -> str:
        return {
            parse_duration: "duration",
            parse_bool: "bool",
            parse_positive_int: "int",
            parse_non_negative_int: "int",
            parse_url: "url",
            parse_base_url: "url",
            parse_positive_duration: "duration",
            parse_share: "share",
            parse_regex: "regex",
            parse_extra_tags: "tags",
        }.get(self.parse) or getattr(self.parse, "kind", "string")


def _str(text: str) -> str:
    return text


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL_KEY = re.compile(rf"^({_DNS_LABEL}(\.{_DNS_LABEL})*/)?[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$")


def parse_label_keys(text: str) -> tuple[str, ...]:
    """``a.example.com/database, tier`` -> the label keys, each as Cloud Foundry allows one."""
    keys = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        if not _LABEL_KEY.match(key) or len(name) > 63 or len(key) - len(name) > 254:
            raise ValueError(f"{key!r} is not a Cloud Foundry label key (like metrics.example.com/database)")
    return keys


parse_label_keys.kind = "list"  # type: ignore[attr-defined]


SETTINGS: tuple[Setting, ...] = (
    # --- InfluxDB sink -------------------------------------------------------------------------
    Setting(
        "INFLUX_URL",
        parse_base_url,
        None,
        "InfluxDB base URL. Unset: write nothing; `refinery invoke` prints the line protocol.",
        "influx",
    ),
    Setting(
        "INFLUX_TOKEN",
        _str,
        None,
        "v2 API token (InfluxDB 2.x/3.x/Cloud; for 1.8+ use `user:password`).",
        "influx",
        secret=True,
    ),
    Setting("INFLUX_ORG", _str, None, "v2 API organisation (name or ID).", "influx"),
    Setting(
        "INFLUX_BUCKET",
        _str,
        None,
        "v2 API bucket (for InfluxDB 1.8+: `database/retention-policy`).",
        "influx",
    ),
    Setting(
        "INFLUX_DATABASE",
        _str,
        None,
        "Set to use the v1 `/write` API (InfluxDB 1.x up to 1.7): the target database.",
        "influx",
    ),
    Setting(
        "INFLUX_RETENTION_POLICY",
        _str,
        "",
        "v1 API retention policy (empty: the database default).",
        "influx",
    ),
    Setting("INFLUX_USERNAME", _str, "", "v1 API user name (empty: no authentication).", "influx"),
    Setting("INFLUX_PASSWORD", _str, "", "v1 API password.", "influx", secret=True),
    Setting("INFLUX_BATCH_SIZE", parse_positive_int, "5000", "Lines per write request (chunk).", "influx"),
    Setting(
        "INFLUX_WRITE_CONCURRENCY",
        parse_bounded_int(1, 16),
        "2",
        "Chunks of one batch written at the same time (v1 API, 1 to 16); 1 writes them one by one.",
        "influx",
    ),
    Setting(
        "INFLUX_TIMEOUT",
        parse_positive_duration,
        "10s",
        "Longest time one write request may take, wall clock: connecting, sending and the whole answer.",
        "influx",
    ),
    Setting("INFLUX_GZIP", parse_bool, "true", "Gzip-compress write requests.", "influx"),
    Setting("INFLUX_VERIFY_TLS", parse_bool, "true", "Verify the server's TLS certificate.", "influx"),
    Setting(
        "INFLUX_CA_BUNDLE",
        _str,
        None,
        "CA certificate(s) InfluxDB's TLS certificate is verified against, instead of the default trust "
        "store (a private CA): the path of a PEM file (absolute, or relative to the function's "
        "directory) or the PEM text; `INFLUX_CA_BUNDLE_SECRET` / `_PARAMETER` read it from a secret.",
        "influx",
        secret=True,
    ),
    Setting(
        "INFLUX_MAX_RETRY_WAIT",
        parse_positive_duration,
        "30s",
        "Longest single wait between write retries (Retry-After is honoured up to this).",
        "influx",
    ),
    Setting(
        "FLUSH_TIME_RESERVE",
        parse_duration,
        "3s",
        "Time kept back from the invocation's deadline: retries stop when less than this remains. "
        "Must be less than the function's timeout (checked when an invocation starts).",
        "influx",
    ),
    Setting(
        "PIPELINE_METRICS",
        parse_bool,
        "false",
        "Also write the enricher's own per-batch metrics to InfluxDB, measurement `refinery_batch` "
        "(tags `function`, `topic`; README: Operating it), one small request after each batch's flush.",
        "influx",
    ),
    Setting(
        "MAX_RECORD_AGE_SECONDS",
        parse_duration,
        "0",
        "Records older than this (Kafka timestamp) are quarantined as too_old instead of written; 0: off.",
        "safety",
    ),
    Setting(
        "REPORT_BATCH_ITEM_FAILURES",
        parse_bool,
        "false",
        "Report per-partition failures (the mapping must have ReportBatchItemFailures) instead of "
        "failing the whole batch when a flush fails part-way.",
        "safety",
    ),
    Setting(
        "TIMESTAMP_HASH_DIGITS",
        parse_bounded_int(0, MAX_DIGITS),
        str(DEFAULT_DIGITS),
        "Last digits of each point's nanosecond timestamp taken from a hash of its record, so that "
        "distinct events never share a point and a re-sent one always does (README: Point identity). "
        "3 keeps microseconds (1 in 1000 chance per pair of same-series events in one microsecond); "
        "6 keeps milliseconds (1 in a million per pair in one millisecond); 0 writes the envelope's "
        "exact time (distinct events with the same series and time overwrite each other).",
        "safety",
    ),
    # --- Metadata ------------------------------------------------------------------------------
    Setting(
        "METADATA_BUCKET",
        _str,
        None,
        "S3 bucket holding the metadata snapshot (and, by default, quarantined records).",
        "metadata",
    ),
    Setting(
        "METADATA_KEY", parse_s3_key, "metadata/apps.json.gz", "S3 key of the metadata snapshot.", "metadata"
    ),
    Setting(
        "METADATA_FILE",
        _str,
        None,
        "Local snapshot file used instead of S3 (local runs and tests).",
        "metadata",
    ),
    Setting(
        "SNAPSHOT_CHECK_INTERVAL",
        parse_duration,
        "60s",
        "How often a warm container checks whether the snapshot changed.",
        "metadata",
    ),
    Setting(
        "METADATA_EXPIRE",
        parse_duration,
        "3m",
        "A cached app entry unused this long is evicted from the warm container.",
        "metadata",
    ),
    Setting(
        "METADATA_CACHE_SIZE",
        parse_positive_int,
        "200000",
        "Most app entries kept in the warm cache.",
        "metadata",
    ),
    Setting(
        "NEGATIVE_CACHE_EXPIRE",
        parse_duration,
        "20m",
        "How long an app the Cloud Controller says does not exist is not looked up again.",
        "metadata",
    ),
    Setting(
        "LIVE_LOOKUP_MAX",
        parse_non_negative_int,
        "50",
        "Most live Cloud Controller lookups of apps missing from the snapshot per invocation (0: off).",
        "metadata",
    ),
    Setting(
        "LIVE_LOOKUP_BUDGET",
        parse_duration,
        "5s",
        "Most time spent on live lookups per invocation.",
        "metadata",
    ),
    # --- Cloud Controller ----------------------------------------------------------------------
    Setting(
        "CF_API_URL",
        parse_base_url,
        None,
        "Cloud Controller API URL (refresh function; enables live lookups in the enricher).",
        "cf",
    ),
    Setting(
        "CF_CLIENT_ID",
        _str,
        None,
        "UAA client (client credentials grant) with cloud_controller.admin_read_only or global_auditor.",
        "cf",
    ),
    Setting("CF_CLIENT_SECRET", _str, None, "UAA client secret.", "cf", secret=True),
    Setting(
        "CF_UAA_URL",
        parse_base_url,
        None,
        "UAA URL (default: discovered from the Cloud Controller root).",
        "cf",
    ),
    Setting(
        "CF_TIMEOUT", parse_positive_duration, "30s", "Read timeout of one Cloud Controller request.", "cf"
    ),
    Setting(
        "CF_VERIFY_TLS", parse_bool, "true", "Verify the Cloud Controller's and UAA's TLS certificates.", "cf"
    ),
    Setting(
        "CF_CA_BUNDLE",
        _str,
        None,
        "CA certificate(s) the Cloud Controller's and UAA's TLS certificates are verified against, instead "
        "of the default trust store (a private CA): a PEM file's path (absolute, or relative to the "
        "function's directory) or the PEM text; `CF_CA_BUNDLE_SECRET` / `_PARAMETER` read it from a secret.",
        "cf",
        secret=True,
    ),
    Setting(
        "MAX_APP_LOSS",
        parse_share,
        "0.5",
        "The refresh refuses a snapshot that lost more than this share of the previous apps.",
        "cf",
    ),
    Setting(
        "REFRESH_FORCE",
        parse_bool,
        "false",
        'Write the snapshot even when it lost more than MAX_APP_LOSS (or pass {"force": true}).',
        "cf",
    ),
    # --- Quarantine ----------------------------------------------------------------------------
    Setting(
        "QUARANTINE_BUCKET",
        _str,
        None,
        "S3 bucket for records that cannot be processed (default: METADATA_BUCKET).",
        "quarantine",
    ),
    Setting("QUARANTINE_PREFIX", _str, "quarantine/", "Key prefix of quarantine objects.", "quarantine"),
    Setting(
        "QUARANTINE_DIR",
        _str,
        "refinery-quarantine",
        "Local directory for quarantine objects when no bucket is set (local runs).",
        "quarantine",
    ),
    # --- Prometheus remote write (sinks/prometheus_rw.py) ----------------------------------------
    Setting(
        "PROM_REMOTE_WRITE_URL",
        parse_url,
        None,
        "Prometheus remote-write URL (Prometheus with --web.enable-remote-write-receiver or "
        "VictoriaMetrics: `…/api/v1/write`), alone or beside InfluxDB. Unset: no remote write.",
        "prometheus",
    ),
    Setting(
        "PROM_USERNAME", _str, "", "Remote-write basic-auth user name (with PROM_PASSWORD).", "prometheus"
    ),
    Setting("PROM_PASSWORD", _str, "", "Remote-write basic-auth password.", "prometheus", secret=True),
    Setting(
        "PROM_BEARER_TOKEN",
        _str,
        "",
        "Remote-write bearer token (instead of basic auth).",
        "prometheus",
        secret=True,
    ),
    Setting(
        "PROM_BATCH_SIZE",
        parse_positive_int,
        "2000",
        "Points per remote-write request (each numeric field is one sample).",
        "prometheus",
    ),
    Setting(
        "PROM_TIMEOUT",
        parse_positive_duration,
        "10s",
        "Longest time one remote-write request may take, wall clock (connecting, sending, the answer).",
        "prometheus",
    ),
    Setting(
        "PROM_VERIFY_TLS",
        parse_bool,
        "true",
        "Verify the remote-write server's TLS certificate.",
        "prometheus",
    ),
    Setting(
        "PROM_CA_BUNDLE",
        _str,
        None,
        "CA certificate(s) the remote-write server's TLS certificate is verified against, instead of the "
        "default trust store: a PEM file's path or the PEM text, as INFLUX_CA_BUNDLE "
        "(`PROM_CA_BUNDLE_SECRET` / `_PARAMETER` read it from a secret).",
        "prometheus",
        secret=True,
    ),
    Setting(
        "PROM_MAX_RETRY_WAIT",
        parse_positive_duration,
        "30s",
        "Longest single wait between remote-write retries (Retry-After is honoured up to this).",
        "prometheus",
    ),
    # --- Recording rules (rules/) ---------------------------------------------------------------
    Setting(
        "RULES_FILE",
        _str,
        None,
        "Recording rules: a YAML file bundled with the function (or RULES_KEY for one in S3).",
        "rules",
    ),
    Setting(
        "RULES_BUCKET",
        _str,
        None,
        "S3 bucket of the recording rules file (default: METADATA_BUCKET).",
        "rules",
    ),
    Setting(
        "RULES_KEY",
        parse_s3_key,
        None,
        "S3 key of the recording rules YAML; reloaded when it changes (conditional GET on its ETag).",
        "rules",
    ),
    Setting(
        "RULES_CHECK_INTERVAL",
        parse_duration,
        "60s",
        "How often a warm container checks whether the rules file changed.",
        "rules",
    ),
    # --- Tenant routing (routing.py) -------------------------------------------------------------
    Setting(
        "ROUTES_FILE",
        _str,
        None,
        "Tenant routing table: a YAML file bundled with the function (or ROUTES_KEY for one in S3); "
        "routes each org's, space's or app's points to its own database or bucket (README: Tenant routing).",
        "routing",
    ),
    Setting(
        "ROUTES_KEY",
        parse_s3_key,
        None,
        "S3 key of the routing table in METADATA_BUCKET; reloaded when it changes (conditional GET on "
        "its ETag).",
        "routing",
    ),
    Setting(
        "ROUTES_CHECK_INTERVAL",
        parse_duration,
        "60s",
        "How often a warm container checks whether the routing table changed.",
        "routing",
    ),
    Setting(
        "ROUTES_LABEL_KEYS",
        parse_label_keys,
        None,
        "Cloud Foundry label keys whose values the metadata refresh keeps for orgs, spaces and apps, for "
        "routes to match or take a destination from (comma-separated, e.g. `metrics.example.com/database`).",
        "routing",
    ),
    # --- Filters and extra tags (filters.py) ---------------------------------------------------
    *(
        Setting(
            f"FILTER_{verb.upper()}_{what.upper()}",
            parse_regex,
            None,
            f"{'Write only' if verb == 'include' else 'Drop'} the points whose {noun} matches this "
            "regular expression (whole name)"
            + ("." if verb == "include" else "; counted as dropped `filtered`."),
            "filters",
        )
        for what, noun in (
            ("measurements", "measurement"),
            ("orgs", "org name"),
            ("spaces", "space name"),
            ("apps", "app name"),
        )
        for verb in ("include", "exclude")
    ),
    Setting(
        "EXTRA_TAGS",
        parse_extra_tags,
        None,
        "Static tags added to every point, e.g. `foundation=eu-prod,region=eu` (values without commas).",
        "filters",
    ),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def display_value(name: str, value: str) -> str:
    """A setting's current value as ``refinery config`` (or any report) may print it: a secret is only
    ``(set)``, a URL is redacted (:func:`redact_url`; one without a scheme is not shown at all)."""
    setting = SETTINGS_BY_NAME.get(name)
    if setting is None:
        return value
    if setting.secret:
        return "(set)"
    if setting.kind == "url":
        return redact_url(value) if "://" in value else "(not an http(s) URL: not shown)"
    return value


@dataclass(frozen=True)
class InfluxConfig:
    url: str
    api: str  # "v1" or "v2"
    token: str = field(default="", repr=False)
    org: str = ""
    bucket: str = ""
    database: str = ""
    retention_policy: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    batch_size: int = 5000
    write_concurrency: int = 2
    timeout: float = 10.0
    gzip: bool = True
    verify_tls: bool = True
    max_retry_wait: float = 30.0
    ca_bundle: str | None = None  # a PEM file's path (INFLUX_CA_BUNDLE)

    @property
    def verify(self) -> bool | str:
        """What requests verifies the certificate with: the CA bundle's path, or the flag."""
        return self.ca_bundle or self.verify_tls


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    bearer_token: str = field(default="", repr=False)
    batch_size: int = 2000
    timeout: float = 10.0
    verify_tls: bool = True
    max_retry_wait: float = 30.0
    ca_bundle: str | None = None  # a PEM file's path (PROM_CA_BUNDLE)

    @property
    def verify(self) -> bool | str:
        """What requests verifies the certificate with: the CA bundle's path, or the flag."""
        return self.ca_bundle or self.verify_tls


@dataclass(frozen=True)
class CloudControllerConfig:
    api_url: str
    client_id: str
    client_secret: str = field(repr=False)
    uaa_url: str | None = None
    timeout: float = 30.0
    verify_tls: bool = True
    ca_bundle: str | None = None  # a PEM file's path (CF_CA_BUNDLE)
    label_keys: tuple[str, ...] = ()  # ROUTES_LABEL_KEYS: label values kept in the snapshot


@dataclass(frozen=True)
class Config:
    influx: InfluxConfig | None
    batch_size: int
    flush_time_reserve: float
    metadata_bucket: str | None
    metadata_key: str
    metadata_file: str | None
    snapshot_check_interval: float
    quarantine_bucket: str | None
    quarantine_prefix: str
    quarantine_dir: str
    metadata_expire: float = 180.0
    metadata_cache_size: int = 200_000
    negative_cache_expire: float = 1200.0
    live_lookup_max: int = 50
    live_lookup_budget: float = 5.0
    cf: CloudControllerConfig | None = None
    max_app_loss: float = 0.5
    refresh_force: bool = False
    max_record_age: float = 0.0
    report_batch_item_failures: bool = False
    timestamp_digits: int = DEFAULT_DIGITS
    prometheus: PrometheusConfig | None = None
    rules_file: str | None = None
    rules_bucket: str | None = None
    rules_key: str | None = None
    rules_check_interval: float = 60.0
    point_filter: PointFilter | None = None  # filters and extra tags; None: none configured
    routes_file: str | None = None  # tenant routing table (routing.py), bundled
    routes_key: str | None = None  # or in METADATA_BUCKET
    routes_check_interval: float = 60.0
    routes_label_keys: tuple[str, ...] = ()  # kept by the refresh for orgs, spaces and apps
    pipeline_metrics: bool = False  # the enricher's own refinery_batch points, to InfluxDB


SecretResolver = Callable[[str, str, str], str]


def resolve_secret_reference(setting: str, kind: str, reference: str) -> str:
    """Fetch a secret by reference: Secrets Manager's ``GetSecretValue`` or SSM's ``GetParameter`` (with
    decryption), through the container's clients (:mod:`refinery.aws`: signed by refinery in Lambda)."""
    from . import aws

    return aws.secret_value(reference) if kind == "SECRET" else aws.parameter_value(reference)


def _read_secret(env: Mapping[str, str], name: str, resolver: SecretResolver, problems: list[str]) -> str:
    if env.get(name):
        return env[name]
    for kind in ("SECRET", "PARAMETER"):
        reference = env.get(f"{name}_{kind}")
        if reference:
            try:
                return resolver(name, kind, reference)
            except Exception as exc:
                # The reference (a name or ARN) is not secret; the value never reaches this message,
                # nor the service's text: only the error's type and AWS's error code.
                from .awsclient import error_code

                code = error_code(exc)
                what = f"{type(exc).__name__} {code}" if code else type(exc).__name__
                problems.append(f"{name}_{kind}: cannot read {reference!r}: {what}")
                return ""
    return SETTINGS_BY_NAME[name].default or ""


#: Where CA bundles given as PEM text (or by a secret) are written for requests, which wants a path.
CA_BUNDLE_DIR = os.path.join(tempfile.gettempdir(), "refinery-ca")


def _ca_bundle(
    env: Mapping[str, str],
    name: str,
    verify_tls: bool | None,
    resolver: SecretResolver,
    problems: list[str],
) -> str | None:
    """A ``*_CA_BUNDLE`` setting as the path of a PEM file holding at least one certificate (None: unset).

    The value is a path (absolute, or relative to the working directory: the function's code in Lambda)
    or the PEM text itself; a ``_SECRET`` / ``_PARAMETER`` reference must hold the PEM text. PEM text
    is written once to a file named by its digest under :data:`CA_BUNDLE_DIR`.
    """
    value = _read_secret(env, name, resolver, problems).strip()
    if not value:
        return None
    switch = name.replace("CA_BUNDLE", "VERIFY_TLS")
    if verify_tls is False:
        problems.append(f"{name}: given with {switch}=false, which turns verification off; give one of them")
        return None
    if not env.get(name) and not value.startswith("-----BEGIN"):
        if value == "unresolved-offline":  # `refinery config --check --offline` fetches no secret
            return None
        kind = "SECRET" if env.get(f"{name}_SECRET") else "PARAMETER"
        problems.append(f"{name}_{kind}: {env.get(f'{name}_{kind}')!r} does not hold a PEM certificate")
        return None
    if value.startswith("-----BEGIN"):
        os.makedirs(CA_BUNDLE_DIR, exist_ok=True)
        path = os.path.join(CA_BUNDLE_DIR, hashlib.sha256(value.encode()).hexdigest()[:24] + ".pem")
        if not os.path.isfile(path):
            with tempfile.NamedTemporaryFile("w", dir=CA_BUNDLE_DIR, delete=False, suffix=".tmp") as handle:
                handle.write(value + "\n")
            os.replace(handle.name, path)
        shown = "the PEM text given"
    else:
        path = os.path.abspath(value)
        shown = repr(value)
        if not os.path.isfile(path):
            problems.append(
                f"{name}: {shown} is not a readable file (give the path of a PEM file, absolute or relative"
                f" to {os.getcwd()!r}, or the PEM text)"
            )
            return None
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        problems.append(
            f"{name}: {shown} holds no usable PEM certificate ({getattr(exc, 'reason', None) or exc})"
        )
        return None
    return path


def load_config(
    environ: Mapping[str, str] | None = None,
    resolver: SecretResolver = resolve_secret_reference,
    role: str = "enricher",
) -> Config:
    """Read and validate every setting for a function (``enricher`` or ``refresh``).

    Raise :class:`ConfigError` listing all problems, each naming its setting.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
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

    cf = _cloud_controller(env, values, resolver, problems, required=role == "refresh")
    influx: InfluxConfig | None = None
    if role == "enricher" and values["INFLUX_URL"]:
        _check_influx_api(env, values, problems)
        common = dict(
            url=values["INFLUX_URL"],
            batch_size=values["INFLUX_BATCH_SIZE"] or 5000,
            write_concurrency=values["INFLUX_WRITE_CONCURRENCY"] or 2,
            timeout=values["INFLUX_TIMEOUT"] or 10.0,
            gzip=values["INFLUX_GZIP"] if values["INFLUX_GZIP"] is not None else True,
            verify_tls=values["INFLUX_VERIFY_TLS"] if values["INFLUX_VERIFY_TLS"] is not None else True,
            max_retry_wait=values["INFLUX_MAX_RETRY_WAIT"] or 30.0,
            ca_bundle=_ca_bundle(env, "INFLUX_CA_BUNDLE", values["INFLUX_VERIFY_TLS"], resolver, problems),
        )
        if values["INFLUX_DATABASE"]:
            influx = InfluxConfig(
                api="v1",
                database=values["INFLUX_DATABASE"],
                retention_policy=values["INFLUX_RETENTION_POLICY"] or "",
                username=values["INFLUX_USERNAME"] or "",
                password=_read_secret(env, "INFLUX_PASSWORD", resolver, problems),
                **common,
            )
        else:
            token = _read_secret(env, "INFLUX_TOKEN", resolver, problems)
            for name in ("INFLUX_ORG", "INFLUX_BUCKET"):
                if not values[name]:
                    problems.append(
                        f"{name}: required with INFLUX_URL for the v2 API "
                        "(or set INFLUX_DATABASE to use the v1 API)"
                    )
            if not token and not any(env.get(f"INFLUX_TOKEN_{k}") for k in ("SECRET", "PARAMETER")):
                problems.append(
                    "INFLUX_TOKEN: required with INFLUX_URL for the v2 API "
                    "(or INFLUX_TOKEN_SECRET / INFLUX_TOKEN_PARAMETER)"
                )
            influx = InfluxConfig(
                api="v2",
                token=token,
                org=values["INFLUX_ORG"] or "",
                bucket=values["INFLUX_BUCKET"] or "",
                **common,
            )
    prometheus = _prometheus(env, values, resolver, problems) if role == "enricher" else None
    point_filter = _point_filter(values)
    _check_rules(values, problems)
    if role == "enricher":
        _check_routes(values, problems)
    if values["METADATA_FILE"] and not os.path.isfile(values["METADATA_FILE"]):
        problems.append(f"METADATA_FILE: {values['METADATA_FILE']!r} is not a readable file")
    if role == "refresh" and not values["METADATA_BUCKET"]:
        problems.append("METADATA_BUCKET: required (the bucket the snapshot is written to)")
    elif not values["METADATA_BUCKET"] and not values["METADATA_FILE"]:
        problems.append("METADATA_BUCKET: required (or METADATA_FILE for a local snapshot file)")
    elif role == "enricher" and values["METADATA_BUCKET"] and values["METADATA_FILE"]:
        problems.append(
            "METADATA_FILE: give METADATA_FILE (a local snapshot file) or METADATA_BUCKET (the snapshot in "
            "S3), not both (with a local file, QUARANTINE_BUCKET puts the quarantine in S3)"
        )
    if role == "enricher" and values["PIPELINE_METRICS"] and not values["INFLUX_URL"]:
        problems.append("PIPELINE_METRICS: requires INFLUX_URL (the points are written to InfluxDB)")
    if problems:
        raise ConfigError(problems)
    return Config(
        influx=influx,
        batch_size=values["INFLUX_BATCH_SIZE"],
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
        max_app_loss=values["MAX_APP_LOSS"],
        refresh_force=values["REFRESH_FORCE"],
        max_record_age=values["MAX_RECORD_AGE_SECONDS"],
        report_batch_item_failures=values["REPORT_BATCH_ITEM_FAILURES"],
        timestamp_digits=values["TIMESTAMP_HASH_DIGITS"],
        prometheus=prometheus,
        rules_file=values["RULES_FILE"] if role == "enricher" else None,
        rules_bucket=values["RULES_BUCKET"] or values["METADATA_BUCKET"],
        rules_key=values["RULES_KEY"] if role == "enricher" else None,
        rules_check_interval=values["RULES_CHECK_INTERVAL"],
        point_filter=point_filter if role == "enricher" else None,
        routes_file=values["ROUTES_FILE"] if role == "enricher" else None,
        routes_key=values["ROUTES_KEY"] if role == "enricher" else None,
        routes_check_interval=values["ROUTES_CHECK_INTERVAL"],
        routes_label_keys=values["ROUTES_LABEL_KEYS"] or (),
        pipeline_metrics=bool(values["PIPELINE_METRICS"]) and role == "enricher",
    )


#: Settings that belong to one InfluxDB API only (``_SECRET``/``_PARAMETER`` references count as given).
V1_ONLY = ("INFLUX_DATABASE", "INFLUX_RETENTION_POLICY", "INFLUX_USERNAME", "INFLUX_PASSWORD")
V2_ONLY = ("INFLUX_TOKEN", "INFLUX_ORG", "INFLUX_BUCKET")


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
    username = values["PROM_USERNAME"] or ""
    password = _read_secret(env, "PROM_PASSWORD", resolver, problems)
    token = _read_secret(env, "PROM_BEARER_TOKEN", resolver, problems)
    if token and (username or password):
        problems.append("PROM_BEARER_TOKEN: give a bearer token or PROM_USERNAME/PROM_PASSWORD, not both")
    if password and not username:
        problems.append("PROM_USERNAME: required with PROM_PASSWORD (basic auth)")
    return PrometheusConfig(
        url=values["PROM_REMOTE_WRITE_URL"],
        username=username,
        password=password,
        bearer_token=token,
        batch_size=values["PROM_BATCH_SIZE"] or 2000,
        timeout=values["PROM_TIMEOUT"] or 10.0,
        verify_tls=values["PROM_VERIFY_TLS"] if values["PROM_VERIFY_TLS"] is not None else True,
        max_retry_wait=values["PROM_MAX_RETRY_WAIT"] or 30.0,
        ca_bundle=_ca_bundle(env, "PROM_CA_BUNDLE", values["PROM_VERIFY_TLS"], resolver, problems),
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
    secret = _read_secret(env, "CF_CLIENT_SECRET", resolver, problems)
    return CloudControllerConfig(
        api_url=values["CF_API_URL"],
        client_id=values["CF_CLIENT_ID"],
        client_secret=secret,
        uaa_url=values["CF_UAA_URL"],
        timeout=values["CF_TIMEOUT"] or 30.0,
        verify_tls=values["CF_VERIFY_TLS"] if values["CF_VERIFY_TLS"] is not None else True,
        ca_bundle=_ca_bundle(env, "CF_CA_BUNDLE", values["CF_VERIFY_TLS"], resolver, problems),
        label_keys=values["ROUTES_LABEL_KEYS"] or (),
    )
