"""Cold start as Lambda runs it: the built artifact in an emulation of the python3.12 runtime.

What runs is what ``sam deploy`` ships. The functions and layers of ``sam build`` (``.aws-sam/build``)
are zipped by SAM's own packager (``make_zip_with_lambda_permissions``: every file stamped
1980-01-01, modes widened to o+r), and unzipped the way Lambda does (those modes and that date kept):
each function's code into its ``/var/task``, the layers, in the template's order, into ``/opt``.

Each cold start is a fresh process in an emulation of the Lambda execution environment:

* a **mount namespace** where ``/var/task``, ``/opt``, ``/var/runtime`` and ``/var/lang`` are
  read-only (nothing can write a ``__pycache__``): ``/var/lang`` is the Python 3.12 that
  ``scripts/ensure-python312.sh`` finds, its ``site-packages`` replaced by the runtime's own — the AWS
  SDK (:data:`RUNTIME_SDK`, pip-installed and byte-compiled, as the runtime ships it) — and
  ``/var/runtime`` holds the runtime interface client (``awslambdaric``, ``snapshot-restore-py``) and
  a ``bootstrap.py`` that sets ``sys.path`` as the runtime's does: ``/var/task``,
  ``/opt/python/lib/python3.12/site-packages``, ``/opt/python``, the runtime's ``site-packages``,
  ``/var/runtime``, the standard library;
* the **environment** Lambda sets (``LAMBDA_TASK_ROOT``, ``_HANDLER``, ``AWS_EXECUTION_ENV``,
  ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``, ``LD_LIBRARY_PATH``, ``TZ``, the credentials — in
  ``AWS_ACCESS_KEY_ID`` and friends, or with SnapStart, as Lambda does it there, from a container
  credentials endpoint (``AWS_CONTAINER_CREDENTIALS_FULL_URI``) —, …) and the function's variables
  as ``template.yaml`` resolves them (intrinsics evaluated for the emulation's parameters), nothing
  else but ``AWS_ENDPOINT_URL_S3``/``_SECRETS_MANAGER`` pointing at moto;
* a **non-root user** (``nobody``), and a **cgroup** (v1) holding the memory to the function's size
  (``memory.limit_in_bytes``) and the CPU to its share, ``size / 1769`` of a core
  (``cpu.cfs_quota_us`` over a 100 ms period);
* the **Runtime API** served by this module (``/runtime/invocation/next``, ``/response``,
  ``/error``, ``/init/error``, SnapStart's ``/runtime/restore/next`` and its credentials), so the
  real runtime client drives the handler and the phases are timed as Lambda times them: **INIT**
  from the exec of the runtime's Python to its first ``next``; an **invoke** from handing the event
  over to the response.

S3 and Secrets Manager are moto's server (a process of its own, on loopback), the InfluxDB is a real
1.x (:mod:`refinery_tools.dev.servers`), the Cloud Controller is :mod:`refinery_tools.dev.fake_cc` (in a
process of its own). The enricher (v1 sink) reads its snapshot from S3 and its InfluxDB password
and Cloud Controller client secret from Secrets Manager, as the template configures it.

Not emulated: the network's latency to AWS (loopback here), the first read of the code from
Lambda's storage (the files are in this machine's page cache) and the platform's own work before the
runtime starts (downloading and unpacking the code, starting the microVM).

Needs root (mounts, cgroups), cgroup v1 ``cpu`` and ``memory`` controllers, Python 3.12 with pip,
and network access to PyPI once (the runtime's SDK and client are installed into a cache beside the
build directory). ``python -m refinery_tools.dev.coldstart --help`` runs it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pwd
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[3]
#: Megabytes of memory that give a function one full vCPU (Lambda's documented ratio).
FULL_CORE_MB = 1769
CFS_PERIOD_US = 100_000
PYTHON_VERSION = "3.12"
#: The AWS SDK of the emulated runtime: the managed runtime includes one, a few months older than
#: PyPI's newest and updated by Lambda over time; this pin stands for it (a 2025 release).
RUNTIME_SDK = ("boto3==1.40.4", "botocore==1.40.4")
#: The runtime interface client and the SnapStart runtime hooks the managed runtime includes.
RUNTIME_CLIENT = ("awslambdaric==3.1.1", "snapshot-restore-py==1.0.0")
REGION = "us-east-1"
ACCOUNT = "123456789012"
API = "/2018-06-01/runtime"
#: The function's credentials: in the environment, or (SnapStart) from the container credentials
#: endpoint, which the Runtime API's server serves here at CREDENTIALS_PATH.
CREDENTIALS = {
    "AccessKeyId": "ASIACOLDSTARTEMULATION",
    "SecretAccessKey": "coldstart-emulation-secret-key",
    "Token": "coldstart-emulation-session-token",
}
CREDENTIALS_PATH = "/2021-04-23/credentials"
FUNCTIONS = ("enricher", "refresh", "empty")
#: Apps of the foundation: the fake Cloud Controller lists them, the enricher's snapshot holds them.
FOUNDATION_APPS = 1_000
#: The enricher's batch: records (BatchSize's default), apps sending them.
ENRICHER_RECORDS, ACTIVE_APPS = 1_000, 400
INFLUX_DATABASE = "coldstart"
BUCKET = "refinery-coldstart"
CC_CLIENT_ID = "refinery"
NOT_UNDER = ("/var", "/opt")  # paths the emulation mounts over: its own files must live elsewhere


class EmulationUnavailable(RuntimeError):
    """This machine cannot run the emulation (not root, no cgroup v1 controllers, no Python 3.12)."""


@dataclass(frozen=True)
class Profile:
    """A function size: its memory and its CPU share (``memory_mb / 1769`` of one core)."""

    name: str
    memory_mb: int

    @property
    def cpu_quota_us(self) -> int:
        return round(CFS_PERIOD_US * min(self.memory_mb, FULL_CORE_MB) / FULL_CORE_MB)

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * 1024 * 1024


MB512 = Profile("512 MB", 512)
FULL_CORE = Profile("full core", FULL_CORE_MB)
PROFILES = {"512": MB512, "full": FULL_CORE}


# ------------------------------------------------------------------------------------- capability


_UNSHARE_PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x00020000) != 0:
    raise SystemExit(os.strerror(ctypes.get_errno()))
"""


