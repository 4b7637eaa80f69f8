"""``refinery config --check``: the settings, then whether what they point at answers.

Two stages, grouped in the report:

1. **settings** — every variable parsed and validated (:func:`refinery.config.load_enricher_config`, every
   problem at once), plus a warning for each variable that looks like ours (a setting's prefix, such
   as ``INFLUX_`` or ``CF_``) but is not one, with the closest setting ("did you mean");
2. **connectivity** (unless ``--offline``) — secret references resolved; InfluxDB reachable, the
   credentials accepted and the database (v1) or bucket (v2) there; the Prometheus remote-write URL
   answering; the metadata snapshot readable and decodable; the quarantine and rules buckets there;
   the Cloud Controller reachable, UAA found and a token issued and accepted.

Nothing is written anywhere: InfluxDB is asked with ``/ping`` and a read-only query, S3 with
``HeadBucket``/``HeadObject``/``GetObject``, the Cloud Controller with one ``GET /v3/apps/<guid>``.
Secret values are never printed, only whether their reference resolved.

Exit codes: 0 everything passed (warnings allowed), 1 a setting is missing or malformed,
3 the settings are valid but a connectivity check failed.
"""

from __future__ import annotations

import difflib
import os
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from refinery.config import (
    SETTINGS,
    ConfigError,
    EnricherConfig,
    InfluxConfig,
    load_enricher_config,
    redact_url,
    resolve_secret_reference,
)

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNREACHABLE = 3
#: Seconds allowed to any one connectivity request (the check must not hang on a black hole).
CHECK_TIMEOUT = 10.0

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
GROUP_TITLES = {
    "influx": "InfluxDB sink",
    "safety": "Delivery safety",
    "metadata": "Metadata",
    "cf": "Cloud Controller",
    "quarantine": "Quarantine",
    "prometheus": "Prometheus remote write",
    "rules": "Recording rules",
    "routing": "Tenant routing",
    "filters": "Filters and extra tags",
}
SECRET_KINDS = ("SECRET", "PARAMETER")
#: Variables of other tools that share a prefix with our settings: not reported as unknown.
FOREIGN = frozenset(
    {
        # the cf CLI
        "CF_HOME",
        "CF_PLUGIN_HOME",
        "CF_TRACE",
        "CF_COLOR",
        "CF_DIAL_TIMEOUT",
        "CF_STAGING_TIMEOUT",
        "CF_STARTUP_TIMEOUT",
        "CF_USERNAME",
        "CF_PASSWORD",
        # the influx CLIs (1.x and 2.x)
        "INFLUX_HOST",
        "INFLUX_CONFIGS_PATH",
        "INFLUX_ACTIVE_CONFIG",
        "INFLUX_SKIP_VERIFY",
        "INFLUX_HTTP_DEBUG",
    }
)
#: Refinery's own switches that are not settings of the functions.
INTERNAL = frozenset({"REFINERY_LOCAL_RUN", "REFINERY_PURE_PYTHON", "REFINERY_REQUIRE_FASTPATH"})


def group_title(group: str) -> str:
    return GROUP_TITLES.get(group, group.replace("_", " ").capitalize())


# ---------------------------------------------------------------------------------- known names


def known_names() -> set[str]:
    names = {s.name for s in SETTINGS}
    for setting in SETTINGS:
        if setting.secret:
            names.update(f"{setting.name}_{kind}" for kind in SECRET_KINDS)
    return names | INTERNAL


def our_prefixes() -> set[str]:
    return {s.name.split("_", 1)[0] + "_" for s in SETTINGS} | {"REFINERY_"}


