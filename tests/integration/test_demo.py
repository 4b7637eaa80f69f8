"""`make demo` / `refinery demo`: the main job on embedded defaults, leaving nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_refreshes_metadata_and_prints_enriched_points():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFLUX_", "METADATA_", "CF_", "AWS_"))}
    done = subprocess.run(
        [sys.executable, "-m", "refinery.cli", "demo"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "metadata refresh: 25 apps, 7 spaces, 4 orgs in 1 page(s)" in out
    points = [line for line in out.splitlines() if line.startswith(("http_request,", "log,", "instance,"))]
    assert len(points) == 4
    assert all(",app=myapp," in p and ",org=acme," in p and ",space=dev," in p for p in points)
    assert "records in   6" in out and "dropped      2" in out
    assert "refinery-secret" not in out + done.stderr