def problems() -> list[str]:
    """What this machine lacks for the emulation (empty: it can run)."""
    found: list[str] = []
    if os.geteuid() != 0:
        found.append("not root (the emulation mounts and creates cgroups)")
    for controller, knob in (("cpu", "cpu.cfs_quota_us"), ("memory", "memory.limit_in_bytes")):
        try:
            base = _cgroup_dir(controller)
        except EmulationUnavailable as exc:
            found.append(str(exc))
            continue
        if not (base / knob).exists() or not os.access(base, os.W_OK):
            found.append(f"the cgroup v1 {controller} controller at {base} is not writable")
    if os.geteuid() == 0:
        probe = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _UNSHARE_PROBE], capture_output=True, text=True, timeout=30
        )
        if probe.returncode != 0:
            found.append(f"cannot create a mount namespace: {probe.stderr.strip()[-500:]}")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        found.append("no user 'nobody'")
    return found


def python312() -> Path:
    """The Python 3.12 of ``scripts/ensure-python312.sh`` (found or installed)."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/ensure-python312.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise EmulationUnavailable(f"no Python 3.12: {done.stderr.strip()}")
    return Path(done.stdout.strip()) / f"python{PYTHON_VERSION}"


# ------------------------------------------------------------------ the artifact, as Lambda gets it


def sam_zip(source: Path, zip_base: Path) -> Path:
    """Zip ``source`` with SAM's packager, as ``sam deploy`` uploads a function's code or a layer."""
    from samcli.lib.package.utils import make_zip_with_lambda_permissions

    return Path(make_zip_with_lambda_permissions(str(zip_base), str(source)))


def unzip_like_lambda(archive: Path, dest: Path) -> int:
    """Unpack as Lambda does: the archive's modes and dates (SAM's: 1980-01-01) kept; dirs 0755."""
    count = 0
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            for parent in reversed(target.relative_to(dest).parents[:-1]):
                (dest / parent).mkdir(mode=0o755, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            mode = (info.external_attr >> 16) & 0o7777
            target.chmod(mode or 0o644)
            stamp = time.mktime((*info.date_time, 0, 0, -1))
            os.utime(target, (stamp, stamp))
            count += 1
    return count


@dataclass
class FunctionSpec:
    """One function of the template, as the emulation runs it."""

    name: str
    logical_id: str
    handler: str
    task_dir: Path
    opt_dir: Path
    env: dict[str, str]
    events: list[bytes]
    check: Callable[[list[Any]], None]
    memory_mb: int = 512
    timeout_s: int = 120


# --------------------------------------------------------------------- the template's environment

_NO_VALUE = object()
NONE: Mapping[str, str] = {}  # no headers


class _Resolver:
    """Evaluates the intrinsics ``template.yaml`` uses in environment variables and layer lists."""

    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, str], refs: Mapping[str, str]):
        self.template = template
        self.values: dict[str, Any] = {}
        for name, decl in template.get("Parameters", {}).items():
            value = parameters.get(name, decl.get("Default", ""))
            if decl.get("Type") == "CommaDelimitedList":
                value = [v for v in str(value).split(",") if v] if isinstance(value, str) else list(value)
            self.values[name] = value
        self.values.update({"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws"})
        self.values.update(refs)

    def condition(self, name: str) -> bool:
        return bool(self.eval(self.template["Conditions"][name]))

    def eval(self, node: Any) -> Any:
        if not isinstance(node, dict) or len(node) != 1:
            return node
        ((key, arg),) = node.items()
        if key == "Ref":
            return _NO_VALUE if arg == "AWS::NoValue" else self.values[arg]
        if key == "Fn::If":
            return self.eval(arg[1] if self.condition(arg[0]) else arg[2])
        if key == "Fn::Equals":
            return self.eval(arg[0]) == self.eval(arg[1])
        if key == "Fn::Not":
            return not self.eval(arg[0])
        if key == "Fn::And":
            return all(self.eval(a) for a in arg)
        if key == "Fn::Or":
            return any(self.eval(a) for a in arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::Join":
            parts = self.eval(arg[1])
            return arg[0].join(str(self.eval(p)) for p in parts)
        if key == "Fn::Split":
            return str(self.eval(arg[1])).split(arg[0])
        if key == "Fn::Select":
            return self.eval(arg[1])[int(self.eval(arg[0]))]
        if key == "Fn::Sub" and isinstance(arg, str):
            return re.sub(r"\$\{([^}!]+)\}", lambda m: str(self.values[m.group(1)]), arg)
        raise ValueError(f"the emulation does not evaluate {key} (in {node})")


def template_functions(
    build_dir: Path, parameters: Mapping[str, str], refs: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Each function of the built template: handler, code dir, layer dirs (in order), environment."""
    from samcli.yamlhelper import yaml_parse

    template = yaml_parse((build_dir / "template.yaml").read_text())
    resolver = _Resolver(template, parameters, refs)
    glob = template.get("Globals", {}).get("Function", {})
    resources = template["Resources"]
    found: dict[str, dict[str, Any]] = {}
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        variables = {
            **glob.get("Environment", {}).get("Variables", {}),
            **props.get("Environment", {}).get("Variables", {}),
        }
        env: dict[str, str] = {}
        for name, node in variables.items():
            value = resolver.eval(node)
            if value is not _NO_VALUE:
                env[name] = str(value)
        layer_dirs = []
        for layer in props.get("Layers", glob.get("Layers", [])):
            if not (isinstance(layer, dict) and layer.get("Ref") in resources):
                raise ValueError(f"{logical_id}: the emulation runs this template's layers, not {layer}")
            layer_dirs.append(build_dir / resources[layer["Ref"]]["Properties"]["ContentUri"])
        found[logical_id] = {
            "handler": props.get("Handler", glob.get("Handler")),
            "runtime": props.get("Runtime", glob.get("Runtime")),
            "code": build_dir / props["CodeUri"],
            "layers": layer_dirs,
            "env": env,
            "timeout": int(resolver.eval(props.get("Timeout", glob.get("Timeout", 3)))),
        }
    return found


