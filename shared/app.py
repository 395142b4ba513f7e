"""Builds the pipeline's context from a config: the one place that knows every adapter."""

from __future__ import annotations

import os
from collections.abc import Mapping

from shared.config import Config, Source, Timing, WeChatSource
from shared.dispatch import Dispatcher, InProcessDispatcher
from shared.pipeline import Context, finish
from shared.providers.base import Provider, TokenCache
from shared.providers.wechat import WeChatProvider
from shared.sink import CosObjectStore
from shared.state import open_store


def build_provider(source: Source, cache: TokenCache, timing: Timing) -> Provider:
    if isinstance(source, WeChatSource):
        return WeChatProvider(source, cache, timing)
    raise TypeError(f"no provider for source type {type(source).__name__}")


def build_context(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    dispatcher: Dispatcher | None = None,
) -> Context:
    store = open_store(config.state.url)
    sink = CosObjectStore(config.destination, environ if environ is not None else os.environ)
    providers: dict[str, Provider] = {}

    def provider_for(name: str) -> Provider:
        if name not in providers:
            providers[name] = build_provider(config.source(name), store, config.timing)
        return providers[name]

    # The in-process dispatcher closes over `context`, which exists by the time it runs.
    context = Context(config=config, store=store, sink=sink, provider_for=provider_for,
                      dispatcher=dispatcher or InProcessDispatcher(lambda job_id: finish(context, job_id)))
    return context
