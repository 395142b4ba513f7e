"""The deploy tool's rules, recorded from its source, to check the deploy files offline.

Nothing here can reach Tencent Cloud; each rule names where it comes from, so that when
the CLI or a component changes, the rule can be compared with its source again:

- CLI: github.com/Serverlesstencent/serverless-cloud-framework (v1.3.0), the same code as
  github.com/serverless/components src/cli/utils.js for the variables.
- `scf` component: github.com/serverless-components/tencent-scf (serverless.component.yml,
  docs/configure.md, src/config.js) and its current documentation,
  cloud.tencent.com/document/product/1154/43228, which adds the `http` (Function URL)
  event that the public source predates.
- `multi-scf` component: github.com/serverless-components/tencent-multi-scf
  (serverless.component.yml v0.3.14, src/formatter.ts).
- Both components deploy through tencent-component-toolkit
  (github.com/serverless-tencent/tencent-component-toolkit, npm 2.27.x).
- The product's own rules: shared.config (Timing, DispatchSettings), scripts.build_package.

`check_project()` returns a list of problems, empty when the project would deploy.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# -- the CLI: .env files ---------------------------------------------------------------

# dotenv 8.6.0 (the version serverless-cloud-framework's package-lock.json pins),
# lib/main.js parse(): one KEY=VAL a line, surrounding quotes removed, "\n" expanded in
# double quotes only, no inline comments, no interpolation.
_DOTENV_LINE = re.compile(r"^\s*([\w.-]+)\s*=\s*(.*)?\s*$", re.ASCII)
_DOTENV_NEWLINES = re.compile(r"\n|\r|\r\n")
# serverless-cloud-framework src/libs/config.js warns about values matching this: dotenv
# keeps an inline "# comment" as part of the value.
_DOTENV_INLINE_COMMENT = re.compile(r" #+.*$")


def parse_dotenv(text: str) -> dict[str, str]:
    """dotenv 8's parse(), line for line."""
    parsed: dict[str, str] = {}
    for line in _DOTENV_NEWLINES.split(text):
        match = _DOTENV_LINE.match(line)
        if match is None:
            continue
        value = match.group(2) or ""
        double = value[:1] == '"' and value[-1:] == '"'
        single = value[:1] == "'" and value[-1:] == "'"
        if single or double:
            value = value[1:-1] if len(value) > 1 else ""
            if double:
                value = value.replace("\\n", "\n")
        else:
            value = value.strip()
        parsed[match.group(1)] = value
    return parsed


def dotenv_inline_comments(values: Mapping[str, str]) -> list[str]:
    """Names whose value would carry an inline comment (the CLI's warning in config.js)."""
    return [name for name, value in values.items() if _DOTENV_INLINE_COMMENT.search(value)]


def env_file_for(directory: Path, raw_stage: object, target: str | None = None) -> Path | None:
    """The one file the CLI loads (serverless-cloud-framework src/libs/config.js).

    `raw_stage` is the deploy file's `stage` as written (the CLI reads it before resolving
    variables), `--stage` or "dev". Only the first existing file is loaded."""
    stage = str(raw_stage or "dev")
    candidates: list[Path] = []
    if target:
        candidates += [directory / target / f".env.{stage}", directory / target / ".env"]
    for base in (directory, directory.parent, directory.parent.parent):
        candidates += [base / f".env.{stage}", base / ".env"]
    return next((c for c in candidates if c.is_file() or c.is_symlink()), None)


def deploy_environ(directory: Path) -> dict[str, str]:
    """The variables the deploy files in `directory` are checked with: the .env file
    `scf deploy` there would load (env_file_for(), with the stage as serverless.yml writes
    it) when it is in that folder, as README's step 5 has it, else the committed template
    .env.example (a fresh clone, CI). A file found only in a parent folder is not taken (an
    unrelated ~/.env would fail every check), nor the shell, so the tests do not depend
    on it; at deploy time a name set in the shell wins. Never put the result in an
    assert: it holds the secrets."""
    raw = yaml.safe_load((directory / "serverless.yml").read_text(encoding="utf-8")) or {}
    found = env_file_for(directory, raw.get("stage"))
    chosen = found if found is not None and found.parent == directory else directory / ".env.example"
    return parse_dotenv(chosen.read_text(encoding="utf-8"))


# -- the CLI: variables ----------------------------------------------------------------

