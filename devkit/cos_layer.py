"""A thin WSGI layer that makes moto's S3 server answer a few things the way COS does.

moto stands in for COS in tests, but two COS behaviours the product relies on are not
S3's, so they are added here, in front of moto's own application:

- `x-cos-forbid-overwrite: true` on a PUT: the object is created only if the key is free,
  otherwise HTTP 409. Like COS, the header has no effect on a bucket whose versioning was
  *ever* enabled (enabled or suspended now). COS documents the header on PUT Object
  (https://cloud.tencent.com/document/product/436/7749, "x-cos-forbid-overwrite").
- `x-cos-hash-crc64ecma` on object answers (PUT, completed multipart upload, HEAD, GET):
  the object's CRC64-ECMA as a decimal string, as COS computes it
  (https://cloud.tencent.com/document/product/436/40334, "CRC64 校验"); and on an Upload
  Part answer, the part's.

`If-None-Match` on a PUT is not documented for COS, so by default this layer drops it
before moto sees it: create-only writes then rest on the COS header alone, as on COS.
`corrupt_crc` names keys whose reported CRC64 is deliberately wrong (a damaged object),
`corrupt_part_crc` part numbers whose reported CRC64 is (a part damaged on its way), and
`part_crc = False` leaves it out of Upload Part answers (a store that reports none);
`parts_with_md5` counts the parts that came with Content-MD5.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import anycrc
import crcmod
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

# The COS SDK's own CRC64 (qcloud_cos resumable_downloader): ECMA-182's polynomial,
# reflected, all ones in and out (also known as CRC-64/XZ; none of crcmod's predefined
# "crc-64*" functions is this one).
crc64 = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)
# The same CRC by its catalogue name, for parts: crcmod's 370 MB/s would slow every
# multipart upload a benchmark sends here (COS computes it on its own machines).
part_crc64 = anycrc.Model("CRC64-XZ")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_CONFLICT = (b"<?xml version='1.0' encoding='utf-8' ?>\n<Error><Code>PathConflict</Code>"
             b"<Message>The object already exists and x-cos-forbid-overwrite is true"
             b"</Message></Error>")


class CosLayer:
    """WSGI middleware over moto's S3 application (see the module docstring)."""

    # A test that needs a bucket breaking COS's promise (a misbehaving S3 stand-in) sets this.
    ignore_forbid_overwrite = False

    def __init__(self, app: WsgiApp, *, honour_if_none_match: bool = False) -> None:
        self.app = app
        self.honour_if_none_match = honour_if_none_match
        self.corrupt_crc: set[str] = set()
        self.corrupt_part_crc: set[int] = set()
        self.part_crc = True
        self.parts_with_md5 = 0
        self.forbidden_overwrites = 0  # PUTs refused by the COS header
        self._lock = threading.Lock()  # check-then-create is one step, as on COS

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        _cos_headers_as_s3(environ)
        method = environ.get("REQUEST_METHOD", "")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        bucket, key = _target(environ)
        plain_put = method == "PUT" and key and not query
        if plain_put and not self.honour_if_none_match:
            environ.pop("HTTP_IF_NONE_MATCH", None)
        forbid = environ.get("HTTP_X_COS_FORBID_OVERWRITE", "").lower() == "true"
        if plain_put and forbid and not self.ignore_forbid_overwrite:
            with self._lock:
                if _exists(bucket, key) and not _ever_versioned(bucket):
                    self.forbidden_overwrites += 1
                    start_response("409 Conflict", [("Content-Type", "application/xml"),
                                                     ("Content-Length", str(len(_CONFLICT)))])
                    return [_CONFLICT]
                return self._with_crc(environ, start_response, bucket, key, method, query)
        if method == "GET" and not key:
            return self._listing(environ, start_response)
        return self._with_crc(environ, start_response, bucket, key, method, query)

    def _listing(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """A bucket listing names each object's class as COS does (ARCHIVE, not GLACIER:
        https://cloud.tencent.com/document/product/436/7734)."""
        captured, chunks = self._captured(environ)
        body = b"".join(chunks)
        for s3_name, cos_name in _COS_CLASS.items():
            body = body.replace(f"<StorageClass>{s3_name}</StorageClass>".encode(),
                                f"<StorageClass>{cos_name}</StorageClass>".encode())
        headers = [(n, str(len(body)) if n.lower() == "content-length" else v)
                   for n, v in captured["headers"]]
        start_response(captured["status"], headers, captured["exc_info"])
        return [body]

    def _captured(self, environ: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        """moto's answer held back (status, headers, exc_info; and the body) to be mended."""
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"], captured["exc_info"] = status, headers, exc_info
            return lambda data: None  # moto returns its body; nothing writes through this

        body = list(self.app(environ, capture))
        return captured, body

    def _with_crc(self, environ: dict[str, Any], start_response: StartResponse, bucket: str,
                  key: str, method: str, query: dict[str, list[str]]) -> Iterable[bytes]:
        if method == "PUT" and key and "partNumber" in query and "uploadId" in query:
            return self._part(environ, start_response, bucket, query)
        whole_object = key and (
            (method in ("PUT", "HEAD", "GET") and not query)
            or (method == "POST" and "uploadId" in query))
        if not whole_object or "HTTP_RANGE" in environ:
            return self.app(environ, start_response)
        captured, body = self._captured(environ)
        headers = list(captured["headers"])
        for name, value in list(headers):  # moto answers S3's header; COS names its own
            if name.lower() == "x-amz-storage-class":
                headers.append(("x-cos-storage-class", _COS_CLASS.get(value, value)))
        if captured["status"].startswith("200"):
            _add_crc(headers, _crc_of(bucket, key), corrupt=key in self.corrupt_crc)
        start_response(captured["status"], headers, captured["exc_info"])
        return body

    def _part(self, environ: dict[str, Any], start_response: StartResponse, bucket: str,
              query: dict[str, list[str]]) -> Iterable[bytes]:
        if "HTTP_CONTENT_MD5" in environ:
            with self._lock:
                self.parts_with_md5 += 1
        captured, body = self._captured(environ)
        headers = list(captured["headers"])
        number = int(query["partNumber"][0])
        if captured["status"].startswith("200") and self.part_crc:
            _add_crc(headers, _part_crc_of(bucket, query["uploadId"][0], number),
                     corrupt=number in self.corrupt_part_crc)
        start_response(captured["status"], headers, captured["exc_info"])
        return body


# COS storage classes as moto knows them (moto refuses a GET of GLACIER objects until
# restored, as COS does for ARCHIVE), and back.
_S3_CLASS = {"ARCHIVE": "GLACIER", "DEEP_ARCHIVE": "DEEP_ARCHIVE", "STANDARD_IA": "STANDARD_IA",
             "INTELLIGENT_TIERING": "INTELLIGENT_TIERING", "STANDARD": "STANDARD",
             "MAZ_STANDARD": "STANDARD", "MAZ_STANDARD_IA": "STANDARD_IA",
             "MAZ_INTELLIGENT_TIERING": "INTELLIGENT_TIERING"}
_COS_CLASS = {"GLACIER": "ARCHIVE"}


def _cos_headers_as_s3(environ: dict[str, Any]) -> None:
    """The COS SDK's x-cos-* request headers that moto needs as x-amz-*: storage class,
    copy source (`<bucket>.cos.<region>.myqcloud.com/<key>`) and metadata directive."""
    storage = environ.pop("HTTP_X_COS_STORAGE_CLASS", None)
    if storage:
        environ["HTTP_X_AMZ_STORAGE_CLASS"] = _S3_CLASS.get(storage, storage)
    source = environ.pop("HTTP_X_COS_COPY_SOURCE", None)
    if source:
        host, _, key = source.partition("/")
        environ["HTTP_X_AMZ_COPY_SOURCE"] = f"/{host.split('.')[0]}/{key}"
    directive = environ.pop("HTTP_X_COS_METADATA_DIRECTIVE", None)
    if directive:
        environ["HTTP_X_AMZ_METADATA_DIRECTIVE"] = "REPLACE" if directive == "Replaced" else "COPY"


def _target(environ: dict[str, Any]) -> tuple[str, str]:
    """(bucket, key) of a virtual-host style request (as the COS SDK sends them) or a
    path-style one."""
    path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
    host = environ.get("HTTP_HOST", "").split(":")[0]
    if ".cos." in host or host.endswith(".myqcloud.com"):
        return host.split(".")[0], path.lstrip("/")
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


def _bucket(name: str) -> Any:
    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets.get(name)


def _exists(bucket: str, key: str) -> bool:
    found = _bucket(bucket)
    return found is not None and found.keys.get(key) is not None


def _ever_versioned(bucket: str) -> bool:
    found = _bucket(bucket)
    return found is not None and found.versioning_status in ("Enabled", "Suspended")


_crc_cache: dict[tuple[str, str, str], int] = {}


def _crc_of(bucket: str, key: str) -> int | None:
    found = _bucket(bucket)
    stored = found.keys.get(key) if found is not None else None
    if stored is None:
        return None
    marker = (bucket, key, str(stored.etag))
    if marker not in _crc_cache:
        _crc_cache[marker] = int(crc64(stored.value))
    return _crc_cache[marker]


def _add_crc(headers: list[tuple[str, str]], value: int | None, *, corrupt: bool) -> None:
    """COS's CRC64 header, when there is a value; off by one when `corrupt`."""
    if value is not None:
        headers.append(("x-cos-hash-crc64ecma", str((value + 1) % (1 << 64) if corrupt else value)))


def _part_crc_of(bucket: str, upload_id: str, number: int) -> int | None:
    found = _bucket(bucket)
    upload = found.multiparts.get(upload_id) if found is not None else None
    part = upload.parts.get(number) if upload is not None else None
    return None if part is None else int(part_crc64.calc(part.value))
