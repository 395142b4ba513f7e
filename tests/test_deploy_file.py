"""The deploy description, checked offline against the deploy tool's own rules.

serverless.yml and scf-*/serverless.yml are read the way serverless-cloud-framework reads
them, with the values of the .env `scf deploy` would load here (else .env.example: see
deploy_environ), their variables resolved by a port of the CLI's
resolveVariables(), and every input checked against the `scf` component's input rules and
the product's needs (tests/support/deploy_rules.py names the source of each rule). The
broken variants below must each fail: they are the defects the deploy file once had or
could easily get."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.build_package import HANDLERS, PACKAGE
from shared.config import DispatchSettings, Timing
from tests.support.deploy_rules import (
    ROLES,
    Product,
    Project,
    check_multi_scf,
    check_project,
    cron_problems,
    deploy_environ,
    dotenv_inline_comments,
    env_file_for,
    load_project,
    parse_dotenv,
    resolve_variables,
)

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"


def product() -> Product:
    timing, dispatch = Timing(), DispatchSettings()
    return Product(
        root=ROOT,
        package_dir=PACKAGE,
        # scripts/build_package.py build(): functions/<name>/index.py -> <package>/<name>.py
        handler_sources={name: ROOT / "functions" / name / "index.py" for name in HANDLERS},
        start_budget=timing.start_budget_seconds,
        poll_budget=timing.poll_budget_seconds,
        finish_budget=timing.finish_budget_seconds,
        copy_lease=timing.copy_lease_seconds,
        function_names={"trigger": dispatch.trigger_function, "poller": dispatch.poller_function,
                        "finisher": dispatch.finisher_function},
        namespace=dispatch.namespace,
    )


def example_environ() -> dict[str, str]:
    return parse_dotenv(ENV_EXAMPLE.read_text(encoding="utf-8"))


def shipped() -> Project:
    return load_project(ROOT)


# -- the shipped files -----------------------------------------------------------------
def test_the_shipped_deploy_files_pass_every_rule() -> None:
    problems = check_project(shipped(), deploy_environ(ROOT), product())  # no values in the assert
    assert problems == []


def adds_a_minapp_secret(variables: dict[str, Any], dotenv: str) -> str:
    """README step 5: another secret goes into .env and, as NAME: ${env:NAME}, into
    environment.variables of the three instance files."""
    variables["MINAPP_CLIENT_SECRET"] = "${env:MINAPP_CLIENT_SECRET}"
    return dotenv + "MINAPP_CLIENT_SECRET=minapp-secret-123\n"


def backs_up_no_wechat(variables: dict[str, Any], dotenv: str) -> str:
    """.env.example: "Not backing up WeChat? Remove the WECHAT_SECRET line from the three
    scf-*/serverless.yml"."""
    del variables["WECHAT_SECRET"]
    return dotenv.replace("WECHAT_SECRET=replace-with-the-app-secret\n", "")


@pytest.mark.parametrize("edit", [adds_a_minapp_secret, backs_up_no_wechat])
def test_the_check_reads_the_dotenv_scf_deploy_would(
        tmp_path: Path, edit: Callable[[dict[str, Any], str], str]) -> None:
    """README, Deploying from zero, step 5: after editing .env and the instance files as
    the README and .env.example say, `scripts/test -k deploy_file` checks them before
    `scf deploy`. It must read that .env, as the CLI does, not call a name it sets unset
    nor ask for one the files no longer use."""
    (tmp_path / "serverless.yml").write_text((ROOT / "serverless.yml").read_text(encoding="utf-8"))
    template = ENV_EXAMPLE.read_text(encoding="utf-8")
    dotenv = template
    for folder in ("scf-trigger", "scf-poller", "scf-finisher"):
        document = yaml.safe_load((ROOT / folder / "serverless.yml").read_text(encoding="utf-8"))
        dotenv = edit(document["inputs"]["environment"]["variables"], template)
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "serverless.yml").write_text(yaml.safe_dump(document), encoding="utf-8")
    (tmp_path / ".env.example").write_text(template, encoding="utf-8")
    (tmp_path / ".env").write_text(dotenv, encoding="utf-8")

    problems = check_project(load_project(tmp_path), deploy_environ(tmp_path), product())

    assert problems == []
    assert variable_problems(tmp_path) == []


