"""CosObjectStore against a real moto server through the real cos-python-sdk-v5."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import crcmod
import pytest
from qcloud_cos.cos_exception import CosClientError

from devkit.cos_layer import CosLayer
from devkit.s3_server import cos_client
from shared.adapters.cos.objects import CosObjectStore
from shared.config import Destination
from shared.domain.errors import CommitRefused, StorageError
from shared.ports import ObjectInfo, ObjectStore, StreamSummary

MIB = 1 << 20


def pattern(size: int) -> bytes:
    """Deterministic bytes that are not all alike, so a misplaced part shows."""
    block = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB
    return (block * (size // len(block) + 1))[:size]


def odd_chunks(
    data: bytes, sizes: tuple[int, ...] = (1, 7919, 65_537, 3 * MIB + 1)
) -> Iterator[bytes]:
    offset, turn = 0, 0
    while offset < len(data):
        size = sizes[turn % len(sizes)]
        yield data[offset : offset + size]
        offset, turn = offset + size, turn + 1


def crc(data: bytes) -> str:
    """CRC64-ECMA as COS reports it, computed independently of the product's code."""
    function = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)
    return str(function(data))


def open_uploads(s3_server: str, bucket: str) -> list[object]:
    return list(cos_client(s3_server).list_multipart_uploads(Bucket=bucket).get("Upload", []))


@pytest.fixture
def five_mib_store(destination: Destination) -> CosObjectStore:
    return CosObjectStore(destination.model_copy(update={"part_size_mb": 5}))


def test_is_an_object_store(object_store: CosObjectStore) -> None:
    store: ObjectStore = object_store
    assert store is object_store


def test_small_stream_is_one_put(object_store: CosObjectStore) -> None:
    seen: list[StreamSummary] = []
    summary = object_store.put_stream(
        "backups/a.jsonl",
        [b'{"a": 1}\n', b"", b'{"b": 2}\n'],
        content_type="application/x-ndjson",
        before_commit=seen.append,
    )
    data = b'{"a": 1}\n{"b": 2}\n'
    assert summary == StreamSummary(len(data), hashlib.sha256(data).hexdigest(), 1, crc(data))
    assert seen == [summary]
    assert object_store.read("backups/a.jsonl") == data


def test_empty_stream(object_store: CosObjectStore) -> None:
    summary = object_store.put_stream("backups/empty", iter(()), content_type="text/plain")
    assert summary.bytes == 0
    assert object_store.read("backups/empty") == b""


def test_multipart_round_trip(five_mib_store: CosObjectStore, s3_server, bucket) -> None:
    data = pattern(12 * MIB + 12_345)
    summary = five_mib_store.put_stream(
        "backups/big.bin", odd_chunks(data), content_type="application/octet-stream"
    )
    assert summary == StreamSummary(len(data), hashlib.sha256(data).hexdigest(), 3, crc(data))
    assert five_mib_store.head("backups/big.bin") == ObjectInfo("backups/big.bin", len(data), crc(data))
    assert b"".join(five_mib_store.iter_read("backups/big.bin", chunk_size=MIB)) == data
    assert open_uploads(s3_server, bucket) == []


def test_exactly_one_part_is_a_single_put(five_mib_store: CosObjectStore) -> None:
    data = pattern(5 * MIB)
    assert five_mib_store.put_stream("backups/one", odd_chunks(data), content_type="x/y").parts == 1
    assert five_mib_store.read("backups/one") == data


@pytest.mark.parametrize("size", [1 * MIB, 12 * MIB])
def test_refused_commit_leaves_nothing(
    five_mib_store: CosObjectStore, s3_server, bucket, size
) -> None:
    def refuse(summary: StreamSummary) -> None:
        assert summary.bytes == size
        raise CommitRefused("row count does not match")

    with pytest.raises(CommitRefused):
        five_mib_store.put_stream(
            "backups/x", odd_chunks(pattern(size)), content_type="x/y", before_commit=refuse
        )
    assert five_mib_store.head("backups/x") is None
    assert open_uploads(s3_server, bucket) == []


