"""Fixtures for the local S3-compatible server: moto, reached through the real COS SDK."""

from __future__ import annotations

import socket
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer
from qcloud_cos import CosConfig, CosS3Client

from shared.config import Destination
from shared.sink import CosObjectStore

REGION = "ap-guangzhou"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cos_client(endpoint: str) -> CosS3Client:
    """An unsigned SDK client for the test server (moto cannot check COS signatures)."""
    host, port = endpoint.removeprefix("http://").split(":")
    return CosS3Client(
        CosConfig(Region=REGION, Scheme="http", IP=host, Port=int(port), Anonymous=True)
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        yield endpoint
    finally:
        # Drop stored objects now: disposed at interpreter exit, moto prints tracebacks.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
        server.stop()


@pytest.fixture
def bucket(s3_server: str) -> str:
    name = f"test-{uuid.uuid4().hex[:8]}-1250000000"
    cos_client(s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture
def destination(s3_server: str, bucket: str) -> Destination:
    return Destination.model_validate(
        {
            "bucket": bucket,
            "region": REGION,
            "endpoint": s3_server,
            "anonymous": True,
            "prefix": "backups",
        }
    )


@pytest.fixture
def object_store(destination: Destination) -> CosObjectStore:
    return CosObjectStore(destination)
