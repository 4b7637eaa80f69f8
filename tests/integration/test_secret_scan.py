"""No secret ever appears in what the functions print: a sentinel secret, planted everywhere, is hunted.

A unique sentinel is the InfluxDB password (a real user of an InfluxDB 1.x with authentication on),
the InfluxDB v2 token and the Cloud Controller client secret (the fake UAA's real client secret),
given directly and through the ``_SECRET`` (Secrets Manager) and ``_PARAMETER`` (SSM SecureString)
references, resolved by Powertools Parameters from moto's server. The enricher and the refresh
function run in fresh processes through success and failure paths (credentials refused with 401,
servers down, configuration errors, a missing secret, debug log level with the root logger at DEBUG
as Lambda's application log level sets it, Powertools' own debug output), and everything they print
(stdout, stderr, every log record and EMF document, tracebacks, the result) is searched for the
sentinel and for the Basic-auth encodings that carry it. The AWS requests are refinery's own
(``refinery.awsclient``, which logs no body) where the credentials are in the environment, as in
Lambda, and botocore's where they are not: one run at DEBUG goes through botocore (credentials from a
profile), and a control run with botocore's body logger left at DEBUG shows the search finds a real
leak.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from child_runner import run_handler
from mixed_batch import mixed_batch

from refinery_tools.dev.fake_cc import FakeCloudController
from refinery_tools.dev.servers import InfluxDB1Server, ServerUnavailable, free_port
from support.unavailable import unavailable

pytestmark = pytest.mark.integration

SENTINEL = f"sntl-{uuid.uuid4().hex}"
WRONG = f"wrong-{uuid.uuid4().hex}"  # what the servers expect when the sentinel must be refused
ADMIN = ("admin", f"adm-{uuid.uuid4().hex}")
DB = "scan"
KEY = "metadata/apps.json.gz"
REFRESH_KEY = "refresh/apps.json.gz"


class AuthInfluxDB1Server(InfluxDB1Server):
    """InfluxDB 1.x with HTTP authentication on: a wrong password gets a real 401."""

    name = "influxdb1-auth"

    def _config(self) -> str:
        config = super()._config()
        assert "[http]\n  enabled = true\n" in config
        return config.replace(
            "[http]\n  enabled = true\n", "[http]\n  enabled = true\n  auth-enabled = true\n"
        )

    def admin_query(self, q: str) -> None:
        response = requests.post(f"{self.url}/query", data={"q": q}, auth=ADMIN, timeout=10)
        assert response.status_code == 200 and "error" not in response.text, response.text


def forbidden() -> dict[str, str]:
    """Every form in which the sentinel could be printed: raw and inside Basic authorisation."""
    found = {"the sentinel": SENTINEL}
    for user in ("writer", "other", "refinery"):
        found[f"Basic {user}:sentinel"] = base64.b64encode(f"{user}:{SENTINEL}".encode()).decode()
    return found


@dataclass
class World:
    influx: AuthInfluxDB1Server
    vm_url: str
    moto_url: str
    bucket: str
    secret_arn: str
    missing_secret_arn: str
    cc_good: str
    cc_bad: str
    down: str
    event: dict[str, Any]


@pytest.fixture(scope="module")
def auth_influx() -> Iterator[AuthInfluxDB1Server]:
    server = AuthInfluxDB1Server()
    try:
        server.start()
    except ServerUnavailable as exc:
        unavailable(str(exc))
    try:
        response = requests.post(
            f"{server.url}/query",
            data={"q": f"CREATE USER {ADMIN[0]} WITH PASSWORD '{ADMIN[1]}' WITH ALL PRIVILEGES"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        server.admin_query(f"CREATE DATABASE {DB}")
        server.admin_query(f"CREATE USER writer WITH PASSWORD '{SENTINEL}'")
        server.admin_query(f"GRANT WRITE ON {DB} TO writer")
        server.admin_query(f"CREATE USER other WITH PASSWORD '{WRONG}'")
        server.admin_query(f"GRANT WRITE ON {DB} TO other")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def world(auth_influx: AuthInfluxDB1Server, moto_server: Any, victoriametrics: Any) -> Iterator[World]:
    batch = mixed_batch(records=300, seed=17)
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    bucket = f"scan-{uuid.uuid4().hex[:12]}"
    s3 = session.client("s3", endpoint_url=moto_server.url)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=KEY, Body=batch.snapshot)
    secrets = session.client("secretsmanager", endpoint_url=moto_server.url)
    arn = secrets.create_secret(Name=f"scan/{uuid.uuid4().hex}", SecretString=SENTINEL)["ARN"]
    missing = arn.replace("scan/", "scan-missing/")
    ssm = session.client("ssm", endpoint_url=moto_server.url)
    for name in ("/scan/cf-client-secret", "/scan/influx-token", "/scan/influx-password"):
        ssm.put_parameter(Name=name, Value=SENTINEL, Type="SecureString", Overwrite=True)
    with (
        FakeCloudController(batch.foundation, client_id="refinery", client_secret=SENTINEL) as good,
        FakeCloudController(batch.foundation, client_id="refinery", client_secret=WRONG) as bad,
    ):
        yield World(
            influx=auth_influx,
            vm_url=victoriametrics.url,
            moto_url=moto_server.url,
            bucket=bucket,
            secret_arn=arn,
            missing_secret_arn=missing,
            cc_good=good.url,
            cc_bad=bad.url,
            down=f"http://127.0.0.1:{free_port()}",
            event=batch.event,
        )


DEBUG = {"POWERTOOLS_LOG_LEVEL": "DEBUG", "CHILD_ROOT_LEVEL": "DEBUG", "POWERTOOLS_DEBUG": "true"}


def scenario(name: str, w: World) -> tuple[str, dict[str, str], bool, str]:
    """(function, environment, succeeds, a text the output must show) of one scenario."""
    base = {"AWS_ENDPOINT_URL": w.moto_url, "METADATA_BUCKET": w.bucket, "CHILD_TIMEOUT": "30"}
    v1 = base | {"INFLUX_URL": w.influx.url, "INFLUX_DATABASE": DB, "INFLUX_USERNAME": "writer"}
    cf = {"CF_API_URL": w.cc_good, "CF_CLIENT_ID": "refinery"}
    refresh = base | cf | {"METADATA_KEY": REFRESH_KEY}
    down = {"CHILD_TIMEOUT": "6", "FLUSH_TIME_RESERVE": "4s"}
    table: dict[str, tuple[str, dict[str, str], bool, str]] = {
        "enricher v1 password and CF secret given directly": (
            "enricher",
            v1 | cf | {"INFLUX_PASSWORD": SENTINEL, "CF_CLIENT_SECRET": SENTINEL},
            True,
            '"message":"batch done"',
        ),
        "enricher v1 password from Secrets Manager, CF secret from SSM": (
            "enricher",
            v1
            | cf
            | {
                "INFLUX_PASSWORD_SECRET": w.secret_arn,
                "CF_CLIENT_SECRET_PARAMETER": "/scan/cf-client-secret",
            },
            True,
            '"message":"batch done"',
        ),
        "enricher password refused (401) and CF secret refused by UAA": (
            "enricher",
            v1
            | cf
            | {"INFLUX_USERNAME": "other", "INFLUX_PASSWORD": SENTINEL, "CF_API_URL": w.cc_bad}
            | {"CF_CLIENT_SECRET": SENTINEL},
            False,
            "answered 401",
        ),
        "enricher v2 token given directly": (
            "enricher",
            base
            | cf
            | {
                "INFLUX_URL": w.vm_url,
                "INFLUX_ORG": "o",
                "INFLUX_BUCKET": "b",
                "INFLUX_TOKEN": SENTINEL,
            }
            | {"CF_CLIENT_SECRET_SECRET": w.secret_arn},
            True,
            '"sink":"influxdb-v2"',
        ),
        "enricher v2 token from SSM, refused": (
            "enricher",
            base
            | cf
            | {"INFLUX_URL": w.influx.url, "INFLUX_ORG": "o", "INFLUX_BUCKET": "b"}
            | {"INFLUX_TOKEN_PARAMETER": "/scan/influx-token", "CF_CLIENT_SECRET": SENTINEL},
            False,
            "configuration error",
        ),
        "enricher with InfluxDB and the Cloud Controller down": (
            "enricher",
            v1
            | cf
            | down
            | {
                "INFLUX_URL": w.down,
                "INFLUX_PASSWORD": SENTINEL,
                "CF_API_URL": w.down,
                "CF_CLIENT_SECRET": SENTINEL,
            },
            False,
            "ConnectionError",
        ),
        "enricher configuration errors with the secrets set": (
            "enricher",
            v1 | {"INFLUX_PASSWORD": SENTINEL, "INFLUX_BATCH_SIZE": "lots", "CF_CLIENT_SECRET": SENTINEL},
            False,
            "INFLUX_BATCH_SIZE",
        ),
        "enricher credentials inside INFLUX_URL": (
            "enricher",
            v1 | {"INFLUX_URL": w.influx.url.replace("://", f"://writer:{SENTINEL}@")},
            False,
            "INFLUX_URL: must not hold credentials",
        ),
        "enricher credentials in INFLUX_URL without a scheme": (
            "enricher",
            v1 | {"INFLUX_URL": w.influx.url.replace("http://", f"writer:{SENTINEL}@")},
            False,
            "INFLUX_URL: is not an http(s) URL",
        ),
        "enricher credentials in INFLUX_URL's query string": (
            "enricher",
            v1 | {"INFLUX_URL": f"{w.influx.url}/?u=writer&p={SENTINEL}"},
            False,
            "INFLUX_URL: must not hold credentials in its query string (u=…)",
        ),
        "enricher credentials inside CF_API_URL": (
            "enricher",
            v1
            | cf
            | {
                "CF_API_URL": w.cc_good.replace("://", f"://refinery:{SENTINEL}@"),
                "CF_CLIENT_SECRET": SENTINEL,
            },
            False,
            "CF_API_URL: must not hold credentials",
        ),
        "enricher credentials in CF_API_URL without a scheme": (
            "enricher",
            v1
            | cf
            | {
                "CF_API_URL": w.cc_good.replace("http://", f"refinery:{SENTINEL}@"),
                "CF_CLIENT_SECRET": SENTINEL,
            },
            False,
            "CF_API_URL: is not an http(s) URL",
        ),
        "enricher remote write down, a secret in its URL's query": (
            "enricher",
            v1
            | {
                "CHILD_TIMEOUT": "12",
                "FLUSH_TIME_RESERVE": "6s",
                "INFLUX_PASSWORD": SENTINEL,
                "PROM_REMOTE_WRITE_URL": f"{w.down}/api/v1/write?extra_label=key%3D{SENTINEL}",
            },
            False,
            "/api/v1/write?extra_label=***: connection refused",
        ),
        "enricher secret reference that does not exist": (
            "enricher",
            v1 | cf | {"INFLUX_PASSWORD_SECRET": w.missing_secret_arn, "CF_CLIENT_SECRET": SENTINEL},
            False,
            "INFLUX_PASSWORD_SECRET: cannot read",
        ),
        "enricher at DEBUG, secrets by reference": (
            "enricher",
            v1
            | cf
            | DEBUG
            | {"INFLUX_PASSWORD_PARAMETER": "/scan/influx-password", "CF_CLIENT_SECRET_SECRET": w.secret_arn},
            True,
            '"message":"batch done"',
        ),
        "enricher at DEBUG, credentials refused": (
            "enricher",
            v1
            | cf
            | DEBUG
            | {"INFLUX_USERNAME": "other", "INFLUX_PASSWORD_SECRET": w.secret_arn, "CF_API_URL": w.cc_bad}
            | {"CF_CLIENT_SECRET_PARAMETER": "/scan/cf-client-secret"},
            False,
            "answered 401",
        ),
        "refresh with the CF secret from Secrets Manager": (
            "refresh",
            refresh | {"CF_CLIENT_SECRET_SECRET": w.secret_arn},
            True,
            '"message":"metadata refresh done"',
        ),
        "refresh with the CF secret refused by UAA": (
            "refresh",
            refresh | {"CF_API_URL": w.cc_bad, "CF_CLIENT_SECRET": SENTINEL},
            False,
            "UAA rejected the client credentials",
        ),
        "refresh with the Cloud Controller down": (
            "refresh",
            refresh | {"CF_API_URL": w.down, "CF_CLIENT_SECRET": SENTINEL, "CHILD_TIMEOUT": "12"},
            False,
            "ConnectionError",
        ),
        "refresh credentials inside CF_API_URL": (
            "refresh",
            refresh
            | {
                "CF_API_URL": w.cc_good.replace("://", f"://refinery:{SENTINEL}@"),
                "CF_CLIENT_SECRET": SENTINEL,
            },
            False,
            "CF_API_URL: must not hold credentials",
        ),
        "refresh configuration error with the secret set": (
            "refresh",
            base | {"CF_API_URL": w.cc_good, "CF_CLIENT_SECRET": SENTINEL},
            False,
            "CF_CLIENT_ID: required",
        ),
        "refresh at DEBUG, secret from SSM": (
            "refresh",
            refresh | DEBUG | {"CF_CLIENT_SECRET_PARAMETER": "/scan/cf-client-secret"},
            True,
            '"message":"metadata refresh done"',
        ),
        "refresh at DEBUG, secret refused": (
            "refresh",
            refresh | DEBUG | {"CF_API_URL": w.cc_bad, "CF_CLIENT_SECRET_SECRET": w.secret_arn},
            False,
            "UAA rejected the client credentials",
        ),
    }
    return table[name]


SCENARIOS = [
    "enricher v1 password and CF secret given directly",
    "enricher v1 password from Secrets Manager, CF secret from SSM",
    "enricher password refused (401) and CF secret refused by UAA",
    "enricher v2 token given directly",
    "enricher v2 token from SSM, refused",
    "enricher with InfluxDB and the Cloud Controller down",
    "enricher configuration errors with the secrets set",
    "enricher credentials inside INFLUX_URL",
    "enricher credentials in INFLUX_URL without a scheme",
    "enricher credentials in INFLUX_URL's query string",
    "enricher credentials inside CF_API_URL",
    "enricher credentials in CF_API_URL without a scheme",
    "enricher remote write down, a secret in its URL's query",
    "enricher secret reference that does not exist",
    "enricher at DEBUG, secrets by reference",
    "enricher at DEBUG, credentials refused",
    "refresh with the CF secret from Secrets Manager",
    "refresh with the CF secret refused by UAA",
    "refresh with the Cloud Controller down",
    "refresh credentials inside CF_API_URL",
    "refresh configuration error with the secret set",
    "refresh at DEBUG, secret from SSM",
    "refresh at DEBUG, secret refused",
]
CONTROL = "control: botocore's body logger at DEBUG"
BOTOCORE = "enricher at DEBUG, secrets by reference, through botocore (a profile's credentials)"


def through_botocore(env: dict[str, str], root: Path) -> dict[str, str]:
    """``env`` with the credentials in a profile, not the environment: refinery.aws uses botocore."""
    credentials = root / "credentials"
    credentials.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    return env | {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(root / "no-config"),
    }


@pytest.fixture(scope="module")
def runs(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every scenario, each in a fresh process (four at a time)."""
    jobs: dict[str, tuple[str, dict[str, str]]] = {}
    for name in SCENARIOS:
        which, env, _, _ = scenario(name, world)
        jobs[name] = (which, env)
    root = tmp_path_factory.mktemp("secret-scan")
    debug = through_botocore(scenario("enricher at DEBUG, secrets by reference", world)[1], root)
    jobs[BOTOCORE] = ("enricher", debug)
    jobs[CONTROL] = ("enricher", debug | {"CHILD_UNPROTECT": "botocore.parsers"})
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(run_handler, which, world.event, env, root / f"run-{i}")
            for i, (name, (which, env)) in enumerate(jobs.items())
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_sentinel_secret_never_appears_in_what_the_functions_print(name: str, world: World, runs) -> None:
    _, _, succeeds, shows = scenario(name, world)
    done = runs[name]
    printed = done.stdout + done.stderr
    assert done.returncode == (0 if succeeds else 1), printed[-3000:]
    assert shows in printed, printed[-3000:]
    for what, text in forbidden().items():
        assert text not in printed, (
            f"{what} leaked: ...{printed[max(0, printed.find(text) - 300) :][:600]}..."
        )