# ---------------------------------------------------------------------------- the Lambda runtime

_BOOTSTRAP = '''\
"""The python3.12 runtime's entry point, as the emulation runs it (written by refinery's coldstart).

Like the managed runtime's: the runtime interface client is imported from /var/runtime first; then
sys.path becomes /var/task, /opt/python/lib/python3.X/site-packages, /opt/python, the runtime's
site-packages, and what Python put there (/var/runtime, the standard library); .pth files of /var/task
and the layer directories are processed; then the client runs the handler named by _HANDLER.
"""

import os
import site
import sys

import awslambdaric.__main__ as runtime_client_main


def main() -> None:
    task_root = os.environ["LAMBDA_TASK_ROOT"]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    layer_site = f"/opt/python/lib/python{version}/site-packages"
    own_pythonpath = "PYTHONPATH" in os.environ
    if not own_pythonpath:
        sys.path[0:0] = [layer_site, "/opt/python", f"/var/lang/lib/python{version}/site-packages"]
    sys.path.insert(0, task_root)
    site.addsitedir(task_root)
    if not own_pythonpath:
        site.addsitedir(layer_site)
        site.addsitedir("/opt/python")
        os.environ["PYTHONPATH"] = os.environ["LAMBDA_RUNTIME_DIR"]
    runtime_client_main.main([task_root, os.environ["_HANDLER"]])


main()
'''

_EMPTY_HANDLER = '''\
"""The smallest function: the runtime's own cold start, the floor of every other."""


def handler(event, context):
    return {}
'''

_LAUNCHER = '''\
"""Started as root: a private mount namespace, read-only binds, the cgroups, the user; then exec."""
import ctypes, json, os, sys, time

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
libc = ctypes.CDLL(None, use_errno=True)


def check(rc, what):
    if rc != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")


with open(sys.argv[1]) as handle:
    spec = json.load(handle)
check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
mount(None, "/", None, MS_REC | MS_PRIVATE)
for path in spec["tmpfs"]:
    mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
for source, target in spec["binds"]:
    os.makedirs(target, exist_ok=True)
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
for procs in spec["cgroups"]:
    with open(procs, "w") as handle:
        handle.write(str(os.getpid()))
os.chdir(spec["cwd"])
os.setgroups([])
os.setgid(spec["gid"])
os.setuid(spec["uid"])
os.write(spec["clock_fd"], repr(time.monotonic()).encode())
os.close(spec["clock_fd"])
os.execve(spec["argv"][0], spec["argv"], spec["env"])
'''


@dataclass(frozen=True)
class Runtime:
    """The emulated runtime's files: the interpreter's prefix, its site-packages, /var/runtime."""

    prefix: Path
    site_packages: Path
    runtime_dir: Path


