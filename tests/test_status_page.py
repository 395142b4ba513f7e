"""The status page in headless Chromium, against `baas-backup serve` (the real local
server, in its own process) after finished runs with a successful and a failed job.
Chromium is installed by scripts/chromium when missing; if it cannot be, this fails."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from shared.entrypoints.http_api import TOKEN_ENV
from tests.support.api import TOKEN, Api, deploy
from tests.support.backup import ENV_ID, LocalBackup

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "status-page.png"
PHONE = (412, 915)


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)

    @property
    def content(self) -> str:
        return " ".join(" ".join(self.text).split())


class _Collector(HTMLParser):
    """Every element with its attributes and all text inside it."""

    VOID = frozenset({"meta", "input", "br", "img", "link", "hr", "rect", "line"})

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index].tag == tag:
                del self._open[index:]
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text.append(data)


def parse(dom: str) -> list[Element]:
    collector = _Collector()
    collector.feed(dom)
    return collector.elements


def chromium() -> str:
    """The Chromium binary, installed first if needed; failing here fails the test."""
    found = subprocess.run([str(ROOT / "scripts" / "chromium")], capture_output=True, text=True,
                           timeout=900, check=False)
    assert found.returncode == 0, f"Chromium is needed and could not be installed:\n{found.stderr}"
    return found.stdout.strip().splitlines()[-1]


def headless(binary: str, url: str, profile: Path, *extra: str) -> str:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", *extra, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served(local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Api, str]]:
    """`baas-backup serve` in its own process, polling runs forward like the poller's timer."""
    api = deploy(local, tmp_path, monkeypatch)
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.entrypoints.cli", "--config", str(api.config_path), "serve",
         "--port", str(port), "--poll-seconds", "0.1"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, TOKEN_ENV: TOKEN})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "baas-backup serve did not answer in 30 s"
            time.sleep(0.1)
        yield api, url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def back_up(url: str, body: dict[str, object]) -> str:
    """Start a run over HTTP and wait until the server's poller has finished it."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    started = httpx.post(url + "runs", json=body, headers=auth, timeout=30)
    assert started.status_code == 202, started.text
    run_id: str = started.json()["run_id"]
    deadline = time.monotonic() + 60
    while httpx.get(url + f"runs/{run_id}", headers=auth, timeout=30).json()["status"] == "running":
        assert time.monotonic() < deadline, f"run {run_id} did not finish in 60 s"
        time.sleep(0.1)
    return run_id


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_status_page_shows_runs_and_jobs_in_chromium(
    served: tuple[Api, str], tmp_path: Path
) -> None:
    api, url = served
    binary = chromium()
    ok_run = back_up(url, {"sources": ["archive"]})
    api.local.emulator.fail_export(ENV_ID, "users", "collection is locked by another export")
    mixed_run = back_up(url, {"sources": ["shop"]})

    dom = headless(binary, f"{url}#token={TOKEN}", tmp_path / "profile", "--dump-dom")

    elements = parse(dom)
    runs = {e.attrs["data-run-id"]: e for e in elements if e.tag == "details"}
    listed = httpx.get(url + "runs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    assert list(runs) == [r["run_id"] for r in listed["runs"]]  # in the API's order
    assert set(runs) == {ok_run, mixed_run}
    assert runs[mixed_run].attrs["data-run-status"] == "failed"
    assert "open" in runs[mixed_run].attrs  # a failed run is shown opened
    assert runs[ok_run].attrs["data-run-status"] == "succeeded"
    jobs = {(e.attrs["data-source"], e.attrs["data-collection"]): e
            for e in elements if e.tag == "li" and "data-job-id" in e.attrs}
    assert {k: j.attrs["data-job-status"] for k, j in jobs.items()} == {
        ("shop", "orders"): "done", ("shop", "users"): "failed", ("archive", "orders"): "done"}
    failed = jobs[("shop", "users")]
    assert "failed" in failed.attrs["class"].split()
    assert "collection is locked by another export" in failed.content
    done = jobs[("shop", "orders")]
    assert "20 records" in done.content and f"backups/runs/{mixed_run}/shop/orders.jsonl" in done.content
    bars = [e for e in elements if e.tag == "rect"]
    assert {b.attrs["data-run-id"] for b in bars} == {ok_run, mixed_run}
    assert any("failed" in b.attrs["class"] for b in bars)
    login = next(e for e in elements if e.attrs.get("id") == "login")
    assert "hidden" in login.attrs["class"]
    assert TOKEN not in dom  # the token is kept in sessionStorage, not in the page

    shot = tmp_path / "status-page.png"
    headless(binary, f"{url}#token={TOKEN}", tmp_path / "profile-shot",
             f"--screenshot={shot}", f"--window-size={PHONE[0]},{PHONE[1]}", "--hide-scrollbars")
    assert png_size(shot) == PHONE
    assert shot.stat().st_size > 20_000, "the screenshot looks blank"
    # docs/status-page.png is committed; refresh it on request (or when missing), so a
    # test run does not leave a changed binary in the working tree every time
    if os.environ.get("UPDATE_SCREENSHOT") or not SCREENSHOT.exists():
        SCREENSHOT.write_bytes(shot.read_bytes())


def test_status_page_asks_for_the_token_and_shows_no_data_without_it(
    served: tuple[Api, str], tmp_path: Path
) -> None:
    _, url = served
    binary = chromium()
    run_id = back_up(url, {"sources": ["archive"]})

    without = parse(headless(binary, url, tmp_path / "p1", "--dump-dom"))
    wrong = parse(headless(binary, f"{url}#token=not-the-token-0000000", tmp_path / "p2", "--dump-dom"))

    for elements in (without, wrong):
        login = next(e for e in elements if e.attrs.get("id") == "login")
        assert "hidden" not in login.attrs["class"].split()
        assert not [e for e in elements if e.attrs.get("data-run-id") == run_id]
    refused = next(e for e in wrong if e.attrs.get("id") == "login-error")
    assert "refused" in refused.content


def test_status_page_shows_collections_and_flags_a_suspect_backup(
    served: tuple[Api, str], tmp_path: Path
) -> None:
    api, url = served
    binary = chromium()
    back_up(url, {"sources": ["shop"]})
    api.local.emulator.add_collection(ENV_ID, "orders", [])  # wiped at the source
    wiped = back_up(url, {"sources": ["shop"]})

    elements = parse(headless(binary, f"{url}#token={TOKEN}", tmp_path / "profile", "--dump-dom"))

    rows = {(e.attrs["data-source"], e.attrs["data-collection"]): e
            for e in elements if e.tag == "tr" and "data-collection" in e.attrs}
    assert set(rows) == {("shop", "orders"), ("shop", "users")}
    orders = rows[("shop", "orders")]
    assert orders.attrs["data-suspect"] == "yes" and "suspect" in orders.attrs["class"].split()
    assert "20 records" in orders.content  # the last good backup, with its age
    assert "min ago" in orders.content and "⚠ suspect: 0 (was 20)" in orders.content
    assert rows[("shop", "users")].attrs["data-suspect"] == "no"
    job = next(e for e in elements if e.tag == "li" and e.attrs.get("data-collection") == "orders"
               and e.attrs.get("data-job-id", "").startswith(wiped))
    assert "suspect: 0 records, down from 20" in job.content
    button = next(e for e in elements if e.tag == "button" and e.attrs.get("data-run-id") == wiped)
    assert "acknowledge" in button.attrs["class"]
