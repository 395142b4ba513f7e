"""How a ready job reaches the finisher: in-process locally; SCF async invoke when hosted.

On SCF the poller asks the Tencent Cloud API to run the finisher function with the event
`{"job_id": ...}` (`Invoke`, `InvocationType="Event"`), signed with the execution role's
temporary keys. A hand-off that is lost or doubled is harmless: the finisher claims a job
with compare-and-set, and the poller hands a job out again when its copy lease runs out.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from shared.config import Config, DispatchSettings
from shared.domain.errors import BackupError, Fatal, Retryable, RetryLater, StateError
from shared.logs import register_secret
from shared.ports import Dispatcher

log = logging.getLogger(__name__)

# The execution role's temporary keys; SCF sets them for every invocation and they expire.
ROLE_ENV = ("TENCENTCLOUD_SECRETID", "TENCENTCLOUD_SECRETKEY", "TENCENTCLOUD_SESSIONTOKEN")
# How mode `auto` knows it is hosted: TENCENTCLOUD_RUNENV=SCF is the marker SCF documents
# among its built-in variables (环境变量, 已内置环境变量:
# tencentcloud.com/document/product/583/32748); SCF_FUNCTIONNAME is set in practice but is
# not in that list, so either one will do.
RUNENV_ENV, RUNENV_SCF = "TENCENTCLOUD_RUNENV", "SCF"
SCF_MARKER_ENV = "SCF_FUNCTIONNAME"
REGION_ENV = "TENCENTCLOUD_REGION"
REQUEST_TIMEOUT_SECONDS = 15


class InProcessDispatcher:
    """Runs the finisher right here (local runs, tests): same code path, no cloud."""

    def __init__(self, finish: Callable[[str], object]) -> None:
        self._finish = finish
        # The poller advances jobs from several threads: copies still run one at a time
        # here, so a local run's memory stays that of one finisher.
        self._one_at_a_time = threading.Lock()

    def dispatch(self, job_id: str) -> None:
        with self._one_at_a_time:
            self._finish(job_id)


class DispatchError(BackupError):
    """Raised as Retryable/RetryLater/Fatal subclasses below; carries the API's code."""

    code: str = ""


class _Throttled(RetryLater, DispatchError):
    pass


class _Transient(Retryable, DispatchError):
    pass


class _Refused(Fatal, DispatchError):
    pass


NO_CREDENTIALS = "NoCredentials"
CONFIG_NOT_LOADED = "ConfigNotLoaded"  # a function answered the doctor: its config fails to load


def _no_credentials(text: str) -> _Refused:
    error = _Refused(text)
    error.code = NO_CREDENTIALS  # the doctor tells this cause apart by it
    return error


def _classify(code: str, message: str, request_id: str | None, target: ScfTarget) -> DispatchError:
    """One SDK error → the class the service layer acts on, with what to fix in the message."""
    said = f"{code}: {message}" + (f" (request id {request_id})" if request_id else "")
    function = f"function {target.function!r} in namespace {target.namespace!r}, region {target.region}"
    error: DispatchError
    if code.startswith("RequestLimitExceeded"):
        error = _Throttled(f"Tencent Cloud API rate limit while invoking the {target.role}: {said}")
    elif code.startswith(("AuthFailure.UnauthorizedOperation", "UnauthorizedOperation")):
        error = _Refused(
            f"the execution role may not invoke the {target.role} ({said}); give the role "
            f"scf:InvokeFunction on qcs::scf:{target.region}:uin/<UIN>:namespace/{target.namespace}"
            f"/function/{target.function} (see docs/cam-policy.json)"
        )
    elif code == "AuthFailure.SignatureExpire":
        error = _Refused(
            f"the API says the request is too old ({said}); the clock of this machine is more "
            "than 5 minutes off, or the role's keys expired: fix the clock or re-run"
        )
    elif code.startswith(("AuthFailure", "InvalidCredential")):
        error = _Refused(
            f"the API rejected the function's credentials ({said}); set the execution role "
            f"(serverless.yml `role`) and do not override {', '.join(ROLE_ENV)}"
        )
    elif code == "ClientNetworkError" and message.startswith(REDIRECT_REFUSED):
        error = _Refused(f"{message}; check dispatch.endpoint (leave it out for the public "
                         "API, or give the API's own address)")
    elif code.startswith("ResourceNotFound"):
        error = _Refused(
            f"no {function} ({said}); deploy it (scf-{target.role}/serverless.yml) or fix "
            f"dispatch.{target.role}_function, "
            "dispatch.namespace or dispatch.region in the config"
        )
    elif code.startswith(("InvalidParameter", "MissingParameter", "UnknownParameter",
                          "InvalidAction", "UnsupportedRegion", "NoSuchVersion")):
        error = _Refused(f"the API refused the invocation of {function} ({said}); "
                         "check the dispatch section of the config")
    else:  # InternalError, ServiceUnavailable, network errors, anything new: transient
        # The cause only: whether it is tried again is the caller's to say (the poller's).
        error = _Transient(f"invoking the {target.role} failed: {said}")
    error.code = code
    return error


