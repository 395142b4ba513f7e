"""The one COS client: credentials (keys from the config, or the SCF role's temporary
keys), the SDK's errors mapped into the domain's StorageError at this edge, and the SDK's
logging kept quiet. The object store and the COS state store both build on it."""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.domain.errors import StorageError
from shared.logs import register_secret

if TYPE_CHECKING:
    import requests
    from qcloud_cos import CosConfig, CosS3Client
    from qcloud_cos.cos_exception import CosServiceError

    from shared.config import Destination

# At DEBUG the SDK logs request headers, signing keys and the session token; at WARNING
# and ERROR it logs each failure just before raising it (qcloud_cos/cos_client.py,
# send_request), which `cos_errors` and the state store report themselves. Those lines
# would be noise, and misleading: a HEAD of an absent key, or the create-only probe's
# refused second PUT, is an expected answer, yet it read as an ERROR on every cold start.
_sdk_log = logging.getLogger("qcloud_cos")
if _sdk_log.level == logging.NOTSET:
    _sdk_log.setLevel(logging.CRITICAL)

ROLE_ENV = ("TENCENTCLOUD_SECRETID", "TENCENTCLOUD_SECRETKEY", "TENCENTCLOUD_SESSIONTOKEN")
MIB = 1 << 20
SDK_POOL_SIZE = 10  # connections the SDK keeps per host (CosConfig's PoolMaxSize default)


def _error_details(exc: CosServiceError) -> tuple[str, str | None]:
    """The COS error code and request id (the SDK's own getters fail on partial answers)."""
    digest = exc.get_digest_msg()
    if isinstance(digest, dict) and digest.get("code"):
        return str(digest["code"]), digest.get("requestid")
    # Some S3-compatible servers answer XML the SDK cannot digest: find the code ourselves.
    match = re.search(r"<Code>([^<]+)</Code>", str(exc.get_origin_msg()))
    return (match.group(1) if match else "Unknown"), None


# What to check for the COS error codes a deployment's own settings cause
# (cloud.tencent.com/document/product/436/7730); any other code is COS's to explain.
ADVICE = {
    "NoSuchBucket": "no such bucket in that region: check destination.bucket (name-APPID, e.g. "
                    "mybackups-1250000000) and destination.region",
    "AccessDenied": "the keys (on SCF, the functions' role) may not do this under the prefix: "
                    "give the role the policy from build/cam-policy.json (scripts/package "
                    "--uin ...), or check destination.prefix",
    "InvalidAccessKeyId": "COS does not know these keys' SecretId: check the credentials",
    "SignatureDoesNotMatch": "COS refused the signature: check the SecretKey (and the clock)",
}
UNREACHED = ("check destination.region (or destination.endpoint) and that this network "
             "reaches COS")


@contextmanager
def cos_errors(action: str, key: str) -> Iterator[None]:
    """Turn SDK errors into StorageError: key, COS error code and request id, nothing
    signed, and what to check when the cause is a setting of ours."""
    from qcloud_cos.cos_exception import CosClientError, CosServiceError

    try:
        yield
    except CosServiceError as exc:
        code, request_id = _error_details(exc)
        message = f"COS {action} of {key!r} failed: {code} (HTTP {exc.get_status_code()}"
        message += f", request id {request_id})" if request_id else ")"
        if code in ADVICE:
            message += f"; {ADVICE[code]}"
        raise StorageError(message, key=key, code=code) from None
    except CosClientError as exc:  # no answer from COS: a network error, a wrong endpoint
        raise StorageError(f"COS {action} of {key!r} failed: {exc}; {UNREACHED}", key=key) from None