@pytest.mark.parametrize("good_bytes", [100, 7 * MIB])
def test_broken_source_leaves_nothing(
    five_mib_store: CosObjectStore, s3_server, bucket, good_bytes
) -> None:
    def truncated() -> Iterator[bytes]:
        yield pattern(good_bytes)
        raise ConnectionError("download cut off")

    with pytest.raises(ConnectionError):
        five_mib_store.put_stream("backups/x", truncated(), content_type="x/y")
    assert five_mib_store.head("backups/x") is None
    assert open_uploads(s3_server, bucket) == []


def test_rerun_replaces_the_object(five_mib_store: CosObjectStore) -> None:
    five_mib_store.put_stream("backups/r.bin", odd_chunks(pattern(6 * MIB)), content_type="x/y")
    five_mib_store.put_stream("backups/r.bin", [b"second run"], content_type="x/y")
    assert five_mib_store.list("backups/") == [ObjectInfo("backups/r.bin", len(b"second run"))]
    assert five_mib_store.read("backups/r.bin") == b"second run"


def test_refused_rerun_keeps_the_previous_object(object_store: CosObjectStore) -> None:
    object_store.put_stream("backups/k", [b"good"], content_type="x/y")

    def refuse(summary: StreamSummary) -> None:
        raise CommitRefused

    with pytest.raises(CommitRefused):
        object_store.put_stream("backups/k", [b"bad"], content_type="x/y", before_commit=refuse)
    assert object_store.read("backups/k") == b"good"


class PartSpy:
    """Wraps the SDK client's upload_part: counts parts in flight, can delay or fail one."""

    def __init__(self, store: CosObjectStore, *, slow: int = 0, failing: int = 0) -> None:
        self._upload_part = store._client.upload_part
        self._lock = threading.Lock()
        self.slow, self.failing = slow, failing
        self.in_flight = self.most_in_flight = 0
        self.finished: list[int] = []
        store._client.upload_part = self

    def __call__(self, **kwargs: Any) -> dict[str, Any]:
        number = kwargs["PartNumber"]
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(0.4 if number == self.slow else 0.05)
            if number == self.failing:
                raise CosClientError("connection reset while sending the part")
            sent: dict[str, Any] = self._upload_part(**kwargs)
            self.finished.append(number)
            return sent
        finally:
            with self._lock:
                self.in_flight -= 1


def concurrent_store(destination: Destination, concurrency: int) -> CosObjectStore:
    return CosObjectStore(
        destination.model_copy(update={"part_size_mb": 5, "part_concurrency": concurrency})
    )


def test_parts_committed_in_order_whatever_order_they_finish(destination: Destination) -> None:
    store = concurrent_store(destination, 3)
    spy = PartSpy(store, slow=1)  # part 1 finishes last of its batch
    data = pattern(23 * MIB)  # 5 parts, the last short
    summary = store.put_stream("backups/ordered", odd_chunks(data), content_type="x/y")
    assert spy.finished[0] != 1 and sorted(spy.finished) == [1, 2, 3, 4, 5]
    assert (summary.bytes, summary.sha256, summary.parts) == (
        len(data), hashlib.sha256(data).hexdigest(), 5)
    assert summary.crc64 == str(crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0,
                                                xorOut=0xFFFFFFFFFFFFFFFF, rev=True)(data))
    assert store.read("backups/ordered") == data


@pytest.mark.parametrize("concurrency", [1, 2, 4])
def test_parts_in_flight_never_exceed_the_setting(
    destination: Destination, concurrency: int
) -> None:
    store = concurrent_store(destination, concurrency)
    spy = PartSpy(store)
    store.put_stream("backups/bounded", odd_chunks(pattern(40 * MIB)), content_type="x/y")
    assert spy.most_in_flight == concurrency  # reached, never passed


def test_failing_part_aborts_and_stops_reading(
    destination: Destination, s3_server: str, bucket: str
) -> None:
    store = concurrent_store(destination, 2)
    spy = PartSpy(store, failing=3)
    read: list[int] = []

    def source() -> Iterator[bytes]:
        for number in range(40):  # 200 MiB if read to the end
            read.append(number)
            yield pattern(5 * MIB)

    with pytest.raises(StorageError, match=r"part 3 of 'backups/x'.*connection reset"):
        store.put_stream("backups/x", source(), content_type="x/y")
    assert store.head("backups/x") is None
    assert open_uploads(s3_server, bucket) == []
    assert len(read) <= 3 + 2 + 1  # stopped soon after the failure, not at the end
    assert spy.in_flight == 0  # nothing still sending after the abort


