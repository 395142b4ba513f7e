"""Object storage for backups: streamed, verified writes into a Tencent COS bucket.

An object only ever appears at its key complete and checked: a stream is cut into parts of
`destination.part_size_mb` (one PUT when it fits in one part, a multipart upload otherwise),
up to `destination.part_concurrency` parts upload at once (each checked against the CRC64
COS reports for it, committed by part number), the caller sees the byte count and SHA-256
before the commit and may refuse it, any failure aborts the upload, and after the commit
a HEAD confirms the stored size and CRC64.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from shared.adapters.cos.client import cos_client, cos_errors
from shared.config import Destination
from shared.domain.errors import StorageError
from shared.integrity import Crc64, crc64
from shared.ports import MIB, ObjectInfo, StreamSummary

if TYPE_CHECKING:
    from qcloud_cos import CosS3Client

log = logging.getLogger(__name__)
# COS's CRC64-ECMA of every object (https://cloud.tencent.com/document/product/436/40334)
CRC64_HEADER = "x-cos-hash-crc64ecma"


class _Parts:
    """Cuts `chunks` into parts of exactly `size` bytes (the last may be shorter), hashing them.

    Always yields at least one (possibly empty) part. `finished` turns true when the part
    just returned is the last one, so a caller knows whether one PUT is enough.
    """

    def __init__(self, chunks: Iterable[bytes], size: int) -> None:
        self._chunks = iter(chunks)
        self._size = size
        self._rest = memoryview(b"")  # unconsumed tail of the current chunk
        self._sha256 = hashlib.sha256()
        self._crc64 = Crc64()  # fed in stream order, part by part
        self.bytes = 0
        self.count = 0
        self.finished = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.finished:
            raise StopIteration
        pieces: list[memoryview] = []  # views of the source chunks: one copy, by the join
        filled = 0
        while True:
            if not self._rest:
                try:
                    self._rest = memoryview(next(self._chunks))
                except StopIteration:
                    self.finished = True
                    break
                continue
            if filled == self._size:  # full, and more data follows
                break
            piece = self._rest[:self._size - filled]
            pieces.append(piece)
            filled += len(piece)
            self._rest = self._rest[len(piece):]
        part = b"".join(pieces)
        # Every stream hash is fed here, on the caller's thread, in stream order, before
        # the part goes to the upload pool: another hasher slots in beside this one.
        self._sha256.update(part)
        self._crc64.update(part)
        self.bytes += len(part)
        self.count += 1
        return part

    def summary(self) -> StreamSummary:
        return StreamSummary(bytes=self.bytes, sha256=self._sha256.hexdigest(), parts=self.count,
                             crc64=self._crc64.value)


def _lowered(headers: Mapping[str, Any]) -> dict[str, Any]:
    """An SDK answer's headers by lower-case name (the SDK keeps the server's spelling)."""
    return {name.lower(): value for name, value in headers.items()}


def _collect(
    in_flight: set[Future[dict[str, Any]]], return_when: str
) -> list[dict[str, Any]]:
    """Wait for finished part uploads, remove them from `in_flight`, return their ETags;
    the first failure is raised (the caller aborts)."""
    done, _ = wait(in_flight, return_when=return_when)
    in_flight -= done
    return [future.result() for future in done]


class CosObjectStore:
    """ObjectStore over cos-python-sdk-v5.

    Credentials are read once, here: build a new store per invocation, since the SCF
    role's temporary keys expire.
    """

    list_page_size = 1000

    def __init__(self, destination: Destination, environ: Mapping[str, str] | None = None,
                 *, client: CosS3Client | None = None) -> None:
        self._client = client or cos_client(destination, environ)
        self._bucket = destination.bucket
        self._part_size = destination.part_size_mb * MIB
        self._concurrency = destination.part_concurrency
        self._part_md5 = False  # parts are checked by the CRC64 COS reports (_upload_part)
        # Headers of every new object: encryption and storage class.
        self._encryption: dict[str, str] = (
            {"ServerSideEncryption": destination.server_side_encryption}
            if destination.server_side_encryption
            else {}
        )
        if destination.storage_class:
            self._encryption["StorageClass"] = destination.storage_class
        self._region = destination.region

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        content_type: str,
        before_commit: Callable[[StreamSummary], None] | None = None,
    ) -> StreamSummary:
        """Stream `chunks` into `key`, uploading up to `part_concurrency` parts at once.

        Memory bound: peak ≈ (part_concurrency + 1) * part_size + one source chunk, i.e.
        the parts in flight plus the part being read plus the read buffer (a download's
        chunk is at most 1 MiB, `http.DOWNLOAD_PIECE`, read from the socket 512 KiB at a
        time, `wide_reads.WIDE_READ`): 4 parts of 8 MiB at once come to about 41 MiB.
        Parts are cut and hashed here, in stream order, on the calling thread; only the
        PUTs run in the pool, so a hasher fed by `_Parts` sees exactly the bytes of the
        object in order. The commit lists parts by number whatever order their uploads
        ended in; any failure (a part, the source, `before_commit`) stops reading, waits
        for the parts in flight, then aborts.
        """
        parts = _Parts(chunks, self._part_size)
        first = next(parts)
        if parts.finished:  # the whole stream fits in one part: one PUT
            if before_commit is not None:
                before_commit(parts.summary())
            self._put(key, first, content_type)
        else:
            head = [first]  # handed over in a list, so this frame keeps no reference to it
            del first
            self._put_multipart(key, content_type, head, parts, before_commit)
        summary = parts.summary()
        self._verify_stored(key, summary)
        return summary

    def _put_multipart(
        self,
        key: str,
        content_type: str,
        head: list[bytes],
        parts: _Parts,
        before_commit: Callable[[StreamSummary], None] | None,
    ) -> None:
        upload_id = self._create_multipart(key, content_type)
        in_flight: set[Future[dict[str, Any]]] = set()
        etags: list[dict[str, Any]] = []
        pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="cos-part")
        try:
            number, data = 1, head.pop()
            while True:
                while len(in_flight) >= self._concurrency:  # bound memory: wait for a slot
                    etags += _collect(in_flight, FIRST_COMPLETED)
                in_flight.add(pool.submit(self._upload_part, key, upload_id, number, data))
                del data  # the pool holds the part now; freed as soon as it is sent
                try:  # read the next part while up to `concurrency` parts are being sent
                    data, number = next(parts), number + 1
                except StopIteration:
                    break
            etags += _collect(in_flight, ALL_COMPLETED)
            if before_commit is not None:
                before_commit(parts.summary())
            with cos_errors("complete upload", key):
                self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Part": sorted(etags, key=lambda e: e["PartNumber"])},
                )
        except BaseException:
            for future in in_flight:
                future.cancel()
            wait(in_flight)  # no part may land after the abort
            self._abort(key, upload_id)
            raise
        finally:
            pool.shutdown(wait=True)

    def put_json(self, key: str, document: Mapping[str, Any]) -> None:
        body = json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")
        self._put(key, body, "application/json", data=False)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            with cos_errors("head", key):
                headers = self._client.head_object(Bucket=self._bucket, Key=key)
        except StorageError as exc:
            if exc.code in ("NoSuchResource", "NoSuchKey"):
                return None
            raise
        lowered = _lowered(headers)
        return ObjectInfo(key=key, size=int(lowered["content-length"]),
                          crc64=lowered.get(CRC64_HEADER),
                          storage_class=lowered.get("x-cos-storage-class", "STANDARD"))

    def read(self, key: str) -> bytes:
        return b"".join(self.iter_read(key))

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """COS changes an object's class by copying it onto itself, which needs the
        metadata directive `Replaced` (cloud.tencent.com/document/product/436/10881, PUT
        Object - Copy: "若拷贝的源与目标相同…必须为 Replaced"), so the content type and
        encryption are given again. One request copies at most 5 GB. One HEAD gives
        both the size and the content type."""
        try:
            with cos_errors("head", key):
                headers = _lowered(self._client.head_object(Bucket=self._bucket, Key=key))
        except StorageError as exc:
            if exc.code in ("NoSuchResource", "NoSuchKey"):
                raise StorageError(f"COS storage class change of {key!r} failed: no such "
                                   "object", key=key, code="NoSuchKey") from None
            raise
        if int(headers["content-length"]) > 5 * 1024 * MIB:
            raise StorageError(f"COS storage class change of {key!r}: over 5 GB, which one copy "
                               "cannot move; a COS lifecycle rule can", key=key,
                               code="EntityTooLarge")
        content_type = headers.get("content-type", "application/octet-stream")
        options = {k: v for k, v in self._encryption.items() if k != "StorageClass"}
        with cos_errors("storage class change", key):
            self._client.copy_object(
                Bucket=self._bucket, Key=key, CopyStatus="Replaced", ContentType=content_type,
                CopySource={"Bucket": self._bucket, "Key": key, "Region": self._region},
                StorageClass=storage_class, **options)

    def iter_read(self, key: str, chunk_size: int = MIB) -> Iterator[bytes]:
        with cos_errors("download", key):
            body = self._client.get_object(Bucket=self._bucket, Key=key)["Body"]
        try:
            yield from body.get_stream(chunk_size)
        except OSError as exc:  # requests' errors are OSErrors too
            raise StorageError(
                f"COS download of {key!r} broke off: {type(exc).__name__}", key=key
            ) from None

    def delete(self, key: str) -> None:
        with cos_errors("delete", key):
            self._client.delete_object(Bucket=self._bucket, Key=key)

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix`, across all pages."""
        found: list[ObjectInfo] = []
        marker = ""
        while True:
            with cos_errors("list", prefix):
                page = self._client.list_objects(
                    Bucket=self._bucket, Prefix=prefix, Marker=marker, MaxKeys=self.list_page_size
                )
            contents = page.get("Contents", [])
            # Each entry's StorageClass (https://cloud.tencent.com/document/product/436/7734);
            # read as STANDARD when absent, which a caller must confirm before acting on it.
            found.extend(ObjectInfo(key=c["Key"], size=int(c["Size"]),
                                    storage_class=c.get("StorageClass") or "STANDARD")
                         for c in contents)
            if page.get("IsTruncated") != "true" or not contents:
                return found
            marker = contents[-1]["Key"]  # NextMarker is only promised with a delimiter

    def _put(self, key: str, body: bytes, content_type: str, *, data: bool = True) -> None:
        """Manifests and records (`data=False`) stay in the bucket's default class."""
        options = self._encryption if data else {
            k: v for k, v in self._encryption.items() if k != "StorageClass"}
        with cos_errors("upload", key):
            self._client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=body,
                EnableMD5=True,
                ContentType=content_type,
                **options,
            )

    def _create_multipart(self, key: str, content_type: str) -> str:
        with cos_errors("start upload", key):
            created = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=key, ContentType=content_type, **self._encryption
            )
        return str(created["UploadId"])

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        """Upload one part and check that it arrived intact before it can be committed.

        COS answers an Upload Part with the part's CRC64 (x-cos-hash-crc64ecma;
        https://cloud.tencent.com/document/product/436/40334, "Upload Part"), checked here
        against the part's own: a tenth of the CPU of the Content-MD5 the SDK would compute
        (anycrc against MD5, about 6 GB/s against 0.6 on one core), which on a large copy
        was the finisher's largest cost. A store that reports no CRC64 for a part gets
        that part again with Content-MD5, and Content-MD5 on every part from then on:
        every part is checked one way or the other before the commit."""
        md5 = self._part_md5
        with cos_errors(f"upload of part {number}", key):
            sent = self._client.upload_part(
                Bucket=self._bucket,
                Key=key,
                Body=data,
                PartNumber=number,
                UploadId=upload_id,
                EnableMD5=md5,
            )
        if not md5:
            reported = _lowered(sent).get(CRC64_HEADER)
            if reported is None:
                if not self._part_md5:
                    log.warning("the bucket reports no CRC64 for uploaded parts; sending "
                                "Content-MD5 with every part instead", extra={"key": key})
                self._part_md5 = True
                return self._upload_part(key, upload_id, number, data)
            ours = str(crc64(data))
            if reported != ours:
                raise StorageError(
                    f"COS reports CRC64 {reported} for part {number} of {key!r}, but the part "
                    f"sent has CRC64 {ours}; the upload is not committed",
                    key=key, code="CrcMismatch")
        return {"PartNumber": number, "ETag": sent["ETag"]}

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            with cos_errors("abort upload", key):
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id
                )
        except StorageError as exc:  # the original error matters more; COS expires stale parts
            log.warning("%s; upload %s left for the bucket lifecycle to clean", exc, upload_id)

    def _verify_stored(self, key: str, sent: StreamSummary) -> None:
        """The stored object has the size and the CRC64 of what was sent (COS reports the
        CRC64 of every object; a store that reports none is checked on size alone)."""
        stored = self.head(key)
        if stored is not None and stored.size == sent.bytes and (
                stored.crc64 is None or stored.crc64 == sent.crc64):
            return
        if stored is not None:
            self.delete(key)
        if stored is not None and stored.size == sent.bytes:
            raise StorageError(
                f"COS object {key!r} has CRC64 {stored.crc64} after upload, but what was "
                f"streamed has CRC64 {sent.crc64}; it was deleted", key=key, code="CrcMismatch")
        found = "nothing" if stored is None else f"{stored.size} bytes"
        raise StorageError(
            f"COS object {key!r} holds {found} after upload, but {sent.bytes} bytes were streamed;"
            " it was deleted",
            key=key,
            code="SizeMismatch",
        )

    # resumable multipart uploads: paged sources (OneDB) write one object over several
    # invocations, keeping the upload id and the parts' ETags in the state table.
    def begin_upload(self, key: str, content_type: str) -> str:
        """Start a multipart upload that may outlive this process; returns its upload id."""
        return self._create_multipart(key, content_type)

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Upload part `number` (uploading the same number again replaces it); its ETag."""
        return str(self._upload_part(key, upload_id, number, data)["ETag"])

    def complete_upload(self, key: str, upload_id: str, parts: Iterable[tuple[int, str]]) -> None:
        """Commit the upload from (part number, ETag) pairs in order."""
        with cos_errors("complete upload", key):
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Part": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
            )

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort an upload; one that is already gone (completed, aborted, expired) is fine."""
        try:
            with cos_errors("abort upload", key):
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id
                )
        except StorageError as exc:
            if exc.code != "NoSuchUpload":
                raise

    def open_uploads(self, key: str) -> tuple[str, ...]:
        """Ids of the unfinished multipart uploads of exactly `key`, e.g. left by a process
        killed before it could record its upload id."""
        return tuple(upload for found, upload in self.uploads_under(key) if found == key)

    def uploads_under(self, prefix: str) -> tuple[tuple[str, str], ...]:
        """(key, upload id) of every unfinished multipart upload under `prefix`."""
        found: tuple[tuple[str, str], ...] = ()
        key_marker = upload_marker = ""
        while True:
            with cos_errors("list uploads", prefix):
                page = self._client.list_multipart_uploads(
                    Bucket=self._bucket, Prefix=prefix, KeyMarker=key_marker,
                    UploadIdMarker=upload_marker,
                )
            uploads = page.get("Upload", [])
            if isinstance(uploads, dict):  # the SDK gives one upload as a dict, not a list
                uploads = [uploads]
            found += tuple((str(u["Key"]), str(u["UploadId"])) for u in uploads)
            if page.get("IsTruncated") != "true" or not uploads:
                return found
            key_marker, upload_marker = uploads[-1]["Key"], uploads[-1]["UploadId"]