def unknown_variables(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Variables with one of our prefixes that no setting reads: (name, closest setting or None)."""
    known = known_names()
    prefixes = tuple(sorted(our_prefixes()))
    out = []
    for name in sorted(env):
        if name in known or name in FOREIGN or not name.startswith(prefixes):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        out.append((name, close[0] if close else None))
    return out


# ------------------------------------------------------------------------------------- the report


@dataclass
class Check:
    status: str  # OK, WARN, FAIL or SKIP
    text: str
    command: str | None = None  # what to run about it: printed whole on its own line, never wrapped


@dataclass
class Section:
    title: str
    checks: list[Check] = field(default_factory=list)

    def add(self, status: str, text: str, command: str | None = None) -> None:
        self.checks.append(Check(status, text, command))


@dataclass
class Report:
    sections: list[Section] = field(default_factory=list)
    invalid: bool = False

    def section(self, title: str) -> Section:
        section = Section(title)
        self.sections.append(section)
        return section

    def count(self, status: str) -> int:
        return sum(1 for s in self.sections for c in s.checks if c.status == status)

    @property
    def exit_code(self) -> int:
        if self.invalid:
            return EXIT_INVALID
        return EXIT_UNREACHABLE if self.count(FAIL) else EXIT_OK

    def render(self, out: TextIO) -> None:
        """One line per check (never wrapped: messages name paths and settings people grep and copy),
        under its section's title; a command to run on a line of its own."""
        for section in self.sections:
            print(f"\n{section.title}", file=out)
            for check in section.checks:
                print(f"  {check.status:<4}  {check.text}", file=out)
                if check.command:
                    print(f"          {check.command}", file=out)
        failed, warned = self.count(FAIL), self.count(WARN)
        if self.invalid:
            verdict = f"the settings have {failed} problem(s): fix them (exit {EXIT_INVALID})"
        elif failed:
            verdict = (
                f"the settings are valid, but {failed} connectivity check(s) failed (exit {EXIT_UNREACHABLE})"
            )
        else:
            verdict = "configuration OK" + (f", {warned} warning(s)" if warned else "")
        print(f"\n{verdict}", file=out)
        out.flush()


# ----------------------------------------------------------------------------------- the stages


@dataclass
class SecretLookup:
    setting: str
    kind: str
    reference: str
    error: str | None = None
    checked: bool = True


class RecordingResolver:
    """Resolves secret references as the functions do, remembering each outcome (never the value).

    A reference that cannot be resolved yields an empty value (the failure is reported by the
    connectivity stage, which skips the checks needing that secret). Offline, nothing is fetched.
    """

    def __init__(self, offline: bool, resolve: Callable[[str, str, str], str] = resolve_secret_reference):
        self.offline = offline
        self.resolve = resolve
        self.lookups: list[SecretLookup] = []

    def __call__(self, setting: str, kind: str, reference: str) -> str:
        lookup = SecretLookup(setting, kind, reference)
        self.lookups.append(lookup)
        if self.offline:
            lookup.checked = False
            return "unresolved-offline"
        try:
            return self.resolve(setting, kind, reference)
        except Exception as exc:
            lookup.error = _aws_error(exc)
            return ""

    def failed(self, setting: str) -> bool:
        return any(x.setting == setting and x.error for x in self.lookups)


def _aws_error(exc: BaseException) -> str:
    """An AWS error's code and message (never a secret: a failed lookup has no value), else its type."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        error = response["Error"]
        return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', '')}".rstrip(": ")
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        inner = getattr(cause, "response", None)
        if isinstance(inner, dict):
            return _aws_error(cause)
    name = type(exc).__name__
    text = str(exc)
    # botocore's and refinery's own (refinery.awsclient) connection and credential errors name the
    # endpoint or what is missing, not a secret.
    trusted = type(exc).__module__.startswith(("botocore", "refinery.awsclient"))
    return f"{name}: {text}" if trusted and text else name


def check_settings(
    env: Mapping[str, str], report: Report, resolver: RecordingResolver
) -> EnricherConfig | None:
    section = report.section("settings")
    configured = sorted(n for n in env if n in known_names() and n not in INTERNAL)
    unknown = unknown_variables(env)
    for name, close in unknown:
        hint = f"; did you mean {close}?" if close else ""
        section.add(WARN, f"{name} is set but is not a Refinery setting (it is ignored){hint}")
    config: EnricherConfig | None = None
    try:
        loaded = load_enricher_config(env, resolver=resolver)
        _check_rules_file(loaded)
        _check_routes_file(loaded)
        config = loaded
    except ConfigError as exc:
        report.invalid = True
        for problem in exc.problems:
            section.add(FAIL, problem)
        if any(close for _, close in unknown):
            section.add(
                WARN,
                "some of these problems may come from the misspelled variable(s) above: fix those first",
            )
    if config is not None:
        shown = ", ".join(configured) if configured else "none (every setting at its default)"
        section.add(OK, f"every setting is valid; set in the environment: {shown}")
    return config


def _check_rules_file(config: EnricherConfig) -> None:
    if not config.rules_file:  # a rules file in S3 is read by the connectivity stage
        return
    from refinery.rules.loader import RulesError, parse_rules

    with open(config.rules_file, "rb") as handle:
        try:
            parse_rules(handle.read(), config.rules_file)
        except RulesError as exc:
            raise ConfigError(exc.problems) from None


def _check_routes_file(config: EnricherConfig) -> None:
    """The tenant routing table bundled (ROUTES_FILE), validated as the enricher would load it."""
    if not config.routes_file:  # a table in S3 is read by the connectivity stage
        return
    from refinery.routing import RoutesError, routing_book

    book = routing_book(config)
    if book is None:
        return
    with open(config.routes_file, "rb") as handle:
        try:
            book.parse(handle.read(), config.routes_file)
        except RoutesError as exc:
            raise ConfigError([f"ROUTES_FILE: {problem}" for problem in exc.problems]) from None


def check_secrets(report: Report, resolver: RecordingResolver) -> None:
    if not resolver.lookups:
        return
    section = report.section("secrets")
    where = {"SECRET": "Secrets Manager secret", "PARAMETER": "SSM parameter"}
    for lookup in resolver.lookups:
        source = f"{lookup.setting} from {where[lookup.kind]} {lookup.reference!r}"
        if not lookup.checked:
            section.add(SKIP, f"{source}: not resolved (--offline)")
        elif lookup.error:
            section.add(FAIL, f"{source}: cannot be read: {lookup.error}")
        else:
            section.add(OK, f"{source}: resolved (the value is not shown)")


# ----------------------------------------------------------------------------------------- InfluxDB


def _quote_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influx_create_command(influx: InfluxConfig) -> str:
    """The exact command that creates the database (v1) or bucket (v2) Refinery writes to."""
    if influx.api == "v1":
        parts = ["curl", "-XPOST", f"{redact_url(influx.url)}/query"]
        if influx.username:
            parts += ["-u", influx.username]  # curl asks for the password
        parts += ["--data-urlencode", f"q=CREATE DATABASE {_quote_identifier(influx.database)}"]
        return " ".join(shlex.quote(p) for p in parts)
    parts = [
        "influx",
        "bucket",
        "create",
        "--host",
        redact_url(influx.url),
        "--org",
        influx.org,
        "--name",
        influx.bucket,
    ]
    return " ".join(shlex.quote(p) for p in parts) + "   # the token: INFLUX_TOKEN, as for Refinery"


def influx_hint(error: str, influx: InfluxConfig | None) -> str | None:
    """What to do about a write error, with the exact command when the database or bucket is missing."""
    if influx is None:
        return None
    lowered = error.lower()
    if influx.api == "v1" and "database not found" in lowered:
        return (
            f"InfluxDB has no database {influx.database!r}; create it (once) with: "
            f"{influx_create_command(influx)}"
        )
    if influx.api == "v2" and "not found" in lowered and "bucket" in lowered:
        return (
            f"InfluxDB has no bucket {influx.bucket!r} in org {influx.org!r}; create it with: "
            f"{influx_create_command(influx)}"
        )
    if " answered 401" in lowered or " answered 403" in lowered:
        which = "INFLUX_USERNAME / INFLUX_PASSWORD" if influx.api == "v1" else "INFLUX_TOKEN"
        return f"InfluxDB refused the credentials: check {which} and the user's or token's permissions"
    return None


def check_influx(config: EnricherConfig, report: Report, resolver: RecordingResolver) -> None:
    import requests

    influx = config.influx
    if influx is None:
        return
    target = f"database {influx.database!r}" if influx.api == "v1" else f"bucket {influx.bucket!r}"
    section = report.section(f"InfluxDB ({influx.api} API, {redact_url(influx.url)}, {target})")
    session = requests.Session()
    session.verify = _verify(influx)
    timeout = (min(5.0, CHECK_TIMEOUT), min(influx.timeout, CHECK_TIMEOUT))
    try:
        ping = "/ping" if influx.api == "v1" else "/health"
        started = time.monotonic()
        try:
            response = session.get(influx.url + ping, timeout=timeout)
            if influx.api == "v2" and response.status_code == 404:  # 1.8 and compatible servers: /ping
                response = session.get(influx.url + "/ping", timeout=timeout)
        except requests.RequestException as exc:
            section.add(FAIL, f"not reachable: GET {redact_url(influx.url)}{ping}: {_request_error(exc)}")
            return
        took = (time.monotonic() - started) * 1000
        version = response.headers.get("X-Influxdb-Version") or ""
        if response.status_code >= 500:
            section.add(FAIL, f"reachable but unhealthy: GET {ping} answered {response.status_code}")
            return
        section.add(OK, f"reachable ({'InfluxDB ' + version if version else 'answered'} in {took:.0f} ms)")
        secret = "INFLUX_PASSWORD" if influx.api == "v1" else "INFLUX_TOKEN"
        if resolver.failed(secret):
            section.add(SKIP, f"credentials and {target} not checked: {secret} could not be resolved")
            return
        if influx.api == "v1":
            _check_influx_v1(session, influx, timeout, section)
        else:
            _check_influx_v2(session, influx, timeout, section)
    finally:
        session.close()


def _verify(settings: Any) -> bool | str:
    """What requests verifies a server's certificate with: a CA bundle's path, or on/off."""
    return getattr(settings, "verify", settings.verify_tls)


def _request_error(exc: BaseException) -> str:
    text = str(exc)
    reason = "connection refused" if "refused" in text.lower() else type(exc).__name__
    return f"{reason} (within {CHECK_TIMEOUT:g} s)" if "Timeout" in type(exc).__name__ else reason


def _check_influx_v1(session: Any, influx: InfluxConfig, timeout: Any, section: Section) -> None:
    import requests

    auth = (influx.username, influx.password) if influx.username else None
    query = f"SHOW RETENTION POLICIES ON {_quote_identifier(influx.database)}"
    try:
        response = session.get(f"{influx.url}/query", params={"q": query}, auth=auth, timeout=timeout)
    except requests.RequestException as exc:
        section.add(FAIL, f"GET /query: {_request_error(exc)}")
        return
    if response.status_code in (401, 403):
        section.add(
            FAIL,
            f"credentials refused (HTTP {response.status_code}): check INFLUX_USERNAME and INFLUX_PASSWORD",
        )
        return
    try:
        doc = response.json()
    except ValueError:
        section.add(FAIL, f"GET /query answered {response.status_code} without JSON: is this InfluxDB 1.x?")
        return
    results = doc.get("results") or [{}] if isinstance(doc, dict) else [{}]
    error = (doc.get("error") if isinstance(doc, dict) else None) or results[0].get("error")
    if error and "database not found" in str(error):
        section.add(
            FAIL,
            f"database {influx.database!r} does not exist; create it with:",
            influx_create_command(influx),
        )
        return
    if error or response.status_code != 200:
        section.add(FAIL, f"GET /query answered {response.status_code}: {error or response.text[:200]}")
        return
    section.add(OK, "credentials accepted" if influx.username else "no credentials needed (none given)")
    policies = [row[0] for s in results[0].get("series") or [] for row in s.get("values") or []]
    if influx.retention_policy and influx.retention_policy not in policies:
        section.add(
            FAIL,
            f"retention policy {influx.retention_policy!r} does not exist on {influx.database!r}"
            f" (there: {', '.join(policies) or 'none'}); fix INFLUX_RETENTION_POLICY",
        )
        return
    section.add(OK, f"database {influx.database!r} exists (retention policies: {', '.join(policies)})")


def _check_influx_v2(session: Any, influx: InfluxConfig, timeout: Any, section: Section) -> None:
    import requests

    headers = {"Authorization": f"Token {influx.token}"}
    try:
        response = session.get(
            f"{influx.url}/api/v2/buckets",
            params={"name": influx.bucket, "org": influx.org},
            headers=headers,
            timeout=timeout,
        )
    except requests.RequestException as exc:
        section.add(FAIL, f"GET /api/v2/buckets: {_request_error(exc)}")
        return
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if response.status_code in (401, 403):
        section.add(
            FAIL, f"token refused (HTTP {response.status_code}): check INFLUX_TOKEN and its permissions"
        )
        return
    if response.status_code == 404 and isinstance(doc, dict) and "organization" in str(doc.get("message")):
        section.add(FAIL, f"organisation {influx.org!r} not found: check INFLUX_ORG ({doc.get('message')})")
        return
    if response.status_code != 200 or not isinstance(doc, dict) or "buckets" not in doc:
        section.add(
            WARN,
            f"bucket {influx.bucket!r} and the token not verified: GET /api/v2/buckets answered"
            f" {response.status_code} (InfluxDB 1.8 and compatible servers have no bucket API)",
        )
        return
    section.add(OK, "token accepted")
    if not any(b.get("name") == influx.bucket for b in doc["buckets"] if isinstance(b, dict)):
        section.add(
            FAIL,
            f"bucket {influx.bucket!r} does not exist in org {influx.org!r}; create it with:",
            influx_create_command(influx),
        )
        return
    section.add(OK, f"bucket {influx.bucket!r} exists")


# ----------------------------------------------------------------------- Prometheus remote write


def check_prometheus(config: EnricherConfig, report: Report, resolver: RecordingResolver) -> None:
    import requests

    prom = config.prometheus
    if prom is None:
        return
    section = report.section(f"Prometheus remote write ({redact_url(prom.url)})")
    if resolver.failed("PROM_PASSWORD") or resolver.failed("PROM_BEARER_TOKEN"):
        section.add(SKIP, "not checked: its secret could not be resolved")
        return
    headers = {"Authorization": f"Bearer {prom.bearer_token}"} if prom.bearer_token else {}
    auth = (prom.username, prom.password) if prom.username else None
    try:
        # A GET writes nothing; a remote-write receiver answers 405 (POST only), which proves it is there.
        response = requests.get(
            prom.url,
            headers=headers,
            auth=auth,
            timeout=(5.0, min(prom.timeout, CHECK_TIMEOUT)),
            verify=_verify(prom),
        )
    except requests.RequestException as exc:
        section.add(FAIL, f"not reachable: {_request_error(exc)}")
        return
    if response.status_code in (401, 403):
        section.add(FAIL, f"credentials refused (HTTP {response.status_code}): check PROM_USERNAME/PROM_*")
    elif response.status_code == 404:
        section.add(FAIL, "answered 404: check the path of PROM_REMOTE_WRITE_URL (…/api/v1/write)")
    elif response.status_code >= 500:
        section.add(FAIL, f"answered {response.status_code}")
    else:
        section.add(OK, f"reachable (a GET answered {response.status_code}; nothing was written)")


# --------------------------------------------------------------------------------------- S3 & files


def _s3_client() -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        config=BotoConfig(
            connect_timeout=5, read_timeout=CHECK_TIMEOUT, retries={"max_attempts": 2, "mode": "standard"}
        ),
    )


def _s3_problem(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        meaning = {
            "404": "does not exist",
            "NoSuchBucket": "does not exist",
            "NoSuchKey": "does not exist",
            "403": "access denied",
            "AccessDenied": "access denied",
        }
        return meaning.get(code) or meaning.get(str(status)) or f"{code or status}"
    return _aws_error(exc)


def check_snapshot(config: EnricherConfig, report: Report, client_factory: Callable[[], Any]) -> None:
    from refinery.metadata.snapshot import SnapshotError, decode_snapshot
    from refinery.metadata.store import FileSnapshotSource, S3SnapshotSource, SnapshotUnavailable
    from refinery.observability import snapshot_age_s

    if config.metadata_file:
        source: Any = FileSnapshotSource(config.metadata_file)
    else:
        source = S3SnapshotSource(config.metadata_bucket or "", config.metadata_key, client=client_factory())
    section = report.section(f"metadata snapshot ({source.description})")
    try:
        data, _ = source.fetch(None)
        snapshot = decode_snapshot(data or b"")
        count = len(snapshot.apps)
    except (SnapshotUnavailable, SnapshotError) as exc:
        section.add(FAIL, f"cannot be used: {exc}")
        return
    except Exception as exc:  # an endpoint or credential problem of boto3
        section.add(FAIL, f"cannot be read: {_aws_error(exc)}")
        return
    age = snapshot_age_s(snapshot.generated_at)
    age_text = f", {_duration(age)} old" if age is not None else ""
    section.add(OK, f"readable: {count:,} apps, generated at {snapshot.generated_at}{age_text}")


def _duration(seconds: float) -> str:
    for unit, size, least in (
        ("years", 365.25 * 86400, 1),
        ("days", 86400, 2),
        ("h", 3600, 1),
        ("min", 60, 1),
    ):
        if seconds >= size * least:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.0f} s"


def check_buckets(config: EnricherConfig, report: Report, client_factory: Callable[[], Any]) -> None:
    section = report.section("quarantine and rules")
    if config.quarantine_bucket:
        try:
            client_factory().head_bucket(Bucket=config.quarantine_bucket)
            section.add(
                OK,
                f"quarantine bucket {config.quarantine_bucket!r} exists (objects under"
                f" {config.quarantine_prefix!r}; write access is not tested: nothing is written)",
            )
        except Exception as exc:
            section.add(FAIL, f"quarantine bucket {config.quarantine_bucket!r}: {_s3_problem(exc)}")
    else:
        directory = os.path.abspath(config.quarantine_dir)
        parent = directory
        while not os.path.exists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        if os.access(parent, os.W_OK):
            section.add(OK, f"quarantine: the local directory {config.quarantine_dir} (writable)")
        else:
            section.add(
                FAIL, f"quarantine: {parent} is not writable (QUARANTINE_DIR={config.quarantine_dir})"
            )
    if config.rules_key:
        bucket = config.rules_bucket or ""
        try:
            client_factory().head_object(Bucket=bucket, Key=config.rules_key)
            section.add(OK, f"rules file s3://{bucket}/{config.rules_key} exists")
        except Exception as exc:
            section.add(FAIL, f"rules file s3://{bucket}/{config.rules_key}: {_s3_problem(exc)}")
    if config.routes_key:
        _check_routes_object(config, section, client_factory)


def _check_routes_object(config: EnricherConfig, section: Section, client_factory: Callable[[], Any]) -> None:
    """The routing table in S3 (ROUTES_KEY in METADATA_BUCKET): readable and valid."""
    from refinery.routing import RoutesError, routing_book

    book = routing_book(config)
    location = f"s3://{config.metadata_bucket}/{config.routes_key}"
    if book is None:
        return
    try:
        answer = client_factory().get_object(Bucket=config.metadata_bucket, Key=config.routes_key)
        body = answer["Body"].read()
    except Exception as exc:
        section.add(FAIL, f"routing table {location}: {_s3_problem(exc)}")
        return
    try:
        table = book.parse(body, location)
    except RoutesError as exc:
        for problem in exc.problems:
            section.add(FAIL, f"ROUTES_KEY: {problem}")
        return
    section.add(OK, f"routing table {location}: {len(table.routes)} route(s), default {table.default}")


# ------------------------------------------------------------------------------- Cloud Controller


#: A GUID no app has: looking it up proves the API, UAA and the token's scopes without listing apps.
PROBE_GUID = "00000000-0000-4000-8000-000000000000"


def check_cloud_controller(config: EnricherConfig, report: Report, resolver: RecordingResolver) -> None:
    from refinery.metadata.cc_client import CloudControllerAuthError, CloudControllerError
    from refinery.metadata.cc_factory import client_for

    cf = config.cf
    if cf is None:
        return
    section = report.section(f"Cloud Controller ({redact_url(cf.api_url)})")
    client = client_for(cf)  # the enricher's own client, TLS settings and all
    client.timeout = (5.0, min(cf.timeout, CHECK_TIMEOUT))
    client.max_attempts, client.max_retry_wait = 2, 2.0  # a check, not a batch: fail fast
    deadline = time.monotonic() + 3 * CHECK_TIMEOUT
    try:
        try:
            uaa = client.discover_uaa_url(deadline)
        except (CloudControllerError, OSError) as exc:
            section.add(FAIL, f"not reachable: {exc}")
            return
        how = "given by CF_UAA_URL" if cf.uaa_url else "discovered from the API root"
        section.add(OK, f"reachable; UAA at {uaa} ({how})")
        if resolver.failed("CF_CLIENT_SECRET"):
            section.add(SKIP, "token not requested: CF_CLIENT_SECRET could not be resolved")
            return
        try:
            client.get_app(PROBE_GUID, deadline=deadline)
        except CloudControllerAuthError as exc:
            section.add(FAIL, f"credentials or scopes refused: {exc}")
            return
        except (CloudControllerError, OSError) as exc:
            section.add(FAIL, f"request failed: {exc}")
            return
        section.add(OK, f"UAA issued a token to client {cf.client_id!r} and the v3 API accepted it")
    finally:
        client.close()


# ---------------------------------------------------------------------------------------- the run


def run_check(
    env: Mapping[str, str] | None = None,
    *,
    offline: bool = False,
    out: TextIO,
    resolve: Callable[[str, str, str], str] = resolve_secret_reference,
) -> int:
    """Check the settings (and, unless ``offline``, what they point at); print the report; exit code."""
    env = os.environ if env is None else env
    report = Report()
    resolver = RecordingResolver(offline, resolve)
    config = check_settings(env, report, resolver)
    if config is not None and not offline:
        s3: list[Any] = []

        def client_factory() -> Any:
            if not s3:
                s3.append(_s3_client())
            return s3[0]

        check_secrets(report, resolver)
        check_influx(config, report, resolver)
        check_prometheus(config, report, resolver)
        check_snapshot(config, report, client_factory)
        check_buckets(config, report, client_factory)
        check_cloud_controller(config, report, resolver)
    elif config is not None:
        check_secrets(report, resolver)
        report.section("connectivity").add(SKIP, "not checked (--offline)")
    report.render(out)
    return report.exit_code
