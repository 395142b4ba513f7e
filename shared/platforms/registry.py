"""The platform registry: the config's `type` → the platform's settings model, the
factory that builds its client (imported only when a source of that type is used, which
keeps cold starts low) and its kind (how its data is copied). A new platform is one
folder under shared/platforms/ plus one `register` line below."""

from __future__ import annotations

import builtins
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from shared.config.fields import SourceSettings
    from shared.ports import Kind, Platform, PlatformServices

Factory = Callable[["SourceSettings", "PlatformServices"], "Platform"]


@dataclass(frozen=True)
class PlatformEntry:
    type: str  # the config's `type`
    settings: str | builtins.type[SourceSettings]  # "module:Class", or the class
    factory: str | Factory  # "module:callable", or the callable: (settings, services) -> Platform
    kind: Kind

    def settings_model(self) -> builtins.type[SourceSettings]:
        return cast("builtins.type[SourceSettings]", _load(self.settings))

    def build(self, settings: SourceSettings, services: PlatformServices) -> Platform:
        return cast(Factory, _load(self.factory))(settings, services)

    def load(self) -> None:
        """Import the factory's module, ahead of a `build` (a cold start's warm-up)."""
        _load(self.factory)


_ENTRIES: dict[str, PlatformEntry] = {}
_changes = [0]  # bumped by every registration, so the config model is rebuilt


def register(entry: PlatformEntry) -> None:
    _ENTRIES[entry.type] = entry
    _changes[0] += 1


def unregister(type_: str) -> None:
    _ENTRIES.pop(type_, None)
    _changes[0] += 1


def entries() -> list[PlatformEntry]:
    return list(_ENTRIES.values())


def entry(type_: str) -> PlatformEntry:
    return _ENTRIES[type_]


def version() -> int:
    return _changes[0]


def _load(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


# The platforms that ship with the product: one line each.
register(PlatformEntry("wechat", "shared.platforms.wechat.settings:WeChatSource",
                       "shared.platforms.wechat.platform:WeChatClient", "export"))
register(PlatformEntry("onedb", "shared.platforms.onedb.settings:OneDBSource",
                       "shared.platforms.onedb.platform:OneDBClient", "paged"))
register(PlatformEntry("wechat-platform", "shared.platforms.wechat.settings:WeChatPlatformSource",
                       "shared.platforms.wechat.platform:WeChatClient", "export"))
register(PlatformEntry("minapp", "shared.platforms.minapp.settings:MinAppSource",
                       "shared.platforms.minapp.platform:MinAppClient", "export"))
