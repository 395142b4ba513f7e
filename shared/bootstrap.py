"""The composition root: config → context (state store, object store, platforms,
dispatcher, notifier). The one place that knows every adapter."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from shared.adapters.cos.client import cos_client
from shared.adapters.cos.objects import CosObjectStore
from shared.adapters.dispatch import dispatcher_for
from shared.adapters.state import open_store
from shared.adapters.token_memo import MemoTokenCache
from shared.adapters.webhooks import WebhookNotifier
from shared.config import Config
from shared.platforms import registry
from shared.ports import Dispatcher, Kind, Platform, PlatformServices
from shared.service.context import Context

if TYPE_CHECKING:
    from shared.service.doctor import Subject

log = logging.getLogger(__name__)


class ConfiguredPlatforms:
    """The `Platforms` port: each source's client, built on first use from the registry
    (so a cold start imports only the platforms the config uses)."""

    def __init__(self, config: Config, services: PlatformServices) -> None:
        self._config = config
        self._services = services
        self._built: dict[str, Platform] = {}
        self._lock = threading.Lock()  # the poller advances jobs from several threads

    def get(self, source: str) -> Platform:
        with self._lock:
            if source not in self._built:
                settings = self._config.source(source)
                self._built[source] = registry.entry(settings.type).build(settings, self._services)
            return self._built[source]

    def kind(self, source: str) -> Kind:
        return registry.entry(self._config.source(source).type).kind


def _warm_platforms(config: Config) -> None:
    """Load the HTTP client stack, the CA bundle and the configured platforms' client
    modules (about 150 ms of a cold finisher) while the state store's first round trips
    are awaited: the copy needs them right after its claim. What this loads (httpx, the
    modules under it, shared.platforms.<type> and what they import) shares with what the
    main thread loads meanwhile only modules that import neither side back: one thread
    may wait for the other's import, never both for each other. A failure costs nothing:
    the copy builds its client itself and reports any error there."""
    try:
        from shared.adapters.tls import tls_context

        tls_context()
        for type_ in sorted({source.type for source in config.sources}):
            registry.entry(type_).load()
    except Exception:
        log.debug("warming the platforms up failed; the copy builds them itself", exc_info=True)


def build_context(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    dispatcher: Dispatcher | None = None,
    stop_by: float | None = None,
    warm_platforms: bool = False,
) -> Context:
    """With `warm_platforms`, the platforms' HTTP client stack and modules are loaded on a
    side thread while the state store opens (for the finisher, which needs them right
    after its claim)."""
    env = environ if environ is not None else os.environ
    # One COS client for the state and the backups, its pool as wide as the most
    # requests sent at once: a poller's workers, or a copy's parts beside its lease and
    # its side reads.
    bucket = cos_client(config.destination, env, connections=max(
        config.timing.poll_concurrency, config.destination.part_concurrency + 2))
    if warm_platforms:  # after the COS SDK's import: the store's round trips are the wait
        threading.Thread(target=_warm_platforms, args=(config,), name="warm-platforms",
                         daemon=True).start()
    state = open_store(config.state, config.destination, environ=env, client=bucket)
    services = PlatformServices(tokens=MemoTokenCache(state),
                                retry_base_seconds=config.timing.retry_base_seconds)
    # The in-process dispatcher closes over `context`, which exists by the time it runs;
    # config.dispatch picks it (local runs) or SCF's async Invoke of the finisher (hosted).
    def finish_here(job_id: str) -> str:
        from shared.service.finish import finish  # only a local run finishes in-process

        return finish(context, job_id)

    context = Context(
        config=config, state=state, objects=CosObjectStore(config.destination, env, client=bucket),
        platforms=ConfiguredPlatforms(config, services),
        dispatcher=dispatcher or dispatcher_for(config, env, finish_here),
        notifier=WebhookNotifier(config.notify, config.timing.retry_base_seconds),
        stop_by=stop_by)
    return context


def doctor_subject(config: Config, environ: Mapping[str, str] | None = None) -> Subject:
    """What `doctor` examines: the real bucket, state, finisher and webhooks, and each
    source's client with a token cache of its own (so every token is fetched for real)."""
    from shared.adapters.doctor import CloudDeployment, FreshTokens
    from shared.service.doctor import Subject

    env = environ if environ is not None else os.environ
    services = PlatformServices(tokens=FreshTokens(), retry_base_seconds=config.timing.retry_base_seconds)
    return Subject(config=config, deployment=CloudDeployment(config, env),
                   platforms=ConfiguredPlatforms(config, services))
