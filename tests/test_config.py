"""Every invalid config gets an error naming the field, the value and the fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from shared.config import ConfigError, config_json_schema, load_config, parse_config
from shared.config.fields import pattern_words
from shared.config.model import config_fields
from shared.entrypoints.cli import main as cli
from shared.platforms.wechat.settings import WeChatSource

ENV = {"WECHAT_SECRET": "s3cr3t-value-123", "BUCKET": "backups-1250000000"}
GOOD: dict[str, Any] = {
    "destination": {"bucket": "${BUCKET}", "region": "ap-guangzhou", "prefix": "/db/backups/"},
    "sources": [{
        "type": "wechat", "name": "shop", "appid": "wx0123456789abcdef",
        "secret": "${WECHAT_SECRET}", "env": "shop-1a2b", "collections": ["orders", "users"],
        "queries": {"orders": "db.collection('orders').where({paid: true}).get()"},
    }],
}


def problems(mutate: Any, environ: dict[str, str] = ENV) -> list[str]:
    document = copy.deepcopy(GOOD)
    mutate(document)
    with pytest.raises(ConfigError) as info:
        parse_config(document, environ=environ)
    return info.value.problems


def test_valid_config_expands_references() -> None:
    config = parse_config(GOOD, environ=ENV)
    assert config.destination.bucket == "backups-1250000000"
    assert config.destination.prefix == "db/backups"
    source = config.sources[0]
    assert isinstance(source, WeChatSource) and source.secret is not None
    assert source.secret.get_secret_value() == "s3cr3t-value-123"
    assert "s3cr3t" not in repr(config)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["sources"][0].update(secret="literal-secret"),
         "sources[0].secret: secrets may not be written into the config"),
        (lambda d: d["sources"][0].update(secret="${MISSING_VAR}"),
         "sources[0].secret: environment variable MISSING_VAR is not set"),
        (lambda d: d["sources"][0].update(colections=["x"]),
         "sources[0].colections: unknown field; did you mean 'collections'?"),
        (lambda d: d["sources"][0].update(file_type="xml"),
         "sources[0].file_type: Input should be 'json' or 'csv' (got \"xml\")"),
        (lambda d: d["sources"][0].update(type="firebase"), "sources[0]: type must be one of: wechat, onedb, wechat-platform, minapp"),
        (lambda d: d["destination"].pop("bucket"), "destination.bucket: required field is missing"),
        (lambda d: d["destination"].update(prefix="a/../b"), "destination.prefix: must not contain '.' or '..'"),
        (lambda d: d["destination"].update(endpoint="ftp://x"), "destination.endpoint: must look like https://"),
        (lambda d: d["sources"][0].update(appid="12345"), "sources[0].appid: must be wx and 16 of 0-9 and a-f"),
        (lambda d: d["sources"][0].update(collections=[]), "sources[0].collections: List should have at least 1 item"),
        (lambda d: d["sources"][0].update(collections=["a", "a"]), "collections listed twice: a"),
        (lambda d: d["sources"][0].update(queries={"orders": "db.collection('users').get()"}),
         "must start with db.collection('orders')"),
        (lambda d: d["sources"].append(copy.deepcopy(d["sources"][0])), "source names must be unique; rename shop"),
        (lambda d: d.update(state={"url": "postgres://x"}), "state: url must be one of cos://"),
        (lambda d: d["destination"].update(part_size_mb=1), "destination.part_size_mb: Input should be greater than or equal to 5"),
        (lambda d: d["destination"].update(bucket="${NOPE}"), "destination.bucket: environment variable NOPE is not set"),
        (lambda d: d.update(timing={"unclaimed_ready_hours": 0.25}),
         "timing: unclaimed_ready_hours (0.25) must be at least two copy leases "
         "(copy_lease_seconds: 960, so at least 0.533 hours); raise unclaimed_ready_hours"),
        (lambda d: d.update(timing={"unclaimed_ready_hours": 0}),
         "timing.unclaimed_ready_hours: Input should be greater than 0"),
        (lambda d: d.update(retention={"keep_last": 3, "sources": {"shop": {"keep_lst": 2}}}),
         "retention.sources.shop.keep_lst: unknown field; did you mean 'keep_last'?"),
    ],
)
def test_invalid_configs_name_field_value_and_fix(mutate: Any, expected: str) -> None:
    found = problems(mutate)
    assert any(expected in p for p in found), found


def test_all_problems_are_reported_at_once() -> None:
    found = problems(lambda d: (d["sources"][0].update(file_type="xml"), d["destination"].pop("region")))
    assert len(found) == 2


def test_secret_values_are_never_echoed() -> None:
    found = problems(lambda d: (d["sources"][0].update(secret="hunter2-literal"),
                                d["sources"][0].update(extra_field=1)))
    assert not any("hunter2" in p for p in found)


def test_load_config_reports_file_and_yaml_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found; create it or set BAAS_BACKUP_CONFIG"):
        load_config(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("destination: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad, environ={})


def test_config_path_comes_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(GOOD), encoding="utf-8")
    config = load_config(environ={**ENV, "BAAS_BACKUP_CONFIG": str(path)})
    assert config.sources[0].name == "shop"


def test_the_digest_tells_documents_apart_but_not_their_layout_or_secrets(tmp_path: Path) -> None:
    """What the doctor compares between functions: the document as packaged."""
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(GOOD), encoding="utf-8")
    digest = load_config(path, environ=ENV).digest
    assert len(digest) == 16
    relaid = "# edited\n" + json.dumps(dict(reversed(list(GOOD.items()))), indent=4)
    path.write_text(relaid, encoding="utf-8")
    assert load_config(path, environ={**ENV, "WECHAT_SECRET": "another-secret-456"}).digest == digest
    assert parse_config({**GOOD, "sources": [{**GOOD["sources"][0], "name": "shop2"}]},
                        environ=ENV).digest != digest


def test_json_schema_describes_the_config_and_is_committed() -> None:
    schema = config_json_schema()
    assert "destination" in schema["properties"]
    committed = Path(__file__).resolve().parent.parent / "config.schema.json"
    assert json.loads(committed.read_text(encoding="utf-8")) == schema, (
        "config.schema.json is stale: run `python -m shared.entrypoints.cli schema > config.schema.json`"
    )


def test_the_schema_accepts_a_source_override_left_empty_as_the_loader_does() -> None:
    """`shop:` under retention.sources with every line commented out is YAML null, which
    the loader reads as the top-level rules: an editor using the schema must not flag it."""
    document = copy.deepcopy(GOOD)
    document["retention"] = {"keep_daily": 7, "sources": {"shop": None}}
    parse_config(document, environ=ENV)
    jsonschema.validate(document, config_json_schema())
    document["retention"]["sources"]["shop"] = ["keep_daily"]  # still not any value at all
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, config_json_schema())


def test_the_schema_accepts_sections_and_fields_left_empty_as_the_loader_does() -> None:
    """`timing:` with every line under it commented out is YAML null, read as the
    section's defaults; so is a field left empty. An editor must not flag either, and
    still flags a value of the wrong kind."""
    document = copy.deepcopy(GOOD)
    document.update(timing=None, verify=None, alerts=None)
    document["destination"] = {**document["destination"], "prefix": None}
    document["sources"] = [{**document["sources"][0], "queries": None}]
    config = parse_config(document, environ=ENV)
    assert config.timing == parse_config(GOOD, environ=ENV).timing
    jsonschema.validate(document, config_json_schema())
    document["timing"] = ["poll_concurrency"]
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.validate(document, config_json_schema())
    assert list(refused.value.absolute_path) == ["timing"]
    with pytest.raises(ConfigError, match="timing"):
        parse_config(document, environ=ENV)


def test_cli_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(GOOD), encoding="utf-8")
    assert cli(["--config", str(path), "validate"]) == 0
    out = capsys.readouterr().out
    assert "config OK: 1 source(s)" in out and "shop (wechat):\n    - orders\n    - users" in out
    broken = copy.deepcopy(GOOD)
    broken["sources"][0]["file_type"] = "xml"
    path.write_text(json.dumps(broken), encoding="utf-8")
    assert cli(["--config", str(path), "validate"]) == 2
    assert "sources[0].file_type" in capsys.readouterr().err


def test_cli_validate_prints_minapp_and_onedb_tables_readably(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in {**ENV, "MINAPP_SECRET": "minapp-secret", "ONEDB_SECRET": "s"}.items():
        monkeypatch.setenv(name, value)
    document = {
        "destination": GOOD["destination"],
        "sources": [
            {"type": "minapp", "name": "app", "client_id": "c", "client_secret": "${MINAPP_SECRET}",
             "tables": [1001, {"id": 1002, "split": {"key": "created_at"}}]},
            {"type": "onedb", "name": "crm", "region": "cn-east-1", "envid": "e", "keyid": "k",
             "key_secret": "${ONEDB_SECRET}", "app_id": "user", "keys": ["id"],
             "tables": ["events", {"name": "posts", "getColumns": ["title"]}]},
        ],
    }
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(document), encoding="utf-8")

    assert cli(["--config", str(path), "validate"]) == 0

    out = capsys.readouterr().out
    assert "    - 1001\n" in out and '    - 1002 (split: {"key": "created_at"})' in out
    assert "    - events\n" in out and '    - posts (getColumns: ["title"])' in out
    assert "MinAppTable(" not in out and "OneDBTable(" not in out and "id=" not in out


def test_a_config_loads_only_the_platforms_it_uses(tmp_path: Path) -> None:
    """A cold start validates a WeChat-only config without importing the other platforms'
    settings (fresh interpreter: this test process has them all loaded already), and a
    problem in it is worded as the whole model words it."""
    import subprocess
    import sys

    path = tmp_path / "backup.json"
    path.write_text(json.dumps(GOOD))
    probe = (
        "import sys\n"
        "from shared.config import load_config\n"
        f"config = load_config({str(path)!r}, environ={ENV!r})\n"
        "print(config.sources[0].type, sorted(m for m in sys.modules if m.startswith('shared.platforms.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.split(" ", 1)[0] == "wechat"
    assert "minapp" not in out and "onedb" not in out and "shared.platforms.wechat.settings" in out

    assert problems(lambda d: d["sources"][0].update(colections=["x"])) == [
        "sources[0].colections: unknown field; did you mean 'collections'?"]


_MINAPP = {"type": "minapp", "name": "app", "client_id": "c", "client_secret": "${WECHAT_SECRET}",
           "tables": [{"name": "${TABLE}", "order_by": ["${FIELD}"]}]}
_ONEDB = {"type": "onedb", "name": "crm", "region": "cn-east-1", "envid": "e", "keyid": "k",
          "key_secret": "${WECHAT_SECRET}", "app_id": "user", "keys": ["${FIELD}"],
          "tables": [{"name": "events", "getColumns": ["${FIELD}"], "filter": {
              "conditionList": [{"column": "${FIELD}", "symbol": "=", "value": 1}]}}]}


@pytest.mark.parametrize(("mutate", "read"), [
    (lambda d: d["sources"][0].update(queries={"orders": "db.collection('orders').where({shop: '${TABLE}'}).get()"}),
     lambda c: c.sources[0].queries["orders"].split("'")[3]),
    (lambda d: d["sources"][0].update(collections="all", include=["${TABLE}*"], exclude=["x${FIELD}"], queries={}),
     lambda c: (c.sources[0].include[0], c.sources[0].exclude[0])),
    (lambda d: d.update(retention={"keep_last": 3, "time_zone": "${ZONE}"}),
     lambda c: c.retention.time_zone),
    (lambda d: d["sources"].append(copy.deepcopy(_MINAPP)),
     lambda c: (c.sources[1].tables[0].name, c.sources[1].tables[0].order_by[0])),
    (lambda d: d["sources"].append(copy.deepcopy(_ONEDB)),
     lambda c: (c.sources[1].keys[0], c.sources[1].tables[0].getColumns[0],
                c.sources[1].tables[0].filter.conditionList[0].column)),
])
def test_references_work_in_every_string_field_as_the_readme_says(mutate: Any, read: Any) -> None:
    """README "Configuration": `${VAR}` works in any string field that is not a secret. A
    query kept as written would back up what `${VAR}` literally matches: nothing."""
    document = copy.deepcopy(GOOD)
    mutate(document)
    environ = {**ENV, "TABLE": "orders", "FIELD": "created_at", "ZONE": "UTC"}

    found = read(parse_config(document, environ=environ))

    assert "${" not in json.dumps(found), found
    assert set(found if isinstance(found, tuple) else [found]) <= {
        "orders", "orders*", "xcreated_at", "created_at", "UTC"}, found


def test_a_section_left_empty_means_its_defaults(tmp_path: Path) -> None:
    """`timing:` with every line under it commented out is YAML null: it means what leaving
    the section out means, as README's "all optional; defaults shown" invites."""
    path = tmp_path / "backup.yaml"
    path.write_text(
        "destination: {bucket: '${BUCKET}', region: ap-guangzhou}\n"
        "state:\n  # url: cos://\n"
        "timing:\n  # max_attempts: 5\n"
        "notify:\n  webhooks:\n"
        "alerts:\nverify:\ndispatch:\n"
        "sources:\n  - {type: wechat, name: shop, appid: wx0123456789abcdef,"
        " secret: '${WECHAT_SECRET}', env: e, collections: [orders], queries: }\n",
        encoding="utf-8")

    config = load_config(path, environ=ENV)

    defaults = parse_config(GOOD, environ=ENV)
    for section in ("state", "timing", "notify", "alerts", "verify", "dispatch"):
        assert getattr(config, section) == getattr(defaults, section), section
    source = config.sources[0]
    assert isinstance(source, WeChatSource) and source.queries == {}
    assert config.destination.server_side_encryption == "AES256"


