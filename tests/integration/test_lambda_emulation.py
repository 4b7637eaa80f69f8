"""The layers as `make build` ships them, and both handlers running from them as Lambda runs them.

The build (``.aws-sam/build``, which `make test` makes before pytest) must hold: bytecode for CPython
3.12 that the runtime uses on a read-only ``/opt`` whatever the files' dates (hash-based ``.pyc``), no
AWS SDK (the runtime's is used), no development tooling, the compiled fast path. Then the packaged
functions run in the emulation of the python3.12 runtime (:mod:`refinery_tools.dev.coldstart`: SAM's
zips unpacked into read-only ``/var/task`` and ``/opt``, Lambda's ``sys.path`` and environment, user
``nobody``, a memory and CPU cgroup, the real runtime client) against moto, InfluxDB 1.x and the fake
Cloud Controller: nothing else is importable there, so they run from the built layers or not at all.

Needs root, cgroup v1 cpu and memory controllers, a mount namespace, Python 3.12 and the test servers;
under CI=true a missing one fails the test.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from refinery_tools.dev import coldstart
from support.unavailable import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".aws-sam" / "build"
LAYERS = ("RefineryLayer", "DependenciesLayer")
MAGIC_312 = (3531).to_bytes(2, "little") + b"\r\n"  # importlib.util.MAGIC_NUMBER of CPython 3.12
RUNTIME_SDK = ("boto3", "botocore", "s3transfer")
TOOLING = ("refinery_tools", "support", "devtools", "localkafka", "cli.py", "data")
LAMBDA_SYS_PATH = [
    "/var/task",
    "/opt/python/lib/python3.12/site-packages",
    "/opt/python",
    "/var/lang/lib/python3.12/site-packages",
    "/var/runtime",
    "/var/lang/lib/python312.zip",
    "/var/lang/lib/python3.12",
    "/var/lang/lib/python3.12/lib-dynload",
]


@pytest.fixture(scope="module")
def build() -> Path:
    if not (BUILD / "template.yaml").is_file():
        unavailable(f"no `sam build` output in {BUILD}: run `make build` (`make test` does)")
    return BUILD


def test_every_module_of_both_layers_has_hash_based_bytecode_for_python_312(build: Path) -> None:
    for layer in LAYERS:
        sources = list((build / layer / "python").rglob("*.py"))
        assert len(sources) > 20, layer
        missing, stale = [], []
        for source in sources:
            pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-312.pyc"
            if not pyc.is_file():
                missing.append(source)
                continue
            header = pyc.read_bytes()[:8]
            flags = int.from_bytes(header[4:8], "little")
            if header[:4] != MAGIC_312 or not flags & 0b01:  # bit 0: hash-based (valid whatever the dates)
                stale.append(pyc)
        assert missing == [] and stale == [], (layer, missing[:5], stale[:5])


def test_the_layers_ship_neither_the_aws_sdk_nor_development_tooling_and_do_ship_the_fast_path(
    build: Path,
) -> None:
    dependencies = build / "DependenciesLayer" / "python"
    shipped = {p.name for p in dependencies.iterdir()}
    assert not [
        name for name in RUNTIME_SDK if name in shipped or any(n.startswith(f"{name}-") for n in shipped)
    ]
    assert {"aws_xray_sdk", "aws_lambda_powertools", "requests", "urllib3"} <= shipped
    package = build / "RefineryLayer" / "python" / "refinery"
    assert [name for name in TOOLING if (package / name).exists() or (package.parent / name).exists()] == []
    assert (package / "_record_fastpath.cpython-312-x86_64-linux-gnu.so").is_file()


PROBE = """\
import os, sys

def handler(event, context):
    import refinery.handlers.enricher, refinery.handlers.metadata_refresh, refinery.speedups, botocore
    return {
        "sys_path": sys.path,
        "uid": os.getuid(),
        "files": sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""}),
        "refinery": sorted(name for name in sys.modules if name.startswith("refinery")),
        "fast_path": refinery.speedups.IMPLEMENTATION,
        "botocore": botocore.__file__,
    }
"""


@pytest.fixture(scope="module")
def emulation(build: Path) -> Iterator[coldstart.Emulation]:
    missing = coldstart.problems()
    if missing:
        unavailable("the Lambda emulation cannot run here: " + "; ".join(missing))
    try:
        with coldstart.Emulation(build) as emulated:
            yield emulated
    except coldstart.EmulationUnavailable as exc:
        unavailable(str(exc))


def test_both_handlers_import_from_the_layers_with_only_what_lambda_puts_on_sys_path(
    emulation: coldstart.Emulation,
) -> None:
    enricher = emulation.functions["enricher"]
    probe = coldstart.FunctionSpec(
        name="probe",
        logical_id="ProbeFunction",
        handler="app.handler",
        task_dir=emulation.work / "probe-task",
        opt_dir=enricher.opt_dir,
        env=enricher.env,
        events=[b"{}", b"{}"],
        check=lambda responses: None,
    )
    probe.task_dir.mkdir(mode=0o755)
    (probe.task_dir / "app.py").write_text(PROBE)
    (probe.task_dir / "app.py").chmod(0o644)
    answers: list[Any] = []
    probe.check = answers.extend
    emulation.functions["probe"] = probe
    emulation.run("probe", coldstart.FULL_CORE)
    seen = answers[0]
    assert seen["uid"] != 0
    assert seen["sys_path"][: len(LAMBDA_SYS_PATH)] == LAMBDA_SYS_PATH
    assert set(seen["sys_path"]) <= {*LAMBDA_SYS_PATH, "/var/lang/lib/python3.12/site-packages"}
    outside = [
        f
        for f in seen["files"]
        if not f.startswith(("/var/task/", "/opt/python/", "/var/lang/", "/var/runtime/"))
    ]
    assert outside == []
    assert seen["botocore"].startswith("/var/lang/lib/python3.12/site-packages/")  # the runtime's
    assert not [
        name
        for name in seen["refinery"]
        if name.startswith("refinery_tools")  # the tooling never loads in Lambda
    ]
    assert seen["fast_path"] == "compiled"


SDK_PROBE = """\
import sys
from {module} import handler as function


