"""One contract for the object store: the COS adapter through the real SDK against
moto's S3 server, and the unit tests' in-memory fake, so the fake cannot drift."""

from __future__ import annotations

import hashlib

import pytest

from shared.adapters.cos.objects import CosObjectStore
from shared.config import Destination
from shared.domain.errors import CommitRefused, StorageError
from shared.ports import MIB, ObjectStore, ResumableUploads, StreamSummary
from tests.fakes import MemoryObjects


@pytest.fixture(params=["cos", "memory"])
def objects(request: pytest.FixtureRequest) -> ObjectStore:
    if request.param == "memory":
        return MemoryObjects()
    destination: Destination = request.getfixturevalue("destination")
    return CosObjectStore(destination)


def test_a_stream_is_stored_and_read_back(objects: ObjectStore) -> None:
    data = [b"a" * 1000, "数据\n".encode(), b""]
    summary = objects.put_stream("p/x.jsonl", data, content_type="application/x-ndjson")
    whole = b"".join(data)
    assert (summary.bytes, summary.sha256) == (len(whole), hashlib.sha256(whole).hexdigest())
    assert objects.read("p/x.jsonl") == whole
    assert b"".join(objects.iter_read("p/x.jsonl", 7)) == whole
    info = objects.head("p/x.jsonl")
    assert info is not None and info.size == len(whole)


def test_a_refused_commit_stores_nothing(objects: ObjectStore) -> None:
    def refuse(summary: StreamSummary) -> None:
        assert summary.bytes == 3
        raise CommitRefused("count does not match")

    with pytest.raises(CommitRefused):
        objects.put_stream("p/no", [b"abc"], content_type="text/plain", before_commit=refuse)
    assert objects.head("p/no") is None


def test_missing_objects(objects: ObjectStore) -> None:
    assert objects.head("p/none") is None
    with pytest.raises(StorageError) as caught:
        objects.read("p/none")
    assert caught.value.code == "NoSuchKey" and caught.value.key == "p/none"
    objects.delete("p/none")  # deleting what is not there is fine


def test_listing_and_deleting(objects: ObjectStore) -> None:
    for key in ("p/a", "p/b", "q/c"):
        objects.put_json(key, {"k": key})
    assert [o.key for o in objects.list("p/")] == ["p/a", "p/b"]
    objects.delete("p/a")
    assert [o.key for o in objects.list("p/")] == ["p/b"]


def test_resumable_uploads(objects: ObjectStore) -> None:
    assert isinstance(objects, ResumableUploads)
    first, second = b"1" * (5 * MIB), b"2" * 10
    upload = objects.begin_upload("p/big", "application/x-ndjson")
    assert objects.open_uploads("p/big") == (upload,)
    objects.upload_part("p/big", upload, 1, b"x" * (5 * MIB))
    etag1 = objects.upload_part("p/big", upload, 1, first)  # the same number again replaces it
    etag2 = objects.upload_part("p/big", upload, 2, second)
    objects.complete_upload("p/big", upload, [(1, etag1), (2, etag2)])
    assert objects.read("p/big") == first + second
    assert objects.open_uploads("p/big") == ()


def test_an_aborted_upload_is_gone(objects: ObjectStore) -> None:
    assert isinstance(objects, ResumableUploads)
    upload = objects.begin_upload("p/gone", "text/plain")
    objects.abort_upload("p/gone", upload)
    objects.abort_upload("p/gone", upload)  # twice is fine
    # COS answers NoSuchUpload; moto answers a 500 here: either way a StorageError.
    with pytest.raises(StorageError):
        objects.complete_upload("p/gone", upload, [(1, "etag")])
    assert objects.head("p/gone") is None


def test_storage_classes(objects: ObjectStore) -> None:
    objects.put_stream("p/cold", [b"x" * 100], content_type="text/plain")
    info = objects.head("p/cold")
    assert info is not None and info.storage_class == "STANDARD"
    objects.set_storage_class("p/cold", "STANDARD_IA")
    info = objects.head("p/cold")
    assert info is not None and info.storage_class == "STANDARD_IA" and info.size == 100
    assert objects.read("p/cold") == b"x" * 100
    objects.set_storage_class("p/cold", "ARCHIVE")
    with pytest.raises(StorageError):  # archived: restore before reading
        objects.read("p/cold")
    with pytest.raises(StorageError):
        objects.set_storage_class("p/none", "ARCHIVE")
