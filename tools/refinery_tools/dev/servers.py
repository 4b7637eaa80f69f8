"""Real servers on 127.0.0.1 for tests, demos and benchmarks.

Each manager binds only the loopback interface on a free port, keeps its data and its log in a
temporary directory, polls for readiness for a bounded time and stops its process by PID::

    with InfluxDB1Server() as influx:
        influx.create_database("demo")
        influx.write("demo", "cpu,host=a value=1 1700000000000000000")
        influx.points("demo", "cpu")

The binaries come from Debian packages (``scripts/install-test-servers.sh``); when one is missing
:class:`ServerUnavailable` says which and how to install it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import requests

__all__ = [
    "InfluxDB1Server",
    "MotoS3Server",
    "ServerUnavailable",
    "VictoriaMetricsServer",
    "free_port",
]

HOST = "127.0.0.1"
_LOG_TAIL_CHARS = 4000


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServerUnavailable(RuntimeError):
    """The server cannot run on this machine (its binary or package is missing)."""


def _log_tail(path: Path | None) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace")
    return text[-_LOG_TAIL_CHARS:] or "(empty log)"


class _Server:
    """Start/stop plumbing shared by the managers: temp dir, port, readiness, context manager."""

    name: ClassVar[str] = "server"
    ready_path: ClassVar[str] = "/"
    ready_status: ClassVar[int] = 200

    def __init__(self, *, port: int | None = None, startup_timeout: float = 20.0, stop_timeout: float = 10.0):
        self._requested_port = port
        self.port: int | None = port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._session = requests.Session()

    # -- public API -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.name} has not been started")
        return f"http://{HOST}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """The temporary directory that holds the server's data and log (exists while started)."""
        if self._tmp is None:
            raise RuntimeError(f"{self.name} has not been started")
        return Path(self._tmp.name)

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def log_tail(self) -> str:
        return _log_tail(self.log_path if self._tmp is not None else None)

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def start(self) -> Self:
        """Start the server (no-op when running); raise :class:`ServerUnavailable` if it cannot run here."""
        if self.running:
            return self
        self._check_available()
        restarting = self._tmp is not None
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"refinery-{self.name}-")
        if self.port is None:
            self.port = free_port()
        _LIVE.add(self)
        try:
            self._launch()
            self._wait_ready()
        except BaseException:
            self.stop(keep_data=restarting)  # a failed restart keeps the data for another try
            raise
        return self

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server; idempotent. ``keep_data=True`` keeps the port and the data for :meth:`start`."""
        try:
            self._halt()
        finally:
            if not keep_data:
                if self._tmp is not None:
                    self._tmp.cleanup()
                    self._tmp = None
                self.port = self._requested_port
                _LIVE.discard(self)

    def restart(self) -> Self:
        """Stop, then start again on the same port with the same data."""
        self.stop(keep_data=True)
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {state} port={self.port}>"

    # -- hooks ------------------------------------------------------------------------------------
    def _check_available(self) -> None:
        raise NotImplementedError

    def _launch(self) -> None:
        raise NotImplementedError

    def _halt(self) -> None:
        raise NotImplementedError

    def _died(self) -> bool:
        return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._died():
                raise RuntimeError(f"{self.name} exited during startup; log tail:\n{self.log_tail()}")
            try:
                resp = self._session.get(self.url + self.ready_path, timeout=1.0)
                if resp.status_code == self.ready_status:
                    return
                last_error = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                last_error = f"{type(exc).__name__}"
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} not ready at {self.url}{self.ready_path} after {self.startup_timeout:.0f} s "
            f"({last_error}); log tail:\n{self.log_tail()}"
        )


class _ProcessServer(_Server):
    """A server that runs as a child process; stop = SIGTERM, then SIGKILL after ``stop_timeout``."""

    binary: ClassVar[str] = ""
    apt_package: ClassVar[str] = ""

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ):
        super().__init__(port=port, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self._binary_override = binary
        self._exe: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process is not None else None

    def kill(self) -> None:
        """Crash the server with SIGKILL (no graceful shutdown); the data and port stay for :meth:`start`."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self._halt()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections are accepted by the kernel but never answered."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def _check_available(self) -> None:
        name = self._binary_override or self.binary
        exe = shutil.which(name)
        if exe is None:
            raise ServerUnavailable(
                f"{self.name}: binary {name!r} not found on PATH; install the Debian package "
                f"{self.apt_package!r} (run scripts/install-test-servers.sh, or "
                f"`apt-get install -y {self.apt_package}`)"
            )
        self._exe = exe

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str] | None:
        """The server's environment (None: this process's)."""
        return None

    def _launch(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=self._environment(),
            )

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def _halt(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=self.stop_timeout)


