"""Docker for `sam local invoke` in the suite: the engine, an offline stand-in for the Lambda base image,
and relays that let the function's container reach the suite's servers.

* :class:`DockerEngine` uses the Docker engine that answers (``DOCKER_HOST`` or the default socket) or
  starts ``dockerd`` (Debian's ``docker.io``, installed by ``make servers``) on a socket, data root and
  exec root of its own, with ``--iptables=false --ip-forward=false --ip-masq=false``: it changes no
  firewall rule and no sysctl. On exit it stops that daemon, unmounts and removes its directories and
  deletes the ``docker0`` bridge if it made it; with an engine it did not start, it removes the images
  it made (the stand-in, SAM's ``samcli/lambda-…`` images) and nothing else.
* :func:`build_standin_image` builds ``public.ecr.aws/lambda/python:3.12-x86_64`` (the tag SAM CLI
  derives for ``python3.12`` on ``x86_64``: ``samcli/local/docker/lambda_image.py``) offline, with
  ``docker import`` of a root filesystem written as a tar stream: the Python 3.12 of
  ``scripts/ensure-python312.sh`` as ``/var/lang`` with the runtime's AWS SDK as its site-packages and
  ``/var/runtime`` holding the runtime interface client (``awslambdaric``) and its ``bootstrap.py``,
  all as the cold-start emulation prepares them (:func:`refinery_tools.dev.coldstart.prepare_runtime`),
  plus the shared libraries they load, a shell and the few tools SAM's image build runs (``mv``,
  ``chmod``, ``cp``, ``rm``), the base image's environment and entry point. SAM then builds its own
  image FROM it (``--skip-pull-image``), adding its runtime interface emulator (``/var/rapid``) and
  the layers (``/opt``), and runs the emulator, which starts ``/var/runtime/bootstrap``.
* :class:`TcpRelay` forwards a port on the Docker bridge's gateway (the host as the container sees it)
  to a server on ``127.0.0.1``: the suite's servers listen on loopback only.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: The base image SAM CLI builds its invoke image FROM for python3.12 on x86_64.
BASE_IMAGE = "public.ecr.aws/lambda/python:3.12-x86_64"
#: SAM CLI's own images (one per runtime and layer set): removed after the run.
SAM_IMAGE_REPOSITORY = "samcli/lambda-python"
PYTHON = "python3.12"
#: What SAM's image build runs in the base image (``RUN mv …; chmod …; cp -rf …; rm -rf …``) and a
#: shell for the bootstrap script.
TOOLS = ("sh", "mv", "chmod", "cp", "rm", "mkdir", "ls", "cat")
#: Libraries the managed image has and the layers' compiled modules may load (manylinux wheels and the
#: compiled fast path link against these only).
BASE_LIBRARIES = ("libstdc++.so.6", "libgcc_s.so.1")
#: Parts of the standard library the managed runtime does not ship (or that no function needs).
STDLIB_LEFT_OUT = frozenset(
    {
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "site-packages",
        "config-3.12-x86_64-linux-gnu",
    }
)
#: The managed image's environment (``docker inspect public.ecr.aws/lambda/python:3.12``).
IMAGE_ENV = {
    "LANG": "en_US.UTF-8",
    "TZ": ":/etc/localtime",
    "PATH": "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
    "LD_LIBRARY_PATH": "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:"
    "/var/task:/var/task/lib:/opt/lib",
    "LAMBDA_TASK_ROOT": "/var/task",
    "LAMBDA_RUNTIME_DIR": "/var/runtime",
}
#: ``/var/runtime/bootstrap``: what the runtime interface emulator starts (as the managed image's does).
RUNTIME_BOOTSTRAP = f"""#!/bin/sh
# The python3.12 runtime's bootstrap in the suite's stand-in image (tests/support/docker_lambda.py).
export AWS_EXECUTION_ENV=AWS_Lambda_{PYTHON}
export _HANDLER="${{_HANDLER:-$AWS_LAMBDA_FUNCTION_HANDLER}}"
if [ -z "$AWS_LAMBDA_EXEC_WRAPPER" ]; then
    exec /var/lang/bin/{PYTHON} /var/runtime/bootstrap.py
