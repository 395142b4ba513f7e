"""Fixtures for the local S3-compatible server: moto, reached through the real COS SDK."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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
