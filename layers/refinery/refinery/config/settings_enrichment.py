"""Settings of enrichment: the metadata snapshot and caches, the Cloud Controller, recording rules,
tenant routing, filters and extra tags. Part of the settings table (:mod:`refinery.config.settings`).
"""

from __future__ import annotations

from .parse import (
    parse_base_url,
    parse_bool,
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
)
from .setting import Setting

#: The metadata snapshot and the enricher's caches (group ``metadata``).
METADATA: tuple[Setting, ...] = (
    Setting(
        "METADATA_BUCKET",
        parse_text,
        None,
        "S3 bucket holding the metadata snapshot (and, by default, quarantined records).",
        "metadata",
    ),
    Setting(
        "METADATA_KEY", parse_s3_key, "metadata/apps.json.gz", "S3 key of the metadata snapshot.", "metadata"
    ),
    Setting(
        "METADATA_FILE",
        parse_text,
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
)


#: The Cloud Controller: the refresh function's source, the enricher's live lookups (group ``cf``).
CLOUD_CONTROLLER: tuple[Setting, ...] = (
    Setting(
        "CF_API_URL",
        parse_base_url,
        None,
        "Cloud Controller API URL (refresh function; enables live lookups in the enricher).",
        "cf",
    ),
    Setting(
        "CF_CLIENT_ID",
        parse_text,
        None,
        "UAA client (client credentials grant) with cloud_controller.admin_read_only or global_auditor.",
        "cf",
    ),
    Setting("CF_CLIENT_SECRET", parse_text, None, "UAA client secret.", "cf", secret=True),
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
        parse_text,
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
)


#: Recording rules (:mod:`refinery.rules`, group ``rules``).
RULES: tuple[Setting, ...] = (
    Setting(
        "RULES_FILE",
        parse_text,
        None,
        "Recording rules: a YAML file bundled with the function (or RULES_KEY for one in S3).",
        "rules",
    ),
    Setting(
        "RULES_BUCKET",
        parse_text,
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
)


#: Tenant routing (:mod:`refinery.routing`, group ``routing``).
ROUTING: tuple[Setting, ...] = (
    Setting(
        "ROUTES_FILE",
        parse_text,
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
)


#: Filters and extra tags (:mod:`refinery.filters`, group ``filters``).
FILTERS: tuple[Setting, ...] = (
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
