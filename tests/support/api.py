"""The HTTP API as SCF runs it: Function URL events (API Gateway events where a test says
so) into the real trigger handler (functions/trigger/index.py), every answer checked
against docs/openapi.yaml."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS31Validator

from devkit.sample_data import make_docs
from shared.bootstrap import build_context
from shared.config import load_config
from shared.entrypoints.http_api import TOKEN_ENV
from shared.service.context import Context
from tests.support.backup import LocalBackup
from tests.support.handlers import load_handler

ROOT = Path(__file__).resolve().parent.parent.parent
SPEC = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
TOKEN = "test-api-token-0a1b2c3d4e5f6a7b8c9d"


# helpers shared with test_status_page.py ----------------------------------------------
def _schema_validator(schema: dict[str, Any]) -> OAS31Validator:
    # the components ride along so that "#/components/schemas/..." resolves
    return OAS31Validator({**schema, "components": SPEC["components"]})


def _spec_path(path: str) -> str:
    """The OpenAPI path template a concrete path belongs to."""
    for template in SPEC["paths"]:
        regex = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "/?$"
        if re.match(regex, path.split("?", maxsplit=1)[0]):
            return str(template)
    raise AssertionError(f"{path} is not in docs/openapi.yaml")


def check_against_spec(method: str, path: str, response: dict[str, Any]) -> None:
    """The status is documented for the route and a JSON body validates against its schema."""
    status = str(response["statusCode"])
    headers = {k.lower(): v for k, v in response["headers"].items()}
    try:
        operation = SPEC["paths"][_spec_path(path)][method.lower()]
    except (AssertionError, KeyError):
        assert status in ("404", "405", "503", "413", "400"), (method, path, status)
        assert json.loads(response["body"]).keys() == {"error", "field"}
        return
    documented = operation["responses"].get(status)
    assert documented is not None, f"{method} {path} answered {status}, not in docs/openapi.yaml"
    if "$ref" in documented:
        documented = SPEC["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    content_type = headers["content-type"].split(";")[0]
    assert content_type in documented["content"], (method, path, status, content_type)
    if content_type == "application/json":
        _schema_validator(documented["content"][content_type]["schema"]).validate(
            json.loads(response["body"]))
    for name in documented.get("headers", {}):
        assert name.lower() in headers, f"{method} {path} {status} lacks header {name}"


def _headers(token: str | None, body: Any, headers: dict[str, str] | None, host: str) -> dict[str, str]:
    all_headers = {"host": host, "user-agent": "pytest"}
    if body is not None:
        all_headers["content-type"] = "application/json"
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    all_headers.update(headers or {})
    return all_headers


def url_event(method: str, path: str, *, token: str | None = TOKEN, body: Any = None,
              raw_body: str | None = None, headers: dict[str, str] | None = None,
              query: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Function URL event for an event function, field for field as documented
    (cloud.tencent.com/document/product/583/96099): no requestContext, no base64 flag."""
    text = raw_body if raw_body is not None else ("" if body is None else json.dumps(body))
    all_headers = _headers(token, body, headers, "1250000000-abcdefgh.ap-guangzhou.tencentscf.com")
    all_headers["x-scf-remote-addr"] = "203.0.113.9"
    return {"httpMethod": method, "path": path, "headers": all_headers,
            "queryString": query or {}, "body": text}


def gateway_event(method: str, path: str, *, token: str | None = TOKEN, body: Any = None,
                  raw_body: str | None = None, headers: dict[str, str] | None = None,
                  query: dict[str, Any] | None = None, base64_body: bool = False,
                  api_path: str = "/") -> dict[str, Any]:
    """An API Gateway event as SCF delivers it (product/583/12513), for users who still
    have an API Gateway trigger."""
    text = raw_body if raw_body is not None else ("" if body is None else json.dumps(body))
    if base64_body:
        text = base64.b64encode(text.encode()).decode()
    return {
        "httpMethod": method, "path": path,
        "headers": _headers(token, body, headers, "service-test.gz.apigw.tencentcs.com"),
        "queryString": query or {}, "queryStringParameters": query or {}, "pathParameters": {},
        "body": text, "isBase64Encoded": base64_body,
        "requestContext": {"serviceId": "service-test", "path": api_path, "httpMethod": method,
                           "requestId": "req-1", "sourceIp": "203.0.113.9", "stage": "release"},
    }


def check_response_shape(response: dict[str, Any], gateway: bool) -> None:
    """Function URL: statusCode, headers, body (product/583/96099); API Gateway's
    integrated response adds isBase64Encoded (product/583/12513)."""
    expected = {"statusCode", "headers", "body"} | ({"isBase64Encoded"} if gateway else set())
    assert set(response) == expected, sorted(response)
    assert isinstance(response["statusCode"], int) and isinstance(response["body"], str)
    assert all(isinstance(v, str) for v in response["headers"].values())
    if gateway:
        assert response["isBase64Encoded"] is False


@dataclass
class Api:
    local: LocalBackup
    config_path: Path

    def __post_init__(self) -> None:
        self.trigger = load_handler("trigger")

    def call(self, method: str, path: str, *, gateway: bool = False, invocation: Any = None,
             **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
        """One request through a Function URL event, or an API Gateway event if `gateway`;
        `invocation` is SCF's context argument (e.g. its `time_limit_in_ms`)."""
        event = (gateway_event if gateway else url_event)(method, path, **kwargs)
        response = self.trigger.main_handler(event, invocation)
        check_response_shape(response, gateway)
        mount = kwargs.get("api_path", "/").rstrip("/")
        check_against_spec(method, path.removeprefix(mount) or "/", response)
        headers = {k.lower(): v for k, v in response["headers"].items()}
        body = response["body"]
        if headers["content-type"].startswith("application/json"):
            body = json.loads(body)
        return response["statusCode"], body, headers

    def context(self) -> Context:
        return build_context(load_config(self.config_path), environ=self.local.environ)

    def runs(self) -> list[Any]:
        return self.context().state.list_runs(100)

    def exports(self) -> int:
        return len(self.local.emulator.export_jobs())


def deploy(local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    """Config file and environment as SCF gives them to the trigger: two sources."""
    local.seed("orders", make_docs(20))
    local.seed("users", make_docs(5, prefix="u"))
    return deploy_sources(local, tmp_path, monkeypatch,
                          local.wechat_source(collections=["orders", "users"]),
                          local.wechat_source(name="archive", collections=["orders"],
                                              file_type="csv"))


def deploy_sources(local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   *sources: dict[str, Any], **timing: Any) -> Api:
    """The trigger deployed with these sources (secrets as ${VAR}, as written)."""
    config = local.config(*sources, **timing)
    document: dict[str, Any] = json.loads(config.model_dump_json(exclude={"sources"}))
    document["sources"] = list(sources)
    for name in ("secret_id", "secret_key"):
        document["destination"].pop(name, None)
    path = tmp_path / "backup.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("BAAS_BACKUP_CONFIG", str(path))
    for name, value in local.environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return Api(local, path)