class LossyStore(CosObjectStore):
    """Reports one byte less than stored: stands in for a server that lost data."""

    def head(self, key: str) -> ObjectInfo | None:
        found = super().head(key)
        return found and ObjectInfo(found.key, found.size - 1, found.crc64)


def test_size_mismatch_deletes_and_names_the_key(
    destination: Destination, object_store: CosObjectStore
) -> None:
    with pytest.raises(StorageError, match="backups/short") as caught:
        LossyStore(destination).put_stream("backups/short", [b"abc"], content_type="x/y")
    assert caught.value.code == "SizeMismatch"
    assert object_store.head("backups/short") is None


def test_json_list_read_delete(object_store: CosObjectStore) -> None:
    document = {"source": "商城", "collections": ["orders"], "bytes": 3}
    object_store.put_json("backups/run/manifest.json", document)
    raw = object_store.read("backups/run/manifest.json")
    assert raw == json.dumps(document, ensure_ascii=False, indent=2).encode()
    assert json.loads(raw) == document
    object_store.put_stream(
        "backups/run/orders.jsonl", [b"{}\n"], content_type="application/x-ndjson"
    )
    object_store.put_stream("backups/run/备份 #1.txt", [b"12"], content_type="text/plain")
    object_store.put_stream("elsewhere/other", [b"x"], content_type="x/y")
    object_store.list_page_size = 1  # make every object its own page

    listed = object_store.list("backups/run/")
    assert [(o.key, o.size) for o in listed] == [
        ("backups/run/manifest.json", len(raw)),
        ("backups/run/orders.jsonl", 3),
        ("backups/run/备份 #1.txt", 2),
    ]
    assert len(object_store.list("")) == 4
    assert object_store.read("backups/run/备份 #1.txt") == b"12"
    object_store.delete("backups/run/备份 #1.txt")
    object_store.delete("backups/run/orders.jsonl")
    assert [o.key for o in object_store.list("backups/")] == ["backups/run/manifest.json"]
    assert object_store.head("backups/run/orders.jsonl") is None
    assert object_store.list("nothing-here/") == []


def test_errors_name_the_key_and_code(object_store: CosObjectStore) -> None:
    with pytest.raises(StorageError, match=r"'backups/missing'.*NoSuchKey") as caught:
        object_store.read("backups/missing")
    assert caught.value.key == "backups/missing"


def test_missing_bucket_is_reported(destination: Destination) -> None:
    store = CosObjectStore(destination.model_copy(update={"bucket": "absent-1250000000"}))
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.put_stream("backups/k", [b"x"], content_type="x/y")


def test_no_credentials_is_a_clear_error(destination: Destination) -> None:
    closed = destination.model_copy(update={"anonymous": False})
    with pytest.raises(StorageError, match="secret_id") as caught:
        CosObjectStore(closed, environ={})
    assert "TENCENTCLOUD_SECRETID" in str(caught.value)


def test_credentials_from_settings_or_role(destination: Destination) -> None:
    keyed = Destination.model_validate(
        {
            **destination.model_dump(),
            "anonymous": False,
            "secret_id": "${ID}",
            "secret_key": "${KEY}",
        },
        context={"environ": {"ID": "AKIDexample", "KEY": "secret-example"}},
    )
    CosObjectStore(keyed, environ={})
    role = {
        "TENCENTCLOUD_SECRETID": "AKIDtmp",
        "TENCENTCLOUD_SECRETKEY": "k",
        "TENCENTCLOUD_SESSIONTOKEN": "t",
    }
    store = CosObjectStore(destination.model_copy(update={"anonymous": False}), environ=role)
    assert store._client.get_conf()._token == "t"