def test_the_project_deploys_the_three_handlers_the_package_builds() -> None:
    assert set(HANDLERS) == set(ROLES)
    project = shipped()
    assert sorted(project.instances) == ["scf-finisher", "scf-poller", "scf-trigger"]
    assert "component" not in project.root  # so `scf deploy` deploys the three folders
    handlers = sorted(i["inputs"]["handler"] for i in project.instances.values())
    assert handlers == sorted(ROLES.values())
    if PACKAGE.is_dir():  # built by scripts/package or tests/test_package.py
        for name in HANDLERS:
            assert (PACKAGE / f"{name}.py").is_file()


def referenced_variables(project: Project) -> set[str]:
    """Every NAME the deploy files use as ${env:NAME}."""
    referenced: set[str] = set()
    for raw in [project.root, *project.instances.values()]:
        for problem in resolve_variables(raw, {}, "").problems:
            if "is not set" in problem:
                referenced.add(problem.split("environment variable ")[1].split()[0])
    return referenced


def variable_problems(root: Path) -> list[str]:
    """What the deploy files in `root` and the .env `scf deploy` reads there (else the
    template) say about the variables: inline comments, names set nowhere, and the names
    every deploy needs. Names only, never values."""
    environ = deploy_environ(root)
    problems = [f"{n}: an inline comment would be part of the value" for n in dotenv_inline_comments(environ)]
    referenced = referenced_variables(load_project(root))
    problems += [f"{n}: used by the deploy files, set in no .env" for n in sorted(referenced - set(environ))]
    problems += [f"{n}: not used by the deploy files" for n in
                 sorted({"STAGE", "REGION", "SCF_ROLE", "BAAS_BACKUP_API_TOKEN"} - referenced)]
    return problems


def test_env_example_documents_every_variable_and_has_no_inline_comments() -> None:
    template = example_environ()
    assert dotenv_inline_comments(template) == []
    assert referenced_variables(shipped()) <= set(template) | set(deploy_environ(ROOT))
    assert {"STAGE", "REGION", "SCF_ROLE", "WECHAT_SECRET", "BAAS_BACKUP_API_TOKEN"} <= set(template)
    assert variable_problems(ROOT) == []


def test_dotenv_is_ignored_by_git_and_found_where_the_cli_looks(tmp_path: Path) -> None:
    ignored = [line.strip() for line in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()]
    assert ".env" in ignored and "!.env.example" in ignored
    (tmp_path / "serverless.yml").write_text("app: a\nstage: ${env:STAGE}\n", encoding="utf-8")
    assert env_file_for(tmp_path, "${env:STAGE}") is None
    (tmp_path / ".env").write_text("STAGE=prod\n", encoding="utf-8")
    assert env_file_for(tmp_path, "${env:STAGE}") == tmp_path / ".env"  # no `.env.${env:STAGE}`
    (tmp_path / ".env.prod").write_text("STAGE=prod\n", encoding="utf-8")
    assert env_file_for(tmp_path, "prod") == tmp_path / ".env.prod"  # a literal stage's file first


def test_dotenv_parsing_matches_dotenv_8() -> None:
    parsed = parse_dotenv("A=1\n# comment\n B = two words \nC='x # y'\nD=\"l1\\nl2\"\nE=v # note\nnot a line\n")
    assert parsed == {"A": "1", "B": "two words", "C": "x # y", "D": "l1\nl2", "E": "v # note"}
    assert dotenv_inline_comments(parsed) == ["C", "E"]


def test_variables_resolve_like_the_cli() -> None:
    environ = {"A": "1", "B": "two", "REF": "${env:A}"}
    resolved = resolve_variables({"x": "${env:A}", "y": "a-${env:A}-${env:B}", "z": "${env:REF}",
                                  "n": 5, "l": ["${env:B}"]}, environ).value
    assert resolved == {"x": "1", "y": "a-1-two", "z": "1", "n": 5, "l": ["two"]}
    unset = resolve_variables({"x": "${env:NOPE}", "y": "v-${env:NOPE}"}, {})
    assert unset.value == {"x": None, "y": "v-undefined"}
    assert any("NOPE is not set" in p for p in unset.problems)
    literal = resolve_variables({"stage": "${env:STAGE, 'prod'}", "n": "${name}-x"}, {"STAGE": "dev"})
    assert literal.value["stage"] == "${env:STAGE, 'prod'}"  # the regex does not match it
    assert len(literal.problems) == 2
    assert resolve_variables({"x": "${self:custom.x}"}, {}).problems  # the CLI stops on v1 variables
    # JavaScript's replace() expands `$&` in the value: the CLI would never finish.
    assert any("20 passes" in p for p in resolve_variables({"x": "a-${env:A}"}, {"A": "$&"}).problems)


