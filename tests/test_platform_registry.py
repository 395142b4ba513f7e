"""A fourth platform is one folder plus one registry line: the toy platform from the
test tree is registered through the public registry and backed up end to end (config
file → trigger → poller → finisher → COS on moto), in both kinds."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from shared.config import ConfigError, config_json_schema, parse_config
from shared.domain.jobs import JobStatus, RunStatus
from shared.platforms import registry
from tests.support.backup import LocalBackup, backup_now
from tests.support.toy_platform import ToyData

ROWS = [{"_id": f"r{i}", "n": i, "名": "数据"} for i in range(10)]


@pytest.fixture
def toy() -> Iterator[None]:
    for kind, factory in (("export", "ToyExports"), ("paged", "ToyPages")):
        registry.register(registry.PlatformEntry(
            f"toy-{kind}", "tests.support.toy_platform:ToySource",
            f"tests.support.toy_platform:{factory}", kind))  # type: ignore[arg-type]
    ToyData.tables = {"things": list(ROWS), "empty": []}
    yield
    registry.unregister("toy-export")
    registry.unregister("toy-paged")


@pytest.mark.parametrize("kind", ["export", "paged"])
def test_a_registered_platform_is_backed_up_end_to_end(
        toy: None, local: LocalBackup, kind: str) -> None:
    config = local.config({"type": f"toy-{kind}", "name": "toy", "collections": ["things", "empty"]})
    ctx = local.context(config)

    run = backup_now(ctx)

    assert run.status is RunStatus.SUCCEEDED
    jobs = {j.collection: j for j in ctx.state.list_jobs(run.run_id)}
    assert {c: j.status for c, j in jobs.items()} == {"things": JobStatus.DONE, "empty": JobStatus.DONE}
    things = jobs["things"].result
    assert things is not None and things.records == len(ROWS)
    stored = [json.loads(line) for line in local.objects.read(things.key).splitlines()]
    assert stored == ROWS
    manifest = json.loads(local.objects.read(things.manifest_key))
    assert manifest["platform"] == f"toy-{kind}" and manifest["records"] == len(ROWS)
    assert manifest["collection"] == "things"


def test_the_config_knows_a_registered_platform_and_forgets_it_again(toy: None) -> None:
    schema = config_json_schema()
    assert "toy-export" in json.dumps(schema["properties"]["sources"])
    registry.unregister("toy-export")
    registry.unregister("toy-paged")
    with pytest.raises(ConfigError, match="type must be one of"):
        parse_config({"destination": {"bucket": "b-1250000000", "region": "ap-guangzhou"},
                      "sources": [{"type": "toy-export", "name": "t", "collections": ["a"]}]})
