"""The one place HTTP clients are made, so timeouts and headers are the same everywhere."""

from __future__ import annotations

import httpx

USER_AGENT = "baas-backup/0.1"


def make_client(*, follow_redirects: bool = False) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(60.0, connect=10.0),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=follow_redirects,
    )


def describe_transport_error(exc: httpx.TransportError) -> str:
    """The error's kind without its URL (URLs may carry tokens or signatures)."""
    return f"{type(exc).__name__}"