REDIRECT_REFUSED = "the Tencent Cloud API answered a redirect, not followed"


def _session(client: Any) -> Any:
    """The requests Session the SDK sends through (tencentcloud/common/http/request.py,
    ProxyConnection._session), which this module fits: it refuses redirects
    (`_no_redirect`) and verifies with the process's TLS context."""
    session = getattr(getattr(getattr(client, "request", None), "conn", None), "_session", None)
    if session is None or not hasattr(session, "hooks") or not hasattr(session, "mount"):
        raise _Refused("this tencentcloud-sdk-python no longer keeps its requests session at "
                       "client.request.conn._session, so redirects could not be refused "
                       "nor its TLS shared; "
                       "install the version in requirements/runtime.lock")
    return session


def _no_redirect(response: Any, **_: Any) -> None:
    """The SDK's session follows redirects, and keeps every header but Authorization on
    the way: the role's session token (X-TC-Token) would go to whatever host a redirect
    names. Invoke answers JSON (cloud.tencent.com/document/api/583/17243), so a redirect
    is refused before its next hop is sent."""
    if response.is_redirect or response.is_permanent_redirect:
        response.close()
        target = urlsplit(response.headers.get("Location") or "")  # no userinfo, no query
        where = f"{target.scheme}://{target.hostname}" if target.hostname else "the same host"
        raise _RedirectRefused(f"{REDIRECT_REFUSED} (HTTP {response.status_code} to {where}): "
                               "its requests carry the execution role's keys")


class _RedirectRefused(Exception):
    """Raised inside the SDK's send; the SDK hands it on as a ClientNetworkError."""


class ScfTarget:
    """Where a function (the finisher; for `doctor`, also the poller or the trigger) lives
    and how to reach the API."""

    def __init__(self, settings: DispatchSettings, region: str, role: str = "finisher") -> None:
        self.role = role
        self.function = {"finisher": settings.finisher_function, "poller": settings.poller_function,
                         "trigger": settings.trigger_function}[role]
        self.namespace = settings.namespace
        self.region = region
        self.endpoint = settings.endpoint


