"""The doctor's `Deployment` port against the real thing: the destination bucket (COS),
the state backend, the finisher function (the Tencent Cloud API) and the webhooks. Each
method makes a few real calls with the credentials this process has (the function's role
on SCF; on a machine, destination.secret_id/secret_key or TENCENTCLOUD_SECRETID/_SECRETKEY)
and says what it proved, or raises an error saying what is wrong and how to fix it."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

from shared.adapters.cos.client import ROLE_ENV, cos_client, cos_errors
from shared.adapters.cos.objects import CosObjectStore
from shared.adapters.dispatch import (
    CONFIG_NOT_LOADED,
    NO_CREDENTIALS,
    REGION_ENV,
    DispatchError,
    ScfDispatcher,
    ScfTarget,
    on_scf,
)
from shared.adapters.heartbeat import probe_heartbeat
from shared.adapters.state import open_store
from shared.adapters.webhooks import probe_webhook
from shared.config import Config
from shared.domain.errors import BackupError, Fatal, StateError, StorageError
from shared.ports import Deployed, StateStore

# Inside SCF everything but /tmp is read-only, and each instance has a /tmp of its own that
# is gone with it (tencentcloud.com/document/product/583/9180, FAQ on /tmp; 512 MB:
# cloud.tencent.com/document/product/583/11637): a SQLite file answers this instance's
# probes while the three functions each keep a state of their own.
_SQLITE_ON_SCF = (
    "state.url is a SQLite file, and this runs on SCF: each function instance has its own "
    "/tmp, so the trigger, the poller and the finisher would each keep a state of their own "
    "and a run would start and never move on, with no error; use cos:// (the default, in the "
    "bucket) or mysql+pymysql://USER:${MYSQL_PASSWORD}@HOST:3306/DB (README: Choosing the "
    "state backend), then scripts/package and scf deploy again")


# The region the functions are deployed to, from a machine: scf-*/serverless.yml deploy to
# `region: ${env:REGION}`, which `scf deploy` resolves from the environment and .env
# (resolveVariables, serverless/components src/cli/utils.js), and scripts/package reads
# the same REGION for the CAM policy. On SCF, TENCENTCLOUD_REGION says it instead.
DEPLOY_REGION_ENV = "REGION"
_CAM_REFUSED = ("AuthFailure.UnauthorizedOperation", "UnauthorizedOperation")


class FreshTokens:
    """A token cache of this process only: the doctor fetches every source's token itself
    instead of using one another function cached, so a token fetch is really tested."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, datetime]] = {}
        self._lock = threading.Lock()

    def cache_get(self, key: str, now: datetime) -> str | None:
        with self._lock:
            found = self._tokens.get(key)
        return found[0] if found and found[1] > now else None

    def cache_put(self, key: str, value: str, expires_at: datetime) -> None:
        with self._lock:
            self._tokens[key] = (value, expires_at)

    def cache_delete(self, key: str) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def cache_claim(self, key: str, value: str, expires_at: datetime, now: datetime) -> bool:
        with self._lock:
            found = self._tokens.get(key)
            if found is not None and found[1] > now:
                return False
            self._tokens[key] = (value, expires_at)
            return True


def _write_probe(store: StateStore, kind: str) -> None:
    """Every function writes the state (runs, jobs, cached tokens), so answering a read
    proves too little: a read-only instance's address, or a user granted SELECT only,
    reads fine and fails every run at its first write. One short-lived cache entry is
    written and deleted (it expires by itself should the delete fail)."""
    key = f"doctor:probe:{uuid.uuid4().hex}"
    try:
        store.cache_put(key, "probe", datetime.now(timezone.utc) + timedelta(minutes=5))
        store.cache_delete(key)
    except (StateError, StorageError) as exc:
        advice = ("give the role cos:PutObject and cos:DeleteObject on <prefix>/_state/ "
                  "(build/cam-policy.json)" if kind == "cos" else
                  "give its user INSERT, UPDATE and DELETE on the database (CREATE too, for "
                  "the first run), and make state.url name a writable primary, not a "
                  "read-only instance")
        raise StateError(f"the {kind} state backend answers reads but refused a write: {exc}; "
                         f"the functions write runs, jobs and tokens there: {advice}") from None