def prepare_runtime(py312: Path, cache: Path) -> Runtime:
    """The runtime's SDK and client, pip-installed for Python 3.12 once into ``cache`` (reused)."""
    asked = [str(py312), "-c", "import sys; print(sys.base_prefix)"]
    prefix = Path(subprocess.run(asked, capture_output=True, text=True, check=True).stdout.strip())
    if (
        not (prefix / f"lib/python{PYTHON_VERSION}/os.py").is_file()
        or not (prefix / f"bin/python{PYTHON_VERSION}").is_file()
    ):
        raise EmulationUnavailable(f"{py312}: not a relocatable prefix ({prefix}) with lib/python3.12/os.py")
    identity = json.dumps([RUNTIME_SDK, RUNTIME_CLIENT, _BOOTSTRAP, str(prefix)])
    key = hashlib.sha256(identity.encode()).hexdigest()
    home = cache / f"lambda-runtime-{key[:12]}"
    if not (home / "ready").exists():
        _progress(f"installing the emulated runtime's SDK and client into {home}")
        scratch = Path(tempfile.mkdtemp(prefix=home.name + ".", dir=cache))
        try:
            for target, requirements in (("site-packages", RUNTIME_SDK), ("runtime", RUNTIME_CLIENT)):
                done = subprocess.run(
                    [str(py312), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                     "--no-warn-script-location", "--only-binary=:all:", "--target", str(scratch / target),
                     *requirements],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if done.returncode != 0:
                    raise EmulationUnavailable(f"pip install {' '.join(requirements)}: {done.stderr.strip()}")
            (scratch / "runtime" / "bootstrap.py").write_text(_BOOTSTRAP)
            subprocess.run([str(py312), "-m", "compileall", "-q", str(scratch / "runtime")], check=True)
            for path in scratch.rglob("*"):
                path.chmod(0o755 if path.is_dir() else 0o644 | (path.stat().st_mode & 0o111))
            scratch.chmod(0o755)
            (scratch / "ready").write_text("\n".join((*RUNTIME_SDK, *RUNTIME_CLIENT)) + "\n")
            try:
                scratch.rename(home)
            except OSError:  # another run made it meanwhile
                shutil.rmtree(scratch, ignore_errors=True)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return Runtime(prefix, home / "site-packages", home / "runtime")


# ------------------------------------------------------------------------------------- cgroups


def _cgroup_dir(controller: str) -> Path:
    """The directory of this process's cgroup in the v1 hierarchy of ``controller``."""
    base = Path("/sys/fs/cgroup") / controller
    if not base.is_dir():
        raise EmulationUnavailable(f"no cgroup v1 {controller} controller at {base}")
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return base / path.lstrip("/")
    return base


class Cgroup:
    """A cpu and a memory cgroup (v1) for one cold start, removed on exit."""

    def __init__(self, profile: Profile, name: str):
        self.profile = profile
        self.cpu = _cgroup_dir("cpu") / name
        self.memory = _cgroup_dir("memory") / name

    def __enter__(self) -> Cgroup:
        for path in (self.cpu, self.memory):
            path.mkdir()
        try:
            (self.cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (self.cpu / "cpu.cfs_quota_us").write_text(str(self.profile.cpu_quota_us))
            (self.memory / "memory.limit_in_bytes").write_text(str(self.profile.memory_bytes))
            swap = self.memory / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(self.profile.memory_bytes))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def procs(self) -> list[str]:
        return [str(self.cpu / "cgroup.procs"), str(self.memory / "cgroup.procs")]

    def max_memory(self) -> int:
        return int((self.memory / "memory.max_usage_in_bytes").read_text())

    def oom_killed(self) -> bool:
        control = self.memory / "memory.oom_control"
        text = control.read_text() if control.exists() else ""
        return "oom_kill " in text and "oom_kill 0" not in text

    def __exit__(self, *exc: object) -> None:
        for path in (self.cpu, self.memory):
            if not path.exists():
                continue
            deadline = time.monotonic() + 10
            while True:
                try:
                    path.rmdir()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    for pid in (path / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), 9)
                    time.sleep(0.05)


# ------------------------------------------------------------------------------ the Runtime API


