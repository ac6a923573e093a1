"""Whether the Hugging Face Hub can be reached, known in milliseconds.

Offline, huggingface_hub retries each request five times with back-off: half a minute before
it says what a name lookup says at once. Models and weights from the hub ask this first.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable_reason() -> str | None:
    """Why the hub cannot be reached from here (offline mode, or its host does not resolve),
    or None when it may be reachable."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(variable) for variable in PROXY_VARIABLES):
        return None  # the proxy resolves names, not this machine
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as error:
        return f"no network: {host} does not resolve ({error.strerror or error})"
    return None


def raise_if_hub_unreachable() -> None:
    """OSError with the reason when the hub cannot be reached: callers turn a failed hub
    request, this one included, into their own message."""
    reason = hub_unreachable_reason()
    if reason is not None:
        raise OSError(reason)