def test_through_botocore_at_debug_the_sentinel_never_appears(runs) -> None:
    done = runs[BOTOCORE]
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-3000:]
    assert "DEBUG:botocore" in printed and '"message":"batch done"' in printed
    for what, text in forbidden().items():
        assert text not in printed, f"{what} leaked"


def test_the_scan_finds_a_real_leak(runs) -> None:
    """Without the protection, botocore logs the Secrets Manager/SSM answers, secret included."""
    done = runs[CONTROL]
    assert done.returncode == 0, done.stderr[-3000:]
    assert SENTINEL in done.stdout + done.stderr


def test_the_debug_runs_really_log_at_debug(runs) -> None:
    done = runs["enricher at DEBUG, secrets by reference"]
    assert "DEBUG:urllib3" in done.stderr  # the root logger prints library debug records
    printed = done.stdout + done.stderr  # refinery's own AWS requests (refinery.awsclient), at DEBUG
    assert "Secrets Manager GetSecretValue" in printed and "SSM GetParameter" in printed


@pytest.mark.parametrize(
    ("command", "valid"),
    [(["config"], False), (["config", "--check", "--offline"], False), (["config", "--check"], True)],
    ids=["config", "config --check --offline", "config --check"],
)
def test_refinery_config_shows_url_settings_redacted(
    world: World, tmp_path, command: list[str], valid: bool
) -> None:
    """``refinery config`` lists every setting with its value, and ``--check`` names what it reaches: a URL's
    user-info and query values never appear, whether the URL is refused (credentials) or valid (a query
    value that is not a credential, as VictoriaMetrics' ``extra_label``)."""
    from child_runner import child_env

    env = {
        "METADATA_BUCKET": world.bucket,
        "AWS_ENDPOINT_URL": world.moto_url,
        "INFLUX_DATABASE": DB,
        "INFLUX_USERNAME": "writer",
        "INFLUX_PASSWORD": SENTINEL,
        "PROM_REMOTE_WRITE_URL": f"{world.vm_url}/api/v1/write?extra_label=key%3D{SENTINEL}",
    }
    if valid:
        env |= {"INFLUX_URL": world.influx.url, "CF_API_URL": world.cc_good, "CF_CLIENT_ID": "refinery"}
        env |= {"CF_CLIENT_SECRET": SENTINEL}
    else:
        env |= {
            "INFLUX_URL": world.influx.url.replace("://", f"://writer:{SENTINEL}@"),
            "CF_API_URL": world.cc_good.replace("http://", f"refinery:{SENTINEL}@"),
        }
    done = subprocess.run(
        [sys.executable, "-m", "refinery_tools.cli", *command],
        env=child_env(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    printed = done.stdout + done.stderr
    assert "INFLUX_URL" in printed or "InfluxDB" in printed, printed[-3000:]
    for what, text in forbidden().items():
        assert text not in printed, (
            f"{what} leaked: ...{printed[max(0, printed.find(text) - 300) :][:600]}..."
        )