# resolveVariables() in serverless-cloud-framework src/libs/utils/basic.js (and
# serverless/components src/cli/utils.js): JavaScript's \w is ASCII-only.
_VARIABLE = re.compile(r"\$\{(\w*:?[\w\d.-]+)\}", re.ASCII)
# `[\w.-_]` is, in JavaScript as in Python, \w plus the range "." to "_".
_ENV_VARIABLE = re.compile(r"\$\{env:(\w*[\w.-_]+)\}", re.ASCII)
# basic.js validateAgainstV1Variables(): these stop the CLI with an error.
_V1_VARIABLES = ("self", "opt", "sls", "cf", "s3", "ssm", "file")
# What the engine resolves after the CLI (serverless/components README.cn.md, 变量): not
# checkable offline, so the deploy files must not use them.
_ENGINE_VARIABLES = ("org", "app", "stage", "name", "output")
_UNSET = object()  # process.env[NAME] of an unset NAME: undefined in JavaScript


@dataclass
class Resolution:
    value: Any
    problems: list[str] = field(default_factory=list)


def _js_replace_first(value: str, match: str, replacement: str) -> str:
    """String.prototype.replace(string, string): first occurrence, `$` patterns expanded."""
    index = value.find(match)
    if index < 0:
        return value
    out, i = [], 0
    while i < len(replacement):
        char = replacement[i]
        nxt = replacement[i + 1] if i + 1 < len(replacement) else ""
        if char == "$" and nxt == "$":
            out.append("$")
            i += 2
        elif char == "$" and nxt == "&":
            out.append(match)
            i += 2
        elif char == "$" and nxt == "`":
            out.append(value[:index])
            i += 2
        elif char == "$" and nxt == "'":
            out.append(value[index + len(match):])
            i += 2
        else:
            out.append(char)
            i += 1
    return value[:index] + "".join(out) + value[index + len(match):]


