"""Fixtures for the local S3-compatible server: moto, reached through the real COS SDK."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devkit.cos_layer import CosLayer
from devkit.s3_server import REGION, CosLikeServer, create_bucket, start_s3_server, stop_s3_server
from shared.adapters.cos.objects import CosObjectStore
from shared.config import Destination


@pytest.fixture(scope="session")
def cos_server() -> Iterator[CosLikeServer]:
    server, _ = start_s3_server()
    try:
        yield server
    finally:
        stop_s3_server(server)


@pytest.fixture(scope="session")
def s3_server(cos_server: CosLikeServer) -> str:
    host, port = cos_server.get_host_and_port()
    return f"http://{host}:{port}"


class S3Requests:
    """What a second server over the same moto buckets answered, read from its request
    log (devkit.s3_server.RequestLog): a test counts the requests a piece of code makes."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self._log = log

    def _lines(self) -> list[str]:
        return self._log.read_text(encoding="utf-8").splitlines() if self._log.exists() else []

    @contextmanager
    def counted(self) -> Iterator[list[str]]:
        """The requests made inside the block, as `METHOD path` in order of their answers
        (a listing's path is `/`: the bucket is in the host name, as the COS SDK sends it)."""
        before = len(self._lines())
        seen: list[str] = []
        yield seen
        seen.extend(f"{row['method']} {row['path']}"
                    for row in map(json.loads, self._lines()[before:]))


@pytest.fixture(scope="session")
def s3_requests(cos_server: CosLikeServer, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[S3Requests]:
    """A server logging every request, over the same buckets as `cos_server` (moto keeps
    them per process); stopped without dropping them, which `cos_server` does last."""
    log = tmp_path_factory.mktemp("s3-requests") / "requests.jsonl"
    server, url = start_s3_server(request_log=log)
    try:
        yield S3Requests(url, log)
    finally:
        server.stop()


@pytest.fixture
def counted_destination(s3_requests: S3Requests, bucket: str) -> Destination:
    """`destination`'s bucket reached through the logging server."""
    return Destination.model_validate({"bucket": bucket, "region": REGION, "anonymous": True,
                                       "endpoint": s3_requests.url, "prefix": "backups"})


@pytest.fixture
def cos_layer(cos_server: CosLikeServer) -> Iterator[CosLayer]:
    """The COS behaviours in front of moto; a test's changes to it are undone after it."""
    cos_server.layer.parts_with_md5 = 0
    yield cos_server.layer
    cos_server.layer.corrupt_crc.clear()
    cos_server.layer.corrupt_part_crc.clear()
    cos_server.layer.part_crc = True
    cos_server.layer.honour_if_none_match = False


@pytest.fixture
def bucket(s3_server: str) -> str:
    name = f"test-{uuid.uuid4().hex[:8]}-1250000000"
    create_bucket(s3_server, name)
    return name


@pytest.fixture
def destination(s3_server: str, bucket: str) -> Destination:
    return Destination.model_validate(
        {"bucket": bucket, "region": REGION, "endpoint": s3_server, "anonymous": True, "prefix": "backups"}
    )


@pytest.fixture
def object_store(destination: Destination) -> CosObjectStore:
    return CosObjectStore(destination)