def _cos_config(destination: Destination, environ: Mapping[str, str]) -> CosConfig:
    from qcloud_cos import CosConfig

    options: dict[str, Any] = {"Region": destination.region}
    if destination.endpoint:
        # IP/Port send the request there while the Host header still names the bucket.
        url = urlsplit(destination.endpoint)
        options.update(Scheme=url.scheme, IP=url.hostname, Port=url.port)
    if destination.anonymous:
        options["Anonymous"] = True
    elif destination.secret_id is not None and destination.secret_key is not None:
        options["SecretId"] = destination.secret_id.get_secret_value()
        options["SecretKey"] = destination.secret_key.get_secret_value()
    else:
        secret_id, secret_key, token = (environ.get(name) for name in ROLE_ENV)
        if not (secret_id and secret_key):
            raise StorageError(
                "no COS credentials: set destination.secret_id and destination.secret_key "
                "(as ${ENV_VAR} references), or run on SCF with an execution role, which "
                f"provides {', '.join(ROLE_ENV)}"
            )
        options.update(SecretId=secret_id, SecretKey=secret_key, Token=token or None)
    for name in ("SecretId", "SecretKey", "Token"):
        register_secret(options.get(name))  # masked in every log line from here on
    return CosConfig(**options)


def cos_client(destination: Destination, environ: Mapping[str, str] | None = None, *,
               connections: int = SDK_POOL_SIZE) -> CosS3Client:
    """The SDK client for `destination`, used by the sink and the COS state store. Credentials
    are read now: build a new client per invocation, since the SCF role's keys expire. The
    connections stay in a session kept for the process (as the SDK keeps its own), holding
    at least `connections` of them: as many as the caller sends requests at once."""
    # The SDK (with requests under it) is imported here, by the first client, not with
    # this module: a handler's cold import stays small (issue 15), and it is loaded only
    # by an invocation whose config has it talk to COS.
    from qcloud_cos import CosS3Client

    with cos_errors("setup", destination.bucket):
        config = _cos_config(destination, os.environ if environ is None else environ)
    return CosS3Client(config, session=_session(max(connections, SDK_POOL_SIZE), os.getpid()))


@functools.cache
def _session(connections: int, pid: int) -> requests.Session:
    """One per pool size and process (a forked child must not share its parent's sockets),
    like the SDK's own session (CosS3Client.generate_built_in_connection_pool) but with
    the process's one TLS context (shared/adapters/tls.py `requests_adapter`) and room
    for `connections`: the SDK keeps 10, so a poller sending 32 requests at once would
    open and discard the rest, each a new TLS handshake."""
    import requests

    from shared.adapters.tls import requests_adapter

    session = requests.Session()
    adapter = requests_adapter()(pool_connections=SDK_POOL_SIZE, pool_maxsize=connections)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.hooks["response"].append(_refuse_redirect)
    return session


class RedirectRefused(Exception):
    """A COS answer in 3xx. Not a requests ConnectionError, so the SDK does not retry it
    and raises it as a CosClientError carrying this message."""


def _refuse_redirect(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """With AllowRedirects=False (CosConfig's default, kept: a followed redirect would carry
    the signed request and the x-cos-security-token to whatever host it names), the SDK
    returns a 3xx as a success (qcloud_cos/cos_client.py, send_request: "2xx和3xx都认为是成功的"):
    a PUT that stored nothing, a read of the redirect's body. COS itself counts a 3xx as
    an error response (cloud.tencent.com/document/product/436/7730, "Error Response":
    "3XX, 4XX, and 5XX"), and one means the request did not reach the bucket it names:
    fail, naming the endpoint that answered."""
    if not 300 <= response.status_code < 400:
        return
    sent_to = urlsplit(response.url)
    location = urlsplit(response.headers.get("Location", ""))
    target = f" to host {location.hostname}{f':{location.port}' if location.port else ''}" \
        if location.hostname else ""
    raise RedirectRefused(
        f"the endpoint {sent_to.scheme}://{sent_to.hostname}"
        f"{f':{sent_to.port}' if sent_to.port else ''} answered HTTP {response.status_code}, a "
        f"redirect{target}, which is never followed (it would take the signed request and "
        "the keys elsewhere) and stores or reads nothing: check destination.endpoint (leave "
        "it out for Tencent COS; for another server, its own address), destination.region "
        "and destination.bucket")