MEMORY_PROBE = textwrap.dedent(
    """
    import sys
    from shared.config import Destination
    from shared.adapters.cos.objects import CosObjectStore
    from shared.domain.errors import CommitRefused

    def peak_rss_kib():  # this process's own high-water mark (ru_maxrss counts the parent's)
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])

    endpoint, bucket, total_mib, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = CosObjectStore(Destination.model_validate(
        {"bucket": bucket, "region": "ap-guangzhou", "endpoint": endpoint, "anonymous": True,
         "part_concurrency": concurrency}
    ))
    block = bytes(range(256)) * (1 << 14)  # 4 MiB to slice from

    def chunks(total):
        sizes, sent, turn = (65_537, 1_000_003, 13, 3_000_017), 0, 0
        while sent < total:
            size = min(sizes[turn % 4], total - sent)
            start = sent % (len(block) - size)
            yield block[start:start + size]
            sent, turn = sent + size, turn + 1

    def refuse(summary):  # commit nothing: the test server need not keep 200 MiB
        assert summary.bytes == total_mib << 20
        raise CommitRefused

    store.put_stream("warm-up", [b"x"], content_type="x/y")  # connection pool, lazy imports
    before = peak_rss_kib()
    try:
        store.put_stream("big", chunks(total_mib << 20), content_type="x/y", before_commit=refuse)
    except CommitRefused:
        print((peak_rss_kib() - before) // 1024)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("concurrency", [1, 4])
def test_memory_stays_near_the_parts_in_flight(s3_server: str, bucket: str, concurrency: int) -> None:
    # Default 8 MiB parts: the store holds the part being read plus `concurrency` parts
    # being sent; one at a time stays within the bound it always had.
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, s3_server, bucket, "200", str(concurrency)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    growth_mib = int(probe.stdout.strip())
    bound = 60 + (concurrency - 1) * 8  # each further part in flight adds one 8 MiB part
    assert growth_mib < bound, f"peak RSS grew by {growth_mib} MiB while streaming 200 MiB"


@pytest.mark.parametrize("size", [1000, 12 * MIB + 3])  # one PUT; a multipart upload
def test_crc64_is_computed_while_streaming_and_equals_coss(
        five_mib_store: CosObjectStore, size: int) -> None:
    data = pattern(size)

    summary = five_mib_store.put_stream("backups/crc.bin", odd_chunks(data),
                                        content_type="application/octet-stream")

    # CRC-64/XZ (ECMA-182 reflected): the COS SDK's own parameters; check value of 123456789
    expected = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)
    assert expected(b"123456789") == 0x995DC9BBDF1939FA
    assert summary.crc64 == str(expected(data))
    stored = five_mib_store.head("backups/crc.bin")
    assert stored is not None and stored.crc64 == summary.crc64


def test_an_object_whose_crc64_differs_is_deleted_not_kept(
        five_mib_store: CosObjectStore, cos_layer: CosLayer) -> None:
    cos_layer.corrupt_crc.add("backups/damaged.bin")

    with pytest.raises(StorageError, match="CRC64") as caught:
        five_mib_store.put_stream("backups/damaged.bin", [pattern(6 * MIB)],
                                  content_type="application/octet-stream")

    assert caught.value.code == "CrcMismatch"
    assert five_mib_store.head("backups/damaged.bin") is None


def test_a_part_whose_reported_crc64_differs_aborts_the_upload(
        five_mib_store: CosObjectStore, cos_layer: CosLayer, s3_server: str, bucket: str) -> None:
    cos_layer.corrupt_part_crc.add(2)  # COS says part 2 arrived with other bytes

    with pytest.raises(StorageError, match=r"CRC64 .* part 2 of 'backups/torn.bin'") as caught:
        five_mib_store.put_stream("backups/torn.bin", [pattern(12 * MIB)],
                                  content_type="application/octet-stream")

    assert caught.value.code == "CrcMismatch"
    assert five_mib_store.head("backups/torn.bin") is None
    assert open_uploads(s3_server, bucket) == []
    assert cos_layer.parts_with_md5 == 0  # the parts were checked by COS's CRC64 alone


def test_parts_go_with_content_md5_when_the_store_reports_no_crc64(
        five_mib_store: CosObjectStore, cos_layer: CosLayer,
        caplog: pytest.LogCaptureFixture) -> None:
    cos_layer.part_crc = False
    data = pattern(16 * MIB)  # parts 1-4, each checked one way or the other

    summary = five_mib_store.put_stream("backups/md5.bin", odd_chunks(data),
                                        content_type="application/octet-stream")

    assert summary.parts == 4 and summary.crc64 == crc(data)
    # Each part went with Content-MD5 once: sent again with it when its answer had no
    # CRC64, or with it from the start once an earlier answer had shown none.
    assert cos_layer.parts_with_md5 == 4
    assert five_mib_store.read("backups/md5.bin") == data
    assert "reports no CRC64 for uploaded parts" in caplog.text