def handler(event, context):
    answer = function(event, context)
    loaded = [m for m in sys.modules if m.startswith(("boto3", "botocore.", "s3transfer"))]
    return {{"answer": answer, "sdk": sorted(loaded)}}
"""


@pytest.mark.parametrize(
    ("function", "module"),
    [("enricher", "refinery.handlers.enricher"), ("refresh", "refinery.handlers.metadata_refresh")],
)
def test_the_handlers_call_s3_and_secrets_manager_without_importing_the_aws_sdk(
    emulation: coldstart.Emulation, function: str, module: str
) -> None:
    # Lambda's credentials are in the environment: refinery signs its requests (refinery.awsclient);
    # only botocore's package itself may be imported (Powertools' user-agent hook: no client, no model)
    real = emulation.functions[function]
    task = emulation.work / f"sdk-probe-{function}"
    task.mkdir(mode=0o755)
    (task / "app.py").write_text(SDK_PROBE.format(module=module))
    (task / "app.py").chmod(0o644)
    answers: list[Any] = []

    def check(responses: list[Any]) -> None:
        real.check([r["answer"] for r in responses])  # it did its work: the batch written, apps listed
        answers.extend(responses)

    emulation.functions[f"sdk-probe-{function}"] = coldstart.FunctionSpec(
        name=f"sdk-probe-{function}",
        logical_id="SdkProbeFunction",
        handler="app.handler",
        task_dir=task,
        opt_dir=real.opt_dir,
        env=real.env,
        events=real.events,
        check=check,
        timeout_s=real.timeout_s,
    )
    emulation.run(f"sdk-probe-{function}", coldstart.FULL_CORE)
    assert [a["sdk"] for a in answers] == [[], []]


def test_the_enricher_and_the_refresh_run_from_the_built_layers(emulation: coldstart.Emulation) -> None:
    # each run checks its answers: the enricher wrote its whole batch, the refresh listed every app
    enricher = emulation.run("enricher", coldstart.MB512)
    refresh = emulation.run("refresh", coldstart.FULL_CORE)
    assert enricher.first > 0 and enricher.warm > 0 and refresh.first > 0
    assert enricher.max_memory < coldstart.MB512.memory_bytes


class _XRayDaemon:
    """The X-Ray daemon's UDP port: the documents the SDK sends (one per datagram, after a header)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.documents: list[dict[str, Any]] = []
        self.running = True
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while self.running:
            try:
                datagram = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.documents.append(json.loads(datagram.split(b"\n", 1)[1]))

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()


def _subsegments(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield document
    for child in document.get("subsegments", []):
        yield from _subsegments(child)


def test_with_tracing_the_aws_calls_are_subsegments_with_their_http_requests(
    emulation: coldstart.Emulation,
) -> None:
    daemon = _XRayDaemon()
    host, port = daemon.address.split(":")
    tracing = {
        "POWERTOOLS_TRACE_DISABLED": "false",
        "AWS_XRAY_DAEMON_ADDRESS": daemon.address,
        "_AWS_XRAY_DAEMON_ADDRESS": host,
        "_AWS_XRAY_DAEMON_PORT": port,
    }
    try:
        emulation.run("enricher", coldstart.FULL_CORE, extra_env=tracing)
    finally:
        daemon.close()
    names = {(s.get("namespace"), s.get("name")) for d in daemon.documents for s in _subsegments(d)}
    assert any(name == "## sink write" for _, name in names), names
    # refinery.awsclient's calls (signed by refinery, over requests, which aws-xray-sdk patches): each
    # AWS operation a subsegment, its HTTP request (to moto) one under it
    every = [s for d in daemon.documents for s in _subsegments(d)]
    operations = {s["name"]: s for s in every if s.get("name", "").startswith(("## S3 ", "## Secrets "))}
    assert {"## S3 GetObject", "## S3 GetObjectTagging", "## Secrets Manager GetSecretValue"} == set(
        operations
    ), names
    for operation in operations.values():
        # nested, or sent on its own with its parent's id (the SDK streams large segments)
        streamed = [s for s in every if s.get("parent_id") == operation["id"]]
        children = operation.get("subsegments", []) + streamed
        requests = [s for s in children if s.get("namespace") == "remote"]
        assert requests and requests[0]["http"]["response"]["status"] == 200, (operation, children)


def test_with_snapstart_the_hook_warms_init_and_the_restored_functions_run(
    emulation: coldstart.Emulation,
) -> None:
    # the runtime client runs the before-snapshot hook, then waits on restore/next (released by the
    # emulation), then the invokes: their answers are checked as in an on-demand start
    for function in ("enricher", "refresh"):
        restored = emulation.run(function, coldstart.FULL_CORE, snapstart=True)
        assert restored.restore is not None and restored.restore < restored.init
