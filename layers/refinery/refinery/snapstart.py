"""Lambda SnapStart: what runs before the snapshot, so that a restored environment starts warm.

With SnapStart (``python3.12`` and later), Lambda runs INIT once per published version, snapshots the
execution environment, and starts new environments from that snapshot. The runtime then calls the
hooks registered through ``snapshot_restore_py`` (which the managed runtime includes): before the
snapshot, and after each restore. Outside SnapStart (``AWS_LAMBDA_INITIALIZATION_TYPE`` other than
``snap-start``) nothing is registered.

Before the snapshot: the modules the first invocation imports, and what the AWS clients need
(:func:`refinery.aws.warm`). With SnapStart, Lambda gives the function its credentials through the
container credentials endpoint (``AWS_CONTAINER_CREDENTIALS_FULL_URI``), not ``AWS_ACCESS_KEY_ID`` and
friends, so refinery's own signed requests (:mod:`refinery.awsclient`) cannot serve and botocore's
clients do: their botocore data (endpoints, service models) is loaded before the snapshot. Nothing
that a restored environment must not share or reuse is made before it: no credentials are resolved,
no connection is opened, no secret is read and no metadata snapshot is loaded (each environment reads
its own, fresh, at its first invocation). So after the restore there is nothing to refresh, and no
after-restore hook.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

SNAP_START = "snap-start"


def enabled() -> bool:
    return os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == SNAP_START


def prepare(modules: Sequence[str], services: Sequence[str]) -> None:
    """Register the before-snapshot hook: import ``modules``, warm the clients of ``services``."""
    if not enabled():
        return
    from snapshot_restore_py import register_before_snapshot

    def before_snapshot() -> None:
        from . import aws

        for module in modules:
            importlib.import_module(module)
        aws.warm(*services)

    register_before_snapshot(before_snapshot)