fi
exec "$AWS_LAMBDA_EXEC_WRAPPER" /var/lang/bin/{PYTHON} /var/runtime/bootstrap.py
"""
#: The image's entry point for a plain ``docker run`` (SAM replaces it with its emulator).
ENTRYPOINT = """#!/bin/sh
# Stand-in image (tests/support/docker_lambda.py): under `sam local` the emulator starts the bootstrap.
if [ -z "$AWS_LAMBDA_RUNTIME_API" ] && [ -x /var/rapid/aws-lambda-rie ]; then
    exec /var/rapid/aws-lambda-rie /var/runtime/bootstrap "$@"
fi
exec /var/runtime/bootstrap "$@"
"""
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "sbx_user1051:x:993:990::/home/sbx_user1051:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
)
GROUP = "root:x:0:\nsbx_user1051:x:990:\nnogroup:x:65534:\n"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class DockerUnavailable(RuntimeError):
    """Docker cannot run here (no engine, no dockerd to start, not root, …): the message says why."""


def _docker(env: dict[str, str], *args: str, timeout: float = 120, stdin: bytes | None = None) -> str:
    done = subprocess.run(
        ["docker", *args], env=env, input=stdin, capture_output=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"docker {' '.join(args[:3])}: {done.stderr.decode(errors='replace').strip()[-2000:]}"
        )
    return done.stdout.decode()


def _answers(env: dict[str, str]) -> bool:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ID}}"], env=env, capture_output=True, timeout=20
        )
        return done.returncode == 0
    return False


def _bridge_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


@dataclass
class DockerEngine:
    """A Docker engine for the suite: the one running, or a ``dockerd`` of its own (context manager)."""

    env: dict[str, str] = field(default_factory=dict)
    started: bool = False
    gateway: str = ""
    made_images: set[str] = field(default_factory=set)
    #: With an engine it did not start: the images the tags it may overwrite named before (tag -> id).
    _before: dict[str, str] = field(default_factory=dict)
    _home: Path | None = None
    _daemon: subprocess.Popen[bytes] | None = None
    _made_bridge: bool = False

    def __enter__(self) -> DockerEngine:
        if shutil.which("docker") is None:
            raise DockerUnavailable("no docker client on PATH (run `make servers`: Debian's docker.io)")
        self.env = {**os.environ}
        self.env.pop("DOCKER_CONTEXT", None)
        if not _answers(self.env):
            try:
                self._start()
            except BaseException:
                self._stop_daemon()
                raise
        if not self.started:
            self._before = {tag: self._image_id(tag) for tag in [BASE_IMAGE, *self.sam_images()]}
            self._before = {tag: image for tag, image in self._before.items() if image}
        self.gateway = self._bridge_gateway()
        if not self.gateway:
            self.__exit__()
            raise DockerUnavailable("the Docker engine's bridge network has no gateway on this host")
        return self

    def _bridge_gateway(self) -> str:
        """The host's address on the default bridge network: where a container reaches the host."""
        inspect = ["network", "inspect", "bridge", "--format"]
        gateway = _docker(self.env, *inspect, "{{range .IPAM.Config}}{{.Gateway}}{{end}}").strip()
        if gateway:
            return gateway
        bridge = _docker(self.env, *inspect, '{{index .Options "com.docker.network.bridge.name"}}').strip()
        shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", bridge or "docker0"],
                               capture_output=True, text=True, check=False).stdout.split()  # fmt: skip
        return shown[shown.index("inet") + 1].split("/")[0] if "inet" in shown else ""

    def _start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise DockerUnavailable("no Docker engine answers and dockerd is not installed (`make servers`)")
        if os.geteuid() != 0:
            raise DockerUnavailable("no Docker engine answers and starting dockerd needs root")
        self._made_bridge = not _bridge_exists("docker0")
        self._home = Path(tempfile.mkdtemp(prefix="rdk-", dir="/tmp"))  # short: unix socket paths
        socket_path = self._home / "docker.sock"
        log = open(self._home / "dockerd.log", "wb")  # noqa: SIM115  (closed below, the daemon keeps its copy)
        with log:
            self._daemon = subprocess.Popen(
                [dockerd, "--host", f"unix://{socket_path}", "--data-root", str(self._home / "data"),
                 "--exec-root", str(self._home / "exec"), "--pidfile", str(self._home / "dockerd.pid"),
                 "--iptables=false", "--ip-forward=false", "--ip-masq=false", "--userland-proxy=true"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.started = True
        self.env["DOCKER_HOST"] = f"unix://{socket_path}"
        deadline = time.monotonic() + 60
        while not _answers(self.env):
            if self._daemon.poll() is not None or time.monotonic() > deadline:
                tail = (self._home / "dockerd.log").read_text(errors="replace")[-2000:]
                raise DockerUnavailable(f"dockerd did not start: {tail}")
            time.sleep(0.3)

    def _image_id(self, tag: str) -> str:
        with contextlib.suppress(RuntimeError):
            return _docker(self.env, "image", "inspect", "--format", "{{.Id}}", tag).strip()
        return ""

    def restore_images(self) -> None:
        """Remove the images made under the stand-in's and SAM's tags; give each tag back the image it
        named before (still there, untagged: nothing here prunes)."""
        for tag in sorted({*self.made_images, *self.sam_images()}):
            before = self._before.get(tag)
            if before and self._image_id(tag) == before:
                continue
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _docker(self.env, "image", "rm", "--force", tag)
            if before:
                _docker(self.env, "tag", before, tag)

    def sam_images(self) -> list[str]:
        listed = _docker(
            self.env, "image", "ls", SAM_IMAGE_REPOSITORY, "--format", "{{.Repository}}:{{.Tag}}"
        )
        return [line for line in listed.split() if line]

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self._stop_daemon()
        else:
            self.restore_images()

    def _stop_daemon(self) -> None:
        daemon, self._daemon = self._daemon, None
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=30)
        if self._home is not None:
            for mount in reversed(Path("/proc/self/mounts").read_text().splitlines()):
                point = mount.split()[1]
                if point.startswith(f"{self._home}/"):
                    subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None
        if self._made_bridge and _bridge_exists("docker0"):
            subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True, check=False)
        self._made_bridge = False