def test_an_empty_required_section_says_to_fill_it_in(tmp_path: Path) -> None:
    path = tmp_path / "backup.yaml"
    path.write_text("destination:\nsources:\n", encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV)

    assert info.value.problems == [
        "destination: the section is empty; fill it in (bucket, region)",
        "sources: the section is empty; fill it in",
    ], info.value.problems


@pytest.mark.parametrize(("text", "expected"), [
    # a second `sources:` silently replaced the first: its sources were never backed up
    ("destination: {bucket: b-1250000000, region: ap-guangzhou}\n"
     "sources: [{type: wechat, name: shop, appid: wx0123456789abcdef, secret: '${WECHAT_SECRET}',"
     " env: e, collections: [orders]}]\n"
     "sources: [{type: wechat, name: blog, appid: wx0123456789abcdef, secret: '${WECHAT_SECRET}',"
     " env: e, collections: [posts]}]\n",
     "not valid YAML at line 3, column 1: key 'sources' is given twice (first at line 2)"),
    ("destination:\n  bucket: b-1250000000\n  region: ap-guangzhou\n  bucket: c-1250000000\n"
     "sources: []\n",
     "not valid YAML at line 4, column 3: key 'bucket' is given twice (first at line 2)"),
])
def test_a_key_given_twice_is_refused_not_silently_dropped(
        tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "backup.yaml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV)

    (problem,) = info.value.problems
    assert problem.startswith(expected) and "keep one" in problem, problem


def test_a_yaml_merge_key_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "backup.yaml"
    path.write_text(
        "destination: {bucket: b-1250000000, region: ap-guangzhou}\n"
        "x-shop: &shop {type: wechat, name: shop, appid: wx0123456789abcdef,"
        " secret: '${WECHAT_SECRET}', env: e, collections: [orders]}\n"
        "sources: [{<<: *shop, name: blog}]\n", encoding="utf-8")

    with pytest.raises(ConfigError) as info:  # x-shop is an unknown field, nothing else
        load_config(path, environ=ENV)

    assert info.value.problems == ["x-shop: unknown field; remove it"], info.value.problems


@pytest.mark.parametrize(("field", "written", "expected"), [
    ("bucket", "${EMPTY}", "destination.bucket: must be the bucket's full name, name-APPID"),
    ("bucket", "mybackups", "destination.bucket: must be the bucket's full name, name-APPID"),
    ("bucket", "My Backups-1250000000", "destination.bucket: must be the bucket's full name"),
    ("region", "${EMPTY}", "destination.region: must be a COS region such as ap-guangzhou"),
    ("region", "guangzhou", "destination.region: must be a COS region such as ap-guangzhou"),
])
def test_a_bucket_or_region_cos_cannot_have_is_refused(field: str, written: str, expected: str) -> None:
    found = problems(lambda d: d["destination"].update({field: written}), {**ENV, "EMPTY": ""})
    assert any(p.startswith(expected) for p in found), found


def _types_in(annotation: Any) -> list[Any]:
    """Every type an annotation names, through unions, Annotated, lists and dicts."""
    arguments = get_args(annotation)
    return [annotation, *(t for argument in arguments for t in _types_in(argument))]


def _number_fields() -> list[tuple[type[BaseModel], str]]:
    """(model, field) for every int or float field (a true/false field excluded) of every
    model the config is made of, the platforms' sources included."""
    return [(model, name) for model, name, field in config_fields()
            if (int in (named := _types_in(field.annotation)) or float in named)
            and bool not in named]


def test_every_number_field_is_found() -> None:
    names = {f"{model.__name__}.{name}" for model, name in _number_fields()}
    assert {"Timing.max_attempts", "Destination.part_size_mb", "KeepRules.keep_last",
            "Alerts.drop_percent", "MinAppSource.max_export_rows"} <= names, names


@pytest.mark.parametrize(("model", "name"), _number_fields(),
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
@pytest.mark.parametrize("written", [True, False])
def test_true_or_false_is_no_number(model: type[BaseModel], name: str, written: bool) -> None:
    """pydantic reads true as 1 and false as 0 in its lax mode: `max_attempts: yes` would be
    one attempt, `keep_last: no` none kept."""
    with pytest.raises(ValidationError) as info:
        model.model_validate({name: written}, context={"environ": {}})

    [error] = [e for e in info.value.errors() if e["loc"][:1] == (name,)]
    assert "not true or false" in error["msg"], error


def test_yes_for_a_number_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "backup.yaml"
    path.write_text("timing:\n  max_attempts: yes\n" + "\n".join(
        f"{key}: {json.dumps(value)}" for key, value in GOOD.items()) + "\n", encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV)

    assert info.value.problems == [
        "timing.max_attempts: must be a number, not true or false; write the number (got true)"
    ], info.value.problems


def test_true_for_a_number_comes_with_the_sections_other_problems() -> None:
    found = problems(lambda d: d.update(timing={"max_attempts": True, "poll_concurrency": 0,
                                                "max_atempts": 3}))
    assert sorted(found) == [
        "timing.max_atempts: unknown field; did you mean 'max_attempts'?",
        "timing.max_attempts: must be a number, not true or false; write the number (got true)",
        "timing.poll_concurrency: Input should be greater than or equal to 1 (got 0)",
    ], found


def _patterns() -> list[tuple[str, str]]:
    """(model.field, pattern) for every field of the config that must match a pattern."""
    return [(f"{model.__name__}.{name}", rule.pattern) for model, name, field in config_fields()
            for rule in field.metadata if isinstance(getattr(rule, "pattern", None), str)]


def test_every_pattern_is_said_in_words() -> None:
    patterned = _patterns()
    assert {"WeChatSource.name", "WeChatSource.appid", "OneDBSource.region"} <= {
        where for where, _ in patterned}, patterned
    unsaid = [where for where, pattern in patterned if pattern_words(pattern) is None]
    assert unsaid == [], f"say what these allow with pattern_in_words: {unsaid}"


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["sources"][0].update(name="Shop"),
     'sources[0].name: must be 1 to 63 of a-z, 0-9 and -, starting with a letter or digit '
     '(got "Shop")'),
    (lambda d: d["sources"][0].update(appid="12345"),
     "sources[0].appid: must be wx and 16 of 0-9 and a-f, e.g. wx0123456789abcdef"),
    (lambda d: d["sources"].append({**_ONEDB, "region": "East_1"}),
     "sources[1].region: must be 1 to 63 of a-z, 0-9 and -, starting with a letter or digit"),
])
def test_a_value_failing_a_pattern_is_told_what_is_allowed_in_words(mutate: Any, expected: str) -> None:
    found = problems(mutate, {**ENV, "FIELD": "id"})
    assert any(p.startswith(expected) for p in found), found
    assert not any("should match pattern" in p for p in found), found
