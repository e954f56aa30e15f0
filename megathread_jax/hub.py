"""Hugging Face hub look-ups that stay quiet offline: the local cache first, then the hub only if
it answers, so an offline machine gets one clear error instead of the hub client's retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Loaded = TypeVar("Loaded")
_PROBE_TIMEOUT_S = 10


class HubUnreachableError(OSError):
    """What was asked for is not in the local cache, and the hub does not answer."""


def hub_answers() -> bool:
    """Whether one request to the hub gets any answer (through the client's own session and proxies)."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=_PROBE_TIMEOUT_S)
    except Exception:  # the client's connection errors differ between its versions
        return False
    return True


def from_pretrained(load: Callable[..., Loaded], name: str) -> Loaded:
    """`load(name)` for a transformers `from_pretrained`: from the local cache when it is there,
    else from the hub when it answers; `HubUnreachableError` otherwise."""
    try:
        return load(name, local_files_only=True)
    except OSError:
        pass
    if not hub_answers():
        raise HubUnreachableError(f"{name!r} is not in the Hugging Face cache and the hub cannot be reached")
    return load(name)
