"""Every setting: name, type, default, meaning, validation; and each function's typed configuration.

Settings are read from environment variables once per container (:func:`load_enricher_config`,
:func:`load_refresh_config`). A missing or malformed setting raises :class:`ConfigError`, which lists
*every* problem, each naming its variable. The settings table (:mod:`.settings`) is also the source of
``refinery config``, of the README's settings table and of every default.

Secrets (``INFLUX_TOKEN``, ``INFLUX_PASSWORD``, ``CF_CLIENT_SECRET``) may be given directly (local
runs) or by reference: ``<NAME>_SECRET`` names a Secrets Manager secret (name or ARN) and
``<NAME>_PARAMETER`` an SSM SecureString parameter. References are resolved once per container
(:mod:`refinery.aws`: requests signed by refinery where the environment holds the credentials, as in
Lambda, else botocore), and the values never appear in logs or error messages.

Modules: :mod:`.parse` (parsers, :class:`ConfigError`, URL redaction), :mod:`.setting` and
:mod:`.settings` (the table, split by theme into :mod:`.settings_delivery` and
:mod:`.settings_enrichment`), :mod:`.models` (the typed configurations), :mod:`.secrets` (secret
references, CA bundles), :mod:`.load` (the loaders).
"""

from __future__ import annotations

from .load import V1_ONLY, V2_ONLY, load_enricher_config, load_refresh_config
from .models import (
    CloudControllerConfig,
    EnricherConfig,
    HttpWriteConfig,
    InfluxConfig,
    PrometheusConfig,
    RefreshConfig,
)
from .parse import (
    CREDENTIAL_PARAMETERS,
    ConfigError,
    Parser,
    parse_base_url,
    parse_bool,
    parse_bounded_int,
    parse_duration,
    parse_extra_tags,
    parse_label_keys,
    parse_non_negative_int,
    parse_positive_duration,
    parse_positive_int,
    parse_regex,
    parse_s3_key,
    parse_share,
    parse_text,
    parse_url,
    parser,
    redact_url,
)
from .secrets import CA_BUNDLE_DIR, SecretResolver, resolve_secret_reference
from .setting import Setting
from .settings import SETTINGS, SETTINGS_BY_NAME, default_of, display_value

__all__ = [
    "CA_BUNDLE_DIR",
    "CREDENTIAL_PARAMETERS",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "V1_ONLY",
    "V2_ONLY",
    "CloudControllerConfig",
    "ConfigError",
    "EnricherConfig",
    "HttpWriteConfig",
    "InfluxConfig",
    "Parser",
    "PrometheusConfig",
    "RefreshConfig",
    "SecretResolver",
    "Setting",
    "default_of",
    "display_value",
    "load_enricher_config",
    "load_refresh_config",
    "parse_base_url",
    "parse_bool",
    "parse_bounded_int",
    "parse_duration",
    "parse_extra_tags",
    "parse_label_keys",
    "parse_non_negative_int",
    "parse_positive_duration",
    "parse_positive_int",
    "parse_regex",
    "parse_s3_key",
    "parse_share",
    "parse_text",
    "parse_url",
    "parser",
    "redact_url",
    "resolve_secret_reference",
]