def test_cron_rules() -> None:
    assert cron_problems("0 0 2 * * * *") == [] and cron_problems("0 */1 * * * * *") == []
    assert cron_problems("0 0 2 * * *") and cron_problems("60 * * * * * *") and cron_problems("*/0 * * * * * *")


def test_the_old_multi_scf_file_fails_for_each_of_its_defects() -> None:
    old = yaml.safe_load(OLD_MULTI_SCF)
    problems = check_project(Project(old, {}), {"WECHAT_SECRET": "s", "BAAS_BACKUP_API_TOKEN": "t" * 20},
                             product())
    text = "\n".join(problems)
    assert "${env:STAGE, 'prod'}" in text and "${env:REGION, 'ap-guangzhou'}" in text  # left literal
    assert "${name}-trigger" in text  # engine variable, not checkable here
    assert "Function undefined not in deploy list" in text  # `function` at the apigw trigger level
    assert "API Gateway triggers are retired" in text
    resolved = resolve_variables(old, {"STAGE": "prod"}).value
    assert any("inputs.region" in p for p in check_multi_scf(resolved["inputs"]))  # region check fails
    assert any("inputs.runtime" in p for p in check_multi_scf(resolved["inputs"]))  # no Python3.10
    assert "no Function URL trigger" in text


# -- broken variants: each must fail -----------------------------------------------------
Mutation = Callable[[Project, dict[str, str]], None]


def inputs(project: Project, folder: str) -> dict[str, Any]:
    result: dict[str, Any] = project.instances[folder]["inputs"]
    return result


