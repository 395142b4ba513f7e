"""Fixtures for the local S3-compatible server: moto, reached through the real COS SDK."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devkit.s3_server import REGION, create_bucket, start_s3_server, stop_s3_server
from shared.adapters.cos.objects import CosObjectStore
from shared.config import Destination


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    server, endpoint = start_s3_server()
    try:
        yield endpoint
    finally:
        stop_s3_server(server)


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