# ------------------------------------------------------------------------------ the stand-in image


class _RootFs:
    """A root filesystem written straight into a tar stream (no staging directory)."""

    def __init__(self, out: tarfile.TarFile):
        self.tar = out
        self.names: set[str] = set()

    def directory(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if not name or name in self.names:
            return
        self.directory(os.path.dirname(name))
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
        self.tar.addfile(info)
        self.names.add(name)

    def text(self, name: str, content: str, mode: int = 0o644) -> None:
        name = name.strip("/")
        self.directory(os.path.dirname(name))
        data = content.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, 0
        self.tar.addfile(info, io.BytesIO(data))
        self.names.add(name)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        if name in self.names:
            return
        self.directory(os.path.dirname(name))
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
        self.tar.addfile(info)
        self.names.add(name)

    def file(self, source: Path, name: str) -> None:
        """``source``'s content at ``name`` (symbolic links followed), its mode kept."""
        name = name.strip("/")
        if name in self.names:
            return
        self.directory(os.path.dirname(name))
        st = source.stat()
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = st.st_size, stat.S_IMODE(st.st_mode), int(st.st_mtime)
        with open(source, "rb") as handle:
            self.tar.addfile(info, handle)
        self.names.add(name)

    def tree(self, source: Path, name: str, skip: frozenset[str] = frozenset()) -> None:
        """``source`` at ``name``: directories, files and symbolic links as they are."""
        self.directory(name)
        for entry in sorted(source.iterdir()):
            target = f"{name.rstrip('/')}/{entry.name}"
            if entry.name in skip:
                continue
            if entry.is_symlink():
                self.symlink(target, os.readlink(entry))
            elif entry.is_dir():
                self.tree(entry, target)
            elif entry.is_file():
                self.file(entry, target)

    def host_path(self, path: str) -> None:
        """A file of the host at the same path, with every symbolic link on the way to it (``/lib64`` ->
        ``usr/lib64``, ``libc.so.6`` -> …) recreated, so the dynamic loader finds it where ldd did."""
        parts = Path(path).parts[1:]
        current = Path("/")
        for index, part in enumerate(parts):
            current = current / part
            if current.is_symlink():
                link = os.readlink(current)
                self.symlink(str(current), link)
                rest = Path(*parts[index + 1 :]) if index + 1 < len(parts) else None
                resolved = (current.parent / link).resolve() if not os.path.isabs(link) else Path(link)
                self.host_path(str(resolved / rest) if rest else str(resolved))
                return
        if current.is_dir():
            self.directory(str(current))
        else:
            self.file(current, str(current))


def _elf_files(roots: Iterable[Path]) -> list[Path]:
    found = []
    for root in roots:
        candidates = (
            [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        )
        for path in candidates:
            with open(path, "rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def _shared_libraries(binaries: Iterable[Path], search: Iterable[Path]) -> set[str]:
    """Every library ``ldd`` resolves for ``binaries`` (with ``search`` first, as LD_LIBRARY_PATH)."""
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(map(str, search))}
    found: set[str] = set()
    for binary in binaries:
        done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env, check=False)
        for line in done.stdout.splitlines():
            parts = line.split()
            path = parts[2] if len(parts) >= 3 and parts[1] == "=>" else parts[0] if parts else ""
            if path.startswith("/") and "not found" not in line:
                found.add(path)
    return found


@dataclass(frozen=True)
class StandinImage:
    tag: str
    image_id: str
    seconds: float
    tar_bytes: int


def build_standin_image(engine: DockerEngine, tag: str = BASE_IMAGE) -> StandinImage:
    """Build the stand-in for the Lambda python3.12 base image and tag it ``tag`` (see the module)."""
    from refinery_tools.dev.coldstart import PYTHON_VERSION, EmulationUnavailable, prepare_runtime, python312

    started = time.monotonic()
    try:
        py312 = python312()
    except EmulationUnavailable as exc:
        raise DockerUnavailable(str(exc)) from exc
    cache = Path(__file__).resolve().parents[2] / ".aws-sam"  # as the cold-start emulation's
    cache.mkdir(parents=True, exist_ok=True)
    runtime = prepare_runtime(py312, cache)  # the runtime's SDK and client (pip, cached)
    if PYTHON.removeprefix("python") != PYTHON_VERSION:
        raise DockerUnavailable(f"the emulated runtime is Python {PYTHON_VERSION}, not {PYTHON}")
    prefix = runtime.prefix
    stdlib = prefix / "lib" / PYTHON
    tools = [Path(shutil.which(tool) or f"/bin/{tool}") for tool in TOOLS]
    missing = [str(tool) for tool in tools if not tool.is_file()]
    if missing:
        raise DockerUnavailable(f"the stand-in image needs {missing} from the host")
    elves = _elf_files(
        [prefix / "bin" / PYTHON, stdlib / "lib-dynload", runtime.runtime_dir, runtime.site_packages]
    )
    libraries = _shared_libraries([*elves, *tools], [prefix / "lib"])
    cached = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    for (
        line
    ) in cached.splitlines():  # "\tlibstdc++.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libstdc++.so.6"
        soname, _, path = line.strip().partition(" => ")
        if soname.split(" ")[0] in BASE_LIBRARIES and "x86-64" in soname:
            libraries.add(path)
    buffer = tempfile.TemporaryFile()  # noqa: SIM115  (closed below)
    with buffer:
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as out:
            fs = _RootFs(out)
            for name in ("bin", "sbin", "lib", "lib64"):  # merged /usr, as the host has it
                if Path("/", name).is_symlink():
                    fs.symlink(name, os.readlink(Path("/", name)))
            for directory in ("var/task", "opt", "var/rapid", "etc", "root", "dev", "proc", "sys"):
                fs.directory(directory)
            fs.directory("tmp", 0o1777)
            fs.text("etc/passwd", PASSWD)
            fs.text("etc/group", GROUP)
            if CA_BUNDLE.is_file():
                fs.host_path(str(CA_BUNDLE))
            for library in sorted(libraries):
                if not library.startswith(str(prefix)):
                    fs.host_path(library)
            for tool in tools:
                fs.host_path(str(tool))
            # /var/lang: the interpreter, libpython, the standard library, the runtime's SDK
            fs.file(prefix / "bin" / PYTHON, f"var/lang/bin/{PYTHON}")
            fs.symlink("var/lang/bin/python3", PYTHON)
            fs.symlink("var/lang/bin/python", PYTHON)
            for library in sorted((prefix / "lib").glob("libpython3*.so*")):
                fs.file(library, f"var/lang/lib/{library.name}")
            fs.tree(stdlib, f"var/lang/lib/{PYTHON}", skip=STDLIB_LEFT_OUT)
            fs.tree(runtime.site_packages, f"var/lang/lib/{PYTHON}/site-packages")
            # /var/runtime: the runtime interface client, bootstrap.py, and the bootstrap it is started by
            fs.tree(runtime.runtime_dir, "var/runtime")
            fs.text("var/runtime/bootstrap", RUNTIME_BOOTSTRAP, 0o755)
            fs.text("lambda-entrypoint.sh", ENTRYPOINT, 0o755)
        size = buffer.tell()
        buffer.seek(0)
        changes = [f"ENV {name}={value}" for name, value in IMAGE_ENV.items()]
        changes += ["WORKDIR /var/task", 'ENTRYPOINT ["/lambda-entrypoint.sh"]']
        args = ["import", *[a for change in changes for a in ("--change", change)], "-", tag]
        image_id = _docker(engine.env, *args, stdin=buffer.read(), timeout=300).strip()
    engine.made_images.add(tag)
    return StandinImage(tag, image_id, time.monotonic() - started, size)


# ------------------------------------------------------------------------------------------ relays


class TcpRelay:
    """Listens on ``host`` (a free port) and forwards each connection to ``target`` (context manager)."""

    def __init__(self, host: str, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server((host, 0))
        self.address = self.listener.getsockname()[:2]
        self.running = True
        self.accepting = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def __enter__(self) -> TcpRelay:
        self.accepting.start()
        return self

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while self.running:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._connection, args=(client, upstream), daemon=True).start()

    def _connection(self, client: socket.socket, upstream: socket.socket) -> None:
        back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        back.start()
        self._pump(client, upstream)
        back.join()
        client.close()
        upstream.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(None)
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.accepting.join(5)
        self.listener.close()


@contextlib.contextmanager
def relays(host: str, targets: dict[str, str]) -> Iterator[dict[str, str]]:
    """For each ``name: http://127.0.0.1:port`` a relay on ``host``: ``name: http://host:port``."""
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, url in targets.items():
            address = url.removeprefix("http://").rstrip("/")
            target_host, port = address.rsplit(":", 1)
            relay = stack.enter_context(TcpRelay(host, (target_host, int(port))))
            urls[name] = relay.url
        yield urls
