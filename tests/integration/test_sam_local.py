"""`sam local invoke` as the README documents it: the built functions in Docker, with `env.json`.

Both functions run in SAM CLI's own container (its runtime interface emulator, the built layers in
``/opt``, the function's code in ``/var/task``), built FROM a stand-in for
``public.ecr.aws/lambda/python:3.12`` (which cannot be pulled here: :mod:`support.docker_lambda`
builds it offline, and ``--skip-pull-image`` keeps SAM from pulling). The repository's ``env.json``
is used with only its server addresses replaced by the test's: the refresh lists the fake Cloud
Controller (serving the app of the bundled events) and writes the snapshot to moto S3, then the
enricher reads that snapshot and writes the bundled ``events/msk.json`` to a real InfluxDB 1.x.

SAM passes a function only the environment variables its template declares, and the template
declares no AWS endpoint: the test runs a copy of the built template whose global environment also
declares ``AWS_ENDPOINT_URL`` (botocore's, set by the env file to moto), and changes nothing else.
The container reaches the suite's loopback servers through relays on the Docker bridge's gateway.

Needs Docker (a running engine, or dockerd from `make servers`, started and removed by the test),
Python 3.12, the test servers; under CI=true a missing one fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from refinery.metadata.snapshot import decode_snapshot
from refinery_tools.dev.fake_cc import FakeCloudController, Foundation
from refinery_tools.dev.samples import SAMPLE_APP, sample_snapshot
from refinery_tools.dev.servers import InfluxDB1Server, MotoS3Server
from support.docker_lambda import DockerEngine, DockerUnavailable, StandinImage, build_standin_image, relays
from support.unavailable import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".aws-sam" / "build"
SOURCES = ("template.yaml", "layers", "functions")
SAM = str(Path(sys.executable).parent / "sam")
REGION = "us-east-1"
CC_SECRET = "sam-local-cc-secret"
ENRICHMENT = {
    "app": SAMPLE_APP.name,
    "app_guid": SAMPLE_APP.guid,
    "space": SAMPLE_APP.space_name,
    "space_guid": SAMPLE_APP.space_guid,
    "org": SAMPLE_APP.org_name,
    "org_guid": SAMPLE_APP.org_guid,
}
#: What events/msk.json enriches to (as in test_enricher_influx): measurement -> (extra tags, fields).
EXPECTED = {
    "http_request": [
        ({"instance": "1", "method": "GET", "status_code": "200"},
         {"count": 1, "duration": 0.012345678, "response_size": 1532}),
    ],
    "log": [({"instance": "0", "type": "RTR"}, {"count": 1, "size": 365}),
            ({"instance": "1", "type": "OUT"}, {"count": 1, "size": 93})],
    "instance": [
        ({"instance": "1"},
         {"cpu": 0.4518379826149203, "disk": 142938112, "disk_pct": 0.13312149047851562,
          "disk_quota": 1073741824, "memory": 187654144, "memory_pct": 0.3495330810546875,
          "memory_quota": 536870912}),
    ],
}  # fmt: skip


def _newest_source_mtime() -> float:
    newest = 0.0
    for name in SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        newest = max([newest, *(f.stat().st_mtime for f in files if "__pycache__" not in f.parts)])
    return newest


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make build`'s output if it is newer than the sources (`make test` builds first), else a build
    of our own, as `make build` makes it."""
    if (BUILD / "template.yaml").is_file() and (
        BUILD / "template.yaml"
    ).stat().st_mtime >= _newest_source_mtime():
        return BUILD
    out = tmp_path_factory.mktemp("sam-build")
    found = subprocess.run(
        ["bash", str(ROOT / "scripts/ensure-python312.sh")], capture_output=True, text=True
    )
    if found.returncode != 0:
        unavailable(f"no Python 3.12 for `sam build`: {found.stderr.strip()}")
    py312 = found.stdout.strip()
    env = {
        **os.environ,
        "PATH": f"{py312}{os.pathsep}{os.environ.get('PATH', '')}",
        "CYTHON": str(Path(sys.executable).parent / "cython"),
        "PY312": f"{py312}/python3.12",
        "REFINERY_REQUIRE_FASTPATH": "1",
        "SAM_CLI_TELEMETRY": "0",
    }
    done = subprocess.run(
        [SAM, "build", "--build-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def docker() -> Iterator[DockerEngine]:
    problem = None
    try:
        with DockerEngine() as engine:
            yield engine
            return
    except DockerUnavailable as exc:
        problem = str(exc)
    unavailable(f"Docker cannot run here: {problem}")


@pytest.fixture(scope="module")
def standin(docker: DockerEngine) -> StandinImage:
    try:
        return build_standin_image(docker)
    except DockerUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module")
def template(build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built template with ``AWS_ENDPOINT_URL`` declared (SAM passes declared variables only) and
    its code paths absolute; nothing else changed."""
    from samcli.yamlhelper import yaml_dump, yaml_parse

    parsed = yaml_parse((build / "template.yaml").read_text())
    variables = parsed["Globals"]["Function"]["Environment"]["Variables"]
    assert "AWS_ENDPOINT_URL" not in variables
    variables["AWS_ENDPOINT_URL"] = ""
    for resource in parsed["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                props[key] = str((build / props[key]).resolve())
    out = tmp_path_factory.mktemp("sam-local") / "template.yaml"
    out.write_text(yaml_dump(parsed))
    return out


def _sam_invoke(
    function: str, event: Path, env_vars: dict[str, Any], template: Path, docker: DockerEngine, work: Path
) -> tuple[dict[str, Any], str, float]:
    env_file = work / f"env-{function}.json"
    env_file.write_text(json.dumps(env_vars))
    environ = {
        **docker.env,
        "SAM_CLI_TELEMETRY": "0",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        environ.pop(name, None)
    environ["TMPDIR"] = str(work / "tmp")  # SAM's image-build lock files, here rather than in /tmp
    (work / "tmp").mkdir(exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(
        [SAM, "local", "invoke", function, "--template", str(template), "--event", str(event),
         "--env-vars", str(env_file), "--skip-pull-image", "--region", REGION,
         "--layer-cache-basedir", str(work / "layers")],
        cwd=work, env=environ, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"{function}: {done.stderr[-4000:]}\n{done.stdout[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr, seconds


def _env_for_test(
    gateway_urls: dict[str, str], influx_db: str, bucket: str, secret_arn: str
) -> dict[str, Any]:
    """The repository's env.json with only the servers' addresses (and names) replaced by the test's."""
    shipped = json.loads((ROOT / "env.json").read_text())
    assert {"EnricherFunction", "MetadataRefreshFunction"} <= shipped.keys()
    env = json.loads(json.dumps(shipped))
    env["Parameters"].update(
        {
            "INFLUX_URL": gateway_urls["influx"],
            "INFLUX_DATABASE": influx_db,
            "METADATA_BUCKET": bucket,
            "CF_API_URL": gateway_urls["cc"],
            "CF_CLIENT_SECRET_SECRET": secret_arn,
            "AWS_ENDPOINT_URL": gateway_urls["moto"],
        }
    )
    return env


def test_sam_local_invoke_runs_both_functions_with_env_json(
    build: Path,
    template: Path,
    docker: DockerEngine,
    standin: StandinImage,
    influxdb1: InfluxDB1Server,
    influx_db: str,
    moto_server: MotoS3Server,
    tmp_path: Path,
) -> None:
    # the fake Cloud Controller serves the app of the bundled events, the one of the sample snapshot
    app = decode_snapshot(sample_snapshot()).apps[SAMPLE_APP.guid]
    foundation = Foundation()
    foundation.add_org(app.org_name, guid=app.org_guid)
    foundation.add_space(app.space_name, app.org_guid, guid=app.space_guid)
    foundation.add_app(app.name, app.space_guid, guid=app.guid)
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    s3 = session.client("s3", endpoint_url=moto_server.url)
    bucket = f"sam-local-{tmp_path.name[-12:].lower().replace('_', '-')}"
    s3.create_bucket(Bucket=bucket)
    secrets = session.client("secretsmanager", endpoint_url=moto_server.url)
    secret_arn = secrets.create_secret(Name=f"{bucket}/cf-client-secret", SecretString=CC_SECRET)["ARN"]
    with (
        FakeCloudController(foundation, client_secret=CC_SECRET, host=docker.gateway) as cc,
        relays(docker.gateway, {"influx": influxdb1.url, "moto": moto_server.url}) as urls,
    ):
        env = _env_for_test({**urls, "cc": cc.url}, influx_db, bucket, secret_arn)
        refreshed, refresh_log, refresh_s = _sam_invoke(
            "MetadataRefreshFunction", ROOT / "events/scheduled.json", env, template, docker, tmp_path
        )
        enriched, enrich_log, enrich_s = _sam_invoke(
            "EnricherFunction", ROOT / "events/msk.json", env, template, docker, tmp_path
        )
    print(f"stand-in image {standin.seconds:.1f} s; sam local invoke: refresh {refresh_s:.1f} s, "
          f"enricher {enrich_s:.1f} s")  # fmt: skip

    # the refresh listed the one app and wrote its snapshot to (moto) S3
    assert refreshed.get("apps") == 1 and refreshed["snapshot"] == f"s3://{bucket}/metadata/apps.json.gz", (
        refreshed
    )
    stored = decode_snapshot(s3.get_object(Bucket=bucket, Key="metadata/apps.json.gz")["Body"].read())
    assert stored.apps == {app.guid: app}
    # it ran in the container: SAM's emulator, the stand-in's runtime client, the built layers
    assert "REPORT RequestId" in refresh_log and "Memory Size: 512 MB" in refresh_log, refresh_log[-2000:]

    # the enricher read that snapshot and wrote every record of the bundled event to InfluxDB 1.x
    assert enriched["batchItemFailures"] == [], enriched
    summary = enriched["summary"]
    assert (summary["records_in"], summary["written"], summary["dropped"], summary["quarantined"]) == (
        6, 4, 2, 0
    ), summary  # fmt: skip
    for measurement, points in EXPECTED.items():
        got = sorted(
            (json.dumps(p["tags"], sort_keys=True), json.dumps(p["fields"], sort_keys=True))
            for p in influxdb1.points(influx_db, measurement)
        )
        want = sorted(
            (json.dumps({**ENRICHMENT, **tags}, sort_keys=True), json.dumps(fields, sort_keys=True))
            for tags, fields in points
        )
        assert got == want, (measurement, got)
    assert "REPORT RequestId" in enrich_log, enrich_log[-2000:]
