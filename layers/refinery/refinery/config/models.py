"""The typed configurations: one per function, and the groups of settings they are made of.

Every default is the settings table's (:func:`~refinery.config.settings.default_of`): a field that
has one takes it from there, so a configuration built in code (tests, tools) behaves as an unset
variable does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..filters import PointFilter
from .settings import default_of


@dataclass(frozen=True, kw_only=True)
class HttpWriteConfig:
    """What every HTTP write sink takes: where it writes, in what chunks, how long it waits, whom it trusts.

    InfluxDB's (``INFLUX_*``) and remote write's (``PROM_*``) settings of the same meaning build it
    alike (:func:`refinery.config.load.http_write_settings`).
    """

    url: str
    batch_size: int
    timeout: float
    verify_tls: bool
    max_retry_wait: float
    ca_bundle: str | None = None  # a PEM file's path (*_CA_BUNDLE)

    @property
    def verify(self) -> bool | str:
        """What requests verifies the certificate with: the CA bundle's path, or the flag."""
        return self.ca_bundle or self.verify_tls


@dataclass(frozen=True, kw_only=True)
class InfluxConfig(HttpWriteConfig):
    api: str  # "v1" or "v2"
    token: str = field(default="", repr=False)
    org: str = ""
    bucket: str = ""
    database: str = ""
    retention_policy: str = default_of("INFLUX_RETENTION_POLICY")
    username: str = default_of("INFLUX_USERNAME")
    password: str = field(default=default_of("INFLUX_PASSWORD"), repr=False)
    batch_size: int = default_of("INFLUX_BATCH_SIZE")
    write_concurrency: int = default_of("INFLUX_WRITE_CONCURRENCY")
    timeout: float = default_of("INFLUX_TIMEOUT")
    gzip: bool = default_of("INFLUX_GZIP")
    verify_tls: bool = default_of("INFLUX_VERIFY_TLS")
    max_retry_wait: float = default_of("INFLUX_MAX_RETRY_WAIT")


@dataclass(frozen=True, kw_only=True)
class PrometheusConfig(HttpWriteConfig):
    username: str = default_of("PROM_USERNAME")
    password: str = field(default=default_of("PROM_PASSWORD"), repr=False)
    bearer_token: str = field(default=default_of("PROM_BEARER_TOKEN"), repr=False)
    batch_size: int = default_of("PROM_BATCH_SIZE")
    timeout: float = default_of("PROM_TIMEOUT")
    verify_tls: bool = default_of("PROM_VERIFY_TLS")
    max_retry_wait: float = default_of("PROM_MAX_RETRY_WAIT")


@dataclass(frozen=True)
class CloudControllerConfig:
    api_url: str
    client_id: str
    client_secret: str = field(repr=False)
    uaa_url: str | None = None
    timeout: float = default_of("CF_TIMEOUT")
    verify_tls: bool = default_of("CF_VERIFY_TLS")
    ca_bundle: str | None = None  # a PEM file's path (CF_CA_BUNDLE)
    label_keys: tuple[str, ...] = ()  # ROUTES_LABEL_KEYS: label values kept in the snapshot


@dataclass(frozen=True)
class EnricherConfig:
    """The enricher function's settings (:func:`refinery.config.load_enricher_config`)."""

    influx: InfluxConfig | None  # None: no InfluxDB (remote write only, or a dry run printing lines)
    flush_time_reserve: float
    metadata_bucket: str | None  # the snapshot in S3, or
    metadata_key: str
    metadata_file: str | None  # a local snapshot file
    snapshot_check_interval: float
    quarantine_bucket: str | None
    quarantine_prefix: str
    quarantine_dir: str
    metadata_expire: float = default_of("METADATA_EXPIRE")
    metadata_cache_size: int = default_of("METADATA_CACHE_SIZE")
    negative_cache_expire: float = default_of("NEGATIVE_CACHE_EXPIRE")
    live_lookup_max: int = default_of("LIVE_LOOKUP_MAX")
    live_lookup_budget: float = default_of("LIVE_LOOKUP_BUDGET")
    cf: CloudControllerConfig | None = None  # live lookups of apps missing from the snapshot
    max_record_age: float = default_of("MAX_RECORD_AGE_SECONDS")
    report_batch_item_failures: bool = default_of("REPORT_BATCH_ITEM_FAILURES")
    timestamp_digits: int = default_of("TIMESTAMP_HASH_DIGITS")
    prometheus: PrometheusConfig | None = None
    rules_file: str | None = None
    rules_bucket: str | None = None
    rules_key: str | None = None
    rules_check_interval: float = default_of("RULES_CHECK_INTERVAL")
    point_filter: PointFilter | None = None  # filters and extra tags; None: none configured
    routes_file: str | None = None  # tenant routing table (routing.py), bundled
    routes_key: str | None = None  # or in METADATA_BUCKET
    routes_check_interval: float = default_of("ROUTES_CHECK_INTERVAL")
    routes_label_keys: tuple[str, ...] = ()  # kept by the refresh for orgs, spaces and apps
    pipeline_metrics: bool = default_of("PIPELINE_METRICS")  # its own refinery_batch points, to InfluxDB


@dataclass(frozen=True)
class RefreshConfig:
    """The metadata-refresh function's settings (:func:`refinery.config.load_refresh_config`)."""

    cf: CloudControllerConfig
    metadata_bucket: str  # the snapshot is written here
    metadata_key: str = default_of("METADATA_KEY")
    max_app_loss: float = default_of("MAX_APP_LOSS")
    refresh_force: bool = default_of("REFRESH_FORCE")
