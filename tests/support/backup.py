"""A whole local backup setup: WeChat emulator + S3 server + SQLite, as one fixture."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.emulators.minapp import MinAppEmulator
from devkit.emulators.wechat import WeChatEmulator
from shared.adapters.cos.objects import CosObjectStore
from shared.bootstrap import build_context
from shared.config import Config, Destination, parse_config
from shared.domain.jobs import Run, RunStatus
from shared.ports import Dispatcher
from shared.service.context import Context
from shared.service.poll import poll
from shared.service.start import start_run
from tests.support.minapp import CLIENT_ID as MINAPP_CLIENT_ID
from tests.support.minapp import CLIENT_SECRET as MINAPP_CLIENT_SECRET

APPID = "wx0123456789abcdef"
SECRET = "app-secret-9f8e7d6c5b4a"
ENV_ID = "shop-prod-1a2b3c"
FAST_TIMING = {
    "first_check_seconds": 0.02,
    "max_check_interval_seconds": 0.1,
    "retry_base_seconds": 0.01,
    "max_attempts": 3,
}


@dataclass
class LocalBackup:
    emulator: WeChatEmulator
    destination: Destination
    state_url: str
    environ: dict[str, str] = field(default_factory=dict)

    def wechat_source(self, name: str = "shop", **overrides: Any) -> dict[str, Any]:
        return {
            "type": "wechat", "name": name, "appid": APPID, "secret": "${WECHAT_SECRET}",
            "env": ENV_ID, "collections": ["orders"], "api_base": self.emulator.base_url,
            **overrides,
        }

    def config(self, *sources: dict[str, Any], sections: dict[str, Any] | None = None,
               **timing: Any) -> Config:
        """A config for `sources`; `sections` adds top-level sections (`destination`
        entries are merged into the local destination)."""
        return parse_config(self.document(*sources, sections=sections, **timing),
                            environ=self.environ)

    def document(self, *sources: dict[str, Any], sections: dict[str, Any] | None = None,
                 **timing: Any) -> dict[str, Any]:
        """The config file's content `config` parses (a spawned process parses its own)."""
        extra = dict(sections or {})
        destination = {**self.destination.model_dump(exclude={"secret_id", "secret_key"}),
                       **extra.pop("destination", {})}
        return {
            "destination": destination,
            "state": {"url": self.state_url},
            "timing": {**FAST_TIMING, **timing},
            "sources": list(sources) or [self.wechat_source()],
            **extra,
        }

    def config_file(self, config: Config, sources: list[dict[str, Any]], path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> Path:
        """`config` as the file the CLI reads, its sources as written (secrets as
        ${VAR}), with the environment it refers to set for the test."""
        # as written: a default written out is a choice made (retention.cold_storage_class)
        document = config.model_dump(mode="json", exclude_none=True, exclude_unset=True,
                                     exclude={"sources", "notify"})
        document["sources"] = sources
        path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        for name, value in self.environ.items():
            monkeypatch.setenv(name, value)
        return path

    def context(self, config: Config, dispatcher: Dispatcher | None = None) -> Context:
        return build_context(config, environ=self.environ, dispatcher=dispatcher)

    @property
    def objects(self) -> CosObjectStore:
        return CosObjectStore(self.destination, self.environ)

    def seed(self, name: str, docs: list[dict[str, Any]]) -> None:
        self.emulator.add_collection(ENV_ID, name, docs)

    def minapp_source(self, emulator: MinAppEmulator, name: str = "app",
                      **overrides: Any) -> dict[str, Any]:
        """A MinApp source on `emulator` (the `minapp_emulator` fixture's client)."""
        self.environ["MINAPP_CLIENT_SECRET"] = MINAPP_CLIENT_SECRET
        return {
            "type": "minapp", "name": name, "client_id": MINAPP_CLIENT_ID,
            "client_secret": "${MINAPP_CLIENT_SECRET}", "tables": [1001],
            "api_base": emulator.base_url, **overrides,
        }


def drive(ctx: Context, run: Run, timeout: float = 120,
          between_polls: Callable[[], None] | None = None) -> Run:
    """Poll until the run closes, like the poller's timer would, only faster."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        poll(ctx)
        current = ctx.state.get_run(run.run_id)
        assert current is not None
        if current.status is not RunStatus.RUNNING:
            return current
        if between_polls:
            between_polls()
        time.sleep(0.01)
    raise AssertionError(f"run {run.run_id} did not finish within {timeout} s")


def backup_now(ctx: Context, key: str = "test", sources: list[str] | None = None) -> Run:
    run, _ = start_run(ctx, idempotency_key=key, trigger="test", sources=sources)
    return drive(ctx, run)


@pytest.fixture
def local(wechat_emulator: WeChatEmulator, destination: Destination, tmp_path: Path) -> Iterator[LocalBackup]:
    wechat_emulator.add_app(APPID, SECRET)
    wechat_emulator.add_env(APPID, ENV_ID)
    yield LocalBackup(
        emulator=wechat_emulator,
        destination=destination,
        state_url=f"sqlite:///{tmp_path / 'state.sqlite3'}",
        environ={"WECHAT_SECRET": SECRET},
    )