# What a copy longer than one part and the poller's sweep of abandoned uploads ask of COS
# (COS API authorization policies, cloud.tencent.com/document/product/436/30580).
_MULTIPART_ACTIONS = ("name/cos:InitiateMultipartUpload, name/cos:UploadPart, "
                      "name/cos:CompleteMultipartUpload, name/cos:ListMultipartUploads and "
                      "name/cos:AbortMultipartUpload")


def _multipart_probe(store: CosObjectStore, key: str) -> None:
    """Every copy longer than one part (destination.part_size_mb) is a multipart upload, and
    the poller lists and aborts the ones left behind: keys allowed single PUTs only pass the
    probe object, then fail every larger backup. The upload is aborted, never completed: a
    completed one would take destination.storage_class, and an archive class bills the
    early delete."""
    try:
        upload = store.begin_upload(key, "application/octet-stream")
        try:
            store.upload_part(key, upload, 1, b'{"doctor": "probe"}\n')
            store.open_uploads(key)
        finally:
            store.abort_upload(key, upload)
    except StorageError as exc:
        raise StorageError(f"a multipart upload, which every copy longer than one part uses, "
                           f"failed: {exc}; the role needs {_MULTIPART_ACTIONS} on the prefix "
                           "(build/cam-policy.json)", key=key, code=exc.code) from None


