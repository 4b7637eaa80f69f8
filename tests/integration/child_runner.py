"""Run a real handler in a fresh Python process, as a new Lambda container would, and keep all it prints.

The child imports the handler module (so the Powertools logger, metrics and, when on, the tracer are
built from the environment it is given), invokes it with a Lambda-like context, prints the result as
JSON on stdout or the traceback on stderr, and exits 0 or 1. With ``CHILD_ROOT_LEVEL`` it first
configures the root logger at that level on stderr, as the Lambda runtime does with an application
log level (so library loggers print too). ``CHILD_UNPROTECT`` (comma-separated logger names) resets
those loggers' levels after import: the control that shows the secret scan catches a real leak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHILD = """
import json, logging, os, sys
if os.environ.get("CHILD_ROOT_LEVEL"):
    logging.basicConfig(level=os.environ["CHILD_ROOT_LEVEL"], stream=sys.stderr)
from refinery_tools.lambda_context import LocalContext
which, path = sys.argv[1], sys.argv[2]
with open(path) as handle:
    event = json.load(handle)
if which == "enricher":
    from refinery.handlers.enricher import handler
else:
    from refinery.handlers.metadata_refresh import handler
for name in filter(None, os.environ.get("CHILD_UNPROTECT", "").split(",")):
    logging.getLogger(name).setLevel(logging.NOTSET)
timeout = float(os.environ.get("CHILD_TIMEOUT", "20"))
try:
    result = handler(event, LocalContext(function_name="refinery-" + which, timeout_seconds=timeout))
except Exception:
    import traceback
    traceback.print_exc()
    sys.exit(1)
print(json.dumps(result, default=str))
"""

#: Settings of the parent process that must not leak into a child's configuration.
CLEARED_PREFIXES = (
    "INFLUX_",
    "CF_",
    "METADATA_",
    "QUARANTINE_",
    "LIVE_",
    "SNAPSHOT_",
    "NEGATIVE_",
    "POWERTOOLS_",
    "AWS_",
    "REFINERY_",
    "FLUSH_",
    "PROM_",
    "_X_AMZN",
    "LAMBDA_",
    "CHILD_",
)


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED_PREFIXES)}
    env |= {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env |= dict(extra)
    return env


def run_handler(
    which: str, event: dict[str, Any], env: Mapping[str, str], workdir: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Invoke ``which`` (``enricher`` or ``refresh``) with ``event`` in a child; never raises on failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"event-{which}.json"
    path.write_text(json.dumps(event))
    return subprocess.run(
        [sys.executable, "-c", CHILD, which, str(path)],
        env=child_env(env),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
