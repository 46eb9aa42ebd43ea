"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

No WebDriver and no websocket library: Chromium reads JSON commands, each ending in a
NUL byte, on its file descriptor 3 and writes answers and events on 4. Enough for a
test to open a page, read its DOM while it changes, and take a screenshot::

    with Browser(binary, flags, profile, url) as browser:
        browser.wait_for("document.querySelectorAll('article').length >= 3")
        html = browser.evaluate("document.documentElement.outerHTML")
        browser.screenshot(path)
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

PUT_ON_3_AND_4 = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execvp(sys.argv[3], sys.argv[3:])"


class Browser:
    def __init__(self, binary: str, flags: Sequence[str], profile: Path, url: str, *, width: int = 1200, height: int = 900) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # The protocol's descriptors are 3 and 4 exactly: a small exec shim puts them there, from
        # copies numbered 10 and up, so that neither redirection overwrites the other's source.
        to_browser_read, from_browser_write = (self._high(fd) for fd in (to_browser_read, from_browser_write))
        command = [
            sys.executable, "-c", PUT_ON_3_AND_4, str(to_browser_read), str(from_browser_write),
            binary, *flags, "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={width},{height}", url,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, pass_fds=(to_browser_read, from_browser_write), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None

    @staticmethod
    def _high(fd: int) -> int:
        copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return copy

    def __enter__(self) -> Browser:
        try:
            deadline = time.monotonic() + 30
            while True:
                pages = [t for t in self.command("Target.getTargets")["targetInfos"] if t["type"] == "page"]
                if pages:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("Chromium opened no page")
                time.sleep(0.1)
            self._session = self.command("Target.attachToTarget", targetId=pages[0]["targetId"], flatten=True)["sessionId"]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def command(self, method: str, timeout: float = 30, **params: Any) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.command("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        data = self.command("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_browser], [], [], remaining)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited ({self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                os.write(self._to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                self.process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(5)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
