"""Test harness for the web view: the real daemon (tests/daemonproc.py) and the real
`cairnd web` server as subprocesses on a temp state dir, and Debian's Chromium
driven by Playwright."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from daemonproc import Daemon

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class WebServer:
    """`cairnd web --listen 127.0.0.1:0` on a daemon's configuration; its URL and token
    are the ones it prints as the first line of its stdout (`http://HOST:PORT/?token=T`)."""

    def __init__(self, config: Path, listen: str = "127.0.0.1:0") -> None:
        self.config = config
        self.listen = listen
        self.stderr_path = config.with_suffix(".web.stderr")
        self.stdout_path = config.with_suffix(".web.stdout")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""  # without the token, no trailing slash
        self.token = ""

    def start(self, timeout: float = 30) -> WebServer:
        env = {**os.environ, "CAIRND_CONFIG": str(self.config)}
        env.pop("CAIRND_STATE_DIR", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "cairnd", "web", "--listen", self.listen], env=env,
                                     stdin=subprocess.DEVNULL, stdout=open(self.stdout_path, "wb"),
                                     stderr=open(self.stderr_path, "wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.match(r"(http://\S+)/\?token=(\S+)\n", self.stdout_path.read_text(errors="replace"))
            if found:
                self.url, self.token = found.group(1), found.group(2)
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"cairnd web exited with {self.proc.returncode}: {self.stderr()}")
            time.sleep(0.05)
        raise AssertionError(f"cairnd web did not start: {self.stderr()}")

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    @property
    def entry(self) -> str:
        """The address a person opens first: it sets the token's cookie."""
        return f"{self.url}/?token={self.token}"

    def http(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        """One request to `path` on this server, carrying the token."""
        return http(method, self.url + path, body, {**self.auth, **(headers or {})}, timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one real HTTP request; error statuses are returned."""
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def csrf_of(html: bytes) -> str:
    found = re.search(rb'<meta name="csrf-token" content="([^"]+)">', html)
    assert found, html[:500]
    return found.group(1).decode()


def start_pair(base: Path, settings: dict[str, Any] | None = None) -> tuple[Daemon, WebServer]:
    daemon = Daemon(base / "state", settings).start()
    try:
        web = WebServer(daemon.config).start()
    except BaseException:
        daemon.stop()
        raise
    return daemon, web
