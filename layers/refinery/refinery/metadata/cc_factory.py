"""The Cloud Controller client both functions build from their configuration (one place for its settings).

The client module (and ``requests``) is imported on the first call, not when a handler is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from refinery.config import CloudControllerConfig
    from refinery.metadata.cc_client import CloudControllerClient


def client_for(cf: CloudControllerConfig) -> CloudControllerClient:
    """The CC API v3 client (requests only; its first call discovers UAA and gets a token)."""
    from refinery import __version__
    from refinery.metadata.cc_client import CloudControllerClient

    return CloudControllerClient(
        cf.api_url,
        cf.client_id,
        cf.client_secret,
        uaa_url=cf.uaa_url,
        timeout=(5.0, cf.timeout),
        verify_tls=cf.verify_tls,
        ca_bundle=cf.ca_bundle,
        user_agent=f"refinery/{__version__}",
        label_keys=cf.label_keys,
    )