class CloudDeployment:
    def __init__(self, config: Config, environ: Mapping[str, str]) -> None:
        self._config = config
        self._environ = environ
        destination = config.destination
        self._bucket = destination.bucket
        self._prefix = f"{destination.prefix}/" if destination.prefix else ""

    def _keys(self) -> str:
        destination = self._config.destination
        if destination.anonymous:
            return "anonymous access (destination.anonymous)"
        if destination.secret_id is not None:
            return "the keys in destination.secret_id/secret_key"
        if self._environ.get(ROLE_ENV[2]):
            return "the execution role's temporary keys"
        return f"the keys in {ROLE_ENV[0]}/{ROLE_ENV[1]}"

    def bucket(self) -> str:
        client = cos_client(self._config.destination, self._environ)
        try:
            with cos_errors("listing", self._prefix or "/"):
                client.list_objects(Bucket=self._bucket, Prefix=self._prefix, MaxKeys=1)
        except StorageError as exc:  # cos_errors has said what to check
            raise StorageError(f"bucket {self._bucket!r} ({self._config.destination.region}): "
                               f"{exc}", code=exc.code) from None
        return (f"bucket {self._bucket!r} ({self._config.destination.region}) answers a listing "
                f"under {self._prefix or '/'} with {self._keys()}")

    def objects(self) -> str:
        store = CosObjectStore(self._config.destination, self._environ)
        key = f"{self._prefix}_doctor/{uuid.uuid4().hex}.json"
        document = {"doctor": "probe", "written": uuid.uuid4().hex}
        store.put_json(key, document)
        try:
            if json.loads(store.read(key)) != document:
                raise StorageError(f"the probe object {key!r} read back differently from what was "
                                   "written; is something rewriting objects in this bucket?", key=key)
        finally:
            store.delete(key)
        if any(o.key == key for o in store.list(key)):  # a listing: a HEAD 404 logs a warning
            raise StorageError(f"the probe object {key!r} is still there after DeleteObject: the "
                               "role needs cos:DeleteObject on the prefix (build/cam-policy.json)",
                               key=key)
        _multipart_probe(store, f"{self._prefix}_doctor/{uuid.uuid4().hex}.multipart")
        return (f"wrote, read back and deleted {key!r}; started a multipart upload, uploaded a "
                "part, listed the open uploads and aborted it")

    def create_only(self) -> str | None:
        if self._config.state.backend != "cos":
            return None
        from shared.adapters.cos.state import CosStateStore

        store = CosStateStore(self._config.destination, self._environ, verify=False)
        try:
            status = store.versioning()
        except StateError as exc:
            raise StateError(f"{exc}; the role needs name/cos:GetBucketVersioning on the bucket "
                             "(docs/cam-policy.json) so that doctor can tell whether "
                             "x-cos-forbid-overwrite holds") from None
        if status is not None:  # the cause to name, whatever the probe would say
            raise StateError(
                f"bucket {self._bucket!r} has had versioning enabled (it is {status} now; once "
                "enabled it can only be suspended). COS ignores x-cos-forbid-overwrite on such a "
                "bucket, so the COS state store cannot rely on create-only writes there: put the "
                "backups in a new bucket that never had versioning, or keep the state in MySQL "
                "(state.url: mysql+pymysql://...)")
        store.check_create_only(again=True)
        return ("a second create-only PUT of a probe object was refused, and the bucket never "
                "had versioning (x-cos-forbid-overwrite holds)")

    def state(self) -> str:
        kind = self._config.state.backend
        if kind == "sqlite" and on_scf(self._environ):
            raise StateError(_SQLITE_ON_SCF)
        try:
            store = open_store(self._config.state, self._config.destination, environ=self._environ)
            runs = store.list_runs(1)
        except (StateError, StorageError):
            raise
        except Exception as exc:  # the database driver's own errors: say which, never the URL
            reason = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise StateError(f"the {kind} state backend does not answer: {type(exc).__name__}: "
                             f"{reason}; check state.url (host, port, database, user, password "
                             "variable), that this network reaches it (VPC) and the database's "
                             "allow-list") from None
        _write_probe(store, kind)
        last = f"; last run {runs[0].run_id} {runs[0].status.value}" if runs else "; no runs yet"
        return f"the {kind} state backend answers reads and writes{last}"

    def finisher(self) -> Deployed | None:
        if self._config.dispatch.mode == "local":
            return None
        # `auto` is checked too: the doctor checks the deployment, where the poller hands off.
        return Deployed(*self._invoke("finisher"))

    def poller(self) -> Deployed | None:
        if self._config.dispatch.mode == "local":
            return None
        try:
            return Deployed(*self._invoke("poller"))
        except DispatchError as exc:
            if exc.code == NO_CREDENTIALS:  # one cause, one failed check: the finisher's
                return Deployed("no keys to invoke it with: see the finisher check", "",
                                proven=False)
            if not exc.code.startswith(_CAM_REFUSED):
                raise
            # docs/cam-policy.json lets the role invoke the finisher only, which is all the
            # functions need: the doctor inside the trigger cannot reach the poller.
            return Deployed(f"these keys may not invoke the poller "
                            f"{self._config.dispatch.poller_function!r} ({exc.code}; the "
                            "execution role needs to invoke the finisher only, docs/cam-policy.json)"
                            ": run `baas-backup doctor` on a machine with keys allowed "
                            "scf:InvokeFunction on it to check it", "", proven=False)

    def trigger(self) -> str | None:
        if self._config.dispatch.mode == "local":
            return None
        if on_scf(self._environ):  # the doctor runs in the trigger: its config is this one
            return self._config.digest
        try:
            return self._invoke("trigger", "config")[1] or None
        except BackupError as exc:  # not found, refused, throttled: the finisher check says
            if isinstance(exc, DispatchError) and exc.code == CONFIG_NOT_LOADED:
                raise  # it answered: every run it starts fails, a fault of its own
            return None  # not told: the comparison names both possible causes

    def _invoke(self, role: str, event: object = True) -> tuple[str, str]:
        settings = self._config.dispatch
        region = (settings.region or self._environ.get(REGION_ENV)
                  or self._environ.get(DEPLOY_REGION_ENV))
        dispatcher = ScfDispatcher(ScfTarget(settings, region or self._config.destination.region,
                                             role), self._environ, attempts=1)
        try:
            return dispatcher.probe(event)
        except DispatchError as exc:
            if region or not exc.code.startswith("ResourceNotFound"):
                raise
            raise Fatal(f"{exc}. It was looked for in {self._config.destination.region}, the "
                        f"bucket's region, as neither dispatch.region, {REGION_ENV} nor "
                        f"{DEPLOY_REGION_ENV} is set: if the functions were deployed to another "
                        f"region (.env's {DEPLOY_REGION_ENV}, scripts/package --region), set "
                        f"dispatch.region in the config or run the doctor with "
                        f"{DEPLOY_REGION_ENV}=<their region>") from None

    def webhooks(self) -> int:
        return len(self._config.notify.webhooks)

    def webhook(self, index: int, send: bool) -> str:
        return probe_webhook(self._config.notify.webhooks[index], index, send)

    def heartbeat(self, send: bool) -> str | None:
        heartbeat = self._config.notify.heartbeat
        return None if heartbeat is None else probe_heartbeat(heartbeat, send)