class ScfDispatcher:
    """Hands a job to the finisher function with an async SCF `Invoke`."""

    def __init__(
        self,
        target: ScfTarget,
        environ: Mapping[str, str],
        *,
        attempts: int = 4,
        base_seconds: float = 1.0,
    ) -> None:
        self.target = target
        self._environ = environ
        self._attempts = attempts
        self._base_seconds = base_seconds
        self._client: Any = None
        self._client_keys: tuple[str, str, str | None] | None = None

    def dispatch(self, job_id: str) -> None:
        from tenacity import (  # on first use: not every invocation dispatches (cold start)
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_random_exponential,
        )

        retrying = Retrying(
            retry=retry_if_exception_type((Retryable, RetryLater)),
            stop=stop_after_attempt(self._attempts),
            wait=wait_random_exponential(multiplier=self._base_seconds, max=20),
            reraise=True,
        )
        result = retrying(lambda: self._invoke(job_id))
        log.info("job handed to the finisher", extra={
            "finisher": self.target.function, "invocation": "Event", **result})

    def _credentials(self) -> tuple[str, str, str | None]:
        """Read at every call: the role's keys expire and SCF sets fresh ones per invocation."""
        secret_id, secret_key, token = (self._environ.get(name) or None for name in ROLE_ENV)
        if not (secret_id and secret_key):
            raise _no_credentials(
                "no credentials to invoke the finisher: attach an execution role to the poller "
                f"function (serverless.yml `role`), which provides {', '.join(ROLE_ENV)}; "
                "or set dispatch.mode: local to copy inside the poller"
            )
        for value in (secret_id, secret_key, token):
            register_secret(value)  # masked in every log line from here on
        return secret_id, secret_key, token

    def _scf_client(self) -> Any:
        keys = self._credentials()
        if self._client is None or keys != self._client_keys:
            # Imported here: only the poller hands off, so the other functions never load the SDK.
            from tencentcloud.common.credential import Credential
            from tencentcloud.common.profile.client_profile import ClientProfile
            from tencentcloud.common.profile.http_profile import HttpProfile
            from tencentcloud.scf.v20180416.scf_client import ScfClient

            from shared.adapters.tls import default_bundle, requests_adapter

            # The CAs every client of this process trusts (the SDK's own default is certifi's
            # bundle), verified with their one TLS context: urllib3 2.x would load them into
            # a new context for each new connection (about 40 ms of CPU apiece, and a tick
            # handing off several jobs at once opens several).
            settings: dict[str, Any] = {"reqTimeout": REQUEST_TIMEOUT_SECONDS,
                                        "certification": default_bundle()}
            if self.target.endpoint:
                url = urlsplit(self.target.endpoint)
                settings.update(protocol=url.scheme, endpoint=url.netloc)
            http = HttpProfile(**settings)
            # The region breaker would swallow errors (the SDK returns None); keep it off.
            profile = ClientProfile(httpProfile=http, disable_region_breaker=True)
            self._client = ScfClient(Credential(*keys), self.target.region, profile)
            session = _session(self._client)
            session.hooks["response"].append(_no_redirect)
            session.mount("https://", requests_adapter()())
            self._client_keys = keys
        return self._client

    def probe(self, event: object = True) -> tuple[str, str]:
        """`doctor`: a synchronous Invoke of the target with `{"doctor": event}`, which the
        function answers without touching anything (the poller advances no job). SCF's
        Invoke has no dry-run mode (cloud.tencent.com/document/api/583/17243), and a
        RequestResponse invocation needs the same scf:InvokeFunction grant as the poller's
        Event invocations. Returns what was proven and the digest of the config the function
        loaded ("" from one older than the digest), for the doctor to compare."""
        from tencentcloud.common.exception.tencent_cloud_sdk_exception import (
            TencentCloudSDKException,
        )
        from tencentcloud.scf.v20180416.models import InvokeRequest

        target = self.target
        what = f"the {target.role} {target.function!r}"
        request = InvokeRequest()
        request.FunctionName = target.function
        request.Namespace = target.namespace
        request.Qualifier = "$LATEST"
        request.InvocationType = "RequestResponse"
        request.ClientContext = json.dumps({"doctor": event})
        try:
            response = self._scf_client().Invoke(request)
        except TencentCloudSDKException as exc:
            code, message = str(exc.get_code() or "ClientError"), str(exc.get_message() or "")
            if code.startswith(("AuthFailure.UnauthorizedOperation", "UnauthorizedOperation")):
                denied = _Refused(scoped_invoke_refused(code, message, target))
                denied.code = code  # the doctor tells a refusal apart by it
                raise denied from None
            raise _classify(code, message, exc.get_request_id(), target) from None
        result = response.Result
        error = str(getattr(result, "ErrMsg", "") or "")
        if error or int(getattr(result, "InvokeResult", 0) or 0) != 0:
            raise _Refused(f"{what} was invoked but failed: {error[:300]}; "
                           "see its logs in the SCF console and deploy the current package")
        answered = str(getattr(result, "RetMsg", "") or "")
        if '"doctor"' not in answered:
            raise _Refused(f"{what} was invoked but does not know the doctor's event (it "
                           f"answered {answered[:200]!r}); deploy the current package to it")
        refused = _answer_field(answered, "error")
        if refused:
            variables = ("the environment variables backup.yaml names" if target.role == "trigger"
                         else "the same environment variables as the trigger")
            unloaded = _Refused(f"{what} answered, but cannot load its config, so it would fail "
                               f"every {_WORK[target.role]}: {refused[:1500]}. Give it {variables} "
                               f"(scf-{target.role}/serverless.yml environment.variables, or its "
                               "console) and the same package (scripts/package --config "
                               "backup.yaml, then scf deploy of all three)")
            unloaded.code = CONFIG_NOT_LOADED  # the doctor tells this cause apart by it
            raise unloaded
        unreachable = _answer_field(answered, "state")
        if unreachable:  # the poller's own probe of the state store (shared/entrypoints/scf.py)
            raise StateError(f"{what} loads its config but cannot reach the state store, so no "
                           f"job would move: {unreachable[:1500]}. Its network is its own: give "
                           "it the trigger's network settings (the database's VPC, in the SCF "
                           f"console) and environment variables (scf-{target.role}/serverless.yml)")
        theirs = _answer_field(answered, "config")
        return (f"invoked {target.function!r} (namespace {target.namespace}, {target.region}) "
                "with these keys; it answered" + (", having loaded its config" if theirs else ""),
                theirs)

    def _invoke(self, job_id: str) -> dict[str, str]:
        from tencentcloud.common.exception.tencent_cloud_sdk_exception import (
            TencentCloudSDKException,
        )
        from tencentcloud.scf.v20180416.models import InvokeRequest

        request = InvokeRequest()
        request.FunctionName = self.target.function
        request.Namespace = self.target.namespace
        request.Qualifier = "$LATEST"
        request.InvocationType = "Event"
        request.ClientContext = json.dumps({"job_id": job_id})
        try:
            response = self._scf_client().Invoke(request)
        except TencentCloudSDKException as exc:
            raise _classify(str(exc.get_code() or "ClientError"), str(exc.get_message() or ""),
                            exc.get_request_id(), self.target) from None
        result = response.Result
        return {"request_id": str(response.RequestId or ""),
                "function_request_id": str(getattr(result, "FunctionRequestId", "") or "")}


