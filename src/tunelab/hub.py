"""Offline means offline: whether the Hugging Face hub can be reached, found out once and fast.

Without a network the hub clients retry for tens of seconds before they fail. `ensure_offline_if_unreachable`
is called before the first hub lookup of a command: when `HF_HUB_OFFLINE` is not set, one TCP
connect to the hub (1 s at most) decides; if it fails, the clients are switched to offline mode,
so a name that is not in the local cache fails at once with one clear line.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

_TRUE = {"1", "true", "yes", "on"}


def offline_by_setting() -> bool:
    return (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").lower() in _TRUE


@functools.cache
def hub_reachable(timeout_s: float = 1.0) -> bool:
    """Whether the hub's host accepts a TCP connection (cached for the process)."""
    if offline_by_setting():
        return False
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def ensure_offline_if_unreachable() -> bool:
    """Switch the hub clients to offline mode when the hub cannot be reached; True when offline."""
    if hub_reachable():
        return False
    from tunelab.compat import set_hub_offline

    set_hub_offline()
    return True


def unreachable_message(what: str, name: str) -> str:
    """One line for a hub name that is neither in the local cache nor reachable."""
    return (
        f"{what}: {name!r} is not in the local hub cache and the hub is unreachable (offline); "
        "use a local folder, or run once with network access"
    )
