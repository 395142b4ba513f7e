"""Builds the pipeline's context from a config: the one place that knows every adapter."""

from __future__ import annotations

import os
from collections.abc import Mapping

from shared.config import Config, Source, Timing
from shared.dispatch import Dispatcher, dispatcher_for
from shared.pipeline import Context, finish
from shared.providers.base import Provider, TokenCache
from shared.sink import CosObjectStore
from shared.sources.minapp import MinAppSource
from shared.sources.onedb import OneDBSource
from shared.sources.wechat import WeChatSource
from shared.state import open_store


def build_provider(source: Source, cache: TokenCache, timing: Timing) -> Provider:
    # Each platform's module is imported only when a source of that type is configured,
    # so a cold start loads just what the config uses.
    if isinstance(source, WeChatSource):
        from shared.providers.wechat import WeChatProvider

        return WeChatProvider(source, cache, timing)
    if isinstance(source, MinAppSource):
        from shared.providers.minapp import MinAppProvider

        return MinAppProvider(source, cache, timing)
    if isinstance(source, OneDBSource):
        from shared.providers.onedb import OneDBProvider

        return OneDBProvider(source, timing)  # signs its own short-lived tokens: no cache
    raise TypeError(f"no provider for source type {type(source).__name__}")


def build_context(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    dispatcher: Dispatcher | None = None,
) -> Context:
    store = open_store(config.state, config.destination, environ=environ)
    sink = CosObjectStore(config.destination, environ if environ is not None else os.environ)
    providers: dict[str, Provider] = {}

    def provider_for(name: str) -> Provider:
        if name not in providers:
            providers[name] = build_provider(config.source(name), store, config.timing)
        return providers[name]

    # The in-process dispatcher closes over `context`, which exists by the time it runs;
    # config.dispatch picks it (local runs) or SCF's async Invoke of the finisher (hosted).
    context = Context(config=config, store=store, sink=sink, provider_for=provider_for,
                      dispatcher=dispatcher or dispatcher_for(
                          config, environ if environ is not None else os.environ,
                          lambda job_id: finish(context, job_id)))
    return context