class InfluxDB1Server(_ProcessServer):
    """InfluxDB 1.x (Debian ``influxdb`` 1.6.7): v1 ``/write`` and InfluxQL ``/query``; no ``/api/v2``."""

    name = "influxdb1"
    binary = "influxd"
    apt_package = "influxdb"
    ready_path = "/ping"
    ready_status = 204

    def __init__(
        self,
        *,
        port: int | None = None,
        rpc_port: int | None = None,
        binary: str | None = None,
        max_body_size: int = 25_000_000,
        startup_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ):
        super().__init__(port=port, binary=binary, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self._requested_rpc_port = rpc_port
        self.rpc_port = rpc_port
        self.max_body_size = max_body_size

    def stop(self, *, keep_data: bool = False) -> None:
        super().stop(keep_data=keep_data)
        if not keep_data:
            self.rpc_port = self._requested_rpc_port

    def _config(self) -> str:
        d = self.data_dir
        return f"""\
reporting-enabled = false
bind-address = "{HOST}:{self.rpc_port}"

[meta]
  dir = "{d / "meta"}"
  logging-enabled = false

[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  query-log-enabled = false
  trace-logging-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{HOST}:{self.port}"
  log-enabled = false
  write-tracing = false
  pprof-enabled = false
  max-body-size = {self.max_body_size}

[logging]
  level = "warn"
  suppress-logo = true

[continuous_queries]
  log-enabled = false
"""

    def _command(self) -> list[str]:
        if self.rpc_port is None:
            self.rpc_port = free_port()
        conf = self.data_dir / "influxdb.conf"
        conf.write_text(self._config())
        assert self._exe is not None
        return [self._exe, "-config", str(conf)]

    # -- helpers ----------------------------------------------------------------------------------
    def query(self, db: str | None, q: str, *, epoch: str = "ns", timeout: float = 30.0) -> dict[str, Any]:
        """Run InfluxQL via ``POST /query``; raise ``RuntimeError`` on an HTTP or statement error."""
        params = {"q": q, "epoch": epoch}
        if db:
            params["db"] = db
        resp = self._session.post(f"{self.url}/query", data=params, timeout=timeout)
        try:
            body: dict[str, Any] = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or "error" in body:
            raise RuntimeError(f"InfluxDB query {q!r} failed: HTTP {resp.status_code}: {resp.text[:500]}")
        for result in body.get("results", []):
            if "error" in result:
                raise RuntimeError(f"InfluxDB query {q!r} failed: {result['error']}")
        return body

    def create_database(self, name: str) -> None:
        self.query(None, f"CREATE DATABASE {quote_ident(name)}")

    def drop_database(self, name: str) -> None:
        self.query(None, f"DROP DATABASE {quote_ident(name)}")

    def write(
        self,
        db: str,
        lines: str | bytes,
        *,
        precision: str = "ns",
        rp: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        """``POST /write`` line protocol; raise ``RuntimeError`` unless the answer is 204."""
        params = {"db": db, "precision": precision}
        if rp:
            params["rp"] = rp
        body = lines.encode() if isinstance(lines, str) else lines
        resp = self._session.post(f"{self.url}/write", params=params, data=body, timeout=timeout)
        if resp.status_code != 204:
            raise RuntimeError(f"InfluxDB write failed: HTTP {resp.status_code}: {resp.text[:500]}")

    def points(self, db: str, measurement: str, *, rp: str | None = None) -> list[dict[str, Any]]:
        """All points of ``measurement`` as ``{"measurement", "tags", "fields", "time"}`` (time in ns).

        Tags with an empty value and fields a point does not carry are left out, so the result can be
        compared with what was written. Sorted by time, then tags.
        """
        source = quote_ident(measurement) if rp is None else f"{quote_ident(rp)}.{quote_ident(measurement)}"
        body = self.query(db, f"SELECT * FROM {source} GROUP BY *")
        out: list[dict[str, Any]] = []
        for result in body.get("results", []):
            for series in result.get("series", []):
                tags = {k: v for k, v in (series.get("tags") or {}).items() if v != ""}
                columns = series["columns"]
                for row in series["values"]:
                    values = dict(zip(columns, row, strict=True))
                    ts = values.pop("time")
                    fields = {k: v for k, v in values.items() if v is not None}
                    out.append({"measurement": series["name"], "tags": tags, "fields": fields, "time": ts})
        out.sort(key=lambda p: (p["time"], sorted(p["tags"].items())))
        return out

    def count(self, db: str, measurement: str, *, rp: str | None = None) -> int:
        """Number of points: the largest per-field ``COUNT`` (exact when every point has a common field)."""
        source = quote_ident(measurement) if rp is None else f"{quote_ident(rp)}.{quote_ident(measurement)}"
        body = self.query(db, f"SELECT COUNT(*) FROM {source}")
        best = 0
        for result in body.get("results", []):
            for series in result.get("series", []):
                for row in series["values"]:
                    best = max([best, *(v for v in row[1:] if isinstance(v, int))])
        return best


def quote_ident(name: str) -> str:
    """Quote an InfluxQL identifier (database, retention policy, measurement, tag key)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class VictoriaMetricsServer(_ProcessServer):
    """VictoriaMetrics single node: accepts InfluxDB ``/api/v2/write`` (influxdb-client) and ``/write``."""

    name = "victoriametrics"
    binary = "victoria-metrics"
    apt_package = "victoria-metrics"
    ready_path = "/health"
    ready_status = 200

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        extra_args: list[str] | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ):
        super().__init__(port=port, binary=binary, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self.extra_args = list(extra_args or [])

    def _command(self) -> list[str]:
        assert self._exe is not None
        return [
            self._exe,
            f"-httpListenAddr={HOST}:{self.port}",
            f"-storageDataPath={self.data_dir / 'data'}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-loggerLevel=WARN",
            *self.extra_args,
        ]

    def write(self, lines: str | bytes, *, precision: str = "ns", timeout: float = 30.0) -> None:
        """``POST /api/v2/write`` line protocol (bucket and org are ignored by VictoriaMetrics)."""
        body = lines.encode() if isinstance(lines, str) else lines
        resp = self._session.post(
            f"{self.url}/api/v2/write",
            params={"bucket": "b", "org": "o", "precision": precision},
            data=body,
            timeout=timeout,
        )
        if resp.status_code != 204:
            raise RuntimeError(f"VictoriaMetrics write failed: HTTP {resp.status_code}: {resp.text[:500]}")

    def force_flush(self) -> None:
        """Make recently written samples visible to queries and export right away."""
        resp = self._session.get(f"{self.url}/internal/force_flush", timeout=30.0)
        resp.raise_for_status()

    def export(
        self, match: str = '{__name__=~".+"}', *, min_samples: int = 0, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """``/api/v1/export`` as a list of ``{"metric": {labels}, "values": [...], "timestamps": [ms]}``.

        With ``min_samples`` it calls :meth:`force_flush` and polls until at least that many samples
        match, or ``timeout`` seconds pass (then it returns what it found): series with recent
        timestamps take up to about 1 s to become visible even after a force flush.
        """
        deadline = time.monotonic() + timeout
        while True:
            if min_samples:
                self.force_flush()
            resp = self._session.get(f"{self.url}/api/v1/export", params={"match[]": match}, timeout=60.0)
            if resp.status_code != 200:
                raise RuntimeError(
                    f"VictoriaMetrics export failed: HTTP {resp.status_code}: {resp.text[:500]}"
                )
            # One JSON object per "\n"-terminated line; not splitlines(): labels may hold U+2028 etc.
            series = [json.loads(line) for line in resp.text.split("\n") if line.strip()]
            if sum(len(s["values"]) for s in series) >= min_samples or time.monotonic() >= deadline:
                return series
            time.sleep(0.05)


class MotoS3Server(_Server):
    """moto's S3 (and other AWS APIs) over real HTTP, in a thread of this process.

    Point boto3 at it with ``AWS_ENDPOINT_URL_S3=<url>``. moto keeps its state in module globals, so
    all instances in one process share it; :meth:`reset` clears it.
    """

    name = "moto"
    ready_path = "/moto-api/"
    ready_status = 200

    def __init__(self, *, port: int | None = None, startup_timeout: float = 20.0, stop_timeout: float = 10.0):
        super().__init__(port=port, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self._server: Any = None
        self._log_handler: logging.Handler | None = None
        self._saved_propagate = True

    @property
    def running(self) -> bool:
        return self._server is not None

    def reset(self) -> None:
        """Forget every bucket and object (``POST /moto-api/reset``)."""
        self._session.post(f"{self.url}/moto-api/reset", timeout=10.0).raise_for_status()

    def _check_available(self) -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise ServerUnavailable(
                f"moto: cannot import moto.server ({exc}); install the Python package 'moto[server]' "
                "(pip install 'moto[server]')"
            ) from exc

    def _launch(self) -> None:
        from moto.server import ThreadedMotoServer

        # werkzeug logs each request through the "werkzeug" logger: send it to our log file instead.
        logger = logging.getLogger("werkzeug")
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        self._saved_propagate, logger.propagate = logger.propagate, False
        self._log_handler = handler
        assert self.port is not None
        server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)
        server.start()
        self._server = server

    def _halt(self) -> None:
        server, self._server = self._server, None
        try:
            if server is not None:
                stopper = threading.Thread(target=server.stop, daemon=True)
                stopper.start()
                stopper.join(self.stop_timeout)
        finally:
            handler, self._log_handler = self._log_handler, None
            if handler is not None:
                logger = logging.getLogger("werkzeug")
                logger.removeHandler(handler)
                logger.propagate = self._saved_propagate
                handler.close()


# Servers still running when the interpreter exits are stopped, so no child process outlives a run.
_LIVE: set[_Server] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):  # best effort at exit
            server.stop()
