"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
commands on fd 3, answers and events on fd 4, each a JSON message ended by a NUL byte),
so a test can tap buttons and type into the status page as a user would, with no
browser-automation package. Only what the status-page tests use: open a tab at a size,
run a script in it, wait for a condition, take a screenshot, and collect what the page
logged (console, uncaught errors, CSP refusals)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any


class CdpError(AssertionError):
    """Chromium answered a command with an error, or a page script threw."""


class Chromium:
    def __init__(self, binary: str, profile: Path) -> None:
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()
        # The pipe ends are moved onto fds 3 and 4 by bash, which then execs Chromium
        # (subprocess cannot place inherited fds at given numbers; dash takes only fds 0-9).
        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"
        command = ["bash", "-c", f'exec "$0" "$@" 3<&{commands_read} 4>&{answers_write}',
                   binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                   "--no-first-run", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                   "--hide-scrollbars", f"--user-data-dir={profile}", "--remote-debugging-pipe",
                   "about:blank"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, pass_fds=(commands_read, answers_write),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        os.close(commands_read)
        os.close(answers_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             session: str | None = None, timeout: float = 30) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline, method)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise CdpError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            if "method" in answer:
                self.events.append(answer)

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._answers], [], [], max(0.0, left))
            if not ready:
                raise CdpError(f"Chromium did not answer {waiting_for} in time")
            data = os.read(self._answers, 1 << 16)
            if not data:
                raise CdpError(f"Chromium closed the pipe while we waited for {waiting_for}: "
                               f"{self.log.read_text(errors='replace')[-2000:]}")
            self._buffer += data
        message, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def tab(self, url: str, width: int, height: int) -> Tab:
        return Tab(self, url, width, height)

    def close(self) -> None:
        with contextlib.suppress(CdpError, OSError):
            self.call("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._commands)
        os.close(self._answers)


class Tab:
    """One page, its viewport `width` x `height` CSS pixels like a phone's."""

    def __init__(self, browser: Chromium, url: str, width: int, height: int) -> None:
        self.browser = browser
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = str(browser.call("Target.attachToTarget",
                                        {"targetId": target, "flatten": True})["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True})
        self.call("Page.navigate", {"url": url})

    def call(self, method: str, params: dict[str, Any] | None = None,
             timeout: float = 30) -> dict[str, Any]:
        return self.browser.call(method, params, session=self.session, timeout=timeout)

    def eval(self, expression: str) -> Any:
        """The value of a page expression (a promise is awaited)."""
        answer = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            raise CdpError(f"{expression!r} threw: "
                           f"{details.get('exception', {}).get('description') or details}")
        return answer["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 30,
             describe: str | None = None) -> Any:
        """Evaluate `expression` until it is truthy; its value (an element counts as true).
        On a timeout the error shows the value of `describe`, an expression saying what the
        page shows instead."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(f"(() => {{ const v = ({expression}); return v instanceof Node || v; }})()")
            if value:
                return value
            if time.monotonic() > deadline:
                shown = f"; the page shows {self.eval(describe)!r}" if describe else ""
                raise AssertionError(f"the page did not show {what} within {timeout:g} s; "
                                     f"last value {value!r}{shown}; page logged: {self.logged()}")
            time.sleep(0.1)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    def logged(self) -> list[str]:
        """What the page logged: console calls, uncaught errors, and Chromium's own log
        entries (a script or style the CSP refused lands here)."""
        lines: list[str] = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled":
                lines.append(f"console.{params['type']}: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                lines.append("uncaught: " + str(details.get("exception", {}).get("description")
                                                or details.get("text")))
            elif event["method"] == "Log.entryAdded":
                entry = params["entry"]
                lines.append(f"{entry['source']} {entry['level']}: {entry['text']}")
        return lines