@dataclass
class Timeline:
    """When the Runtime API saw each step of one execution environment (``time.monotonic()``)."""

    exec_at: float = 0.0
    restore_asked: float | None = None  # SnapStart: the runtime asked for restore/next (INIT done)
    restored: float | None = None  # SnapStart: restore/next answered
    next_asked: list[float] = field(default_factory=list)
    handed: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    responses: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class RuntimeApi:
    """Lambda's Runtime API for one execution environment: hands over ``events`` one per ``next``."""

    def __init__(
        self, events: Sequence[bytes], *, timeout_s: int, function_arn: str, snapstart: bool = False
    ):
        self.events = list(events)
        self.timeout_s = timeout_s
        self.function_arn = function_arn
        self.timeline = Timeline()
        self.pending: queue.Queue[bytes | None] = queue.Queue()
        self.restore_gate = threading.Event()
        self.snapstart = snapstart
        self.changed = threading.Condition()
        self.credentials_token = uuid.uuid4().hex
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()  # no Nagle: Lambda's Runtime API answers at once (a 40 ms stall otherwise)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"", headers: Mapping[str, str] = NONE) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                now = time.monotonic()
                if self.path == f"{API}/invocation/next":
                    api._note(api.timeline.next_asked, now)
                    event = api.pending.get()
                    if event is None:  # the run is over (its process is gone)
                        self.close_connection = True
                        return
                    request_id = str(uuid.uuid4())
                    headers = {
                        "Content-Type": "application/json",
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(int((time.time() + api.timeout_s) * 1000)),
                        "Lambda-Runtime-Invoked-Function-Arn": api.function_arn,
                        "Lambda-Runtime-Trace-Id": _trace_header(),
                    }
                    api._note(api.timeline.handed, time.monotonic())
                    self._reply(200, event, headers)
                elif self.path == f"{API}/restore/next":
                    with api.changed:
                        api.timeline.restore_asked = now
                        api.changed.notify_all()
                    api.restore_gate.wait()
                    with api.changed:
                        api.timeline.restored = time.monotonic()
                    self._reply(200)
                elif self.path == CREDENTIALS_PATH:
                    if self.headers.get("Authorization") != api.credentials_token:
                        self._reply(403)
                        return
                    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
                    body = {"Expiration": expires, **CREDENTIALS}
                    self._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
                else:
                    self._reply(404)

            def do_POST(self) -> None:
                now = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.endswith("/response"):
                    with api.changed:
                        api.timeline.responses.append(json.loads(body) if body else None)
                    api._note(api.timeline.answered, now)
                elif self.path.endswith("/error"):
                    api._error(f"{self.path}: {body.decode(errors='replace')[:4000]}")
                else:
                    self._reply(404)
                    return
                self._reply(202)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _note(self, where: list[float], when: float) -> None:
        with self.changed:
            where.append(when)
            self.changed.notify_all()

    def _error(self, text: str) -> None:
        with self.changed:
            self.timeline.errors.append(text)
            self.changed.notify_all()

    def __enter__(self) -> RuntimeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore_gate.set()
        self.pending.put(None)
        self.server.shutdown()
        self.server.server_close()

    def wait(self, done: Callable[[Timeline], bool], timeout: float, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done(self.timeline) and not self.timeline.errors:
                if not alive():
                    raise RuntimeError("the runtime process exited")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no progress in {timeout:.0f} s")
                self.changed.wait(min(left, 0.2))
        if self.timeline.errors:
            raise RuntimeError("the function failed: " + "; ".join(self.timeline.errors))

    def invoke(self, timeout: float, alive: Callable[[], bool]) -> None:
        """Hand over the next event once the runtime asks for it, and wait for its answer."""
        n = len(self.timeline.answered)
        self.wait(lambda t: len(t.next_asked) > n, timeout, alive)
        if n:  # a warm invoke comes later, not in the CPU period that the previous one ran out
            time.sleep(3 * CFS_PERIOD_US / 1e6)
        self.pending.put(self.events[n])
        self.wait(lambda t: len(t.answered) > n, timeout, alive)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # the runtime was killed mid-request
            super().handle_error(request, client_address)


def _trace_header() -> str:
    root = f"1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
    return f"Root={root};Parent={uuid.uuid4().hex[:16]};Sampled=1"


# ----------------------------------------------------------------------------------- one cold start


@dataclass
class ColdStart:
    """One fresh execution environment: INIT, its first invoke, a warm invoke (seconds)."""

    function: str
    profile: str
    init: float
    first: float
    warm: float
    max_memory: int
    cpu: float = 0.0  # CPU seconds of the process until its first answer (user + system, 10 ms ticks)
    restore: float | None = None  # SnapStart: after-restore hooks (restore/next → next)

    @property
    def cold(self) -> float:
        """What a cold start adds to the first event's latency: INIT + the first invoke."""
        return self.init + self.first


@dataclass
class Stats:
    function: str
    profile: str
    runs: list[ColdStart]

    def median(self, name: str) -> float:
        return statistics.median(float(getattr(run, name)) for run in self.runs)

    def line(self) -> str:
        mib = self.median("max_memory") / 1048576
        return (
            f"{self.function:>9} {self.profile:>10}: INIT+first {self.median('cold') * 1000:6.0f} ms"
            f"  (INIT {self.median('init') * 1000:5.0f}, first {self.median('first') * 1000:5.0f},"
            f" warm {self.median('warm') * 1000:5.1f} ms; CPU {self.median('cpu') * 1000:4.0f} ms;"
            f" {mib:.0f} MiB)  n={len(self.runs)}"
            + ("" if self.runs[0].restore is None else f"  restore {self.median('restore') * 1000:.0f} ms")
        )


class _Staged:
    """A context manager that sets itself up on enter (``_setup``) and undoes every step it entered in
    its ``ExitStack`` on exit, or as soon as a step of the setup fails."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Self:
        try:
            self._setup()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _setup(self) -> None:
        raise NotImplementedError


class Emulation(_Staged):
    """The built artifact, the runtime, the servers: ready to run cold starts (a context manager).

    ``build_dir`` is a ``sam build`` output. ``work`` holds the unpacked code (removed on exit).
    """

    def __init__(
        self,
        build_dir: Path | None = None,
        *,
        cache_dir: Path | None = None,
        tracing: bool = False,
        refresh_apps: int = FOUNDATION_APPS,
        xray_address: str | None = None,
    ):
        self.build_dir = (build_dir or ROOT / ".aws-sam" / "build").resolve()
        self.cache_dir = (cache_dir or self.build_dir.parent).resolve()
        self.tracing = tracing
        self.refresh_apps = refresh_apps
        self.xray_address = xray_address
        self.functions: dict[str, FunctionSpec] = {}
        self.runtime: Runtime | None = None
        super().__init__()
        self.work = Path()
        self.sizes: dict[str, int] = {}

    # -- setup
    def _setup(self) -> None:
        missing = problems()
        if missing:
            raise EmulationUnavailable("; ".join(missing))
        if not (self.build_dir / "template.yaml").is_file():
            raise EmulationUnavailable(f"no `sam build` output in {self.build_dir} (run `make build`)")
        self.work = Path(tempfile.mkdtemp(prefix="refinery-coldstart-"))
        self._stack.callback(shutil.rmtree, self.work, True)
        for place in (self.work, self.cache_dir):
            if any(str(place).startswith(p + "/") for p in NOT_UNDER):
                raise EmulationUnavailable(f"{place} is under {NOT_UNDER}, which the emulation mounts over")
        self.runtime = prepare_runtime(python312(), self.cache_dir)
        servers = self._stack.enter_context(_Servers(self.refresh_apps))
        self.servers = servers
        parameters = {
            "MskClusterArn": f"arn:aws:kafka:{REGION}:{ACCOUNT}:cluster/coldstart/0000",
            "InfluxUrl": servers.influx_url,
            "InfluxDatabase": INFLUX_DATABASE,
            "InfluxUsername": "refinery",
            "InfluxPasswordSecretArn": servers.influx_secret_arn,
            "CfApiUrl": servers.cc_url,
            "CfClientId": CC_CLIENT_ID,
            "CfClientSecretArn": servers.cc_secret_arn,
            "ActiveTracing": "true" if self.tracing else "false",
        }
        functions = template_functions(self.build_dir, parameters, {"MetadataBucket": BUCKET})
        zips = self.work / "zips"
        zips.mkdir()
        unpacked: dict[Path, Path] = {}
        opts: dict[tuple[Path, ...], Path] = {}

        def unpack(source: Path) -> Path:
            if source not in unpacked:
                archive = sam_zip(source, zips / source.name)
                target = self.work / "unzipped" / source.name
                self.sizes[source.name] = archive.stat().st_size
                unzip_like_lambda(archive, target)
                archive.unlink()
                unpacked[source] = target
            return unpacked[source]

        for name, logical_id in (("enricher", "EnricherFunction"), ("refresh", "MetadataRefreshFunction")):
            fn = functions[logical_id]
            _progress(f"packaging {logical_id} and its layers as `sam deploy` ships them")
            key = tuple(fn["layers"])
            if key not in opts:
                opts[key] = self.work / f"opt-{len(opts)}"
                opts[key].mkdir(mode=0o755)
                for layer in fn["layers"]:  # each layer over the previous ones, in the template's order
                    shutil.copytree(unpack(layer), opts[key], dirs_exist_ok=True, copy_function=shutil.copy2)
            opt = opts[key]
            self.functions[name] = FunctionSpec(
                name=name,
                logical_id=logical_id,
                handler=fn["handler"],
                task_dir=unpack(fn["code"]),
                opt_dir=opt,
                env=fn["env"],
                events=servers.events[name],
                check=servers.checks[name],
                timeout_s=fn["timeout"],
            )
        empty_task = self.work / "empty-task"
        empty_task.mkdir(mode=0o755)
        (empty_task / "app.py").write_text(_EMPTY_HANDLER)
        (empty_task / "app.py").chmod(0o644)
        empty_opt = self.work / "empty-opt"
        empty_opt.mkdir(mode=0o755)
        self.functions["empty"] = FunctionSpec(
            name="empty",
            logical_id="EmptyFunction",
            handler="app.handler",
            task_dir=empty_task,
            opt_dir=empty_opt,
            env={},
            events=[b"{}", b"{}"],
            check=lambda responses: None,
        )

    # -- one run
    def lambda_env(
        self, fn: FunctionSpec, profile: Profile, api: RuntimeApi, snapstart: bool
    ) -> dict[str, str]:
        """The environment of the runtime process: Lambda's variables, then the function's."""
        day = time.strftime("%Y/%m/%d")
        xray = self.xray_address or "127.0.0.1:2000"
        env = {
            "PATH": "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
            "LD_LIBRARY_PATH": "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:"
            "/var/task/lib:/opt/lib",
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "LAMBDA_TASK_ROOT": "/var/task",
            "LAMBDA_RUNTIME_DIR": "/var/runtime",
            "_HANDLER": fn.handler,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{PYTHON_VERSION}",
            "AWS_LAMBDA_FUNCTION_NAME": f"refinery-{fn.name}",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(profile.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "1" if snapstart else "$LATEST",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start" if snapstart else "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/refinery-{fn.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{day}/[$LATEST]{uuid.uuid4().hex}",
            "AWS_LAMBDA_RUNTIME_API": api.address,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": CREDENTIALS["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["SecretAccessKey"],
            "AWS_SESSION_TOKEN": CREDENTIALS["Token"],
            "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
            "AWS_XRAY_DAEMON_ADDRESS": xray,
            "_AWS_XRAY_DAEMON_ADDRESS": xray.split(":")[0],
            "_AWS_XRAY_DAEMON_PORT": xray.split(":")[1],
        }
        if snapstart:  # SnapStart's credentials come from the container credentials endpoint
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
                del env[name]
            env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = f"http://{api.address}{CREDENTIALS_PATH}"
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = api.credentials_token
        env.update(fn.env)
        # not Lambda's: where moto serves S3 and Secrets Manager
        env["AWS_ENDPOINT_URL_S3"] = self.servers.moto_url
        env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = self.servers.moto_url
        return env

    def run(
        self,
        function: str,
        profile: Profile,
        *,
        snapstart: bool = False,
        extra_env: Mapping[str, str] | None = None,
        keep_output: Path | None = None,
    ) -> ColdStart:
        """One cold start of ``function`` in a fresh execution environment of size ``profile``."""
        assert self.runtime is not None
        fn = self.functions[function]
        run_dir = Path(tempfile.mkdtemp(prefix=f"run-{function}-", dir=self.work))
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:refinery-{fn.name}"
        with (
            RuntimeApi(fn.events, timeout_s=fn.timeout_s, function_arn=arn, snapstart=snapstart) as api,
            Cgroup(profile, f"refinery-coldstart-{os.getpid()}-{uuid.uuid4().hex[:8]}") as cgroup,
        ):
            env = self.lambda_env(fn, profile, api, snapstart)
            env.update(extra_env or {})
            site = f"/var/lang/lib/python{PYTHON_VERSION}/site-packages"
            nobody = pwd.getpwnam("nobody")
            read_clock, write_clock = os.pipe()
            spec = {
                "tmpfs": ["/var"],
                "binds": [
                    [str(self.runtime.prefix), "/var/lang"],
                    [str(self.runtime.site_packages), site],
                    [str(self.runtime.runtime_dir), "/var/runtime"],
                    [str(fn.task_dir), "/var/task"],
                    [str(fn.opt_dir), "/opt"],
                ],
                "cgroups": cgroup.procs,
                "cwd": "/var/task",
                "uid": nobody.pw_uid,
                "gid": nobody.pw_gid,
                "clock_fd": write_clock,
                "argv": [f"/var/lang/bin/python{PYTHON_VERSION}", "/var/runtime/bootstrap.py"],
                "env": env,
            }
            (run_dir / "spec.json").write_text(json.dumps(spec))
            (run_dir / "launcher.py").write_text(_LAUNCHER)
            with open(run_dir / "stdout", "wb") as out, open(run_dir / "stderr", "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", str(run_dir / "launcher.py"), str(run_dir / "spec.json")],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    pass_fds=(write_clock,),
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                )
            os.close(write_clock)
            try:
                with os.fdopen(read_clock, "rb") as clock:
                    stamp = clock.read()
                if not stamp:
                    proc.wait(timeout=30)
                    raise RuntimeError(f"the launcher failed: {_tail(run_dir / 'stderr')}")
                api.timeline.exec_at = float(stamp)
                alive = lambda: proc.poll() is None  # noqa: E731
                limit = max(60.0, fn.timeout_s)
                if snapstart:
                    api.wait(lambda t: t.restore_asked is not None, limit, alive)
                    time.sleep(0.2)  # the snapshot is taken; the environment is restored later
                    api.restore_gate.set()
                for number in range(len(fn.events)):
                    api.invoke(limit, alive)
                    if number == 0:
                        cpu = _cpu_seconds(proc.pid)
                memory = cgroup.max_memory()
            except Exception as exc:
                oom = " (killed by the memory cgroup: out of memory)" if cgroup.oom_killed() else ""
                raise RuntimeError(
                    f"{function} at {profile.name}: {exc}{oom}\nstderr: {_tail(run_dir / 'stderr')}"
                    f"\nstdout: {_tail(run_dir / 'stdout')}"
                ) from None
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=30)
        if keep_output is not None:
            keep_output.mkdir(parents=True, exist_ok=True)
            for name in ("stdout", "stderr"):
                shutil.copy(run_dir / name, keep_output / name)
        shutil.rmtree(run_dir, ignore_errors=True)
        t = api.timeline
        fn.check(t.responses)
        start_of_invokes = t.next_asked[0]
        init_end = t.restore_asked if snapstart and t.restore_asked is not None else start_of_invokes
        return ColdStart(
            function=function,
            profile=profile.name,
            init=init_end - t.exec_at,
            first=t.answered[0] - t.handed[0],
            warm=t.answered[1] - t.handed[1],
            max_memory=memory,
            cpu=cpu,
            restore=(start_of_invokes - t.restored) if snapstart and t.restored is not None else None,
        )

    def measure(
        self, plan: Sequence[tuple[str, Profile]], runs: int, *, snapstart: bool = False
    ) -> dict[tuple[str, str], Stats]:
        """``runs`` cold starts of each (function, profile), interleaved round by round."""
        results = {(f, p.name): Stats(f, p.name, []) for f, p in plan}
        for number in range(runs):
            order = plan if number % 2 == 0 else list(reversed(plan))
            for function, profile in order:
                results[function, profile.name].runs.append(self.run(function, profile, snapstart=snapstart))
        return results


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(none)"


def _progress(message: str) -> None:
    print(f"coldstart: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- the servers


class _Servers(_Staged):
    """moto (S3, Secrets Manager), InfluxDB 1.x, the fake Cloud Controller, seeded for both functions."""

    def __init__(self, refresh_apps: int):
        self.refresh_apps = refresh_apps
        super().__init__()
        self.events: dict[str, list[bytes]] = {}
        self.checks: dict[str, Callable[[list[Any]], None]] = {}

    def _setup(self) -> None:
        import boto3

        from refinery_tools.dev import workload
        from refinery_tools.dev.servers import InfluxDB1Server

        self.moto_url = self._stack.enter_context(_moto_process())
        influx = self._stack.enter_context(InfluxDB1Server())
        influx.create_database(INFLUX_DATABASE)
        self.influx_url = influx.url
        self.cc_url = self._stack.enter_context(workload.fake_cloud_controller(self.refresh_apps))
        session = boto3.session.Session(
            aws_access_key_id="coldstart", aws_secret_access_key="coldstart", region_name=REGION
        )
        s3 = session.client("s3", endpoint_url=self.moto_url)
        secrets = session.client("secretsmanager", endpoint_url=self.moto_url)
        s3.create_bucket(Bucket=BUCKET)
        # the foundation the fake Cloud Controller serves (bench's, seed 7): refreshes keep the same apps
        work = workload.build_workload(ENRICHER_RECORDS, self.refresh_apps, ACTIVE_APPS, seed=7)
        s3.put_object(Bucket=BUCKET, Key="metadata/apps.json.gz", Body=work.snapshot)
        self.influx_secret_arn = secrets.create_secret(
            Name="refinery/influx-password", SecretString="coldstart-influx-password"
        )["ARN"]
        self.cc_secret_arn = secrets.create_secret(
            Name="refinery/cf-client-secret", SecretString=workload.CC_SECRET
        )["ARN"]
        event = json.dumps(work.event).encode()
        self.events = {"enricher": [event, event], "refresh": [b"{}", b"{}"]}
        expected = work.expected_points

        def enricher_ok(responses: list[Any]) -> None:
            for response in responses:
                summary = response["summary"]
                if summary["records_in"] != ENRICHER_RECORDS or response["batchItemFailures"]:
                    raise AssertionError(f"the enricher did not write its batch: {summary}")
                if summary.get("points", expected) != expected:
                    raise AssertionError(f"expected {expected} points: {summary}")

        def refresh_ok(responses: list[Any]) -> None:
            for response in responses:
                if response.get("apps") != self.refresh_apps:
                    raise AssertionError(f"the refresh did not list {self.refresh_apps} apps: {response}")

        self.checks = {"enricher": enricher_ok, "refresh": refresh_ok}


@contextlib.contextmanager
def _moto_process() -> Iterator[str]:
    """moto's server in a process of its own (as AWS is not in the function's), on loopback."""
    from refinery_tools.dev.servers import free_port

    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in the finally below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise EmulationUnavailable(f"moto's server did not start: {log.read().decode()[-2000:]}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


# ------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refinery_tools.dev.coldstart",
        description="Cold starts of the built functions in an emulation of the Lambda python3.12 runtime.",
    )
    parser.add_argument("--build-dir", type=Path, default=ROOT / ".aws-sam" / "build")
    parser.add_argument("--cache-dir", type=Path, help="the runtime's cache (default: beside the build)")
    parser.add_argument("--runs", type=int, default=5, help="cold starts of each function and size")
    parser.add_argument(
        "--function", action="append", choices=FUNCTIONS, help="default: enricher, refresh and empty"
    )
    parser.add_argument("--size", action="append", choices=sorted(PROFILES), help="default: 512 and full")
    parser.add_argument("--snapstart", action="store_true", help="SnapStart's restore path instead")
    parser.add_argument("--importtime", action="store_true", help="one run with -X importtime, to stderr")
    parser.add_argument("--json", type=Path, help="write every run as JSON here")
    args = parser.parse_args(argv)
    functions = args.function or list(FUNCTIONS)
    profiles = [PROFILES[s] for s in (args.size or ["512", "full"])]
    with Emulation(args.build_dir, cache_dir=args.cache_dir) as emulation:
        if args.importtime:
            out = emulation.work / "importtime"
            env = {"PYTHONPROFILEIMPORTTIME": "1"}
            emulation.run(functions[0], profiles[0], extra_env=env, keep_output=out)
            sys.stderr.write((out / "stderr").read_text())
            return 0
        plan = [(f, p) for f in functions for p in profiles]
        results = emulation.measure(plan, args.runs, snapstart=args.snapstart)
    for stats in results.values():
        print(stats.line())
    if args.json:
        args.json.write_text(
            json.dumps([run.__dict__ for stats in results.values() for run in stats.runs], indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
