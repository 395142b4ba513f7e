"""The HTTP API and `baas-backup serve` under hostile requests: chunked or lying bodies,
slow senders, deep JSON, huge numbers, and an invalid config that must not reveal where
the config file lives or what its variables hold."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.entrypoints import local_server
from shared.entrypoints.local_server import LocalApiServer
from tests.support.api import TOKEN, Api, deploy
from tests.support.backup import LocalBackup


@pytest.fixture
def api(local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    return deploy(local, tmp_path, monkeypatch)


@pytest.fixture
def served(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    monkeypatch.setattr(local_server._Handler, "timeout", 1.0)
    server = LocalApiServer(lambda event: api.trigger.main_handler(event, None))
    server.start()
    try:
        yield "127.0.0.1", server.httpd.server_address[1]
    finally:
        server.stop()


def exchange(address: tuple[str, int], raw: bytes, *, pause_after: float = 0.0) -> bytes:
    """Send `raw` as is over a real socket; everything the server answers until it closes."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(raw)
        if pause_after:
            time.sleep(pause_after)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def post_runs(headers: str, body: bytes) -> bytes:
    return (f"POST /runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\n{headers}\r\n").encode("latin-1") + body


def test_a_chunked_body_is_refused_not_read_as_empty(api: Api, served: tuple[str, int]) -> None:
    """Read as empty, this one-source request would start a run of every source."""
    body = json.dumps({"sources": ["archive"]}).encode()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"

    answer = exchange(served, post_runs("Transfer-Encoding: chunked\r\n", chunked))

    assert answer.startswith(b"HTTP/1.1 411")
    assert api.runs() == []


@pytest.mark.parametrize("header", ["Content-Length: -5\r\n", "Content-Length: 12abc\r\n",
                                    "Content-Length: 2\r\nContent-Length: 30\r\n",
                                    "Content-Length: \u00b2\r\n"])  # a digit to str.isdigit, not int()
def test_a_bad_content_length_is_refused(api: Api, served: tuple[str, int], header: str) -> None:
    answer = exchange(served, post_runs(header, b'{"sources": ["archive"]}'))

    assert answer.startswith(b"HTTP/1.1 400")
    assert b"Content-Length must be one non-negative integer" in answer
    assert api.runs() == []


def test_a_slow_body_times_out(api: Api, served: tuple[str, int]) -> None:
    started = time.monotonic()
    answer = exchange(served, post_runs("Content-Length: 100\r\n", b'{"sources"'))

    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 5
    assert api.runs() == []


@pytest.mark.parametrize("body", ['{"sources": ' + "[" * 5000 + "]" * 5000 + "}",
                                  '{"sources": ["a"], "n": ' + "9" * 10000 + "}"],
                         ids=["5000 levels", "10000 digits"])
def test_deep_json_and_huge_numbers_answer_400(api: Api, body: str) -> None:
    status, answer, _ = api.call("POST", "/runs", raw_body=body,
                                 headers={"content-type": "application/json"})

    assert status == 400 and answer["field"] == "body"


def test_an_invalid_config_answers_without_its_path_or_expanded_values(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_NAME", "Expanded Value Not Shown")
    text = api.config_path.read_text(encoding="utf-8")
    api.config_path.write_text(text.replace("name: shop", "name: ${SOURCE_NAME}", 1),
                               encoding="utf-8")

    status, body, _ = api.call("GET", "/runs")

    assert status == 500
    assert "sources[0].name" in body["error"] and "${SOURCE_NAME}" in body["error"]
    assert "Expanded Value" not in body["error"]
    assert str(api.config_path) not in body["error"] and "backup.yaml" not in body["error"]