# What each function would fail, should it not load its config.
_WORK = {"finisher": "copy", "poller": "minute's tick", "trigger": "run"}


def _answer_field(answered: str, field: str) -> str:
    """A field of a function's doctor answer (shared/entrypoints/scf.py), "" when absent
    (an older function's answer) or not JSON. "error" (its config does not load) and
    "state" (the poller's state store does not answer) come only with "ok": false."""
    try:
        answer = json.loads(answered)
    except ValueError:
        return ""
    if not isinstance(answer, dict):
        return ""
    if field == "error" and answer.get("ok") is False and not answer.get("state"):
        return str(answer.get("error") or "no reason given")
    return str(answer.get(field) or "")


def scoped_invoke_refused(code: str, message: str, target: ScfTarget) -> str:
    """What to do when CAM refuses scf:InvokeFunction on the finisher: docs/cam-policy.json
    scopes the grant to the finisher function, as SCF's policy examples do
    (cloud.tencent.com/document/product/583/38177); where CAM does not honour that
    resource for this action (its list of resource-level actions, product/598/57149),
    only an account-wide grant works."""
    statement = json.dumps({"effect": "allow", "action": ["scf:InvokeFunction"],
                            "resource": ["*"]}, separators=(", ", ": "))
    return (f"CAM refused scf:InvokeFunction on {target.function!r} (namespace {target.namespace}, "
            f"{target.region}) to these keys ({code}: {message}). If the role's policy already "
            "has the statement from docs/cam-policy.json (resource qcs::scf:<REGION>:uin/<UIN>:"
            f"namespace/{target.namespace}/function/{target.function}), this account's CAM does not "
            "honour a function-level resource for this action: replace that statement's resource "
            f"with \"*\", i.e. {statement} (it then may invoke every function of the account), "
            "and run doctor again. If the statement is missing, add it as shipped first")


def resolve_mode(settings: DispatchSettings, environ: Mapping[str, str]) -> str:
    if settings.mode != "auto":
        return settings.mode
    return "scf" if on_scf(environ) else "local"


def on_scf(environ: Mapping[str, str]) -> bool:
    """Whether this process runs inside an SCF function (see RUNENV_ENV)."""
    return environ.get(RUNENV_ENV) == RUNENV_SCF or bool(environ.get(SCF_MARKER_ENV))


def dispatcher_for(
    config: Config, environ: Mapping[str, str], finish: Callable[[str], object]
) -> Dispatcher:
    """The dispatcher the config asks for; `finish` runs a job in-process (mode local)."""
    settings = config.dispatch
    if resolve_mode(settings, environ) == "local":
        return InProcessDispatcher(finish)
    region = settings.region or environ.get(REGION_ENV) or config.destination.region
    return ScfDispatcher(ScfTarget(settings, region), environ,
                         base_seconds=config.timing.retry_base_seconds)