def resolve_variables(document: Any, environ: Mapping[str, str], where: str = "") -> Resolution:
    """The CLI's resolveVariables() on a whole instance file, plus what it leaves behind.

    Ported: the regex, one ${env:NAME} replaced per value and pass, passes repeated while
    anything was resolved, an unset NAME giving undefined (the whole value) or the string
    "undefined" (inside a longer string). Problems: a v1 variable (the CLI stops), any
    unset NAME (it would deploy nothing or "undefined"), any ${...} left literal
    (`${env:X, 'default'}` does not match the regex), and the engine's variables, which
    this project does not use so that every value can be checked here."""
    problems: list[str] = []
    unset: set[str] = set()

    def one_pass(node: Any, path: str) -> tuple[Any, bool]:
        if isinstance(node, dict):
            changed = False
            out: dict[Any, Any] = {}
            for key, item in node.items():
                out[key], item_changed = one_pass(item, f"{path}.{key}" if path else str(key))
                changed = changed or item_changed
            return out, changed
        if isinstance(node, list):
            changed = False
            items = []
            for index, item in enumerate(node):
                new, item_changed = one_pass(item, f"{path}[{index}]")
                items.append(new)
                changed = changed or item_changed
            return items, changed
        if not isinstance(node, str):
            return node, False
        matches = _VARIABLE.findall(node)
        if not matches:
            return node, False
        new_value: Any = node
        changed = False
        for inner in matches:
            match = "${" + inner + "}"
            for v1 in _V1_VARIABLES:
                if re.search(r"\$\{" + v1 + r":([\w.-_]+)\}", match, re.ASCII):
                    problems.append(f"{where}{path}: the CLI refuses the v1 variable {match}")
            if _ENV_VARIABLE.search(match):
                name = match[2:-1].split(":")[1]
                env_value = environ.get(name, _UNSET)
                if env_value is _UNSET:
                    unset.add(name)
                changed = True
                if match == node:
                    new_value = None if env_value is _UNSET else env_value
                else:  # note: replaces in the original value, as the CLI does
                    text = "undefined" if env_value is _UNSET else str(env_value)
                    new_value = _js_replace_first(node, match, text)
        return new_value, changed

    value = copy.deepcopy(document)
    for _ in range(20):
        value, changed = one_pass(value, "")
        if not changed:
            break
    else:
        problems.append(f"{where}: variables still resolving after 20 passes (an env value refers to itself?)")
    for name in sorted(unset):
        problems.append(f"{where}: environment variable {name} is not set (.env or the shell); "
                        "the CLI would deploy it as undefined")

    def leftovers(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                leftovers(item, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                leftovers(item, f"{path}[{index}]")
        elif isinstance(node, str) and "${" in node:
            engine = [m for m in _VARIABLE.findall(node) if m.split(":")[0] in _ENGINE_VARIABLES]
            why = ("an engine variable; use a literal or ${env:NAME}" if engine else
                   "the CLI leaves it literal (only plain ${env:NAME} is resolved)")
            problems.append(f"{where}{path}: {node!r}: {why}")

    leftovers(value, "")
    return Resolution(value, problems)


# -- component input schemas -----------------------------------------------------------
# A schema is a dict: type (string, number, boolean, object, array, src), allow, min, max,
# regex, required, keys (object fields), items (array element schemas). Stricter than the
# engine in one way: fields a component neither declares nor documents are errors here
# (a misspelt field is otherwise ignored without a word).

Schema = dict[str, Any]


def _s(kind: str, **rules: Any) -> Schema:
    return {"type": kind, **rules}


# serverless-components/tencent-scf serverless.component.yml (v0.9.7): memory list
MEMORY_SIZES = [64, *range(128, 3072 + 1, 128)]
# tencent-scf serverless.component.yml `runtime.allow` (2022) plus Python3.9 and
# Python3.10, SCF runtimes that came after that source. No component source read for
# these rules lists them; the published `scf` component is newer than its public source
# (its documentation, product/1154/43228, has the `http` event the source lacks), and
# only a real deploy confirms that it accepts Python3.10 (README: first-night checklist).
SCF_RUNTIMES_SOURCE = ["Python2.7", "Python3.6", "Python3.7", "Nodejs6.10", "Nodejs8.9",
                       "Nodejs10.15", "Nodejs12.16", "Nodejs14.18", "Nodejs16.13", "Php5",
                       "Php7", "Php7.4", "Php8.0", "Go1", "Java8", "Java11", "CustomRuntime"]
SCF_RUNTIMES = [*SCF_RUNTIMES_SOURCE, "Python3.9", "Python3.10"]
# tencent-multi-scf serverless.component.yml (v0.3.14) `runtime.allow`: no Python3.9/3.10.
MULTI_SCF_RUNTIMES = SCF_RUNTIMES_SOURCE
# tencent-multi-scf serverless.component.yml `region.allow` (the SCF region list both
# components link to: cloud.tencent.com/document/api/583/17238).
REGIONS = ["ap-beijing", "ap-chengdu", "ap-chongqing", "ap-guangzhou", "ap-hongkong",
           "ap-mumbai", "ap-seoul", "ap-shanghai", "ap-shanghai-fsi", "ap-shenzhen-fsi",
           "ap-singapore", "ap-tokyo", "eu-frankfurt", "na-siliconvalley", "na-toronto"]
# SCF timeout: 1-900 s (tencent-scf docs/configure.md `timeout`).
SCF_MAX_TIMEOUT = 900
# RetryNum: function errors are retried at most twice (product/583/41138); the toolkit
# sends the value as is (src/modules/scf/entities/scf.ts updateAsyncRetry()).
MAX_RETRY_NUM = 2
# msgTTL: default 21600 s = 6 h (tencent-scf docs/configure.md; toolkit `|| 21600`).
MAX_MSG_TTL = 21600
# Trigger types the scf component's published version accepts: src/config.js
# `triggerTypes` (2022) plus `http`, documented in product/1154/43228 and implemented in
# tencent-component-toolkit src/modules/triggers/http.ts (added in 2.26.0, 2024-06).
SCF_TRIGGER_TYPES = ["apigw", "cos", "timer", "cmq", "ckafka", "cls", "mps", "clb", "http"]
# API Gateway triggers: no new ones since 2024-07-01, existing ones offline since
# 2025-06-30 (product/583/107631, product/628/106651).
RETIRED_TRIGGER_TYPES = {"apigw": "API Gateway triggers are retired (product/583/107631); "
                                  "use the Function URL (`http` event)"}

_QUALIFIER = _s("string")
TIMER_PARAMETERS = _s("object", keys={  # tencent-scf serverless.component.yml, configure.md
    "name": _s("string"), "qualifier": _QUALIFIER,
    "cronExpression": _s("string", required=True), "enable": _s("boolean"),
    "argument": _s("string"),
})
# tencent-component-toolkit src/modules/triggers/interface/index.ts HttpTriggerInputsParams
# and http.ts formatInputs(); product/1154/43228 (http event); product/583/100227
# (AuthType CAM | NONE, NetConfig EnableIntranet / EnableExtranet, CorsConfig).
HTTP_PARAMETERS = _s("object", keys={
    "name": _s("string"), "qualifier": _QUALIFIER,
    "authType": _s("string", allow=["NONE", "CAM"]),
    "netConfig": _s("object", keys={"enableIntranet": _s("boolean"),
                                    "enableExtranet": _s("boolean")}),
    "corsConfig": _s("object", keys={
        "enable": _s("boolean"), "origins": _s("any"), "methods": _s("any"),
        "headers": _s("any"), "exposeHeaders": _s("any"), "credentials": _s("boolean"),
        "maxAge": _s("number")}),
})
EVENT_PARAMETERS: dict[str, Schema] = {"timer": TIMER_PARAMETERS, "http": HTTP_PARAMETERS}

# The `scf` component's inputs: serverless.component.yml (types and limits) and
# docs/configure.md (the documented fields) of serverless-components/tencent-scf.
SCF_INPUTS: Schema = _s("object", keys={
    "src": _s("src", required=True),
    "type": _s("string", allow=["event", "web"]),
    "name": _s("string", regex=r"^[A-Za-z][\w_-]{0,58}[A-Za-z0-9]$"),
    "namespace": _s("string"),
    "handler": _s("string"),
    "entryFile": _s("string"),
    "role": _s("string"),
    "runtime": _s("string", allow=SCF_RUNTIMES),
    "region": _s("string", allow=REGIONS),
    "description": _s("string"),
    "memorySize": _s("number", allow=MEMORY_SIZES),
    "timeout": _s("number", min=1),
    "initTimeout": _s("number", min=3, max=300),
    "eip": _s("boolean"),
    "publicAccess": _s("boolean"),
    "environment": _s("object", keys={"variables": _s("map")}),
    "vpcConfig": _s("object", keys={"vpcId": _s("string"), "subnetId": _s("string")}),
    "layers": _s("array", items=_s("object", keys={"name": _s("string", required=True),
                                                  "version": _s("number", required=True)})),
    "deadLetter": _s("object", keys={"type": _s("string"), "name": _s("string"),
                                     "filterType": _s("string")}),
    "cls": _s("object", keys={"logsetId": _s("string"), "topicId": _s("string")}),
    "asyncRunEnable": _s("boolean"),
    "traceEnable": _s("boolean"),
    "msgTTL": _s("number", min=1, max=MAX_MSG_TTL),
    "retryNum": _s("number", min=0, max=MAX_RETRY_NUM),
    "installDependency": _s("boolean"),
    "tags": _s("map"),
    "ignoreTriggers": _s("boolean"),
    "events": _s("array"),  # checked event by event below
})


def _kind_ok(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("object", "map"):
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "src":  # a path, or {src|bucket|object|exclude}
        return isinstance(value, (str, dict))
    raise ValueError(kind)


def validate(value: Any, schema: Schema, path: str) -> list[str]:
    """The engine's input validation (serverless/components README.cn.md, "在
    serverless.component.yml 中定义用户可输入的类型"), plus unknown fields."""
    kind = schema["type"]
    if value is None:
        return [f"{path}: is missing or undefined"]
    if not _kind_ok(value, kind):
        return [f"{path}: {value!r} is not a {kind}"]
    problems: list[str] = []
    if "allow" in schema and value not in schema["allow"]:
        problems.append(f"{path}: {value!r} is not one of {schema['allow']}")
    if kind == "number":
        if "min" in schema and value < schema["min"]:
            problems.append(f"{path}: {value} is below {schema['min']}")
        if "max" in schema and value > schema["max"]:
            problems.append(f"{path}: {value} is above {schema['max']}")
    if "regex" in schema and not re.search(schema["regex"], value):
        problems.append(f"{path}: {value!r} does not match {schema['regex']}")
    if kind == "map":
        problems += [f"{path}.{k}: {v!r} is not a string" for k, v in value.items()
                     if not isinstance(v, str)]
    if kind == "object" and "keys" in schema:
        keys: dict[str, Schema] = schema["keys"]
        for name in value:
            if name not in keys:
                problems.append(f"{path}.{name}: unknown field (known: {sorted(keys)})")
        for name, sub in keys.items():
            if name in value:
                problems += validate(value[name], sub, f"{path}.{name}")
            elif sub.get("required"):
                problems.append(f"{path}.{name}: required")
    if kind == "array" and "items" in schema:
        for index, item in enumerate(value):
            problems += validate(item, schema["items"], f"{path}[{index}]")
    return problems


def check_scf_events(events: list[Any], where: str) -> list[str]:
    problems: list[str] = []
    for index, event in enumerate(events):
        path = f"{where}.events[{index}]"
        if not isinstance(event, dict) or len(event) != 1:
            problems.append(f"{path}: one trigger type per entry, e.g. `- timer: {{...}}`")
            continue
        (kind, body), = event.items()
        if kind in RETIRED_TRIGGER_TYPES:
            problems.append(f"{path}: {RETIRED_TRIGGER_TYPES[kind]}")
            continue
        if kind not in SCF_TRIGGER_TYPES:  # tencent-scf src/utils.js formatInputs()
            problems.append(f"{path}: Unknow trigger type {kind}, must be one of {SCF_TRIGGER_TYPES}")
            continue
        if kind not in EVENT_PARAMETERS:
            problems.append(f"{path}: {kind} triggers are not part of this product's deploy")
            continue
        # tencent-scf docs/configure.md `Event`: parameters (required) and name.
        problems += validate(body, _s("object", keys={
            "parameters": {**EVENT_PARAMETERS[kind], "required": True},
            "name": _s("string")}), f"{path}.{kind}")
    return problems


# -- SCF cron (product/583/9708): second minute hour day month weekday year ------------
CRON_RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6), (1970, 2099)]


def cron_problems(expression: str) -> list[str]:
    fields = expression.split()
    if len(fields) != 7:
        return [f"cron {expression!r}: 7 fields (second minute hour day month weekday year)"]
    problems = []
    for text, (low, high) in zip(fields, CRON_RANGES):
        for part in text.split(","):
            match = re.fullmatch(r"(\*|\?|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
            if match is None:
                problems.append(f"cron {expression!r}: bad field {text!r}")
                continue
            numbers = [int(n) for n in match.group(2, 3) if n is not None]
            if any(not low <= n <= high for n in numbers) or match.group(4) == "0":
                problems.append(f"cron {expression!r}: {text!r} outside {low}-{high}")
    return problems


# -- multi-scf (kept to show why it is not used, and to check old deploy files) ---------
# tencent-multi-scf src/formatter.ts formatTriggerInputs(); toolkit ^2.24.1 at its last
# source commit has no `http` trigger (added in toolkit 2.26.0).
MULTI_SCF_TRIGGER_TYPES = ["timer", "cos", "apigw", "ckafka", "cmq", "cls", "mps", "clb"]


def _js(value: Any) -> str:
    """How a template string shows a value: a missing one is `undefined`."""
    return "undefined" if value is None else str(value)


def check_multi_scf(inputs: dict[str, Any]) -> list[str]:
    problems = validate(inputs.get("region", "ap-guangzhou"), _s("string", allow=REGIONS),
                        "inputs.region")
    if "runtime" in inputs:  # serverless.component.yml `runtime.allow`
        problems += validate(inputs["runtime"], _s("string", allow=MULTI_SCF_RUNTIMES),
                             "inputs.runtime")
    functions = inputs.get("functions") or {}
    keys = set(functions) if isinstance(functions, dict) else {
        f.get("key") for f in functions if isinstance(f, dict)}
    for index, trigger in enumerate(inputs.get("triggers") or []):
        path = f"inputs.triggers[{index}]"
        kind = trigger.get("type")
        if kind in RETIRED_TRIGGER_TYPES:
            problems.append(f"{path}: {RETIRED_TRIGGER_TYPES[kind]}")
        if kind not in MULTI_SCF_TRIGGER_TYPES:
            problems.append(f"{path}: multi-scf has no {kind!r} trigger")
        if kind == "apigw":  # formatter.ts reads `function` inside each apis[] entry only
            for api in (trigger.get("parameters") or {}).get("apis") or []:
                if api.get("function") not in keys:
                    problems.append(f"{path}: Function {_js(api.get('function'))} not in deploy list "
                                    "(apigw reads `function` inside apis[])")
            if not (trigger.get("parameters") or {}).get("apis"):
                problems.append(f"{path}: apigw trigger without apis[]")
        elif trigger.get("function") not in keys:
            problems.append(f"{path}: Function {_js(trigger.get('function'))} not in deploy list")
    return problems


# -- the project ------------------------------------------------------------------------

@dataclass
class Project:
    """The deploy files as written: the top-level serverless.yml and each instance folder's."""

    root: dict[str, Any]
    instances: dict[str, dict[str, Any]]


def load_project(directory: Path) -> Project:
    root = yaml.safe_load((directory / "serverless.yml").read_text(encoding="utf-8")) or {}
    instances = {}
    # basic.js runningTemplate(): every sub-folder not starting with "." that has a
    # serverless.yml (the CLI also accepts .yaml/.json; this project uses .yml).
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for name in ("serverless.yml", "serverless.yaml", "serverless.json"):
            if (sub / name).is_file():
                instances[sub.name] = yaml.safe_load((sub / name).read_text(encoding="utf-8")) or {}
    return Project(root, instances)


@dataclass
class Product:
    """What the product needs from the deployment."""

    root: Path                     # the folder `scf deploy` runs in
    package_dir: Path              # scripts.build_package.PACKAGE
    handler_sources: dict[str, Path]  # module at the package root -> the file the build copies
    start_budget: float            # shared.config.Timing
    poll_budget: float
    finish_budget: float
    copy_lease: float
    function_names: dict[str, str]  # role -> shared.config.DispatchSettings' *_function
    namespace: str


SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "KEY")
# SCF environment variables (its docs, 环境变量): these prefixes are reserved, and all of a
# function's variables together may take 4 KB; the rules tests/test_package.py already used.
RESERVED_ENV_PREFIXES = ("SCF_", "QCLOUD_", "TENCENTCLOUD_")
ENV_LIMIT_BYTES = 4096
ROLES = {"trigger": "trigger.main_handler", "poller": "poller.main_handler",
         "finisher": "finisher.main_handler"}


def instance_configs(project: Project) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The instance files as the CLI sends them: app/stage inherited, then resolved."""
    problems: list[str] = []
    if project.root.get("component") or project.root.get("service"):
        # basic.js isDeployableProjectExists(): then only this file is deployed.
        return {"serverless.yml": project.root}, problems
    if not project.instances:
        problems.append("serverless.yml has no component and no folder holds an instance")
    configs = {}
    for folder, raw in project.instances.items():
        where = f"{folder}/serverless.yml"
        if not raw.get("component"):  # runningTemplate(): a folder without one stops it
            problems.append(f"{where}: no `component`, so `scf deploy` would not deploy the folders")
            continue
        if not raw.get("name"):  # utils.js checkBasicConfigValidation()
            problems.append(f"{where}: no `name`")
        document = dict(raw)
        document.setdefault("stage", "dev")  # loadInstanceConfigUncached()
        for key in ("app", "stage", "org"):  # inherited from the parent file when it sets them
            if project.root.get(key):
                document[key] = project.root[key]
        document.setdefault("app", document.get("name"))
        configs[where] = document
    return configs, problems


def check_project(project: Project, environ: Mapping[str, str], product: Product) -> list[str]:
    configs, problems = instance_configs(project)
    resolved: dict[str, dict[str, Any]] = {}
    for where, document in configs.items():
        resolution = resolve_variables(document, environ, f"{where}: ")
        problems += resolution.problems
        resolved[where] = resolution.value
    names = [d.get("name") for d in resolved.values()]
    problems += [f"instance name {n!r} used twice" for n in set(names) if names.count(n) > 1]
    if len({(d.get("app"), d.get("stage")) for d in resolved.values()}) > 1:
        problems.append("instances must share app and stage (checkTemplateAppAndStage())")
    functions: dict[str, tuple[str, dict[str, Any]]] = {}  # role -> (where, inputs)
    for where, document in resolved.items():
        component = document.get("component")
        inputs = document.get("inputs") or {}
        if component == "multi-scf":
            problems += [f"{where}: {p}" for p in check_multi_scf(inputs)]
            problems.append(f"{where}: multi-scf has no Function URL trigger; deploy the "
                            "three functions as `scf` instances")
            continue
        if component != "scf":
            problems.append(f"{where}: component {component!r}: this deploy uses `scf`")
            continue
        problems += validate(inputs, SCF_INPUTS, f"{where}: inputs")
        problems += check_scf_events(inputs.get("events") or [], f"{where}: inputs")
        role = next((r for r, h in ROLES.items() if inputs.get("handler") == h), None)
        if role is None:
            problems.append(f"{where}: handler {inputs.get('handler')!r} is none of {sorted(ROLES.values())}")
        elif role in functions:
            problems.append(f"{where}: a second {role} function")
        else:
            functions[role] = (where, inputs)
        problems += _check_function(where, inputs, product)
    multi_scf = any(d.get("component") == "multi-scf" for d in resolved.values())
    for role, handler in ROLES.items():
        if role not in functions and not multi_scf:
            problems.append(f"no instance deploys the {role} function ({handler})")
    problems += _check_roles(functions, product)
    problems += _check_raw_environment(project)
    return problems


def _check_function(where: str, inputs: dict[str, Any], product: Product) -> list[str]:
    problems: list[str] = []
    handler = str(inputs.get("handler", ""))
    module, _, attribute = handler.partition(".")
    # SCF: `file.function`, the file at the package root (product/583/19805);
    # scripts/build_package.py copies functions/<name>/index.py to <name>.py there.
    if "/" in module or not attribute:
        problems.append(f"{where}: handler {handler!r} must be file.function at the package root")
    source = product.handler_sources.get(module)
    if source is None or not source.is_file():
        problems.append(f"{where}: handler {handler!r}: the build puts no {module}.py in the package")
    elif f"def {attribute}(" not in source.read_text(encoding="utf-8"):
        problems.append(f"{where}: {source.name} defines no {attribute}()")
    src = inputs.get("src")
    src_path = src.get("src") if isinstance(src, dict) else src
    instance_dir = product.root / where.split("/", maxsplit=1)[0]
    if not isinstance(src_path, str) or (instance_dir / src_path).resolve() != product.package_dir.resolve():
        problems.append(f"{where}: src {src_path!r} is not the built package ({product.package_dir})")
    if inputs.get("runtime") != "Python3.10":  # the package is built for CPython 3.10
        problems.append(f"{where}: runtime must be Python3.10 (the package's wheels and bytecode)")
    timeout = inputs.get("timeout")
    if isinstance(timeout, (int, float)) and timeout > SCF_MAX_TIMEOUT:
        problems.append(f"{where}: timeout {timeout} is above SCF's {SCF_MAX_TIMEOUT} s")
    if inputs.get("namespace", "default") != product.namespace:
        problems.append(f"{where}: namespace {inputs.get('namespace')!r} is not dispatch.namespace "
                        f"{product.namespace!r}")
    uses_async = [k for k in ("retryNum", "msgTTL", "traceEnable") if k in inputs]
    if uses_async and inputs.get("asyncRunEnable") is not True:
        # toolkit src/modules/scf/index.ts deploy(): updateAsyncRetry() only then.
        problems.append(f"{where}: {uses_async} take effect only with asyncRunEnable: true")
    variables = (inputs.get("environment") or {}).get("variables") or {}
    reserved = [k for k in variables if str(k).startswith(RESERVED_ENV_PREFIXES)]
    if reserved:
        problems.append(f"{where}: reserved environment variable names {reserved}")
    size = sum(len(str(k)) + len(str(v)) for k, v in variables.items())
    if size > ENV_LIMIT_BYTES:
        problems.append(f"{where}: environment variables take {size} bytes, SCF allows {ENV_LIMIT_BYTES}")
    if "BAAS_BACKUP_CONFIG" not in variables:
        problems.append(f"{where}: BAAS_BACKUP_CONFIG is not set")
    finisher = product.function_names["finisher"]
    if variables.get("BAAS_BACKUP_FINISHER", finisher) != finisher:
        problems.append(f"{where}: BAAS_BACKUP_FINISHER {variables.get('BAAS_BACKUP_FINISHER')!r} "
                        f"is not the finisher {finisher!r}")
    return problems


def _timers(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["timer"].get("parameters") or {} for e in inputs.get("events") or []
            if isinstance(e, dict) and isinstance(e.get("timer"), dict)]


def _urls(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["http"].get("parameters") or {} for e in inputs.get("events") or []
            if isinstance(e, dict) and isinstance(e.get("http"), dict)]


def _check_roles(functions: dict[str, tuple[str, dict[str, Any]]], product: Product) -> list[str]:
    problems: list[str] = []
    for role, (where, inputs) in functions.items():
        expected_name = product.function_names[role]
        if inputs.get("name") != expected_name:
            problems.append(f"{where}: function name {inputs.get('name')!r}, expected {expected_name!r}")
        for timer in _timers(inputs):
            problems += [f"{where}: {p}" for p in cron_problems(str(timer.get("cronExpression", "")))]
            if timer.get("enable") is not True:  # toolkit timer.ts: CLOSE unless enable
                problems.append(f"{where}: timer {timer.get('name')!r} needs enable: true")
            if timer.get("qualifier", "$DEFAULT") != "$DEFAULT":
                problems.append(f"{where}: timer bound to {timer.get('qualifier')!r}, which this deploy "
                                "does not publish; use $DEFAULT")
        urls = _urls(inputs)
        if role == "trigger":
            if len(urls) != 1:
                problems.append(f"{where}: the trigger needs exactly one Function URL (`http` event), "
                                f"found {len(urls)}")
            for url in urls:
                if url.get("authType", "NONE") != "NONE":
                    problems.append(f"{where}: Function URL authType must be NONE (the product checks its "
                                    "bearer token; a CAM-signed URL cannot be opened from a phone)")
                if (url.get("netConfig") or {}).get("enableExtranet") is not True:
                    problems.append(f"{where}: Function URL needs netConfig.enableExtranet: true "
                                    "(toolkit http.ts defaults it to false)")
                if url.get("qualifier", "$DEFAULT") != "$DEFAULT":
                    problems.append(f"{where}: Function URL bound to {url.get('qualifier')!r}; use $DEFAULT")
        elif urls:
            problems.append(f"{where}: only the trigger function has a Function URL")
    timers = {role: _timers(inputs) for role, (_, inputs) in functions.items()}
    if "trigger" in timers and [t.get("cronExpression") for t in timers["trigger"]] != ["0 0 2 * * * *"]:
        problems.append("trigger: one timer, nightly at 02:00 ('0 0 2 * * * *')")
    if "poller" in timers and [str(t.get("cronExpression", "")).split()[:3] for t in timers["poller"]] != [["0", "*/1", "*"]]:
        problems.append("poller: one timer, every minute ('0 */1 * * * * *')")
    if timers.get("finisher"):
        problems.append("finisher: no timer (the poller invokes it)")
    if "trigger" in functions and not _timeout_above(functions["trigger"][1], product.start_budget):
        problems.append(f"trigger: timeout must exceed timing.start_budget_seconds ({product.start_budget})")
    if "poller" in functions and not _timeout_above(functions["poller"][1], product.poll_budget):
        problems.append(f"poller: timeout must exceed timing.poll_budget_seconds ({product.poll_budget})")
    if "finisher" in functions:
        where, inputs = functions["finisher"]
        timeout = inputs.get("timeout")
        if not isinstance(timeout, (int, float)) or not product.finish_budget < timeout < product.copy_lease:
            problems.append(f"{where}: timeout {timeout!r} must exceed timing.finish_budget_seconds "
                            f"({product.finish_budget}) and stay below timing.copy_lease_seconds "
                            f"({product.copy_lease}), so a running copy is never handed out twice")
        if inputs.get("asyncRunEnable") is True:
            # product/583/51519 注意事项: an async-execution function answers a synchronous
            # Invoke with its request id only (the doctor's probe) and retries no error
            problems.append(f"{where}: no async execution (asyncRunEnable): doctor's "
                            "synchronous probe would get no answer and errors no retry")
    eips = {role: inputs.get("eip", False) for role, (_, inputs) in functions.items()}
    if len(set(eips.values())) > 1:
        problems.append(f"eip differs between the functions {eips}: all three call the platforms' APIs")
    env = {role: dict((inputs.get("environment") or {}).get("variables") or {})
           for role, (_, inputs) in functions.items()}
    if "trigger" in env and "BAAS_BACKUP_API_TOKEN" not in env["trigger"]:
        problems.append("trigger: BAAS_BACKUP_API_TOKEN is not set (the HTTP API would answer 503)")
    for role, variables in env.items():
        if role != "trigger" and "BAAS_BACKUP_API_TOKEN" in variables:
            problems.append(f"{role}: only the trigger needs BAAS_BACKUP_API_TOKEN")
    shared_env = {role: {k: v for k, v in variables.items() if k != "BAAS_BACKUP_API_TOKEN"}
                  for role, variables in env.items()}
    if len({tuple(sorted(v.items())) for v in shared_env.values()}) > 1:
        problems.append("the three functions' environment variables differ (apart from the API token)")
    return problems


def _timeout_above(inputs: dict[str, Any], budget: float) -> bool:
    timeout = inputs.get("timeout")
    return isinstance(timeout, (int, float)) and timeout > budget


def _check_raw_environment(project: Project) -> list[str]:
    """Secrets reach the functions only as ${env:NAME}, never as literals in the repo."""
    problems = []
    for folder, raw in project.instances.items():
        variables = ((raw.get("inputs") or {}).get("environment") or {}).get("variables") or {}
        for key, value in variables.items():
            if any(word in str(key) for word in SECRET_WORDS) and not re.fullmatch(
                    r"\$\{env:[A-Z][A-Z0-9_]*\}", str(value)):
                problems.append(f"{folder}/serverless.yml: {key} must be ${{env:NAME}}, not a literal")
    return problems
