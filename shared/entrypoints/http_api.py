"""The trigger function's HTTP API (its Function URL, or an API Gateway trigger a user
still has): start a backup, list runs, show one run, verify and restore (routes in
http_restores.py), and the status page. Public on the
internet (the Function URL's authType is NONE), so it lets in only its owner: every data
route needs the bearer token from $BAAS_BACKUP_API_TOKEN, and with no token configured
every route answers 503 (closed, never open).

Routes are pure functions from a parsed `Request` (and a service context, built only
after the caller is let in) to a `Response`; `handle_event` adapts both event kinds.
docs/openapi.yaml describes these routes; a test keeps the two in step.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import json
import logging
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from shared.config import ConfigError
from shared.domain.errors import BackupError, Retryable, RetryLater
from shared.domain.jobs import Job, JobStatus, Run
from shared.entrypoints import status_page
from shared.logs import log_context, redact, register_secret
from shared.ports import StateStore
from shared.service.context import Context
from shared.service.start import UnknownSource, asked, start_run

log = logging.getLogger(__name__)

TOKEN_ENV = "BAAS_BACKUP_API_TOKEN"  # noqa: S105 (the variable's name, not a token)
MIN_TOKEN_LENGTH = 16
# .env.example's placeholders start so (BAAS_BACKUP_API_TOKEN=replace-with-a-long-random-token):
# long enough, but published with the code, and the Function URL is open to the internet.
PLACEHOLDER_PREFIX = "replace-with"
MAX_BODY_BYTES = 16 * 1024
MAX_IDEMPOTENCY_KEY = 200
HTTP_START_BUDGET_SECONDS = 10.0  # a person waits for POST /runs; the trigger's timeout is 120 s
DEFAULT_PAGE = 20
MAX_PAGE = 100
# \Z, not $: `$` also matches before a final newline, and "<id>\n" sorts after "<id>"
RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}([0-9]{3})?Z-[0-9a-f]{8}\Z")
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: safe in a header and a log line
# A token the status page can send: fetch() throws on a header value past U+00FF (Headers
# take a ByteString, https://webidl.spec.whatwg.org/#idl-ByteString) or holding a line
# break (https://fetch.spec.whatwg.org/#header-value), and sends U+0080-U+00FF as one byte
# each where curl sends UTF-8; how SCF decodes such bytes is not documented
# (product/583/96099 shows `headers` as strings only). Only ASCII works from both.
_SENDABLE = re.compile(r"[\x20-\x7e]+\Z")

JSON_TYPE = "application/json; charset=utf-8"
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


# requests and responses ------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)  # names in lower case
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    request_id: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Response:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)

    def to_event(self, kind: str = "url") -> dict[str, Any]:
        """The answer SCF turns into the HTTP response.

        Function URL: `statusCode`, `headers`, `body` (cloud.tencent.com/document/product/
        583/96099, 事件函数 -> 响应参数). API Gateway's integrated response adds
        `isBase64Encoded` (product/583/12513), which Function URLs accept too ("函数 URL
        兼容 apigw 响应集成", product/583/107631); it is sent only to API Gateway."""
        answer: dict[str, Any] = {"statusCode": self.status, "headers": dict(self.headers),
                                  "body": self.body}
        return {"isBase64Encoded": False, **answer} if kind == GATEWAY else answer


def json_response(status: int, document: Any, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    return Response(status, body, {"Content-Type": JSON_TYPE, **_NO_STORE, **(headers or {})})


class HttpError(Exception):
    """Ends a request with `{"error": message, "field": field}`."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return json_response(self.status, {"error": self.message, "field": self.field}, self.headers)


# Function URL and API Gateway events ------------------------------------------------
URL, GATEWAY = "url", "gateway"
_FUNCTION_URL_DOC = "cloud.tencent.com/document/product/583/96099"


def event_kind(event: Mapping[str, Any]) -> str:
    """Which HTTP entry sent the event. Both carry `httpMethod`, `path`, `headers`,
    `queryString` and `body`; the Function URL event is API Gateway's without
    `requestContext`, `headerParameters`, `pathParameters`, `queryStringParameters` and
    `isBase64Encoded` (product/583/96099: "兼容apigw协议 ... 去掉 ... 相关字段"), so
    `requestContext` tells them apart (API Gateway: product/583/12513)."""
    return GATEWAY if isinstance(event.get("requestContext"), Mapping) else URL


def request_from_event(event: Mapping[str, Any], request_id: str = "") -> Request:
    """A Function URL or API Gateway event as a Request; an oversized or undecodable body,
    or an event whose shape we do not recognise, is an HttpError."""
    kind = event_kind(event)
    _check_shape(event, kind)
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    context = event.get("requestContext") or {}
    raw = event.get("body") or ""
    if not isinstance(raw, str):
        raise HttpError(400, "the request body must be text", "body")
    # base64 grows a body by a third: refuse before decoding anything large
    if len(raw) > MAX_BODY_BYTES * 4 // 3 + 4:
        raise _too_large(len(raw))
    # A Function URL passes the body as text with no base64 flag (product/583/96099);
    # API Gateway flags a base64 body. The flag is honoured wherever it appears.
    if _truthy(event.get("isBase64Encoded", False)):
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise HttpError(400, "isBase64Encoded is true but the body is not valid base64",
                            "body") from None
    else:
        body = raw.encode("utf-8", "surrogatepass")
    if len(body) > MAX_BODY_BYTES:
        raise _too_large(len(body))
    path = str(event.get("path") or "/")
    if kind == GATEWAY:
        path = _route_path(path, str(context.get("path") or ""))
    return Request(
        method=str(event.get("httpMethod") or "GET").upper(),
        path=path if path.startswith("/") else "/" + path,
        headers=headers,
        query=_query(event),
        body=body,
        request_id=str(context.get("requestId") or "") or request_id,
    )


def _check_shape(event: Mapping[str, Any], kind: str) -> None:
    """Fail loudly, naming the field, when SCF sends a shape the docs do not describe."""
    doc = _FUNCTION_URL_DOC if kind == URL else "cloud.tencent.com/document/product/583/12513"
    expected: list[tuple[str, type | tuple[type, ...], bool]] = [
        ("httpMethod", str, True), ("path", str, kind == URL),
        ("headers", Mapping, False), ("queryString", Mapping, False),
        ("queryStringParameters", Mapping, False),
    ]
    for name, kinds, required in expected:
        value = event.get(name)
        if value is None and not required:
            continue
        if not isinstance(value, kinds):
            shown = "missing" if value is None else type(value).__name__
            raise HttpError(500, f"the {'Function URL' if kind == URL else 'API Gateway'} event's "
                                 f"{name!r} is {shown}, not the documented shape ({doc}); check "
                                 "the trigger function's triggers and report this event's shape",
                            name)


def _too_large(size: int) -> HttpError:
    return HttpError(413, f"the request body is {size} bytes; the limit is {MAX_BODY_BYTES} "
                          "bytes (a run request is a few hundred)", "body")


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _route_path(path: str, api_path: str) -> str:
    """The path below the API's own path, so the API can be mounted at /backup as well as /.

    API Gateway prefix-matches plain API paths and passes the full request path (without
    the stage); `requestContext.path` is the API's configured path. A Function URL has no
    mount point: its `path` is the request's path (product/583/96099).
    """
    if api_path and api_path != "/" and not re.search(r"[{}=^~]", api_path):
        base = api_path.rstrip("/")
        if path == base or path.startswith(base + "/"):
            path = path[len(base):]
    return path if path.startswith("/") else "/" + path


def _query(event: Mapping[str, Any]) -> dict[str, str]:
    """`queryString` in both kinds (API Gateway also sends `queryStringParameters`). A
    repeated name arrives as a list from API Gateway; a Function URL's form is not
    documented, so a list there is treated the same way: refused unless it has one value."""
    raw = event.get("queryString") or event.get("queryStringParameters") or {}
    query: dict[str, str] = {}
    for name, given in raw.items():
        value = given
        if isinstance(given, list):
            if len(given) != 1:
                raise HttpError(400, f"query parameter {name!r} is given {len(given)} times; "
                                     "give it once", str(name))
            value = given[0]
        query[str(name)] = "" if value is None else str(value)
    return query


# routing ---------------------------------------------------------------------------
ContextFactory = Callable[[], Context]
Handler = Callable[[Request, Mapping[str, str], ContextFactory], Response]


@dataclass(frozen=True)
class Route:
    pattern: str  # OpenAPI style: /runs/{run_id}
    methods: Mapping[str, Handler]
    public: frozenset[str] = frozenset()  # methods served without the token (the page shell)
    # query parameters each method reads; any other is refused, never ignored (a route
    # that reads its body would otherwise act on `?sources=` or `?preview=` as if unsent)
    query: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def match(self, path: str) -> dict[str, str] | None:
        regex = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.pattern)) + "/?$"
        found = re.match(regex, path)
        return found.groupdict() if found else None


def handle_event(event: Mapping[str, Any], context: ContextFactory,
                 environ: Mapping[str, str] | None = None, request_id: str = "") -> dict[str, Any]:
    """One Function URL or API Gateway event in, the response its entry wants out.
    `request_id` is SCF's (the invocation context's); API Gateway events carry their own."""
    kind = event_kind(event)
    try:
        request = request_from_event(event, request_id)
    except HttpError as exc:
        token_problem = _token_problem(os.environ if environ is None else environ)
        return (token_problem or exc).response().to_event(kind)
    return handle(request, context, environ).to_event(kind)


def handle(request: Request, context: ContextFactory,
           environ: Mapping[str, str] | None = None) -> Response:
    with log_context(request_id=request.request_id or None):
        try:
            response = _dispatch(request, context, os.environ if environ is None else environ)
        except HttpError as exc:
            response = exc.response()
        except (Retryable, RetryLater) as exc:  # a store or platform down: not a bug
            log.warning("HTTP request could not be answered now", extra={
                "method": request.method, "path": request.path, "reason": redact(str(exc))})
            response = _unavailable(exc).response()
        except Exception:  # a bug answers 500 without details; the log has them
            log.exception("HTTP request failed", extra={"method": request.method, "path": request.path})
            response = json_response(500, {"error": "internal error; see the trigger function's logs",
                                           "field": None})
        log.info("HTTP request", extra={"method": request.method, "path": request.path,
                                        "status": response.status})
        return response


def _unavailable(exc: Retryable | RetryLater) -> HttpError:
    """503 quoting what did not answer (errors name what to check, never a secret; redacted
    again all the same): the owner on a phone has no log to read."""
    return HttpError(503, f"{redact(str(exc))}; try again in a minute (a POST with an "
                          "Idempotency-Key is safe to send again)", None)


def _dispatch(request: Request, context: ContextFactory, environ: Mapping[str, str]) -> Response:
    problem = _token_problem(environ)
    if problem:
        raise problem
    for route in ROUTES:
        params = route.match(request.path)
        if params is None:
            continue
        handler = route.methods.get(request.method)
        if handler is None:
            allowed = ", ".join(route.methods)
            raise HttpError(405, f"{request.method} is not allowed on {route.pattern}; use {allowed}",
                            None, {"Allow": allowed})
        if request.method not in route.public:
            _authenticate(request, environ[TOKEN_ENV])
            _known_query(request, route)
        return handler(request, params, context)
    routes = ", ".join(f"{' '.join(r.methods)} {r.pattern}" for r in ROUTES)
    raise HttpError(404, f"no route for {request.path!r}; the routes are: {routes}", None)


def _known_query(request: Request, route: Route) -> None:
    """400 naming the first query parameter `route` does not read for this method."""
    taken = route.query.get(request.method, ())
    for name in request.query:
        if name in taken:
            continue
        where = f"{request.method} {route.pattern}"
        fix = (f"it takes only {' and '.join(taken)}" if taken else
               "send it in the JSON body" if request.method == "POST" else "it takes none")
        raise HttpError(400, f"unknown query parameter {name[:80]!r} on {where}; {fix}",
                        name[:80])


def _token_problem(environ: Mapping[str, str]) -> HttpError | None:
    token = environ.get(TOKEN_ENV, "")
    if not token.strip():
        return HttpError(503, f"the HTTP API is closed: set the environment variable {TOKEN_ENV} "
                              "of the trigger function to a long random token "
                              "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if len(token) < MIN_TOKEN_LENGTH or token != token.strip():
        return HttpError(503, f"the HTTP API is closed: {TOKEN_ENV} must be at least "
                              f"{MIN_TOKEN_LENGTH} characters without surrounding spaces; set a "
                              "long random token (python -c 'import secrets; "
                              "print(secrets.token_urlsafe(32))')")
    if token.lower().startswith(PLACEHOLDER_PREFIX):
        return HttpError(503, f"the HTTP API is closed: {TOKEN_ENV} is still the placeholder "
                              ".env.example ships, which anyone can read in the repository; set a "
                              "long random token of your own in .env (python -c 'import secrets; "
                              "print(secrets.token_urlsafe(32))') and scf deploy again")
    if not _SENDABLE.match(token):  # the token itself is never quoted: this answer is public
        return HttpError(503, f"the HTTP API is closed: {TOKEN_ENV} has a character a browser "
                              "cannot send in a header (a line break, or one outside ASCII); "
                              "set a token of ASCII letters, digits and punctuation only "
                              "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    register_secret(token)  # masked wherever it might appear in a log line
    return None


def _authenticate(request: Request, expected: str) -> None:
    challenge = 'Bearer realm="baas-backup"'
    header = request.header("authorization") or ""
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise HttpError(401, "this route needs the API token: send the header "
                             f"'Authorization: Bearer <token>' with the value of {TOKEN_ENV}",
                        "Authorization", {"WWW-Authenticate": challenge})
    if not hmac.compare_digest(presented.strip().encode("utf-8"), expected.encode("utf-8")):
        raise HttpError(401, f"the bearer token is wrong; use the value of {TOKEN_ENV}",
                        "Authorization",
                        {"WWW-Authenticate": challenge + ', error="invalid_token"'})


def service(context: ContextFactory) -> Context:
    try:
        return context()
    except ConfigError as exc:
        # after authentication only: the owner needs to know, and config errors never echo secrets
        # the problems only: where the config file lives is none of a caller's business
        raise HttpError(500, "the trigger function's config is invalid: "
                             + "; ".join(exc.problems)) from None


# POST /runs ------------------------------------------------------------------------
class StartRunBody(BaseModel):
    """What to back up; everything when both are left out."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    sources: list[StrictStr] | None = Field(default=None, min_length=1)
    collections: dict[StrictStr, list[StrictStr]] | None = Field(default=None, min_length=1)


def _start_run(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
    body = _parse_body(request)
    key = idempotency_key(request)
    ctx = service(context)
    recorded = ctx.state.find_run(f"http:{key}") if key else None
    if recorded is not None:  # a resend: compared with the run, not the platforms' lists now
        _same_request_or_conflict(ctx, recorded, body.sources, body.collections)
        return _started(recorded, created=False)
    sources, collections = _check_selection(ctx, body)
    try:
        run, created = start_run(_quick(ctx), trigger="http",
                                 idempotency_key=f"http:{key}" if key else f"http:{uuid.uuid4()}",
                                 sources=sources, collections=collections)
    except UnknownSource as exc:
        raise HttpError(400, str(exc), None) from None
    if not created:  # the same key, sent again while this request was on its way
        _same_request_or_conflict(ctx, run, sources, collections)
    return _started(run, created=created)


def _started(run: Run, *, created: bool) -> Response:
    return json_response(202, {"run_id": run.run_id, "created": created,
                               "status_url": f"/runs/{run.run_id}"})


def _quick(ctx: Context) -> Context:
    """The same context with a short start budget: a person (and an API Gateway's backend
    timeout, for users who still have one) waits for this answer; the poller starts whatever is left a minute later."""
    timing = ctx.config.timing
    if timing.start_budget_seconds <= HTTP_START_BUDGET_SECONDS:
        return ctx
    quick = timing.model_copy(update={"start_budget_seconds": HTTP_START_BUDGET_SECONDS})
    return dataclasses.replace(ctx, config=ctx.config.model_copy(update={"timing": quick}))


def _parse_body(request: Request) -> StartRunBody:
    if not request.body.strip():
        return StartRunBody()
    return valid(StartRunBody, json_object(request))


def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); HttpError naming what is wrong."""
    if not request.body.strip():
        return {}
    content_type = (request.header("content-type") or "application/json").split(";")[0].strip()
    if content_type.lower() != "application/json":
        raise HttpError(415, f"the body must be JSON (Content-Type: application/json), "
                             f"not {content_type!r}", "Content-Type")
    try:
        document = json.loads(request.body.decode("utf-8"))
    except UnicodeDecodeError:
        raise HttpError(400, "the body is not UTF-8 text", "body") from None
    except json.JSONDecodeError as exc:
        raise HttpError(400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} "
                             f"column {exc.colno}", "body") from None
    except (RecursionError, ValueError):  # nested past the parser's depth, a huge number
        raise HttpError(400, "the body is JSON this API does not take: nested too deep or "
                             "a number too long", "body") from None
    if not isinstance(document, dict):
        raise HttpError(400, "the body must be a JSON object", "body")
    return document


M = TypeVar("M", bound=BaseModel)


def valid(model: type[M], document: dict[str, Any]) -> M:
    """The body as `model`, or HttpError naming every field that is wrong and how."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        described = [_describe(e, sorted(model.model_fields)) for e in exc.errors(include_url=False)]
        raise HttpError(400, "; ".join(text for _, text in described), described[0][0]) from None


def _describe(error: Mapping[str, Any], fields: list[str]) -> tuple[str, str]:
    where = ""
    for part in error["loc"]:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    where = where.removesuffix(".[key]")
    kind = error["type"]
    if kind == "extra_forbidden":
        return where, f"{where}: unknown field; the fields are {', '.join(map(repr, fields))}"
    if kind == "too_short":
        return where, f"{where}: must not be empty; leave it out to back up everything"
    shown = json.dumps(error.get("input"), ensure_ascii=False, default=str)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return where, f"{where}: {error['msg']} (got {shown})"


def idempotency_key(request: Request) -> str | None:
    key = request.header("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not _KEY_CHARS.match(key):
        raise HttpError(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII "
                             "characters without spaces, e.g. a UUID", "Idempotency-Key")
    return key


def _check_selection(
    ctx: Context, body: StartRunBody
) -> tuple[list[str] | None, dict[str, list[str]] | None]:
    """Names every unknown source or collection with the configured ones, before anything starts."""
    known = [s.name for s in ctx.config.sources]
    for index, name in enumerate(body.sources or []):
        if name not in known:
            raise HttpError(400, f"unknown source {name!r}; configured sources are: "
                                 f"{', '.join(known)}", f"sources[{index}]")
    for name, wanted in (body.collections or {}).items():
        if name not in known:
            raise HttpError(400, f"collections names unknown source {name!r}; configured sources "
                                 f"are: {', '.join(known)}", f"collections.{name}")
        if body.sources is not None and name not in body.sources:
            raise HttpError(400, f"collections names source {name!r}, which is not in sources; "
                                 "add it to sources or leave sources out", f"collections.{name}")
        try:
            available = ctx.platforms.get(name).collections()
        except BackupError as exc:  # the platform, not the request: try again later
            raise HttpError(503, f"source {name!r} could not list its collections to check "
                                 f"this request ({redact(str(exc))}); try again later",
                            f"collections.{name}") from None
        for index, collection in enumerate(wanted):
            if collection not in available:
                raise HttpError(400, f"source {name!r} has no collection {collection!r}; it backs "
                                     f"up: {', '.join(available)}", f"collections.{name}[{index}]")
    return body.sources, body.collections


def _same_request_or_conflict(ctx: Context, run: Run, sources: list[str] | None,
                              collections: dict[str, list[str]] | None) -> None:
    """A resend returns its run; another request under a used key is refused, not merged.
    The request is compared with what the run recorded of the first one, not with the
    platforms' lists now: a listing that failed, or changed since, is no other request."""
    names = sources or list(collections or {}) or [s.name for s in ctx.config.sources]
    if set(names) != set(run.sources) or asked(collections) != run.collections:
        raise HttpError(409, f"this Idempotency-Key was already used for run {run.run_id} with "
                             "other sources or collections; send a new key for a new run",
                        "Idempotency-Key")


# GET /runs, GET /runs/{run_id} -------------------------------------------------------
def _list_runs(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
    limit, before = page_query(request)
    store = service(context).state
    runs: list[Run] = []  # backups only: restores are listed by GET /restores
    cursor = before
    while len(runs) <= limit:
        listed = store.list_runs(limit + 1, cursor)
        runs += [run for run in listed if run.operation == "backup"]
        if len(listed) <= limit:
            break
        cursor = listed[-1].run_id
    page = runs[:limit]
    return json_response(200, {
        "runs": [run_view(run, store.list_jobs(run.run_id)) for run in page],
        "next": page[-1].run_id if len(runs) > limit else None,
    })


def page_query(request: Request) -> tuple[int, str | None]:
    """A list's `limit` and `before` (GET /runs, GET /restores), or a 400 naming the one wrong."""
    limit = _limit(request.query.get("limit"))
    before = request.query.get("before") or None
    if before is not None and not RUN_ID.match(before):
        raise HttpError(400, f"before must be a run id like 20261121T020000123Z-1a2b3c4d "
                             f"(the 'next' of the previous page), got {before[:80]!r}", "before")
    return limit, before


def _limit(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_PAGE
    if not re.fullmatch(r"[0-9]{1,4}", text) or not 1 <= int(text) <= MAX_PAGE:
        raise HttpError(400, f"limit must be a whole number from 1 to {MAX_PAGE}, "
                             f"got {text[:20]!r}", "limit")
    return int(text)


def _get_run(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
    run_id = params["run_id"]
    store = service(context).state
    run = backup_run(store, run_id)
    jobs = store.list_jobs(run_id)
    summary = run.summary or {}
    return json_response(200, {**run_view(run, jobs), "jobs": [job_view(job) for job in jobs],
                               "verify": verify_view(summary.get("verify")),
                               "last_verify": verify_view(summary.get("last_verify"))})


def backup_run(store: StateStore, run_id: str) -> Run:
    """The backup run `run_id`, or a 404 naming it; a restore's id points to /restores,
    as a backup's id under /restores is a 404 there."""
    run = store.get_run(run_id) if RUN_ID.match(run_id) else None
    if run is not None and run.operation == "restore":
        raise HttpError(404, f"{run_id} is a restore, not a backup run; GET /restores/{run_id} "
                             "shows it", "run_id")
    if run is None:
        raise HttpError(404, f"no run {run_id[:80]!r}; GET /runs lists the runs", "run_id")
    return run


def run_view(run: Run, jobs: list[Job]) -> dict[str, Any]:
    """A run as the API shows it: totals from its jobs, so a running run has them too."""
    states = Counter(job.status.value for job in jobs)
    return {
        "run_id": run.run_id,
        "trigger": run.trigger,
        "status": run.status.value,
        "sources": list(run.sources),
        "created_at": iso(run.created_at),
        "finished_at": iso(run.finished_at),
        "duration_seconds": _seconds(run.created_at, run.finished_at),
        "manifest_key": run.manifest_key,
        # a source whose collections could not be listed has no job to fail: say why here
        "sources_not_listed": {name: redact(str(found["error"]))
                               for name, found in run.discovery.items() if "error" in found},
        "jobs_by_status": {status.value: states.get(status.value, 0) for status in JobStatus},
        # its notification or verify alert that no webhook has accepted yet (or ever will:
        # `gave_up_at`); the poller sends it again meanwhile
        "undelivered_alerts": [{"kind": kind, "since": iso(alert.since), "tries": alert.tries,
                                "gave_up_at": iso(alert.gave_up_at)}
                               for kind, alert in sorted(run.undelivered.items())],
        "totals": {
            "jobs": len(jobs),
            "done": states.get(JobStatus.DONE.value, 0),
            "failed": states.get(JobStatus.FAILED.value, 0),
            "records": sum(job.result.records for job in jobs if job.result),
            "bytes": sum(job.result.bytes for job in jobs if job.result),
        },
    }


# What a verify kept on a run (`summary.verify` after the run, `summary.last_verify` asked
# for later) that the run detail shows: named fields only, so the answer keeps its schema.
VERIFY_FIELDS = ("ok", "mode", "quick", "at", "objects", "problems", "checked", "failed",
                 "not_read", "report_key", "fully_read", "quick_only", "unchecked",
                 "next_step", "after_run_quick_only")


def verify_view(kept: object) -> dict[str, Any] | None:
    """A verify kept on a run, as the run detail shows it; problem lines are redacted
    again, like job errors (a storage error may quote what it was told)."""
    if not isinstance(kept, dict):
        return None
    shown = {name: kept[name] for name in VERIFY_FIELDS if name in kept}
    if isinstance(shown.get("problems"), list):
        shown["problems"] = [redact(str(line)) for line in shown["problems"]]
    return shown


def job_view(job: Job) -> dict[str, Any]:
    """Everything a person needs about a job, nothing that opens anything: no leases,
    no checkpoints, no links; errors were redacted when stored and are again here."""
    result = job.result
    return {
        "job_id": job.job_id,
        "run_id": job.run_id,
        "source": job.source,
        "collection": job.collection,
        "status": job.status.value,
        "attempts": job.attempts,
        "platform_job_id": job.platform_job_id,
        "expected_records": job.expected_records,
        "records": result.records if result else None,
        "bytes": result.bytes if result else None,
        "sha256": result.sha256 if result else None,
        "object_keys": [o.key for o in result.objects] if result else [],
        "manifest_key": result.manifest_key if result else None,
        "error": redact(job.error) if job.error else None,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "updated_at": iso(job.updated_at),
        "duration_seconds": _seconds(job.started_at or job.created_at, job.finished_at),
        # far fewer records than the collection's last good backup, not acknowledged yet
        "suspect": job.suspect and job.acknowledged_at is None,
        "previous_records": job.previous_records,
        "acknowledged_at": iso(job.acknowledged_at),
        "pruned": job.pruned_at is not None,  # retention deleted its objects
    }


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


# POST /runs/{run_id}/acknowledge ----------------------------------------------------
class AcknowledgeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    source: StrictStr = Field(min_length=1, max_length=200)
    collection: StrictStr = Field(min_length=1, max_length=1000)


def _shaped(model: type[M], request: Request, shape: str) -> M:
    """A small body as `model`: {} when empty, 415 when not sent as JSON (json_object, as
    every POST route), else 400 showing the `shape` it must have and the first wrong field."""
    try:
        return model.model_validate(json_object(request))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise HttpError(400, f"the body must be {shape}: {where}: {first['msg']}", where) from None


def _acknowledge(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
    """A suspect backup's drop was intended: it counts as good from now on."""
    from shared.service.suspicion import NotSuspect, acknowledge

    run_id = params["run_id"]
    body = _shaped(AcknowledgeBody, request, '{"source": "...", "collection": "..."}')
    ctx = service(context)
    backup_run(ctx.state, run_id)
    try:
        job = acknowledge(ctx, run_id, body.source, body.collection)
    except NotSuspect as exc:
        status = 404 if "has no backup" in str(exc) else 409
        raise HttpError(status, str(exc), "collection") from None
    return json_response(200, job_view(job))


# GET /collections ----------------------------------------------------------------------
def _collections(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
    from shared.service.overview import collections
    from shared.service.watch import undelivered_alarm

    ctx = service(context)
    now = ctx.clock()
    return json_response(200, {"collections": [c.view(now) for c in collections(ctx)],
                               "retention": ctx.config.retention is not None,
                               "undelivered_alarm": undelivered_alarm(ctx)})


# POST /doctor ------------------------------------------------------------------------
class DoctorBody(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    notify: bool = False  # send each webhook a test message, the heartbeat a success ping


def _doctor(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
    """Every doctor check with the trigger function's role, network and egress IP; 200 with
    the report whether or not the checks pass (`ok` says which)."""
    body = _shaped(DoctorBody, request, '{"notify": true} or empty')
    from shared.entrypoints.scf import run_doctor  # the same report as {"doctor": true}

    return json_response(200, run_doctor(notify=body.notify))


# GET / -------------------------------------------------------------------------------
def _page(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
    """The page shell only: it holds no data and fetches the JSON routes with the token."""
    return Response(200, status_page.HTML, {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": status_page.CONTENT_SECURITY_POLICY,
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        **_NO_STORE,
    })


def _later(name: str) -> Handler:
    """A handler of shared/entrypoints/http_restores.py, imported on its first request."""
    def handler(request: Request, params: Mapping[str, str], context: ContextFactory) -> Response:
        from shared.entrypoints import http_restores

        found: Handler = getattr(http_restores, name)
        return found(request, params, context)
    return handler


ROUTES: list[Route] = [
    Route("/", {"GET": _page}, public=frozenset({"GET"})),
    Route("/runs", {"GET": _list_runs, "POST": _start_run}, query={"GET": ("limit", "before")}),
    Route("/runs/{run_id}", {"GET": _get_run}),
    Route("/runs/{run_id}/acknowledge", {"POST": _acknowledge}),
    Route("/runs/{run_id}/verify", {"POST": _later("post_verify")}),
    Route("/restores", {"GET": _later("list_restores"), "POST": _later("post_restore")},
          query={"GET": ("limit", "before")}),
    Route("/restores/{restore_id}", {"GET": _later("get_restore")}),
    Route("/collections", {"GET": _collections}),
    Route("/doctor", {"POST": _doctor}),
]
