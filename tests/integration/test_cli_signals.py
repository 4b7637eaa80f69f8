"""Every command stopped by a signal exits 128 + its number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM.

`consume` and `produce` stop gracefully on the first signal (the in-flight batch finishes; what was
sent is flushed) and say so; the exit code is the same either way, so a script can tell a run that
was stopped from one that finished.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from refinery_tools.dev.tansu import TansuServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = str(ROOT / "events" / "sample-snapshot.json.gz")
CLEAN = {
    k: v for k, v in os.environ.items() if not k.startswith(("INFLUX_", "METADATA_", "CF_", "QUARANTINE"))
}


def run_until(args: list[str], ready: str, sig: int, tmp_path: Path) -> tuple[int, str]:
    """Start ``refinery ARGS``, send ``sig`` once stderr shows ``ready``; (exit code, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "refinery_tools.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**CLEAN, "METADATA_FILE": SNAPSHOT, "QUARANTINE_DIR": str(tmp_path / "q")},
        cwd=ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while not any(ready in line for line in seen):
            assert time.monotonic() < deadline, "never ready:\n" + "".join(seen)
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                assert process.poll() is None, "exited early:\n" + "".join(seen)
        process.send_signal(sig)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    while not lines.empty():
        seen.append(lines.get())
    return code, "".join(seen)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_consume_and_produce_exit_128_plus_the_signal(
    tansu: TansuServer, tmp_path: Path, sig: int, code: int
) -> None:
    topic = f"sig-{uuid.uuid4().hex[:8]}"
    tansu.create_topic(topic, 1)
    consume = ["consume", "--bootstrap", tansu.bootstrap, "--topic", topic, "--group", f"g-{topic}"]
    got, err = run_until([*consume, "--session-timeout", "6"], "assigned", sig, tmp_path)
    assert got == code, err
    assert "stopping after the in-flight batch" in err and "refinery consume: stopped on request" in err

    produce = ["produce", "--bootstrap", tansu.bootstrap, "--topic", topic, "--samples", "--count", "0"]
    got, err = run_until(
        [*produce, "--rate", "20", "--progress-interval", "0.2"], "refinery produce:", sig, tmp_path
    )
    assert got == code, err
    assert "interrupted after" in err
