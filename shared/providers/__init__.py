"""One module per platform, each behind the `Provider` protocol."""

from shared.providers.base import Progress, Provider, TokenCache

__all__ = ["Progress", "Provider", "TokenCache"]