def events(project: Project, folder: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = inputs(project, folder)["events"]
    return result


def set_stage_default(p: Project, env: dict[str, str]) -> None:
    p.root["stage"] = "${env:STAGE, 'prod'}"


def set_region_default(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-poller")["region"] = "${env:REGION, 'ap-guangzhou'}"


def add_apigw_trigger(p: Project, env: dict[str, str]) -> None:
    events(p, "scf-trigger").append({"apigw": {"parameters": {
        "serviceName": "baas_backup_api", "protocols": ["https"], "environment": "release",
        "endpoints": [{"path": "/", "method": "ANY"}]}}})


def apigw_instead_of_url(p: Project, env: dict[str, str]) -> None:
    trigger_events = events(p, "scf-trigger")
    trigger_events[:] = [e for e in trigger_events if "http" not in e]
    add_apigw_trigger(p, env)


def apigw_function_at_trigger_level(p: Project, env: dict[str, str]) -> None:
    old = yaml.safe_load(OLD_MULTI_SCF)
    old["stage"], old["inputs"]["region"], old["inputs"]["role"] = "prod", "ap-guangzhou", "r"
    p.root.clear()
    p.root.update(old)


def multi_scf_trigger_names_undeployed_function(p: Project, env: dict[str, str]) -> None:
    apigw_function_at_trigger_level(p, env)
    p.root["inputs"]["triggers"] = [t for t in p.root["inputs"]["triggers"] if t["type"] == "timer"]
    p.root["inputs"]["triggers"][0]["function"] = "cleaner"


def drop_function_url(p: Project, env: dict[str, str]) -> None:
    trigger_events = events(p, "scf-trigger")
    trigger_events[:] = [e for e in trigger_events if "http" not in e]


def url_without_extranet(p: Project, env: dict[str, str]) -> None:
    url = next(e for e in events(p, "scf-trigger") if "http" in e)
    del url["http"]["parameters"]["netConfig"]["enableExtranet"]


def url_with_cam_auth(p: Project, env: dict[str, str]) -> None:
    next(e for e in events(p, "scf-trigger") if "http" in e)["http"]["parameters"]["authType"] = "CAM"


def url_on_the_poller(p: Project, env: dict[str, str]) -> None:
    events(p, "scf-poller").append(copy.deepcopy(next(e for e in events(p, "scf-trigger") if "http" in e)))


def runtime_not_allowed(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-finisher")["runtime"] = "Python3.11"


def runtime_not_310(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-poller")["runtime"] = "Python3.9"


def handler_file_missing(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-poller")["handler"] = "index.main_handler"


def handler_in_a_folder(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-poller")["handler"] = "functions/poller/index.main_handler"


def src_not_the_package(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-trigger")["src"] = "./"


def finisher_timeout_reaches_lease(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-finisher")["timeout"] = int(Timing().copy_lease_seconds)


def finisher_timeout_above_scf_limit(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-finisher")["timeout"] = 901


def poller_timeout_below_budget(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-poller")["timeout"] = int(Timing().poll_budget_seconds)


def unset_required_variable(p: Project, env: dict[str, str]) -> None:
    del env["WECHAT_SECRET"]


def unset_region(p: Project, env: dict[str, str]) -> None:
    del env["REGION"]


def unknown_field(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-poller")["timeoutSeconds"] = 300


def unknown_trigger_field(p: Project, env: dict[str, str]) -> None:
    events(p, "scf-poller")[0]["timer"]["function"] = "poller"


def multi_scf_style_environments(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-poller")["environments"] = [{"key": "A", "value": "b"}]


def eip_from_env(p: Project, env: dict[str, str]) -> None:
    for folder in p.instances:
        inputs(p, folder)["eip"] = "${env:FIXED_EGRESS_IP}"
    env["FIXED_EGRESS_IP"] = "true"


def eip_on_one_function(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-trigger")["eip"] = True


def timer_not_enabled(p: Project, env: dict[str, str]) -> None:
    del events(p, "scf-poller")[0]["timer"]["parameters"]["enable"]


def six_field_cron(p: Project, env: dict[str, str]) -> None:
    events(p, "scf-trigger")[0]["timer"]["parameters"]["cronExpression"] = "0 0 2 * * *"


def retry_without_async(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-finisher")["retryNum"] = 1


def retries_above_limit(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-finisher").update(asyncRunEnable=True, retryNum=5)


def async_execution(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-finisher")["asyncRunEnable"] = True


def memory_not_a_step(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-finisher")["memorySize"] = 500


def region_not_scf(p: Project, env: dict[str, str]) -> None:
    env["REGION"] = "ap-nowhere"


def literal_secret(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-poller")["environment"]["variables"]["WECHAT_SECRET"] = "abc123"


def reserved_env_name(p: Project, env: dict[str, str]) -> None:
    for folder in p.instances:
        inputs(p, folder)["environment"]["variables"]["SCF_FUNCTIONNAME"] = "x"


def finisher_renamed(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-finisher")["name"] = "baas-backup-copier"


def finisher_missing(p: Project, env: dict[str, str]) -> None:
    del p.instances["scf-finisher"]


def root_becomes_an_instance(p: Project, env: dict[str, str]) -> None:
    p.root["component"] = "scf"
    p.root["name"] = "baas-backup"


def instance_stage_differs(p: Project, env: dict[str, str]) -> None:
    del p.root["stage"]
    p.instances["scf-poller"]["stage"] = "test"


def engine_variable(p: Project, env: dict[str, str]) -> None:
    inputs(p, "scf-trigger")["name"] = "${name}"


def api_token_on_every_function(p: Project, env: dict[str, str]) -> None:
    for folder in ("scf-poller", "scf-finisher"):
        inputs(p, folder)["environment"]["variables"]["BAAS_BACKUP_API_TOKEN"] = "${env:BAAS_BACKUP_API_TOKEN}"


BROKEN: list[tuple[Mutation, str]] = [
    (set_stage_default, "${env:STAGE, 'prod'}"),
    (set_region_default, "${env:REGION, 'ap-guangzhou'}"),
    (add_apigw_trigger, "API Gateway triggers are retired"),
    (apigw_instead_of_url, "exactly one Function URL"),
    (apigw_function_at_trigger_level, "Function undefined not in deploy list"),
    (multi_scf_trigger_names_undeployed_function, "Function cleaner not in deploy list"),
    (drop_function_url, "exactly one Function URL"),
    (url_without_extranet, "enableExtranet"),
    (url_with_cam_auth, "authType must be NONE"),
    (url_on_the_poller, "only the trigger function has a Function URL"),
    (runtime_not_allowed, "'Python3.11' is not one of"),
    (runtime_not_310, "runtime must be Python3.10"),
    (handler_file_missing, "the build puts no index.py in the package"),
    (handler_in_a_folder, "must be file.function at the package root"),
    (src_not_the_package, "is not the built package"),
    (finisher_timeout_reaches_lease, "stay below timing.copy_lease_seconds"),
    (finisher_timeout_above_scf_limit, "above SCF's 900 s"),
    (poller_timeout_below_budget, "must exceed timing.poll_budget_seconds"),
    (unset_required_variable, "WECHAT_SECRET is not set"),
    (unset_region, "REGION is not set"),
    (unknown_field, "timeoutSeconds: unknown field"),
    (unknown_trigger_field, "function: unknown field"),
    (multi_scf_style_environments, "environments: unknown field"),
    (eip_from_env, "'true' is not a boolean"),
    (eip_on_one_function, "eip differs"),
    (timer_not_enabled, "needs enable: true"),
    (six_field_cron, "7 fields"),
    (retry_without_async, "only with asyncRunEnable: true"),
    (retries_above_limit, "retryNum: 5 is above 2"),
    (async_execution, "no async execution (asyncRunEnable)"),
    (memory_not_a_step, "memorySize: 500 is not one of"),
    (region_not_scf, "'ap-nowhere' is not one of"),
    (literal_secret, "WECHAT_SECRET must be ${env:NAME}"),
    (reserved_env_name, "reserved environment variable names"),
    (finisher_renamed, "expected 'baas-backup-finisher'"),
    (finisher_missing, "no instance deploys the finisher function"),
    (root_becomes_an_instance, "no instance deploys the trigger function"),
    (instance_stage_differs, "must share app and stage"),
    (engine_variable, "an engine variable"),
    (api_token_on_every_function, "only the trigger needs BAAS_BACKUP_API_TOKEN"),
]


@pytest.mark.parametrize(("mutate", "expected"), BROKEN, ids=[m.__name__ for m, _ in BROKEN])
def test_a_broken_deploy_file_fails(mutate: Mutation, expected: str) -> None:
    project, environ = copy.deepcopy(shipped()), example_environ()
    mutate(project, environ)
    problems = check_project(project, environ, product())
    assert any(expected in problem for problem in problems), problems


# serverless.yml as it was before the move to `scf` instances (multi-scf, API Gateway).
OLD_MULTI_SCF = """
app: baas-backup
stage: ${env:STAGE, 'prod'}
component: multi-scf
name: baas-backup
inputs:
  src:
    src: ./build/package
  region: ${env:REGION, 'ap-guangzhou'}
  namespace: default
  runtime: Python3.10
  memorySize: 256
  timeout: 60
  role: ${env:SCF_ROLE, 'baas-backup-role'}
  environments:
    - key: BAAS_BACKUP_CONFIG
      value: /var/user/backup.yaml
    - key: WECHAT_SECRET
      value: ${env:WECHAT_SECRET}
    - key: BAAS_BACKUP_API_TOKEN
      value: ${env:BAAS_BACKUP_API_TOKEN}
    - key: BAAS_BACKUP_FINISHER
      value: ${name}-finisher
  functions:
    trigger:
      name: ${name}-trigger
      handler: trigger.main_handler
      timeout: 120
    poller:
      name: ${name}-poller
      handler: poller.main_handler
      timeout: 300
    finisher:
      name: ${name}-finisher
      handler: finisher.main_handler
      memorySize: 512
      timeout: 900
  triggers:
    - type: timer
      function: trigger
      parameters:
        name: nightly
        cronExpression: '0 0 2 * * * *'
        enable: true
    - type: timer
      function: poller
      parameters:
        name: every-minute
        cronExpression: '0 */1 * * * * *'
        enable: true
    - type: apigw
      function: trigger
      parameters:
        name: baas-backup-api
        protocols: [https]
        environment: release
        apis:
          - path: /
            method: ANY
            serviceTimeout: 30
"""


def test_instance_folders_must_be_direct_sub_folders(tmp_path: Path) -> None:
    """Why the instances are scf-*/ and not functions/<name>/: `scf deploy` looks for
    instance files only one folder down (serverless-cloud-framework v1.3.0,
    src/libs/utils/basic.js runningTemplate() and utils.js getTemplate(): readdirSync(root),
    no recursion), so nested folders would deploy nothing."""
    (tmp_path / "serverless.yml").write_text((ROOT / "serverless.yml").read_text(encoding="utf-8"))
    for folder in ("scf-trigger", "scf-poller", "scf-finisher"):
        nested = tmp_path / "functions" / folder.removeprefix("scf-")
        nested.mkdir(parents=True)
        (nested / "serverless.yml").write_text((ROOT / folder / "serverless.yml").read_text(encoding="utf-8"))
    nested_project = load_project(tmp_path)
    assert nested_project.instances == {}
    assert check_project(nested_project, example_environ(), product()) != []
